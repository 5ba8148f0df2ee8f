"""Traffic backend that moves users through HAProxy's runtime API, without a reload.

Two modes, both over the stats socket (``stats socket … level admin``; a unix path or
``host:port``), one command per connection as the API answers in its non-interactive mode:

- ``map`` (the usual one): one entry per service in a map file HAProxy routes by, whose value is
  the canary percent. The frontend hashes the user id into a bucket 0..99 and sends buckets below
  the percent to the canary backend (README has the config), so raising the percent only adds
  users and nobody moves back and forth between steps. Step: ``set map <map> <service> N`` (or
  ``add map`` when the entry is missing); read back: ``show map <map>``.
- ``weight``: the stable and canary servers of one backend: ``set server B/canary weight N``,
  ``B/stable`` ``100-N``; a rollback also puts the canary server in ``maint`` so connections pinned
  to it by cookie leave too. Read back: ``get weight B/canary``.

A ``set`` that answers anything at all has failed (HAProxy prints nothing on success). A reload
of HAProxy discards runtime changes: the controller's read-back finds the map at the file's value
and sets the recorded weight again.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

from bot.errors import TrafficError
from bot.traffic.base import Applied, TrafficAction, TrafficChange, target_weight

_READ_LIMIT = 1024 * 1024  # `show map` of a large map is still small; never read without bound
_WEIGHT = re.compile(r"^\s*(\d+)\s*\(initial\s+\d+\)\s*$")


@dataclass(frozen=True)
class RuntimeApi:
    """HAProxy's runtime API at ``address``: a unix socket path, or ``host:port``."""

    address: str
    timeout: float = 2.0

    async def run(self, command: str) -> str:
        """Send one command and return HAProxy's whole answer; TrafficError when HAProxy
        cannot be reached or does not answer in time."""
        try:
            return await asyncio.wait_for(self._run(command), self.timeout)
        except TimeoutError as exc:
            raise TrafficError(
                f"HAProxy's runtime API at {self.address} did not answer `{command}` within "
                f"{self.timeout:g}s"
            ) from exc
        except OSError as exc:
            raise TrafficError(
                f"cannot reach HAProxy's runtime API at {self.address} ({exc.strerror or exc}): "
                "is HAProxy running with `stats socket … level admin` there?"
            ) from exc

    async def _run(self, command: str) -> str:
        if ":" in self.address and not self.address.startswith("/"):
            host, _, port = self.address.rpartition(":")
            reader, writer = await asyncio.open_connection(host, int(port))
        else:
            reader, writer = await asyncio.open_unix_connection(self.address)
        try:
            writer.write(command.encode() + b"\n")
            await writer.drain()
            answer = await reader.read(_READ_LIMIT)
            while chunk := await reader.read(_READ_LIMIT):
                answer += chunk
        finally:
            writer.close()
        return answer.decode("utf-8", "replace")


class HAProxyBackend:
    name = "haproxy"

    def __init__(
        self,
        api: RuntimeApi,
        *,
        mode: str = "map",
        map_path: str = "",
        key: str = "",
        backend: str = "",
        stable_server: str = "stable",
        canary_server: str = "canary",
    ) -> None:
        if mode == "map" and not map_path:
            raise ValueError("the haproxy backend's map mode needs `map`, the map file's path")
        if mode == "weight" and not backend:
            raise ValueError("the haproxy backend's weight mode needs `haproxy_backend`")
        self.api = api
        self.mode = mode
        self.map_path = map_path
        self.key = key
        self.backend = backend
        self.stable_server = stable_server
        self.canary_server = canary_server

    def _key(self, service: str) -> str:
        return self.key or service

    async def apply(self, change: TrafficChange) -> None:
        pct = target_weight(change)
        if self.mode == "map":
            await self._set_map(self._key(change.service), pct)
            return
        canary = f"{self.backend}/{self.canary_server}"
        stable = f"{self.backend}/{self.stable_server}"
        await self._set(f"set server {stable} weight {100 - pct}")
        await self._set(f"set server {canary} weight {pct}")
        state = "maint" if change.action is TrafficAction.ROLLBACK else "ready"
        await self._set(f"set server {canary} state {state}")

    async def current(self, service: str) -> Applied:
        if self.mode == "map":
            answer = await self.api.run(f"show map {self.map_path}")
            for line in answer.splitlines():
                parts = line.split()
                if len(parts) >= 3 and parts[1] == self._key(service):
                    return Applied(_percent(parts[2], f"map entry `{parts[1]}`"))
            if "Unknown map" in answer or "unknown map" in answer:
                raise TrafficError(f"HAProxy knows no map {self.map_path}: {answer.strip()}")
            return Applied(None)
        canary = f"{self.backend}/{self.canary_server}"
        answer = await self.api.run(f"get weight {canary}")
        found = _WEIGHT.match(answer)
        if found is None:
            raise TrafficError(f"HAProxy answered `get weight {canary}` with {answer.strip()!r}")
        return Applied(int(found.group(1)))

    async def close(self) -> None:
        """Nothing to close: every command has its own connection."""

    async def _set_map(self, key: str, pct: int) -> None:
        answer = await self.api.run(f"set map {self.map_path} {key} {pct}")
        if "not found" in answer.lower():
            answer = await self.api.run(f"add map {self.map_path} {key} {pct}")
        if answer.strip():
            raise TrafficError(
                f"HAProxy refused to set {key} to {pct}% in map {self.map_path}: {answer.strip()}"
            )

    async def _set(self, command: str) -> None:
        answer = await self.api.run(command)
        if answer.strip():
            raise TrafficError(f"HAProxy refused `{command}`: {answer.strip()}")


def _percent(value: str, what: str) -> int:
    try:
        pct = int(value)
    except ValueError:
        raise TrafficError(f"HAProxy's {what} holds {value!r}, not a percent") from None
    if not 0 <= pct <= 100:
        raise TrafficError(f"HAProxy's {what} holds {pct}, not a percent 0..100")
    return pct
