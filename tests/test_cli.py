"""`shipwatch serve` runs real releases on real parts: the demo ones only when told so."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.procs import clean_env
from tests.support.slack_api import BOT_TOKEN, SlackStandIn

POLICY = """
services:
  checkout:
    metrics:
      - name: error_rate
        query: 'errors{service="{service}",version="{version}"}'
        max: 0.05
"""


def serve(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    settings = {"SLACK_BOT_TOKEN": "xoxb-0", "SLACK_SIGNING_SECRET": "s", "REDIS_URL": "redis://0"}
    return subprocess.run(
        [sys.executable, "-m", "bot", "serve", *args],
        cwd=tmp_path,
        env=clean_env() | settings | env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_serve_refuses_synthetic_metrics_unless_told_demo(tmp_path: Path) -> None:
    (tmp_path / "shipwatch.yaml").write_text(POLICY)
    done = serve(tmp_path)
    assert done.returncode == 2
    assert "refusing to start: PROMETHEUS_URL is not set" in done.stderr
    assert "shipwatch serve --demo" in done.stderr


def test_serve_refuses_the_embedded_demo_policy_unless_told_demo(tmp_path: Path) -> None:
    done = serve(tmp_path, PROMETHEUS_URL="http://127.0.0.1:9")
    assert done.returncode == 2
    assert "no policy file: shipwatch.yaml does not exist" in done.stderr
    assert "SHIPWATCH_POLICY" in done.stderr


@pytest.mark.parametrize("args", [["--demo"], ["--demo", "--policy", "shipwatch.yaml"]])
def test_with_demo_it_goes_on_to_start(tmp_path: Path, args: list[str]) -> None:
    (tmp_path / "shipwatch.yaml").write_text(POLICY)
    # Past the demo check it tries Redis, which is not there: a different, later refusal.
    done = serve(tmp_path, *args)
    assert "refusing to start" not in done.stderr
    assert done.returncode != 0


def test_no_controller_and_the_controller_role_together_are_refused(tmp_path: Path) -> None:
    (tmp_path / "shipwatch.yaml").write_text(POLICY)
    done = serve(tmp_path, "--demo", "--no-controller", "--role", "controller")
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "refusing to start: --no-controller contradicts --role controller; give one of them"
    )


async def test_a_serve_that_cannot_listen_stops_its_embedded_redis(tmp_path: Path) -> None:
    (tmp_path / "shipwatch.yaml").write_text(POLICY)
    data = tmp_path / "data"
    taken = socket.socket()
    taken.bind(("0.0.0.0", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        async with SlackStandIn() as slack:
            env = clean_env() | {
                "SLACK_BOT_TOKEN": BOT_TOKEN,
                "SLACK_SIGNING_SECRET": "s",
                "SLACK_API_URL": slack.api_url,
                "SHIPWATCH_DATA_DIR": str(data),
                "PORT": str(port),
            }
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bot",
                "serve",
                "--demo",
                cwd=tmp_path,
                env=env,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )
            _, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        taken.close()
    assert proc.returncode == 1
    assert f"cannot listen on port {port}" in err.decode()
    assert "Traceback" not in err.decode()
    # The embedded redis-server it started under the data directory is gone with it.
    pgrep = await asyncio.create_subprocess_exec(
        "pgrep", "-f", str(data), stdout=asyncio.subprocess.PIPE
    )
    left, _ = await asyncio.wait_for(pgrep.communicate(), 10)
    assert left.decode().strip() == "", left


@pytest.mark.timeout(60)
def test_check_config_read_by_head_ends_quietly(tmp_path: Path) -> None:
    # Far more than a pipe holds, so the command is still writing when the reader goes away.
    services = "".join(f"  svc{i}: {{}}\n" for i in range(600))
    policy = tmp_path / "many.yaml"
    policy.write_text(
        "defaults:\n  metrics:\n    - {name: errors, query: 'e{version}', max: 0.05}\n"
        f"services:\n{services}"
    )
    reader = subprocess.Popen(
        [sys.executable, "-m", "bot", "check-config", str(policy)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=clean_env(),
    )  # fmt: skip
    assert reader.stdout is not None and reader.stderr is not None
    first = reader.stdout.readline()
    reader.stdout.close()  # what `| head -1` does once it has its line
    errors = reader.stderr.read().decode()
    assert reader.wait(timeout=30) == 0
    assert first.startswith(b"svc0: canary") and "Traceback" not in errors, errors
