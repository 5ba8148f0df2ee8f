"""decide(): from one round of checks to one verdict, with the counters carried across rounds."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from bot.engine.controller import carry_out
from bot.judging.decision import Decision, Verdict, decide
from bot.release.checks import CheckResult, Outcome
from bot.release.policy import Metric, NoDataPolicy, Risk, Strategy
from bot.release.rollout import (
    CONTROLLER,
    Actor,
    MetricCounters,
    Release,
    State,
    advance,
    approve,
    new_release,
    pause,
)

NOW = 1_000_000.0
HOLD = 300.0
BAKE = 3600.0
ALICE = Actor(user="alice", surface="slack")
QUERY = 'sum(rate(errors{version="v2"}[60s]))'

P, F, N, E = Outcome.PASS, Outcome.FAIL, Outcome.NO_DATA, Outcome.ERROR


def metric(name: str = "errors", /, **rules: object) -> Metric:
    return Metric.model_validate({"name": name, "query": "x{version}", "max": 0.05, **rules})


def release(*, risk: str = "normal") -> Release:
    return new_release(
        release_id="rel-1", number=3, service="checkout", version="v2", stable_version="v1",
        weights=[1, 10, 50, 100], holds=[HOLD, HOLD, 2 * HOLD, HOLD], interval=30.0,
        bake=BAKE, strategy=Strategy.CANARY, risk=Risk(risk), notes="", actor=ALICE, now=NOW,
    )


def check(outcome: Outcome, name: str = "errors", *, dry_run: bool = False,
          critical: bool = False) -> CheckResult:
    """A check as a judge returns it; ``critical`` marks a failure that is critical."""
    reason = {
        P: f"{name}: 0.01 within limits",
        F: f"{name}: 0.09 > max 0.05",
        N: f"{name}: no canary data (the query returned no series)",
        E: f"{name}: canary query failed: timeout",
    }[outcome]
    return CheckResult(metric=name, outcome=outcome, canary=None, control=None, reason=reason,
                       dry_run=dry_run, critical=critical,
                       query=QUERY if outcome in (N, E) else "")


def rounds(start: Release, metrics: Sequence[Metric], outcomes: Sequence[Outcome],
           now: float = NOW + 10) -> list[Decision]:
    """One check of the first metric per round; each round's counters feed the next."""
    out = []
    current = start
    for outcome in outcomes:
        decision = decide(current, metrics, [check(outcome, metrics[0].name)], now)
        out.append(decision)
        current = current.model_copy(update={"counters": decision.counters})
    return out


def verdicts(decisions: Sequence[Decision]) -> list[Verdict]:
    return [d.verdict for d in decisions]


H, A, R, PA = Verdict.HOLD, Verdict.ADVANCE, Verdict.ROLLBACK, Verdict.PAUSE


# --- failures --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("failure_limit", "outcomes", "expected"),
    [
        (2, [F, F], [H, R]),
        (3, [F, F, F], [H, H, R]),
        (1, [F], [R]),
        (3, [F, F, P, F, F], [H, H, H, H, H]),  # a pass resets the consecutive counter
        (2, [F, P, F, P], [H, H, H, H]),
        (2, [F, N, F], [H, H, R]),  # no data (hold) neither counts nor resets
    ],
)
def test_consecutive_failures_reach_the_limit(failure_limit: int, outcomes: list[Outcome],
                                              expected: list[Verdict]) -> None:
    m = metric(failure_limit=failure_limit, total_failure_limit=100)

    assert verdicts(rounds(release(), [m], outcomes)) == expected


def test_the_rollback_reason_names_the_check_and_the_limit() -> None:
    last = rounds(release(), [metric(failure_limit=3)], [F, F, F])[-1]

    assert last.verdict is Verdict.ROLLBACK
    assert last.reason == ("errors: 0.09 > max 0.05, 3 consecutive failed check(s) (limit 3)")
    assert not last.clean


def test_a_pass_resets_consecutive_but_not_total_failures() -> None:
    decisions = rounds(release(), [metric(failure_limit=3)], [F, F, P])

    counters = decisions[-1].counters["errors"]
    assert (counters.consecutive_failures, counters.total_failures) == (0, 2)
    assert decisions[1].counters["errors"].consecutive_failures == 2


@pytest.mark.parametrize(
    ("total_limit", "outcomes", "expected"),
    [
        (3, [F, P, F, P, F], [H, H, H, H, R]),
        (2, [F, P, F], [H, H, R]),
        (4, [F, P, F, P, F], [H, H, H, H, H]),
    ],
)
def test_total_failures_across_passes_reach_the_limit(total_limit: int,
                                                      outcomes: list[Outcome],
                                                      expected: list[Verdict]) -> None:
    m = metric(failure_limit=2, total_failure_limit=total_limit)

    decisions = rounds(release(), [m], outcomes)

    assert verdicts(decisions) == expected
    if expected[-1] is Verdict.ROLLBACK:
        assert decisions[-1].reason.endswith(
            f"{total_limit} failed checks in this release (limit {total_limit})")


def test_total_failures_continue_from_the_release_record() -> None:
    start = release().model_copy(update={
        "counters": {"errors": MetricCounters(total_failures=4)}})

    decision = decide(start, [metric(total_failure_limit=5)], [check(F)], NOW + 10)

    assert decision.verdict is Verdict.ROLLBACK
    assert decision.counters["errors"].total_failures == 5
    assert start.counters["errors"].total_failures == 4  # the input is not modified


def test_a_critical_metric_rolls_back_on_its_first_failure() -> None:
    m = metric(critical=True, failure_limit=5)

    decision = decide(release(), [m], [check(F, critical=True)], NOW + 10)

    assert decision.verdict is Verdict.ROLLBACK
    assert decision.reason == "critical metric failed: errors: 0.09 > max 0.05"


def test_a_critical_metric_failing_below_its_critical_gate_counts_like_any_failure() -> None:
    # The statistical judge marks a failure critical only past the critical effect size.
    m = metric(critical=True, failure_limit=2)

    first = decide(release(), [m], [check(F, critical=False)], NOW + 10)

    assert first.verdict is Verdict.HOLD
    assert first.counters["errors"].consecutive_failures == 1


def test_every_rollback_reason_is_joined() -> None:
    metrics = [metric("errors", critical=True), metric("latency", failure_limit=1)]

    checks = [check(F, "errors", critical=True), check(F, "latency")]
    decision = decide(release(), metrics, checks, NOW + 10)

    assert decision.verdict is Verdict.ROLLBACK
    assert "critical metric failed: errors" in decision.reason
    assert "; latency: 0.09 > max 0.05, 1 consecutive" in decision.reason


# --- dry run and unknown metrics -------------------------------------------------------------


def test_dry_run_checks_never_count_or_act() -> None:
    m = metric(critical=True, failure_limit=1, dry_run=True)
    current = release()
    for _ in range(5):
        decision = decide(current, [m], [check(F, dry_run=True, critical=True)], NOW + HOLD)
        current = current.model_copy(update={"counters": decision.counters})
        assert decision.verdict is Verdict.ADVANCE
        assert decision.clean

    assert current.counters == {}


def test_dry_run_failures_are_left_out_of_the_hold_reason() -> None:
    metrics = [metric("errors"), metric("shadow", dry_run=True)]
    checks = [check(N, "errors"), check(F, "shadow", dry_run=True)]

    decision = decide(release(), metrics, checks, NOW + 10)

    assert decision.verdict is Verdict.HOLD
    assert decision.reason == "holding: errors: no canary data (the query returned no series)"


def test_checks_for_metrics_not_in_the_policy_are_ignored() -> None:
    decision = decide(release(), [metric("errors")], [check(P), check(F, "gone")], NOW + HOLD)

    assert decision.verdict is Verdict.ADVANCE
    assert "gone" not in decision.counters


# --- no data ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "outcomes", "expected"),
    [
        (NoDataPolicy.HOLD, [N, N, N], [H, H, H]),
        (NoDataPolicy.PAUSE, [N], [PA]),
        (NoDataPolicy.FAIL, [N, N], [H, R]),
    ],
)
def test_no_data_policies(policy: NoDataPolicy, outcomes: list[Outcome],
                          expected: list[Verdict]) -> None:
    m = metric(no_data=policy, failure_limit=2)

    decisions = rounds(release(), [m], outcomes, now=NOW + 10 * HOLD)

    assert verdicts(decisions) == expected
    assert not decisions[-1].clean
    counters = decisions[-1].counters["errors"]
    failures = len(outcomes) if policy is NoDataPolicy.FAIL else 0
    assert counters.total_failures == failures


def test_no_data_pause_says_why() -> None:
    decision = decide(release(), [metric(no_data="pause")], [check(N)], NOW + 10)

    assert decision.verdict is Verdict.PAUSE
    assert decision.reason == "errors: no canary data (the query returned no series)"


def test_no_data_hold_reason_lists_the_pending_check() -> None:
    decision = decide(release(), [metric()], [check(N)], NOW + 10 * HOLD)

    assert decision.verdict is Verdict.HOLD
    assert decision.reason.startswith("holding: errors: no canary data")


# --- query errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error_limit", "outcomes", "expected"),
    [
        (3, [E, E, E], [H, H, PA]),
        (1, [E], [PA]),
        (2, [E, P, E], [H, H, H]),  # a pass resets the error streak
        (2, [E, F, E], [H, H, H]),  # so does a real verdict
        (2, [E, N, E], [H, H, PA]),  # no data does not
    ],
)
def test_errors_up_to_the_error_limit_pause(error_limit: int, outcomes: list[Outcome],
                                            expected: list[Verdict]) -> None:
    m = metric(error_limit=error_limit, failure_limit=5)

    assert verdicts(rounds(release(), [m], outcomes)) == expected


def test_the_error_pause_reason_has_the_count_and_the_query() -> None:
    last = rounds(release(), [metric(error_limit=2)], [E, E])[-1]

    assert last.verdict is Verdict.PAUSE
    assert last.reason == (f"errors: canary query failed: timeout (2 times in a row, limit 2); "
                           f"query: {QUERY}")
    assert last.counters["errors"].consecutive_errors == 2


def test_errors_never_count_as_failures() -> None:
    decisions = rounds(release(), [metric(failure_limit=1, error_limit=10)], [E] * 5)

    assert verdicts(decisions) == [H] * 5
    assert decisions[-1].counters["errors"].total_failures == 0


def test_rollback_wins_over_pause() -> None:
    metrics = [metric("errors", error_limit=1), metric("latency", critical=True)]

    checks = [check(E, "errors"), check(F, "latency", critical=True)]
    decision = decide(release(), metrics, checks, NOW + 10)

    assert decision.verdict is Verdict.ROLLBACK
    assert "latency" in decision.reason


# --- progress --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("elapsed", "verdict", "reason"),
    [
        (0.0, Verdict.HOLD, "checks green, holding"),
        (HOLD - 1, Verdict.HOLD, "checks green, holding"),
        (HOLD, Verdict.ADVANCE, "hold passed with every check green"),
        (10 * HOLD, Verdict.ADVANCE, "hold passed with every check green"),
    ],
)
def test_a_clean_release_advances_once_its_hold_elapsed(elapsed: float, verdict: Verdict,
                                                         reason: str) -> None:
    decision = decide(release(), [metric()], [check(P)], NOW + elapsed)

    assert (decision.verdict, decision.reason) == (verdict, reason)
    assert decision.clean


def test_each_step_uses_its_own_hold() -> None:
    at_step_2 = advance(advance(release(), ALICE, NOW), ALICE, NOW)  # hold 2 * HOLD

    assert decide(at_step_2, [metric()], [check(P)], NOW + HOLD).verdict is Verdict.HOLD
    assert decide(at_step_2, [metric()], [check(P)], NOW + 2 * HOLD).verdict is Verdict.ADVANCE


def test_a_failing_check_holds_even_after_the_hold() -> None:
    decision = decide(release(), [metric(failure_limit=3)], [check(F)], NOW + 10 * HOLD)

    assert decision.verdict is Verdict.HOLD
    assert decision.reason == "holding: errors: 0.09 > max 0.05"


def test_a_release_without_checks_advances_after_its_hold() -> None:
    assert decide(release(), [], [], NOW + HOLD).verdict is Verdict.ADVANCE


def test_a_high_risk_release_requests_approval_instead_of_advancing() -> None:
    high = approve(release(risk=Risk.HIGH), ALICE, NOW)

    decision = decide(high, [metric()], [check(P)], NOW + HOLD)

    assert decision.verdict is Verdict.REQUEST_APPROVAL
    assert decision.reason == "hold passed; the next step needs approval"
    assert decide(high, [metric()], [check(P)], NOW + HOLD - 1).verdict is Verdict.HOLD


def test_pending_approval_just_holds() -> None:
    pending = release(risk=Risk.HIGH)

    decision = decide(pending, [metric()], [check(P)], NOW + 10 * HOLD)

    assert decision.verdict is Verdict.HOLD


def test_a_progressing_release_at_its_last_step_holds() -> None:
    at_last = release().model_copy(update={"step": 3, "weight": 100})

    decision = decide(at_last, [metric()], [check(P)], NOW + 10 * HOLD)

    assert (decision.verdict, decision.reason) == (Verdict.HOLD, "at the last step")


# --- baking ----------------------------------------------------------------------------------


def baking() -> Release:
    current = release()
    while current.state is State.PROGRESSING:
        current = advance(current, ALICE, NOW)
    assert current.state is State.BAKING
    return current


@pytest.mark.parametrize(
    ("elapsed", "outcome", "verdict"),
    [
        (BAKE - 1, P, Verdict.HOLD),
        (BAKE, P, Verdict.SUCCEED),
        (BAKE * 2, P, Verdict.SUCCEED),
        (BAKE * 2, N, Verdict.HOLD),
        (BAKE * 2, F, Verdict.HOLD),
    ],
)
def test_baking_succeeds_after_the_bake_with_clean_checks(elapsed: float, outcome: Outcome,
                                                         verdict: Verdict) -> None:
    decision = decide(baking(), [metric(failure_limit=2)], [check(outcome)], NOW + elapsed)

    assert decision.verdict is verdict
    if verdict is Verdict.SUCCEED:
        assert decision.reason == "bake window passed with every check green"


def test_baking_still_rolls_back_on_failures() -> None:
    assert verdicts(rounds(baking(), [metric(failure_limit=2)], [F, F])) == [H, R]


# --- paused ----------------------------------------------------------------------------------


def paused() -> Release:
    return pause(release(), ALICE, NOW, "looking")


def test_a_paused_release_still_rolls_back_on_failures() -> None:
    assert verdicts(rounds(paused(), [metric(failure_limit=2)], [F, F])) == [H, R]


@pytest.mark.parametrize(
    ("rules", "outcomes"),
    [
        ({"error_limit": 1}, [E, E, E]),
        ({"no_data": "pause"}, [N, N]),
    ],
)
def test_a_paused_release_is_not_paused_again(rules: dict[str, object],
                                              outcomes: list[Outcome]) -> None:
    decisions = rounds(paused(), [metric(**rules)], outcomes, now=NOW + 10 * HOLD)

    assert verdicts(decisions) == [H] * len(outcomes)


def test_a_clean_paused_release_holds_after_its_hold() -> None:
    decision = decide(paused(), [metric()], [check(P)], NOW + 10 * HOLD)

    assert (decision.verdict, decision.reason) == (Verdict.HOLD, "checks green, holding")
    assert decision.clean


# --- a pause because metrics could not be read, and the way back ------------------------------

RS = Verdict.RESUME


def through_the_controller(
    outcomes: Sequence[Outcome], m: Metric, resume_after_rounds: int
) -> tuple[list[Verdict], Release]:
    """Rounds of one metric, each decision carried out on the record as the controller does."""
    current, out = release(), []
    for outcome in outcomes:
        d = decide(current, [m], [check(outcome, m.name)], NOW + 10,
                   resume_after_rounds=resume_after_rounds)
        booked = current.model_copy(
            update={"counters": d.counters, "readable_rounds": d.readable_rounds})
        current, _ = carry_out(booked, d, NOW + 10)
        out.append(d.verdict)
    return out, current


@pytest.mark.parametrize(
    ("outcomes", "resume_after", "expected"),
    [
        ([E, E, P, P, P], 3, [H, PA, H, H, RS]),
        ([E, E, P, E, P, P, P], 3, [H, PA, H, H, H, H, RS]),  # unreadable again: count anew
        ([E, E, P], 1, [H, PA, RS]),
        ([E, E, P, P, P, P], 0, [H, PA, H, H, H, H]),  # 0: a person resumes it
        ([E, E, F, F], 3, [H, PA, H, R]),  # readable and failing: judged as ever
    ],
)
def test_a_release_paused_because_metrics_were_unreadable_resumes_after_readable_rounds(
        outcomes: list[Outcome], resume_after: int, expected: list[Verdict]) -> None:
    verdicts_seen, last = through_the_controller(
        outcomes, metric(error_limit=2, failure_limit=2), resume_after)

    assert verdicts_seen == expected
    if expected[-1] is RS:
        assert (last.state, last.paused_for_outage, last.readable_rounds) == (
            State.PROGRESSING, False, 0)
        assert last.last.by == CONTROLLER.user


def test_a_pause_for_missing_data_or_by_a_person_is_not_resumed_by_the_controller() -> None:
    no_data = metric(no_data=NoDataPolicy.PAUSE)
    seen, last = through_the_controller([N, P, P, P, P], no_data, 1)
    assert seen == [PA, H, H, H, H] and last.state is State.PAUSED
    assert not last.paused_for_outage

    by_alice = pause(release(), ALICE, NOW, "looking")
    decision = decide(by_alice, [metric()], [check(P)], NOW + 10, resume_after_rounds=1)
    assert decision.verdict is Verdict.HOLD
