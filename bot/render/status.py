"""The status message: one per release, updated in place, with the buttons that apply now.

Buttons carry only an opaque ``release_id:step:rev`` value (``bot.release.buttons``); a click
is carried out by ``bot.engine.clicks``, which re-reads the release and acts only while the
click still means what it meant on screen.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from bot.release.buttons import ButtonAction, button_value
from bot.release.durations import format_duration
from bot.release.policy import Metric, Policy, Risk
from bot.release.rollout import CONTROLLER, Release, State
from bot.render.checks import checks_blocks, control_label_of, gate_blocks
from bot.render.kit import (
    Message,
    button_element,
    context_block,
    fields_block,
    fit,
    header_block,
    plain_block,
    section_block,
)
from bot.render.mrkdwn import esc, mention, mentions
from bot.render.summary import page_link, summary_blocks, summary_note

STATE_BADGE: dict[State, tuple[str, str]] = {
    State.PENDING_APPROVAL: ("✋", "waiting for approval"),
    State.PROGRESSING: ("🚀", "progressing"),
    State.PAUSED: ("⏸️", "paused"),
    State.BAKING: ("🔥", "baking at 100%"),
    State.SUCCEEDED: ("✅", "succeeded"),
    State.ROLLING_BACK: ("⏪", "rolling back"),
    State.ROLLED_BACK: ("↩️", "rolled back"),
}


# The marker of the current step in the progress bar.
_CURRENT_STEP = {
    State.PENDING_APPROVAL: "✋",
    State.PROGRESSING: "🔵",
    State.PAUSED: "⏸️",
    State.BAKING: "🔥",
    State.SUCCEEDED: "🟩",
    State.ROLLING_BACK: "🟥",
    State.ROLLED_BACK: "🟥",
}


def more_pointer(release: Release) -> str:
    return f"/rollout status {release.service} shows the rest"


def release_title(release: Release) -> str:
    """'*checkout* `v2.4.1`' for mrkdwn lines."""
    return f"*{esc(release.service)}* `{esc(release.version)}`"


def by_whom(actor: str, reason: str = "") -> str:
    """' by <@U…>' for a person; nothing for the controller, or when the reason that follows
    already names them (the default reasons read "paused by alice")."""
    if actor == CONTROLLER.user or (reason and f"by {actor}" in reason):
        return ""
    return f" by {mention(actor)}"


def step_text(release: Release) -> str:
    return f"step {release.step + 1}/{len(release.weights)}"


def progress_bar(release: Release) -> str:
    """'🟩 1%  🟩 10%  🔵 *25%*  ⬜ 50%  ⬜ 100%': passed steps, the current one, the rest."""
    state = release.state
    current = release.step
    if state is State.PENDING_APPROVAL and release.awaiting_step is not None:
        current = release.awaiting_step
    cells = []
    for i, weight in enumerate(release.weights):
        if state is State.SUCCEEDED or i < current:
            mark = "🟩"
        elif i == current:
            mark = _CURRENT_STEP[state]
        else:
            mark = "⬜"
        label = f"*{weight}%*" if i == current and state is not State.SUCCEEDED else f"{weight}%"
        cells.append(f"{mark} {label}")
    return "  ".join(cells)


def _time_text(release: Release, now: float) -> str:
    state = release.state
    if state is State.PROGRESSING:
        held = format_duration(max(0.0, now - release.step_started_at))
        waiting = f" · {esc(release.waiting_on)}" if release.waiting_on else ""
        return f"{held} of {format_duration(release.hold)} hold{waiting}"
    if state is State.BAKING:
        held = format_duration(max(0.0, now - release.step_started_at))
        return f"{held} of {format_duration(release.bake)} bake"
    if state is State.PENDING_APPROVAL:
        return f"waiting {format_duration(max(0.0, now - release.last.at))} for approval"
    if state is State.PAUSED:
        return f"paused for {format_duration(max(0.0, now - release.last.at))}"
    if state is State.ROLLING_BACK:
        since = release.rollback_started_at or release.last.at
        return f"rolling back for {format_duration(max(0.0, now - since))}"
    took = (release.finished_at or now) - release.created_at
    return f"took {format_duration(max(0.0, took))}"


def _weight_text(release: Release) -> str:
    text = f"{release.weight}% · {step_text(release)}"
    applied = release.applied_weight
    if release.is_active and applied is not None and applied != release.weight:
        text += f" (traffic still at {applied}%)"
    return text


def _context_line(release: Release, now: float) -> str:
    ago = format_duration(max(0.0, now - release.created_at))
    stable = esc(release.stable_version or "stable")
    risk = f"risk *{esc(release.risk)}*" + (" ⚠️" if release.risk is Risk.HIGH else "")
    return (
        f"#{release.number} started by {mention(release.requested_by)} via "
        f"{esc(release.surface)} {ago} ago · {risk} · {esc(release.strategy)} · "
        f"`{stable}` → `{esc(release.version)}`"
    )


def _buttons(release: Release) -> list[dict[str, Any]]:
    value = button_value(release)
    pause = button_element("Pause", ButtonAction.PAUSE, value)
    rollback = button_element(
        "Roll back",
        ButtonAction.ROLLBACK,
        value,
        style="danger",
        confirm={
            "title": plain_block(f"Roll back {release.service} {release.version}?"),
            "text": {
                "type": "mrkdwn",
                "text": f"Traffic goes back to `{esc(release.stable_version or 'stable')}` "
                f"(0% canary) at once. Trying `{esc(release.version)}` again needs a new "
                "deploy.",
            },
            "confirm": plain_block("Roll back"),
            "deny": plain_block("Cancel"),
            "style": "danger",
        },
    )
    state = release.state
    if state is State.PROGRESSING:
        # High risk: the same "next step" click is an approval. The service's advance hands
        # high-risk releases to approve, so one action id covers both and the approve id stays
        # bound to the pending state (a late second click cannot approve a step twice).
        label = "Approve next step" if release.needs_approval(release.step + 1) else "Advance"
        return [
            button_element(label, ButtonAction.ADVANCE, value, style="primary"),
            pause,
            rollback,
        ]
    if state is State.PENDING_APPROVAL:
        return [
            button_element("Approve", ButtonAction.APPROVE, value, style="primary"),
            pause,
            rollback,
        ]
    if state is State.PAUSED:
        return [button_element("Resume", ButtonAction.RESUME, value, style="primary"), rollback]
    if state is State.BAKING:
        return [pause, rollback]
    return []


NOT_JUDGED = (
    "⚠️ *Not judged*: this service has no metrics in the policy (`unjudged: true`); "
    "it advances on time alone"
)

DEMO_METRICS = (
    "⚠️ *DEMO METRICS*: judged on synthetic numbers, not on your Prometheus "
    "(this bot runs with `--demo`; set PROMETHEUS_URL for real releases)"
)


def status_for(
    release: Release,
    policy: Policy,
    *,
    demo_metrics: bool = False,
    page_url: str | None = None,
) -> Message:
    """The status message with what the release's service policy adds (on-call, approvers,
    limits); the same for Slack and the console. ``page_url``: the release's page, when one
    is served."""
    sp = policy.services.get(release.service)
    if sp is None:
        return status_message(release, demo_metrics=demo_metrics, page_url=page_url)
    return status_message(
        release,
        oncall=sp.oncall,
        approvers=sp.approvers,
        metrics=sp.metrics_at(release.step_weight),  # a step may judge by its own limits
        demo_metrics=demo_metrics,
        unjudged=sp.unjudged,
        page_url=page_url,
    )


def status_message(
    release: Release,
    *,
    oncall: str = "",
    approvers: Sequence[str] = (),
    now: float | None = None,
    metrics: Sequence[Metric] = (),
    demo_metrics: bool = False,
    unjudged: bool = False,
    page_url: str | None = None,
) -> Message:
    """The one message per release, updated in place as it moves.

    ``metrics`` (the service policy's) adds every metric's limits and units to the table;
    without it the table shows the limit a failing check names. ``demo_metrics`` says, on the
    message itself, that the judging ran on the synthetic demo source.
    """
    now = time.time() if now is None else now
    badge, words = STATE_BADGE[release.state]
    blocks: list[dict[str, Any]] = [
        header_block(f"{badge} {release.service} {release.version}"),
        context_block(_context_line(release, now)),
    ]
    if demo_metrics:
        blocks.append(context_block(DEMO_METRICS))
    if unjudged:
        blocks.append(context_block(NOT_JUDGED))
    if release.notes.strip():
        blocks.append(context_block(f"📝 {esc(release.notes.strip())}"))
    blocks += gate_blocks(release)
    blocks.append(section_block(progress_bar(release)))
    fields = [
        f"*State*\n{badge} {words}",
        f"*Canary weight*\n{_weight_text(release)}",
        f"*Time*\n{_time_text(release, now)}",
    ]
    if oncall.strip():
        fields.append(f"*On-call*\n{mention(oncall)}")
    blocks.append(fields_block(fields))

    blocks += _why_blocks(release, badge, approvers)

    blocks += _numbers_blocks(release, metrics, now)

    last = release.last
    reason = f": {esc(last.reason)}" if last.reason else ""
    blocks.append(
        context_block(
            f"Last change: {last.action.value} by {mention(last.by)} via {esc(last.surface)} "
            f"{format_duration(max(0.0, now - last.at))} ago{reason}"
        )
    )
    if link := page_link(page_url):
        blocks.append(context_block(f"📄 {link}"))
    if buttons := _buttons(release):
        blocks.append({"type": "actions", "elements": buttons})

    where = f" at {release.weight}% ({step_text(release)})" if release.is_active else ""
    verb = "" if release.state is State.SUCCEEDED else "is "  # "succeeded", not "is succeeded"
    text = f"{badge} {release.service} {release.version} {verb}{words}{where}"
    if release.reason and release.state is not State.SUCCEEDED:
        text += f": {release.reason}"
    if release.state is State.SUCCEEDED and release.summary is not None:
        text += f": {summary_note(release.summary)}"
    return fit(blocks, text)


def _numbers_blocks(
    release: Release, metrics: Sequence[Metric], now: float
) -> list[dict[str, Any]]:
    """The canary against its control: the last checks while it runs; once it succeeded, the
    completion summary (what the whole release went through, its last numbers included)."""
    if release.state is State.SUCCEEDED and release.summary is not None:
        return [{"type": "divider"}, *summary_blocks(release.summary)]
    if not release.last_checks:
        return []
    seen = ""
    if release.last_eval_at is not None:
        seen = f" · checked {format_duration(max(0.0, now - release.last_eval_at))} ago"
    label = f"*Canary vs {control_label_of(release)}*{seen}"
    return [{"type": "divider"}, *checks_blocks(release, release.last_checks, metrics, label)]


def _why_blocks(release: Release, badge: str, approvers: Sequence[str]) -> list[dict[str, Any]]:
    """Why the release stands where it does: paused or rolled back and why, or whose approval
    it waits for."""
    blocks = []
    if release.reason and release.state in (State.PAUSED, State.ROLLING_BACK, State.ROLLED_BACK):
        what = {State.PAUSED: "Paused", State.ROLLING_BACK: "Rolling back"}.get(
            release.state, "Rolled back"
        )
        by = (
            by_whom(release.last.by, release.reason)
            if release.state is not State.ROLLED_BACK
            else ""
        )
        blocks.append(section_block(f"{badge} *{what}*{by}: {esc(release.reason)}"))
    if release.state is State.PENDING_APPROVAL:
        blocks.append(section_block(approval_text(release, approvers)))
    elif release.state is State.PROGRESSING and release.risk is Risk.HIGH:
        blocks.append(
            context_block(
                f"High risk: every step waits for an approver ({mentions(approvers) or 'anyone'}"
                f" but {mention(release.requested_by)})."
            )
        )
    return blocks


def approval_text(release: Release, approvers: Sequence[str]) -> str:
    step = release.awaiting_step if release.awaiting_step is not None else release.step + 1
    step = min(step, len(release.weights) - 1)
    who = mentions(approvers) or "anyone"
    return (
        f"✋ *Approval needed* for step {step + 1}/{len(release.weights)} "
        f"(*{release.weights[step]}%*). Approvers: {who}.\n"
        f"{mention(release.requested_by)} started this release and cannot approve it."
    )
