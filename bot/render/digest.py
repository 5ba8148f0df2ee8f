"""The daily digest's words: a standup per long release (health, issues since yesterday, the
decision due, next actions), posted in the channel.

Every number comes from the record, its points or the audit, never from a model. Versions,
reasons, notes and metric names are outside text: escaped here. Mentions come only from ids.
"""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from bot.engine.digest import Digest, DigestRelease
from bot.release.durations import format_duration
from bot.release.rollout import Release, State
from bot.render.kit import Message, context_block, header_block, section_block
from bot.render.mrkdwn import clip, esc, mention, mentions, shown

SECTION_LIMIT = 2900  # under Slack's 3000 a section
MAX_RELEASES = 12  # blocks per release stay well under Slack's 50 a message
MAX_ISSUES = 8  # per release; the rest are counted


def digest_message(digest: Digest, *, summary: str = "", label: str = "") -> Message:
    """The channel post. ``summary`` is model text already stripped of numbers, shown below
    the facts with ``label`` saying who wrote it; empty: none."""
    zone = ZoneInfo(digest.timezone)
    title = f"Daily release digest, {digest.day.isoformat()}"
    blocks = [header_block(title)]
    shown_releases = digest.releases[:MAX_RELEASES]
    for item in shown_releases:
        blocks.append(section_block(clip(release_text(item, digest.now, zone), SECTION_LIMIT)))
    if len(digest.releases) > len(shown_releases):
        more = len(digest.releases) - len(shown_releases)
        blocks.append(context_block(f"…and {more} more; `/rollout list` shows them all."))
    if summary:
        words = clip(esc(shown(summary)), 1500)
        said = label or "_(written by a language model)_"
        blocks.append(context_block(f"*Summary* {words}\n{said}; the numbers above come from code"))
    where = esc(digest.timezone)
    blocks.append(context_block(f"Times in {where}. One digest a day in this channel."))
    names = ", ".join(esc(i.release.label) for i in digest.releases)
    return Message(text=clip(f"{title}: {names}", 3000), blocks=blocks)


def release_text(item: DigestRelease, now: float, zone: ZoneInfo) -> str:
    r = item.release
    lines = [
        f"*{esc(r.service)}* `{esc(shown(r.version))}` at {r.weight}% "
        f"(step {r.step + 1}/{len(r.weights)}, {r.state.value})",
        "*Health*",
        *_health(r),
        "*Since yesterday*",
        *_issues(item),
        f"*Decision due*: {_decision(item, now, zone)}",
        f"*Next*: {_next_action(r)}",
    ]
    return "\n".join(lines)


def _health(r: Release) -> list[str]:
    if not r.last_checks:
        return ["• no round judged yet"]
    out = []
    for c in r.last_checks:
        limit = f", limit {esc(c.limit)}" if c.limit else ""
        out.append(
            f"• {esc(c.metric)}: canary {_num(c.canary)} vs control {_num(c.control)}"
            f"{limit} ({c.outcome.value})"
        )
    return out


def _issues(item: DigestRelease) -> list[str]:
    out = []
    if item.failed_rounds:
        failed = ", ".join(f"{esc(m)} {n}" for m, n in sorted(item.failed_rounds.items()))
        out.append(f"• failed rounds out of {item.rounds}: {failed}")
    asked_at: float | None = None  # when the approval now given was asked for
    for e in item.issues:
        line = _entry(e.action, e.actor, e.reason, e.outcome)
        word = e.action.rsplit(":", 1)[-1]
        if word == "request_approval":
            asked_at = e.at
        elif word == "approve" and asked_at is not None and line:
            line += f" after waiting {format_duration(max(0.0, e.at - asked_at))}"
            asked_at = None
        if line:
            out.append(line)
    if len(out) > MAX_ISSUES:
        out = [*out[:MAX_ISSUES], f"• …and {len(out) - MAX_ISSUES} more in `/rollout history`"]
    if not out:
        out.append(f"• nothing: {item.rounds} rounds judged, none failed")
    return out


# Lifecycle actions a standup mentions, by the last word of the action ("decision:pause").
_SAID = {
    "pause": "paused by {who}",
    "resume": "resumed by {who}",
    "request_approval": "approval requested",
    "approve": "approved by {who}",
    "rollback": "rollback started by {who}",
    "finish_rollback": "rolled back",
    "reconcile": "traffic repaired by {who}",
    "repair": "traffic repaired by {who}",
    "page": "on-call paged",
    "paged": "on-call paged",
}


def _entry(action: str, actor: str, reason: str, outcome: str) -> str:
    word = action.rsplit(":", 1)[-1]
    template = _SAID.get(word)
    if template is None and outcome not in ("failed", "refused"):
        return ""
    # The template is ours; what goes into it is not, so it is never formatted as a template.
    head = template.format(who=mention(actor)) if template else f"{esc(action)} {esc(outcome)}"
    why = f": {clip(esc(shown(reason)), 300)}" if reason else ""
    return f"• {head}{why}"


def _decision(item: DigestRelease, now: float, zone: ZoneInfo) -> str:
    r = item.release
    if r.state is State.PAUSED:
        why = f": {clip(esc(shown(r.reason)), 300)}" if r.reason else ""
        return f"paused by {mention(r.last.by)} since {_when(r.last.at, zone)}{why}"
    if r.state is State.PENDING_APPROVAL:
        step = r.awaiting_step if r.awaiting_step is not None else r.step
        who = mentions(item.approvers) or "anyone but the requester"
        return (
            f"approval needed from {who} to go to {r.weights[step]}% "
            f"(waiting {format_duration(max(0.0, now - r.last.at))})"
        )
    if r.state is State.BAKING:
        return f"succeeds at {_when(r.step_started_at + r.bake, zone)} if metrics hold"
    if r.state is State.PROGRESSING and not r.is_last_step:
        at = _when(r.step_started_at + r.hold, zone)
        nxt = r.weights[r.step + 1]
        gate = " (needs an approver)" if r.needs_approval(r.step + 1) else ""
        return f"next step {nxt}% at {at} if metrics hold{gate}"
    return esc(r.describe_state())


def _next_action(r: Release) -> str:
    svc = esc(r.service)
    if r.state is State.PAUSED:
        return f"resume with `/rollout resume {svc}` or roll back with `/rollback {svc}`"
    if r.state is State.PENDING_APPROVAL:
        return "an approver approves in the release thread"
    return f"none needed: shipwatch moves on by itself (`/rollout pause {svc}` stops it)"


def _when(at: float, zone: ZoneInfo) -> str:
    return datetime.fromtimestamp(at, zone).strftime("%a %H:%M")


def _num(value: float | None) -> str:
    return "no data" if value is None else f"{value:.4g}"
