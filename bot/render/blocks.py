"""Block Kit messages for everything the bot posts, as plain dicts.

This is core, not transport: the Slack adapter posts these dicts as they are, and the console
prints them with ``render_text``, so both surfaces say the same thing and offer the same
buttons. Nothing here imports slack_sdk or slack_bolt (the tests validate the output with
slack_sdk's Block Kit models instead).

Every builder ends in ``fit``, which enforces Slack's size limits on the finished message. A
message that breaks one is rejected by Slack as a whole, and a rejected "rolling back" message
is far worse than a shortened one, so content is cut, with a pointer, never left to fail.

Buttons carry only an opaque ``release_id:step:rev`` value (``bot.release.buttons``); a click
is carried out by ``bot.engine.clicks``, which re-reads the release and acts only while the
click still means what it meant on screen.
"""

from __future__ import annotations

import copy
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bot.engine.events import EventKind, ReleaseEvent
from bot.judging.thresholds import fmt
from bot.release.buttons import ButtonAction, button_value
from bot.release.checks import CheckResult, Outcome
from bot.release.durations import format_duration
from bot.release.policy import Direction, Metric, Risk
from bot.release.rollout import CONTROLLER, GateRecord, Release, State

ACTION_EDIT_NOTES = "shipwatch_edit_notes"
NOTES_MODAL = "shipwatch_notes_modal"  # callback_id of the release-notes edit modal
NOTES_INPUT_BLOCK = "notes"
NOTES_INPUT_ACTION = "notes_text"

# Slack's documented limits (https://api.slack.com/reference/block-kit).
MAX_BLOCKS = 50
MAX_TEXT = 3000  # section text, a context element's text, the fallback text
MAX_HEADER = 150
MAX_FIELDS = 10
MAX_FIELD = 2000
MAX_CONTEXT_ELEMENTS = 10
MAX_ACTION_ELEMENTS = 25
MAX_BUTTON_TEXT = 75
MAX_ACTION_ID = 255
MAX_VALUE = 2000
MAX_CONFIRM_TITLE = 100
MAX_CONFIRM_TEXT = 300
MAX_CONFIRM_BUTTON = 30

# Notes and reasons in a thread reply are kept short; the status message has room for more.
EVENT_NOTES = 500

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
_FLAGS = {"pass": "ok", "fail": "FAIL", "no_data": "n/a", "error": "ERR"}



# --- messages and button values ------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    text: str  # the notification / fallback text
    blocks: list[dict[str, Any]]


@dataclass(frozen=True)
class Choice:
    """A button as the console shows it: "[number] label"."""

    number: int
    label: str
    action_id: str
    value: str


# --- text helpers --------------------------------------------------------------------------


def esc(text: str) -> str:
    """Escape user text for mrkdwn: Slack reads <, > and & as markup."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


_USER_ID = re.compile(r"[UW][A-Z0-9]{6,20}")
_GROUP_ID = re.compile(r"S[A-Z0-9]{6,20}")


def mention(who: str) -> str:
    """A Slack user id (U…/W…) or user-group id (S…) as a mention; anything else as written.

    Real ids always contain a digit; requiring one keeps names like "SREOPS" as written.
    """
    who = who.strip()
    has_digit = any(c.isdigit() for c in who)
    if has_digit and _USER_ID.fullmatch(who):
        return f"<@{who}>"
    if has_digit and _GROUP_ID.fullmatch(who):
        return f"<!subteam^{who}>"
    return esc(who)


def mentions(people: Iterable[str]) -> str:
    return ", ".join(mention(p) for p in people if p.strip())


def _units(text: str) -> int:
    # Slack counts UTF-16 code units (JavaScript string length): an emoji counts as two.
    # Counting the same way keeps emoji-heavy text inside the limit.
    return len(text.encode("utf-16-le")) // 2


def _prefix(text: str, units: int) -> str:
    out = []
    used = 0
    for ch in text:
        size = 2 if ord(ch) > 0xFFFF else 1
        if used + size > units:
            break
        out.append(ch)
        used += size
    return "".join(out)


def clip(text: str, limit: int, more: str = "", *, markup: bool = True) -> str:
    """``text`` cut to ``limit`` UTF-16 units, ending in a truncation note.

    mrkdwn (``markup``) is cut cleanly: between table rows when possible, never inside a
    mention, link or entity, and an open code block is closed again.
    """
    if _units(text) <= limit:
        return text
    tail = f"… (truncated: {more})" if more else "… (truncated)"
    if _units(tail) * 3 > limit:
        tail = "…"
    fenced = markup and "```" in text
    budget = max(0, limit - _units(tail) - (5 if fenced else 1))
    cut = _prefix(text, budget)
    if markup:
        newline = cut.rfind("\n")
        if newline > len(cut) * 0.8:
            cut = cut[:newline]
        opened = cut.rfind("<")
        if opened > cut.rfind(">"):
            cut = cut[:opened]
        amp = cut.rfind("&")
        if amp >= 0 and ";" not in cut[amp:]:
            cut = cut[:amp]
    if fenced and cut.count("```") % 2:
        return f"{cut.rstrip()}\n```\n{tail}"
    if not markup:
        return cut.rstrip() + tail
    return f"{cut.rstrip()} {tail}" if cut.strip() else tail


# --- blocks --------------------------------------------------------------------------------


def _header(text: str) -> dict[str, Any]:
    return {"type": "header", "text": {"type": "plain_text", "text": text, "emoji": True}}


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


def _fields(fields: Sequence[str]) -> dict[str, Any]:
    return {"type": "section", "fields": [{"type": "mrkdwn", "text": f} for f in fields]}


def _context(*texts: str) -> dict[str, Any]:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": t} for t in texts if t]}


def _plain(text: str) -> dict[str, Any]:
    return {"type": "plain_text", "text": text, "emoji": True}


def _button(
    text: str,
    action_id: str,
    value: str,
    *,
    style: str | None = None,
    confirm: dict[str, Any] | None = None,
) -> dict[str, Any]:
    button: dict[str, Any] = {
        "type": "button",
        "text": _plain(text),
        "action_id": action_id,
        "value": value,
    }
    if style:
        button["style"] = style
    if confirm:
        button["confirm"] = confirm
    return button


def fit(blocks: Sequence[Mapping[str, Any]], text: str, *, more: str = "") -> Message:
    """The message within every Slack limit (see the module docstring). ``more`` says where
    the rest can be read; it ends every truncation note."""
    fitted = [b for b in (_fit_block(copy.deepcopy(dict(b)), more) for b in blocks) if b]
    if len(fitted) > MAX_BLOCKS:
        # Keep the buttons: they are what the message is for while a release is live.
        actions = [b for b in fitted if b["type"] == "actions"][: MAX_BLOCKS - 1]
        body = [b for b in fitted if b["type"] != "actions"]
        room = MAX_BLOCKS - len(actions) - 1
        note = f"… {len(body) - room} more block(s) left out"
        note += f" (truncated: {more})" if more else " (truncated)"
        fitted = [*body[:room], _context(esc(note)), *actions]
    fallback = clip(text.strip() or "shipwatch", MAX_TEXT, more, markup=False)
    return Message(text=fallback, blocks=fitted)


def _fit_block(block: dict[str, Any], more: str) -> dict[str, Any] | None:
    kind = block.get("type")
    if kind == "header":
        text = block["text"]["text"].strip()
        if not text:
            return None
        block["text"]["text"] = clip(text, MAX_HEADER, markup=False)
        return block
    if kind == "section":
        return _fit_section(block, more)
    if kind == "context":
        elements = [
            e
            for e in block.get("elements", [])
            if e.get("type") not in _TEXT_TYPES or str(e.get("text", "")).strip()
        ]
        if len(elements) > MAX_CONTEXT_ELEMENTS:
            elements = [*elements[: MAX_CONTEXT_ELEMENTS - 1], {"type": "mrkdwn", "text": "…"}]
        for element in elements:
            if element.get("type") in _TEXT_TYPES:
                element["text"] = clip(
                    element["text"], MAX_TEXT, more, markup=element["type"] == "mrkdwn"
                )
        block["elements"] = elements
        return block if elements else None
    if kind == "actions":
        elements = [_fit_element(e) for e in block.get("elements", [])[:MAX_ACTION_ELEMENTS]]
        block["elements"] = elements
        return block if elements else None
    return block


_TEXT_TYPES = frozenset({"mrkdwn", "plain_text"})


def _fit_section(block: dict[str, Any], more: str) -> dict[str, Any] | None:
    text = block.get("text")
    if text is not None:
        if not str(text.get("text", "")).strip():
            del block["text"]
        else:
            text["text"] = clip(text["text"], MAX_TEXT, more, markup=text["type"] == "mrkdwn")
    fields = [f for f in block.get("fields", []) if str(f.get("text", "")).strip()]
    if len(fields) > MAX_FIELDS:
        left = len(fields) - (MAX_FIELDS - 1)
        fields = [*fields[: MAX_FIELDS - 1], {"type": "mrkdwn", "text": f"… {left} more"}]
    for field in fields:
        field["text"] = clip(field["text"], MAX_FIELD, more, markup=field["type"] == "mrkdwn")
    if fields:
        block["fields"] = fields
    else:
        block.pop("fields", None)
    if "accessory" in block:
        block["accessory"] = _fit_element(block["accessory"])
    return block if "text" in block or "fields" in block else None


def _fit_element(element: dict[str, Any]) -> dict[str, Any]:
    if element.get("type") != "button":
        return element
    element["text"]["text"] = clip(element["text"]["text"], MAX_BUTTON_TEXT, markup=False)
    # An id or value cut short no longer parses: the click is then refused as unknown, which
    # is the right failure for content that should never be this long.
    element["action_id"] = element["action_id"][:MAX_ACTION_ID]
    if "value" in element:
        element["value"] = element["value"][:MAX_VALUE]
    confirm = element.get("confirm")
    if confirm:
        confirm["title"]["text"] = clip(confirm["title"]["text"], MAX_CONFIRM_TITLE, markup=False)
        body = confirm["text"]
        body["text"] = clip(body["text"], MAX_CONFIRM_TEXT, markup=body["type"] == "mrkdwn")
        for key in ("confirm", "deny"):
            confirm[key]["text"] = clip(confirm[key]["text"], MAX_CONFIRM_BUTTON, markup=False)
    return element


# --- pieces shared by the builders -----------------------------------------------------------


def _pointer(release: Release) -> str:
    return f"/rollout status {release.service} shows the rest"


def _title(release: Release) -> str:
    """'*checkout* `v2.4.1`' for mrkdwn lines."""
    return f"*{esc(release.service)}* `{esc(release.version)}`"


def _by(actor: str, reason: str = "") -> str:
    """' by <@U…>' for a person; nothing for the controller, or when the reason that follows
    already names them (the default reasons read "paused by alice")."""
    if actor == CONTROLLER.user or (reason and f"by {actor}" in reason):
        return ""
    return f" by {mention(actor)}"


def _step_text(release: Release) -> str:
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


def limit_text(metric: Metric) -> str:
    """The rules that judge a metric, in the words CheckResult.limit uses ("max 0.05")."""
    unit = metric.unit
    sign = {Direction.INCREASE: "+", Direction.DECREASE: "-", Direction.EITHER: "±"}[
        metric.direction
    ]
    parts = []
    if metric.max is not None:
        parts.append(f"max {fmt(metric.max, unit)}")
    if metric.min is not None:
        parts.append(f"min {fmt(metric.min, unit)}")
    if metric.max_ratio is not None:
        parts.append(f"ratio {metric.max_ratio:g}x")
    if metric.max_diff is not None:
        parts.append(f"diff {sign}{fmt(metric.max_diff, unit)}")
    if metric.uses_statistics:
        parts.append(f"mann-whitney {metric.confidence:.0%}")
    if metric.dry_run:
        parts.append("dry run")
    return ", ".join(parts)


def _number(value: Any, unit: str) -> str:
    return fmt(float(value), unit) if isinstance(value, int | float) else "n/a"


def checks_table(
    checks: Sequence[CheckResult],
    metrics: Sequence[Metric] = (),
    *,
    control_label: str = "control",
    budget: int = MAX_TEXT - 200,
) -> str:
    """A code block: one row per metric with the canary, the control and the limits.

    Rows that do not fit ``budget`` are counted in a last row instead of being cut mid-row.
    """
    by_name = {m.name: m for m in metrics}
    names = [c.metric for c in checks]
    width = min(max([len(n) for n in names] + [6]), 22)
    head = f"{'':<4} {'metric':<{width}} {'canary':>9} {control_label:>9}  limit"
    rows = []
    for check, name in zip(checks, names, strict=True):
        metric = by_name.get(name)
        unit = metric.unit if metric else ""
        flag = _FLAGS.get(check.outcome, "?")
        if check.outcome is Outcome.PASS and check.warning:
            flag = "warn"
        limit = limit_text(metric) if metric else check.limit
        if check.dry_run and "dry run" not in limit:
            limit = f"{limit}, dry run" if limit else "dry run"
        short = name if len(name) <= width else name[: width - 1] + "…"
        rows.append(
            f"{flag:<4} {short:<{width}} {_number(check.canary, unit):>9} "
            f"{_number(check.control, unit):>9}  {limit}"
        )
    lines = [esc(head)]
    used = _units(head) + 8  # the fences
    for i, row in enumerate(rows):
        line = esc(row)
        left = len(rows) - i
        if used + _units(line) + 1 > budget - 40 and left > 1:
            lines.append(f"… and {left} more metric(s)")
            break
        lines.append(line)
        used += _units(line) + 1
    return "```\n" + "\n".join(lines) + "\n```"


def _problems(checks: Sequence[CheckResult]) -> list[str]:
    """One line per check that did not pass cleanly: its reason, or its warning."""
    out = []
    for check in checks:
        if check.outcome is not Outcome.PASS:
            mark = "🔴" if check.outcome is Outcome.FAIL else "⚪"
            dry = " (dry run, not acted on)" if check.dry_run else ""
            out.append(f"{mark} {esc(check.reason)}{dry}")
        elif check.warning:
            out.append(f"🟡 {esc(check.warning)}")
    return out


def _failing(
    checks: Sequence[CheckResult], metrics: Sequence[Metric], control_label: str
) -> list[str]:
    """'latency_p99: canary 1.9 s, limit ratio 2x, control 0.25 s' for each acted-on failure."""
    units = {m.name: m.unit for m in metrics}
    out = []
    for check in checks:
        if check.outcome is not Outcome.FAIL or check.dry_run:
            continue
        unit = units.get(check.metric, "")
        limit = check.limit or "see reason"
        out.append(
            f"• *{esc(check.metric)}*: canary *{_number(check.canary, unit)}*, "
            f"limit `{esc(limit)}`, {control_label} {_number(check.control, unit)}"
            f"{' (critical)' if check.critical else ''}\n"
            # No _italics_: metric names are full of underscores and would break them.
            f"   ↳ {esc(check.reason)}"
        )
    return out


def _score(release: Release) -> str:
    score = release.last_score
    if not score or not score.get("text"):
        return ""
    mark = {"pass": "🟢", "marginal": "🟡", "fail": "🔴"}.get(str(score.get("verdict")), "📊")
    return f"{mark} {esc(str(score['text']))}"


def _control_label(release: Release) -> str:
    return "baseline" if release.state is State.BAKING else "control"


def _checks_blocks(
    release: Release,
    checks: Sequence[CheckResult],
    metrics: Sequence[Metric],
    title: str,
) -> list[dict[str, Any]]:
    if not checks:
        return []
    label = _control_label(release)
    blocks = [_section(f"{title}\n{checks_table(checks, metrics, control_label=label)}")]
    if problems := _problems(checks):
        blocks.append(_section("\n".join(problems)))
    if score := _score(release):
        blocks.append(_context(score))
    return blocks


# --- pre-release gates ----------------------------------------------------------------------

_GATE_MARK = {"passed": "✅", "failed": "❌", "pending": "⏳"}


def gates_text(gates: GateRecord) -> str:
    """'Gates: ✅ ci_build · ❌ security_scan' (names link to their CI runs when known)."""
    shown = []
    for name in gates.required:
        status = gates.results.get(name, "")
        mark = _GATE_MARK.get(status, "❔")
        link = gates.links.get(name)
        label = f"<{esc(link)}|{esc(name)}>" if link else esc(name)
        shown.append(f"{mark} {label}")
    return "🛡️ Gates: " + " · ".join(shown)


def forced_text(gates: GateRecord) -> str:
    """'⚠️ Forced by @alice past gates that had not passed: security_scan (failed)'."""
    past = ", ".join(f"{esc(g)} ({esc(why)})" for g, why in gates.overridden.items())
    text = f"⚠️ *Forced* by {mention(gates.forced_by)} past gates that had not passed: {past}"
    if gates.problem:
        text += f"\nThe gates could not be read: {esc(gates.problem)}"
    return text


def _gate_blocks(release: Release) -> list[dict[str, Any]]:
    gates = release.gates
    if gates is None or not gates.required:
        return []
    blocks = [_section(forced_text(gates))] if gates.forced else []
    return [*blocks, _context(gates_text(gates))]


# --- the status message ----------------------------------------------------------------------


def _time_text(release: Release, now: float) -> str:
    state = release.state
    if state is State.PROGRESSING:
        held = format_duration(max(0.0, now - release.step_started_at))
        return f"{held} of {format_duration(release.hold)} hold"
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
    text = f"{release.weight}% · {_step_text(release)}"
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
    pause = _button("Pause", ButtonAction.PAUSE, value)
    rollback = _button(
        "Roll back",
        ButtonAction.ROLLBACK,
        value,
        style="danger",
        confirm={
            "title": _plain(f"Roll back {release.service} {release.version}?"),
            "text": {
                "type": "mrkdwn",
                "text": f"Traffic goes back to `{esc(release.stable_version or 'stable')}` "
                f"(0% canary) at once. Trying `{esc(release.version)}` again needs a new "
                "deploy.",
            },
            "confirm": _plain("Roll back"),
            "deny": _plain("Cancel"),
            "style": "danger",
        },
    )
    state = release.state
    if state is State.PROGRESSING:
        # High risk: the same "next step" click is an approval. The service's advance hands
        # high-risk releases to approve, so one action id covers both and the approve id stays
        # bound to the pending state (a late second click cannot approve a step twice).
        label = "Approve next step" if release.risk is Risk.HIGH else "Advance"
        return [_button(label, ButtonAction.ADVANCE, value, style="primary"), pause, rollback]
    if state is State.PENDING_APPROVAL:
        return [_button("Approve", ButtonAction.APPROVE, value, style="primary"), pause, rollback]
    if state is State.PAUSED:
        return [_button("Resume", ButtonAction.RESUME, value, style="primary"), rollback]
    if state is State.BAKING:
        return [pause, rollback]
    return []


def status_message(
    release: Release,
    *,
    oncall: str = "",
    approvers: Sequence[str] = (),
    now: float | None = None,
    metrics: Sequence[Metric] = (),
) -> Message:
    """The one message per release, updated in place as it moves.

    ``metrics`` (the service policy's) adds every metric's limits and units to the table;
    without it the table shows the limit a failing check names.
    """
    now = time.time() if now is None else now
    badge, words = STATE_BADGE[release.state]
    blocks: list[dict[str, Any]] = [
        _header(f"{badge} {release.service} {release.version}"),
        _context(_context_line(release, now)),
    ]
    if release.notes.strip():
        blocks.append(_context(f"📝 {esc(release.notes.strip())}"))
    blocks += _gate_blocks(release)
    blocks.append(_section(progress_bar(release)))
    fields = [
        f"*State*\n{badge} {words}",
        f"*Canary weight*\n{_weight_text(release)}",
        f"*Time*\n{_time_text(release, now)}",
    ]
    if oncall.strip():
        fields.append(f"*On-call*\n{mention(oncall)}")
    blocks.append(_fields(fields))

    if release.reason and release.state in (State.PAUSED, State.ROLLING_BACK, State.ROLLED_BACK):
        what = {State.PAUSED: "Paused", State.ROLLING_BACK: "Rolling back"}.get(
            release.state, "Rolled back"
        )
        by = _by(release.last.by, release.reason) if release.state is not State.ROLLED_BACK else ""
        blocks.append(_section(f"{badge} *{what}*{by}: {esc(release.reason)}"))
    if release.state is State.PENDING_APPROVAL:
        blocks.append(_section(_approval_text(release, approvers)))
    elif release.state is State.PROGRESSING and release.risk is Risk.HIGH:
        blocks.append(
            _context(
                f"High risk: every step waits for an approver ({mentions(approvers) or 'anyone'}"
                f" but {mention(release.requested_by)})."
            )
        )

    if release.last_checks:
        seen = ""
        if release.last_eval_at is not None:
            seen = f" · checked {format_duration(max(0.0, now - release.last_eval_at))} ago"
        blocks.append({"type": "divider"})
        blocks += _checks_blocks(
            release, release.last_checks, metrics, f"*Canary vs {_control_label(release)}*{seen}"
        )

    last = release.last
    reason = f": {esc(last.reason)}" if last.reason else ""
    blocks.append(
        _context(
            f"Last change: {last.action.value} by {mention(last.by)} via {esc(last.surface)} "
            f"{format_duration(max(0.0, now - last.at))} ago{reason}"
        )
    )
    if buttons := _buttons(release):
        blocks.append({"type": "actions", "elements": buttons})

    where = f" at {release.weight}% ({_step_text(release)})" if release.is_active else ""
    text = f"{badge} {release.service} {release.version} is {words}{where}"
    if release.reason and release.state is not State.SUCCEEDED:
        text += f": {release.reason}"
    return fit(blocks, text)


def _approval_text(release: Release, approvers: Sequence[str]) -> str:
    step = release.awaiting_step if release.awaiting_step is not None else release.step + 1
    step = min(step, len(release.weights) - 1)
    who = mentions(approvers) or "anyone"
    return (
        f"✋ *Approval needed* for step {step + 1}/{len(release.weights)} "
        f"(*{release.weights[step]}%*). Approvers: {who}.\n"
        f"{mention(release.requested_by)} started this release and cannot approve it."
    )


# --- thread replies, one per event ----------------------------------------------------------


def event_message(
    event: ReleaseEvent,
    *,
    oncall: str = "",
    approvers: Sequence[str] = (),
    metrics: Sequence[Metric] = (),
) -> Message:
    r = event.release
    kind = event.kind
    title = _title(r)
    detail = esc(event.message)
    blocks: list[dict[str, Any]] = []
    text = f"{r.service} {r.version}: {event.message}"
    page = f"🔔 On-call: {mention(oncall)}" if oncall.strip() else ""

    if kind is EventKind.STARTED:
        plan = " → ".join(f"{w}%" for w in r.weights)
        stable = esc(r.stable_version or "the current version")
        blocks.append(
            _section(
                f"🚀 {mention(event.actor)} started {title} (replacing `{stable}`) · "
                f"{esc(r.strategy)} · risk *{esc(r.risk)}*\nPlan: {plan}"
            )
        )
        if r.notes.strip():
            blocks.append(_context(f"📝 {clip(esc(r.notes.strip()), EVENT_NOTES, _pointer(r))}"))
        if r.gates is not None and r.gates.forced:
            blocks.append(_section(forced_text(r.gates)))
        text = f"{event.actor} started {r.service} {r.version}"
    elif kind is EventKind.STEP_ADVANCED:
        blocks.append(
            _section(f"⏩ {title} is at *{r.weight}%* ({_step_text(r)}){_by(event.actor)}")
        )
        # The controller's message adds why it advanced; a person's only repeats the line.
        if event.message != f"advanced to {r.weight}% ({_step_text(r)})":
            blocks.append(_context(detail))
        text = f"{r.service} {r.version} is at {r.weight}% ({_step_text(r)})"
    elif kind is EventKind.APPROVAL_NEEDED:
        blocks.append(_section(f"{title}: {_approval_text(r, approvers)}"))
        blocks.append(_context(detail))
        text = f"approval needed: {r.service} {r.version}"
    elif kind is EventKind.APPROVED:
        blocks.append(
            _section(
                f"✅ {mention(event.actor)} approved *{r.weight}%* for {title} ({_step_text(r)})"
            )
        )
        text = f"{event.actor} approved {r.weight}% for {r.service} {r.version}"
    elif kind is EventKind.METRICS_SUMMARY:
        blocks.append(_section(f"📊 {title} at {r.weight}%: {detail}"))
        blocks += _checks_blocks(r, event.checks, metrics, f"*Canary vs {_control_label(r)}*")
        text = f"{r.service} {r.version} at {r.weight}%: {event.message}"
    elif kind is EventKind.PAUSED:
        by = _by(event.actor, event.message)
        blocks.append(_section(f"⏸️ {title} paused at *{r.weight}%*{by}: {detail}"))
        blocks.append(
            _context(
                f"Resume or roll back from the status message, or `/rollout resume {r.service}`."
            )
        )
        if event.checks:
            blocks += _checks_blocks(r, event.checks, metrics, "*Last checks*")
        text = f"{r.service} {r.version} paused at {r.weight}%: {event.message}"
    elif kind is EventKind.RESUMED:
        blocks.append(
            _section(f"▶️ {title} resumed at *{r.weight}%*{_by(event.actor)}; the hold restarts.")
        )
        text = f"{r.service} {r.version} resumed"
    elif kind is EventKind.BAKING:
        blocks.append(
            _section(
                f"🔥 {title} is at *100%*{_by(event.actor)}, baking for "
                f"{format_duration(r.bake)} against the pre-release baseline."
            )
        )
        text = f"{r.service} {r.version} is at 100%, baking"
    elif kind is EventKind.SUCCEEDED:
        took = format_duration(max(0.0, (r.finished_at or event.at) - r.created_at))
        blocks.append(_section(f"🎉 {title} is live for everyone. Took {took}."))
        text = f"{r.service} {r.version} succeeded in {took}"
    elif kind in (EventKind.ROLLBACK_STARTED, EventKind.ROLLED_BACK):
        blocks += _rollback_blocks(event, metrics, page)
        verb = "rolling back" if kind is EventKind.ROLLBACK_STARTED else "rolled back"
        text = f"{r.service} {r.version} {verb}: {r.reason or event.message}"
    elif kind is EventKind.DIAGNOSIS:
        blocks.append(_section(f"🩺 *Why {title} was rolled back*"))
        blocks += [_section(esc(part)) for part in _paragraphs(event.message)]
        if page:
            blocks.append(_context(page))
        text = f"diagnosis for {r.service} {r.version}: {event.message}"
    elif kind in (EventKind.NOTES_DRAFT, EventKind.NOTES_FINAL):
        final = kind is EventKind.NOTES_FINAL
        head = (
            f"📣 *{esc(r.service)} {esc(r.version)} shipped to 100%.*"
            if final
            else f"📝 *Draft release notes for {title}*"
        )
        blocks.append(_section(head))
        blocks += [_section(esc(part)) for part in _paragraphs(event.message)]
        if not final and event.actor != "shipwatch":
            blocks.append(_context(f"_edited by {mention(event.actor)}_"))
        if not final:
            blocks.append(
                {"type": "actions", "elements": [_button("Edit notes", ACTION_EDIT_NOTES, r.id)]}
            )
        text = (
            f"{r.service} {r.version} shipped: {event.message}"
            if final
            else f"draft release notes for {r.service} {r.version}"
        )
    elif kind is EventKind.TICKET_FILED:
        blocks.append(_section(f"🎫 {detail}"))
        text = f"incident ticket for {r.service} {r.version}: {event.message}"
    elif kind is EventKind.TRAFFIC_FAILED:
        blocks.append(_header(f"🚨 Traffic change FAILED: {r.service} {r.version}"))
        blocks.append(_section(f"*{detail}*"))
        blocks.append(
            _section(
                f"{page or '🔔 No on-call is configured for this service.'}\n"
                "The traffic backend did not confirm the change; shipwatch keeps retrying. "
                "Check the backend now."
            )
        )
        text = f"TRAFFIC CHANGE FAILED for {r.service} {r.version}: {event.message}"
    if not blocks:  # a kind added later still gets a readable line
        blocks.append(_section(f"{title}: {detail}"))
    return fit(blocks, text, more=_pointer(r))


def split_text(text: str, size: int = 3900) -> list[str]:
    """Plain message text in pieces Slack accepts (it truncates text past 4,000 chars)."""
    return _paragraphs(text, size)


def _short_lines(text: str, size: int) -> list[str]:
    """The text's lines, a line longer than ``size`` cut at its last space before it (or
    hard, when it has none): a model may answer in one long paragraph."""
    out: list[str] = []
    for line in text.splitlines(keepends=True):
        rest = line
        while len(rest) > size:
            cut = rest.rfind(" ", 0, size)
            cut = cut + 1 if cut > size // 2 else size
            out.append(rest[:cut])
            rest = rest[cut:]
        out.append(rest)
    return out


def _paragraphs(text: str, size: int = 2900) -> list[str]:
    """Long generated text as several sections, split at paragraph or line ends."""
    parts: list[str] = []
    current = ""
    for line in _short_lines(text.strip(), size):
        if current and len(current) + len(line) > size:
            parts.append(current.rstrip())
            current = ""
        current += line
    if current.strip():
        parts.append(current.rstrip())
    return parts or [""]


def notes_modal(release: Release) -> dict[str, Any]:
    """The modal that edits a release's notes (title ≤ 24 chars, as Slack requires)."""
    return {
        "type": "modal",
        "callback_id": NOTES_MODAL,
        "private_metadata": release.id,
        "title": _plain("Release notes"),
        "submit": _plain("Save"),
        "close": _plain("Cancel"),
        "blocks": [
            _context(f"{esc(release.service)} {esc(release.version)}"),
            {
                "type": "input",
                "block_id": NOTES_INPUT_BLOCK,
                "label": _plain("What ships, in users' words"),
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
    title = _title(r)
    stable = esc(r.stable_version or "stable")
    if event.kind is EventKind.ROLLBACK_STARTED:
        by = _by(event.actor, r.reason)
        head = f"⏪ *Rolling back* {title} to `{stable}`{by}: {esc(r.reason)}"
    else:
        # The record keeps the rollback attributed to whoever decided it.
        head = f"↩️ {title} *rolled back*{_by(r.last.by)}: {esc(event.message)}"
    blocks = [_section(head)]
    # The rolled-back event carries no checks; the release still holds the last ones.
    checks = list(event.checks) or list(r.last_checks)
    # A rollback from the last step (the bake) was judged against the frozen baseline.
    label = "baseline" if r.baseline and r.step == len(r.weights) - 1 else "control"
    if failing := _failing(checks, metrics, label):
        blocks.append(_section("*What failed*\n" + "\n".join(failing)))
    if score := _score(r):
        blocks.append(_context(score))
    if page:
        blocks.append(_section(page))
    return blocks


# --- command replies -----------------------------------------------------------------------


def ephemeral(text: str, *, usage: str = "") -> Message:
    """A reply only the person who typed the command sees."""
    blocks = [_section(esc(text))]
    if usage.strip():
        blocks.append(_context(f"Usage: `{esc(usage.strip())}`"))
    return fit(blocks, f"{text}\nUsage: {usage}" if usage.strip() else text)


# --- terminal rendering --------------------------------------------------------------------


_ANGLE = re.compile(r"<([^<>]+)>")
_BOLD = re.compile(r"(?<![\w*])\*([^*\n]+)\*(?![\w*])")


def _angle(match: re.Match[str]) -> str:
    inner = match.group(1)
    target, _, label = inner.partition("|")
    if target.startswith("@"):
        return label or target
    if target.startswith("!subteam^"):
        return label or "@" + target.removeprefix("!subteam^")
    if target.startswith("!"):
        return label or "@" + target[1:]
    return f"{label} ({target})" if label else target


def _unescape(text: str) -> str:
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def mrkdwn_to_text(text: str) -> str:
    """Slack mrkdwn as terminal text: mentions as @names, bold unmarked, code blocks indented."""
    parts = text.split("```")
    out = []
    for i, part in enumerate(parts):
        if i % 2:  # inside a code block: its own lines, indented
            body = part.strip("\n")
            out.append("\n".join("  " + line for line in body.split("\n")))
        else:
            out.append(_BOLD.sub(r"\1", _ANGLE.sub(_angle, part)).strip("\n"))
    joined = "\n".join(p for p in out if p)
    lines = [line.rstrip() for line in _unescape(joined).split("\n")]
    return "\n".join(line for line in lines if line.strip() or not line)


def _text_of(obj: Mapping[str, Any]) -> str:
    raw = str(obj.get("text", ""))
    return mrkdwn_to_text(raw) if obj.get("type") == "mrkdwn" else raw


def render_text(message: Message) -> tuple[str, list[Choice]]:
    """The message as compact terminal text; its buttons become numbered choices."""
    lines: list[str] = []
    choices: list[Choice] = []
    for block in message.blocks:
        kind = block.get("type")
        if kind == "header":
            lines.append(str(block["text"]["text"]))
        elif kind == "section":
            if "text" in block:
                lines.append(_text_of(block["text"]).strip("\n"))
            cells = [_text_of(f).strip().replace("\n", ": ", 1) for f in block.get("fields", [])]
            for i in range(0, len(cells), 2):
                lines.append("   ".join(cells[i : i + 2]))
        elif kind == "context":
            texts = [_text_of(e).strip() for e in block.get("elements", []) if "text" in e]
            if texts:
                lines.append("  " + " · ".join(texts).replace("\n", "\n  "))
        elif kind == "divider":
            lines.append("─" * 40)
        elif kind == "actions":
            row = []
            for element in block.get("elements", []):
                if element.get("type") != "button":
                    continue
                choice = Choice(
                    number=len(choices) + 1,
                    label=str(element["text"]["text"]),
                    action_id=str(element.get("action_id", "")),
                    value=str(element.get("value", "")),
                )
                choices.append(choice)
                row.append(f"[{choice.number}] {choice.label}")
            if row:
                lines.append("  ".join(row))
    if not lines:
        lines.append(message.text)
    return "\n".join(lines), choices
