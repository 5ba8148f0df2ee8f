#!/usr/bin/env bash
# Try shipwatch in a minute: two releases at demo speed on the embedded defaults (embedded Redis,
# the flags traffic backend; a real Prometheus scraping the sample services when `prometheus` is
# installed, synthetic metrics otherwise), then the console. Type `help` at the prompt.
# `--no-interactive` exits after the releases; `--metrics synthetic` skips Prometheus.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/shipwatch demo "$@"
