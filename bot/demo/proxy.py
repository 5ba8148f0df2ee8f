"""What the demo's proxies have in common: each service's two pools behind one entry point.

With ``shipwatch demo --traffic haproxy|nginx`` every sample service runs twice, a stable pool
and a canary pool (``Pools``), the way a team runs them on VMs behind a load balancer. The proxy
gives each service an entry point of its own on 127.0.0.1, where the load generator sends its
users, and shipwatch moves them between the pools through the proxy's real interface (HAProxy's
runtime API, NGINX's include and reload), as it would in production.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from bot.errors import TrafficError

# How long a proxy may take to listen on every entry point after it starts.
START_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class Pools:
    """Where one service's versions listen (``host:port``): the stable pool and the canary pool."""

    stable: str
    canary: str


class DemoProxy(Protocol):
    engine: str  # the traffic backend's name in the policy: "haproxy", "nginx"
    label: str  # what runs, for the demo's first lines: "HAProxy 2.6.12"

    async def start(self, pools: Mapping[str, Pools]) -> None:
        """Run the proxy in front of ``pools`` (service → pools), all users on stable; raises
        TrafficError (or OSError) when it cannot, leaving nothing running."""
        ...

    def entry(self, service: str) -> str:
        """The URL users of ``service`` go to."""
        ...

    def traffic(self, service: str) -> dict[str, str]:
        """The policy's ``traffic`` block that drives this proxy for ``service``."""
        ...

    async def stop(self) -> None: ...


async def until_listening(ports: list[int], exited: Callable[[], str], timeout: float) -> None:
    """Wait until every port accepts a connection; TrafficError with ``exited()`` (why the
    process is gone) or after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    waiting = list(ports)
    while waiting:
        if reason := exited():
            raise TrafficError(reason)
        if loop.time() > deadline:
            raise TrafficError(f"nothing listens on 127.0.0.1:{waiting[0]} after {timeout:g}s")
        with contextlib.suppress(OSError, TimeoutError):
            _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", waiting[0]), 1)
            writer.close()
            waiting.pop(0)
            continue
        await asyncio.sleep(0.1)
