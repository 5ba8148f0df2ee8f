#!/usr/bin/env bash
# Refresh uv.lock from pyproject.toml. With no arguments every pin moves to the newest release
# the ranges in pyproject allow; `./scripts/lock.sh --upgrade-package redis` moves one; after an
# edit to pyproject, `./scripts/lock.sh --keep` re-resolves and keeps every pin that still fits.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--keep" ]; then
  exec ./scripts/uv.sh lock
elif [ $# -eq 0 ]; then
  exec ./scripts/uv.sh lock --upgrade
fi
exec ./scripts/uv.sh lock "$@"
