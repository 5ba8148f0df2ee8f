#!/usr/bin/env bash
# The test command: lint, type-check, check the layers (import-linter's contracts in
# pyproject.toml), then every test, including the ones against a real
# redis-server and a real Prometheus that the tests start themselves. Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
.venv/bin/ruff check bot handlers tests bench scripts
.venv/bin/mypy
.venv/bin/lint-imports --no-cache
exec .venv/bin/pytest -q "$@"
