"""The start/stop part every local HTTP stand-in shares: an aiohttp app on 127.0.0.1.

A stand-in subclasses ``LocalServer``, says what it serves in ``routes`` (or builds the whole
app in ``build_app``), and gets the rest:

    class Echo(LocalServer):
        def routes(self, router: web.UrlDispatcher) -> None:
            router.add_post("/echo", self._echo)

    async with Echo() as echo:
        url = f"{echo.base_url}/echo"

The server binds a free port in the running event loop. ``port`` and ``base_url`` keep
answering after ``close`` (a test may name the address of a server it stopped); before the
first ``start`` they raise. A handler that must wait (a slow answer, a hung upstream) waits
with ``stall``, which ends early once the server closes, so closing never waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType
from typing import Self

from aiohttp import web

HOST = "127.0.0.1"


class LocalServer:
    """An aiohttp app served on 127.0.0.1 at a free port; ``start`` or ``async with`` it."""

    def __init__(self, *, shutdown_timeout: float = 0.5) -> None:
        # Short by default: a test ending while an answer is still pending must not wait
        # aiohttp's default minute for it.
        self.shutdown_timeout = shutdown_timeout
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._closing = asyncio.Event()

    # -- what is served ----------------------------------------------------------------------

    def routes(self, router: web.UrlDispatcher) -> None:
        """Add the stand-in's routes; called once per ``start`` by ``build_app``."""
        raise NotImplementedError(f"{type(self).__name__} serves no routes")

    def build_app(self) -> web.Application:
        """The app to serve; override for application options (a body size limit, say)."""
        app = web.Application()
        self.routes(app.router)
        return app

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> Self:
        """Serve on a free port of 127.0.0.1 (nothing happens if already serving)."""
        if self._runner is not None:
            return self
        runner = web.AppRunner(
            self.build_app(), access_log=None, shutdown_timeout=self.shutdown_timeout
        )
        await runner.setup()
        await web.TCPSite(runner, HOST, 0).start()
        self._closing.clear()
        self._runner = runner
        self._port = int(runner.addresses[0][1])
        return self

    async def close(self) -> None:
        """Stop serving; handlers in ``stall`` return at once. Closing twice is harmless."""
        runner, self._runner = self._runner, None
        if runner is not None:
            self._closing.set()
            await runner.cleanup()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- where it is -------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return self._port

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``, no trailing slash."""
        return f"http://{HOST}:{self.port}"

    # -- for handlers ------------------------------------------------------------------------

    async def stall(self, seconds: float | None = None) -> None:
        """Wait ``seconds`` (forever if ``None``), or until the server closes if sooner."""
        if seconds is None:
            await self._closing.wait()
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), timeout=seconds)
