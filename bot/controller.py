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

from bot import rollout
from bot.actuator import TrafficActuator
from bot.decision import Decision, Verdict, decide
from bot.durations import prometheus_range
from bot.metrics.base import MetricQuery, MetricSource, QueryResult, Side
from bot.metrics.synthetic import REQUESTS_METRIC
from bot.notify import EventBus, EventKind, ReleaseEvent
from bot.policy import Policy, ServicePolicy, render_template
from bot.rollout import CONTROLLER, Release, State
from bot.store import AuditEntry, CommitStatus, Store
from bot.thresholds import CheckResult, judge

log = logging.getLogger(__name__)

ANALYZED = frozenset({State.PROGRESSING, State.PENDING_APPROVAL, State.PAUSED, State.BAKING})


@dataclass
class RoundStats:
    owned: int = 0
    evaluated: int = 0
    queries: int = 0
    decisions: dict[str, int] = field(default_factory=dict)


@dataclass
class _Plan:
    release: Release
    sp: ServicePolicy
    queries: list[MetricQuery]


class Controller:
    def __init__(
        self,
        store: Store,
        policy: Callable[[], Policy],
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
    ) -> None:
        self.store = store
        self._policy = policy
        self.source = source
        self.actuator = actuator
        self.events = events
        self.tick = tick
        self.lease_ttl = lease_ttl
        self.summary_every = summary_every
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.clock = clock
        self._sem = asyncio.Semaphore(concurrency)
        self._owned: set[str] = set()

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
            except Exception:
                # A dependency outage must not kill the loop: the next round tries again, and
                # the state in Redis is untouched by a failed round.
                log.exception("controller round failed")
            delay = max(0.0, self.tick - (time.monotonic() - started))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)
        await self.close()

    async def close(self) -> None:
        """Hand our releases over at once instead of making others wait for lease expiry."""
        if self._owned:
            try:
                await self.store.drop_leases(self.owner, sorted(self._owned))
            except Exception:
                log.warning("could not drop leases on shutdown; they expire in %ss", self.lease_ttl)
            self._owned.clear()

    async def run_once(self) -> RoundStats:
        stats = RoundStats()
        releases = await self.store.active_releases()
        tokens = await self.store.acquire_leases(
            self.owner, [r.id for r in releases], self.lease_ttl
        )
        self._owned = set(tokens)
        stats.owned = len(tokens)
        now = self.clock()
        policy = self._policy()
        plans: list[_Plan] = []
        for release in releases:
            if release.id not in tokens or self.actuator.busy(release.id):
                continue
            if release.state is State.ROLLING_BACK or release.applied_weight != release.weight:
                # Finish what a decision (ours or a dead process's) started.
                await self.actuator.sync(release, tokens[release.id])
                continue
            if release.state not in ANALYZED:
                continue
            if release.last_eval_at is not None and now - release.last_eval_at < release.interval:
                continue
            sp = policy.services.get(release.service)
            if sp is None:
                continue
            plans.append(_Plan(release, sp, _queries(release, sp)))
        if not plans:
            return stats
        all_queries = [q for p in plans for q in p.queries]
        stats.queries = len(all_queries)
        results = {r.key: r for r in await self.source.query(all_queries)}
        judged = [(p, self._judge(p, results)) for p in plans]
        # Rollbacks first: they must never wait behind bookkeeping of healthy releases.
        judged.sort(key=lambda pj: pj[1][1].verdict is not Verdict.ROLLBACK)
        await asyncio.gather(
            *(
                self._act(p, checks, decision, tokens[p.release.id], now, stats)
                for p, (checks, decision) in judged
            )
        )
        stats.evaluated = len(plans)
        return stats

    def _judge(
        self,
        plan: _Plan,
        results: dict[str, QueryResult],
    ) -> tuple[list[CheckResult], Decision]:
        release = plan.release
        requests = results.get(f"{release.id}|{REQUESTS_METRIC}|canary")
        req_value = requests.value if requests is not None else None
        checks = []
        for metric in plan.sp.metrics:
            canary = results[f"{release.id}|{metric.name}|canary"]
            control: QueryResult | float | None
            label = "control"
            if release.state is State.BAKING:
                control = release.baseline.get(metric.name)
                label = "baseline"
            else:
                control = results.get(f"{release.id}|{metric.name}|control")
            # Nothing to compare with (first release of a service, or no baseline recorded):
            # judge on the absolute rules alone rather than holding forever.
            required = control is not None
            checks.append(
                judge(
                    metric,
                    canary,
                    control,
                    req_value,
                    control_label=label,
                    require_control=required,
                )
            )
        return checks, decide(release, plan.sp.metrics, checks, self.clock())

    async def _act(
        self,
        plan: _Plan,
        checks: list[CheckResult],
        decision: Decision,
        fence: int,
        now: float,
        stats: RoundStats,
    ) -> None:
        async with self._sem:
            release = plan.release
            booked = release.model_copy(
                update={
                    "counters": decision.counters,
                    "last_checks": [c.to_dict() for c in checks],
                    "last_eval_at": now,
                    "evaluations": release.evaluations + 1,
                    "clean_checks_in_step": release.clean_checks_in_step + 1
                    if decision.clean
                    else 0,
                }
            )
            verdict = decision.verdict
            try:
                new, event = _apply(booked, decision, now)
            except Exception as exc:  # an illegal move is a bug; hold and say so
                log.error("%s: cannot %s: %s", release.label, verdict.value, exc)
                new, event, verdict = booked, None, Verdict.HOLD
            audit = AuditEntry.transition(
                f"decision:{verdict.value}",
                CONTROLLER,
                release,
                new,
                reason=decision.reason,
                detail={"weight": release.weight, "checks": [_compact(c) for c in checks]},
            )
            result = await self.store.commit(
                new, expected_rev=release.rev, audit=audit, fence=fence
            )
            stats.decisions[verdict.value] = stats.decisions.get(verdict.value, 0) + 1
            if result.status is not CommitStatus.OK or result.current is None:
                # Someone else won (a human command, or another controller after our lease
                # lapsed): drop this round; the next one re-reads and judges again.
                log.info("%s: %s not committed (%s)", release.label, verdict.value, result.status)
                return
            current = result.current
            if event is not None:
                self.events.emit(ReleaseEvent(event[0], current, event[1], checks=new.last_checks))
            elif self.summary_every and current.evaluations % self.summary_every == 0:
                self.events.emit(
                    ReleaseEvent(
                        EventKind.METRICS_SUMMARY, current, decision.reason, checks=new.last_checks
                    )
                )
            if current.applied_weight != current.weight or current.state is State.ROLLING_BACK:
                await self.actuator.sync(current, fence)


def _apply(r: Release, d: Decision, now: float) -> tuple[Release, tuple[EventKind, str] | None]:
    if d.verdict is Verdict.ROLLBACK:
        return (
            rollout.start_rollback(r, CONTROLLER, now, d.reason),
            (EventKind.ROLLBACK_STARTED, f"rolling back automatically: {d.reason}"),
        )
    if d.verdict is Verdict.PAUSE:
        return rollout.pause(r, CONTROLLER, now, d.reason), (EventKind.PAUSED, d.reason)
    if d.verdict is Verdict.ADVANCE:
        new = rollout.advance(r, CONTROLLER, now, d.reason)
        if new.state is State.BAKING:
            return new, (
                EventKind.BAKING,
                f"at 100%; baking for {new.bake:.0f}s against the pre-release baseline",
            )
        return new, (
            EventKind.STEP_ADVANCED,
            f"advanced to {new.weight}% (step {new.step + 1}/{len(new.weights)}): {d.reason}",
        )
    if d.verdict is Verdict.REQUEST_APPROVAL:
        new = rollout.request_approval(r, CONTROLLER, now, d.reason)
        nxt = new.weights[new.awaiting_step or 0]
        return new, (EventKind.APPROVAL_NEEDED, f"hold passed at {r.weight}%; approve {nxt}%")
    if d.verdict is Verdict.SUCCEED:
        new = rollout.succeed(r, CONTROLLER, now)
        total = now - r.created_at
        return new, (EventKind.SUCCEEDED, f"{r.version} is live for everyone; took {total:.0f}s")
    return r, None


def _queries(release: Release, sp: ServicePolicy) -> list[MetricQuery]:
    out: list[MetricQuery] = []

    def add(name: str, template: str, window: float, side: Side, version: str) -> None:
        promql = render_template(
            template, service=release.service, version=version, window=prometheus_range(window)
        )
        out.append(
            MetricQuery(
                key=f"{release.id}|{name}|{side.value}",
                promql=promql,
                metric=name,
                service=release.service,
                version=version,
                side=side,
            )
        )

    baking = release.state is State.BAKING
    for m in sp.metrics:
        window = m.window or sp.window
        add(m.name, m.query, window, Side.CANARY, release.version)
        if not baking and release.stable_version:
            add(m.name, m.query, window, Side.CONTROL, release.stable_version)
    if any(m.min_requests for m in sp.metrics):
        add(REQUESTS_METRIC, sp.requests_query, sp.window, Side.CANARY, release.version)
    return out


def _compact(check: CheckResult) -> dict[str, object]:
    return {
        "metric": check.metric,
        "outcome": check.outcome.value,
        "canary": check.canary,
        "control": check.control,
        "limit": check.limit,
    }
