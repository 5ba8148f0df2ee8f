"""The completion summary of a succeeded release, built from its record, its analysis rounds
and its lifecycle moves. Pure: the caller reads the store, this only counts and measures.

The rounds (one per judged round: the weight after the decision, and per metric the canary,
the other side and the outcome) give the time at each step and every metric's path; the warn_*
crossings and near misses are measured here against the policy's limits, because a round's
record keeps only its outcome. The moves (audit entries of the release) give pauses, waits for
approval and traffic the engine had to be given again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bot.release.checks import Outcome
from bot.release.policy import Direction, Metric
from bot.release.rollout import Release
from bot.release.summary import (
    NEAR_MISS_SHARE,
    CompletionSummary,
    Limit,
    MetricFinal,
    Moment,
    MomentKind,
    Rule,
    StepTime,
)

Side = tuple[float | None, float | None, str]  # (canary, control or baseline, outcome)


@dataclass(frozen=True)
class Round:
    """One judged round: when, the weight after its decision, and each metric's numbers."""

    t: float
    weight: int
    values: Mapping[str, Side] = field(default_factory=dict)


@dataclass(frozen=True)
class Move:
    """One audited change of the release (a decision that changed something, a person's
    action, a traffic change), in the audit's own clock."""

    action: str
    to_state: str
    at: float
    weight: int | None = None
    by: str = ""
    reason: str = ""


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def rounds_from_points(points: Iterable[Mapping[str, Any]]) -> list[Round]:
    """The store's data points (``{"t", "weight", "m": {metric: [canary, control, outcome]}}``)
    as rounds; a malformed point is skipped, not fatal: the summary is told, not judged."""
    out = []
    for p in points:
        t, weight, m = _number(p.get("t")), _number(p.get("weight")), p.get("m")
        if t is None or weight is None or not isinstance(m, Mapping):
            continue
        values: dict[str, Side] = {}
        for name, v in m.items():
            if isinstance(v, list | tuple) and len(v) == 3:
                values[str(name)] = (_number(v[0]), _number(v[1]), str(v[2]))
        out.append(Round(t, int(weight), values))
    return sorted(out, key=lambda r: r.t)


def _final_round(release: Release) -> Round | None:
    if release.last_eval_at is None or not release.last_checks:
        return None
    values = {c.metric: (c.canary, c.control, c.outcome.value) for c in release.last_checks}
    return Round(release.last_eval_at, release.weight, values)


def summarize(
    release: Release,
    metrics: Sequence[Metric],
    rounds: Sequence[Round],
    moves: Sequence[Move],
    *,
    partial: bool = False,
) -> CompletionSummary:
    """The summary of ``release`` (at its success, or built later from the same data).
    ``rounds`` may lack the last round (it is stored after the commit that ends the release):
    the record's own last checks stand in for it."""
    rounds = sorted(rounds, key=lambda r: r.t)
    final = _final_round(release)
    if final is not None and (not rounds or rounds[-1].t < final.t):
        rounds = [*rounds, final]
    end = release.finished_at or release.last_eval_at or release.updated_at
    at_last_step = release.step == len(release.weights) - 1
    return CompletionSummary(
        duration=max(0.0, end - release.created_at),
        steps=_steps(release, rounds, end),
        rounds=len(rounds),
        compared_with="baseline" if release.baseline and at_last_step else "control",
        metrics=_finals(release, metrics, rounds),
        moments=[*_metric_moments(metrics, rounds), *_move_moments(moves)],
        # Rounds the store no longer keeps (or never got) leave a stretch untold.
        partial=partial or len(rounds) < release.evaluations,
    )


def _steps(release: Release, rounds: Sequence[Round], end: float) -> list[StepTime]:
    """Time at each weight the release was judged at. A round records the weight after its
    decision, so a step starts at the first round that shows it; the first step starts with
    the release. Weight 0 (waiting for the first approval) is not a step."""
    starts: list[tuple[int, float]] = []
    for r in rounds:
        if r.weight <= 0 or (starts and starts[-1][0] == r.weight):
            continue
        starts.append((r.weight, release.created_at if not starts else r.t))
    if starts and rounds and rounds[0].weight <= 0:
        # Judged at 0% first: the first step began when its first round showed it.
        starts[0] = (starts[0][0], next(r.t for r in rounds if r.weight > 0))
    if not starts:
        return []
    ends = [t for _, t in starts[1:]] + [end]
    return [
        StepTime(weight=w, seconds=max(0.0, stop - start))
        for (w, start), stop in zip(starts, ends, strict=True)
    ]


def _limits(metric: Metric) -> list[Limit]:
    pairs = (
        (Rule.MAX, metric.max),
        (Rule.MIN, metric.min),
        (Rule.MAX_RATIO, metric.max_ratio),
        (Rule.MAX_DIFF, metric.max_diff),
        (Rule.WARN_MAX, metric.warn_max),
        (Rule.WARN_MIN, metric.warn_min),
        (Rule.WARN_RATIO, metric.warn_ratio),
        (Rule.WARN_DIFF, metric.warn_diff),
    )
    return [Limit(rule=rule, value=value) for rule, value in pairs if value is not None]


@dataclass(frozen=True)
class _Measure:
    value: float  # what the limit is compared with: the canary, its ratio or its difference
    share: float | None  # of the limit used; None for floors, which have no zero to count from
    crossed: bool


def measure(metric: Metric, limit: Limit, canary: float, control: float | None) -> _Measure | None:
    """How far ``canary`` went toward ``limit`` (None: the rule cannot be measured here, e.g. a
    relative rule without a control). Follows the threshold rules' reading of each limit;
    a ratio's share is of the allowed increase (1.6x of a 2x limit used 60% of it)."""
    rule, bound = limit.rule, limit.value
    if rule in (Rule.MAX, Rule.WARN_MAX):
        return _Measure(canary, canary / bound if bound > 0 else None, canary > bound)
    if rule in (Rule.MIN, Rule.WARN_MIN):
        return _Measure(canary, None, canary < bound)
    if control is None:
        return None
    up = metric.direction in (Direction.INCREASE, Direction.EITHER)
    down = metric.direction in (Direction.DECREASE, Direction.EITHER)
    if rule in (Rule.MAX_DIFF, Rule.WARN_DIFF):
        diffs = [d for d, on in ((canary - control, up), (control - canary, down)) if on]
        worst = max(diffs)
        return _Measure(worst, worst / bound if bound > 0 else None, worst > bound)
    # A ratio against zero is undefined; the difference rule judges that case.
    if control <= 0 or canary <= 0:
        return None
    ratios = [x for x, on in ((canary / control, up), (control / canary, down)) if on]
    worst = max(ratios)
    share = (worst - 1) / (bound - 1) if bound > 1 else None
    return _Measure(worst, share, worst > bound)


@dataclass
class _Tally:
    """Rounds of one kind of moment at one step, and the worst of them."""

    rounds: int = 0
    value: float | None = None
    share: float | None = None
    limit: float | None = None


_Key = tuple[MomentKind, str, Rule | None, int]
# What one round says of one metric: (kind, the limit concerned, how far it went)
_Seen = tuple[MomentKind, Limit | None, _Measure | None]


def _seen_in_round(metric: Metric, side: Side) -> list[_Seen]:
    """The moments one round of one metric makes: no verdict, a failure (and the limit it
    crossed), or the warn_* levels it crossed and the failing limit it came nearest to."""
    canary, control, outcome = side
    if outcome in (Outcome.NO_DATA, Outcome.ERROR) or canary is None:
        return [(MomentKind.NO_DATA, None, None)]
    measured = [(lim, measure(metric, lim, canary, control)) for lim in _limits(metric)]
    failing = [(lim, m) for lim, m in measured if m is not None and not lim.rule.is_warning]
    if outcome == Outcome.FAIL:
        crossed = [(lim, m) for lim, m in failing if m.crossed]
        # No crossed limit: the statistical judge failed it.
        return [(MomentKind.FAILED, *crossed[0])] if crossed else [(MomentKind.FAILED, None, None)]
    out: list[_Seen] = [
        (MomentKind.WARNING, lim, m)
        for lim, m in measured
        if m is not None and lim.rule.is_warning and m.crossed
    ]
    near = [
        (lim, m)
        for lim, m in failing
        if m.share is not None and m.share >= NEAR_MISS_SHARE and not m.crossed
    ]
    if near:
        out.append((MomentKind.NEAR_MISS, *max(near, key=lambda pair: pair[1].share or 0.0)))
    return out


def _metric_moments(metrics: Sequence[Metric], rounds: Sequence[Round]) -> list[Moment]:
    tallies: dict[_Key, _Tally] = {}
    for r in rounds:
        for metric in metrics:
            side = r.values.get(metric.name)
            for kind, lim, m in _seen_in_round(metric, side) if side is not None else []:
                key = (kind, metric.name, lim.rule if lim else None, r.weight)
                tally = tallies.setdefault(key, _Tally())
                tally.rounds += 1
                worse = tally.share is None or (m is not None and (m.share or 0.0) > tally.share)
                if m is not None and (tally.value is None or worse):
                    tally.value, tally.share = m.value, m.share
                    tally.limit = lim.value if lim else None
    limits = {m.name: m.failure_limit for m in metrics}
    return [
        Moment(
            kind=kind,
            weight=weight,
            metric=name,
            rule=rule,
            limit=t.limit,
            value=t.value,
            share=t.share,
            rounds=t.rounds,
            failure_limit=limits.get(name, 0) if kind is MomentKind.FAILED else 0,
        )
        for (kind, name, rule, weight), t in tallies.items()
    ]


def _finals(
    release: Release, metrics: Sequence[Metric], rounds: Sequence[Round]
) -> list[MetricFinal]:
    checks = {c.metric: c for c in release.last_checks}
    closest: dict[str, tuple[float, Rule]] = {}
    for r in rounds:
        for metric in metrics:
            side = r.values.get(metric.name)
            if side is None or side[0] is None or side[2] != Outcome.PASS:
                continue
            for lim in _limits(metric):
                m = measure(metric, lim, side[0], side[1])
                if lim.rule.is_warning or m is None or m.share is None:
                    continue
                if m.share > closest.get(metric.name, (float("-inf"), lim.rule))[0]:
                    closest[metric.name] = (m.share, lim.rule)
    out = []
    for metric in metrics:
        check = checks.get(metric.name)
        share, rule = closest.get(metric.name, (None, None))
        out.append(
            MetricFinal(
                name=metric.name,
                unit=metric.unit,
                outcome=check.outcome.value if check else Outcome.NO_DATA.value,
                canary=check.canary if check else None,
                control=check.control if check else None,
                limits=_limits(metric),
                statistical=metric.uses_statistics,
                dry_run=metric.dry_run,
                warning=bool(check and check.warning),
                closest_share=share,
                closest_rule=rule,
            )
        )
    return out


def _move_moments(moves: Sequence[Move]) -> list[Moment]:
    """Pauses (with how long, who and why), waits for approval, and traffic set again."""
    out: list[Moment] = []
    paused: Move | None = None
    waiting: Move | None = None
    applied: int | None = None
    repairs: dict[int, int] = {}
    for move in sorted(moves, key=lambda m: m.at):
        if move.action == "traffic" and move.weight is not None:
            # Each step applies its weight once; the same weight again is a repair.
            if move.weight == applied:
                repairs[move.weight] = repairs.get(move.weight, 0) + 1
            applied = move.weight
        if paused is not None and move.to_state != "paused" and move.action.endswith("resume"):
            out.append(_pause(paused, move.at))
            paused = None
        if waiting is not None and move.action == "approve":
            out.append(
                Moment(
                    kind=MomentKind.APPROVAL_WAIT,
                    weight=move.weight or 0,
                    seconds=max(0.0, move.at - waiting.at),
                    by=move.by,
                )
            )
            waiting = None
        if move.to_state == "paused" and paused is None:
            paused = move
        if move.to_state == "pending_approval" and waiting is None:
            waiting = move
    if paused is not None:
        out.append(_pause(paused, None))
    out += [Moment(kind=MomentKind.TRAFFIC_REPAIR, weight=w, rounds=n) for w, n in repairs.items()]
    return out


def _pause(move: Move, until: float | None) -> Moment:
    return Moment(
        kind=MomentKind.PAUSE,
        weight=move.weight or 0,
        seconds=None if until is None else max(0.0, until - move.at),
        by=move.by,
        reason=move.reason,
    )
