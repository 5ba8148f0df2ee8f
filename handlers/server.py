"""`shipwatch serve`: Slack over HTTP (or Socket Mode), health, readiness and metrics, and the
controller in the same process unless told otherwise."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.typedefs import Handler
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from slack_bolt.adapter.socket_mode.aiohttp import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp
from slack_sdk.errors import SlackApiError

from bot.app import App, build_app
from bot.config import Settings
from bot.engine.ci_jobs import CALLBACK_PATH
from bot.errors import ShipwatchError
from bot.observe import telemetry
from bot.observe.logs import log_context, request_id_from
from bot.observe.release_metrics import ReleaseMetrics
from bot.page_links import PageLinks
from bot.release.policy import Policy
from bot.writing.digest import DigestWriter
from handlers.api.engines import api_routes
from handlers.api.tokens import load_tokens
from handlers.app import build_bolt
from handlers.client import slack_error, web_client
from handlers.context import Core
from handlers.inbound import MAX_BODY, events_endpoint
from handlers.notifier import SlackNotifier
from handlers.pages.routes import page_routes

log = logging.getLogger(__name__)

READY_TIMEOUT = 3.0
REQUEST_ID = "X-Request-Id"
# Set when a shutdown starts: /readyz answers 503 and new work is refused until the server stops.
DRAINING = web.AppKey("draining", asyncio.Event)
PROBES = frozenset({"/healthz", "/readyz", "/metrics"})
# The most an in-flight HTTP request gets to finish once the listener is closed.
HTTP_DRAIN_S = 5.0
RETRY_AFTER_S = 5
FLUSH_FLOOR_S = 1.0


@web.middleware
async def correlate(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every log line of a request carries its id: the caller's X-Request-Id when it is a
    safe one, a new one otherwise; the answer echoes it so both sides can find the lines."""
    request_id = request_id_from(request.headers.get(REQUEST_ID))
    with log_context(request_id=request_id):
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            exc.headers[REQUEST_ID] = request_id
            raise
    if not response.prepared:
        response.headers[REQUEST_ID] = request_id
    return response


@web.middleware
async def refuse_while_draining(request: web.Request, handler: Handler) -> web.StreamResponse:
    # A 503 is retried: by Slack for events, by CI per the API's contract, by a load balancer
    # on another replica; work accepted now could be cut off by the shutdown.
    if request.app[DRAINING].is_set() and request.path not in PROBES:
        return web.json_response(
            {"error": "shutting down; retry shortly"},
            status=503,
            headers={"Retry-After": str(RETRY_AFTER_S), "Connection": "close"},
        )
    return await handler(request)


def _logged_path(path: str) -> str:
    """The path as the access log writes it: a CI job's callback token is its only credential,
    so it is left out like a query string."""
    prefix = CALLBACK_PATH.split("{", 1)[0]
    return prefix + "…" if path.startswith(prefix) else path


class AccessLog(AbstractAccessLogger):
    """One line per request with the id the middleware chose (it is in the answer's headers:
    this runs after the request's log context has closed). No query string: it can carry
    credentials. Probes go to DEBUG, or they would drown the lines that matter."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        level = logging.DEBUG if request.path in PROBES else logging.INFO
        self.logger.log(
            level,
            "%s %s %d %.0fms",
            request.method,
            _logged_path(request.path),
            response.status,
            time * 1000,
            extra={
                "request_id": response.headers.get(REQUEST_ID, ""),
                "status": response.status,
                "remote": request.remote,
            },
        )


def web_app(core: Core, bolt: AsyncApp | None, *, faces: bool = True) -> web.Application:
    """The HTTP server: the probes and /metrics always; with ``faces``, Slack's events and the
    API too (a controller-only process answers neither, so nothing is acked there)."""
    # A little over the events limit, so an oversized event is answered by our 413 (with its
    # log line) rather than aiohttp's bare one.
    app = web.Application(
        middlewares=[correlate, refuse_while_draining], client_max_size=MAX_BODY + 1024
    )
    app[DRAINING] = asyncio.Event()
    release_metrics = ReleaseMetrics(core.app.store)

    secret = core.app.settings.slack_signing_secret
    slack_events = events_endpoint(bolt, secret.get_secret_value() if secret else None)

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        if app[DRAINING].is_set():
            return web.json_response({"ready": False, "draining": True}, status=503)
        problems = {}
        for name, check in (("redis", core.app.store.ping), ("metrics", core.app.source.check)):
            try:
                await asyncio.wait_for(check(), READY_TIMEOUT)
            except (ShipwatchError, TimeoutError, OSError) as exc:
                problems[name] = str(exc) or type(exc).__name__
        status = 503 if problems else 200
        return web.json_response({"ready": not problems, "problems": problems}, status=status)

    async def metrics(_: web.Request) -> web.Response:
        with contextlib.suppress(ShipwatchError):
            telemetry.ACTIVE.set(len(await core.app.store.active_index()))
        await release_metrics.refresh()  # cached, and never raises for a Redis failure
        return web.Response(
            body=generate_latest(telemetry.REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    app.add_routes(
        [web.get("/healthz", healthz), web.get("/readyz", readyz), web.get("/metrics", metrics)]
    )
    if faces:
        # The CI API needs nothing of Slack: it is served with or without bolt.
        app.add_routes([web.post("/slack/events", slack_events), *api_routes(core)])
        # The release page: read-only, for people outside Slack (links are posted there).
        app.add_routes(page_routes(core, app[DRAINING]))
    return app


async def build_core(settings: Settings, policy: Policy) -> tuple[Core, SlackNotifier]:
    if settings.slack_bot_token is None or settings.slack_signing_secret is None:
        raise ShipwatchError(
            "SLACK_BOT_TOKEN and SLACK_SIGNING_SECRET are required for `serve`; "
            "`shipwatch console` runs without Slack"
        )
    load_tokens(settings, policy)  # a malformed SHIPWATCH_API_TOKENS stops us before anything runs
    app: App = await build_app(settings, policy=policy)
    token = settings.slack_bot_token.get_secret_value()
    client = web_client(token, settings.slack_api_url)
    notifier = SlackNotifier(
        client,
        app.store,
        app.policy,
        web_client(token, settings.slack_api_url, retries=False),
        owner=app.controller.owner,
        demo_metrics=app.demo_metrics,
        rate=settings.slack_channel_rate,
        burst=settings.slack_channel_burst,
    )
    try:
        bot_user_id = str((await client.auth_test()).get("user_id", ""))
    except SlackApiError as exc:
        await app.close()
        raise ShipwatchError(
            f"Slack refused the bot token ({slack_error(exc)}): check SLACK_BOT_TOKEN"
        ) from exc
    notifier.page_links = PageLinks.from_settings(settings.page_secret, settings.public_url)
    app.events.notifiers.append(notifier)
    if app.narrator is not None:
        app.narrator.link_for = notifier.permalink
    if app.pager is not None:
        app.pager.link_for = notifier.permalink
    if app.narrator is not None:
        notifier.summarize = DigestWriter(app.narrator.llm).summarize
    return Core(app, client, notifier, bot_user_id=bot_user_id), notifier


async def serve(
    settings: Settings, policy: Policy, *, role: str = "all", socket: bool = False
) -> int:
    """Run one `serve` process: ``role`` "web" answers Slack and the API, "controller" drives
    releases (and serves only the probes and /metrics), "all" does both."""
    if socket and settings.slack_app_token is None:
        raise ShipwatchError("--socket needs SLACK_APP_TOKEN (an xapp- token)")
    if socket and role == "controller":
        raise ShipwatchError("--socket connects Slack's events: it needs --role web or all")
    controller = role != "web"
    core, notifier = await build_core(settings, policy)
    assert settings.slack_signing_secret is not None
    bolt = build_bolt(core, settings.slack_signing_secret.get_secret_value())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        log.info("received %s: shutting down", sig.name, extra={"phase": "signal"})
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, on_signal, sig)
    core.app.start()
    notifier.start()
    app = web_app(core, None if socket else bolt, faces=role != "controller")
    runner = web.AppRunner(
        app,
        access_log_class=AccessLog,
        shutdown_timeout=min(HTTP_DRAIN_S, settings.shutdown_timeout),
    )
    try:
        await runner.setup()
        site = web.TCPSite(runner, "0.0.0.0", settings.port)
        await site.start()
    except BaseException as exc:
        # A start that fails (the port is taken, say) stops what it started: the tasks, the
        # clients, and an embedded redis-server, which is a process of its own.
        await runner.cleanup()
        await notifier.close()
        await core.app.close()
        if isinstance(exc, OSError):
            raise ShipwatchError(
                f"cannot listen on port {settings.port} ({exc.strerror or exc}): set PORT to a "
                "free one"
            ) from exc
        raise
    log.info(
        "listening on :%d (%s, role %s); metrics from %s",
        settings.port,
        "Socket Mode" if socket else "HTTP",
        role,
        core.app.source.name,
    )
    for service, why in (await core.app.unreachable_engines()).items():
        log.warning(
            "the traffic engine of %s cannot be read now: %s. Its releases pause until it can.",
            service,
            why,
        )
    socket_handler = None
    if socket and settings.slack_app_token is not None:
        socket_handler = AsyncSocketModeHandler(bolt, settings.slack_app_token.get_secret_value())
        await socket_handler.connect_async()  # type: ignore[no-untyped-call]
    control = (
        asyncio.create_task(_drive(core, notifier, stop), name="controller")
        if controller
        else None
    )
    try:
        await stop.wait()
    finally:
        stop.set()  # also when we got here by an exception: the controller must stop too
        await _shut_down(settings, core, notifier, app, runner, socket_handler, control)
    return 0


async def _drive(core: Core, notifier: SlackNotifier, stop: asyncio.Event) -> None:
    """The controller and, beside it, the daily digest; both end when ``stop`` is set."""
    digest = core.app.digest
    posting = (
        asyncio.create_task(digest.run(stop, notifier), name="digest") if digest else None
    )
    try:
        await core.app.drive(stop)  # the controller and the post-release watch
    finally:
        if posting is not None:
            stop.set()  # the controller ended (even by an error): the digest ends with it
            await asyncio.wait({posting})


async def _shut_down(
    settings: Settings,
    core: Core,
    notifier: SlackNotifier,
    app: web.Application,
    runner: web.AppRunner,
    socket_handler: AsyncSocketModeHandler | None,
    control: asyncio.Task[None] | None,
) -> None:
    """Stop taking work, finish the round under way, hand the leases over, let in-flight
    requests and pending Slack messages go out, close Redis; all within shutdown_timeout."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline = started + settings.shutdown_timeout

    def left() -> float:
        return max(0.0, deadline - loop.time())

    log.info(
        "shutdown: draining; new work is refused, /readyz answers 503", extra={"phase": "drain"}
    )
    app[DRAINING].set()
    if socket_handler is not None:
        # Events not acknowledged over a closed socket are redelivered to another connection.
        await socket_handler.close_async()  # type: ignore[no-untyped-call]
    if control is not None:
        log.info("shutdown: waiting for the controller's round", extra={"phase": "controller"})
        done, _ = await asyncio.wait({control}, timeout=left())
        if not done:
            log.warning(
                "shutdown: the controller's round did not finish in time; cancelled",
                extra={"phase": "controller"},
            )
            control.cancel()
            await asyncio.wait({control})
        if not control.cancelled() and (failure := control.exception()) is not None:
            log.error("the controller stopped with an error", exc_info=failure)
    # Normally the controller dropped them as it stopped; not if its round was cut off.
    # Either way nobody should wait lease_ttl for this process's releases.
    if await core.app.controller.close():
        log.info("shutdown: this process holds no leases now", extra={"phase": "leases"})
    log.info("shutdown: closing the HTTP server", extra={"phase": "http"})
    await runner.cleanup()
    # What was acknowledged is owed: the replies and clicks queued behind the acks.
    await core.after_ack.drain(max(left(), FLUSH_FLOOR_S))
    log.info("shutdown: delivering pending messages", extra={"phase": "flush"})
    # Even when the round used the whole budget, a rollback's messages deserve a moment.
    flush = max(left(), FLUSH_FLOOR_S)
    drained = await core.app.drain(flush)
    if not drained or not await notifier.writer.flush(max(left(), FLUSH_FLOOR_S)):
        # They are in Redis: the next process (or another replica) sends them.
        log.warning(
            "shutdown: messages still pending after %.1fs; they wait in Redis for the next process",
            flush,
            extra={"phase": "flush"},
        )
    await notifier.close()
    await core.responses.close()
    log.info("shutdown: closing Redis", extra={"phase": "close"})
    await core.app.close()
    log.info("shutdown: done in %.1fs", loop.time() - started, extra={"phase": "done"})
