"""Start real server binaries on free ports for the tests, and stop them afterwards."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def require_binary(name: str) -> str:
    """Path of a server binary.

    Missing: skip, unless SHIPWATCH_REQUIRE_SERVICES=1 (as in CI), then fail.
    """
    # Daemons such as haproxy install to /usr/sbin, which a non-root PATH may lack.
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path:
        return path
    message = f"`{name}` is not installed (apt-get install {name}); `make test` installs it as root"
    if os.environ.get("SHIPWATCH_REQUIRE_SERVICES") == "1":
        pytest.fail(message)
    pytest.skip(message)


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


@contextmanager
def running(
    cmd: list[str], port: int, log: Path, timeout: float = 15.0
) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_for_port(port, timeout)
            yield proc
        finally:
            stop_process(proc)


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """Terminate ``proc`` and wait for it; killed if it takes more than 5 s."""
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def clean_env() -> dict[str, str]:
    """This process's environment without any shipwatch setting (Slack, Redis, Prometheus,
    OpenAI, SHIPWATCH_*): what a child process sees on a fresh machine."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("REDIS_", "PROMETHEUS_", "OPENAI_", "SLACK_", "SHIPWATCH_"))
    }


def redis_server_cmd(port: int, tmp: Path) -> list[str]:
    """A throwaway redis-server on 127.0.0.1:``port``: no persistence, files under ``tmp``."""
    return [
        require_binary("redis-server"),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(tmp),
    ]


@contextmanager
def redis_server(tmp: Path) -> Iterator[str]:
    port = free_port()
    cmd = redis_server_cmd(port, tmp)
    with running(cmd, port, tmp / "redis.log"):
        yield f"redis://127.0.0.1:{port}/0"
