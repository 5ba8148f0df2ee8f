"""The evidence pack for one release, and the texts we can write from it without an LLM.

Everything a diagnosis or an answer may state as fact comes from here: the record, its
last checks and counters, its audit trail and the service's previous release. The pack is
built deterministically, and the FACTS sentence is rendered by our code, so a model asked to
explain a rollback only adds the likely cause and what to look at next; it never supplies a
number. The ``template_*`` functions are the fallbacks used when no LLM is configured or it
fails, and each carries a visible label saying so.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, TypeAlias

from bot.judging.decision import SCORE_COUNTER
from bot.judging.thresholds import fmt
from bot.release.checks import CheckResult
from bot.release.durations import format_duration
from bot.release.policy import Risk
from bot.release.rollout import MetricCounters, Release, State, Surface
from bot.store.audit import AuditEntry
from bot.store.store import Store

# The labels under what the bot writes, so a reader knows who wrote it: template text (and why)
# or a model (and which).
NO_LLM_LABEL = "_(template text: no LLM configured)_"


def llm_down_label(reason: str) -> str:
    return f"_(template text: the LLM did not answer: {reason})_"


def llm_label(model: str) -> str:
    return f"_(written by {model} from the release record)_"


TIMELINE_LIMIT = 40
# audit_tail scans 20x this many stream entries to find the service's; a release holding for
# hours writes one decision per interval, so look well past the last few hundred.
AUDIT_SCAN = 1000
HISTORY_SCAN = 10
REASON_LIMIT = 300

_ROLLBACK_STATES = (State.ROLLING_BACK, State.ROLLED_BACK)

# One entry of a change list: plain text, or a mapping from CI ({title, pr, author, url}).
Change: TypeAlias = str | Mapping[str, Any]


def change_text(change: Change, *, internal: bool = True) -> str:
    """One line for a change. ``internal`` adds the PR number and author, which help an
    engineer find the change; user-facing notes leave them out."""
    if isinstance(change, str):
        return " ".join(change.split())
    title = " ".join(str(change.get("title") or "").split())
    if not internal or not title:
        return title
    pr = str(change.get("pr") or "").strip().lstrip("#")
    author = str(change.get("author") or "").strip()
    extra = ", ".join(part for part in (f"PR #{pr}" if pr else "", author) if part)
    return f"{title} ({extra})" if extra else title


# --- the pack --------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckFact:
    """One metric check of the last evaluation, with its numbers already formatted."""

    metric: str
    outcome: str  # pass | fail | no_data | error
    canary: float | None
    control: float | None
    unit: str
    canary_text: str
    control_text: str
    limit: str  # the rule that decided, e.g. "ratio 2x" or "max 0.05"
    reason: str
    warning: str = ""
    critical: bool = False
    dry_run: bool = False
    consecutive_failures: int = 0
    total_failures: int = 0


@dataclass(frozen=True)
class ScoreFact:
    value: float | None
    verdict: str
    text: str
    consecutive_failures: int = 0


@dataclass(frozen=True)
class TimelineEntry:
    """One audit entry of the release (or a run of identical ones, counted in ``repeats``)."""

    at: float
    when: str  # UTC wall clock
    offset: str  # time since the release started, e.g. "+3m20s"
    action: str
    from_state: str
    to_state: str
    actor: str
    surface: str
    reason: str
    weight: int | None
    repeats: int = 1
    last_offset: str = ""  # offset of the last entry of a folded run ("" for a single one)


@dataclass(frozen=True)
class ApprovalFact:
    step_number: int
    weight: int
    by: str
    when: str


@dataclass(frozen=True)
class PreviousRelease:
    number: int
    version: str
    outcome: str  # its state: succeeded, rolled_back, ...
    at: float  # when it finished (or last changed, if it never finished)
    when: str
    reason: str


@dataclass(frozen=True)
class Evidence:
    release_id: str
    number: int
    service: str
    version: str
    stable_version: str
    strategy: str
    risk: str
    requested_by: str
    state: str
    weights: tuple[int, ...]
    # The step the release stopped at (or is at): 1-based number, count and its weight.
    step_number: int
    step_count: int
    step_weight: int
    step_entered: bool  # False: a high-risk release still waiting to move its first users
    awaiting_weight: int | None  # the weight waiting for approval, if any
    # Who put it in its current state, and whether a person (not the controller) did.
    decided_by: str
    decided_via: str
    manual: bool
    reason: str  # the record's reason: why it paused or rolled back
    failing: tuple[CheckFact, ...]
    passing: tuple[CheckFact, ...]
    dry_run: tuple[CheckFact, ...]
    inconclusive: tuple[CheckFact, ...]  # no data or query errors
    score: ScoreFact | None
    evaluations: int
    approvals: tuple[ApprovalFact, ...]
    timeline: tuple[TimelineEntry, ...]
    timeline_omitted: int  # entries left out after the first one to keep the pack short
    notes: str
    changes: tuple[str, ...]
    previous: PreviousRelease | None
    started_at: float
    started: str
    rollback_decided_at: float | None
    rollback_decided: str
    finished_at: float | None
    finished: str
    rollback_seconds: float | None  # from the rollback decision to traffic confirmed at 0%

    @property
    def rolled_back(self) -> bool:
        return self.state in _ROLLBACK_STATES

    @property
    def at_bake(self) -> bool:
        return self.step_entered and self.step_weight >= 100

    @property
    def control_label(self) -> str:
        # At 100% there is no control left: the bake compares with the frozen baseline.
        return "pre-release baseline" if self.at_bake else "control"

    @property
    def facts(self) -> str:
        """The FACTS sentence (see :func:`facts_sentence`)."""
        return facts_sentence(self)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (tuples become lists), with the derived values included, so the
        prompt templates render the same from this dict as from the object."""
        out = asdict(self)
        out["rolled_back"] = self.rolled_back
        out["at_bake"] = self.at_bake
        out["control_label"] = self.control_label
        out["facts"] = self.facts
        return out


async def build_evidence(
    store: Store,
    release: Release,
    *,
    units: Mapping[str, str] | None = None,
    changes: Sequence[Change] | None = None,
) -> Evidence:
    """The evidence pack for ``release``.

    ``units`` maps metric names to their policy units (the checks in the record carry none);
    ``changes`` overrides the change list recorded with the release (``release.changes``).
    """
    audit = await store.audit_tail(AUDIT_SCAN, service=release.service)
    history = await store.history(release.service, limit=HISTORY_SCAN)
    own = [e for e in reversed(audit) if e.release_id == release.id]
    timeline, omitted = _timeline(own, release.created_at)

    checks = [_check(c, release.counters, units or {}) for c in release.last_checks]
    counted = [c for c in checks if not c.dry_run]
    rollback_at = release.rollback_started_at
    finished = release.finished_at
    seconds = (
        finished - rollback_at
        if release.state is State.ROLLED_BACK and finished is not None and rollback_at is not None
        else None
    )
    weight, entered = _stopped_at(release)
    return Evidence(
        release_id=release.id,
        number=release.number,
        service=release.service,
        version=release.version,
        stable_version=release.stable_version,
        strategy=release.strategy,
        risk=release.risk,
        requested_by=release.requested_by,
        state=release.state.value,
        weights=tuple(release.weights),
        step_number=release.step + 1,
        step_count=len(release.weights),
        step_weight=weight,
        step_entered=entered,
        awaiting_weight=(
            release.weights[release.awaiting_step] if release.awaiting_step is not None else None
        ),
        decided_by=release.last.by,
        decided_via=release.last.surface,
        manual=release.last.surface is not Surface.CONTROLLER,
        reason=release.reason,
        failing=tuple(c for c in counted if c.outcome == "fail"),
        passing=tuple(c for c in counted if c.outcome == "pass"),
        dry_run=tuple(c for c in checks if c.dry_run),
        inconclusive=tuple(c for c in counted if c.outcome not in ("pass", "fail")),
        score=_score(release),
        evaluations=release.evaluations,
        approvals=tuple(
            ApprovalFact(
                step_number=a.step + 1,
                weight=release.weights[a.step] if a.step < len(release.weights) else 0,
                by=a.by,
                when=_when(a.at),
            )
            for a in release.approvals
        ),
        timeline=timeline,
        timeline_omitted=omitted,
        notes=release.notes.strip(),
        changes=tuple(
            text
            for text in map(change_text, release.changes if changes is None else changes)
            if text
        ),
        previous=_previous(release, history),
        started_at=release.created_at,
        started=_when(release.created_at),
        rollback_decided_at=rollback_at,
        rollback_decided=_when(rollback_at),
        finished_at=finished,
        finished=_when(finished),
        rollback_seconds=seconds,
    )


def _stopped_at(release: Release) -> tuple[int, bool]:
    """(weight, entered) of the step the release stopped at or is at.

    A rollback sets the weight to 0 but keeps the step index, so the step tells where it was;
    the one exception is a high-risk release rolled back while its first step still waited for
    approval: it never moved anyone.
    """
    never_moved = (
        release.risk is Risk.HIGH
        and release.step == 0
        and release.weights[0] > 0
        and not any(a.step == 0 for a in release.approvals)
    )
    if never_moved:
        return 0, False
    if release.state in _ROLLBACK_STATES:
        return release.weights[release.step], True
    return release.weight, True


def _number(value: Any) -> float | None:
    # bool is an int; a stray flag must not read as the value 1.
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _check(
    check: CheckResult, counters: Mapping[str, MetricCounters], units: Mapping[str, str]
) -> CheckFact:
    unit = units.get(check.metric, "")
    counter = counters.get(check.metric, MetricCounters())
    return CheckFact(
        metric=check.metric,
        outcome=check.outcome.value,
        canary=check.canary,
        control=check.control,
        unit=unit,
        canary_text=fmt(check.canary, unit),
        control_text=fmt(check.control, unit),
        limit=check.limit,
        reason=_short(check.reason),
        warning=_short(check.warning),
        critical=check.critical,
        dry_run=check.dry_run,
        consecutive_failures=counter.consecutive_failures,
        total_failures=counter.total_failures,
    )


def _score(release: Release) -> ScoreFact | None:
    score = release.last_score
    if score is None:
        return None
    counter = release.counters.get(SCORE_COUNTER, MetricCounters())
    return ScoreFact(
        value=score.value,
        verdict=score.verdict,
        text=_short(score.text),
        consecutive_failures=counter.consecutive_failures,
    )


def _previous(release: Release, history: Sequence[Release]) -> PreviousRelease | None:
    # History is newest first and holds this release too; the previous one is the newest
    # that was numbered before it.
    for other in history:
        if other.id == release.id or other.number >= release.number:
            continue
        at = other.finished_at or other.updated_at
        return PreviousRelease(
            number=other.number,
            version=other.version,
            outcome=other.state.value,
            at=at,
            when=_when(at),
            reason=_short(other.reason),
        )
    return None


def _timeline(entries: Sequence[AuditEntry], start: float) -> tuple[tuple[TimelineEntry, ...], int]:
    """Oldest-first entries, runs of the same decision at the same weight folded into one
    (the controller records a hold every interval), then cut to TIMELINE_LIMIT keeping the
    first entry and the most recent ones: the start and the end matter most."""
    folded: list[TimelineEntry] = []
    for e in entries:
        weight = e.detail.get("weight")
        entry = TimelineEntry(
            at=e.at,
            when=_when(e.at),
            offset="+" + format_duration(max(0.0, e.at - start)),
            action=e.action,
            from_state=e.from_state,
            to_state=e.to_state,
            actor=e.actor,
            surface=e.surface,
            reason=_short(e.reason),
            weight=weight if isinstance(weight, int) and not isinstance(weight, bool) else None,
        )
        last = folded[-1] if folded else None
        if last is not None and _same_run(last, entry):
            # Keep when the run began, but the latest reason: it is the one closest to
            # whatever happened next.
            folded[-1] = replace(
                last, reason=entry.reason, repeats=last.repeats + 1, last_offset=entry.offset
            )
        else:
            folded.append(entry)
    if len(folded) <= TIMELINE_LIMIT:
        return tuple(folded), 0
    keep = TIMELINE_LIMIT - 1
    return (folded[0], *folded[-keep:]), len(folded) - 1 - keep


def _same_run(a: TimelineEntry, b: TimelineEntry) -> bool:
    return (a.action, a.from_state, a.to_state, a.actor, a.weight) == (
        b.action,
        b.from_state,
        b.to_state,
        b.actor,
        b.weight,
    )


def _when(ts: float | None) -> str:
    if ts is None:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def _short(text: str, limit: int = REASON_LIMIT) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


# --- the FACTS sentence ----------------------------------------------------------------------


def _where(ev: Evidence) -> str:
    if not ev.step_entered:
        return "before its first step"
    if ev.at_bake:
        return "during the bake at 100%"
    return f"at the {ev.step_weight}% step"


def _sentence(text: str) -> str:
    """``text`` ending in exactly one full stop (reasons are recorded with or without)."""
    text = text.strip().rstrip(".")
    return f"{text}." if text else ""


def _failure_count(check: CheckFact) -> str:
    if check.critical:
        return ", a critical metric that rolls back on a single failed check"
    n = check.consecutive_failures
    text = f" for {n} consecutive checks" if n >= 2 else " on 1 check" if n == 1 else ""
    if check.total_failures > max(n, 1):
        text += f" ({check.total_failures} failed checks in this release)"
    return text


def _check_cause(ev: Evidence, check: CheckFact) -> str:
    text = f"{check.metric} was {check.canary_text}"
    if check.control is not None:
        text += f" against {check.control_text} on the {ev.control_label}"
    if check.limit:
        text += f" (limit {check.limit})"
    return text + _failure_count(check)


def _cause(ev: Evidence) -> str:
    """Why the controller rolled back, in our words, from the first failing check."""
    if ev.failing:
        first, *others = ev.failing
        text = _check_cause(ev, first)
        if others:
            names = ", ".join(c.metric for c in others)
            text += f"; {names} also failed"
        return text
    score = ev.score
    if score is not None and score.verdict == "fail" and score.value is not None:
        text = f"the canary score was {score.value:.0f} out of 100"
        n = score.consecutive_failures
        if n >= 2:
            text += f" for {n} consecutive evaluations"
        return text
    return ""


def _who(ev: Evidence) -> str:
    via = f" via {ev.decided_via}" if ev.decided_via else ""
    return f"{ev.decided_by}{via}"


def facts_sentence(ev: Evidence) -> str:
    """The facts of the release's outcome in one sentence, e.g. "Rolled back at the 10% step
    because latency_p99 was 1.84 s against 0.41 s on the control (limit ratio 2x) for 3
    consecutive checks." Only our own rendering of the record: no model writes this."""
    where = _where(ev)
    state = ev.state
    if ev.rolled_back:
        verb = "Rolled back" if state == State.ROLLED_BACK else "Rolling back"
        if ev.manual:
            default = f"manual rollback by {ev.decided_by}"
            if not ev.reason or ev.reason == default:
                return f"{verb} {where} by {_who(ev)}; no reason was given."
            return _sentence(f"{verb} {where} by {_who(ev)}: {ev.reason}")
        cause = _cause(ev)
        if cause:
            return _sentence(f"{verb} {where} because {cause}")
        return _sentence(f"{verb} automatically {where}: {ev.reason or 'no reason was recorded'}")
    # The bot's usual words for a live release (as in Release.describe_state).
    name = f"{ev.service} {ev.version}"
    step = f"step {ev.step_number}/{ev.step_count}"
    if state == State.SUCCEEDED:
        took = (
            f" in {format_duration(ev.finished_at - ev.started_at)}"
            if ev.finished_at is not None
            else ""
        )
        return f"{name} succeeded: it reached 100% and passed the bake{took}."
    if state == State.BAKING:
        return f"{name} is baking at 100%, judged against the pre-release baseline."
    if state == State.PAUSED:
        why = f": {ev.reason}" if ev.reason else ""
        return _sentence(f"{name} is paused at {ev.step_weight}% by {_who(ev)}{why}")
    if state == State.PENDING_APPROVAL:
        nxt = f"the {ev.awaiting_weight}% step" if ev.awaiting_weight is not None else "a step"
        return f"{name} is waiting for approval of {nxt}, now at {ev.step_weight}%."
    return f"{name} is progressing at {ev.step_weight}% ({step})."


# --- fallbacks without an LLM ----------------------------------------------------------------


def _rollback_timing(ev: Evidence) -> str:
    if ev.rollback_seconds is None:
        return ""
    stable = ev.stable_version or "the stable version"
    return (
        f"Traffic was back on {stable} (0% canary) {ev.rollback_seconds:.1f}s after the "
        f"decision, at {ev.finished}."
    )


def template_diagnosis(ev: Evidence, label: str = NO_LLM_LABEL) -> str:
    """The diagnosis message without a model: the facts, then clearly unanalysed cause and
    next-step lines that point at where a person should look."""
    lines = [facts_sentence(ev)]
    if timing := _rollback_timing(ev):
        lines.append(timing)
    if ev.rolled_back and ev.manual:
        lines.append(
            f"Likely cause: not analysed; the reason {ev.decided_by} gave and the release "
            "notes are the place to start."
        )
        lines.append(
            f"Suggested next step: ask {ev.decided_by} what they saw, and compare the canary "
            "and control dashboards for the time before the rollback."
        )
    elif ev.failing:
        metric = ev.failing[0].metric
        lines.append(
            f"Likely cause: not analysed; {metric} and the changes in {ev.version} are the "
            "place to start."
        )
        lines.append(
            f"Suggested next step: compare {metric} on the canary and the {ev.control_label} "
            f"around {ev.rollback_decided or 'the rollback'}, and review the changes since "
            f"{ev.stable_version or 'the stable version'}."
        )
    else:
        lines.append(
            "Likely cause: not analysed; the recorded reason and the release notes are the "
            "place to start."
        )
        lines.append(
            "Suggested next step: review the checks and the step timeline in the release record."
        )
    lines.append(label)
    return "\n".join(lines)


_BULLET_MARKS = "-*•· \t"
MAX_NOTE_BULLETS = 6


def _bullets(notes: str, changes: Sequence[Change]) -> list[str]:
    seen: set[str] = set()
    out: list[str] = []
    titles = [change_text(c, internal=False) for c in changes]
    for raw in [*titles, *notes.splitlines()]:
        text = " ".join(raw.strip().lstrip(_BULLET_MARKS).split())
        key = text.lower().rstrip(".")
        if text and key not in seen:
            seen.add(key)
            out.append(text)
    return out


def template_release_notes(
    service: str,
    version: str,
    notes: str,
    changes: Sequence[Change],
    label: str = NO_LLM_LABEL,
) -> str:
    """A plain draft without a model: the change titles and the notes as bullets, as given
    (PR numbers and authors left out: the draft is for users)."""
    items = _bullets(notes, changes)
    lines = [f"*{service} {version}*"]
    if not items:
        lines.append("• No release notes or change list were given for this version.")
    for item in items[:MAX_NOTE_BULLETS]:
        lines.append(f"• {item}")
    if len(items) > MAX_NOTE_BULLETS:
        lines.append(f"• …and {len(items) - MAX_NOTE_BULLETS} more changes")
    lines.append(label)
    return "\n".join(lines)


# Which part of the record a question is probably about: keyword stems -> section.
_TOPICS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("who", "approv", "request", "owner"), "people"),
    (("when", "time", "long", "how fast", "second", "minute"), "times"),
    (("metric", "check", "latency", "error", "number", "value", "why", "fail", "score"), "checks"),
    (("note", "change", "what's in", "what is in", "contain"), "notes"),
    (("previous", "before", "last release", "prior"), "previous"),
)


def _check_line(ev: Evidence, check: CheckFact) -> str:
    control = (
        f" against {check.control_text} on the {ev.control_label}"
        if check.control is not None
        else ""
    )
    limit = f" (limit {check.limit})" if check.limit else ""
    return f"{check.metric} {check.canary_text}{control}{limit}"


def _answer_sections(ev: Evidence) -> dict[str, str]:
    plan = " → ".join(f"{w}%" for w in ev.weights)
    approvals = ", ".join(f"step {a.step_number} by {a.by}" for a in ev.approvals)
    people = f"Requested by {ev.requested_by}" + (f"; approved {approvals}" if approvals else "")
    if ev.rolled_back:
        people += f"; rollback decided by {_who(ev)}"
    times = f"Started {ev.started}"
    if ev.rollback_decided:
        times += f"; rollback decided {ev.rollback_decided}"
    if ev.finished:
        times += f"; finished {ev.finished}"
    if ev.rollback_seconds is not None:
        times += f" ({ev.rollback_seconds:.1f}s from decision to 0%)"
    failing = "; ".join(_check_line(ev, c) for c in ev.failing) or "none"
    passing = ", ".join(c.metric for c in ev.passing) or "none"
    checks = f"Last checks: failing: {failing}; passing: {passing}"
    if ev.score is not None and ev.score.value is not None:
        checks += f"; canary score {ev.score.value:.0f} ({ev.score.verdict})"
    notes = f"Release notes: {_short(ev.notes, 200)}" if ev.notes else "No release notes given"
    previous = (
        f"Previous release: {ev.previous.version} (#{ev.previous.number}), "
        f"{ev.previous.outcome.replace('_', ' ')} at {ev.previous.when}"
        if ev.previous
        else "No earlier release of this service in the record"
    )
    return {
        "plan": f"{ev.strategy} release, {ev.risk} risk, plan {plan}",
        "people": people,
        "times": times,
        "checks": checks,
        "notes": notes,
        "previous": previous,
    }


def template_answer(question: str, ev: Evidence, label: str = NO_LLM_LABEL) -> str:
    """A status summary from the record, without a model. The question only decides which
    parts come first; it is not echoed back, since thread text is untrusted."""
    sections = _answer_sections(ev)
    asked = question.lower()
    first = [name for words, name in _TOPICS if any(w in asked for w in words) and name in sections]
    order = [*first, *(name for name in sections if name not in first)]
    lines = [
        f"From the record of {ev.service} #{ev.number} ({ev.version}): {facts_sentence(ev)}",
        *(f"• {_sentence(sections[name])}" for name in order),
        label,
    ]
    return "\n".join(lines)
