"""Threshold rules: judge one metric's canary value against absolute limits and the control.

Pure. Every check has three kinds of outcome: pass, fail, and no data / error, and its reason
names the metric, the value, the limit and what the control showed.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from bot.metrics.base import QueryResult, QueryStatus
from bot.release.checks import CheckResult, Outcome
from bot.release.policy import Direction, Metric


def fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "n/a"
    if math.isinf(value):
        return "inf"
    text = f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return f"{text}{' ' + unit if unit and unit != 'ratio' else ''}"


def judge(
    metric: Metric,
    canary: QueryResult,
    control: QueryResult | float | None,
    requests: Traffic | float | None = None,
    *,
    control_label: str = "control",
    require_control: bool = True,
) -> CheckResult:
    """Judge one metric. ``control`` is the control's query result, or a baseline number while
    the release bakes at 100% (no control left), or None when there is nothing to compare."""
    result = functools.partial(
        CheckResult, metric=metric.name, critical=metric.critical, dry_run=metric.dry_run
    )
    if canary.status is QueryStatus.ERROR:
        return result(
            outcome=Outcome.ERROR,
            canary=None,
            control=None,
            query=canary.query,
            reason=f"{metric.name}: canary query failed: {canary.error}",
        )
    compares = _needs_control(metric) and control is not None
    if too_little := too_little_traffic(metric, requests, against_control=compares):
        return result(outcome=Outcome.NO_DATA, canary=canary.value, control=None, reason=too_little)
    if canary.status is QueryStatus.NO_DATA or canary.value is None:
        return result(
            outcome=Outcome.NO_DATA,
            canary=None,
            control=None,
            query=canary.query,
            reason=f"{metric.name}: no canary data ({canary.error})",
        )

    control_value: float | None
    if isinstance(control, QueryResult):
        if control.status is QueryStatus.ERROR and _needs_control(metric):
            return result(
                outcome=Outcome.ERROR,
                canary=canary.value,
                control=None,
                query=control.query,
                reason=f"{metric.name}: control query failed: {control.error}",
            )
        control_value = control.value if control.status is QueryStatus.OK else None
    else:
        control_value = control
    if (
        control_value is None
        and require_control
        and _needs_control(metric)
        and not _has_absolute(metric)
    ):
        return result(
            outcome=Outcome.NO_DATA,
            canary=canary.value,
            control=None,
            reason=f"{metric.name}: no {control_label} data to compare with",
        )

    value = canary.value
    failures = _violations(metric, value, control_value, warn=False, control_label=control_label)
    warnings = _violations(metric, value, control_value, warn=True, control_label=control_label)
    ctrl = (
        f" ({control_label} {fmt(control_value, metric.unit)})" if control_value is not None else ""
    )
    if failures:
        limit, text = failures[0]
        # Relative rules already name the control in their text; absolute ones get it appended.
        suffix = ctrl if control_label not in text else ""
        return result(
            outcome=Outcome.FAIL,
            canary=value,
            control=control_value,
            reason=f"{metric.name}: {text}{suffix}",
            limit=limit,
            warning="; ".join(t for _, t in warnings),
        )
    return result(
        outcome=Outcome.PASS,
        canary=value,
        control=control_value,
        reason=f"{metric.name}: {fmt(value, metric.unit)} within limits{ctrl}",
        warning="; ".join(f"{metric.name}: {t}" for _, t in warnings),
    )


@dataclass(frozen=True)
class Traffic:
    """Requests each side served in the window (None: unknown). ``control_counted`` says the
    control's count was asked for: there is a control to compare with."""

    canary: float | None
    control: float | None = None
    control_counted: bool = False


def too_little_traffic(
    metric: Metric, requests: Traffic | float | None, *, against_control: bool = True
) -> str:
    """The minimum-traffic guard: why there is no verdict yet, or "" when there is enough.

    A thin control is as unsure as a thin canary: a metric judged against the control has no
    verdict until both sides served ``min_requests`` (a rollback on a control with a second of
    samples is a rollback on noise)."""
    traffic = requests if isinstance(requests, Traffic) else Traffic(canary=requests)
    need = metric.min_requests
    if not need:
        return ""
    sides = [("canary", traffic.canary)]
    if against_control and traffic.control_counted:
        sides.append(("control", traffic.control))
    for side, seen in sides:
        if seen is None or seen < need:
            shown = "unknown" if seen is None else f"{seen:.0f}"
            return f"{metric.name}: no verdict yet, {side} saw {shown} requests (needs {need})"
    return ""


def counts_control(metric: Metric) -> bool:
    """Whether the guard above asks the control for ``min_requests`` too: the statistical judge
    always compares both sides; the threshold rules only when a rule is against the control."""
    return metric.uses_statistics or _needs_control(metric)


def _needs_control(metric: Metric) -> bool:
    return metric.max_ratio is not None or metric.max_diff is not None


def _has_absolute(metric: Metric) -> bool:
    return metric.max is not None or metric.min is not None


def _violations(
    metric: Metric, value: float, control: float | None, *, warn: bool, control_label: str
) -> list[tuple[str, str]]:
    """(limit, text) for every rule the value breaks; the warn_* set when ``warn``."""
    u = metric.unit
    hi, lo = (metric.warn_max, metric.warn_min) if warn else (metric.max, metric.min)
    ratio_limit = metric.warn_ratio if warn else metric.max_ratio
    diff_limit = metric.warn_diff if warn else metric.max_diff
    word = "warn_" if warn else ""
    out: list[tuple[str, str]] = []
    if hi is not None and value > hi:
        out.append((f"{word}max {fmt(hi, u)}", f"{fmt(value, u)} > {word}max {fmt(hi, u)}"))
    if lo is not None and value < lo:
        out.append((f"{word}min {fmt(lo, u)}", f"{fmt(value, u)} < {word}min {fmt(lo, u)}"))
    if control is None:
        return out
    up = metric.direction in (Direction.INCREASE, Direction.EITHER)
    down = metric.direction in (Direction.DECREASE, Direction.EITHER)
    if diff_limit is not None:
        diff = value - control
        if up and diff > diff_limit:
            out.append(
                (
                    f"{word}diff +{fmt(diff_limit, u)}",
                    f"{fmt(value, u)} is {fmt(diff, u)} above {control_label} "
                    f"(limit +{fmt(diff_limit, u)})",
                )
            )
        if down and -diff > diff_limit:
            out.append(
                (
                    f"{word}diff -{fmt(diff_limit, u)}",
                    f"{fmt(value, u)} is {fmt(-diff, u)} below {control_label} "
                    f"(limit -{fmt(diff_limit, u)})",
                )
            )
    if ratio_limit is not None:
        out += _ratio_violations(
            value,
            control,
            ratio_limit,
            up=up,
            down=down,
            diff_decides=diff_limit is not None,
            word=word,
            unit=u,
            control_label=control_label,
        )
    return out


def _ratio_violations(
    value: float,
    control: float,
    limit: float,
    *,
    up: bool,
    down: bool,
    diff_decides: bool,
    word: str,
    unit: str,
    control_label: str,
) -> list[tuple[str, str]]:
    # A ratio against zero is undefined; when a max_diff is configured it judges that case
    # alone (a canary at 0.1% errors against a control at 0% is not "infinitely worse").
    if control <= 0 or value < 0:
        if diff_decides or value == control:
            return []
        if up and value > control:
            return [
                (
                    f"{word}ratio {limit:g}x",
                    f"{fmt(value, unit)} against {control_label} {fmt(control, unit)} "
                    f"(limit {limit:g}x)",
                )
            ]
        return []
    ratio = value / control
    out = []
    if up and ratio > limit:
        out.append(
            (
                f"{word}ratio {limit:g}x",
                f"{fmt(value, unit)} is {ratio:.2f}x {control_label} (limit {limit:g}x)",
            )
        )
    if down and value > 0 and control / value > limit:
        out.append(
            (
                f"{word}ratio 1/{limit:g}x",
                f"{fmt(value, unit)} is {ratio:.2f}x {control_label} (limit 1/{limit:g}x)",
            )
        )
    if down and value == 0:
        out.append(
            (
                f"{word}ratio 1/{limit:g}x",
                f"0 against {control_label} {fmt(control, unit)} (limit 1/{limit:g}x)",
            )
        )
    return out
