"""HAProxy in front of the demo's pools, driven by shipwatch's haproxy backend in map mode.

One frontend per service on a free port. Each request's user (the ``user`` query parameter the
load generator sends) is hashed into a bucket 0..99; buckets below the service's entry in the
map go to the canary pool, the rest to stable. The map starts empty (everyone on stable) and
changes only through the runtime API, with no reload: exactly the layout the README documents
for production, with the user id taken from the query instead of a header.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path

from bot.demo.daemon import find
from bot.demo.proxy import Pools, ProxyProcess

# sun_path is 108 bytes with its terminator; a margin for the name.
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


class DemoHAProxy(ProxyProcess):
    engine = "haproxy"
    product = "HAProxy"

    @property
    def _socket(self) -> Path:
        # A unix socket's path must fit in sun_path: a short directory of its own when not.
        near = self.workdir / "admin.sock"
        return self._scratch[0] / "admin.sock" if self._scratch else near

    @property
    def _map(self) -> Path:
        return self.workdir / "canary.map"

    async def start(self, pools: Mapping[str, Pools]) -> None:
        ports = await self._prepare(list(pools))
        if len(str(self.workdir / "admin.sock")) > _SOCKET_PATH_MAX:
            self._scratch.append(Path(tempfile.mkdtemp(prefix="shipwatch-haproxy-")))
        self._map.write_text("", encoding="utf-8")
        entries = {name: (ports[name], p) for name, p in pools.items()}
        config = self.workdir / "haproxy.cfg"
        config.write_text(
            haproxy_config(str(self._socket), str(self._map), entries), encoding="utf-8"
        )
        await self._run([self.binary, "-f", str(config), "-db"])

    def traffic(self, service: str) -> dict[str, str]:
        return {
            "backend": "haproxy",
            "socket": str(self._socket),
            "mode": "map",
            "map_file": str(self._map),
        }


def find_haproxy() -> str | None:
    return find("haproxy")
