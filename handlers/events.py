"""Events: mentions of the bot. Retried deliveries are acted on once (deduped on event_id)."""

from __future__ import annotations

from typing import Any

from slack_bolt.async_app import AsyncApp

from handlers.commands import ack_only
from handlers.context import Core, status_of


def register(app: AsyncApp, core: Core) -> None:
    async def work(body: dict[str, Any], event: dict[str, Any]) -> None:
        await on_mention(core, body, event)

    app.event("app_mention")(ack=ack_only, lazy=[work])
    # Plain messages are not acted on yet; registering keeps bolt from logging them as unhandled.
    app.event("message")(ack=ack_only, lazy=[on_message])


async def on_mention(core: Core, body: dict[str, Any], event: dict[str, Any]) -> None:
    if not await core.app.store.first_time(str(body.get("event_id", ""))):
        return
    channel = str(event.get("channel", ""))
    thread_ts = str(event.get("thread_ts") or event.get("ts") or "")
    release = await core.app.store.release_for_thread(channel, thread_ts)
    if release is None:
        text = (
            "Mention me in a release's thread and I will answer about that release; "
            "`/rollout help` lists the commands."
        )
        await core.client.chat_postMessage(channel=channel, thread_ts=thread_ts, text=text)
        return
    message = status_of(core, release)
    await core.client.chat_postMessage(
        channel=channel, thread_ts=thread_ts, text=message.text, blocks=message.blocks
    )


async def on_message(body: dict[str, Any]) -> None:
    return None
