"""A service's policy in words, step by step, for `check-config`: what rolls a release back,
where, and after how long; what each step holds, how often it is judged, who must approve.

"rolls back when error_rate > 10% for 5 minutes at 10%", "at 25%: holds 30m, judged every 10m,
approval required", "at 50%: error_rate must not rise more than 5% over its value at the end of
25%".
"""

from __future__ import annotations

from bot.judging.thresholds import fmt
from bot.release.durations import format_duration
from bot.release.policy import Direction, Hook, Metric, Risk, ServicePolicy, Strategy

_UNITS = (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1))


def duration_words(seconds: float) -> str:
    """'5 minutes', '1 hour 30 minutes', '45 seconds' (two units at most)."""
    whole = round(seconds)
    if whole < 1:
        return format_duration(seconds)
    parts = []
    for name, size in _UNITS:
        if whole >= size:
            n, whole = divmod(whole, size)
            parts.append(f"{n} {name}{'s' if n != 1 else ''}")
    return " ".join(parts[:2])


def value_words(metric: Metric, value: float) -> str:
    """A limit as people say it: a ratio metric in percent, others in their unit."""
    if metric.unit in ("ratio", "%") or (metric.unit == "" and metric.name.endswith("_rate")):
        shown = value * 100 if metric.unit != "%" else value
        return f"{shown:.4g}%"
    return fmt(value, metric.unit)


def explain_service(sp: ServicePolicy) -> list[str]:
    """One line per rule and per step that differs, in ladder order."""
    weights = [0, 100] if sp.strategy is Strategy.BLUE_GREEN else sp.weights
    lines = ["approval required before every step (risk: high)"] if sp.risk is Risk.HIGH else []
    for m in sp.metrics:
        elsewhere = any(o.name == m.name for s in sp.steps for o in s.metrics)
        lines += _limit_lines(m, "at every other step" if elsewhere else "at every step")
        if m.trend is not None and not elsewhere:
            lines.append(f"at every step: {_trend(m)}")
    for i, weight in enumerate(weights):
        at = f"at {weight}%"
        settings = _step_settings(sp, weight, first=i == 0)
        if settings:
            lines.append(f"{at}: {settings}")
        step = sp.step_at(weight)
        overridden = {m.name for m in step.metrics} if step is not None else set()
        for m in sp.metrics_at(weight):
            if m.name in overridden:
                lines += [f"{at}: {line}" for line in _limit_lines(m, at)]
            if m.vs_previous_step is not None and i > 0:
                lines.append(f"{at}: {_vs_previous(m, weights[i - 1])}")
            if m.trend is not None and m.name in overridden:
                lines.append(f"{at}: {_trend(m)}")
        lines += [f"before {weight}%: {hook_rule(h)}" for h in sp.hooks_before(sp.strategy, weight)]
    if sp.digest is not None:
        lines.append(
            f"daily digest in {sp.channel} at {sp.digest.at} {sp.digest.timezone}, listing "
            f"releases on steps that hold {duration_words(sp.digest.min_hold)} or more"
        )
    return lines


def _step_settings(sp: ServicePolicy, weight: int, *, first: bool) -> str:
    step = sp.step_at(weight)
    if step is None:
        return ""
    parts = []
    if step.hold is not None:
        parts.append(f"holds {format_duration(step.hold)}")
    if step.interval is not None:
        parts.append(f"judged every {format_duration(step.interval)}")
    if step.approval and sp.risk is not Risk.HIGH:
        parts.append("approval required" + (" before it starts" if first else ""))
    return ", ".join(parts)


def _limit_lines(m: Metric, at: str = "") -> list[str]:
    """The metric's limits as rollback conditions, with how long and how often they must fail."""
    where = f" {at}" if at else ""
    if m.dry_run:
        return [f"{m.name} is judged and reported only (dry run), never acted on"]
    conditions = _conditions(m)
    if not conditions:
        return []
    lasting = f" for {duration_words(m.for_)}" if m.for_ is not None else ""
    return [f"rolls back when {c}{lasting}{where}{_counting(m)}" for c in conditions]


def _conditions(m: Metric) -> list[str]:
    out = []
    if m.max is not None:
        out.append(f"{m.name} > {value_words(m, m.max)}")
    if m.min is not None:
        out.append(f"{m.name} < {value_words(m, m.min)}")
    worse = _worse(m.direction)
    if m.max_ratio is not None:
        ratio = {
            Direction.INCREASE: f"more than {m.max_ratio:g}x",
            Direction.DECREASE: f"less than 1/{m.max_ratio:g} of",
            Direction.EITHER: f"more than {m.max_ratio:g}x away from",
        }[m.direction]
        out.append(f"{m.name} is {ratio} the control's")
    if m.max_diff is not None:
        out.append(f"{m.name} is more than {value_words(m, m.max_diff)} {worse} the control's")
    if m.uses_statistics:
        out.append(
            f"{m.name} differs from the control by Mann-Whitney at {m.confidence:.0%} confidence"
        )
    return out


def _counting(m: Metric) -> str:
    """How the failures add up: `for` and the failure limits must both hold."""
    if m.critical:
        first = "at its first failing check" if m.for_ is None else "then at once"
        return f", {first} (critical)"
    row = f"{m.failure_limit} check{'s' if m.failure_limit != 1 else ''} in a row"
    total = f"or {m.total_failure_limit} in the release"
    if m.for_ is not None:
        return f" (and once it has failed {row} {total}: both must hold)"
    return f", after {m.failure_limit} failing {row.split(' ', 1)[1]} {total}"


def _vs_previous(m: Metric, previous: int) -> str:
    rule = m.vs_previous_step
    assert rule is not None
    verb = _verb(m.direction)
    limits = []
    if rule.max_ratio is not None:
        limits.append(f"more than {(rule.max_ratio - 1) * 100:.4g}%")
    if rule.max_increase is not None:
        limits.append(f"more than {value_words(m, rule.max_increase)}")
    return (
        f"{m.name} must not {verb} {' or '.join(limits)} over its value at the end of {previous}%"
    )


def _trend(m: Metric) -> str:
    rule = m.trend
    assert rule is not None
    limit = value_words(m, rule.max_slope_per_hour)
    return (
        f"{m.name} fails when it {_verb(m.direction)}s faster than {limit} per hour over the "
        f"step ({rule.confidence:.0%} confidence, judged from {rule.min_points} rounds on)"
    )


def _verb(direction: Direction) -> str:
    return {Direction.INCREASE: "rise", Direction.DECREASE: "fall", Direction.EITHER: "move"}[
        direction
    ]


def _worse(direction: Direction) -> str:
    return {
        Direction.INCREASE: "above",
        Direction.DECREASE: "below",
        Direction.EITHER: "either way from",
    }[direction]


def hook_rule(hook: Hook) -> str:
    """A hook as check-config explains it: 'synthetic load on URL, 20/s for 30 seconds
    (timeout 1 minute; on failure: hold)'."""
    if hook.load is not None:
        what = (
            f"synthetic load on {hook.load.url}, {hook.load.rate:g}/s for "
            f"{duration_words(hook.load.seconds)}"
        )
    else:
        what = f"smoke test {hook.method} {hook.url} (2xx passes)"
    return f"{what} (timeout {duration_words(hook.timeout)}; on failure: {hook.on_failure.value})"
