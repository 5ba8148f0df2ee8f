#!/usr/bin/env bash
# Run the pinned uv (scripts/uv-requirements.txt), installing it into .tools/ first if needed.
# It uses this machine's python3 (never a downloaded interpreter) and PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
pin=scripts/uv-requirements.txt
if [ ! -x .tools/bin/uv ] || [ "$pin" -nt .tools/bin/uv ]; then
  "$PY" -m venv .tools
  if ! .tools/bin/python -m pip install -q --require-hashes -r "$pin" >.tools/pip.log 2>&1; then
    cat .tools/pip.log >&2
    exit 1
  fi
  touch .tools/bin/uv
fi
export UV_PYTHON_DOWNLOADS=never
export UV_PYTHON="${UV_PYTHON:-$PY}"
exec .tools/bin/uv "$@"
