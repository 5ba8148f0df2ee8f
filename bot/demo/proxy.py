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
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from bot.demo.daemon import Daemon, free_port, version_of
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


class ProxyProcess:
    """What running a proxy for the demo takes whatever the proxy: its version for the label, a
    working directory under the data directory, a free port per service, the process started
    and watched until every entry point listens, and all of it stopped and removed again."""

    engine = ""  # the traffic backend's name, also the log's and the directory's
    product = ""  # how the proxy calls itself: "HAProxy"

    def __init__(self, binary: str, data_dir: Path) -> None:
        self.binary = binary
        self.data_dir = data_dir
        self.label = self.product
        self._ports: dict[str, int] = {}
        self._workdir: Path | None = None
        self._scratch: list[Path] = []  # directories of ours outside the working directory
        self._daemon = Daemon(self.engine, data_dir / f"{self.engine}.log")

    @property
    def workdir(self) -> Path:
        assert self._workdir is not None, "start() first"
        return self._workdir

    async def _prepare(self, services: Sequence[str]) -> dict[str, int]:
        """The label, the working directory and a port per service; the ports."""
        version = await version_of(self.binary, "-v")
        self.label = f"{self.product} {version}".strip()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._workdir = Path(tempfile.mkdtemp(prefix=f"{self.engine}-", dir=self.data_dir))
        self._ports = {name: free_port() for name in services}
        return self._ports

    async def _run(self, args: Sequence[str]) -> None:
        """Start the proxy and wait until every entry point listens; nothing is left running
        when it does not."""
        try:
            await self._daemon.start(args)
            await until_listening(list(self._ports.values()), self._daemon.exited, START_TIMEOUT_S)
        except BaseException:
            await self.stop()
            raise

    def entry(self, service: str) -> str:
        return f"http://127.0.0.1:{self._ports[service]}"

    async def stop(self) -> None:
        await self._daemon.stop()
        for directory in (self._workdir, *self._scratch):
            if directory is not None:
                await asyncio.to_thread(shutil.rmtree, directory, True)
        self._workdir, self._scratch = None, []
