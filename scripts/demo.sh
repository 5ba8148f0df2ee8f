#!/usr/bin/env bash
# Try shipwatch in a minute: the console on the embedded defaults (embedded Redis, synthetic
# demo metrics, the flags traffic backend), at demo speed. Type `help` at the prompt.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/shipwatch demo "$@"
