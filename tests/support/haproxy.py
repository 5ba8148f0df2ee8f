"""A real HAProxy for the tests: a frontend that splits users by a map entry per service, the
runtime API on a unix socket, started on a free port and stopped by pid.

The split is the one the README documents for the haproxy backend's map mode: the user id
(``X-User-Id``) is hashed into a bucket 0..99, and buckets below the service's map value go to
the canary. The two backends answer their own name, so a test counts the split from the answers.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.procs import free_port, require_binary, stop_process, wait_for_port

CONFIG = """\
global
    stats socket {socket} mode 600 level admin
defaults
    mode http
    timeout connect 2s
    timeout client 5s
    timeout server 5s
frontend fe
    bind 127.0.0.1:{port}
    http-request set-var(txn.pct) req.hdr(X-Service),map_str_int({map},0)
    http-request set-var(txn.bucket) req.hdr(X-User-Id),xxh32,mod(100)
    acl to_canary var(txn.bucket),sub(txn.pct) -m int lt 0
    use_backend canary if to_canary
    default_backend stable
backend stable
    http-request return status 200 content-type text/plain string "stable"
backend canary
    http-request return status 200 content-type text/plain string "canary"
backend pool
    server stable 127.0.0.1:9 weight 100
    server canary 127.0.0.1:9 weight 0
"""


@dataclass
class HAProxy:
    tmp: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> str:
        return str(self.tmp / "admin.sock")

    @property
    def map_file(self) -> str:
        return str(self.tmp / "canary.map")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def start(self) -> None:
        config = self.tmp / "haproxy.cfg"
        config.write_text(
            CONFIG.format(socket=self.socket, port=self.port, map=self.map_file), encoding="utf-8"
        )
        log = (self.tmp / "haproxy.log").open("ab")
        self.process = subprocess.Popen(
            [require_binary("haproxy"), "-f", str(config), "-db"], stdout=log, stderr=log
        )
        wait_for_port(self.port)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.process = None

    def restart(self) -> None:
        """Stopped and started again: what a reload does to runtime changes (they are gone)."""
        self.stop()
        self.start()


@contextmanager
def haproxy_running(tmp: Path) -> Iterator[HAProxy]:
    (tmp / "canary.map").write_text("", encoding="utf-8")
    proxy = HAProxy(tmp, free_port())
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()
