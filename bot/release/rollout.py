"""The release state machine: states, the transition table, and pure transition functions.

Nothing here does I/O. Each function takes a Release and returns the next one, or raises
ConflictError naming the state the release is in and who put it there.
"""

from __future__ import annotations

import time
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from bot.errors import ConflictError
from bot.release.checks import CheckResult, ScoreRecord
from bot.release.durations import format_duration
from bot.release.policy import Risk, Strategy
from bot.release.summary import CompletionSummary

# The version of the release record's JSON shape; bump it with a migration when a field changes
# meaning, so a record written by an older bot is read as what it is.
SCHEMA_VERSION = 1


class State(StrEnum):
    PENDING_APPROVAL = "pending_approval"  # waiting for a human before the next step
    PROGRESSING = "progressing"  # at step k, weight w, holding while checks pass
    PAUSED = "paused"  # frozen at its weight until someone resumes or rolls back
    BAKING = "baking"  # at 100%, still judged against the pre-release baseline
    SUCCEEDED = "succeeded"
    ROLLING_BACK = "rolling_back"  # decided; traffic being sent back to stable
    ROLLED_BACK = "rolled_back"


ACTIVE = frozenset(
    {State.PENDING_APPROVAL, State.PROGRESSING, State.PAUSED, State.BAKING, State.ROLLING_BACK}
)
TERMINAL = frozenset({State.SUCCEEDED, State.ROLLED_BACK})


class Action(StrEnum):
    START = "start"
    ADVANCE = "advance"
    REQUEST_APPROVAL = "request_approval"
    APPROVE = "approve"
    PAUSE = "pause"
    RESUME = "resume"
    SUCCEED = "succeed"
    ROLLBACK = "rollback"
    FINISH_ROLLBACK = "finish_rollback"


# The transition table: which actions each state allows, and where they may lead.
TRANSITIONS: dict[State, dict[Action, frozenset[State]]] = {
    State.PENDING_APPROVAL: {
        Action.APPROVE: frozenset({State.PROGRESSING, State.BAKING}),
        Action.PAUSE: frozenset({State.PAUSED}),
        Action.ROLLBACK: frozenset({State.ROLLING_BACK}),
    },
    State.PROGRESSING: {
        Action.ADVANCE: frozenset({State.PROGRESSING, State.BAKING}),
        Action.REQUEST_APPROVAL: frozenset({State.PENDING_APPROVAL}),
        Action.PAUSE: frozenset({State.PAUSED}),
        Action.ROLLBACK: frozenset({State.ROLLING_BACK}),
    },
    State.PAUSED: {
        Action.RESUME: frozenset({State.PROGRESSING, State.PENDING_APPROVAL, State.BAKING}),
        Action.ROLLBACK: frozenset({State.ROLLING_BACK}),
    },
    State.BAKING: {
        Action.SUCCEED: frozenset({State.SUCCEEDED}),
        Action.PAUSE: frozenset({State.PAUSED}),
        Action.ROLLBACK: frozenset({State.ROLLING_BACK}),
    },
    State.ROLLING_BACK: {
        Action.FINISH_ROLLBACK: frozenset({State.ROLLED_BACK}),
    },
    State.SUCCEEDED: {},
    State.ROLLED_BACK: {},
}


class Surface(StrEnum):
    """Where a request came from."""

    SLACK = "slack"
    CONSOLE = "console"
    API = "api"
    CONTROLLER = "controller"  # shipwatch itself, deciding from the metrics


class Actor(BaseModel):
    """Who asks, from where. ``groups`` are the user-group ids the adapter resolved."""

    model_config = ConfigDict(frozen=True)

    user: str
    surface: Surface = Surface.CONSOLE
    groups: frozenset[str] = frozenset()

    @property
    def is_controller(self) -> bool:
        return self.surface is Surface.CONTROLLER


CONTROLLER = Actor(user="shipwatch", surface=Surface.CONTROLLER)


class Transition(BaseModel):
    model_config = ConfigDict(frozen=True)

    action: Action
    state: State
    by: str
    surface: Surface
    at: float
    reason: str = ""


class MetricCounters(BaseModel):
    consecutive_failures: int = 0
    total_failures: int = 0
    consecutive_errors: int = 0
    # When the failing rounds in a row began (None: the last verdict passed): a metric with
    # `for:` rolls back only once its breach has lasted that long.
    failing_since: float | None = None


class Approval(BaseModel):
    model_config = ConfigDict(frozen=True)

    step: int
    by: str
    at: float


class GateRecord(BaseModel):
    """The pre-release gates of a release, as checked when it started (bot.engine.gates)."""

    model_config = ConfigDict(frozen=True)

    required: list[str]
    results: dict[str, str] = Field(default_factory=dict)  # gate -> passed | failed | pending
    links: dict[str, str] = Field(default_factory=dict)  # gate -> its CI run, when reported
    source: str = ""  # request (the API body) | status_url | none
    problem: str = ""  # why no results could be read, when none could
    forced_by: str = ""  # the approver who started it past gates that had not passed
    # The gates forced past, each with why it had not passed: failed, pending, missing, unknown.
    overridden: dict[str, str] = Field(default_factory=dict)

    @property
    def forced(self) -> bool:
        return bool(self.forced_by)


class Release(BaseModel):
    """One release of one service: the JSON record kept in Redis."""

    schema_version: int = SCHEMA_VERSION
    id: str
    number: int
    service: str
    version: str
    stable_version: str = ""
    strategy: Strategy = Strategy.CANARY
    risk: Risk = Risk.NORMAL
    weights: list[int]
    holds: list[float]
    interval: float
    bake: float
    # Per step (empty: the release-wide ``interval``, and approvals by ``risk`` only).
    intervals: list[float] = Field(default_factory=list)
    approval_steps: list[bool] = Field(default_factory=list)  # True: a person approves entry
    notes: str = ""
    changes: list[dict[str, Any]] = Field(default_factory=list)  # [{title, pr, author, url}]
    gates: GateRecord | None = None  # None: the service required no gates

    state: State
    step: int = 0  # index into weights of the current step
    weight: int = 0  # the weight the release should be at
    applied_weight: int | None = None  # the weight the traffic backend last confirmed
    awaiting_step: int | None = None  # step index waiting for approval
    paused_from: State | None = None
    paused_for_outage: bool = False  # paused by the controller only because metrics were unreadable
    readable_rounds: int = 0  # rounds in a row, since such a pause, that read every metric again
    reason: str = ""  # why it paused / rolled back
    # Why it stays at its step though the judge would move it on (its step hooks): "" when
    # nothing but the judge holds it. Shown beside the hold, so "9m of 5m hold" explains itself.
    waiting_on: str = ""

    requested_by: str
    surface: Surface
    created_at: float
    step_started_at: float
    updated_at: float
    finished_at: float | None = None
    last: Transition
    approvals: list[Approval] = Field(default_factory=list)

    # Analysis bookkeeping.
    counters: dict[str, MetricCounters] = Field(default_factory=dict)
    last_checks: list[CheckResult] = Field(default_factory=list)
    last_score: ScoreRecord | None = None  # the statistical judge's canary score
    last_eval_at: float | None = None
    evaluations: int = 0
    clean_checks_in_step: int = 0
    baseline: dict[str, float] = Field(default_factory=dict)
    rollback_started_at: float | None = None
    # What the release went through, built once when it succeeds (bot.judging.summary).
    summary: CompletionSummary | None = None
    # Each step left: the canary's last value per metric there (what vs_previous_step reads).
    step_ends: dict[int, dict[str, float]] = Field(default_factory=dict)
    # The current step's rounds, (time, canary value) per metric with a trend rule.
    step_points: dict[str, list[tuple[float, float]]] = Field(default_factory=dict)

    rev: int = 0

    @property
    def label(self) -> str:
        return f"{self.service}#{self.number} ({self.version})"

    @property
    def is_active(self) -> bool:
        return self.state in ACTIVE

    @property
    def hold(self) -> float:
        return self.holds[self.step]

    @property
    def is_last_step(self) -> bool:
        return self.step >= len(self.weights) - 1

    @property
    def step_weight(self) -> int:
        """The current step's weight: what the step's policy is found by (``weight`` is 0
        once a rollback starts, and before a first step that waits for approval)."""
        return self.weights[self.step]

    @property
    def step_interval(self) -> float:
        """How often the current step is judged."""
        return self.intervals[self.step] if self.step < len(self.intervals) else self.interval

    def needs_approval(self, step: int) -> bool:
        """Whether entering ``step`` waits for a person: high risk, or the step asks for it."""
        asked = step < len(self.approval_steps) and self.approval_steps[step]
        return self.risk is Risk.HIGH or asked

    def describe_state(self) -> str:
        """'is progressing at 10% (step 2/5), put there by alice via slack 3m ago: reason'."""
        where = {
            State.PROGRESSING: f" at {self.weight}% (step {self.step + 1}/{len(self.weights)})",
            State.PENDING_APPROVAL: f" for step {(self.awaiting_step or 0) + 1} "
            f"({self.weights[self.awaiting_step or 0]}%)",
            State.PAUSED: f" at {self.weight}%",
        }.get(self.state, "")
        ago = format_duration(max(0.0, time.time() - self.last.at))
        reason = f": {self.last.reason}" if self.last.reason else ""
        return (
            f"{self.label} is {self.state.value}{where}, put there by {self.last.by} "
            f"via {self.last.surface} {ago} ago{reason}"
        )


def _move(
    release: Release,
    action: Action,
    to: State,
    actor: Actor,
    now: float,
    note: str = "",
    **changes: Any,
) -> Release:
    allowed = TRANSITIONS[release.state].get(action)
    if allowed is None or to not in allowed:
        raise ConflictError(f"cannot {action.value}: {release.describe_state()}")
    return release.model_copy(
        update={
            "state": to,
            "updated_at": now,
            "last": Transition(
                action=action, state=to, by=actor.user, surface=actor.surface, at=now, reason=note
            ),
            **changes,
        }
    )


def check_allowed(release: Release, action: Action) -> None:
    """Raise ConflictError if the state has no such action (for checks before side effects)."""
    if action not in TRANSITIONS[release.state]:
        raise ConflictError(f"cannot {action.value}: {release.describe_state()}")


def _enter_step(
    release: Release, step: int, action: Action, actor: Actor, now: float, reason: str, **extra: Any
) -> Release:
    weight = release.weights[step]
    to = State.BAKING if weight >= 100 else State.PROGRESSING
    if weight >= 100 and not release.baseline:
        # Freeze the control's last numbers: they are the baseline the bake compares against.
        extra.setdefault("baseline", _control_values(release))
    if step > release.step:
        # Leaving a step: its canary numbers are what the next step is compared with.
        ends = {**release.step_ends, release.step: _canary_values(release)}
        extra.setdefault("step_ends", ends)
    extra.setdefault("step_points", {})
    return _move(
        release,
        action,
        to,
        actor,
        now,
        reason,
        step=step,
        weight=weight,
        step_started_at=now,
        clean_checks_in_step=0,
        awaiting_step=None,
        waiting_on="",
        **extra,
    )


def _control_values(release: Release) -> dict[str, float]:
    return {c.metric: float(c.control) for c in release.last_checks if c.control is not None}


def _canary_values(release: Release) -> dict[str, float]:
    return {c.metric: float(c.canary) for c in release.last_checks if c.canary is not None}


# A step moved by a person this recently is the step a second typed advance was meant for: two
# people typing `/rollout advance` at the same moment (maybe on two replicas) move one step.
TYPED_MOVE_GUARD_S = 5.0


def moved_by_person_just_now(release: Release, now: float) -> bool:
    """Whether a person moved the release to its current step less than TYPED_MOVE_GUARD_S ago.
    Buttons carry their step and need no such guard; typed commands do not."""
    last = release.last
    return (
        last.action in (Action.ADVANCE, Action.APPROVE)
        and last.surface is not Surface.CONTROLLER
        and 0 <= now - last.at < TYPED_MOVE_GUARD_S
    )


def advance(release: Release, actor: Actor, now: float, reason: str = "") -> Release:
    """Move to the next step (the last step, 100%, enters baking)."""
    if release.state is State.PROGRESSING and release.is_last_step:
        raise ConflictError(f"cannot advance: {release.label} is already at its last step")
    check_allowed(release, Action.ADVANCE)
    return _enter_step(release, release.step + 1, Action.ADVANCE, actor, now, reason)


def request_approval(release: Release, actor: Actor, now: float, reason: str = "") -> Release:
    """High risk: the hold passed; stay at the current weight until a human approves the next."""
    nxt = release.step + 1
    if release.state is State.PROGRESSING and nxt >= len(release.weights):
        raise ConflictError(f"cannot request approval: {release.label} is at its last step")
    return _move(
        release,
        Action.REQUEST_APPROVAL,
        State.PENDING_APPROVAL,
        actor,
        now,
        reason,
        awaiting_step=nxt,
    )


def approve(release: Release, actor: Actor, now: float) -> Release:
    check_allowed(release, Action.APPROVE)
    step = release.awaiting_step if release.awaiting_step is not None else release.step + 1
    approvals = [*release.approvals, Approval(step=step, by=actor.user, at=now)]
    return _enter_step(
        release, step, Action.APPROVE, actor, now, f"approved by {actor.user}", approvals=approvals
    )


def pause(release: Release, actor: Actor, now: float, reason: str) -> Release:
    check_allowed(release, Action.PAUSE)
    return _move(
        release,
        Action.PAUSE,
        State.PAUSED,
        actor,
        now,
        reason,
        paused_from=release.state,
        reason=reason,
        paused_for_outage=False,
        readable_rounds=0,
    )


def resume(release: Release, actor: Actor, now: float) -> Release:
    check_allowed(release, Action.RESUME)
    back = release.paused_from or State.PROGRESSING
    # The hold restarts: a paused canary has not proven anything while nobody was judging it.
    return _move(
        release,
        Action.RESUME,
        back,
        actor,
        now,
        f"resumed by {actor.user}",
        paused_from=None,
        reason="",
        paused_for_outage=False,
        readable_rounds=0,
        step_started_at=now,
        clean_checks_in_step=0,
        waiting_on="",
        # Consecutive counts restart; the release-wide failure total keeps counting.
        counters={
            name: MetricCounters(total_failures=c.total_failures)
            for name, c in release.counters.items()
        },
    )


def succeed(release: Release, actor: Actor, now: float) -> Release:
    return _move(
        release, Action.SUCCEED, State.SUCCEEDED, actor, now, "bake window passed", finished_at=now
    )


def start_rollback(release: Release, actor: Actor, now: float, reason: str) -> Release:
    check_allowed(release, Action.ROLLBACK)
    return _move(
        release,
        Action.ROLLBACK,
        State.ROLLING_BACK,
        actor,
        now,
        reason,
        weight=0,
        reason=reason,
        rollback_started_at=now,
        awaiting_step=None,
    )


def finish_rollback(release: Release, actor: Actor, now: float) -> Release:
    return _move(
        release,
        Action.FINISH_ROLLBACK,
        State.ROLLED_BACK,
        actor,
        now,
        release.reason,
        applied_weight=0,
        finished_at=now,
    )


def hold_elapsed(release: Release, now: float) -> bool:
    return now - release.step_started_at >= release.hold


def new_release(
    *,
    release_id: str,
    number: int,
    service: str,
    version: str,
    stable_version: str,
    weights: list[int],
    holds: list[float],
    interval: float,
    bake: float,
    strategy: Strategy,
    risk: Risk,
    notes: str,
    actor: Actor,
    now: float,
    intervals: list[float] | None = None,
    approval_steps: list[bool] | None = None,
) -> Release:
    """A fresh release. High risk (or a first step that asks for it) waits for approval
    before any step that moves users."""
    first_asks = bool(approval_steps and approval_steps[0])
    needs_approval = (risk is Risk.HIGH or first_asks) and weights[0] > 0
    # A single-step plan ([100]) has nothing to hold at: it goes straight to the bake.
    first = State.BAKING if weights[0] >= 100 else State.PROGRESSING
    state = State.PENDING_APPROVAL if needs_approval else first
    reason = "waiting for approval of the first step" if needs_approval else "started"
    weight = 0 if needs_approval else weights[0]
    return Release(
        id=release_id,
        number=number,
        service=service,
        version=version,
        stable_version=stable_version,
        strategy=strategy,
        risk=risk,
        weights=weights,
        holds=holds,
        interval=interval,
        bake=bake,
        intervals=list(intervals or []),
        approval_steps=list(approval_steps or []),
        notes=notes,
        state=state,
        step=0,
        weight=weight,
        awaiting_step=0 if needs_approval else None,
        requested_by=actor.user,
        surface=actor.surface,
        created_at=now,
        step_started_at=now,
        updated_at=now,
        last=Transition(
            action=Action.START,
            state=state,
            by=actor.user,
            surface=actor.surface,
            at=now,
            reason=reason,
        ),
    )
