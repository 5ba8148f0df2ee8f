"""Buttons on the status message. A click carries only an opaque id; it is checked against
the release's current state and the clicker's permissions before anything happens."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp
from slack_sdk.errors import SlackApiError

from bot.engine.events import EventKind, ReleaseEvent
from bot.engine.service import Outcome, Result
from bot.observe.logs import log_context
from bot.release.rollout import Release
from bot.render.blocks import (
    ACTION_ADVANCE,
    ACTION_APPROVE,
    ACTION_EDIT_NOTES,
    ACTION_PAUSE,
    ACTION_RESUME,
    ACTION_ROLLBACK,
    NOTES_INPUT_ACTION,
    NOTES_INPUT_BLOCK,
    NOTES_MODAL,
    ephemeral,
    notes_modal,
    parse_button_value,
    stale_reason,
)
from handlers.commands import ack_only
from handlers.context import Core, error_message
from handlers.people import actor_for

log = logging.getLogger(__name__)

ACTIONS = (ACTION_ADVANCE, ACTION_APPROVE, ACTION_PAUSE, ACTION_RESUME, ACTION_ROLLBACK)


def register(app: AsyncApp, core: Core) -> None:
    # Ack alone answers Slack; the click is handled right after, as a lazy listener.
    async def work(body: dict[str, Any], action: dict[str, Any]) -> None:
        with log_context(trigger_id=body.get("trigger_id"), action_ts=action.get("action_ts")):
            await on_button(core, body, action)

    for action_id in ACTIONS:
        app.action(action_id)(ack=ack_only, lazy=[work])

    async def edit(ack: AsyncAck, body: dict[str, Any], action: dict[str, Any]) -> None:
        await ack()
        await on_edit_notes(core, body, action)

    # views.open must use the trigger within 3 s: it runs in the ack function itself.
    app.action(ACTION_EDIT_NOTES)(edit)
    app.view(NOTES_MODAL)(ack=ack_only, lazy=[_saver(core)])


async def on_button(core: Core, body: dict[str, Any], action: dict[str, Any]) -> None:
    action_id = str(action.get("action_id", ""))
    user = str(body.get("user", {}).get("id", ""))
    try:
        ref = parse_button_value(str(action.get("value", "")))
        release = await core.app.store.get(ref.release_id)
        if release is None:
            message = ephemeral(":grey_question: this release is not known any more")
        elif stale := stale_reason(release, ref, action_id):
            # The same staleness rule as the console's numbered buttons.
            message = ephemeral(f":hourglass: this button is out of date: {stale}")
        else:
            with log_context(release_id=release.id, service=release.service):
                result = await _click(
                    core,
                    action_id,
                    release,
                    ref.step,
                    user,
                    request_id=f"slack:{body.get('trigger_id', '')}",
                )
            prefix = "(already applied) " if result.outcome is Outcome.DUPLICATE else ""
            message = ephemeral(prefix + (result.message or result.release.describe_state()))
    except Exception as exc:
        message = error_message(exc, what=f"button {action_id} by {user}")
    await core.responses.send(str(body.get("response_url", "")), message)


async def on_edit_notes(core: Core, body: dict[str, Any], action: dict[str, Any]) -> None:
    release = await core.app.store.get(str(action.get("value", "")))
    if release is None:
        return
    try:
        await core.client.views_open(
            trigger_id=str(body.get("trigger_id", "")), view=notes_modal(release)
        )
    except SlackApiError as exc:
        log.warning("cannot open the notes editor: %s", exc.response.get("error"))


def _saver(core: Core) -> Callable[[dict[str, Any], dict[str, Any]], Awaitable[None]]:
    async def save(body: dict[str, Any], view: dict[str, Any]) -> None:
        user = str(body.get("user", {}).get("id", ""))
        state = view.get("state", {}).get("values", {})
        notes = str(state.get(NOTES_INPUT_BLOCK, {}).get(NOTES_INPUT_ACTION, {}).get("value") or "")
        release_id = str(view.get("private_metadata", ""))
        try:
            release = await core.app.store.get(release_id)
            sp = core.app.policy.services.get(release.service) if release else None
            actor = await actor_for(user, sp, core.client, core.app.store)
            updated = await core.app.service.edit_notes(actor, release_id, notes)
        except Exception as exc:
            message = error_message(exc, what=f"notes of {release_id} by {user}")
            await core.client.chat_postMessage(
                channel=user, text=message.text, blocks=message.blocks
            )
            return
        core.app.events.emit(
            ReleaseEvent(
                EventKind.NOTES_DRAFT,
                updated,
                updated.notes,
                actor=user,
            )
        )

    return save


async def _click(
    core: Core, action_id: str, release: Release, step: int, user: str, request_id: str
) -> Result:
    service = core.app.service
    sp = core.app.policy.services.get(release.service)
    actor = await actor_for(user, sp, core.client, core.app.store)
    name = release.service
    if action_id == ACTION_ADVANCE:
        return await service.advance(actor, name, expected_step=step, request_id=request_id)
    if action_id == ACTION_APPROVE:
        return await service.approve(actor, name, expected_step=step, request_id=request_id)
    if action_id == ACTION_PAUSE:
        # Reasons are plain text; the status message names the clicker from the record.
        return await service.pause(actor, name, "paused from Slack", request_id)
    if action_id == ACTION_RESUME:
        return await service.resume(actor, name, request_id)
    return await service.rollback(actor, name, "rolled back from Slack", request_id)
