"""Buttons on the status message. A click carries only an opaque id; it is checked against
the release's current state and the clicker's permissions before anything happens."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp
from slack_sdk.errors import SlackApiError

from bot.engine.clicks import Click, ClickStatus, click
from bot.engine.events import EventKind, ReleaseEvent
from bot.engine.service import Outcome
from bot.observe.logs import log_context
from bot.release.buttons import ButtonAction
from bot.release.rollout import Actor, Release
from bot.render.errors import modal_error, report
from bot.render.kit import Message, ephemeral
from bot.render.thread import (
    ACTION_EDIT_NOTES,
    NOTES_INPUT_ACTION,
    NOTES_INPUT_BLOCK,
    NOTES_MODAL,
    notes_modal,
)
from handlers.client import slack_error
from handlers.context import Core, error_message
from handlers.people import actor_for

log = logging.getLogger(__name__)

MODAL_BUDGET_S = 2.5  # of the 3 s Slack gives a view submission's answer


def register(app: AsyncApp, core: Core) -> None:
    # Ack alone answers Slack; the click is handled right after (handlers.after_ack).
    async def ack_then_work(ack: AsyncAck, body: dict[str, Any], action: dict[str, Any]) -> None:
        await ack()

        async def work() -> None:
            with log_context(trigger_id=body.get("trigger_id"), action_ts=action.get("action_ts")):
                await on_button(core, body, action)

        core.after_ack.submit(work)

    for action_id in ButtonAction:
        app.action(action_id.value)(ack_then_work)

    async def edit(ack: AsyncAck, body: dict[str, Any], action: dict[str, Any]) -> None:
        await ack()
        await on_edit_notes(core, body, action)

    # views.open must use the trigger within 3 s: it runs in the ack function itself.
    app.action(ACTION_EDIT_NOTES)(edit)
    app.view(NOTES_MODAL)(_saver(core))


async def on_button(core: Core, body: dict[str, Any], action: dict[str, Any]) -> None:
    action_id = str(action.get("action_id", ""))
    user = str(body.get("user", {}).get("id", ""))

    async def clicker(release: Release) -> Actor:
        sp = core.app.policy.services.get(release.service)
        return await actor_for(user, sp, core.client, core.app.store)

    try:
        done = await click(
            core.app.service,
            action_id,
            str(action.get("value", "")),
            clicker,
            request_id=f"slack:{body.get('trigger_id', '')}",
        )
        message = _clicked(done)
    except Exception as exc:
        message = error_message(exc, what=f"button {action_id} by {user}")
    await core.responses.send(str(body.get("response_url", "")), message)


def _clicked(done: Click) -> Message:
    if done.status is ClickStatus.UNKNOWN_RELEASE:
        return ephemeral(":grey_question: this release is not known any more")
    if done.status is ClickStatus.STALE:
        return ephemeral(f":hourglass: this button is out of date: {done.stale}")
    assert done.result is not None
    prefix = "(already applied) " if done.result.outcome is Outcome.DUPLICATE else ""
    return ephemeral(prefix + (done.result.message or done.result.release.describe_state()))


async def on_edit_notes(core: Core, body: dict[str, Any], action: dict[str, Any]) -> None:
    release = await core.app.store.get(str(action.get("value", "")))
    if release is None:
        return
    try:
        await core.client.views_open(
            trigger_id=str(body.get("trigger_id", "")), view=notes_modal(release)
        )
    except SlackApiError as exc:
        log.warning("cannot open the notes editor: %s", slack_error(exc))


def _saver(core: Core) -> Callable[..., Awaitable[None]]:
    """The Edit-notes modal's submission: saved before the answer, so a refusal is shown in
    the modal itself (``response_action: errors``) and the modal stays open to fix it."""

    async def save(ack: AsyncAck, body: dict[str, Any], view: dict[str, Any]) -> None:
        user = str(body.get("user", {}).get("id", ""))
        state = view.get("state", {}).get("values", {})
        notes = str(state.get(NOTES_INPUT_BLOCK, {}).get(NOTES_INPUT_ACTION, {}).get("value") or "")
        release_id = str(view.get("private_metadata", ""))

        async def saved() -> Release:
            release = await core.app.store.get(release_id)
            sp = core.app.policy.services.get(release.service) if release else None
            actor = await actor_for(user, sp, core.client, core.app.store)
            return await core.app.service.edit_notes(actor, release_id, notes)

        try:
            # Slack waits 3 s for the answer; what is not done by then is refused, not lost.
            updated = await asyncio.wait_for(saved(), MODAL_BUDGET_S)
        except Exception as exc:
            failed = report(exc, what=f"notes of {release_id} by {user}", log=log)
            await ack(
                response_action="errors", errors={NOTES_INPUT_BLOCK: modal_error(exc, failed)}
            )
            return
        await ack()
        core.app.events.emit(
            ReleaseEvent(EventKind.NOTES_DRAFT, updated, updated.notes, actor=user)
        )

    return save
