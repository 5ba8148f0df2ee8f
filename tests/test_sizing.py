"""First-step sizing, the pure part: the stable version's requests per window, the steps, the
window and min_requests in; enough, too few (warn / refuse) or a chosen first step out. And the
words each outcome is said in."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from bot.engine.events import EventKind, ReleaseEvent
from bot.judging.sizing import (
    Sizing,
    SizingOutcome,
    Unsized,
    candidates,
    ladder_from,
    shortfall_at,
    size_first_step,
    total_query,
    wants_sizing,
)
from bot.metrics.base import MetricQuery, QueryResult, Side
from bot.release.policy import FirstStep, Metric, Risk, ServicePolicy, Strategy, parse_policy
from bot.release.rollout import Actor, new_release
from bot.render.kit import ephemeral
from bot.render.sizing import first_step_setting, sizing_note, sizing_refusal, with_sizing
from bot.render.thread import event_message

STEPS = (1, 10, 25, 50, 100)
HOLDS = (900.0, 900.0, 900.0, 900.0, 900.0)
WINDOW = 60.0


def metric(name: str = "error_rate", min_requests: int = 20, **rules: Any) -> Metric:
    return Metric.model_validate(
        {
            "name": name,
            "query": 'x{version="{version}"}',
            "min_requests": min_requests,
            **(rules or {"max": 0.05, "max_diff": 0.01}),
        }
    )


QUERY = MetricQuery(
    key="sizing|checkout",
    promql="total",
    metric="total_requests",
    service="checkout",
    version="v1",
    side=Side.CONTROL,
)


def ok(total: float) -> QueryResult:
    return QueryResult.ok(QUERY, total)


def sized(
    reading: QueryResult | None,
    mode: FirstStep = FirstStep.WARN,
    *,
    metrics: tuple[Metric, ...] = (metric(),),
    steps: tuple[int, ...] = STEPS,
    holds: tuple[float, ...] | None = None,
    explicit: bool = False,
) -> Sizing:
    return size_first_step(
        service="checkout",
        version="v2.4.1",
        mode=mode,
        metrics=metrics,
        window=WINDOW,
        weights=steps,
        holds=holds or (900.0,) * len(steps),
        reading=reading,
        explicit=explicit,
    )


# --- the arithmetic ------------------------------------------------------------------------


def test_enough_traffic_starts_as_planned_and_says_nothing() -> None:
    s = sized(ok(6000.0))  # 100 req/s: 60 canary requests a window at 1%
    assert s.outcome is SizingOutcome.ENOUGH
    assert (s.weights, s.shortfall, s.refused) == (STEPS, None, False)
    assert s.rate == pytest.approx(100.0)
    assert sizing_note(s) == ""
    assert with_sizing("started", s) == "started"


def test_too_few_at_the_first_step_names_the_numbers_and_the_smallest_step_that_does() -> None:
    s = sized(ok(600.0))  # 10 req/s: 6 a window at 1%, 12 at 2%, 30 at 5%
    assert s.outcome is SizingOutcome.TOO_FEW
    assert s.shortfall is not None
    assert (s.shortfall.metric, s.shortfall.side, s.shortfall.need) == (
        "error_rate", Side.CANARY, 20)  # fmt: skip
    assert s.shortfall.expected == pytest.approx(6.0)
    assert s.suggestion == (5, 10, 25, 50, 100)
    assert s.weights == STEPS  # warn starts as planned
    assert not s.refused
    note = sizing_note(s)
    assert "at 1% checkout's canary would see ~6 requests in each 1m window" in note
    assert "fewer than the 20 that error_rate's min_requests needs" in note
    assert "the release would hold at 1% without a verdict" in note
    assert "Consider starting at 5% (~30 requests per window there)" in note
    assert "`/deploy checkout v2.4.1 --steps 5,10,25,50,100`" in note


def test_exactly_min_requests_is_enough() -> None:
    assert sized(ok(2000.0)).outcome is SizingOutcome.ENOUGH  # 20 at 1%


def test_require_refuses_what_warn_lets_through() -> None:
    s = sized(ok(600.0), FirstStep.REQUIRE)
    assert s.refused
    assert s.weights == STEPS
    text = sizing_refusal(s)
    assert text.startswith("cannot deploy checkout v2.4.1: at 1% checkout's canary would see ~6")
    assert "Nothing was changed" in text and "first_step: require" in text
    assert "--steps 5,10,25,50,100" in text
    assert not sized(ok(6000.0), FirstStep.REQUIRE).refused


def test_auto_starts_at_the_smallest_step_that_gives_enough() -> None:
    s = sized(ok(600.0), FirstStep.AUTO, holds=(60.0, 120.0, 180.0, 240.0, 300.0))
    assert s.outcome is SizingOutcome.RAISED
    assert s.weights == (5, 10, 25, 50, 100)
    # 5% stands in for the 1% step: it keeps that step's hold; the rest keep theirs.
    assert s.holds == (60.0, 120.0, 180.0, 240.0, 300.0)
    assert s.planned == STEPS
    assert sizing_note(s).startswith(
        "starts at 5% instead of 1% (first_step: auto): at 1% checkout's canary would see ~6"
    )
    assert "at 5% it would see ~30 per window" in sizing_note(s)


def test_auto_prefers_a_step_of_the_policy_and_keeps_its_hold() -> None:
    # 0.5 req/s: 30 a window in all; 25% gives ~7.5, 50% gives 15, too few; nothing below 100.
    assert sized(ok(30.0), FirstStep.AUTO).outcome is SizingOutcome.TOO_FEW
    # 2.5 req/s: 150 a window; 10% gives 15, 20% gives 30.
    s = sized(ok(150.0), FirstStep.AUTO, holds=(60.0, 120.0, 180.0, 240.0, 300.0))
    assert s.weights == (20, 25, 50, 100)
    assert s.holds == (60.0, 180.0, 240.0, 300.0)
    s = sized(ok(200.0), FirstStep.AUTO, holds=(60.0, 120.0, 180.0, 240.0, 300.0))
    assert s.weights == (10, 25, 50, 100)  # 10% gives exactly 20: the policy's own step
    assert s.holds == (120.0, 180.0, 240.0, 300.0)


def test_auto_keeps_steps_given_with_the_deploy_and_warns() -> None:
    s = sized(ok(600.0), FirstStep.AUTO, steps=(1, 50, 100), explicit=True)
    assert s.outcome is SizingOutcome.TOO_FEW
    assert s.weights == (1, 50, 100)
    assert s.suggestion == (5, 50, 100)
    assert "(auto keeps the --steps given with the deploy)" in sizing_note(s)


def test_zero_traffic_is_too_few_at_every_step() -> None:
    s = sized(ok(0.0), FirstStep.AUTO)
    assert s.outcome is SizingOutcome.TOO_FEW
    assert s.suggestion is None and s.weights == STEPS
    assert s.window_needed() is None
    assert "checkout served no requests in the last 1m" in sizing_note(s)


def test_when_even_the_largest_step_below_100_is_too_few_the_fix_is_the_window() -> None:
    s = sized(ok(30.0), FirstStep.WARN)  # 0.5 req/s; 50% sees 15 of 20
    assert s.suggestion is None
    assert s.window_needed() == pytest.approx(WINDOW * 20 / 0.3)  # at 1%: 0.3 a window
    note = sizing_note(s)
    assert "No step below 100% gives enough at 0.5 requests/s" in note
    assert "or lengthen `window` (at least 1h6m gives enough at 1%)" in note


def test_a_thin_control_counts_too_above_half() -> None:
    # At 75% the canary sees 75 and the control 25 of 100: a rule against the control needs
    # both sides to reach 30, an absolute-only rule only the canary.
    against = metric(min_requests=30)
    absolute = metric(min_requests=30, max=0.05)
    short = shortfall_at([against], 100.0, 75)
    assert short is not None and (short.side, short.expected) == (Side.CONTROL, 25.0)
    assert shortfall_at([absolute], 100.0, 75) is None
    # The statistical judge always compares with the control.
    stats = metric(min_requests=30, judge="mann_whitney")
    assert shortfall_at([stats], 100.0, 75) is not None
    # At 100% there is no control left (the release bakes).
    assert shortfall_at([against], 100.0, 100) is None


def test_the_largest_need_binds_and_dry_run_metrics_do_not_count() -> None:
    metrics = (metric("a", 10), metric("b", 50), metric("c", 500, dry_run=True, max=1.0))
    s = sized(ok(2000.0), metrics=metrics)  # 20 at 1%
    assert s.shortfall is not None and (s.shortfall.metric, s.shortfall.need) == ("b", 50)
    assert s.suggestion is not None and s.suggestion[0] == 5  # 100 at 5% (2% gives 40)


def test_no_metric_with_min_requests_is_always_enough() -> None:
    assert sized(ok(0.0), metrics=(metric(min_requests=0),)).outcome is SizingOutcome.ENOUGH


@pytest.mark.parametrize(
    ("reading", "why", "said"),
    [
        (None, Unsized.NO_STABLE, "no stable version is known whose traffic could be read"),
        (QueryResult.no_data(QUERY), Unsized.NO_DATA, "the request count returned no data"),
        (QueryResult.ok(QUERY, float("nan")), Unsized.NO_DATA, "returned no data"),
        (
            QueryResult.failed(QUERY, "connection refused"),
            Unsized.ERROR,
            "reading the request count failed (connection refused)",
        ),
    ],
)
def test_unreadable_traffic_proceeds_under_warn_and_auto_and_refuses_under_require(
    reading: QueryResult | None, why: Unsized, said: str
) -> None:
    for mode in (FirstStep.WARN, FirstStep.AUTO):
        s = sized(reading, mode)
        assert (s.outcome, s.unsized, s.refused, s.weights) == (
            SizingOutcome.UNSIZED, why, False, STEPS)  # fmt: skip
        assert said in sizing_note(s)
        assert "starts at 1% as planned" in sizing_note(s)
    s = sized(reading, FirstStep.REQUIRE)
    assert s.refused
    text = sizing_refusal(s)
    assert said in text and "Nothing was changed" in text
    fix = "--stable <v>" if why is Unsized.NO_STABLE else "Try again once the metrics source"
    assert fix in text


def test_no_data_and_fail_policies_change_what_a_thin_step_means() -> None:
    pausing = sized(ok(600.0), metrics=(metric(no_data="pause", max=0.05),))
    assert "the release would pause at 1% without a verdict" in sizing_note(pausing)
    failing = sized(ok(600.0), metrics=(metric(no_data="fail", max=0.05),))
    assert "error_rate would count each round as a failed check" in sizing_note(failing)


def test_candidates_and_ladders() -> None:
    assert candidates(STEPS) == [1, 2, 5, 10, 20, 25, 50]
    assert candidates((5, 30, 75, 100)) == [5, 10, 20, 25, 30, 50, 75]
    # Never at or past a step with hooks: a release starting there would skip its checks.
    assert candidates(STEPS, hooked=(25,)) == [1, 2, 5, 10, 20]
    assert ladder_from(STEPS, HOLDS, 10) == ((10, 25, 50, 100), HOLDS[1:])
    assert ladder_from((1, 10, 100), (1.0, 2.0, 3.0), 5) == ((5, 10, 100), (1.0, 2.0, 3.0))


def test_the_count_is_requests_query_for_the_stable_version_over_the_window() -> None:
    sp = parse_policy("services: {checkout: {window: 2m}}", "t").service("checkout")
    q = total_query(sp, "checkout", "v1")
    assert q is not None
    assert q.promql == ('sum(increase(http_requests_total{service="checkout",version="v1"}[120s]))')
    assert (q.version, q.side) == ("v1", Side.CONTROL)
    assert total_query(sp, "checkout", "") is None


def test_what_is_sized_at_all() -> None:
    judged = ServicePolicy(metrics=[metric()])
    assert wants_sizing(judged, Strategy.CANARY, [1, 100])
    assert not wants_sizing(judged, Strategy.BLUE_GREEN, [0, 100])
    assert not wants_sizing(judged, Strategy.CANARY, [0, 50, 100])
    assert not wants_sizing(ServicePolicy(metrics=[metric(min_requests=0)]), Strategy.CANARY, [1])
    fixed = ServicePolicy(metrics=[metric()], first_step=FirstStep.FIXED)
    assert not wants_sizing(fixed, Strategy.CANARY, [1, 100])


def test_check_config_says_what_the_setting_does() -> None:
    sp = ServicePolicy(metrics=[metric()], first_step=FirstStep.AUTO)
    line = first_step_setting(sp, "payments")
    assert line.startswith("first step: auto: a deploy reads payments' requests in the last 1m")
    assert "fewer than 20 (error_rate's min_requests)" in line
    assert "not sized" in first_step_setting(ServicePolicy(metrics=[metric(min_requests=0)]), "x")
    fixed = ServicePolicy(metrics=[metric()], first_step=FirstStep.FIXED)
    assert first_step_setting(fixed, "x").startswith("first step: fixed")


def test_the_policy_field_defaults_to_warn_and_refuses_other_words() -> None:
    policy = parse_policy(
        "defaults: {first_step: auto}\nservices: {a: {}, b: {first_step: fixed}}", "t"
    )
    assert policy.service("a").first_step is FirstStep.AUTO
    assert policy.service("b").first_step is FirstStep.FIXED
    assert parse_policy("services: {a: {}}", "t").service("a").first_step is FirstStep.WARN
    with pytest.raises(Exception, match="first_step"):
        parse_policy("services: {a: {first_step: sometimes}}", "t")


def test_names_from_outside_are_escaped_in_the_thread_and_the_reply() -> None:
    s = replace(sized(ok(600.0)), service="<!channel>", version="v2&<@U1>")
    release = new_release(
        release_id="r1", number=1, service="checkout", version="v2", stable_version="v1",
        weights=list(STEPS), holds=list(HOLDS), interval=30.0, bake=60.0,
        strategy=Strategy.CANARY, risk=Risk.NORMAL, notes="", actor=Actor(user="alice"),
        now=0.0,
    )  # fmt: skip
    thread = event_message(ReleaseEvent(EventKind.STARTED, release, actor="alice", sizing=s))
    blocks = json.dumps(thread.blocks)
    assert "&lt;!channel&gt;" in blocks and "v2&amp;&lt;@U1&gt;" in blocks
    assert "<!channel>" not in blocks and "<@U1>" not in blocks
    reply = ephemeral(with_sizing("started", s))
    assert "<!channel>" not in json.dumps(reply.blocks)
