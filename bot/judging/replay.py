"""The product's judgement replayed over recorded history. Pure.

A round here is a controller round: ``analysis.plan`` → the answers → ``analysis.analyse`` →
``decision.decide`` → the same bookkeeping on the release (counters, last checks), with the
release moved by the state machine of ``bot.release.rollout``. Only the answers differ: they
come from a :class:`Lens` on the recorded history instead of from Prometheus now.

Two ways to drive a release:

* :func:`simulate` follows its own decisions, as the controller would (advance when the hold
  passed with every check green, bake, succeed), from a start until it rolls back, pauses,
  succeeds or the history ends. The A/A windows and the injected faults run this way.
  Approvals are taken as given at once (a person's wait says nothing about the metrics).
* :func:`replay` follows a past release's recorded steps (from the audit) and asks, round by
  round, what the policy under test would have decided, until that release left its canary.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from bot.judging.analysis import Analysis, Plan, analyse, metrics_for, plan
from bot.judging.decision import SCORE_COUNTER, Decision, Verdict, decide
from bot.judging.effects import Effect
from bot.judging.history import History
from bot.metrics.base import QueryResult, SeriesResult, Side
from bot.release import rollout
from bot.release.checks import Outcome
from bot.release.plan import plan_release, step_settings
from bot.release.policy import ServicePolicy
from bot.release.request import DeployOptions
from bot.release.rollout import Actor, Release, State, Surface

RunOutcome = Literal["rolled_back", "succeeded", "paused", "unfinished"]
# Who moves a simulated release: never written anywhere, but the state machine wants an actor.
BACKTEST = Actor(user="backtest", surface=Surface.CONTROLLER)
# A runaway guard: a ladder that holds forever on a long history stops here ("unfinished").
MAX_ROUNDS = 100_000


@dataclass(frozen=True)
class Lens:
    """How one round reads the history. The control side reads it at the round's time; the
    canary side ``shift`` seconds earlier (the A/A split in time, 0 for a real release), with
    ``effects`` applied to its values (an injected fault)."""

    history: History
    shift: float = 0.0
    effects: Mapping[str, Effect] = field(default_factory=dict)

    def answers(
        self, p: Plan, now: float
    ) -> tuple[dict[str, QueryResult], dict[str, SeriesResult]]:
        instant: dict[str, QueryResult] = {}
        for q in p.instant:
            value = self.history.at(q.promql, self._moment(q.side, now))
            instant[q.key] = (
                QueryResult.no_data(q, "the history has no sample at that time")
                if value is None
                else QueryResult.ok(q, self._effect(q.side, q.metric, value))
            )
        series: dict[str, SeriesResult] = {}
        for sq in p.series:
            q = sq.query
            values = self.history.between(q.promql, self._moment(q.side, now), sq.lookback, sq.step)
            series[q.key] = SeriesResult.ok(q, [self._effect(q.side, q.metric, v) for v in values])
        return instant, series

    def _moment(self, side: Side, now: float) -> float:
        return now - self.shift if side is Side.CANARY else now

    def _effect(self, side: Side, metric: str, value: float) -> float:
        effect = self.effects.get(metric) if side is Side.CANARY else None
        return effect.apply(value) if effect is not None else value


@dataclass(frozen=True)
class Round:
    """One judged round: when, where the release stood, and what the policy decided."""

    at: float
    step: int
    weight: int
    state: str
    verdict: str
    reason: str
    failing: tuple[str, ...] = ()  # counted checks (and the score) that failed
    no_data: tuple[str, ...] = ()  # counted checks without a verdict
    judged: int = 0  # counted checks that passed or failed

    @property
    def informative(self) -> bool:
        """Whether anything was judged: some counted check had a verdict."""
        return self.judged > 0


@dataclass(frozen=True)
class Run:
    """A release judged from ``start``: its rounds, and how it ended (at its last round)."""

    start: float
    outcome: RunOutcome
    reason: str
    rounds: tuple[Round, ...]
    end: float

    @property
    def rolled_back(self) -> bool:
        return self.outcome == "rolled_back"

    @property
    def seconds(self) -> float:
        return self.end - self.start

    @property
    def informative(self) -> bool:
        return any(r.informative for r in self.rounds)

    @property
    def failed_rounds(self) -> int:
        return sum(bool(r.failing) for r in self.rounds)

    @property
    def ended_at(self) -> Round | None:
        return self.rounds[-1] if self.rounds else None


# The analyses of one policy variant on one lens, by round: the failure limits do not enter
# the analysis (only the decision), so variants differing only in them share it.
AnalysisCache = MutableMapping[tuple[object, ...], Analysis]


@dataclass
class Judge:
    """Judges rounds of one service's releases under one policy, reading through one lens."""

    sp: ServicePolicy
    lens: Lens
    cache: AnalysisCache = field(default_factory=dict)

    def round(self, release: Release, now: float) -> tuple[Analysis, Decision]:
        key: tuple[object, ...] = (
            now,
            release.version,
            release.stable_version,
            release.state,
            release.step,
            tuple(sorted(release.baseline.items())),
        )
        if any(m.uses_step_rules for m in metrics_for(release, self.sp)):
            # The canary's own past (the step's points, the previous step's end) enters too.
            key = (*key, release.step_started_at, repr(sorted(release.step_ends.items())))
        analysis = self.cache.get(key)
        if analysis is None:
            p = plan(release, self.sp, at=now)
            analysis = analyse(p, *self.lens.answers(p, now))
            self.cache[key] = analysis
        decision = decide(
            release,
            metrics_for(release, self.sp),
            analysis.checks,
            now,
            score=analysis.score,
            score_failure_limit=self.sp.score.failure_limit,
            resume_after_rounds=self.sp.resume_after_rounds,
        )
        return analysis, decision


def start_release(
    sp: ServicePolicy, service: str, version: str, stable: str, now: float
) -> Release:
    """A release as ``/deploy`` would create it (the policy's steps and holds), moving users:
    a high-risk first step is approved at once."""
    # The ladder alone: it does not depend on the versions (which plan_release would refuse
    # as equal in an A/A pair).
    p = plan_release(sp, service, "next", DeployOptions(stable="current"), [])
    intervals, approval_steps = step_settings(sp, p.weights)
    release = rollout.new_release(
        release_id=f"backtest-{service}",
        number=0,
        service=service,
        version=version,
        stable_version=stable,
        weights=p.weights,
        holds=p.holds,
        interval=sp.interval,
        bake=sp.bake,
        strategy=p.strategy,
        risk=p.risk,
        notes="",
        actor=BACKTEST,
        now=now,
        intervals=intervals,
        approval_steps=approval_steps,
    )
    if release.state is State.PENDING_APPROVAL:
        release = rollout.approve(release, BACKTEST, now)
    return release


def booked(release: Release, analysis: Analysis, decision: Decision, now: float) -> Release:
    """The release after a round, before any move: what the controller records every round."""
    return release.model_copy(
        update={
            "counters": decision.counters,
            "last_checks": list(analysis.checks),
            "last_eval_at": now,
            "evaluations": release.evaluations + 1,
            "clean_checks_in_step": release.clean_checks_in_step + 1 if decision.clean else 0,
            "readable_rounds": decision.readable_rounds,
            "step_points": analysis.step_points,
        }
    )


def round_of(release: Release, analysis: Analysis, decision: Decision, now: float) -> Round:
    counted = [c for c in analysis.checks if not c.dry_run]
    failing = [c.metric for c in counted if c.outcome is Outcome.FAIL]
    if analysis.score is not None and analysis.score.verdict.value == "fail":
        failing.append(SCORE_COUNTER)
    return Round(
        at=now,
        step=release.step,
        weight=release.weight,
        state=release.state.value,
        verdict=decision.verdict.value,
        reason=decision.reason,
        failing=tuple(failing),
        no_data=tuple(c.metric for c in counted if c.outcome is Outcome.NO_DATA),
        judged=sum(c.outcome in (Outcome.PASS, Outcome.FAIL) for c in counted),
    )


def simulate(
    judge: Judge, *, service: str, version: str, stable: str, start: float, until: float
) -> Run:
    """A whole release from ``start``, following its own decisions: a round at the start (the
    controller judges a new release at its next tick) and one every interval after it."""
    release = start_release(judge.sp, service, version, stable, start)
    rounds: list[Round] = []
    # Rounds come every interval of the step the release is at (a step may set its own);
    # counted from where the interval last changed, so times stay exact multiples.
    base, k, interval = start, 0, release.step_interval
    for _ in range(MAX_ROUNDS):
        now = base + k * interval
        if now > until:
            break
        analysis, decision = judge.round(release, now)
        rounds.append(round_of(release, analysis, decision, now))
        release = booked(release, analysis, decision, now)
        verdict = decision.verdict
        if verdict is Verdict.ROLLBACK:
            return Run(start, "rolled_back", decision.reason, tuple(rounds), now)
        if verdict is Verdict.PAUSE:
            return Run(start, "paused", decision.reason, tuple(rounds), now)
        if verdict is Verdict.SUCCEED:
            return Run(start, "succeeded", decision.reason, tuple(rounds), now)
        if verdict is Verdict.ADVANCE:
            release = rollout.advance(release, BACKTEST, now, decision.reason)
        elif verdict is Verdict.REQUEST_APPROVAL:
            asked = rollout.request_approval(release, BACKTEST, now, decision.reason)
            release = rollout.approve(asked, BACKTEST, now)
        k += 1
        if release.step_interval != interval:
            base, k, interval = now, 1, release.step_interval
    end = rounds[-1].at if rounds else start
    return Run(start, "unfinished", "the history ended first", tuple(rounds), end)


@dataclass(frozen=True)
class StepMove:
    """A past release reached step ``step`` (an index into its weights) at ``at``."""

    at: float
    step: int


def replay(
    judge: Judge,
    *,
    service: str,
    version: str,
    stable: str,
    weights: Sequence[int],
    start: float,
    moves: Sequence[StepMove],
    until: float,
) -> Run:
    """What the policy would have decided at each round of a past release whose steps were
    taken at the recorded times, from ``start`` until it left its canary (``until``)."""
    release = _with_weights(
        start_release(judge.sp, service, version, stable, start), weights, judge.sp
    )
    pending = sorted(moves, key=lambda m: m.at)
    rounds: list[Round] = []
    base, k, interval = start, 0, release.step_interval  # as in simulate
    for _ in range(MAX_ROUNDS):
        now = base + k * interval
        if now > until:
            break
        while pending and pending[0].at <= now:
            release = _moved_to(release, pending.pop(0))
        analysis, decision = judge.round(release, now)
        rounds.append(round_of(release, analysis, decision, now))
        release = booked(release, analysis, decision, now)
        outcome = _final(decision.verdict)
        if outcome is not None:
            return Run(start, outcome, decision.reason, tuple(rounds), now)
        k += 1
        if release.step_interval != interval:
            base, k, interval = now, 1, release.step_interval
    end = rounds[-1].at if rounds else start
    why = "no rollback before the release left its canary"
    return Run(start, "unfinished", why, tuple(rounds), end)


def _final(verdict: Verdict) -> RunOutcome | None:
    finals: dict[Verdict, RunOutcome] = {
        Verdict.ROLLBACK: "rolled_back",
        Verdict.PAUSE: "paused",
        Verdict.SUCCEED: "succeeded",
    }
    return finals.get(verdict)


def _with_weights(release: Release, weights: Sequence[int], sp: ServicePolicy) -> Release:
    """The recorded ladder (a deploy may have had its own --steps), holds from the policy,
    and each step's interval and approval found by weight as a deploy finds them."""
    if list(weights) == release.weights or not weights:
        return release
    holds = [release.holds[0]] * len(weights)
    intervals, approval_steps = step_settings(sp, weights)
    return release.model_copy(
        update={
            "weights": list(weights),
            "holds": holds,
            "weight": weights[0],
            "step": 0,
            "intervals": intervals,
            "approval_steps": approval_steps,
        }
    )


def _moved_to(release: Release, move: StepMove) -> Release:
    """The release advanced (through the state machine) up to the recorded step."""
    while release.step < move.step and release.state is not State.BAKING:
        if release.state is State.PENDING_APPROVAL:
            release = rollout.approve(release, BACKTEST, move.at)
        else:
            release = rollout.advance(release, BACKTEST, move.at)
    return release
