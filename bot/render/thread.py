"""Thread replies, one per release event, and the release-notes editor."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bot.engine.events import EventKind, ReleaseEvent
from bot.release.durations import format_duration
from bot.release.policy import Metric
from bot.release.rollout import Release
from bot.render.checks import (
    checks_blocks,
    control_label_of,
    failing_lines,
    forced_text,
    score_line,
)
from bot.render.kit import (
    Message,
    button_element,
    context_block,
    fit,
    header_block,
    paragraphs,
    plain_block,
    section_block,
)
from bot.render.mrkdwn import clip, esc, mention
from bot.render.status import approval_text, by_whom, more_pointer, release_title, step_text

ACTION_EDIT_NOTES = "shipwatch_edit_notes"


NOTES_MODAL = "shipwatch_notes_modal"  # callback_id of the release-notes edit modal


NOTES_INPUT_BLOCK = "notes"


NOTES_INPUT_ACTION = "notes_text"


# Notes and reasons in a thread reply are kept short; the status message has room for more.
EVENT_NOTES = 500


def event_message(
    event: ReleaseEvent,
    *,
    oncall: str = "",
    approvers: Sequence[str] = (),
    metrics: Sequence[Metric] = (),
) -> Message:
    r = event.release
    kind = event.kind
    title = release_title(r)
    detail = esc(event.message)
    blocks: list[dict[str, Any]] = []
    text = f"{r.service} {r.version}: {event.message}"
    page = f"🔔 On-call: {mention(oncall)}" if oncall.strip() else ""

    if kind is EventKind.STARTED:
        plan = " → ".join(f"{w}%" for w in r.weights)
        stable = esc(r.stable_version or "the current version")
        blocks.append(
            section_block(
                f"🚀 {mention(event.actor)} started {title} (replacing `{stable}`) · "
                f"{esc(r.strategy)} · risk *{esc(r.risk)}*\nPlan: {plan}"
            )
        )
        if r.notes.strip():
            blocks.append(
                context_block(f"📝 {clip(esc(r.notes.strip()), EVENT_NOTES, more_pointer(r))}")
            )
        if r.gates is not None and r.gates.forced:
            blocks.append(section_block(forced_text(r.gates)))
        text = f"{event.actor} started {r.service} {r.version}"
    elif kind is EventKind.STEP_ADVANCED:
        blocks.append(
            section_block(f"⏩ {title} is at *{r.weight}%* ({step_text(r)}){by_whom(event.actor)}")
        )
        # The controller's message adds why it advanced; a person's only repeats the line.
        if event.message != f"advanced to {r.weight}% ({step_text(r)})":
            blocks.append(context_block(detail))
        text = f"{r.service} {r.version} is at {r.weight}% ({step_text(r)})"
    elif kind is EventKind.APPROVAL_NEEDED:
        blocks.append(section_block(f"{title}: {approval_text(r, approvers)}"))
        blocks.append(context_block(detail))
        text = f"approval needed: {r.service} {r.version}"
    elif kind is EventKind.APPROVED:
        blocks.append(
            section_block(
                f"✅ {mention(event.actor)} approved *{r.weight}%* for {title} ({step_text(r)})"
            )
        )
        text = f"{event.actor} approved {r.weight}% for {r.service} {r.version}"
    elif kind is EventKind.METRICS_SUMMARY:
        blocks.append(section_block(f"📊 {title} at {r.weight}%: {detail}"))
        blocks += checks_blocks(r, event.checks, metrics, f"*Canary vs {control_label_of(r)}*")
        text = f"{r.service} {r.version} at {r.weight}%: {event.message}"
    elif kind is EventKind.PAUSED:
        by = by_whom(event.actor, event.message)
        blocks.append(section_block(f"⏸️ {title} paused at *{r.weight}%*{by}: {detail}"))
        blocks.append(
            context_block(
                f"Resume or roll back from the status message, or `/rollout resume {r.service}`."
            )
        )
        if event.checks:
            blocks += checks_blocks(r, event.checks, metrics, "*Last checks*")
        text = f"{r.service} {r.version} paused at {r.weight}%: {event.message}"
    elif kind is EventKind.RESUMED:
        blocks.append(
            section_block(
                f"▶️ {title} resumed at *{r.weight}%*{by_whom(event.actor)}; the hold restarts."
            )
        )
        text = f"{r.service} {r.version} resumed"
    elif kind is EventKind.BAKING:
        blocks.append(
            section_block(
                f"🔥 {title} is at *100%*{by_whom(event.actor)}, baking for "
                f"{format_duration(r.bake)} against the pre-release baseline."
            )
        )
        text = f"{r.service} {r.version} is at 100%, baking"
    elif kind is EventKind.SUCCEEDED:
        took = format_duration(max(0.0, (r.finished_at or event.at) - r.created_at))
        blocks.append(section_block(f"🎉 {title} is live for everyone. Took {took}."))
        text = f"{r.service} {r.version} succeeded in {took}"
    elif kind in (EventKind.ROLLBACK_STARTED, EventKind.ROLLED_BACK):
        blocks += _rollback_blocks(event, metrics, page)
        verb = "rolling back" if kind is EventKind.ROLLBACK_STARTED else "rolled back"
        text = f"{r.service} {r.version} {verb}: {r.reason or event.message}"
    elif kind is EventKind.DIAGNOSIS:
        blocks.append(section_block(f"🩺 *Why {title} was rolled back*"))
        blocks += [section_block(esc(part)) for part in paragraphs(event.message)]
        if page:
            blocks.append(context_block(page))
        text = f"diagnosis for {r.service} {r.version}: {event.message}"
    elif kind in (EventKind.NOTES_DRAFT, EventKind.NOTES_FINAL):
        final = kind is EventKind.NOTES_FINAL
        head = (
            f"📣 *{esc(r.service)} {esc(r.version)} shipped to 100%.*"
            if final
            else f"📝 *Draft release notes for {title}*"
        )
        blocks.append(section_block(head))
        blocks += [section_block(esc(part)) for part in paragraphs(event.message)]
        if not final and event.actor != "shipwatch":
            blocks.append(context_block(f"_edited by {mention(event.actor)}_"))
        if not final:
            blocks.append(
                {
                    "type": "actions",
                    "elements": [button_element("Edit notes", ACTION_EDIT_NOTES, r.id)],
                }
            )
        text = (
            f"{r.service} {r.version} shipped: {event.message}"
            if final
            else f"draft release notes for {r.service} {r.version}"
        )
    elif kind is EventKind.TICKET_FILED:
        blocks.append(section_block(f"🎫 {detail}"))
        text = f"incident ticket for {r.service} {r.version}: {event.message}"
    elif kind is EventKind.TRAFFIC_FAILED:
        blocks.append(header_block(f"🚨 Traffic change FAILED: {r.service} {r.version}"))
        blocks.append(section_block(f"*{detail}*"))
        blocks.append(
            section_block(
                f"{page or '🔔 No on-call is configured for this service.'}\n"
                "The traffic backend did not confirm the change; shipwatch keeps retrying. "
                "Check the backend now."
            )
        )
        text = f"TRAFFIC CHANGE FAILED for {r.service} {r.version}: {event.message}"
    if not blocks:  # a kind added later still gets a readable line
        blocks.append(section_block(f"{title}: {detail}"))
    return fit(blocks, text, more=more_pointer(r))


def notes_modal(release: Release) -> dict[str, Any]:
    """The modal that edits a release's notes (title ≤ 24 chars, as Slack requires)."""
    return {
        "type": "modal",
        "callback_id": NOTES_MODAL,
        "private_metadata": release.id,
        "title": plain_block("Release notes"),
        "submit": plain_block("Save"),
        "close": plain_block("Cancel"),
        "blocks": [
            context_block(f"{esc(release.service)} {esc(release.version)}"),
            {
                "type": "input",
                "block_id": NOTES_INPUT_BLOCK,
                "label": plain_block("What ships, in users' words"),
                "element": {
                    "type": "plain_text_input",
                    "action_id": NOTES_INPUT_ACTION,
                    "multiline": True,
                    "max_length": 3000,
                    "initial_value": release.notes[:3000],
                },
            },
        ],
    }


def _rollback_blocks(
    event: ReleaseEvent, metrics: Sequence[Metric], page: str
) -> list[dict[str, Any]]:
    r = event.release
    title = release_title(r)
    stable = esc(r.stable_version or "stable")
    if event.kind is EventKind.ROLLBACK_STARTED:
        by = by_whom(event.actor, r.reason)
        head = f"⏪ *Rolling back* {title} to `{stable}`{by}: {esc(r.reason)}"
    else:
        # The record keeps the rollback attributed to whoever decided it.
        head = f"↩️ {title} *rolled back*{by_whom(r.last.by)}: {esc(event.message)}"
    blocks = [section_block(head)]
    # The rolled-back event carries no checks; the release still holds the last ones.
    checks = list(event.checks) or list(r.last_checks)
    # A rollback from the last step (the bake) was judged against the frozen baseline.
    label = "baseline" if r.baseline and r.step == len(r.weights) - 1 else "control"
    if failing := failing_lines(checks, metrics, label):
        blocks.append(section_block("*What failed*\n" + "\n".join(failing)))
    if score := score_line(r):
        blocks.append(context_block(score))
    if page:
        blocks.append(section_block(page))
    return blocks
