"""NGINX in front of the demo's pools, driven by shipwatch's nginx backend.

One server per service on a free port. Its include (the file shipwatch rewrites at each step)
sets ``$shipwatch_<service>`` to ``stable`` or ``canary`` from a ``split_clients`` on the user
(the ``user`` query parameter the load generator sends), and requests go to the upstream of that
name; a marker location shows the percent the running workers apply. Every change is tested
(``nginx -t``) and reloaded, as the README documents for production.
"""

from __future__ import annotations

import asyncio
import shlex
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

from bot.demo.daemon import Daemon, find, free_port, version_of
from bot.demo.proxy import START_TIMEOUT_S, Pools, until_listening
from bot.traffic.nginx import render_include, variable

SPLIT_KEY = "${arg_user}"

_HTTP = """\
pid "{dir}/nginx.pid";
error_log "{dir}/error.log" warn;
events {{}}
http {{
    access_log off;
    client_body_temp_path "{dir}/body";
    proxy_temp_path "{dir}/proxy";
    fastcgi_temp_path "{dir}/fastcgi";
    uwsgi_temp_path "{dir}/uwsgi";
    scgi_temp_path "{dir}/scgi";
    # The sample service answers slowly on purpose (faults up to 10 s).
    proxy_read_timeout 15s;
{services}}}
"""

_SERVICE = """\
    include "{include}";
    upstream {upstream}_stable {{ server {stable}; }}
    upstream {upstream}_canary {{ server {canary}; }}
    server {{
        listen 127.0.0.1:{port};
        location = /shipwatch/{service} {{ return 200 ${upstream}_pct; }}
        location / {{ proxy_pass http://{upstream}_${upstream}; }}
    }}
"""


class DemoNginx:
    engine = "nginx"

    def __init__(self, binary: str, data_dir: Path) -> None:
        self.binary = binary
        self.data_dir = data_dir
        self.label = "NGINX"
        self._ports: dict[str, int] = {}
        self._workdir: Path | None = None
        self._daemon = Daemon("nginx", data_dir / "nginx.log")

    def _dir(self) -> Path:
        assert self._workdir is not None
        return self._workdir

    def _include(self, service: str) -> Path:
        return self._dir() / f"split-{service}.conf"

    def _command(self, *args: str) -> list[str]:
        d = self._dir()
        conf = d / "nginx.conf"
        # -e: NGINX opens its default error log before reading the config; not ours to write.
        return [self.binary, "-p", str(d), "-c", str(conf), "-e", str(d / "error.log"), *args]

    async def start(self, pools: Mapping[str, Pools]) -> None:
        version = await version_of(self.binary, "-v")
        self.label = f"NGINX {version}".strip()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._workdir = Path(tempfile.mkdtemp(prefix="nginx-", dir=self.data_dir))
        for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self._workdir / sub).mkdir()
        self._ports = {name: free_port() for name in pools}
        services = []
        for name, p in pools.items():
            # Everyone on stable until shipwatch writes its first step.
            self._include(name).write_text(render_include(name, 0, "", SPLIT_KEY))
            services.append(
                _SERVICE.format(
                    include=self._include(name),
                    upstream=variable(name),
                    stable=p.stable,
                    canary=p.canary,
                    port=self._ports[name],
                    service=name,
                )
            )
        (self._workdir / "nginx.conf").write_text(
            _HTTP.format(dir=self._workdir, services="".join(services)), encoding="utf-8"
        )
        try:
            await self._daemon.start(self._command("-g", "daemon off;"))
            await until_listening(list(self._ports.values()), self._daemon.exited, START_TIMEOUT_S)
        except BaseException:
            await self.stop()
            raise

    def entry(self, service: str) -> str:
        return f"http://127.0.0.1:{self._ports[service]}"

    def traffic(self, service: str) -> dict[str, str]:
        return {
            "backend": "nginx",
            "include_file": str(self._include(service)),
            "test_command": shlex.join(self._command("-t", "-q")),
            "reload_command": shlex.join(self._command("-s", "reload")),
            "marker_url": f"{self.entry(service)}/shipwatch/{service}",
            "split_key": SPLIT_KEY,
        }

    async def stop(self) -> None:
        await self._daemon.stop()
        workdir, self._workdir = self._workdir, None
        if workdir is not None:
            await asyncio.to_thread(shutil.rmtree, workdir, True)


def find_nginx() -> str | None:
    return find("nginx")
