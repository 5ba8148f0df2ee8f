"""The loop that drives every active release: judge, decide, commit, move traffic.

Several bot processes may share one Redis. Each release is driven by exactly one of them: the
holder of its lease, whose fencing token every commit checks. A process that dies stops renewing;
its leases expire after ``lease_ttl`` and another process takes over from the record in Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bot.engine.actuator import TrafficActuator
from bot.engine.ci_jobs import HookSubject
from bot.engine.completion import completion_summary
from bot.engine.events import EventBus, EventKind, ReleaseEvent
from bot.engine.hooks import HookRunner, gated, held_by_hooks
from bot.errors import DependencyError, StoreError
from bot.judging import analysis
from bot.judging.decision import Decision, Verdict, decide
from bot.metrics.base import MetricQuery, MetricSource, QueryResult, SeriesResult
from bot.observe import telemetry
from bot.observe.logs import log_context
from bot.release import rollout
from bot.release.checks import CheckResult, ScoreRecord
from bot.release.hook_runs import HookRun
from bot.release.policy import Policy, ServicePolicy
from bot.release.rollout import CONTROLLER, Release, State
from bot.store.audit import AuditEntry
from bot.store.store import CommitStatus, Store

log = logging.getLogger(__name__)
# Series points of one release (both sides, every metric) from which its judgement runs in a
# worker thread: above it the statistical judge takes milliseconds (bench/judge_bench.py).
OFF_LOOP_POINTS = 2_000

ANALYZED = frozenset({State.PROGRESSING, State.PENDING_APPROVAL, State.PAUSED, State.BAKING})


@dataclass
class RoundStats:
    owned: int = 0
    evaluated: int = 0
    queries: int = 0
    decisions: dict[str, int] = field(default_factory=dict)


class Controller:
    def __init__(
        self,
        store: Store,
        policy: Policy,
        source: MetricSource,
        actuator: TrafficActuator,
        events: EventBus,
        *,
        tick: float = 1.0,
        lease_ttl: float = 10.0,
        summary_every: int = 4,
        owner: str | None = None,
        clock: Callable[[], float] = time.time,
        concurrency: int = 64,
        hooks: HookRunner | None = None,
    ) -> None:
        self.store = store
        self.policy = policy
        self.source = source
        self.actuator = actuator
        self.events = events
        self.tick = tick
        self.lease_ttl = lease_ttl
        self.summary_every = summary_every
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.clock = clock
        self._sem = asyncio.Semaphore(concurrency)
        self.hooks = hooks or HookRunner(store.hook_runs)
        self._owned: set[str] = set()
        # A failing dependency fails every round until it is back: said once, not each tick.
        self._failing: str = ""  # the kind of failure under way ("" when rounds work)
        self._failed_rounds = 0
        self._failing_since = 0.0

    @property
    def owned(self) -> frozenset[str]:
        """Ids of the releases this process drove in its last round."""
        return frozenset(self._owned)

    async def run(self, stop: asyncio.Event) -> None:
        """Round after round until ``stop`` is set; the current round always finishes."""
        log.info(
            "controller %s started (tick %ss, lease %ss)", self.owner, self.tick, self.lease_ttl
        )
        while not stop.is_set():
            started = time.monotonic()
            try:
                await self.run_once()
            except Exception as exc:
                # A dependency outage must not kill the loop: the next round tries again, and
                # the state in Redis is untouched by a failed round.
                self._round_failed(exc)
            else:
                self._round_worked()
            delay = max(0.0, self.tick - (time.monotonic() - started))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)
        # Traffic changes started under our leases should be recorded under them: once the
        # leases are dropped their commits are fenced (and redone by the next holder). Not
        # longer than a lease lives: a crashed process would have been replaced by then.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.actuator.drain(), self.lease_ttl)
        await self.hooks.close()
        await self.close()

    def _round_failed(self, exc: Exception) -> None:
        self._failed_rounds += 1
        kind = type(exc).__name__
        if kind == self._failing:
            log.debug("controller round failed again (%s): %s", kind, exc)
            return
        self._failing, self._failing_since = kind, time.monotonic()
        if isinstance(exc, DependencyError):
            log.error("controller rounds are failing: %s (said once until they work again)", exc)
        else:
            log.exception("controller round failed (said once until rounds work again)")

    def _round_worked(self) -> None:
        if not self._failing:
            return
        log.info(
            "controller rounds work again after %d failed round(s) over %.0fs (%s)",
            self._failed_rounds,
            time.monotonic() - self._failing_since,
            self._failing,
        )
        self._failing, self._failed_rounds = "", 0

    async def _record_point(self, release: Release, checks: list[CheckResult], now: float) -> None:
        # For charts and diagnoses only: losing a point must never fail a round.
        try:
            await self.store.append_point(release.id, _point(checks, now, release.weight))
        except StoreError as exc:
            log.warning("%s: data point not recorded: %s", release.label, exc)

    async def close(self) -> bool:
        """Hand our releases over at once instead of making others wait for lease expiry.
        False when the leases could not be dropped (they expire by themselves then)."""
        if not self._owned:
            return True
        owned = sorted(self._owned)
        try:
            dropped = await self.store.drop_leases(self.owner, owned)
        except Exception:
            log.warning("could not drop leases on shutdown; they expire in %ss", self.lease_ttl)
            return False
        self._owned.clear()
        log.info(
            "handed over %d release(s): their leases are dropped",
            dropped,
            extra={"releases": owned},
        )
        return True

    async def run_once(self) -> RoundStats:
        stats = RoundStats()
        releases = await self.store.active_releases()
        tokens = await self.store.acquire_leases(
            self.owner, [r.id for r in releases], self.lease_ttl
        )
        self._owned = set(tokens)
        stats.owned = len(tokens)
        await self.hooks.retain(tokens)
        now = self.clock()
        policy = self.policy
        plans: list[analysis.Plan] = []
        for release in releases:
            if release.id not in tokens or self.actuator.busy(release.id):
                continue
            if release.state is State.ROLLING_BACK or release.applied_weight != release.weight:
                # Finish what a decision (ours or a dead process's) started.
                with log_context(release_id=release.id, service=release.service):
                    await self.actuator.sync(release, tokens[release.id])
                continue
            if release.state not in ANALYZED:
                continue
            due = release.step_interval  # a step may be judged more or less often
            if release.last_eval_at is not None and now - release.last_eval_at < due:
                continue
            sp = policy.services.get(release.service)
            if sp is None:
                continue
            plans.append(analysis.plan(release, sp, at=now))
        plans = await self._reconciled(plans, tokens)
        if not plans:
            return stats
        instant, series = await self._ask(plans, now, stats)
        judged = [(p, await self._judged(p, instant, series)) for p in plans]
        # Rollbacks first: they must never wait behind bookkeeping of healthy releases.
        judged.sort(key=lambda pj: pj[1][1].verdict is not Verdict.ROLLBACK)
        await asyncio.gather(
            *(
                self._act(p, result, decision, tokens[p.release.id], now, stats)
                for p, (result, decision) in judged
            )
        )
        stats.evaluated = len(plans)
        return stats

    async def _reconciled(
        self, plans: list[analysis.Plan], tokens: dict[str, int]
    ) -> list[analysis.Plan]:
        """The plans whose engine applies what their record says; the others are repaired
        (or paused when the engine cannot be read) and judged next round."""

        async def agrees(p: analysis.Plan) -> bool:
            with log_context(release_id=p.release.id, service=p.release.service):
                return await self.actuator.reconcile(p.release, tokens[p.release.id])

        verdicts = await asyncio.gather(*(agrees(p) for p in plans))
        return [p for p, ok in zip(plans, verdicts, strict=True) if ok]

    async def _ask(
        self, plans: list[analysis.Plan], now: float, stats: RoundStats
    ) -> tuple[dict[str, QueryResult], dict[str, SeriesResult]]:
        """Every query of every due release, in as few requests as the source allows."""
        instant_queries = [q for p in plans for q in p.instant]
        by_window: dict[tuple[float, float], list[MetricQuery]] = {}
        for p in plans:
            for sq in p.series:
                by_window.setdefault((sq.lookback, sq.step), []).append(sq.query)
        stats.queries = len(instant_queries) + sum(len(v) for v in by_window.values())
        windows = list(by_window.items())
        instant_answer, series_answers = await asyncio.gather(
            self.source.query(instant_queries),
            asyncio.gather(
                *(
                    self.source.query_series(queries, now - lookback, now, step)
                    for (lookback, step), queries in windows
                )
            ),
        )
        instant = {r.key: r for r in instant_answer}
        series = {r.key: r for answer in series_answers for r in answer}
        return instant, series

    async def _judged(
        self,
        p: analysis.Plan,
        instant: dict[str, QueryResult],
        series: dict[str, SeriesResult],
    ) -> tuple[analysis.Analysis, Decision]:
        """The plan judged: on the loop for short series, in a worker thread for long ones, so
        judging minutes of fine-grained samples never delays Slack or another release."""
        points = sum(len(series[q.query.key].values) for q in p.series if q.query.key in series)
        if points >= OFF_LOOP_POINTS:
            return await asyncio.to_thread(self._judge, p, instant, series)
        return self._judge(p, instant, series)

    def _judge(
        self,
        p: analysis.Plan,
        instant: dict[str, QueryResult],
        series: dict[str, SeriesResult],
    ) -> tuple[analysis.Analysis, Decision]:
        result = analysis.analyse(p, instant, series)
        decision = decide(
            p.release,
            p.metrics,
            result.checks,
            self.clock(),
            score=result.score,
            score_failure_limit=p.sp.score.failure_limit,
            resume_after_rounds=p.sp.resume_after_rounds,
        )
        return result, decision

    async def _act(
        self,
        plan: analysis.Plan,
        result: analysis.Analysis,
        decision: Decision,
        fence: int,
        now: float,
        stats: RoundStats,
    ) -> None:
        # Every line logged about this release carries its id; gather runs each release in
        # its own task (a copy of the context), so concurrent releases never mix their ids.
        with log_context(release_id=plan.release.id, service=plan.release.service):
            async with self._sem:
                release = plan.release
                checks = result.checks
                judged = decision
                decision, hook_run = await self._hook_gate(release, plan.sp, decision)
                score = score_record(result.score)
                booked = release.model_copy(
                    update={
                        "counters": decision.counters,
                        "last_checks": list(checks),
                        "last_score": score,
                        "last_eval_at": now,
                        "evaluations": release.evaluations + 1,
                        "clean_checks_in_step": release.clean_checks_in_step + 1
                        if decision.clean
                        else 0,
                        "readable_rounds": decision.readable_rounds,
                        "step_points": result.step_points,
                        "waiting_on": held_by_hooks(judged, decision),
                    }
                )
                verdict = decision.verdict
                try:
                    new, event = carry_out(booked, decision, now)
                except Exception as exc:  # an illegal move is a bug; hold and say so
                    log.error("%s: cannot %s: %s", release.label, verdict.value, exc)
                    new, event, verdict = booked, None, Verdict.HOLD
                if verdict is Verdict.SUCCEED:
                    # The record that ends the release keeps what it went through.
                    summary = await completion_summary(self.store, new, plan.sp.metrics)
                    new = new.model_copy(update={"summary": summary})
                detail: dict[str, Any] = {
                    "weight": release.weight,
                    "checks": [_compact(c) for c in checks],
                    "score": score.to_dict() if score else None,
                }
                hooks_said = hook_run is not None and self.hooks.is_new(hook_run)
                if hook_run is not None and hooks_said:
                    detail["hooks"] = hook_run.to_dict()  # each run audited once
                audit = AuditEntry.transition(
                    f"decision:{verdict.value}",
                    CONTROLLER,
                    release,
                    new,
                    reason=decision.reason,
                    detail=detail,
                )
                committed = await self.store.commit(
                    new, expected_rev=release.rev, audit=audit, fence=fence
                )
                stats.decisions[verdict.value] = stats.decisions.get(verdict.value, 0) + 1
                telemetry.DECISIONS.labels(verdict.value).inc()
                if committed.status is not CommitStatus.OK or committed.current is None:
                    # Someone else won (a human command, or another controller after our lease
                    # lapsed): drop this round; the next one re-reads and judges again.
                    log.info(
                        "%s: %s not committed (%s)", release.label, verdict.value, committed.status
                    )
                    return
                current = committed.current
                # One line per decision, tied to the release by the log context: with the
                # transitions, a release's whole story in the log.
                log.info(
                    "%s: %s at %d%%: %s",
                    release.label,
                    verdict.value,
                    release.weight,
                    decision.reason,
                    extra={"decision": verdict.value},
                )
                await self._record_point(current, checks, now)
                if hook_run is not None and hooks_said:
                    await self.hooks.mark_reported(hook_run)
                    passed = EventKind.HOOKS_PASSED if hook_run.passed else EventKind.HOOK_FAILED
                    self.events.emit(ReleaseEvent(passed, current, verdict.value, hooks=hook_run))
                if event is not None:
                    self.events.emit(
                        ReleaseEvent(event[0], current, event[1], checks=new.last_checks)
                    )
                elif self.summary_every and current.evaluations % self.summary_every == 0:
                    self.events.emit(
                        ReleaseEvent(
                            EventKind.METRICS_SUMMARY,
                            current,
                            decision.reason,
                            checks=new.last_checks,
                        )
                    )
                if current.applied_weight != current.weight or current.state is State.ROLLING_BACK:
                    await self.actuator.sync(current, fence)

    async def _hook_gate(
        self, release: Release, sp: ServicePolicy, decision: Decision
    ) -> tuple[Decision, HookRun | None]:
        """The decision once the hooks before the next step are asked about (they start on the
        step's first round, so a load hook gives the judge data while the step is judged), and
        their finished run (None while they run, or when the next step has none)."""
        if release.state is not State.PROGRESSING or release.is_last_step:
            return decision, None
        subject = HookSubject(
            release.id,
            release.service,
            release.version,
            release.stable_version,
            release.step + 1,
            release.weights[release.step + 1],
        )
        hooks = sp.hooks_before(release.strategy, subject.weight)
        if not hooks:
            return decision, None
        run = self.hooks.status(subject, hooks)
        gate = gated(decision, run, subject.weight)
        if run is not None and not run.passed:
            # A held step runs its hooks again after the step's hold; a paused or rolled-back
            # release forgets them, so that a resume runs them afresh.
            acted = gate.verdict in (Verdict.PAUSE, Verdict.ROLLBACK)
            if acted or time.time() - run.finished_at >= max(release.hold, 1.0):
                await self.hooks.forget(release.id, subject.step)
        return gate, run


def _point(checks: list[CheckResult], now: float, weight: int) -> dict[str, Any]:
    return {
        "t": round(now, 3),
        "weight": weight,
        "m": {c.metric: [c.canary, c.control, c.outcome.value] for c in checks},
    }


def carry_out(r: Release, d: Decision, now: float) -> tuple[Release, tuple[EventKind, str] | None]:
    """The release after a decision, and the event (its kind and detail) that tells the
    thread about it (pure)."""
    if d.verdict is Verdict.ROLLBACK:
        return rollout.start_rollback(r, CONTROLLER, now, d.reason), (
            EventKind.ROLLBACK_STARTED,
            d.reason,
        )
    if d.verdict is Verdict.PAUSE:
        paused = rollout.pause(r, CONTROLLER, now, d.reason)
        return paused.model_copy(update={"paused_for_outage": d.outage}), (
            EventKind.PAUSED,
            d.reason,
        )
    if d.verdict is Verdict.RESUME:
        return rollout.resume(r, CONTROLLER, now), (EventKind.RESUMED, d.reason)
    if d.verdict is Verdict.ADVANCE:
        new = rollout.advance(r, CONTROLLER, now, d.reason)
        if new.state is State.BAKING:
            return new, (EventKind.BAKING, d.reason)
        return new, (EventKind.STEP_ADVANCED, d.reason)
    if d.verdict is Verdict.REQUEST_APPROVAL:
        new = rollout.request_approval(r, CONTROLLER, now, d.reason)
        return new, (EventKind.APPROVAL_NEEDED, "")
    if d.verdict is Verdict.SUCCEED:
        return rollout.succeed(r, CONTROLLER, now), (EventKind.SUCCEEDED, "")
    return r, None


def score_record(score: analysis.ScoreResult | None) -> ScoreRecord | None:
    """The canary score as kept on the release (``last_score``) and in the audit."""
    if score is None:
        return None
    return ScoreRecord(value=round(score.value, 2), verdict=score.verdict.value, text=score.text)


def _compact(check: CheckResult) -> dict[str, object]:
    return {
        "metric": check.metric,
        "outcome": check.outcome.value,
        "canary": check.canary,
        "control": check.control,
        "limit": check.limit,
    }
