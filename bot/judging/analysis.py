"""One release's analysis round: which queries to ask, and how to judge the answers.

Pure: the controller runs the queries (batched across releases) and hands the answers back.
Each metric is judged by its threshold rules, by the statistical judge on range series, or by
both; a metric fails when either judge fails it. The statistical verdicts also make up the
canary score (Kayenta's), reported with every round.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field

from bot.judging import step_rules
from bot.judging.statistical import (
    Classification,
    JudgeConfig,
    MetricVerdict,
    ScoreClass,
    classify,
    classify_score,
    score,
)
from bot.judging.thresholds import Traffic, judge, too_little_traffic
from bot.metrics.base import (
    REQUESTS_METRIC,
    MetricQuery,
    QueryResult,
    QueryStatus,
    SeriesResult,
    Side,
)
from bot.release.checks import CheckResult, Outcome
from bot.release.durations import prometheus_range
from bot.release.policy import Metric, ServicePolicy, render_template
from bot.release.rollout import Release, State

# The most samples per side the statistical judge takes from one series (the most recent):
# a lookback/step that asks for more still gets a verdict, in bounded time and memory.
MAX_SERIES = 20_000


@dataclass(frozen=True)
class Plan:
    release: Release
    sp: ServicePolicy
    instant: list[MetricQuery]
    series: list[SeriesQuery]
    metrics: list[Metric] = field(default_factory=list)  # as judged at the release's step
    at: float | None = None  # the round's time (a trend's newest point); None: not known


@dataclass(frozen=True)
class SeriesQuery:
    query: MetricQuery
    lookback: float
    step: float


@dataclass(frozen=True)
class ScoreResult:
    value: float
    verdict: ScoreClass
    pass_threshold: float
    marginal_threshold: float

    @property
    def text(self) -> str:
        return (
            f"canary score {self.value:.0f} ({self.verdict.value}; pass ≥ "
            f"{self.pass_threshold:g}, fail < {self.marginal_threshold:g})"
        )


@dataclass(frozen=True)
class Analysis:
    checks: list[CheckResult]
    score: ScoreResult | None = None
    verdicts: list[tuple[str, MetricVerdict]] = field(default_factory=list)
    # The step's trend points with this round's added: what the record keeps after the round.
    step_points: dict[str, list[tuple[float, float]]] = field(default_factory=dict)


def query_key(release_id: str, metric: str, side: Side) -> str:
    """How a query's answer is found again among the answers of a whole round."""
    return f"{release_id}|{metric}|{side.value}"


def metrics_for(release: Release, sp: ServicePolicy) -> list[Metric]:
    """The metrics as judged where the release stands (a step may override the service's)."""
    return sp.metrics_at(release.step_weight)


def plan(release: Release, sp: ServicePolicy, at: float | None = None) -> Plan:
    instant: list[MetricQuery] = []
    metrics = metrics_for(release, sp)
    series: list[SeriesQuery] = []

    def query(name: str, template: str, window: float, side: Side, version: str) -> MetricQuery:
        rendered_window = prometheus_range(window)
        promql = render_template(
            template, service=release.service, version=version, window=rendered_window
        )
        # The template and window travel with the query so the source can ask one query per
        # template for every release of the round instead of one per release.
        return MetricQuery(
            key=query_key(release.id, name, side),
            promql=promql,
            metric=name,
            service=release.service,
            version=version,
            side=side,
            template=template,
            window=rendered_window,
        )

    baking = release.state is State.BAKING
    sides = [(Side.CANARY, release.version)]
    if not baking and release.stable_version:
        sides.append((Side.CONTROL, release.stable_version))
    for m in metrics:
        window = m.window or sp.window
        for side, version in sides:
            # The rules against the canary's own past read its instant value too.
            own_only = m.uses_step_rules and side is Side.CANARY
            if m.uses_thresholds or own_only:
                instant.append(query(m.name, m.query, window, side, version))
            if m.uses_statistics and not baking:
                series.append(
                    SeriesQuery(query(m.name, m.query, window, side, version), m.lookback, m.step)
                )
    if any(m.min_requests for m in metrics):
        for side, version in sides:  # both sides: a thin control is no verdict either
            instant.append(query(REQUESTS_METRIC, sp.requests_query, sp.window, side, version))
    return Plan(release, sp, instant, series, metrics, at)


def analyse(
    p: Plan, instant: Mapping[str, QueryResult], series: Mapping[str, SeriesResult]
) -> Analysis:
    release = p.release
    canary_requests = instant.get(query_key(release.id, REQUESTS_METRIC, Side.CANARY))
    control_requests = instant.get(query_key(release.id, REQUESTS_METRIC, Side.CONTROL))
    request_count = Traffic(
        canary=canary_requests.value if canary_requests is not None else None,
        control=control_requests.value if control_requests is not None else None,
        control_counted=control_requests is not None,
    )
    checks: list[CheckResult] = []
    verdicts: list[tuple[str, MetricVerdict]] = []
    points: dict[str, list[tuple[float, float]]] = {}
    for metric in p.metrics:
        parts: list[CheckResult] = []
        if metric.uses_thresholds:
            parts.append(_threshold_check(release, metric, instant, request_count))
        if metric.uses_statistics:
            check, verdict = _statistical_check(release, metric, series, request_count)
            parts.append(check)
            if verdict is not None and not metric.dry_run:
                verdicts.append((metric.group or metric.name, verdict))
        if metric.uses_step_rules:
            own, points[metric.name] = _step_rule_checks(p, metric, instant, request_count)
            parts += own
        checks.append(_combine(metric, parts))
    result = None
    if verdicts:
        value = score(verdicts, p.sp.score.group_weights)
        result = ScoreResult(
            value,
            classify_score(value, p.sp.score.pass_threshold, p.sp.score.marginal_threshold),
            p.sp.score.pass_threshold,
            p.sp.score.marginal_threshold,
        )
    return Analysis(checks, result, verdicts, {k: v for k, v in points.items() if v})


def _step_rule_checks(
    p: Plan, metric: Metric, instant: Mapping[str, QueryResult], requests: Traffic
) -> tuple[list[CheckResult], list[tuple[float, float]]]:
    """The canary against its own past (the previous step's end, the step's slope), and the
    step's trend points including this round's value."""
    release = p.release
    stored = list(release.step_points.get(metric.name, []))
    canary = instant.get(query_key(release.id, metric.name, Side.CANARY))
    value = canary.value if canary is not None and canary.status is QueryStatus.OK else None
    if value is None or too_little_traffic(metric, requests, against_control=False):
        # No verdict of its own: the threshold judge (or the statistical one) says why.
        return [], stored if metric.trend is not None else []
    checks: list[CheckResult] = []
    here = f"{release.step_weight}%"
    if metric.vs_previous_step is not None:
        before = release.step_ends.get(release.step - 1, {}).get(metric.name)
        at = f"{release.weights[release.step - 1]}%" if release.step > 0 else ""
        rule = metric.vs_previous_step
        checks.append(step_rules.vs_previous_check(metric, rule, value, before, at))
    if metric.trend is None:
        return checks, []
    series = stored if p.at is None else [*stored, (p.at, value)]
    series = series[-step_rules.MAX_TREND_POINTS :]
    checks.append(step_rules.trend_check(metric, metric.trend, series, here))
    return checks, series


def _threshold_check(
    release: Release,
    metric: Metric,
    instant: Mapping[str, QueryResult],
    requests: Traffic,
) -> CheckResult:
    canary = instant[query_key(release.id, metric.name, Side.CANARY)]
    control: QueryResult | float | None
    label = "control"
    if release.state is State.BAKING:
        control = release.baseline.get(metric.name)
        label = "baseline"
    else:
        control = instant.get(query_key(release.id, metric.name, Side.CONTROL))
    # Nothing to compare with (no baseline recorded): judge on the absolute rules alone
    # rather than holding forever. A first release without a control is refused at deploy.
    return judge(
        metric,
        canary,
        control,
        requests,
        control_label=label,
        require_control=control is not None,
    )


def judge_config(metric: Metric) -> JudgeConfig:
    return JudgeConfig(
        direction=metric.direction.value,
        tolerance=metric.tolerance,
        confidence=metric.confidence,
        effect_size_measure=metric.effect_size_measure,
        allowed_increase=metric.allowed_increase,
        allowed_decrease=metric.allowed_decrease,
        critical_increase=metric.critical_increase,
        critical_decrease=metric.critical_decrease,
        nan_strategy=metric.nan_strategy,
        critical=metric.critical,
        must_have_data=metric.must_have_data,
    )


def _statistical_check(
    release: Release,
    metric: Metric,
    series: Mapping[str, SeriesResult],
    requests: Traffic,
) -> tuple[CheckResult, MetricVerdict | None]:
    result = functools.partial(CheckResult, metric=metric.name, dry_run=metric.dry_run)
    if release.state is State.BAKING:
        # At 100% there is no control series left; the bake is judged by the threshold
        # rules against the frozen baseline. Say so instead of inventing a comparison.
        return result(
            outcome=Outcome.PASS,
            canary=None,
            control=None,
            reason=f"{metric.name}: statistical judge idle while baking (no control left)",
        ), None
    if too_little := too_little_traffic(metric, requests):
        return result(outcome=Outcome.NO_DATA, canary=None, control=None, reason=too_little), None
    canary = series.get(query_key(release.id, metric.name, Side.CANARY))
    control = series.get(query_key(release.id, metric.name, Side.CONTROL))
    for side in (canary, control):
        if side is not None and side.status is QueryStatus.ERROR:
            return result(
                outcome=Outcome.ERROR,
                canary=None,
                control=None,
                query=side.query,
                reason=f"{metric.name}: range query failed: {side.error}",
            ), None
    control_values = list(control.values[-MAX_SERIES:]) if control else []
    canary_values = list(canary.values[-MAX_SERIES:]) if canary else []
    verdict = classify(control_values, canary_values, judge_config(metric), name=metric.name)
    longest = max((len(s.values) for s in (canary, control) if s is not None), default=0)
    reason = verdict.reason
    if longest > MAX_SERIES:
        reason += f" (judged on the last {MAX_SERIES:,} of {longest:,} samples)"
    outcome = {
        Classification.PASS: Outcome.PASS,
        Classification.HIGH: Outcome.FAIL,
        Classification.LOW: Outcome.FAIL,
        Classification.NODATA: Outcome.NO_DATA,
        Classification.NODATA_FAIL: Outcome.FAIL,
    }[verdict.classification]
    if verdict.critical:
        outcome = Outcome.FAIL  # a critical metric that is missing its data fails the canary
    return CheckResult(
        outcome=outcome,
        canary=verdict.experiment_mean,
        control=verdict.control_mean,
        reason=reason,
        limit=f"mann-whitney {metric.confidence:.0%}",
        critical=verdict.critical,
        dry_run=metric.dry_run,
        metric=metric.name,
        query=canary.query if canary else "",
        verdict=verdict.to_dict(),
    ), verdict


_SEVERITY = {Outcome.PASS: 0, Outcome.NO_DATA: 1, Outcome.ERROR: 2, Outcome.FAIL: 3}


def _combine(metric: Metric, parts: list[CheckResult]) -> CheckResult:
    """One check per metric: the worst of its judges, with every judge's reason."""
    if len(parts) == 1:
        return parts[0]
    worst = max(parts, key=lambda c: _SEVERITY[c.outcome])
    threshold = parts[0]
    reasons = [c.reason for c in parts if c.outcome is worst.outcome] or [worst.reason]
    return CheckResult(
        metric=metric.name,
        outcome=worst.outcome,
        canary=threshold.canary,
        control=threshold.control,
        reason="; ".join(reasons),
        limit=worst.limit,
        warning=threshold.warning,
        critical=any(c.critical and c.outcome is Outcome.FAIL for c in parts),
        dry_run=metric.dry_run,
        query=worst.query,
        verdict=next((c.verdict for c in parts if c.verdict is not None), None),
    )
