"""Release statistics computed from the audit stream: pure, no I/O.

Everything is derived from the audit entries the core already writes; only entries with
outcome ``ok`` describe what happened to a release (a refused deploy names the release that
was in the way, not a new one). The numbers, and the entries they come from:

- started: ``deploy`` entries. Deploy frequency is started releases per day of the window.
- succeeded: the entry that moved a release to ``succeeded``; rolled back: ``rolled_back``
  (traffic confirmed back at 0%). Rollback rate = rolled back / (succeeded + rolled back).
- lead time: from the ``deploy`` entry to the first ``traffic`` entry confirming weight 100.
- rollback time: from the first entry that moved the release to ``rolling_back`` (the
  controller's ``decision:rollback`` or a person's ``rollback``) to ``rolled_back``. When that
  decision is not among the entries read, the actuator's own ``rollback_seconds`` is used.
- time per step: a step starts when ``traffic`` confirms its weight and ends when ``traffic``
  confirms the next, higher weight (the last step, 100%, ends when the release succeeds, so
  it is the bake). Pauses and approval waits at a weight are part of its time. A step cut short
  by a rollback is not a step time: it says how long a failing canary lasted, not how long a
  step takes.
- approval waits: from entering ``pending_approval`` (a high-risk deploy, or the controller's
  ``decision:request_approval``) to the ``approve`` that leaves it. A pause in between does not
  end the wait; the release is still waiting for a person. A wait can also end in a rollback,
  or still be open at the end of the window. Approvals given early, before the step asked for
  one, never waited. Refused approvals are the ``approve`` entries with outcome ``refused``.

Window rule: every number is counted in the window in which it ends. A release started before
the window but finishing inside it counts as succeeded or rolled back in the window, and its
lead time counts there too when its ``deploy`` entry is among the entries given (callers read
``LOOKBACK_S`` before the window for this); without it, the lead time is unknown and left out.
A release started inside the window and still running counts as started only.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from bot.release.durations import format_duration
from bot.store.audit import AuditEntry

DAY_S = 86400.0
# How far before a window the audit stream is read, so that a release started shortly before
# the window and finished inside it still has a known start.
LOOKBACK_S = 3 * DAY_S
ALL = "_all"  # the scope of the numbers over every service (no service name starts with _)

_PENDING = "pending_approval"


@dataclass(frozen=True)
class Spread:
    """A set of durations in seconds: how many, the median, the 90th percentile and the max.

    The 90th percentile is the nearest-rank one: the smallest value with at least 90% of the
    values at or below it.
    """

    values: tuple[float, ...] = ()

    @classmethod
    def of(cls, values: Iterable[float]) -> Spread:
        return cls(tuple(sorted(values)))

    @property
    def count(self) -> int:
        return len(self.values)

    @property
    def median(self) -> float | None:
        return statistics.median(self.values) if self.values else None

    @property
    def p90(self) -> float | None:
        if not self.values:
            return None
        return self.values[max(0, math.ceil(0.9 * len(self.values)) - 1)]

    @property
    def max(self) -> float | None:
        return self.values[-1] if self.values else None


@dataclass(frozen=True)
class ServiceStats:
    """The numbers of one service (or of all of them, ``service == ALL``) over a window."""

    service: str
    days: float
    started: int = 0
    succeeded: int = 0
    rolled_back: int = 0
    lead_time: Spread = Spread()
    rollback_time: Spread = Spread()
    step_time: dict[int, Spread] = field(default_factory=dict)  # by weight, ascending
    approval_wait: Spread = Spread()  # waits that ended with an approval
    waits_rolled_back: int = 0  # waits that ended in a rollback instead
    waits_open: int = 0  # still waiting at the end of the window
    approvals_refused: int = 0

    @property
    def finished(self) -> int:
        return self.succeeded + self.rolled_back

    @property
    def deploys_per_day(self) -> float:
        return self.started / self.days if self.days > 0 else 0.0

    @property
    def rollback_rate(self) -> float | None:
        return self.rolled_back / self.finished if self.finished else None

    @property
    def is_empty(self) -> bool:
        return not (
            self.started
            or self.finished
            or self.step_time
            or self.approval_wait.count
            or self.waits_rolled_back
            or self.waits_open
            or self.approvals_refused
        )


@dataclass(frozen=True)
class ReleaseStats:
    start: float
    end: float
    service: str | None  # the filter asked for; None = every service
    overall: ServiceStats
    by_service: dict[str, ServiceStats]  # sorted by name
    audit_from: float | None = None  # the oldest entry left in a trimmed audit log

    @property
    def days(self) -> float:
        return (self.end - self.start) / DAY_S

    @property
    def covered_from(self) -> float | None:
        """Where the audit log starts, when that is inside the window (older data is gone)."""
        if self.audit_from is not None and self.audit_from > self.start:
            return self.audit_from
        return None


# --- computing ----------------------------------------------------------------------------


@dataclass
class _Tally:
    """Mutable accumulator for one scope while the entries are walked."""

    started: int = 0
    succeeded: int = 0
    rolled_back: int = 0
    lead: list[float] = field(default_factory=list)
    rollback: list[float] = field(default_factory=list)
    steps: dict[int, list[float]] = field(default_factory=dict)
    waits: list[float] = field(default_factory=list)
    waits_rolled_back: int = 0
    waits_open: int = 0
    refused: int = 0

    def freeze(self, service: str, days: float) -> ServiceStats:
        return ServiceStats(
            service=service,
            days=days,
            started=self.started,
            succeeded=self.succeeded,
            rolled_back=self.rolled_back,
            lead_time=Spread.of(self.lead),
            rollback_time=Spread.of(self.rollback),
            step_time={w: Spread.of(v) for w, v in sorted(self.steps.items())},
            approval_wait=Spread.of(self.waits),
            waits_rolled_back=self.waits_rolled_back,
            waits_open=self.waits_open,
            approvals_refused=self.refused,
        )


@dataclass
class _Release:
    """What is known of one release while its entries are walked in order."""

    service: str
    deployed_at: float | None = None
    promoted: bool = False
    rollback_decided_at: float | None = None
    weight: int | None = None  # the weight traffic last confirmed
    weight_since: float = 0.0
    wait_since: float | None = None  # in an approval wait since


def compute(
    entries: Iterable[AuditEntry],
    *,
    start: float,
    end: float,
    service: str | None = None,
    audit_from: float | None = None,
) -> ReleaseStats:
    """Stats of the window [start, end) from audit entries (any order; read with lookback).

    ``service`` keeps one service only. ``audit_from`` is given when the capped audit log has
    dropped old entries: the time of its oldest remaining one, so that a window reaching
    further back says it cannot see everything.
    """
    chosen = sorted(
        (e for e in entries if service is None or e.service == service), key=lambda e: e.at
    )
    tallies: dict[str, _Tally] = {}
    releases: dict[str, _Release] = {}

    def inside(at: float) -> bool:
        return start <= at < end

    for e in chosen:
        if e.at >= end:
            break
        tally = tallies.setdefault(e.service, _Tally())
        if e.outcome == "refused":
            if e.action == "approve" and inside(e.at):
                tally.refused += 1
            continue
        if e.outcome != "ok" or not e.release_id:
            continue
        r = releases.setdefault(e.release_id, _Release(e.service))
        _walk(e, r, tally, inside)

    # Waits still open at the end of the window (their releases are not finished by then).
    for r in releases.values():
        if r.wait_since is not None:
            tallies[r.service].waits_open += 1

    days = (end - start) / DAY_S
    frozen = (t.freeze(name, days) for name, t in sorted(tallies.items()) if name)
    by_service = {s.service: s for s in frozen if not s.is_empty}
    overall = _merge(list(tallies.values())).freeze(service or ALL, days)
    return ReleaseStats(start, end, service, overall, by_service, audit_from)


# One pass over the lifecycle stream, each entry kind updating its release: a state machine reads
# best whole.
def _walk(e: AuditEntry, r: _Release, tally: _Tally, inside: Callable[[float], bool]) -> None:  # noqa: C901, PLR0912
    """Apply one ``ok`` entry of a release to its timeline and to the service's tally."""
    at = e.at
    if e.action == "deploy":
        r.deployed_at = at
        if inside(at):
            tally.started += 1
    if e.action == "traffic":
        weight = _int(e.detail.get("weight"))
        if weight is not None and weight != r.weight:
            if r.weight is not None and weight > r.weight and inside(at):
                tally.steps.setdefault(r.weight, []).append(at - r.weight_since)
            r.weight, r.weight_since = weight, at
            if weight >= 100 and not r.promoted:
                r.promoted = True
                if r.deployed_at is not None and inside(at):
                    tally.lead.append(at - r.deployed_at)
    # Approval waits: entering pending_approval opens one unless one is already open
    # (a resume back to pending_approval continues the same wait).
    if e.to_state == _PENDING and r.wait_since is None:
        r.wait_since = at
    elif e.action == "approve" and e.from_state == _PENDING and r.wait_since is not None:
        if inside(at):
            tally.waits.append(at - r.wait_since)
        r.wait_since = None
    if e.to_state == "rolling_back" and r.rollback_decided_at is None:
        r.rollback_decided_at = at
        if r.wait_since is not None and inside(at):
            tally.waits_rolled_back += 1
        r.wait_since = None
        r.weight = None  # the step in progress was cut short: no step time for it
    if e.to_state == "succeeded":
        if r.weight is not None and inside(at):
            tally.steps.setdefault(r.weight, []).append(at - r.weight_since)
        r.weight = None
        if inside(at):
            tally.succeeded += 1
    if e.action == "rolled_back":
        if inside(at):
            tally.rolled_back += 1
            took = (
                at - r.rollback_decided_at
                if r.rollback_decided_at is not None
                else _float(e.detail.get("rollback_seconds"))
            )
            if took is not None:
                tally.rollback.append(took)
        r.wait_since = None
        r.weight = None


def _merge(tallies: Sequence[_Tally]) -> _Tally:
    total = _Tally()
    for t in tallies:
        total.started += t.started
        total.succeeded += t.succeeded
        total.rolled_back += t.rolled_back
        total.lead += t.lead
        total.rollback += t.rollback
        for weight, values in t.steps.items():
            total.steps.setdefault(weight, []).extend(values)
        total.waits += t.waits
        total.waits_rolled_back += t.waits_rolled_back
        total.waits_open += t.waits_open
        total.refused += t.refused
    return total


def _int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float) and math.isfinite(value):
        return int(value)
    return None


def _float(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


# --- rendering ----------------------------------------------------------------------------

MAX_SERVICE_LINES = 15  # a chat answer stays short; the rest is summed up in one line


def render(stats: ReleaseStats) -> str:
    """The stats as a short chat answer (Slack mrkdwn)."""
    period = _period(stats.days)
    scope = f" of `{stats.service}`" if stats.service else ""
    coverage = _coverage(stats)
    s = stats.overall
    if s.is_empty:
        return f"no releases{scope} in the last {period}" + (f"\n{coverage}" if coverage else "")
    lines = [f"*Release stats{scope or ', all services'}, last {period}*", _volume(s)]
    if s.lead_time.count:
        lines.append(
            f"• *lead time* (request → 100%): median {_took(s.lead_time.median)}, "
            f"p90 {_took(s.lead_time.p90)} ({_n(s.lead_time.count, 'release')})"
        )
    if s.rollback_time.count:
        lines.append(
            f"• *rollback time* (decision → 0%): median {_took(s.rollback_time.median)}, "
            f"max {_took(s.rollback_time.max)} ({_n(s.rollback_time.count, 'rollback')})"
        )
    if s.step_time:
        steps = " · ".join(
            f"{w}%{' (bake)' if w >= 100 else ''} {_took(v.median)}" for w, v in s.step_time.items()
        )
        lines.append(f"• *time per step* (median): {steps}")
    if approvals := _approvals(s):
        lines.append(f"• *approval waits*: {approvals}")
    if stats.service is None and len(stats.by_service) > 1:
        lines.append("*By service*")
        shown = list(stats.by_service.values())[:MAX_SERVICE_LINES]
        lines += [_service_line(x) for x in shown]
        if len(stats.by_service) > len(shown):
            lines.append(f"• … and {len(stats.by_service) - len(shown)} more services")
    if coverage:
        lines.append(coverage)
    return "\n".join(lines)


def _volume(s: ServiceStats) -> str:
    text = f"• *{_n(s.started, 'release')} started* ({s.deploys_per_day:.1f} a day)"
    if s.finished:
        text += (
            f" · *{s.finished} finished*: {s.succeeded} succeeded, {s.rolled_back} rolled back "
            f"(rollback rate {_pct(s.rollback_rate)})"
        )
    return text


def _approvals(s: ServiceStats) -> str:
    parts: list[str] = []
    if s.approval_wait.count:
        parts.append(
            f"median {_took(s.approval_wait.median)}, max {_took(s.approval_wait.max)} "
            f"({s.approval_wait.count} approved)"
        )
    if s.waits_rolled_back:
        parts.append(f"{s.waits_rolled_back} ended in a rollback")
    if s.waits_open:
        parts.append(f"{s.waits_open} still waiting")
    if s.approvals_refused:
        parts.append(f"{_n(s.approvals_refused, 'approval')} refused")
    return "; ".join(parts)


def _service_line(s: ServiceStats) -> str:
    text = f"• `{s.service}`: {s.started} started"
    if s.finished:
        text += f", {s.succeeded} succeeded, {s.rolled_back} rolled back ({_pct(s.rollback_rate)})"
    if s.lead_time.count:
        text += f", lead time median {_took(s.lead_time.median)}"
    return text


def _coverage(stats: ReleaseStats) -> str:
    since = stats.covered_from
    if since is None:
        return ""
    return (
        f"_The audit log covers only the last {format_duration(max(0.0, stats.end - since))}: "
        "anything older has been trimmed from it and is not counted._"
    )


def _period(days: float) -> str:
    whole = round(days)
    if abs(days - whole) < 1e-6:
        return "day" if whole == 1 else f"{whole} days"
    return format_duration(days * DAY_S)


def _took(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    # Rollbacks take seconds: keep a decimal there; longer spans read better as 1h30m.
    return f"{seconds:.1f}s" if seconds < 10 else format_duration(seconds)


def _pct(ratio: float | None) -> str:
    return "—" if ratio is None else f"{100 * ratio:.0f}%"


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"
