"""A real Unleash for the tests: PostgreSQL initialised in a temp dir (as an unprivileged user
when the tests run as root, which PostgreSQL refuses) and Unleash from tests/engines (the
committed npm lock, installed by scripts/setup.sh), both on free ports and stopped by pid."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from UnleashClient.clients.unleash_client import UnleashClient

from tests.support.procs import free_port, require_binary, stop_process, wait_for_port

ENGINES = Path(__file__).resolve().parents[1] / "engines"
ADMIN_TOKEN = "*:*.shipwatch-tests-admin-token"
CLIENT_TOKEN = "default:development.shipwatch-tests-client-token"
START_TIMEOUT_S = 90.0


@dataclass(frozen=True)
class Unleash:
    url: str

    @property
    def client_api(self) -> str:
        return f"{self.url}/api"

    def python_sdk(self) -> UnleashClient:
        """Unleash's Python SDK on this server's client API, refreshing every second (blocks
        until its first fetch)."""
        client = UnleashClient(
            url=self.client_api,
            app_name="shipwatch-tests",
            custom_headers={"Authorization": CLIENT_TOKEN},
            refresh_interval=1,
            disable_metrics=True,
            disable_registration=True,
            cache_directory=None,
        )
        client.initialize_client()
        return client


def _postgres_binary(name: str) -> str:
    """initdb and postgres: on PATH, or where Debian's postgresql package puts them."""
    found = shutil.which(name) or next(
        (str(p) for p in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True)),
        None,
    )
    return found or require_binary(name)


def _as_postgres_user() -> dict[str, str]:
    """PostgreSQL will not run as root: run it as nobody then."""
    return {"user": "nobody"} if os.geteuid() == 0 else {}


def _require_engines() -> str:
    node = require_binary("node")
    if not (ENGINES / "node_modules" / "unleash-server").is_dir():
        message = "tests/engines has no node_modules: run ./scripts/setup.sh (npm ci there)"
        if os.environ.get("SHIPWATCH_REQUIRE_SERVICES") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return node


@contextmanager
def _stopped_at_exit(proc: subprocess.Popen[bytes]) -> Iterator[subprocess.Popen[bytes]]:
    try:
        yield proc
    finally:
        stop_process(proc)


@contextmanager
def unleash_running(tmp: Path) -> Iterator[Unleash]:
    node = _require_engines()
    initdb, postgres = (_postgres_binary(b) for b in ("initdb", "postgres"))
    psql = require_binary("psql")
    who = _as_postgres_user()
    # Not under pytest's temp root, which only root may enter: PostgreSQL's user must reach it.
    home = Path(tempfile.mkdtemp(prefix="shipwatch-pg-"))
    data = home / "pg"
    data.mkdir()
    if who:
        shutil.chown(home, user="nobody")
        shutil.chown(data, user="nobody")
    try:
        yield from _serving(node, initdb, postgres, psql, tmp, home, data, who)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _serving(
    node: str,
    initdb: str,
    postgres: str,
    psql: str,
    tmp: Path,
    home: Path,
    data: Path,
    who: dict[str, str],
) -> Iterator[Unleash]:
    subprocess.run(
        [initdb, "-D", str(data), "-U", "postgres", "-A", "trust"],
        check=True, capture_output=True, **who,  # type: ignore[call-overload]
    )  # fmt: skip
    pg_port = free_port()
    pg_log = (home / "postgres.log").open("ab")
    pg = subprocess.Popen(
        [postgres, "-D", str(data), "-p", str(pg_port), "-k", str(data),
         "-c", "listen_addresses=127.0.0.1"],
        stdout=pg_log, stderr=pg_log, **who,  # type: ignore[call-overload]
    )  # fmt: skip
    with _stopped_at_exit(pg):
        wait_for_port(pg_port, 30)
        _create_database(psql, pg_port)
        port = free_port()
        env = os.environ | {
            "PGPORT": str(pg_port), "PORT": str(port),
            "ADMIN_TOKEN": ADMIN_TOKEN, "CLIENT_TOKEN": CLIENT_TOKEN,
        }  # fmt: skip
        log = (tmp / "unleash.log").open("ab")
        server = subprocess.Popen(
            [node, str(ENGINES / "unleash.js")], cwd=ENGINES, env=env, stdout=log, stderr=log
        )
        with _stopped_at_exit(server):
            url = f"http://127.0.0.1:{port}"
            _wait_healthy(url, tmp / "unleash.log")
            yield Unleash(url)


def _create_database(psql: str, port: int) -> None:
    deadline = time.monotonic() + 30
    while True:
        done = subprocess.run(
            [psql, "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-c",
             "CREATE DATABASE unleash"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if done.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"cannot create the Unleash database: {done.stderr}")
        time.sleep(0.2)


def _wait_healthy(url: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"Unleash did not start: {log.read_text(errors='replace')[-2000:]}")
