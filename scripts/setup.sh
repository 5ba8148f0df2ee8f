#!/usr/bin/env bash
# Prepare this checkout: a .venv with shipwatch and its dev tools, exactly as uv.lock pins them,
# and the server binaries the product needs (redis-server; prometheus for the demo's real-metrics
# mode) and its tests use (both). Safe to run repeatedly.
set -euo pipefail
cd "$(dirname "$0")/.."

need_debs=()
for bin in redis-server redis-sentinel prometheus haproxy nginx; do
  # haproxy and nginx live in /usr/sbin, which a non-root PATH may lack.
  command -v "$bin" >/dev/null 2>&1 || [ -x "/usr/sbin/$bin" ] || need_debs+=("$bin")
done
# Debian's package for the nginx binary is nginx-light (the smallest build, split_clients included).
need_debs=("${need_debs[@]/#nginx/nginx-light}")
# PostgreSQL, for the Unleash server the tests start (initdb is not on PATH in Debian's package).
command -v initdb >/dev/null 2>&1 || compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null \
  || need_debs+=(postgresql)
# Chromium, headless, for the release page's browser tests (Playwright drives Debian's binary).
command -v chromium >/dev/null 2>&1 || need_debs+=(chromium)
if [ ${#need_debs[@]} -gt 0 ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing ${need_debs[*]} with apt-get" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_debs[@]}" >/dev/null
  else
    echo "setup: missing ${need_debs[*]}: install them (e.g. sudo apt-get install ${need_debs[*]})" >&2
    echo "setup: redis-server runs shipwatch without REDIS_URL; prometheus gives the demo real metrics; haproxy, nginx and (with PostgreSQL) Unleash are traffic engines it drives; the tests need them all" >&2
  fi
fi

# Exactly the versions in uv.lock (application and dev tools), into .venv, with shipwatch itself
# installed editable. --locked refuses to run when pyproject.toml and uv.lock disagree: refresh the
# lock with ./scripts/lock.sh and commit both.
stamp=.venv/.shipwatch-locked
if [ ! -f "$stamp" ] || [ uv.lock -nt "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  ./scripts/uv.sh sync --locked --extra dev --extra k8s --quiet
  touch "$stamp"
fi

# The Node engines the tests run for real (an Unleash server and Unleash's Node SDK), exactly as
# tests/engines/package-lock.json pins them.
engines=tests/engines
if command -v npm >/dev/null 2>&1; then
  if [ ! -f "$engines/node_modules/.package-lock.json" ] \
      || [ "$engines/package-lock.json" -nt "$engines/node_modules/.package-lock.json" ]; then
    (cd "$engines" && npm ci --no-audit --no-fund --loglevel=error)
  fi
else
  echo "setup: npm is missing: the Unleash tests need Node.js 20+ and npm (for tests/engines)" >&2
fi
