"""`shipwatch serve`: Slack over HTTP (or Socket Mode), health, readiness and metrics, and the
controller in the same process unless told otherwise."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.adapter.socket_mode.aiohttp import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp
from slack_sdk.errors import SlackApiError

from bot import telemetry
from bot.app import App, build_app
from bot.config import Settings
from bot.errors import ShipwatchError
from bot.policy import Policy
from handlers.api import api_routes, load_tokens
from handlers.app import build_bolt
from handlers.client import web_client
from handlers.context import Core
from handlers.notifier import SlackNotifier

log = logging.getLogger(__name__)

READY_TIMEOUT = 3.0


def web_app(core: Core, bolt: AsyncApp | None) -> web.Application:
    app = web.Application()

    async def slack_events(request: web.Request) -> web.Response:
        if bolt is None:
            return web.json_response({"error": "Slack runs over Socket Mode here"}, status=404)
        response = await bolt.async_dispatch(await to_bolt_request(request))
        return await to_aiohttp_response(response)

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
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
        return web.Response(
            body=generate_latest(telemetry.REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    app.add_routes(
        [
            web.post("/slack/events", slack_events),
            web.get("/healthz", healthz),
            web.get("/readyz", readyz),
            web.get("/metrics", metrics),
            # The CI API needs nothing of Slack: it is served with or without bolt.
            *api_routes(core),
        ]
    )
    return app


async def build_core(settings: Settings, policy: Policy) -> tuple[Core, SlackNotifier]:
    if settings.slack_bot_token is None or settings.slack_signing_secret is None:
        raise ShipwatchError(
            "SLACK_BOT_TOKEN and SLACK_SIGNING_SECRET are required for `serve`; "
            "`shipwatch console` runs without Slack"
        )
    load_tokens(settings, policy)  # a malformed SHIPWATCH_API_TOKENS stops us before anything runs
    app: App = await build_app(settings, policy=policy)
    client = web_client(settings.slack_bot_token.get_secret_value(), settings.slack_api_url)
    notifier = SlackNotifier(client, app.store, app.current_policy)
    try:
        bot_user_id = str((await client.auth_test()).get("user_id", ""))
    except SlackApiError as exc:
        await app.close()
        raise ShipwatchError(
            f"Slack refused the bot token ({exc.response.get('error')}): check SLACK_BOT_TOKEN"
        ) from exc
    app.events.notifiers.append(notifier)
    if app.narrator is not None:
        app.narrator.link_for = notifier.permalink
    return Core(app, client, bot_user_id=bot_user_id), notifier


async def serve(
    settings: Settings, policy: Policy, *, controller: bool = True, socket: bool = False
) -> int:
    core, notifier = await build_core(settings, policy)
    assert settings.slack_signing_secret is not None
    bolt = build_bolt(core, settings.slack_signing_secret.get_secret_value())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    core.app.events.start()
    notifier.start()
    runner = web.AppRunner(web_app(core, None if socket else bolt))
    await runner.setup()
    site = web.TCPSite(runner, "0.0.0.0", settings.port)
    await site.start()
    log.info(
        "listening on :%d (%s); metrics from %s",
        settings.port,
        "Socket Mode" if socket else "HTTP",
        core.app.source.name,
    )
    socket_handler = None
    if socket:
        if settings.slack_app_token is None:
            raise ShipwatchError("--socket needs SLACK_APP_TOKEN (an xapp- token)")
        socket_handler = AsyncSocketModeHandler(bolt, settings.slack_app_token.get_secret_value())
        await socket_handler.connect_async()  # type: ignore[no-untyped-call]
    control = (
        asyncio.create_task(core.app.controller.run(stop), name="controller")
        if controller
        else None
    )
    try:
        await stop.wait()
    finally:
        # Stop taking work first, then let the controller finish its round and hand over.
        await runner.cleanup()
        if socket_handler is not None:
            await socket_handler.close_async()  # type: ignore[no-untyped-call]
        if control is not None:
            await control
        await notifier.close()
        await core.responses.close()
        await core.app.close()
    return 0
