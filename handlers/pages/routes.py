"""The release page's routes: parse, let the gate decide, read through the core, render."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time

from aiohttp import web

from bot.engine.release_page import read_index, read_mark, read_page
from bot.errors import StoreError
from bot.page_links import PageLinks, page_path
from bot.release.rollout import Release
from bot.render.page import release_main, release_page
from bot.render.page_index import index_page
from handlers.api.tokens import TokenRing, load_tokens
from handlers.context import Core
from handlers.pages.access import Access, Gate, html_answer, new_nonce, not_found, refusal

log = logging.getLogger(__name__)

INDEX = "/releases"
PAGE = "/releases/{service}/{release_id}"
EVENTS = PAGE + "/events"

# How often a live page's record is looked at, how often an idle stream says it is alive
# (proxies close connections silent for a minute or so), and how long one stream lasts before
# the browser is asked to reconnect (so no connection outlives a deploy of the proxy by hours).
POLL_S = 1.0
HEARTBEAT_S = 15.0
STREAM_S = 600.0
RECONNECT_MS = 3000


def _unavailable(exc: StoreError) -> web.Response:
    log.warning("release page: %s", exc)
    return refusal(
        503,
        "Try again shortly",
        "The release store (Redis) cannot be read right now.",
        "Reload in a few seconds.",
        **{"Retry-After": "5"},
    )


class PageRoutes:
    def __init__(
        self,
        core: Core,
        draining: asyncio.Event,
        *,
        poll: float = POLL_S,
        heartbeat: float = HEARTBEAT_S,
    ) -> None:
        settings = core.app.settings
        self.core = core
        self.draining = draining
        self.poll = poll
        self.heartbeat = heartbeat
        self.links = PageLinks.from_settings(settings.page_secret, settings.public_url)
        self.gate = Gate(self.links, TokenRing(load_tokens(settings, core.app.policy)))

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get(INDEX, self.index),
            web.get(PAGE, self.page),
            web.get(EVENTS, self.events),
        ]

    async def page(self, request: web.Request) -> web.Response:
        service, release_id = request.match_info["service"], request.match_info["release_id"]
        access = self.gate.release(request, service, release_id)
        if isinstance(access, web.Response):
            return access
        try:
            view = await read_page(self.core.app.store, self.core.app.policy, release_id)
        except StoreError as exc:
            return _unavailable(exc)
        if view is None or view.release.service != service:
            return not_found(service)
        # EventSource cannot send a header: only a link's query can follow the page live.
        events = f"{page_path(service, release_id)}/events?{access.query}" if access.query else ""
        nonce = new_nonce()
        if request.query.get("part") == "main":  # what a live page swaps in
            return html_answer(200, release_main(view, events_url=events), nonce)
        return html_answer(200, release_page(view, nonce, events_url=events), nonce)

    async def index(self, request: web.Request) -> web.Response:
        token = self.gate.token(request)
        if isinstance(token, web.Response):
            return token
        services = [s for s in self.core.app.policy.services if token.allows(s)]
        try:
            found = await read_index(self.core.app.store, services)
        except StoreError as exc:
            return _unavailable(exc)
        nonce = new_nonce()
        return html_answer(200, index_page(found, self._link_to, nonce), nonce)

    def _link_to(self, release: Release) -> str:
        # Same origin, so no public URL is needed; signed when links are on, so a browser
        # can open it without the token.
        path = page_path(release.service, release.id)
        if not self.links.secret:
            return path
        expires = int(time.time()) + 3600
        return f"{path}?{self.links.query(release.service, release.id, expires)}"

    async def events(self, request: web.Request) -> web.StreamResponse:
        service, release_id = request.match_info["service"], request.match_info["release_id"]
        access = self.gate.release(request, service, release_id)
        if isinstance(access, web.Response):
            return access
        try:
            mark = await read_mark(self.core.app.store, release_id)
        except StoreError as exc:
            return _unavailable(exc)
        if mark is None or mark.service != service:
            return not_found(service)
        return await self._stream(request, access, release_id, mark.rev)

    async def _stream(
        self, request: web.Request, access: Access, release_id: str, rev: int
    ) -> web.StreamResponse:
        stream = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-store",
                # nginx and others buffer answers by default; a buffered stream never arrives.
                "X-Accel-Buffering": "no",
            }
        )
        await stream.prepare(request)
        # A reconnecting browser says which revision it saw last; a new one compares with
        # the page it was served, which is the current record or a moment older.
        seen = request.headers.get("Last-Event-ID", "")
        last = int(seen) if seen.isdigit() else rev
        started = time.monotonic()
        quiet_since = started
        with contextlib.suppress(ConnectionResetError):
            await stream.write(f"retry: {RECONNECT_MS}\n: {access.by}\n\n".encode())
            while not self.draining.is_set() and time.monotonic() - started < STREAM_S:
                try:
                    mark = await read_mark(self.core.app.store, release_id)
                except StoreError as exc:
                    log.warning("release page stream: %s", exc)  # look again next time
                else:
                    if mark is not None and mark.rev != last:
                        last = mark.rev
                        data = json.dumps({"rev": mark.rev, "active": mark.active})
                        await stream.write(
                            f"id: {mark.rev}\nevent: changed\ndata: {data}\n\n".encode()
                        )
                        quiet_since = time.monotonic()
                    if mark is None or not mark.active:
                        # Finished (or forgotten): nothing more will change; the browser
                        # closes on "end" instead of reconnecting.
                        await stream.write(b"event: end\ndata: {}\n\n")
                        break
                if time.monotonic() - quiet_since >= self.heartbeat:
                    await stream.write(b": still here\n\n")
                    quiet_since = time.monotonic()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.draining.wait(), self.poll)
        return stream


def page_routes(core: Core, draining: asyncio.Event) -> list[web.RouteDef]:
    """The release page's routes for ``web_app``; read-only, and nothing of Slack."""
    return PageRoutes(core, draining).routes()
