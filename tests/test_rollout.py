"""The release state machine: the transition table and each pure transition function."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from bot.errors import ConflictError
from bot.judging.decision import Verdict, decide
from bot.release.checks import CheckResult, Outcome
from bot.release.policy import Risk, Strategy
from bot.release.rollout import (
    ACTIVE,
    CONTROLLER,
    TERMINAL,
    TRANSITIONS,
    Action,
    Actor,
    Approval,
    MetricCounters,
    Release,
    State,
    advance,
    approve,
    check_allowed,
    finish_rollback,
    hold_elapsed,
    new_release,
    pause,
    request_approval,
    resume,
    start_rollback,
    succeed,
)

NOW = 1_000_000.0
WEIGHTS = [1, 10, 25, 50, 100]
HOLDS = [300.0, 900.0, 900.0, 600.0, 900.0]

ALICE = Actor(user="alice", surface="slack")  # starts releases
CAROL = Actor(user="carol", surface="api")  # makes the last move into the state under test
DAVE = Actor(user="dave", surface="console")  # tries the action under test

LABEL = "checkout#7 (v2.0.0)"


def fresh(*, risk: str = "normal", weights: list[int] | None = None,
          holds: list[float] | None = None) -> Release:
    weights = list(WEIGHTS if weights is None else weights)
    return new_release(
        release_id="rel-1", number=7, service="checkout", version="v2.0.0",
        stable_version="v1.9.0", weights=weights,
        holds=list(holds if holds is not None else HOLDS[: len(weights)]),
        interval=30.0, bake=3600.0, strategy=Strategy.CANARY, risk=Risk(risk), notes="fixes #12",
        actor=ALICE, now=NOW,
    )


def check(metric: str, outcome: Outcome, canary: float | None, control: float | None
          ) -> CheckResult:
    return CheckResult(metric=metric, outcome=outcome, canary=canary, control=control, reason="")


def at_step(step: int) -> Release:
    """A normal-risk release advanced by alice to ``step`` (still progressing)."""
    release = fresh()
    for i in range(step):
        release = advance(release, ALICE, NOW + 100 * (i + 1))
    assert release.state is State.PROGRESSING
    return release


def in_state(state: State) -> Release:
    """A release whose last transition, into ``state``, was made by carol via the api."""
    t = NOW + 1_000
    if state is State.PROGRESSING:
        return advance(fresh(), CAROL, t)
    if state is State.PENDING_APPROVAL:
        return request_approval(at_step(1), CAROL, t, "hold passed")
    if state is State.PAUSED:
        return pause(at_step(1), CAROL, t, "looking into it")
    if state is State.BAKING:
        return advance(at_step(3), CAROL, t)
    if state is State.ROLLING_BACK:
        return start_rollback(at_step(1), CAROL, t, "latency")
    if state is State.SUCCEEDED:
        return succeed(advance(at_step(3), ALICE, t - 10), CAROL, t)
    return finish_rollback(start_rollback(at_step(1), ALICE, t - 10, "latency"), CAROL, t)


Move = Callable[[Release], Release]
LATER = NOW + 5_000

FUNCTIONS: dict[Action, Move] = {
    Action.ADVANCE: lambda r: advance(r, DAVE, LATER),
    Action.REQUEST_APPROVAL: lambda r: request_approval(r, DAVE, LATER, "needs a human"),
    Action.APPROVE: lambda r: approve(r, DAVE, LATER),
    Action.PAUSE: lambda r: pause(r, DAVE, LATER, "hands off"),
    Action.RESUME: lambda r: resume(r, DAVE, LATER),
    Action.SUCCEED: lambda r: succeed(r, DAVE, LATER),
    Action.ROLLBACK: lambda r: start_rollback(r, DAVE, LATER, "bad canary"),
    Action.FINISH_ROLLBACK: lambda r: finish_rollback(r, DAVE, LATER),
}

# My expectations, written independently of TRANSITIONS: (state, action) -> state reached.
ALLOWED: dict[State, dict[Action, State]] = {
    State.PENDING_APPROVAL: {
        Action.APPROVE: State.PROGRESSING,
        Action.PAUSE: State.PAUSED,
        Action.ROLLBACK: State.ROLLING_BACK,
    },
    State.PROGRESSING: {
        Action.ADVANCE: State.PROGRESSING,
        Action.REQUEST_APPROVAL: State.PENDING_APPROVAL,
        Action.PAUSE: State.PAUSED,
        Action.ROLLBACK: State.ROLLING_BACK,
    },
    State.PAUSED: {
        Action.RESUME: State.PROGRESSING,
        Action.ROLLBACK: State.ROLLING_BACK,
    },
    State.BAKING: {
        Action.SUCCEED: State.SUCCEEDED,
        Action.PAUSE: State.PAUSED,
        Action.ROLLBACK: State.ROLLING_BACK,
    },
    State.ROLLING_BACK: {
        Action.FINISH_ROLLBACK: State.ROLLED_BACK,
    },
    State.SUCCEEDED: {},
    State.ROLLED_BACK: {},
}

PAIRS = [(state, action) for state in State for action in FUNCTIONS]


def test_the_fixtures_reach_each_state_through_carol() -> None:
    for state in State:
        release = in_state(state)
        assert release.state is state
        assert (release.last.by, release.last.surface, release.last.state) == (
            "carol", "api", state)


def test_the_transition_table_allows_exactly_the_expected_actions() -> None:
    assert set(TRANSITIONS) == set(State)
    for state, allowed in ALLOWED.items():
        assert set(TRANSITIONS[state]) == set(allowed), state
        for action, to in allowed.items():
            assert to in TRANSITIONS[state][action], (state, action)


@pytest.mark.parametrize(("state", "action"), PAIRS, ids=[f"{s}-{a}" for s, a in PAIRS])
def test_each_state_and_action(state: State, action: Action) -> None:
    release = in_state(state)
    expected = ALLOWED[state].get(action)

    if expected is None:
        with pytest.raises(ConflictError) as info:
            FUNCTIONS[action](release)
        message = str(info.value)
        assert message.startswith(f"cannot {action.value}: {LABEL} is {state.value}")
        assert "put there by carol via api" in message
        assert message == f"cannot {action.value}: {release.describe_state()}"
        return

    after = FUNCTIONS[action](release)
    assert after.state is expected
    assert after.state in TRANSITIONS[state][action]
    assert (after.last.action, after.last.state) == (action, expected)
    assert (after.last.by, after.last.surface, after.last.at) == ("dave", "console", LATER)
    assert after.updated_at == LATER
    # The input is never modified: transitions are pure.
    assert release.state is state
    assert release.last.by == "carol"


@pytest.mark.parametrize(("state", "action"), PAIRS, ids=[f"{s}-{a}" for s, a in PAIRS])
def test_check_allowed_agrees_with_the_table(state: State, action: Action) -> None:
    release = in_state(state)

    if action in ALLOWED[state]:
        check_allowed(release, action)
    else:
        with pytest.raises(ConflictError, match="put there by carol via api"):
            check_allowed(release, action)


@pytest.mark.parametrize("state", sorted(TERMINAL))
def test_terminal_states_allow_nothing(state: State) -> None:
    release = in_state(state)

    assert not release.is_active
    assert release.finished_at == NOW + 1_000
    for action, function in FUNCTIONS.items():
        with pytest.raises(ConflictError, match=f"is {state.value}"):
            function(release)
        with pytest.raises(ConflictError):
            check_allowed(release, action)


def test_active_and_terminal_partition_the_states() -> None:
    assert set(State) == ACTIVE | TERMINAL
    assert not ACTIVE & TERMINAL


# --- describe_state --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "where"),
    [
        (State.PROGRESSING, " at 10% (step 2/5)"),
        (State.PENDING_APPROVAL, " for step 3 (25%)"),
        (State.PAUSED, " at 10%"),
        (State.BAKING, ""),
        (State.ROLLING_BACK, ""),
    ],
)
def test_describe_state_says_where_and_who(state: State, where: str) -> None:
    text = in_state(state).describe_state()

    assert text.startswith(f"{LABEL} is {state.value}{where}, put there by carol via api ")
    assert " ago" in text


def test_describe_state_ends_with_the_reason() -> None:
    assert in_state(State.PAUSED).describe_state().endswith(" ago: looking into it")


# --- new_release -----------------------------------------------------------------------------


def test_a_normal_release_starts_progressing_at_the_first_step() -> None:
    release = fresh()

    assert release.state is State.PROGRESSING
    assert (release.step, release.weight, release.awaiting_step) == (0, 1, None)
    assert release.hold == 300.0
    assert (release.requested_by, release.surface) == ("alice", "slack")
    assert release.created_at == release.step_started_at == release.updated_at == NOW
    assert (release.last.action, release.last.by, release.last.reason) == (
        Action.START, "alice", "started")
    assert release.is_active
    assert release.label == LABEL


def test_a_high_risk_release_waits_for_approval_at_weight_zero() -> None:
    release = fresh(risk=Risk.HIGH)

    assert release.state is State.PENDING_APPROVAL
    assert (release.step, release.weight, release.awaiting_step) == (0, 0, 0)
    assert release.last.reason == "waiting for approval of the first step"
    assert "pending_approval for step 1 (1%)" in release.describe_state()


def test_a_high_risk_release_starting_at_zero_needs_no_approval_to_start() -> None:
    release = fresh(risk=Risk.HIGH, weights=[0, 100], holds=[60.0, 60.0])

    assert release.state is State.PROGRESSING
    assert release.weight == 0


def test_a_release_whose_only_step_is_100_bakes_and_can_succeed() -> None:
    release = fresh(weights=[100], holds=[60.0])
    # As it stands, decide() can only hold it "at the last step" forever:
    later = NOW + 3600.0 + 60.0
    assert decide(release, [], [], later).verdict is not Verdict.HOLD
    assert release.state is State.BAKING


# --- advance ---------------------------------------------------------------------------------


def test_advance_walks_the_steps_and_restarts_the_hold() -> None:
    release = fresh().model_copy(update={"clean_checks_in_step": 4})
    seen: list[tuple[State, int, int, float]] = []
    t = NOW
    while release.state is State.PROGRESSING:
        t += 1_000
        release = advance(release, CAROL, t, "hold passed")
        seen.append((release.state, release.step, release.weight, release.step_started_at))
        assert release.clean_checks_in_step == 0
        assert release.last.reason == "hold passed"

    assert seen == [
        (State.PROGRESSING, 1, 10, NOW + 1_000),
        (State.PROGRESSING, 2, 25, NOW + 2_000),
        (State.PROGRESSING, 3, 50, NOW + 3_000),
        (State.BAKING, 4, 100, NOW + 4_000),
    ]


def test_the_last_step_enters_baking_with_the_control_frozen_as_baseline() -> None:
    release = at_step(3).model_copy(update={"last_checks": [
        check("error_rate", Outcome.PASS, 0.011, 0.01),
        check("latency_p99", Outcome.PASS, 0.3, 1),
        check("conversions", Outcome.NO_DATA, None, None),
    ]})

    baking = advance(release, CAROL, NOW + 9_000)

    assert baking.state is State.BAKING
    assert (baking.step, baking.weight) == (4, 100)
    assert baking.baseline == {"error_rate": 0.01, "latency_p99": 1.0}
    assert isinstance(baking.baseline["latency_p99"], float)


def test_an_existing_baseline_is_not_overwritten() -> None:
    release = at_step(3).model_copy(update={
        "baseline": {"error_rate": 0.002},
        "last_checks": [check("error_rate", Outcome.PASS, 0.6, 0.5)],
    })

    assert advance(release, CAROL, NOW + 9_000).baseline == {"error_rate": 0.002}


def test_intermediate_steps_do_not_freeze_a_baseline() -> None:
    release = fresh().model_copy(update={"last_checks": [check("e", Outcome.PASS, 0.6, 0.5)]})

    assert advance(release, CAROL, NOW + 10).baseline == {}


def test_advance_past_the_last_step_is_refused() -> None:
    # Only a hand-made record can be progressing at its last step; advance must refuse it.
    release = at_step(3).model_copy(update={"step": 4, "weight": 100})

    with pytest.raises(ConflictError, match=r"checkout#7 \(v2.0.0\) is already at its last step"):
        advance(release, CAROL, NOW + 10)
    with pytest.raises(ConflictError, match="is at its last step"):
        request_approval(release, CAROL, NOW + 10)


# --- approval --------------------------------------------------------------------------------


def test_request_approval_waits_for_the_next_step_at_the_current_weight() -> None:
    release = request_approval(at_step(2), CAROL, NOW + 5_000, "hold passed")

    assert release.state is State.PENDING_APPROVAL
    assert (release.step, release.weight, release.awaiting_step) == (2, 25, 3)
    assert release.last.reason == "hold passed"


def test_approve_moves_to_the_awaited_step_and_records_the_approval() -> None:
    pending = request_approval(at_step(2), CAROL, NOW + 5_000)

    approved = approve(pending, DAVE, NOW + 6_000)

    assert approved.state is State.PROGRESSING
    assert (approved.step, approved.weight, approved.awaiting_step) == (3, 50, None)
    assert approved.step_started_at == NOW + 6_000
    assert approved.approvals == [Approval(step=3, by="dave", at=NOW + 6_000)]
    assert approved.last.reason == "approved by dave"


def test_approving_a_high_risk_release_starts_its_first_step() -> None:
    approved = approve(fresh(risk=Risk.HIGH), DAVE, NOW + 60)

    assert approved.state is State.PROGRESSING
    assert (approved.step, approved.weight) == (0, 1)
    assert approved.approvals == [Approval(step=0, by="dave", at=NOW + 60)]


def test_approvals_accumulate_and_the_last_one_enters_baking() -> None:
    release = fresh(risk=Risk.HIGH).model_copy(update={"last_checks": [
        check("latency", Outcome.PASS, 0.26, 0.25)]})
    t = NOW
    release = approve(release, DAVE, t)
    while release.state is State.PROGRESSING:
        t += 1_000
        release = approve(request_approval(release, CAROL, t), DAVE, t + 1)

    assert release.state is State.BAKING
    assert [a.step for a in release.approvals] == [0, 1, 2, 3, 4]
    assert release.baseline == {"latency": 0.25}


# --- pause and resume ------------------------------------------------------------------------


@pytest.mark.parametrize("state", [State.PROGRESSING, State.PENDING_APPROVAL, State.BAKING])
def test_pause_then_resume_restores_the_state_and_restarts_the_hold(state: State) -> None:
    before = in_state(state).model_copy(update={
        "clean_checks_in_step": 3,
        "counters": {"errors": MetricCounters(consecutive_failures=1, consecutive_errors=2)},
    })

    paused = pause(before, DAVE, NOW + 2_000, "checking dashboards")
    assert paused.state is State.PAUSED
    assert (paused.paused_from, paused.reason) == (state, "checking dashboards")
    assert paused.weight == before.weight

    resumed = resume(paused, ALICE, NOW + 3_000)
    assert resumed.state is state
    assert (resumed.paused_from, resumed.reason) == (None, "")
    assert resumed.step_started_at == NOW + 3_000
    assert resumed.clean_checks_in_step == 0
    assert resumed.counters.get("errors", MetricCounters()).consecutive_failures == 0
    assert resumed.counters.get("errors", MetricCounters()).consecutive_errors == 0
    assert (resumed.step, resumed.weight, resumed.awaiting_step) == (
        before.step, before.weight, before.awaiting_step)
    assert resumed.last.reason == "resumed by alice"


def test_resume_of_a_record_without_paused_from_goes_back_to_progressing() -> None:
    paused = pause(at_step(1), DAVE, NOW + 10, "x").model_copy(update={"paused_from": None})

    assert resume(paused, DAVE, NOW + 20).state is State.PROGRESSING


def test_resume_keeps_the_release_wide_failure_total() -> None:
    before = at_step(1).model_copy(update={
        "counters": {"errors": MetricCounters(consecutive_failures=1, total_failures=4)}})

    resumed = resume(pause(before, DAVE, NOW + 10, "x"), DAVE, NOW + 20)

    assert resumed.counters.get("errors", MetricCounters()).total_failures == 4


# --- rollback and success --------------------------------------------------------------------


@pytest.mark.parametrize(
    "state", [State.PROGRESSING, State.PENDING_APPROVAL, State.PAUSED, State.BAKING])
def test_start_rollback_sends_the_weight_to_zero(state: State) -> None:
    release = in_state(state)

    rolling = start_rollback(release, DAVE, NOW + 7_000, "error rate 3x control")

    assert rolling.state is State.ROLLING_BACK
    assert rolling.weight == 0
    assert (rolling.reason, rolling.last.reason) == ("error rate 3x control",) * 2
    assert rolling.rollback_started_at == NOW + 7_000
    assert rolling.awaiting_step is None
    assert rolling.is_active
    assert rolling.finished_at is None


def test_finish_rollback_confirms_zero_and_finishes() -> None:
    rolling = start_rollback(at_step(2), DAVE, NOW + 7_000, "latency")

    done = finish_rollback(rolling, CONTROLLER, NOW + 7_005)

    assert done.state is State.ROLLED_BACK
    assert (done.applied_weight, done.finished_at) == (0, NOW + 7_005)
    assert done.last.reason == "latency"
    assert not done.is_active


def test_succeed_finishes_a_baking_release() -> None:
    baking = advance(at_step(3), CAROL, NOW + 8_000)

    done = succeed(baking, CONTROLLER, NOW + 12_000)

    assert done.state is State.SUCCEEDED
    assert done.finished_at == NOW + 12_000
    assert (done.last.by, done.last.reason) == ("shipwatch", "bake window passed")
    assert CONTROLLER.is_controller and not CAROL.is_controller


# --- hold_elapsed ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("step", "elapsed", "expected"),
    [
        (0, 0.0, False),
        (0, 299.9, False),
        (0, 300.0, True),
        (1, 300.0, False),
        (1, 900.0, True),
        (3, 600.0, True),
    ],
)
def test_hold_elapsed_uses_each_steps_own_hold(step: int, elapsed: float,
                                                expected: bool) -> None:
    release = at_step(step)

    assert hold_elapsed(release, release.step_started_at + elapsed) is expected


def test_a_record_written_by_an_older_bot_still_loads() -> None:
    # Records once carried a `messages` map that nothing read; Redis may still hold some.
    stored = fresh().model_dump(mode="json") | {"messages": {"channel": "C1", "ts": "1.2"}}
    loaded = Release.model_validate(stored)
    assert loaded == fresh()
    assert "messages" not in loaded.model_dump()
