"""judge(): one metric's canary value against absolute limits and the control (or baseline)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest

from bot.judging.thresholds import Traffic, fmt, judge
from bot.metrics.base import MetricQuery, QueryResult, QueryStatus, Side
from bot.release.checks import CheckResult, Outcome
from bot.release.policy import Direction, Metric

CANARY_PROMQL = 'sum(rate(errors{version="v2"}[60s]))'
CONTROL_PROMQL = 'sum(rate(errors{version="v1"}[60s]))'


def metric(name: str = "m", /, **rules: object) -> Metric:
    return Metric.model_validate({"name": name, "query": "x{version}", **rules})


def _query(side: Side) -> MetricQuery:
    promql, version = (CANARY_PROMQL, "v2") if side is Side.CANARY else (CONTROL_PROMQL, "v1")
    return MetricQuery(key=f"m:{side}", promql=promql, metric="m", service="checkout",
                       version=version, side=side)


def canary(value: float) -> QueryResult:
    return QueryResult.ok(_query(Side.CANARY), value)


def control(value: float) -> QueryResult:
    return QueryResult.ok(_query(Side.CONTROL), value)


@dataclass(frozen=True)
class Case:
    id: str
    metric: Metric
    canary: float
    control: float | None
    outcome: Outcome
    limit: str = ""
    reason: tuple[str, ...] = ()
    warning: str = ""


CASES = [
    # Absolute limits.
    Case("below-max", metric(max=0.05), 0.04, 0.01, Outcome.PASS,
         reason=("m: 0.04 within limits (control 0.01)",)),
    Case("at-max-passes", metric(max=0.05), 0.05, 0.01, Outcome.PASS),
    Case("above-max", metric(max=0.05), 0.07, 0.01, Outcome.FAIL, "max 0.05",
         ("m: 0.07 > max 0.05 (control 0.01)",)),
    Case("above-max-with-unit", metric(max=1.5, unit="s"), 2.0, 0.5, Outcome.FAIL, "max 1.5 s",
         ("2 s > max 1.5 s", "(control 0.5 s)")),
    Case("below-min", metric(min=0.9), 0.8, 0.95, Outcome.FAIL, "min 0.9",
         ("m: 0.8 < min 0.9", "(control 0.95)")),
    Case("at-min-passes", metric(min=0.9), 0.9, 0.95, Outcome.PASS),
    Case("between-min-and-max", metric(min=1, max=10), 5, 5, Outcome.PASS),
    # Ratio against the control, per direction.
    Case("ratio-up-fails", metric(max_ratio=2), 0.3, 0.1, Outcome.FAIL, "ratio 2x",
         ("m: 0.3 is 3.00x control (limit 2x)",)),
    Case("ratio-up-at-limit", metric(max_ratio=2), 0.2, 0.1, Outcome.PASS),
    Case("ratio-up-ignores-drop", metric(max_ratio=2), 0.01, 0.1, Outcome.PASS),
    Case("ratio-down-fails", metric(max_ratio=2, direction="decrease"), 0.04, 0.1,
         Outcome.FAIL, "ratio 1/2x", ("0.04 is 0.40x control (limit 1/2x)",)),
    Case("ratio-down-ignores-rise", metric(max_ratio=2, direction="decrease"), 0.9, 0.1,
         Outcome.PASS),
    Case("ratio-down-canary-zero", metric(max_ratio=2, direction="decrease"), 0.0, 0.1,
         Outcome.FAIL, "ratio 1/2x", ("0 against control 0.1 (limit 1/2x)",)),
    Case("ratio-either-rise", metric(max_ratio=2, direction="either"), 0.5, 0.1,
         Outcome.FAIL, "ratio 2x", ("5.00x control",)),
    Case("ratio-either-drop", metric(max_ratio=2, direction="either"), 0.04, 0.1,
         Outcome.FAIL, "ratio 1/2x", ("0.40x control",)),
    Case("ratio-either-inside", metric(max_ratio=2, direction="either"), 0.15, 0.1,
         Outcome.PASS),
    # Difference against the control.
    Case("diff-up-fails", metric(max_diff=0.01), 0.03, 0.01, Outcome.FAIL, "diff +0.01",
         ("0.03 is 0.02 above control (limit +0.01)",)),
    Case("diff-up-inside", metric(max_diff=0.01), 0.015, 0.01, Outcome.PASS),
    Case("diff-up-ignores-drop", metric(max_diff=0.01), 0.0, 0.5, Outcome.PASS),
    Case("diff-down-fails", metric(max_diff=0.01, direction="decrease"), 0.97, 0.99,
         Outcome.FAIL, "diff -0.01", ("0.97 is 0.02 below control (limit -0.01)",)),
    Case("diff-down-ignores-rise", metric(max_diff=0.01, direction="decrease"), 0.5, 0.1,
         Outcome.PASS),
    Case("diff-either-drop", metric(max_diff=1, direction="either"), 3, 5, Outcome.FAIL,
         "diff -1", ("below control",)),
    # A control at zero: the ratio is undefined.
    Case("zero-control-ratio-only-fails", metric(max_ratio=2), 0.001, 0.0, Outcome.FAIL,
         "ratio 2x", ("0.001 against control 0 (limit 2x)",)),
    Case("zero-control-ratio-only-both-zero", metric(max_ratio=2), 0.0, 0.0, Outcome.PASS),
    Case("zero-control-diff-decides-pass", metric(max_ratio=2, max_diff=0.01), 0.001, 0.0,
         Outcome.PASS, reason=("0.001 within limits (control 0)",)),
    Case("zero-control-diff-decides-fail", metric(max_ratio=2, max_diff=0.01), 0.02, 0.0,
         Outcome.FAIL, "diff +0.01", ("0.02 is 0.02 above control",)),
    Case("zero-control-decrease-is-not-worse", metric(max_ratio=2, direction="decrease"),
         0.5, 0.0, Outcome.PASS),
    # Warn levels are reported, never fail.
    Case("warn-max-passes", metric(max=1, warn_max=0.5), 0.7, 0.1, Outcome.PASS,
         warning="m: 0.7 > warn_max 0.5"),
    Case("warn-min-passes", metric(min=0.5, warn_min=0.9), 0.8, 0.95, Outcome.PASS,
         warning="m: 0.8 < warn_min 0.9"),
    Case("warn-ratio-passes", metric(max_ratio=3, warn_ratio=1.5), 0.2, 0.1, Outcome.PASS,
         warning="m: 0.2 is 2.00x control (limit 1.5x)"),
    Case("warn-diff-passes", metric(max_diff=1, warn_diff=0.1), 0.3, 0.1, Outcome.PASS,
         warning="0.3 is 0.2 above control (limit +0.1)"),
    Case("warn-only-metric", metric(warn_max=0.5), 9.0, 0.1, Outcome.PASS,
         warning="9 > warn_max 0.5"),
    Case("below-warn-no-warning", metric(max=1, warn_max=0.5), 0.4, 0.1, Outcome.PASS),
    Case("fail-keeps-the-warnings", metric(max=1, warn_max=0.5, max_ratio=2, warn_ratio=1.5),
         0.7, 0.3, Outcome.FAIL, "ratio 2x", ("0.7 is 2.33x control (limit 2x)",),
         "0.7 > warn_max 0.5"),
    Case("first-failure-decides", metric(max=0.05, max_ratio=2), 0.5, 0.1, Outcome.FAIL,
         "max 0.05", ("0.5 > max 0.05",)),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_judge_table(case: Case) -> None:
    ctl = None if case.control is None else control(case.control)

    result = judge(case.metric, canary(case.canary), ctl, requests=1_000)

    assert result.outcome is case.outcome, result.reason
    assert result.metric == "m"
    assert result.limit == case.limit
    for fragment in case.reason:
        assert fragment in result.reason
    assert result.reason.startswith("m: ")
    if case.warning:
        assert case.warning in result.warning
    elif case.outcome is Outcome.PASS:
        assert result.warning == ""
    assert result.canary == case.canary
    assert result.control == case.control
    assert result.query == ""


@pytest.mark.parametrize(
    ("requests", "outcome", "fragment"),
    [
        (None, Outcome.NO_DATA, "canary saw unknown requests (needs 20)"),
        (0.0, Outcome.NO_DATA, "canary saw 0 requests (needs 20)"),
        (19.0, Outcome.NO_DATA, "canary saw 19 requests (needs 20)"),
        (20.0, Outcome.FAIL, "0.5 > max 0.05"),
        (5_000.0, Outcome.FAIL, "0.5 > max 0.05"),
    ],
)
def test_min_requests_guards_the_verdict(requests: float | None, outcome: Outcome,
                                         fragment: str) -> None:
    result = judge(metric(max=0.05, min_requests=20), canary(0.5), control(0.01), requests)

    assert result.outcome is outcome
    assert fragment in result.reason


def test_without_min_requests_the_request_count_is_not_needed() -> None:
    assert judge(metric(max=0.05), canary(0.5), control(0.01)).outcome is Outcome.FAIL


def test_a_failed_canary_query_is_an_error_with_the_exact_query() -> None:
    failed = QueryResult.failed(_query(Side.CANARY), "HTTP 503 from prometheus")

    result = judge(metric(max=0.05, critical=True), failed, control(0.01), requests=1_000)

    assert result.outcome is Outcome.ERROR
    assert result.query == CANARY_PROMQL
    assert result.reason == "m: canary query failed: HTTP 503 from prometheus"
    assert (result.canary, result.control) == (None, None)
    assert result.critical


def test_a_canary_error_beats_the_min_requests_guard() -> None:
    failed = QueryResult.failed(_query(Side.CANARY), "timeout")

    result = judge(metric(max=0.05, min_requests=20), failed, control(0.01), requests=None)

    assert result.outcome is Outcome.ERROR


@pytest.mark.parametrize("why", ["the query returned no series", "no samples in window"])
def test_no_canary_data_is_no_data_with_the_query(why: str) -> None:
    empty = QueryResult.no_data(_query(Side.CANARY), why)

    result = judge(metric(max=0.05), empty, control(0.01), requests=1_000)

    assert result.outcome is Outcome.NO_DATA
    assert result.reason == f"m: no canary data ({why})"
    assert result.query == CANARY_PROMQL
    assert result.canary is None


def test_an_ok_result_without_a_value_counts_as_no_data() -> None:
    odd = QueryResult("k", QueryStatus.OK, None, CANARY_PROMQL)

    assert judge(metric(max=1), odd, control(0.1)).outcome is Outcome.NO_DATA


@pytest.mark.parametrize(
    ("rules", "outcome"),
    [
        ({"max_ratio": 2}, Outcome.ERROR),
        ({"max_diff": 0.1}, Outcome.ERROR),
        ({"max": 1, "max_ratio": 2}, Outcome.ERROR),
        ({"max": 1}, Outcome.PASS),
        ({"min": 0.001, "warn_ratio": 2}, Outcome.PASS),
    ],
)
def test_a_failed_control_query_is_an_error_only_when_a_relative_rule_needs_it(
    rules: dict[str, float], outcome: Outcome
) -> None:
    failed = QueryResult.failed(_query(Side.CONTROL), "bad_data: parse error")

    result = judge(metric(**rules), canary(0.01), failed, requests=1_000)

    assert result.outcome is outcome
    if outcome is Outcome.ERROR:
        assert result.query == CONTROL_PROMQL
        assert result.reason == "m: control query failed: bad_data: parse error"
        assert result.canary == 0.01


@pytest.mark.parametrize(
    ("rules", "control_result", "outcome", "fragment"),
    [
        ({"max_ratio": 2}, "no_data", Outcome.NO_DATA, "m: no control data to compare with"),
        ({"max_ratio": 2}, None, Outcome.NO_DATA, "m: no control data to compare with"),
        ({"max_diff": 0.1}, "no_data", Outcome.NO_DATA, "no control data"),
        # An absolute rule still judges when the control is missing.
        ({"max": 1, "max_ratio": 2}, "no_data", Outcome.PASS, "m: 0.5 within limits"),
        ({"max": 0.1, "max_ratio": 2}, None, Outcome.FAIL, "m: 0.5 > max 0.1"),
    ],
)
def test_missing_control_data(rules: dict[str, float], control_result: str | None,
                              outcome: Outcome, fragment: str) -> None:
    ctl = QueryResult.no_data(_query(Side.CONTROL)) if control_result else None

    result = judge(metric(**rules), canary(0.5), ctl, requests=1_000)

    assert result.outcome is outcome
    assert fragment in result.reason
    assert result.control is None
    assert "(control" not in result.reason


@pytest.mark.parametrize(
    ("rules", "value", "outcome", "fragment"),
    [
        ({"max_ratio": 2}, 0.5, Outcome.FAIL, "m: 0.5 is 5.00x baseline (limit 2x)"),
        ({"max_ratio": 2}, 0.15, Outcome.PASS, "m: 0.15 within limits (baseline 0.1)"),
        ({"max_diff": 0.01}, 0.2, Outcome.FAIL, "0.2 is 0.1 above baseline (limit +0.01)"),
        ({"max": 0.3}, 0.5, Outcome.FAIL, "m: 0.5 > max 0.3 (baseline 0.1)"),
    ],
)
def test_a_baseline_number_is_compared_and_named_while_baking(
    rules: dict[str, float], value: float, outcome: Outcome, fragment: str
) -> None:
    result = judge(metric(**rules), canary(value), 0.1, requests=1_000,
                   control_label="baseline")

    assert result.outcome is outcome
    assert fragment in result.reason
    assert "control" not in result.reason
    assert result.control == 0.1


def test_no_baseline_while_baking_names_the_baseline() -> None:
    result = judge(metric(max_ratio=2), canary(0.5), None, requests=1_000,
                   control_label="baseline")

    assert result.outcome is Outcome.NO_DATA
    assert result.reason == "m: no baseline data to compare with"


@pytest.mark.parametrize("value", [0.0, 0.5, 1e9])
def test_require_control_false_passes_relative_rules_with_nothing_to_compare(
    value: float,
) -> None:
    # First release of a service: no control and no baseline; hold on absolute rules only.
    result = judge(metric(max_ratio=2, max_diff=0.1), canary(value), None, requests=1_000,
                   require_control=False)

    assert result.outcome is Outcome.PASS
    assert result.control is None
    assert "within limits" in result.reason


def test_require_control_false_still_applies_absolute_limits() -> None:
    result = judge(metric(max=0.1, max_ratio=2), canary(0.5), None, require_control=False)

    assert result.outcome is Outcome.FAIL
    assert result.limit == "max 0.1"


@pytest.mark.parametrize(("critical", "dry_run"), [(True, False), (False, True)])
def test_the_result_carries_the_metrics_flags(critical: bool, dry_run: bool) -> None:
    result = judge(metric(max=1, critical=critical, dry_run=dry_run), canary(2), control(0.1))

    assert (result.critical, result.dry_run) == (critical, dry_run)
    assert result.outcome is Outcome.FAIL


def test_to_dict_is_plain_data_for_the_release_record() -> None:
    result = judge(metric(max=0.05), canary(0.07), control(0.01))

    data = result.to_dict()

    assert data["outcome"] == "fail"
    assert type(data["outcome"]) is str
    assert data["metric"] == "m"
    assert (data["canary"], data["control"], data["limit"]) == (0.07, 0.01, "max 0.05")
    assert CheckResult(**{**data, "outcome": Outcome(data["outcome"])}) == result


@pytest.mark.parametrize(
    ("value", "unit", "text"),
    [
        (None, "", "n/a"),
        (math.inf, "s", "inf"),
        (0.012345, "", "0.0123"),
        (0.05, "ratio", "0.05"),
        (1.5, "s", "1.5 s"),
        (12_345.6, "req", "12,346 req"),
    ],
)
def test_fmt(value: float | None, unit: str, text: str) -> None:
    assert fmt(value, unit) == text


def test_direction_parsing_matches_the_enum() -> None:
    assert metric(max=1, direction="either").direction is Direction.EITHER


def test_a_thin_control_is_no_verdict_for_a_rule_against_the_control() -> None:
    thin = Traffic(canary=500, control=3, control_counted=True)
    # The canary looks 10x worse than a control that served three requests: noise, not news.
    result = judge(metric(max_ratio=2, min_requests=100), canary(0.5), control(0.05), thin)
    assert result.outcome is Outcome.NO_DATA
    assert "control saw 3 requests (needs 100)" in result.reason
    unknown = Traffic(canary=500, control=None, control_counted=True)
    assert judge(metric(max_ratio=2, min_requests=100), canary(0.5), control(0.05), unknown
                 ).outcome is Outcome.NO_DATA


def test_a_thin_control_does_not_hold_back_an_absolute_limit() -> None:
    thin = Traffic(canary=500, control=3, control_counted=True)
    result = judge(metric(max=0.05, min_requests=100), canary(0.5), control(0.01), thin)
    assert result.outcome is Outcome.FAIL


def test_enough_traffic_on_both_sides_gives_a_verdict() -> None:
    both = Traffic(canary=500, control=5000, control_counted=True)
    result = judge(metric(max_ratio=2, min_requests=100), canary(0.5), control(0.05), both)
    assert result.outcome is Outcome.FAIL
