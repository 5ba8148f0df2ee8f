"""Events: mentions of the bot. Retried deliveries are acted on once (deduped on event_id)."""

from __future__ import annotations

import logging
import re
from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp
from slack_sdk.errors import SlackApiError, SlackClientError

from bot.observe.logs import log_context
from bot.release.rollout import Release
from bot.render.kit import plain_message
from bot.render.thread import answer_message
from handlers.client import slack_error
from handlers.context import Core, status_of
from handlers.inbound import unescaped

log = logging.getLogger(__name__)


def register(app: AsyncApp, core: Core) -> None:
    # Ack alone answers Slack; the event is handled right after (handlers.after_ack).
    async def mention(ack: AsyncAck, body: dict[str, Any], event: dict[str, Any]) -> None:
        await ack()

        async def work() -> None:
            with log_context(event_id=body.get("event_id")):
                await on_mention(core, body, event)

        core.after_ack.submit(work)

    async def message(ack: AsyncAck, body: dict[str, Any], event: dict[str, Any]) -> None:
        await ack()

        async def work() -> None:
            with log_context(event_id=body.get("event_id")):
                await on_thread_reply(core, body, event)

        core.after_ack.submit(work)

    app.event("app_mention")(mention)
    app.event("message")(message)


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
        message = plain_message(text)
        try:
            await core.client.chat_postMessage(
                channel=channel, thread_ts=thread_ts, text=message.text, blocks=message.blocks
            )
        except (SlackApiError, SlackClientError, TimeoutError) as exc:
            error = slack_error(exc) if isinstance(exc, SlackApiError) else str(exc)
            log.warning("cannot answer a mention in %s: %s", channel, error)
        return
    with log_context(release_id=release.id, service=release.service):
        await _answer(core, release, channel, thread_ts, str(event.get("text", "")))


async def on_thread_reply(core: Core, body: dict[str, Any], event: dict[str, Any]) -> None:
    """A question asked in a release thread the bot owns, without mentioning it."""
    thread_ts = str(event.get("thread_ts") or "")
    text = str(event.get("text", ""))
    # Only people's replies that ask something: the bot's own posts, edits and chatter
    # between people are left alone. Mentions are answered by on_mention.
    if (
        not thread_ts
        or event.get("bot_id")
        or event.get("subtype")
        or "?" not in text
        or f"<@{core.bot_user_id}>" in text
    ):
        return
    if not await core.app.store.first_time(str(body.get("event_id", ""))):
        return
    channel = str(event.get("channel", ""))
    release = await core.app.store.release_for_thread(channel, thread_ts)
    if release is not None:
        with log_context(release_id=release.id, service=release.service):
            await _answer(core, release, channel, thread_ts, text)


async def _answer(
    core: Core, release: Release, channel: str, thread_ts: str, question: str
) -> None:
    narrator = core.app.narrator
    thread: list[dict[str, Any]] = []
    try:
        replies = await core.client.conversations_replies(channel=channel, ts=thread_ts, limit=50)
        thread = [m for m in replies.get("messages") or [] if isinstance(m, dict)]
    except SlackApiError as exc:
        log.warning("cannot read thread %s: %s", thread_ts, slack_error(exc))
    # Mentions arrive as markup, what the person typed as entities: drop the first, undo the
    # second.
    question = unescaped(re.sub(r"<@[A-Z0-9]+>", "", question)).strip()
    if narrator is None or not question:
        message = status_of(core, release)
    else:
        message = answer_message(await narrator.answer(release, question, thread))
    await core.notifier.reply(release, message)
