"""The rules that judge the canary against itself: its value at the end of the previous step
(``vs_previous_step``) and its slope over the current step (``trend``). Pure: the record brings
the previous step's numbers and the step's points, the round brings the value now.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from bot.judging.thresholds import fmt
from bot.release.checks import CheckResult, Outcome
from bot.release.policy import Direction, Metric
from bot.release.rules import Trend, VsPreviousStep

# How many of a step's rounds a trend is fitted on (the most recent): a step of days at a
# short interval would otherwise make the record, and each fit, grow without bound.
MAX_TREND_POINTS = 720


def vs_previous_check(
    metric: Metric, rule: VsPreviousStep, value: float, previous: float | None, at: str
) -> CheckResult:
    """``value`` now against ``previous``, the canary's value when it left the step ``at``
    (e.g. "25%"); None: no previous step to compare with (the first step passes)."""
    if previous is None:
        reason = f"{metric.name}: no previous step to compare with"
        return _result(metric, Outcome.PASS, value, None, reason)
    u = metric.unit
    failed = _vs_previous_violation(metric.direction, rule, value, previous)
    base = f"its value at the end of {at} ({fmt(previous, u)})"
    if failed is None:
        reason = f"{metric.name}: {fmt(value, u)} within limits against {base}"
        return _result(metric, Outcome.PASS, value, previous, reason)
    limit, how = failed
    reason = f"{metric.name}: {fmt(value, u)} is {how} {base}"
    return _result(metric, Outcome.FAIL, value, previous, reason, f"vs {at} {limit}")


def _vs_previous_violation(
    direction: Direction, rule: VsPreviousStep, value: float, previous: float
) -> tuple[str, str] | None:
    """(limit, how far) for the first limit broken in the metric's worse direction."""
    worse = []
    if direction in (Direction.INCREASE, Direction.EITHER):
        worse.append((value, previous, "above"))
    if direction in (Direction.DECREASE, Direction.EITHER):
        worse.append((-value, -previous, "below"))
    for now, before, word in worse:
        change = now - before
        if rule.max_increase is not None and change > rule.max_increase:
            return f"+{rule.max_increase:g}", f"{abs(change):.3g} {word}"
        if rule.max_ratio is None or change <= 0:
            continue
        # A ratio needs a positive base on the worse side's scale; a step that ended at 0 is
        # judged by max_increase alone when there is one, else any rise breaks the ratio.
        base = abs(before)
        if base == 0:
            if rule.max_increase is None:
                return f"{rule.max_ratio:g}x", word
            continue
        ratio = 1 + change / base
        if ratio > rule.max_ratio:
            return f"{rule.max_ratio:g}x", f"{ratio:.2f}x worse than"
    return None


@dataclass(frozen=True)
class Slope:
    """A least-squares slope per hour with its confidence interval."""

    per_hour: float
    low: float
    high: float
    points: int


def fit_slope(points: Sequence[tuple[float, float]], confidence: float) -> Slope | None:
    """The slope of value over time (per hour) and its two-sided confidence interval from the
    t-distribution with n - 2 degrees of freedom; None below three distinct times."""
    if len(points) < 3:
        return None
    t = np.array([p[0] for p in points], dtype=float)
    y = np.array([p[1] for p in points], dtype=float)
    t = (t - t.mean()) / 3600.0  # hours, centred: the slope comes out per hour
    sxx = float(np.dot(t, t))
    if sxx <= 0:
        return None
    slope = float(np.dot(t, y - y.mean()) / sxx)
    residuals = y - y.mean() - slope * t
    dof = len(points) - 2
    se = math.sqrt(float(np.dot(residuals, residuals)) / dof / sxx)
    half = t_quantile((1 + confidence) / 2, dof) * se
    return Slope(slope, slope - half, slope + half, len(points))


def t_quantile(p: float, dof: int) -> float:
    """Student's t quantile: the Cornish-Fisher expansion around the normal quantile as a
    start, refined by Newton steps on the exact distribution (its density integrated by
    Simpson's rule), so small samples get the exact, wider interval."""
    z = NormalDist().inv_cdf(p)
    v = float(dof)
    z3, z5, z7, z9 = z**3, z**5, z**7, z**9
    x = (
        z
        + (z3 + z) / (4 * v)
        + (5 * z5 + 16 * z3 + 3 * z) / (96 * v**2)
        + (3 * z7 + 19 * z5 + 17 * z3 - 15 * z) / (384 * v**3)
        + (79 * z9 + 776 * z7 + 1482 * z5 - 1920 * z3 - 945 * z) / (92160 * v**4)
    )
    for _ in range(8):
        step = (_t_cdf(x, v) - p) / _t_pdf(x, v)
        x -= step
        if abs(step) < 1e-12:
            break
    return x


def _t_pdf(x: float, v: float) -> float:
    log_norm = math.lgamma((v + 1) / 2) - math.lgamma(v / 2) - 0.5 * math.log(v * math.pi)
    return math.exp(log_norm - (v + 1) / 2 * math.log1p(x * x / v))


def _t_cdf(x: float, v: float, panels: int = 2000) -> float:
    grid = np.linspace(0.0, x, panels + 1)
    log_norm = math.lgamma((v + 1) / 2) - math.lgamma(v / 2) - 0.5 * math.log(v * math.pi)
    density = np.exp(log_norm - (v + 1) / 2 * np.log1p(grid * grid / v))
    weights = np.ones(panels + 1)
    weights[1:-1:2], weights[2:-1:2] = 4.0, 2.0
    return 0.5 + float(np.dot(weights, density)) * (x / panels) / 3


def trend_check(
    metric: Metric, rule: Trend, points: Sequence[tuple[float, float]], at: str
) -> CheckResult:
    """The slope of the canary over the step's rounds (``points``, the latest included): fails
    only when its whole confidence interval lies past ``max_slope_per_hour`` in the metric's
    worse direction, so a noisy flat series never fails."""
    u = metric.unit
    latest = points[-1][1] if points else None

    def result_of(outcome: Outcome, reason: str, limit: str) -> CheckResult:
        return _result(metric, outcome, latest, None, reason, limit)

    if len(points) < rule.min_points:
        return result_of(
            Outcome.PASS,
            f"{metric.name}: trend not judged yet ({len(points)} of {rule.min_points} rounds "
            f"at {at})",
            "",
        )
    slope = fit_slope(points, rule.confidence)
    if slope is None:
        return result_of(Outcome.PASS, f"{metric.name}: trend not judged (no spread in time)", "")
    limit = rule.max_slope_per_hour
    rising = metric.direction in (Direction.INCREASE, Direction.EITHER) and slope.low > limit
    falling = metric.direction in (Direction.DECREASE, Direction.EITHER) and slope.high < -limit
    interval = (
        f"{fmt(slope.per_hour, u)}/h ({rule.confidence:.0%} interval {fmt(slope.low, u)} to "
        f"{fmt(slope.high, u)}) over {slope.points} rounds at {at}"
    )
    if rising or falling:
        word = "rising" if rising else "falling"
        return result_of(
            Outcome.FAIL,
            f"{metric.name}: {word} {interval}, past the limit of {fmt(limit, u)}/h",
            f"trend {fmt(limit, u)}/h",
        )
    return result_of(Outcome.PASS, f"{metric.name}: trend {interval} within {fmt(limit, u)}/h", "")


def _result(
    metric: Metric,
    outcome: Outcome,
    canary: float | None,
    control: float | None,
    reason: str,
    limit: str = "",
) -> CheckResult:
    """A step rule's check: ``control`` is what the canary was compared with, if anything."""
    return CheckResult(
        metric=metric.name,
        outcome=outcome,
        canary=canary,
        control=control,
        reason=reason,
        limit=limit,
        critical=metric.critical and outcome is Outcome.FAIL,
        dry_run=metric.dry_run,
    )
