"""The bolt app: the Slack transport around the core, nothing more."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from slack_bolt.async_app import AsyncApp

from handlers import actions, commands, events
from handlers.context import KEY, Core

log = logging.getLogger(__name__)


def build_bolt(core: Core, signing_secret: str) -> AsyncApp:
    bolt = AsyncApp(
        client=core.client,
        token=core.client.token,
        signing_secret=signing_secret,
        name="shipwatch",
    )

    async def hand_over_core(context: Any, next: Callable[[], Awaitable[None]]) -> None:
        context[KEY] = core
        await next()

    bolt.use(hand_over_core)
    commands.register(bolt)
    actions.register(bolt)
    events.register(bolt)
    return bolt
