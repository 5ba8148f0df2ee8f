"""Per-step policy and the rules a metric may carry, judged on hand-built values (pure).

Steps with their own interval, hold, approval and thresholds (merged by metric name with the
service's); ``for`` (a breach must last before it counts), ``vs_previous_step`` (the canary
against its own value at the end of the previous step) and ``trend`` (the slope over the step,
failing only when its confidence interval is past the limit); and check-config's words.
"""

from __future__ import annotations

import random
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from bot.judging import analysis
from bot.judging.decision import Verdict, decide
from bot.judging.history import History, Samples
from bot.judging.replay import Judge, Lens, simulate
from bot.judging.step_rules import fit_slope, t_quantile, trend_check, vs_previous_check
from bot.metrics.base import QueryResult
from bot.release import rollout
from bot.release.checks import CheckResult, Outcome
from bot.release.plan import step_settings
from bot.release.policy import Metric, Risk, ServicePolicy, Strategy, parse_policy
from bot.release.rollout import Actor, Release, State, new_release
from bot.release.rules import Trend, VsPreviousStep
from bot.render.policy_words import explain_service

pytestmark = pytest.mark.timeout(30)

NOW = 1_000_000.0
ALICE = Actor(user="alice", surface="slack")

POLICY = """\
defaults:
  interval: 30s
  metrics:
    - name: error_rate
      query: 'errors{service="{service}",version="{version}"}'
      unit: ratio
      max: 0.1
      failure_limit: 2
    - name: latency_p95
      query: 'p95{service="{service}",version="{version}"}'
      unit: s
      max_ratio: 1.5
services:
  checkout:
    steps:
      - 1
      - weight: 10
        interval: 15m
        metrics:
          - {name: error_rate, max: 0.02, for: 5m}
      - {weight: 25, hold: 30m, interval: 10m, approval: true}
      - weight: 50
        metrics:
          - name: error_rate
            vs_previous_step: {max_ratio: 1.05}
      - 100
"""


def metric(**rules: object) -> Metric:
    return Metric.model_validate({"name": "error_rate", "query": "x{version}", **rules})


# --- the policy -------------------------------------------------------------------------------


def test_a_step_overrides_only_the_fields_it_sets_and_only_at_that_step() -> None:
    sp = parse_policy(POLICY, "test").services["checkout"]
    at10 = {m.name: m for m in sp.metrics_at(10)}
    # The step's max and `for`, the service's query, unit and failure limit.
    assert (at10["error_rate"].max, at10["error_rate"].for_) == (0.02, 300.0)
    assert at10["error_rate"].query == sp.metrics[0].query
    assert (at10["error_rate"].unit, at10["error_rate"].failure_limit) == ("ratio", 2)
    assert at10["latency_p95"] == sp.metrics[1]
    # Elsewhere the service's metrics, untouched.
    assert sp.metrics_at(1) == sp.metrics == sp.metrics_at(25)
    at50 = {m.name: m for m in sp.metrics_at(50)}
    assert at50["error_rate"].max == 0.1
    assert at50["error_rate"].vs_previous_step == VsPreviousStep(max_ratio=1.05)


def test_step_intervals_holds_and_approvals_are_found_by_weight() -> None:
    sp = parse_policy(POLICY, "test").services["checkout"]
    assert [sp.interval_at(w) for w in sp.weights] == [30.0, 900.0, 600.0, 30.0, 30.0]
    assert [sp.approval_at(w) for w in sp.weights] == [False, False, True, False, False]
    assert sp.hold_for(2) == 1800.0
    # A ladder of its own (--steps) keeps the settings of the weights it shares.
    assert step_settings(sp, [5, 25, 100]) == ([30.0, 600.0, 30.0], [False, True, False])


def test_a_step_metric_error_names_the_step_entry_and_its_line() -> None:
    broken = POLICY.replace(
        "{name: error_rate, max: 0.02, for: 5m}", "{name: error_rate, max: 0.02, for: soon}"
    )
    with pytest.raises(Exception) as caught:
        parse_policy(broken, "test")
    text = str(caught.value)
    assert "services.checkout.steps[1].metrics[0].for (line 20)" in text, text
    assert "not a duration" in text


def test_an_unknown_step_field_is_located_with_a_suggestion() -> None:
    broken = POLICY.replace(
        "{weight: 25, hold: 30m, interval: 10m, approval: true}",
        "{weight: 25, hold: 30m, intervall: 10m}",
    )
    with pytest.raises(Exception) as caught:
        parse_policy(broken, "test")
    text = str(caught.value)
    assert "services.checkout.steps[2].intervall (line 21)" in text, text
    assert "did you mean `interval`?" in text


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ({"vs_previous_step": {}}, "give max_ratio"),
        ({"trend": {"max_slope_per_hour": 0.1, "confidence": 1.2}}, "less than 1"),
        ({"trend": {"max_slope_per_hour": 0.1, "min_points": 2}}, "greater than or equal to 3"),
    ],
)
def test_rule_mistakes_are_refused(rule: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        metric(max=0.1, **rule)


def test_a_step_rule_alone_is_a_rule() -> None:
    assert metric(trend={"max_slope_per_hour": 0.1}).uses_step_rules
    with pytest.raises(ValueError, match="has no rule"):
        metric()


# --- for: the breach must last ------------------------------------------------------------------


def release(**kw: object) -> Release:
    base: dict[str, object] = dict(
        release_id="rel-1",
        number=1,
        service="checkout",
        version="v2",
        stable_version="v1",
        weights=[1, 10, 100],
        holds=[60.0, 60.0, 60.0],
        interval=30.0,
        bake=60.0,
        strategy=Strategy.CANARY,
        risk=Risk.NORMAL,
        notes="",
        actor=ALICE,
        now=NOW,
    )
    return new_release(**{**base, **kw})  # type: ignore[arg-type]


def failing(value: float = 0.2) -> CheckResult:
    return CheckResult(
        metric="error_rate",
        outcome=Outcome.FAIL,
        canary=value,
        control=0.01,
        reason=f"error_rate: {value} > max 0.1",
        limit="max 0.1",
    )


def passing() -> CheckResult:
    return CheckResult(
        metric="error_rate",
        outcome=Outcome.PASS,
        canary=0.01,
        control=0.01,
        reason="error_rate: 0.01 within limits",
    )


def run(m: Metric, outcomes: Sequence[tuple[float, CheckResult]]) -> list[Verdict]:
    """Rounds at the given seconds after NOW; each round's counters feed the next."""
    current = release()
    out = []
    for t, result in outcomes:
        d = decide(current, [m], [result], NOW + t)
        out.append(d.verdict)
        current = current.model_copy(update={"counters": d.counters})
        if d.verdict is Verdict.ROLLBACK:
            break
    return out


def test_a_breach_shorter_than_for_holds_and_a_longer_one_rolls_back() -> None:
    m = metric(max=0.1, failure_limit=2, **{"for": "5m"})
    # Failing for 4m30s, then a pass: held all along, never rolled back.
    short = [(t, failing()) for t in range(0, 300, 30)] + [(300, passing())]
    assert Verdict.ROLLBACK not in run(m, short)
    assert run(m, short)[-1] is not Verdict.ROLLBACK
    # The same breach going on: it rolls back at the round that makes it 5 minutes long.
    long = [(t, failing()) for t in range(0, 400, 30)]
    verdicts = run(m, long)
    assert verdicts[-1] is Verdict.ROLLBACK
    assert len(verdicts) == 11  # rounds at 0s … 300s


def test_for_holds_with_a_reason_naming_how_long_it_has_lasted() -> None:
    m = metric(max=0.1, failure_limit=1, **{"for": "5m"})
    current = release()
    first = decide(current, [m], [failing()], NOW)
    current = current.model_copy(update={"counters": first.counters})
    second = decide(current, [m], [failing()], NOW + 120)
    assert second.verdict is Verdict.HOLD
    assert "failing for 2m of the 5m it must last" in second.reason


def test_for_and_the_failure_limit_must_both_hold() -> None:
    # Rounds every 5 minutes: the breach has lasted `for` at the second round, but the limit
    # of three failures in a row is only reached at the third.
    m = metric(max=0.1, failure_limit=3, **{"for": "5m"})
    verdicts = run(m, [(t, failing()) for t in (0, 300, 600, 900)])
    assert verdicts == [Verdict.HOLD, Verdict.HOLD, Verdict.ROLLBACK]


def test_a_pass_restarts_the_breach() -> None:
    m = metric(max=0.1, failure_limit=1, total_failure_limit=100, **{"for": "2m"})
    flapping = [(t, failing() if (t // 30) % 3 else passing()) for t in range(0, 900, 30)]
    assert Verdict.ROLLBACK not in run(m, flapping)


def test_without_for_the_failure_limit_alone_decides_as_before() -> None:
    m = metric(max=0.1, failure_limit=2)
    assert run(m, [(0, failing()), (30, failing())]) == [Verdict.HOLD, Verdict.ROLLBACK]


# --- vs_previous_step ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "direction", "value", "previous", "outcome"),
    [
        (VsPreviousStep(max_ratio=1.05), "increase", 0.0104, 0.01, Outcome.PASS),
        (VsPreviousStep(max_ratio=1.05), "increase", 0.0106, 0.01, Outcome.FAIL),
        (VsPreviousStep(max_increase=0.01), "increase", 0.019, 0.01, Outcome.PASS),
        (VsPreviousStep(max_increase=0.01), "increase", 0.021, 0.01, Outcome.FAIL),
        (VsPreviousStep(max_ratio=1.05), "increase", 0.005, 0.01, Outcome.PASS),  # better
        (VsPreviousStep(max_ratio=1.05), "decrease", 0.90, 0.99, Outcome.FAIL),  # fell 9%
        (VsPreviousStep(max_ratio=1.05), "decrease", 0.98, 0.99, Outcome.PASS),
        (VsPreviousStep(max_increase=0.001), "increase", 0.0005, 0.0, Outcome.PASS),
        (VsPreviousStep(max_ratio=1.05), "increase", 0.0005, 0.0, Outcome.FAIL),
    ],
)
def test_vs_previous_step_compares_in_the_worse_direction(
    rule: VsPreviousStep, direction: str, value: float, previous: float, outcome: Outcome
) -> None:
    m = metric(direction=direction, vs_previous_step=rule.model_dump(exclude_none=True))
    result = vs_previous_check(m, rule, value, previous, "25%")
    assert result.outcome is outcome, result.reason
    assert result.control == previous
    if outcome is Outcome.FAIL:
        assert "at the end of 25%" in result.reason and result.limit.startswith("vs 25%")


def test_the_first_step_has_nothing_to_compare_with() -> None:
    rule = VsPreviousStep(max_ratio=1.05)
    result = vs_previous_check(metric(vs_previous_step={"max_ratio": 1.05}), rule, 0.5, None, "")
    assert result.outcome is Outcome.PASS


def test_a_step_left_keeps_the_canary_values_the_next_step_is_compared_with() -> None:
    r = release().model_copy(update={"last_checks": [failing(0.03)]})
    moved = rollout.advance(r, ALICE, NOW + 60)
    assert moved.step_ends == {0: {"error_rate": 0.03}}
    assert moved.step_points == {}


def test_analysis_judges_vs_previous_from_the_record() -> None:
    sp = ServicePolicy.model_validate(
        {
            "metrics": [
                {
                    "name": "error_rate",
                    "query": "e{version}",
                    "max": 0.5,
                    "vs_previous_step": {"max_ratio": 1.05},
                }
            ]
        }
    )
    r = release().model_copy(
        update={"step": 1, "weight": 10, "step_ends": {0: {"error_rate": 0.010}}}
    )
    p = analysis.plan(r, sp, at=NOW)
    answers = {q.key: QueryResult.ok(q, 0.012 if q.side == "canary" else 0.01) for q in p.instant}
    [result] = analysis.analyse(p, answers, {}).checks
    assert result.outcome is Outcome.FAIL
    assert "0.012 is 1.20x worse than its value at the end of 1% (0.01)" in result.reason


# --- trend --------------------------------------------------------------------------------------


def test_t_quantiles_match_the_exact_ones() -> None:
    stats = pytest.importorskip("scipy.stats")
    for dof in (3, 5, 10, 30, 200):
        for p in (0.9, 0.975, 0.995):
            exact = float(stats.t.ppf(p, dof))
            assert t_quantile(p, dof) == pytest.approx(exact, rel=1e-6), (p, dof)


def points(
    slope_per_hour: float, noise: float, n: int = 30, every: float = 60.0, seed: int = 3
) -> list[tuple[float, float]]:
    rng = random.Random(seed)
    return [
        (NOW + i * every, 0.01 + slope_per_hour * i * every / 3600 + rng.gauss(0, noise))
        for i in range(n)
    ]


def test_the_fitted_slope_and_its_interval_cover_the_truth_as_often_as_they_say() -> None:
    fits = [fit_slope(points(0.06, 0.0005, n=8, seed=seed), 0.95) for seed in range(400)]
    assert all(f is not None for f in fits)
    covered = sum(f.low < 0.06 < f.high for f in fits if f is not None) / len(fits)
    # 95% intervals from 8 points (6 degrees of freedom): a normal quantile would cover ~91%.
    assert 0.925 <= covered <= 0.975, covered
    middle = sorted(f.per_hour for f in fits if f is not None)[len(fits) // 2]
    assert middle == pytest.approx(0.06, rel=0.02)


def test_noise_within_the_interval_never_reads_as_a_trend() -> None:
    rule = Trend(max_slope_per_hour=0.01, confidence=0.95)
    m = metric(trend=rule.model_dump())
    # Flat but very noisy: the slope estimate may even exceed the limit, its interval does not.
    for seed in range(20):
        result = trend_check(m, rule, points(0.0, 0.01, seed=seed), "25%")
        assert result.outcome is Outcome.PASS, result.reason


def test_a_clear_slope_fails() -> None:
    rule = Trend(max_slope_per_hour=0.01, confidence=0.95)
    result = trend_check(metric(trend=rule.model_dump()), rule, points(0.06, 0.001), "25%")
    assert result.outcome is Outcome.FAIL
    assert result.reason.startswith("error_rate: rising") and "at 25%" in result.reason
    assert result.limit == "trend 0.01/h"


def test_a_falling_metric_where_lower_is_worse() -> None:
    rule = Trend(max_slope_per_hour=0.01)
    m = metric(direction="decrease", trend=rule.model_dump())
    assert trend_check(m, rule, points(-0.06, 0.001), "50%").outcome is Outcome.FAIL
    assert trend_check(m, rule, points(0.06, 0.001), "50%").outcome is Outcome.PASS


def test_too_few_rounds_are_not_judged_yet() -> None:
    rule = Trend(max_slope_per_hour=0.01, min_points=5)
    result = trend_check(metric(trend=rule.model_dump()), rule, points(1.0, 0.0, n=4), "10%")
    assert result.outcome is Outcome.PASS and "not judged yet (4 of 5" in result.reason


def test_analysis_adds_the_round_to_the_step_points_it_judges() -> None:
    sp = ServicePolicy.model_validate(
        {
            "metrics": [
                {
                    "name": "error_rate",
                    "query": "e{version}",
                    "max": 0.5,
                    "trend": {"max_slope_per_hour": 0.01},
                }
            ]
        }
    )
    stored = points(0.5, 0.0, n=6)
    r = release().model_copy(update={"step_points": {"error_rate": stored}})
    now = stored[-1][0] + 60
    p = analysis.plan(r, sp, at=now)
    answers = {q.key: QueryResult.ok(q, 0.06) for q in p.instant}
    result = analysis.analyse(p, answers, {})
    assert result.step_points["error_rate"] == [*stored, (now, 0.06)]
    assert result.checks[0].outcome is Outcome.FAIL
    # The next step starts a new series.
    moved = rollout.advance(r.model_copy(update={"step_points": result.step_points}), ALICE, now)
    assert moved.step_points == {}


# --- approval at a step -------------------------------------------------------------------------


def test_a_step_that_asks_for_approval_is_requested_at_normal_risk() -> None:
    r = release(approval_steps=[False, True, False])
    m = metric(max=0.1)
    d = decide(r, [m], [passing()], NOW + 61)
    assert d.verdict is Verdict.REQUEST_APPROVAL
    moved = rollout.request_approval(r, ALICE, NOW + 61)
    assert moved.awaiting_step == 1
    at10 = rollout.approve(moved, Actor(user="carol", surface="slack"), NOW + 62)
    assert decide(at10, [m], [passing()], NOW + 130).verdict is Verdict.ADVANCE


def test_a_first_step_that_asks_for_approval_waits_before_moving_users() -> None:
    r = release(approval_steps=[True, False, False])
    assert (r.state, r.weight, r.awaiting_step) == (State.PENDING_APPROVAL, 0, 0)


def test_a_step_interval_is_read_from_the_record() -> None:
    r = release(intervals=[30.0, 900.0, 30.0])
    assert r.step_interval == 30.0
    assert rollout.advance(r, ALICE, NOW).step_interval == 900.0
    assert release().step_interval == 30.0  # older records: the release-wide interval


# --- check-config's words -----------------------------------------------------------------------


def test_check_config_explains_each_rule_per_step() -> None:
    lines = explain_service(parse_policy(POLICY, "test").services["checkout"])
    text = "\n".join(lines)
    assert "at 10%: rolls back when error_rate > 2% for 5 minutes at 10%" in text, text
    assert "both must hold" in text
    assert "at 10%: judged every 15m" in text
    assert "at 25%: holds 30m, judged every 10m, approval required" in text
    assert "at 50%: error_rate must not rise more than 5% over its value at the end of 25%" in text
    assert "rolls back when error_rate > 10% at every other step, after 2 failing checks" in text
    assert "latency_p95 is more than 1.5x the control's at every step" in text


def test_the_check_config_command_prints_the_words(tmp_path: Path) -> None:
    path = tmp_path / "shipwatch.yaml"
    path.write_text(POLICY, encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "bot", "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parent.parent,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "  at 25%: holds 30m, judged every 10m, approval required" in lines, result.stdout
    assert f"{path}: OK, 1 service(s)" in lines


AFTER_100 = """\
defaults:
  metrics:
    - {name: error_rate, query: 'e{version}', max: 0.05}
services:
  checkout:
    bake: 2h
    watch: {window: 24h, interval: 5m}
    paging:
      pagerduty: {}
      opsgenie: {responders: [{type: team, name: ops}]}
    tickets:
      webhook: {url: "https://tickets.internal/hook?token=s3cr3t", secret_env: TICKETS_SECRET}
      github: {repo: acme/checkout}
  search:
    bake: 0
    watch: {window: 0}
    paging: {pagerduty: {routing_key_env: PD_SEARCH, severity: error}, resolve_on_end: false}
  quiet: {}
"""


def test_check_config_says_the_bake_the_watch_paging_and_tickets() -> None:
    policy = parse_policy(AFTER_100, "test")
    lines = explain_service(policy.services["checkout"])
    assert lines[1:] == [
        "at 100%: bakes for 2 hours against the pre-release baseline (still judged: it can roll "
        "back) before the release succeeds",
        "after 100%: watched for 24 hours against the pre-release baseline, judged every 5 minutes",
        "an automatic rollback pages PagerDuty (routing key from $PAGERDUTY_ROUTING_KEY, "
        "severity critical) and Opsgenie (API key from $OPSGENIE_API_KEY, P1, responders team "
        "ops); resolved when the release ends",
        "an automatic rollback files a ticket: a webhook POST to https://tickets.internal/hook "
        "(signed with the secret in $TICKETS_SECRET) and a GitHub issue in acme/checkout "
        "(labels shipwatch, rollback; token from $GITHUB_TOKEN)",
    ]
    # The ticket URL's query could hold a token: it never reaches the words.
    assert "s3cr3t" not in "\n".join(lines)


def test_check_config_says_when_there_is_no_bake_no_watch_and_an_open_page() -> None:
    policy = parse_policy(AFTER_100, "test")
    assert explain_service(policy.services["search"])[1:] == [
        "at 100%: no bake: the release succeeds at its first round there with every check green",
        "after 100%: no post-release watch (watch window 0)",
        "an automatic rollback pages PagerDuty (routing key from $PD_SEARCH, severity error); "
        "left open for the on-call to resolve",
    ]
    # Defaults: an hour's bake and a day's watch; nobody paged, no ticket, so nothing said.
    assert explain_service(policy.services["quiet"])[1:] == [
        "at 100%: bakes for 1 hour against the pre-release baseline (still judged: it can roll "
        "back) before the release succeeds",
        "after 100%: watched for 24 hours against the pre-release baseline, judged every 5 minutes",
    ]


def test_check_config_names_secrets_by_their_variables_only(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name, value in {
        "PAGERDUTY_ROUTING_KEY": "pd-key-value-123",
        "OPSGENIE_API_KEY": "og-key-value-456",
        "TICKETS_SECRET": "tickets-secret-789",
        "GITHUB_TOKEN": "ghp_token_value_000",
        "PD_SEARCH": "pd-search-value-111",
    }.items():
        monkeypatch.setenv(name, value)
    path = tmp_path / "shipwatch.yaml"
    path.write_text(AFTER_100, encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "bot", "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parent.parent,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "routing key from $PAGERDUTY_ROUTING_KEY" in result.stdout
    assert "value" not in result.stdout and "secret-789" not in result.stdout, result.stdout


# --- the backtest replays the same judgement ----------------------------------------------------


def test_a_simulated_release_is_judged_at_each_step_s_own_interval() -> None:
    query = 'errors{service="shop",version="{version}"}'
    sp = parse_policy(
        f"""
defaults:
  steps: [10, {{weight: 50, interval: 6s}}, 100]
  hold: 12s
  interval: 2s
  window: 5s
  bake: 4s
  metrics: [{{name: error_rate, query: '{query}', max: 0.5}}]
services:
  shop: {{}}
""",
        "t",
    ).services["shop"]
    start = 10_000.0
    series = {
        query.replace("{version}", v): Samples.of([(start + i, 0.01) for i in range(121)])
        for v in ("v1", "v2")
    }
    judge = Judge(sp, Lens(History(start, start + 120, 1.0, series)))
    run_ = simulate(
        judge, service="shop", version="v2", stable="v1", start=start, until=start + 120
    )
    assert run_.outcome == "succeeded"
    gaps = {
        w: {
            round(b.at - a.at, 6)
            for a, b in zip(run_.rounds, run_.rounds[1:], strict=False)
            if a.weight == b.weight == w
        }
        for w in (10, 50)
    }
    assert gaps == {10: {2.0}, 50: {6.0}}


def test_check_config_says_high_risk_approves_every_step() -> None:
    sp = ServicePolicy.model_validate(
        {"risk": "high", "metrics": [{"name": "errors", "query": "e{version}", "max": 0.05}]}
    )
    lines = explain_service(sp)
    assert lines[0] == "approval required before every step (risk: high)"
    assert "rolls back when errors > 5% at every step" not in lines[1]  # not a ratio metric
    assert lines[1].startswith("rolls back when errors > 0.05 at every step")


def test_check_config_says_a_hold_at_100_is_not_used() -> None:
    text = AFTER_100.replace("  quiet: {}", "  quiet:\n    steps: [10, {weight: 100, hold: 2h}]")
    lines = explain_service(parse_policy(text, "test").services["quiet"])
    assert "at 100%: its `hold` is not used (the time at 100% is the `bake`)" in lines
