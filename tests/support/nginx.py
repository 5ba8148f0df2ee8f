"""A real NGINX for the tests: its own prefix in a temp dir, a server whose answer is the
``$shipwatch_checkout`` variable of the include shipwatch writes, and the marker location;
started on a free port in the foreground and stopped by pid."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.procs import free_port, require_binary, stop_process, wait_for_port

CONFIG = """\
pid {tmp}/nginx.pid;
error_log {tmp}/error.log;
events {{}}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    include {tmp}/split-checkout.conf;
    server {{
        listen 127.0.0.1:{port};
        location = /shipwatch/checkout {{ return 200 $shipwatch_checkout_pct; }}
        location / {{ return 200 $shipwatch_checkout; }}
    }}
}}
"""

# What the include holds before shipwatch first writes it: everyone on stable.
EMPTY_INCLUDE = (
    'split_clients "${http_x_user_id}" $shipwatch_checkout { * stable; }\n'
    "map $host $shipwatch_checkout_pct { default 0; }\n"
)


@dataclass
class Nginx:
    tmp: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def binary(self) -> str:
        return require_binary("nginx")

    @property
    def base(self) -> list[str]:
        return [self.binary, "-p", str(self.tmp), "-c", str(self.tmp / "nginx.conf")]

    @property
    def include_file(self) -> str:
        return str(self.tmp / "split-{service}.conf")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def marker_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/shipwatch/{{service}}"

    def command(self, *args: str) -> str:
        return " ".join([*self.base, *args])

    def start(self) -> None:
        log = (self.tmp / "nginx.out").open("ab")
        self.process = subprocess.Popen([*self.base, "-g", "daemon off;"], stdout=log, stderr=log)
        wait_for_port(self.port)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.process = None


@contextmanager
def nginx_running(tmp: Path) -> Iterator[Nginx]:
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (tmp / sub).mkdir(exist_ok=True)
    proxy = Nginx(tmp, free_port())
    (tmp / "nginx.conf").write_text(CONFIG.format(tmp=tmp, port=proxy.port), encoding="utf-8")
    (tmp / "split-checkout.conf").write_text(EMPTY_INCLUDE, encoding="utf-8")
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()
