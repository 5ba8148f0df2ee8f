"""Traffic backend that moves users by rewriting an NGINX include and reloading NGINX.

Per service shipwatch owns one include file (``include_file``, ``{service}`` filled in), loaded
at ``http`` level by the operator's configuration. It defines two variables:

- ``$shipwatch_<service>``: ``canary`` or ``stable`` for this request, from a ``split_clients``
  on the user id (``$http_x_user_id`` unless ``split_key`` says otherwise), so raising the
  percent only adds users;
- ``$shipwatch_<service>_pct``: the percent itself, for a marker location
  (``location = /shipwatch/<service> { return 200 $shipwatch_<service>_pct; }``) through which
  shipwatch reads back what the running workers apply.

A change writes the file atomically, runs the test command (``nginx -t``; on failure the old
file is put back and NGINX's words are the error), then the reload command, and waits until the
marker shows the new percent. NGINX refuses ``0%`` in ``split_clients``, so 0 and 100 are one
catch-all line. A rollback does not wait on the marker: it is one write, retried until it lands.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import time
from pathlib import Path

import aiohttp

from bot.errors import TrafficError
from bot.redact import redact_url
from bot.traffic.base import Applied, TrafficAction, TrafficChange, target_weight

_NAME = re.compile(r"[^a-z0-9_]")
MARKER_WAIT_S = 5.0  # how long a change waits for the reloaded workers to show it
MARKER_CONFIRMATIONS = 5


def variable(service: str) -> str:
    """The NGINX variable name for a service: letters, digits and underscores only."""
    return "shipwatch_" + _NAME.sub("_", service.lower())


def render_include(service: str, pct: int, version: str, split_key: str) -> str:
    name = variable(service)
    if pct <= 0:
        lines = ["    * stable;"]
    elif pct >= 100:
        lines = ["    * canary;"]
    else:
        lines = [f"    {pct}% canary;", "    * stable;"]
    return (
        f"# Written by shipwatch: {service} {version} at {pct}%. Changed at every step; do not"
        " edit.\n"
        f'split_clients "{split_key}" ${name} {{\n' + "\n".join(lines) + "\n}\n"
        f"map $host ${name}_pct {{ default {pct}; }}\n"
    )


class NginxBackend:
    name = "nginx"

    def __init__(
        self,
        include_file: str,
        *,
        test_command: str = "nginx -t",
        reload_command: str = "nginx -s reload",
        marker_url: str | None = None,
        split_key: str = "${http_x_user_id}",
        timeout: float = 5.0,
    ) -> None:
        self.include_file = include_file
        self.test_command = shlex.split(test_command)
        self.reload_command = shlex.split(reload_command)
        self.marker_url = marker_url
        self.split_key = split_key
        self.timeout = timeout
        self._lock = asyncio.Lock()  # one rewrite of an include at a time in this process

    def path(self, service: str) -> Path:
        return Path(self.include_file.replace("{service}", service))

    async def apply(self, change: TrafficChange) -> None:
        pct = target_weight(change)
        path = self.path(change.service)
        text = render_include(change.service, pct, change.version, self.split_key)
        async with self._lock:
            old = await asyncio.to_thread(_read_or_none, path)
            await asyncio.to_thread(_write_atomically, path, text.encode())
            tested = await self._run(self.test_command)
            if tested:
                await asyncio.to_thread(_restore, path, old)
                raise TrafficError(
                    f"NGINX refused the include for {change.service} at {pct}% (the old one is "
                    f"back): {tested}"
                )
            reloaded = await self._run(self.reload_command)
            if reloaded:
                raise TrafficError(f"NGINX did not reload for {change.service}: {reloaded}")
        if change.action is not TrafficAction.ROLLBACK:
            await self._until_shown(change.service, pct)

    async def current(self, service: str) -> Applied | None:
        """What the workers apply, from the marker URL; without one, what the include says."""
        if self.marker_url is None:
            return await asyncio.to_thread(_from_file, self.path(service))
        url = self.marker_url.replace("{service}", service)
        try:
            async with (
                aiohttp.ClientSession() as session,
                session.get(url, timeout=aiohttp.ClientTimeout(total=self.timeout)) as resp,
            ):
                body = (await resp.text()).strip()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TrafficError(
                f"cannot read NGINX's marker {redact_url(url)} ({type(exc).__name__}: {exc})"
            ) from exc
        if status == 404:
            return Applied(None)
        if status != 200 or not body.isdigit() or not 0 <= int(body) <= 100:
            raise TrafficError(
                f"NGINX's marker {redact_url(url)} answered HTTP {status} {body[:80]!r}, not a "
                "percent"
            )
        return Applied(int(body))

    async def close(self) -> None:
        """Nothing to close: every read has its own session."""

    async def _until_shown(self, service: str, pct: int) -> None:
        if self.marker_url is None:
            return
        # During a reload the old workers still answer for a moment: one read of the new
        # percent proves little, several in a row (each on a new connection) do.
        deadline = time.monotonic() + MARKER_WAIT_S
        shown: Applied | None = None
        in_a_row = 0
        while time.monotonic() < deadline:
            shown = await self.current(service)
            in_a_row = in_a_row + 1 if shown is not None and shown.weight == pct else 0
            if in_a_row >= MARKER_CONFIRMATIONS:
                return
            await asyncio.sleep(0.02)
        raise TrafficError(
            f"NGINX reloaded but its workers still show {shown.weight if shown else '?'}% for "
            f"{service} after {MARKER_WAIT_S:g}s, not {pct}%"
        )

    async def _run(self, command: list[str]) -> str:
        """Run an NGINX command; "" when it worked, else what it said."""
        try:
            proc = await asyncio.create_subprocess_exec(
                *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
            )
        except OSError as exc:
            return f"cannot run `{shlex.join(command)}`: {exc.strerror or exc}"
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), self.timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return f"`{shlex.join(command)}` did not finish within {self.timeout:g}s"
        if proc.returncode == 0:
            return ""
        said = " ".join(out.decode("utf-8", "replace").split())[-500:]
        return f"`{shlex.join(command)}` failed ({proc.returncode}): {said}"


def _read_or_none(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _restore(path: Path, old: bytes | None) -> None:
    if old is None:
        path.unlink(missing_ok=True)
    else:
        _write_atomically(path, old)


def _from_file(path: Path) -> Applied:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Applied(None)
    except OSError as exc:
        raise TrafficError(f"cannot read the NGINX include {path}: {exc.strerror or exc}") from exc
    found = re.search(r"default (\d+);", text)
    return Applied(int(found.group(1)) if found else None)
