#!/usr/bin/env bash
# Prepare this checkout: a .venv with shipwatch and its dev tools, and the server binaries the
# product needs (redis-server; prometheus for the demo's real-metrics mode) and its tests use
# (both). Safe to run repeatedly.
set -euo pipefail
cd "$(dirname "$0")/.."

need_debs=()
for bin in redis-server prometheus; do
  command -v "$bin" >/dev/null 2>&1 || need_debs+=("$bin")
done
if [ ${#need_debs[@]} -gt 0 ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing ${need_debs[*]} with apt-get" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_debs[@]}" >/dev/null
  else
    echo "setup: missing ${need_debs[*]}: install them (e.g. sudo apt-get install ${need_debs[*]})" >&2
    echo "setup: redis-server runs shipwatch without REDIS_URL; prometheus gives the demo real metrics; the tests need both" >&2
  fi
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.shipwatch-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  # Quiet unless it fails: build back-ends are chatty about things that do not matter here.
  if ! { .venv/bin/python -m pip install -q --upgrade pip &&
         .venv/bin/python -m pip install -q -e '.[dev]'; } >.venv/pip.log 2>&1; then
    cat .venv/pip.log >&2
    exit 1
  fi
  touch "$stamp"
fi
