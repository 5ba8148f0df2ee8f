"""A program the demo runs beside the bot (Prometheus, HAProxy, NGINX): started with its output
in a log file, watched while it starts, and stopped by its pid whatever happened before."""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import IO

_VERSION = re.compile(r"version\s+v?([0-9][^\s+,]*)", re.IGNORECASE)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def version_of(binary: str, flag: str = "--version", timeout: float = 5.0) -> str:
    """``2.42.0`` from ``<binary> --version`` (or ``-v``, ``-V``); empty when it cannot be told."""
    try:
        proc = await asyncio.create_subprocess_exec(
            binary,
            flag,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
    except OSError:
        return ""
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        return ""
    text = out.decode(errors="replace")
    found = _VERSION.search(text) or re.search(r"/([0-9][0-9.]*)", text)  # nginx/1.22.1
    return found.group(1) if found else ""


class Daemon:
    """One long-running process, its output appended to ``log_path``."""

    def __init__(self, name: str, log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self._proc: asyncio.subprocess.Process | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    async def start(self, args: Sequence[str]) -> None:
        """Start it; OSError when the binary cannot be run (nothing is left open then)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("wb")
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=self._log,
                stderr=asyncio.subprocess.STDOUT,
            )
        except BaseException:
            self._log.close()
            self._log = None
            raise

    def exited(self) -> str:
        """Why it is not running (its status and the last line it wrote), or "" while it runs."""
        proc = self._proc
        if proc is None or proc.returncode is None:
            return ""
        tail = ""
        with contextlib.suppress(OSError):
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
            tail = f": {lines[-1][:300]}" if lines else ""
        return f"{self.name} exited with status {proc.returncode}{tail}"

    async def stop(self, grace: float = 10.0) -> None:
        """Terminate it (kill after ``grace``). Idempotent; safe after a failed start."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), grace)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
            except asyncio.CancelledError:
                # Interrupted while it shuts down: make sure it does not outlive us.
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                raise
        if self._log is not None:
            self._log.close()
            self._log = None


def find(binary: str) -> str | None:
    """The binary on PATH, or where Debian puts daemons (/usr/sbin is not on every PATH)."""
    return shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/sbin")
