"""HAProxy in front of the demo's pools, driven by shipwatch's haproxy backend in map mode.

One frontend per service on a free port. Each request's user (the ``user`` query parameter the
load generator sends) is hashed into a bucket 0..99; buckets below the service's entry in the
map go to the canary pool, the rest to stable. The map starts empty (everyone on stable) and
changes only through the runtime API, with no reload: exactly the layout the README documents
for production, with the user id taken from the query instead of a header.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

from bot.demo.daemon import Daemon, find, free_port, version_of
from bot.demo.proxy import START_TIMEOUT_S, Pools, until_listening

# A unix socket's path must fit in sun_path (108 bytes with its terminator).
_SOCKET_PATH_MAX = 100

_GLOBAL = """\
global
    stats socket "{socket}" mode 600 level admin
defaults
    mode http
    timeout connect 2s
    timeout client 15s
    timeout server 15s
"""

# The sample service answers slowly on purpose (faults up to 10 s): the timeouts above allow it.
_SERVICE = """\
frontend {service}
    bind 127.0.0.1:{port}
    http-request set-var(txn.pct) str({service}),map_str_int("{map}",0)
    http-request set-var(txn.bucket) url_param(user),xxh32,mod(100)
    acl to_canary var(txn.bucket),sub(txn.pct) -m int lt 0
    use_backend {service}-canary if to_canary
    default_backend {service}-stable
backend {service}-stable
    server stable {stable}
backend {service}-canary
    server canary {canary}
"""


def haproxy_config(socket: str, map_file: str, entries: Mapping[str, tuple[int, Pools]]) -> str:
    services = (
        _SERVICE.format(
            service=name, port=port, map=map_file, stable=pools.stable, canary=pools.canary
        )
        for name, (port, pools) in entries.items()
    )
    return _GLOBAL.format(socket=socket) + "".join(services)


class DemoHAProxy:
    engine = "haproxy"

    def __init__(self, binary: str, data_dir: Path) -> None:
        self.binary = binary
        self.data_dir = data_dir
        self.label = "HAProxy"
        self._ports: dict[str, int] = {}
        self._workdir: Path | None = None
        self._socket_dir: Path | None = None  # when the data directory's path is too long
        self._daemon = Daemon("haproxy", data_dir / "haproxy.log")

    @property
    def _socket(self) -> Path:
        assert self._workdir is not None
        return (self._socket_dir or self._workdir) / "admin.sock"

    @property
    def _map(self) -> Path:
        assert self._workdir is not None
        return self._workdir / "canary.map"

    async def start(self, pools: Mapping[str, Pools]) -> None:
        version = await version_of(self.binary, "-v")
        self.label = f"HAProxy {version}".strip()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._workdir = Path(tempfile.mkdtemp(prefix="haproxy-", dir=self.data_dir))
        if len(str(self._workdir / "admin.sock")) > _SOCKET_PATH_MAX:
            self._socket_dir = Path(tempfile.mkdtemp(prefix="shipwatch-haproxy-"))
        self._map.write_text("", encoding="utf-8")
        self._ports = {name: free_port() for name in pools}
        entries = {name: (self._ports[name], p) for name, p in pools.items()}
        config = self._workdir / "haproxy.cfg"
        config.write_text(
            haproxy_config(str(self._socket), str(self._map), entries), encoding="utf-8"
        )
        try:
            await self._daemon.start([self.binary, "-f", str(config), "-db"])
            await until_listening(list(self._ports.values()), self._daemon.exited, START_TIMEOUT_S)
        except BaseException:
            await self.stop()
            raise

    def entry(self, service: str) -> str:
        return f"http://127.0.0.1:{self._ports[service]}"

    def traffic(self, service: str) -> dict[str, str]:
        return {
            "backend": "haproxy",
            "socket": str(self._socket),
            "mode": "map",
            "map_file": str(self._map),
        }

    async def stop(self) -> None:
        await self._daemon.stop()
        for workdir in (self._workdir, self._socket_dir):
            if workdir is not None:
                await asyncio.to_thread(shutil.rmtree, workdir, True)
        self._workdir = self._socket_dir = None


def find_haproxy() -> str | None:
    return find("haproxy")
