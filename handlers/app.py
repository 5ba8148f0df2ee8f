"""The bolt app: the Slack transport around the core, nothing more."""

from __future__ import annotations

import logging

from slack_bolt.async_app import AsyncApp

from handlers import actions, commands, events
from handlers.context import Core

log = logging.getLogger(__name__)


def build_bolt(core: Core, signing_secret: str) -> AsyncApp:
    # process_before_response: bolt answers as soon as the listener returns, instead of
    # polling every 10 ms for an ack from a listener running in the background; listeners
    # only ack and queue the real work (handlers.after_ack), so they return at once.
    bolt = AsyncApp(
        client=core.client,
        signing_secret=signing_secret,
        name="shipwatch",
        process_before_response=True,
    )
    # The core is handed to each handler when it is registered, not put in bolt's context.
    commands.register(bolt, core)
    actions.register(bolt, core)
    events.register(bolt, core)
    return bolt
