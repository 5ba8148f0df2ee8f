"""Thread replies, one per release event, and the release-notes editor."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from bot.engine.events import EventKind, ReleaseEvent
from bot.release.durations import format_duration
from bot.release.policy import Metric, TrafficSettings
from bot.release.rollout import CONTROLLER, Release
from bot.render import hooks as hook_words
from bot.render import watch as watch_words
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
from bot.render.sizing import sizing_note
from bot.render.status import approval_text, by_whom, more_pointer, release_title, step_text
from bot.render.summary import page_link, summary_blocks, summary_note

ACTION_EDIT_NOTES = "shipwatch_edit_notes"
NOTES_MODAL = "shipwatch_notes_modal"  # callback_id of the release-notes edit modal
NOTES_INPUT_BLOCK = "notes"
NOTES_INPUT_ACTION = "notes_text"
# Notes and reasons in a thread reply are kept short; the status message has room for more.
EVENT_NOTES = 500
ANNOUNCED_NOTES = 2000  # the announcement has room for the notes as written


@dataclass(frozen=True)
class _Said:
    """What one event says: its blocks, the notification text, and who to page."""

    event: ReleaseEvent
    approvers: Sequence[str]
    metrics: Sequence[Metric]
    page: str  # the on-call mention line, "" when nobody is on call
    traffic: TrafficSettings | None = None  # the service's engine, for what it implies
    page_url: str | None = None  # the release's page, linked from the success and announcement

    @property
    def release(self) -> Release:
        return self.event.release


_Reply = tuple[list[dict[str, Any]], str]


# The events that move traffic: where applications see the change late (an SDK that polls), the
# thread says how late.
_MOVES_TRAFFIC = frozenset(
    {EventKind.STARTED, EventKind.STEP_ADVANCED, EventKind.BAKING, EventKind.ROLLED_BACK}
)


def event_message(
    event: ReleaseEvent,
    *,
    oncall: str = "",
    approvers: Sequence[str] = (),
    metrics: Sequence[Metric] = (),
    traffic: TrafficSettings | None = None,
    page_url: str | None = None,
) -> Message:
    """The thread reply for ``event``: every sentence is composed here, from the event's data.
    ``traffic``: the service's engine, for what it implies (applications that see a change
    only at their SDK's next refresh, a success that needs a handback, a template Argo keeps).
    ``page_url``: the release's page, linked from the success and the announcement."""
    page = f"🔔 On-call: {mention(oncall)}" if oncall.strip() else ""
    said = _Said(event, approvers, metrics, page, traffic, page_url)
    build = _REPLIES.get(event.kind)
    if build is None:  # a kind added later still gets a readable line
        r = event.release
        blocks, text = [section_block(f"{release_title(r)}: {esc(event.detail)}")], event.detail
    else:
        blocks, text = build(said)
    seen_within = traffic.seen_within if traffic is not None else None
    if seen_within is not None and event.kind in _MOVES_TRAFFIC:
        blocks = [
            *blocks,
            context_block(
                f"Applied in the traffic engine; applications see it within "
                f"{format_duration(seen_within)} (their SDK's refresh interval)."
            ),
        ]
    return fit(blocks, text, more=more_pointer(event.release))


def _started(s: _Said) -> _Reply:
    r, actor = s.release, s.event.actor
    plan = " → ".join(f"{w}%" for w in r.weights)
    stable = esc(r.stable_version or "the current version")
    blocks = [
        section_block(
            f"🚀 {mention(actor)} started {release_title(r)} (replacing `{stable}`) · "
            f"{esc(r.strategy)} · risk *{esc(r.risk)}*\nPlan: {plan}"
        )
    ]
    if r.notes.strip():
        blocks.append(
            context_block(f"📝 {clip(esc(r.notes.strip()), EVENT_NOTES, more_pointer(r))}")
        )
    if r.gates is not None and r.gates.forced:
        blocks.append(section_block(forced_text(r.gates)))
    sized = sizing_note(s.event.sizing) if s.event.sizing is not None else ""
    if sized:
        blocks.append(section_block(esc(sized)))
    return blocks, f"{actor} started {r.service} {r.version}" + (f"; {sized}" if sized else "")


def _step_advanced(s: _Said) -> _Reply:
    r = s.release
    blocks = [
        section_block(
            f"⏩ {release_title(r)} is at *{r.weight}%* ({step_text(r)}){by_whom(s.event.actor)}"
        )
    ]
    if s.event.detail:  # why the controller advanced; a person's advance needs no why
        blocks.append(context_block(esc(s.event.detail)))
    return blocks, f"{r.service} {r.version} is at {r.weight}% ({step_text(r)})"


def _approval_needed(s: _Said) -> _Reply:
    r = s.release
    if r.weight == 0 and not r.awaiting_step:
        why = "approval needed before the first step"
    else:
        why = f"hold passed at {r.weight}%; approve {r.weights[r.awaiting_step or 0]}%"
    blocks = [
        section_block(f"{release_title(r)}: {approval_text(r, s.approvers)}"),
        context_block(why),
    ]
    return blocks, f"approval needed: {r.service} {r.version}"


def _approved(s: _Said) -> _Reply:
    r, actor = s.release, s.event.actor
    line = f"✅ {mention(actor)} approved *{r.weight}%* for {release_title(r)} ({step_text(r)})"
    return [section_block(line)], f"{actor} approved {r.weight}% for {r.service} {r.version}"


def _metrics_summary(s: _Said) -> _Reply:
    r, detail = s.release, s.event.detail
    blocks = [section_block(f"📊 {release_title(r)} at {r.weight}%: {esc(detail)}")]
    label = f"*Canary vs {control_label_of(r)}*"
    blocks += checks_blocks(r, s.event.checks, s.metrics, label)
    return blocks, f"{r.service} {r.version} at {r.weight}%: {detail}"


def _paused(s: _Said) -> _Reply:
    r, detail = s.release, s.event.detail
    by = by_whom(s.event.actor, detail)
    then = (
        "It resumes by itself once its metrics can be read again for a few rounds in a row "
        "(the policy's `resume_after_rounds`); or resume or roll back from the status message."
        if r.paused_for_outage
        else f"Resume or roll back from the status message, or `/rollout resume {esc(r.service)}`."
    )
    blocks = [
        section_block(f"⏸️ {release_title(r)} paused at *{r.weight}%*{by}: {esc(detail)}"),
        context_block(then),
    ]
    if s.event.checks:
        blocks += checks_blocks(r, s.event.checks, s.metrics, "*Last checks*")
    return blocks, f"{r.service} {r.version} paused at {r.weight}%: {detail}"


def _resumed(s: _Said) -> _Reply:
    r = s.release
    why = f" ({esc(s.event.detail)})" if s.event.detail else ""
    line = (
        f"▶️ {release_title(r)} resumed at *{r.weight}%*{by_whom(s.event.actor)}{why}; "
        "the hold restarts."
    )
    return [section_block(line)], f"{r.service} {r.version} resumed"


def _baking(s: _Said) -> _Reply:
    r = s.release
    line = (
        f"🔥 {release_title(r)} is at *100%*{by_whom(s.event.actor)}, baking for "
        f"{format_duration(r.bake)} against the pre-release baseline."
    )
    return [section_block(line)], f"{r.service} {r.version} is at 100%, baking"


def _succeeded(s: _Said) -> _Reply:
    r = s.release
    took = format_duration(max(0.0, (r.finished_at or s.event.at) - r.created_at))
    line = f"🎉 {release_title(r)} is live for everyone. Took {took}."
    blocks = [section_block(line)]
    # The summary is on the record of every release that succeeded since it was added.
    if r.summary is not None:
        blocks += summary_blocks(r.summary, page_url=s.page_url)
    elif link := page_link(s.page_url):
        blocks.append(context_block(f"📄 {link}"))
    if s.traffic is not None and s.traffic.hands_back:
        blocks.append(
            context_block(
                f"Everyone is on the canary pool. Put `{esc(r.version)}` on the stable pool too, "
                f"then `/rollout handback {esc(r.service)}` moves everyone there and frees the "
                "canary pool for the next build."
            )
        )
    note = f"; {summary_note(r.summary)}" if r.summary is not None else ""
    return blocks, f"{r.service} {r.version} succeeded in {took}{note}"


def _handed_back(s: _Said) -> _Reply:
    r = s.release
    line = (
        f"↪️ {release_title(r)} handed back{by_whom(s.event.actor)}: everyone is on the stable "
        f"pool again, which runs `{esc(r.version)}` now; the canary pool is free for the next "
        "build."
    )
    return [section_block(line)], f"{r.service} {r.version}: handed back to the stable pool"


def _rollback(s: _Said) -> _Reply:
    r, event = s.release, s.event
    title = release_title(r)
    stable = r.stable_version or "stable"
    if event.kind is EventKind.ROLLBACK_STARTED:
        by = by_whom(event.actor, r.reason)
        head = f"⏪ *Rolling back* {title} to `{esc(stable)}`{by}: {esc(r.reason)}"
        verb = "rolling back"
    else:
        took = f" {event.seconds:.1f}s after the decision" if event.seconds is not None else ""
        back = f"traffic is back on {stable} (0% canary){took}. Reason: {r.reason or event.detail}"
        # The record keeps the rollback attributed to whoever decided it.
        head = f"↩️ {title} *rolled back*{by_whom(r.last.by)}: {esc(back)}"
        verb = "rolled back"
    blocks = [section_block(head)]
    # The rolled-back event carries no checks; the release still holds the last ones.
    checks = list(event.checks) or list(r.last_checks)
    # A rollback from the last step (the bake) was judged against the frozen baseline.
    label = "baseline" if r.baseline and r.step == len(r.weights) - 1 else "control"
    if failing := failing_lines(checks, s.metrics, label):
        blocks.append(section_block("*What failed*\n" + "\n".join(failing)))
    if score := score_line(r):
        blocks.append(context_block(score))
    engine = s.traffic.backend if s.traffic is not None else ""
    if engine == "argo-rollouts" and event.kind is EventKind.ROLLED_BACK:
        blocks.append(
            context_block(
                f"Argo Rollouts aborted the canary; the Rollout's `spec.template` still names "
                f"`{esc(r.version)}`, so the next revision your pipeline sets replaces it (or "
                "put the stable image back in git)."
            )
        )
    if engine == "flagger" and event.kind is EventKind.ROLLED_BACK:
        blocks.append(
            context_block(
                "Flagger rolls the canary back when it next calls its `rollback` webhook (at "
                "its next analysis round); its Canary's status shows when it has."
            )
        )
    if s.page:
        blocks.append(section_block(s.page))
    return blocks, f"{r.service} {r.version} {verb}: {r.reason or event.detail}"


def _diagnosis(s: _Said) -> _Reply:
    r, written = s.release, s.event.detail
    blocks = [section_block(f"🩺 *Why {release_title(r)} was rolled back*")]
    blocks += [section_block(esc(part)) for part in paragraphs(written)]
    if s.page:
        blocks.append(context_block(s.page))
    return blocks, f"diagnosis for {r.service} {r.version}: {written}"


def _notes(s: _Said) -> _Reply:
    r, event = s.release, s.event
    if event.kind is EventKind.NOTES_FINAL:
        return announcement(r, event.detail, page_url=s.page_url)
    blocks = [section_block(f"📝 *Draft release notes for {release_title(r)}*")]
    blocks += [section_block(esc(part)) for part in paragraphs(event.detail)]
    if event.actor != CONTROLLER.user:
        blocks.append(context_block(f"_edited by {mention(event.actor)}_"))
    edit = button_element("Edit notes", ACTION_EDIT_NOTES, r.id)
    blocks.append({"type": "actions", "elements": [edit]})
    return blocks, f"draft release notes for {r.service} {r.version}"


def announcement(release: Release, written: str, *, page_url: str | None = None) -> _Reply:
    """The announcement of a release that shipped: what shipped (the notes or the change
    list), the completion summary's numbers, and ``written``, the paragraph a model phrased
    from the summary with its label (or the label saying why there is none)."""
    r = release
    took = format_duration(max(0.0, (r.finished_at or r.updated_at) - r.created_at))
    head = f"📣 *{esc(r.service)} {esc(r.version)} shipped to 100% of users* in {took}."
    blocks = [section_block(head)]
    what = r.notes.strip() or "\n".join(
        f"• {str(c.get('title', '')).strip()}" for c in r.changes if c.get("title")
    )
    shipped = what or "(no release notes were given)"
    blocks.append(section_block(f"*What shipped*\n{clip(esc(shipped), ANNOUNCED_NOTES)}"))
    if r.summary is not None:
        blocks += summary_blocks(r.summary, page_url=page_url)
    elif link := page_link(page_url):
        blocks.append(context_block(f"📄 {link}"))
    if written.strip():
        blocks += [section_block(esc(part)) for part in paragraphs(written)]
    note = summary_note(r.summary) if r.summary is not None else "no summary was kept"
    return blocks, f"{r.service} {r.version} shipped to 100% in {took}: {note}"


def _ticket_filed(s: _Said) -> _Reply:
    r, link = s.release, s.event.link
    what = (
        f"Incident ticket filed: {link}"
        if link
        else ("Filing the incident ticket failed; see the bot's log.")
    )
    return [
        section_block(f"🎫 {esc(what)}")
    ], f"incident ticket for {r.service} {r.version}: {what}"


def _paged(s: _Said) -> _Reply:
    """What the paging services did with a page or its resolve; a failure says who to page by
    hand instead, since the on-call was not reached."""
    r, report = s.release, s.event.page
    if report is None:  # nothing to say beyond the kind
        return [section_block(f"📟 Paging for {release_title(r)}.")], (
            f"paging for {r.service} {r.version}"
        )
    resolving = report.action == "resolve"
    lines: list[str] = []
    if report.done:
        where = " and ".join(report.done)
        if resolving:
            said = f"Page resolved in {where}: the release has ended."
        elif report.finding:
            said = f"Paged the on-call through {where} about a finding after the release."
        else:
            said = f"Paged the on-call through {where}: shipwatch rolled this release back."
        lines.append(f"📟 {said} Key `{report.key}`.")
    for name, why in report.failed:
        what = "Resolving the page" if resolving else "Paging the on-call"
        lines.append(f"⚠️ {what} through {name} failed: {clip(why, EVENT_NOTES, markup=False)}")
    blocks = [section_block(esc(line)) for line in lines]
    if report.failed and not resolving:
        blocks.append(
            section_block(
                f"{s.page or '🔔 No on-call is configured for this service in Slack.'}\n"
                "The rollback is not affected; page the on-call by hand."
            )
        )
    return blocks, f"paging for {r.service} {r.version}: {' '.join(lines)}"


def _traffic_failed(s: _Said) -> _Reply:
    r = s.release
    what = f"rollback is NOT applied yet, retrying: {s.event.detail}"
    blocks = [
        header_block(f"🚨 Traffic change FAILED: {r.service} {r.version}"),
        section_block(f"*{esc(what)}*"),
        section_block(
            f"{s.page or '🔔 No on-call is configured for this service.'}\n"
            "The traffic backend did not confirm the change; shipwatch keeps retrying. "
            "Check the backend now."
        ),
    ]
    return blocks, f"TRAFFIC CHANGE FAILED for {r.service} {r.version}: {what}"


def _traffic_repaired(s: _Said) -> _Reply:
    r = s.release
    found = f"{s.event.detail}%" if s.event.detail.isdigit() else "no weight"
    line = (
        f"🔧 The traffic engine applied *{esc(found)}* to {release_title(r)}, not the "
        f"*{r.applied_weight}%* shipwatch had set (a reload, a restart or a hand edit): "
        f"{r.weight}% is set again, and judging waits for it."
    )
    return [section_block(line)], (
        f"{r.service} {r.version}: the traffic engine applied {found}, not "
        f"{r.applied_weight}%; {r.weight}% set again"
    )


def _hooks(s: _Said) -> _Reply:
    r, run = s.release, s.event.hooks
    if run is None:  # every hook event carries its run; a bare one says what it is
        line = f"{r.service} {r.version}: step hooks ({s.event.kind.value})"
        return [section_block(esc(line))], line
    blocks = [
        section_block(hook_words.hooks_headline(r, run, release_title(r))),
        context_block("\n".join(hook_words.result_line(h) for h in run.results)),
    ]
    return blocks, hook_words.hooks_text(r, run)


def _watch(s: _Said) -> _Reply:
    r, event, w = s.release, s.event, s.event.watch
    if w is None:  # every watch event carries its record; a bare one says what it is
        line = f"{r.service} {r.version}: post-release watch ({event.kind.value})"
        return [section_block(f"{release_title(r)}: post-release watch")], line
    if event.kind is EventKind.WATCH_FINDING:
        return watch_words.finding_reply(r, w, s.metrics)
    if event.kind is EventKind.WATCH_SUPERSEDED:
        return watch_words.superseded_reply(r, w, event.detail)
    return watch_words.closed_reply(r, w, s.metrics)


_REPLIES: dict[EventKind, Callable[[_Said], _Reply]] = {
    EventKind.STARTED: _started,
    EventKind.STEP_ADVANCED: _step_advanced,
    EventKind.APPROVAL_NEEDED: _approval_needed,
    EventKind.APPROVED: _approved,
    EventKind.METRICS_SUMMARY: _metrics_summary,
    EventKind.PAUSED: _paused,
    EventKind.RESUMED: _resumed,
    EventKind.BAKING: _baking,
    EventKind.SUCCEEDED: _succeeded,
    EventKind.ROLLBACK_STARTED: _rollback,
    EventKind.ROLLED_BACK: _rollback,
    EventKind.DIAGNOSIS: _diagnosis,
    EventKind.NOTES_DRAFT: _notes,
    EventKind.NOTES_FINAL: _notes,
    EventKind.TICKET_FILED: _ticket_filed,
    EventKind.PAGED: _paged,
    EventKind.PAGE_FAILED: _paged,
    EventKind.TRAFFIC_FAILED: _traffic_failed,
    EventKind.TRAFFIC_REPAIRED: _traffic_repaired,
    EventKind.HANDED_BACK: _handed_back,
    EventKind.WATCH_FINDING: _watch,
    EventKind.WATCH_CLOSED: _watch,
    EventKind.WATCH_SUPERSEDED: _watch,
    EventKind.HOOKS_PASSED: _hooks,
    EventKind.HOOK_FAILED: _hooks,
}


def answer_message(answer: str) -> Message:
    """An answer in a release thread: one post, its text (model and record text, escaped) in
    as many sections as Slack's section limit needs."""
    return fit([section_block(esc(part)) for part in paragraphs(answer)], answer)


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
