"""First-step sizing: would the canary's first step see enough requests for a verdict?

Pure. The minimum-traffic guard (``thresholds.too_little_traffic``) gives no verdict while a
side served fewer than a metric's ``min_requests`` in the service's ``window``, and the
controller holds a step until it has one. A 1% step of a quiet service can therefore wait at 1%
for ever. Before a release starts, the stable version serves every request, so its count in the
last ``window`` (the guard's own ``requests_query``, asked for the stable version) times a
step's share is what the canary would serve per window at that step; the same guard, fed those
expected counts, says whether the step gets a verdict.

The result is data (``Sizing``); ``bot.render.sizing`` says it in words.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from bot.judging.thresholds import Traffic, counts_control, too_little_traffic
from bot.metrics.base import TOTAL_REQUESTS_METRIC, MetricQuery, QueryResult, QueryStatus, Side
from bot.release.durations import prometheus_range
from bot.release.policy import (
    FirstStep,
    Metric,
    NoDataPolicy,
    ServicePolicy,
    Strategy,
    render_template,
)

# The first steps `auto` may start at besides the policy's own (never below the planned first
# step, never 100%: a release that could only be judged at 100% is no canary).
STANDARD_STEPS = (1, 2, 5, 10, 20, 25, 50)


class SizingOutcome(StrEnum):
    ENOUGH = "enough"  # the first step as planned gives every metric its min_requests
    TOO_FEW = "too_few"  # it does not; the release starts as planned (or is refused)
    RAISED = "raised"  # auto: the release starts at the smallest step that gives enough
    UNSIZED = "unsized"  # the service's traffic could not be read


class Unsized(StrEnum):
    NO_STABLE = "no_stable"  # no stable version is known whose traffic could be read
    NO_DATA = "no_data"  # the query returned nothing (or not a number)
    ERROR = "error"  # the metrics source failed or did not answer in time


@dataclass(frozen=True)
class Shortfall:
    """The tightest unmet need at one step: which metric, which side, how many requests the
    side would serve per window and how many the metric needs."""

    metric: str
    side: Side
    expected: float
    need: int
    no_data: NoDataPolicy = NoDataPolicy.HOLD  # what the metric does without a verdict


@dataclass(frozen=True)
class Sizing:
    """The first step judged against the traffic the service serves now."""

    service: str
    version: str
    mode: FirstStep
    outcome: SizingOutcome
    window: float  # seconds over which min_requests is counted (the service's window)
    planned: tuple[int, ...]  # the ladder as planned
    weights: tuple[int, ...]  # the ladder the release starts with
    holds: tuple[float, ...]
    total: float | None = None  # requests the service served in the last window
    shortfall: Shortfall | None = None  # at the planned first step; None when enough/unsized
    # A ladder from the smallest step that gives enough (None: no step below 100% does).
    suggestion: tuple[int, ...] | None = None
    explicit: bool = False  # the steps were given with the deploy (auto keeps them)
    unsized: Unsized | None = None
    error: str = ""  # the metrics source's own words, when unsized
    query: str = ""

    @property
    def refused(self) -> bool:
        """``require`` refuses a first step that is too thin, or one it could not size."""
        return self.mode is FirstStep.REQUIRE and self.outcome in (
            SizingOutcome.TOO_FEW,
            SizingOutcome.UNSIZED,
        )

    @property
    def rate(self) -> float | None:
        """Requests per second the service serves now."""
        return None if self.total is None else self.total / self.window

    @property
    def first(self) -> int:
        return self.weights[0]

    def expected_at(self, weight: int) -> float | None:
        """Requests the canary would serve per window at ``weight`` percent."""
        return None if self.total is None else self.total * weight / 100

    def window_needed(self) -> float | None:
        """The window that would give the planned first step's canary enough requests (None
        when no traffic at all, or nothing is short on the canary side)."""
        short = self.shortfall
        if short is None or short.side is not Side.CANARY or short.expected <= 0:
            return None
        return self.window * short.need / short.expected

    def as_json(self) -> dict[str, Any]:
        """What the audit log and the API keep: numbers and names, no sentences."""
        return {
            "mode": self.mode.value,
            "outcome": self.outcome.value,
            "window": self.window,
            "planned": list(self.planned),
            "steps": list(self.weights),
            "requests_per_window": self.total,
            "shortfall": None
            if self.shortfall is None
            else {
                "metric": self.shortfall.metric,
                "side": self.shortfall.side.value,
                "expected": round(self.shortfall.expected, 3),
                "need": self.shortfall.need,
                "no_data": self.shortfall.no_data.value,
            },
            "suggestion": None if self.suggestion is None else list(self.suggestion),
            "unsized": None if self.unsized is None else self.unsized.value,
            "error": self.error,
            "query": self.query,
        }


def counted(metrics: Sequence[Metric]) -> list[Metric]:
    """The metrics whose verdict waits for min_requests (dry-run ones never hold a step)."""
    return [m for m in metrics if m.min_requests and not m.dry_run]


def wants_sizing(sp: ServicePolicy, strategy: Strategy, weights: Sequence[int]) -> bool:
    """Whether a deploy's first step is sized at all: not when the policy says ``fixed``, when
    no metric needs a minimum of requests, for blue-green (its first step is 0% by design) or
    for a first step of 0%."""
    return (
        sp.first_step is not FirstStep.FIXED
        and strategy is Strategy.CANARY
        and bool(weights)
        and weights[0] > 0
        and bool(counted(sp.metrics))
    )


def total_query(sp: ServicePolicy, service: str, stable: str) -> MetricQuery | None:
    """The stable version's request count in the last window: ``requests_query`` exactly as the
    guard asks it, so the estimate counts what the guard will count. None without a stable
    version (nothing names the traffic to read)."""
    if not stable:
        return None
    promql = render_template(
        sp.requests_query, service=service, version=stable, window=prometheus_range(sp.window)
    )
    return MetricQuery(
        key=f"sizing|{service}",
        promql=promql,
        metric=TOTAL_REQUESTS_METRIC,
        service=service,
        version=stable,
        side=Side.CONTROL,
    )


def shortfall_at(metrics: Sequence[Metric], total: float, weight: int) -> Shortfall | None:
    """The tightest need ``weight`` percent of ``total`` requests per window leaves unmet, by
    the guard's own rule; None when every counted metric would get its verdict."""
    canary = total * weight / 100
    control = total - canary
    # At 100% nothing is left on the control: the release bakes, judged on the canary alone.
    traffic = Traffic(canary=canary, control=control, control_counted=weight < 100)
    short: list[Shortfall] = []
    for m in counted(metrics):
        if not too_little_traffic(m, traffic, against_control=counts_control(m)):
            continue
        side = Side.CANARY if canary < m.min_requests else Side.CONTROL
        expected = canary if side is Side.CANARY else control
        short.append(Shortfall(m.name, side, expected, m.min_requests, m.no_data))
    if not short:
        return None
    return max(short, key=lambda s: (s.need, s.side is Side.CANARY))


def candidates(weights: Sequence[int], hooked: Collection[int] = ()) -> list[int]:
    """First steps to try, smallest first: the plan's own steps below 100% and the standard
    ones, none below the planned first step, and none at or past a step with hooks (a release
    that started there would skip the checks meant to run before it)."""
    first = weights[0]
    ceiling = min((w for w in hooked if w > first), default=100)
    return sorted({w for w in (*weights, *STANDARD_STEPS) if first <= w < ceiling})


def ladder_from(
    weights: Sequence[int], holds: Sequence[float], start: int
) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """The plan starting at ``start``: its steps above it follow. A start that is not one of
    the plan's steps takes the hold of the first step it stands in for."""
    if start in weights:
        i = list(weights).index(start)
        return tuple(weights[i:]), tuple(holds[i:])
    rest = [(w, h) for w, h in zip(weights, holds, strict=True) if w > start]
    return (start, *(w for w, _ in rest)), (holds[0], *(h for _, h in rest))


def size_first_step(
    *,
    service: str,
    version: str,
    mode: FirstStep,
    metrics: Sequence[Metric],
    window: float,
    weights: Sequence[int],
    holds: Sequence[float],
    reading: QueryResult | None,
    explicit: bool = False,
    hooked: Collection[int] = (),
) -> Sizing:
    """Judge the planned first step against ``reading`` (the stable version's requests in the
    last window; None when there is no stable version to read) and, under ``auto``, choose
    the first step. ``explicit``: the steps came with the deploy, and auto keeps them.
    ``hooked``: the steps with hooks before them, which a first step never skips."""
    base = Sizing(
        service=service,
        version=version,
        mode=mode,
        outcome=SizingOutcome.ENOUGH,
        window=window,
        planned=tuple(weights),
        weights=tuple(weights),
        holds=tuple(holds),
        explicit=explicit,
        query=reading.query if reading is not None else "",
    )
    if reading is None:
        return _unsized(base, Unsized.NO_STABLE)
    if reading.status is QueryStatus.ERROR:
        return _unsized(base, Unsized.ERROR, reading.error)
    value = reading.value
    if reading.status is QueryStatus.NO_DATA or value is None or not math.isfinite(value):
        return _unsized(base, Unsized.NO_DATA, reading.error or f"the query returned {value}")
    total = max(0.0, value)
    short = shortfall_at(metrics, total, weights[0])
    if short is None:
        return replace(base, total=total)
    start = next(
        (c for c in candidates(weights, hooked) if shortfall_at(metrics, total, c) is None), None
    )
    suggestion = ladder_from(weights, holds, start) if start is not None else None
    if mode is FirstStep.AUTO and not explicit and suggestion is not None:
        return replace(
            base,
            outcome=SizingOutcome.RAISED,
            total=total,
            shortfall=short,
            suggestion=suggestion[0],
            weights=suggestion[0],
            holds=suggestion[1],
        )
    return replace(
        base,
        outcome=SizingOutcome.TOO_FEW,
        total=total,
        shortfall=short,
        suggestion=suggestion[0] if suggestion else None,
    )


def _unsized(base: Sizing, why: Unsized, error: str = "") -> Sizing:
    return replace(base, outcome=SizingOutcome.UNSIZED, unsized=why, error=error)
