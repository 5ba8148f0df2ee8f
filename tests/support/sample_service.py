"""The product's sample service (bot.demo.service) for synchronous tests: one instance of one
version on 127.0.0.1, serving from an event loop of its own on a background thread.

Tests run two of these side by side (a stable and a canary version of the same service), point
a real Prometheus at them and change their behaviour while they run, through
``SampleService.configure`` or ``POST /admin/config`` (see bot.demo.service for the routes).
``generate_load`` is the product's load generator, bounded, on a background thread as well.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Coroutine, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry

from bot.demo.load import LoadGenerator as _AsyncLoad
from bot.demo.load import LoadStats
from bot.demo.service import MAX_LATENCY, Behaviour, DemoService

__all__ = [
    "MAX_LATENCY",
    "Behaviour",
    "LoadGenerator",
    "SampleService",
    "generate_load",
    "sample_service",
]

T = TypeVar("T")
# Starting or stopping a server or the load takes milliseconds; this only bounds a hang.
_CALL_TIMEOUT = 15.0


class _LoopThread:
    """An event loop running on a daemon thread, for code that is not async itself."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(_CALL_TIMEOUT)

    def close(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
        self.loop.close()


class SampleService:
    """One instance of ``service`` that always serves ``version``.

    The port is bound at construction (Prometheus needs the address in its config before it
    starts); requests are answered from ``start()`` to ``stop()``.
    """

    def __init__(self, service: str, version: str, behaviour: Behaviour | None = None) -> None:
        self.app = DemoService(service, version, behaviour)
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self._loop: _LoopThread | None = None

    @property
    def service(self) -> str:
        return self.app.service

    @property
    def version(self) -> str:
        return self.app.version

    @property
    def registry(self) -> CollectorRegistry:
        return self.app.registry

    @property
    def requests_served(self) -> int:
        return self.app.requests_served

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def target(self) -> str:
        """``host:port`` as Prometheus wants it in a static scrape config."""
        return f"127.0.0.1:{self.port}"

    @property
    def behaviour(self) -> Behaviour:
        return self.app.behaviour

    def configure(
        self, *, error_rate: float | None = None, latency: float | None = None
    ) -> Behaviour:
        """Change the behaviour at run time; returns the new one."""
        return self.app.configure(error_rate=error_rate, latency=latency)

    def metrics(self) -> bytes:
        return self.app.metrics()

    def start(self) -> None:
        if self._loop is not None:
            raise RuntimeError(f"{self.service} {self.version} already started")
        self._loop = _LoopThread(f"sample-{self.service}-{self.version}")
        self._loop.call(self.app.start(sock=self._sock))

    def stop(self) -> None:
        loop, self._loop = self._loop, None
        if loop is None:
            self._sock.close()
            return
        try:
            loop.call(self.app.stop())
        finally:
            loop.close()


@contextmanager
def sample_service(
    service: str, version: str, *, error_rate: float = 0.0, latency: float = 0.0
) -> Iterator[SampleService]:
    """Run one instance on a free port for the duration of the block."""
    app = SampleService(service, version, Behaviour(error_rate=error_rate, latency=latency))
    app.start()
    try:
        yield app
    finally:
        app.stop()


class LoadGenerator:
    """``bot.demo.load.LoadGenerator`` on a thread of its own: ``per_second`` requests to each
    URL, stopping after ``max_seconds``, after ``max_requests`` or at ``stop()``."""

    def __init__(
        self,
        urls: Sequence[str],
        *,
        per_second: float = 40.0,
        max_seconds: float = 60.0,
        max_requests: int = 20_000,
    ) -> None:
        self._load = _AsyncLoad(
            urls, per_second=per_second, max_seconds=max_seconds, max_requests=max_requests
        )
        self._loop: _LoopThread | None = None

    def start(self) -> None:
        self._loop = _LoopThread("sample-load")
        self._loop.call(self._begin())

    async def _begin(self) -> None:
        self._load.start()  # needs the loop it will run on

    def stop(self) -> None:
        loop, self._loop = self._loop, None
        if loop is None:
            return
        try:
            loop.call(self._load.stop())
        finally:
            loop.close()

    def stats(self) -> LoadStats:
        return self._load.stats()

    @property
    def sent(self) -> int:
        return self._load.stats().sent

    @property
    def failed(self) -> int:
        return self._load.stats().failed


@contextmanager
def generate_load(
    urls: Sequence[str],
    *,
    per_second: float = 40.0,
    max_seconds: float = 60.0,
    max_requests: int = 20_000,
) -> Iterator[LoadGenerator]:
    load = LoadGenerator(
        urls, per_second=per_second, max_seconds=max_seconds, max_requests=max_requests
    )
    load.start()
    try:
        yield load
    finally:
        load.stop()
