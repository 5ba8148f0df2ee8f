"""NGINX in front of the demo's pools, driven by shipwatch's nginx backend.

One server per service on a free port. Its include (the file shipwatch rewrites at each step)
sets ``$shipwatch_<service>`` to ``stable`` or ``canary`` from a ``split_clients`` on the user
(the ``user`` query parameter the load generator sends), and requests go to the upstream of that
name; a marker location shows the percent the running workers apply. Every change is tested
(``nginx -t``) and reloaded, as the README documents for production.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from pathlib import Path

from bot.demo.daemon import find
from bot.demo.proxy import Pools, ProxyProcess
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


class DemoNginx(ProxyProcess):
    engine = "nginx"
    product = "NGINX"

    def _include(self, service: str) -> Path:
        return self.workdir / f"split-{service}.conf"

    def _command(self, *args: str) -> list[str]:
        d = self.workdir
        conf = d / "nginx.conf"
        # -e: NGINX opens its default error log before reading the config; not ours to write.
        return [self.binary, "-p", str(d), "-c", str(conf), "-e", str(d / "error.log"), *args]

    async def start(self, pools: Mapping[str, Pools]) -> None:
        ports = await self._prepare(list(pools))
        for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.workdir / sub).mkdir()
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
                    port=ports[name],
                    service=name,
                )
            )
        (self.workdir / "nginx.conf").write_text(
            _HTTP.format(dir=self.workdir, services="".join(services)), encoding="utf-8"
        )
        await self._run(self._command("-g", "daemon off;"))

    def traffic(self, service: str) -> dict[str, str]:
        return {
            "backend": "nginx",
            "include_file": str(self._include(service)),
            "test_command": shlex.join(self._command("-t", "-q")),
            "reload_command": shlex.join(self._command("-s", "reload")),
            "marker_url": f"{self.entry(service)}/shipwatch/{service}",
            "split_key": SPLIT_KEY,
        }


def find_nginx() -> str | None:
    return find("nginx")
