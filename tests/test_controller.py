"""The controller against a real redis-server: real Store, FlagsBackend, TrafficActuator,
EventBus and the seeded SyntheticSource, driven round by round (or as a task), with short
intervals so whole releases run in a second or two."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, replace

import pytest
import redis.asyncio as aioredis

from bot.engine.actuator import TrafficActuator
from bot.engine.controller import Controller, RoundStats
from bot.engine.events import EventBus, EventKind
from bot.flags import FlagClient, FlagState, FlagWriter
from bot.metrics.base import MetricSource
from bot.metrics.synthetic import SyntheticSource
from bot.release.request import DeployOptions
from bot.release.rollout import Actor, Release, State
from bot.store import keys
from bot.traffic.webhook import WebhookBackend
from tests.support.gated_source import GatedSource
from tests.support.procs import free_port
from tests.support.release_rig import ReleaseRig

POLICY = """
defaults:
  steps: [1, 10, 25, 50, 100]
  hold: 300ms
  interval: 100ms
  window: 1s
  bake: 300ms
  metrics:
    - name: error_rate
      query: 'errors{service="{service}",version="{version}"}'
      max: 0.05
      max_diff: 0.01
      failure_limit: 3
    - name: latency_p99
      query: 'p99{service="{service}",version="{version}"}'
      max_ratio: 2
      critical: true
services:
  checkout: {}
  payments:
    risk: high
    approvers: [carol]
  ledger:
    deployers: [alice]
"""

TICK = 0.05
LEASE_TTL = 0.5
DEADLINE = 10.0  # generous bound on any single wait; a healthy release takes ~2s
ALICE = Actor(user="alice", surface="slack")
BOB = Actor(user="bob", surface="slack")
STABLE = DeployOptions(stable="v1")


@dataclass
class Rig(ReleaseRig):
    source: SyntheticSource
    controller: Controller
    cleanups: list[Callable[[], Awaitable[None]]]

    def controller_for(self, owner: str, source: MetricSource | None = None) -> Controller:
        """Another controller process on the same Redis: its own actuator, bus and source."""
        events = EventBus([])
        actuator = TrafficActuator(self.store, lambda _s: self.flags, events)
        self.cleanups += [actuator.close, events.close]
        metrics = source if source is not None else SyntheticSource(seed=2)
        return Controller(self.store, self.policy, metrics, actuator, events, tick=TICK,
                          lease_ttl=LEASE_TTL, owner=owner)

    async def get(self, release_id: str) -> Release:
        release = await self.store.get(release_id)
        assert release is not None
        return release

    async def lease(self, release_id: str) -> tuple[str, int]:
        """(owner, fencing token) of the release's lease."""
        raw = await self.store.redis.get(keys.lease(release_id))
        assert isinstance(raw, str), raw
        owner, token = raw.rsplit("|", 1)
        return owner, int(token)


@pytest.fixture
async def rig(redis_client: aioredis.Redis) -> AsyncIterator[Rig]:
    base = ReleaseRig.wire(redis_client, POLICY)
    source = SyntheticSource(seed=1)
    controller = Controller(base.store, base.policy, source, base.actuator, base.events,
                            tick=TICK, lease_ttl=LEASE_TTL, owner="a")
    base.events.start()
    rig = Rig(base.policy, base.store, base.flags, base.events, base.recorder, base.actuator,
              base.service, source, controller, [])
    yield rig
    for cleanup in reversed(rig.cleanups):
        await cleanup()
    await rig.close()


async def drive(rig: Rig, release_id: str, until: Callable[[Release], bool],
                controllers: Sequence[Controller] | None = None,
                on_round: Callable[[Release], None] | None = None) -> Release:
    """Run rounds of the controllers until ``until(release)``; fail after DEADLINE."""
    deadline = time.monotonic() + DEADLINE
    while True:
        release = await rig.get(release_id)
        if on_round is not None:
            on_round(release)
        if until(release):
            return release
        assert time.monotonic() < deadline, f"stuck: {release.describe_state()}"
        for controller in controllers or [rig.controller]:
            await controller.run_once()
        await asyncio.sleep(0.01)


async def one_evaluation(controller: Controller) -> RoundStats:
    """Rounds until one of them evaluates the release (the interval gates evaluations)."""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        stats = await controller.run_once()
        if stats.evaluated:
            return stats
        await asyncio.sleep(0.01)
    raise AssertionError("no evaluation within the deadline")


def is_done(release: Release) -> bool:
    return not release.is_active


async def assert_each_step_once(rig: Rig) -> None:
    """Each step was decided once and applied once: nothing lost, nothing doubled."""
    advances = await rig.audit("decision:advance")
    assert [e.detail["weight"] for e in advances] == [1, 10, 25, 50]  # the weight left
    assert [e.to_state for e in advances] == [State.PROGRESSING] * 3 + [State.BAKING]
    traffic = await rig.audit("traffic")
    assert [e.detail["weight"] for e in traffic] == [1, 10, 25, 50, 100]
    assert len(await rig.audit("decision:succeed")) == 1


# --- one controller -----------------------------------------------------------------------


async def test_healthy_release_walks_every_step_and_succeeds(rig: Rig) -> None:
    release = (await rig.service.deploy(ALICE, "checkout", "v2", STABLE)).release
    seen_pcts: list[int] = []

    async def watch_flag(r: Release) -> None:
        pct = await rig.flag_pct("checkout")
        assert pct is not None
        if not seen_pcts or seen_pcts[-1] != pct:
            seen_pcts.append(pct)
        # The flag never runs ahead of the record: it shows the applied weight.
        assert pct == r.applied_weight

    deadline = time.monotonic() + DEADLINE
    while (current := await rig.get(release.id)).is_active:
        await watch_flag(current)
        assert time.monotonic() < deadline, current.describe_state()
        await rig.controller.run_once()
        await asyncio.sleep(0.01)

    assert current.state is State.SUCCEEDED and current.finished_at is not None
    assert seen_pcts == [1, 10, 25, 50, 100]
    assert await rig.flag_pct("checkout") == 100
    assert await rig.store.active_for("checkout") is None
    assert current.baseline.keys() == {"error_rate", "latency_p99"}  # frozen at 100%
    await assert_each_step_once(rig)
    # Every step held for its hold, and the bake lasted its window.
    advances = await rig.audit("decision:advance")
    starts = [(await rig.audit("deploy"))[0].at] + [e.at for e in advances]
    for before, after in itertools.pairwise(starts):
        assert after - before >= 0.3 - 0.05
    [succeed] = await rig.audit("decision:succeed")
    assert succeed.at - advances[-1].at >= 0.3 - 0.05
    await rig.events.drain()
    assert rig.recorder.kinds().count(EventKind.STEP_ADVANCED) == 3
    assert [k for k in rig.recorder.kinds() if k is not EventKind.METRICS_SUMMARY
            and k is not EventKind.STEP_ADVANCED] == [
        EventKind.STARTED, EventKind.BAKING, EventKind.SUCCEEDED]


async def test_latency_fault_on_the_canary_rolls_back_at_the_next_check(rig: Rig) -> None:
    release = (await rig.service.deploy(ALICE, "checkout", "v2", STABLE)).release
    await drive(rig, release.id, lambda r: r.weight == 10 and r.applied_weight == 10)
    decisions_before = len(await rig.audit())

    rig.source.inject("checkout", "latency_p99", 5.0, version="v2")
    started = time.monotonic()
    done = await drive(rig, release.id, is_done)
    took = time.monotonic() - started

    assert done.state is State.ROLLED_BACK
    assert (done.weight, done.applied_weight, done.step) == (0, 0, 1)
    assert "latency_p99" in done.reason and "critical" in done.reason
    assert took < 1.0  # one interval (0.1s) to the next check, plus slack for a slow machine
    assert await rig.flag_pct("checkout") == 0
    after = (await rig.audit())[decisions_before:]
    assert after[0].action == "decision:rollback"  # the very first check after the fault
    rollback = after[0]
    assert (rollback.from_state, rollback.to_state) == (State.PROGRESSING, State.ROLLING_BACK)
    assert rollback.detail["weight"] == 10
    checks = {c["metric"]: c for c in rollback.detail["checks"]}
    latency = checks["latency_p99"]
    assert latency["outcome"] == "fail" and latency["limit"] == "ratio 2x"
    assert latency["canary"] > 2 * latency["control"] > 0
    assert checks["error_rate"]["outcome"] == "pass"
    [finished] = await rig.audit("rolled_back")
    assert finished.detail["rollback_seconds"] < 1.0
    await rig.events.drain()
    assert rig.recorder.kinds()[-2:] == [EventKind.ROLLBACK_STARTED, EventKind.ROLLED_BACK]


async def test_release_waiting_for_approval_still_rolls_back_on_a_fault(rig: Rig) -> None:
    release = (await rig.service.deploy(BOB, "payments", "v2", STABLE)).release
    assert release.state is State.PENDING_APPROVAL
    # Well past the hold, it keeps being judged and keeps waiting for a human.
    waiting = await drive(rig, release.id,
                          lambda r: r.evaluations >= 3 and time.time() - r.created_at > 0.4)
    assert (waiting.state, waiting.weight, waiting.applied_weight) == (
        State.PENDING_APPROVAL, 0, 0)
    assert await rig.flag_pct("payments") == 0

    rig.source.inject("payments", "latency_p99", 5.0, version="v2")
    done = await drive(rig, release.id, is_done)

    assert done.state is State.ROLLED_BACK and done.approvals == []
    assert "latency_p99" in done.reason
    assert await rig.flag_pct("payments") == 0
    [rollback] = await rig.audit("decision:rollback")
    assert rollback.from_state == State.PENDING_APPROVAL
    assert await rig.audit("decision:advance") == []


async def test_non_critical_failures_roll_back_only_at_the_failure_limit(rig: Rig) -> None:
    limit = next(m.failure_limit for m in rig.policy.service("checkout").metrics
                 if m.name == "error_rate")
    assert limit == 3
    release = (await rig.service.deploy(ALICE, "checkout", "v2", STABLE)).release
    rig.source.inject("checkout", "error_rate", 25.0, version="v2")

    for failures in range(1, limit):
        stats = await one_evaluation(rig.controller)
        assert stats.decisions == {"hold": 1}
        current = await rig.get(release.id)
        assert current.state is State.PROGRESSING and current.step == 0
        assert current.counters["error_rate"].consecutive_failures == failures
        assert current.counters["latency_p99"].consecutive_failures == 0

    stats = await one_evaluation(rig.controller)

    assert stats.decisions == {"rollback": 1}
    done = await rig.get(release.id)
    assert done.state is State.ROLLED_BACK
    assert f"{limit} consecutive failed check(s)" in done.reason
    assert await rig.flag_pct("checkout") == 0
    holds = await rig.audit("decision:hold")
    assert len(holds) == limit - 1
    assert all(e.reason.startswith("holding: error_rate") for e in holds)


async def test_one_passing_check_resets_the_consecutive_failures(rig: Rig) -> None:
    release = (await rig.service.deploy(ALICE, "checkout", "v2", STABLE)).release
    rig.source.inject("checkout", "error_rate", 25.0, version="v2")
    await one_evaluation(rig.controller)
    await one_evaluation(rig.controller)
    rig.source.clear("checkout")
    await one_evaluation(rig.controller)
    rig.source.inject("checkout", "error_rate", 25.0, version="v2")
    await one_evaluation(rig.controller)

    current = await rig.get(release.id)
    assert current.state is State.PROGRESSING
    assert current.counters["error_rate"].consecutive_failures == 1
    assert current.counters["error_rate"].total_failures == 3


async def test_fault_while_baking_is_judged_against_the_baseline(rig: Rig) -> None:
    release = (await rig.service.deploy(ALICE, "checkout", "v2", STABLE)).release
    baking = await drive(rig, release.id,
                         lambda r: r.state is State.BAKING and r.applied_weight == 100)
    baseline = baking.baseline["latency_p99"]
    assert 0.1 < baseline < 0.5  # the control's p99 just before 100%
    assert await rig.flag_pct("checkout") == 100

    rig.source.inject("checkout", "latency_p99", 5.0, version="v2")
    done = await drive(rig, release.id, is_done)

    assert done.state is State.ROLLED_BACK
    assert await rig.flag_pct("checkout") == 0  # everyone back on v1
    [rollback] = await rig.audit("decision:rollback")
    assert rollback.from_state == State.BAKING
    latency = next(c for c in rollback.detail["checks"] if c["metric"] == "latency_p99")
    assert latency["control"] == baseline and latency["canary"] > 2 * baseline
    assert "baseline" in done.reason


async def test_high_risk_release_waits_for_an_approval_at_every_step(rig: Rig) -> None:
    carol = Actor(user="carol", surface="slack")
    release = (await rig.service.deploy(BOB, "payments", "v2", STABLE)).release
    await rig.service.approve(carol, "payments")

    waiting = await drive(rig, release.id, lambda r: r.state is State.PENDING_APPROVAL)
    assert (waiting.step, waiting.weight, waiting.awaiting_step) == (0, 1, 1)
    # Long past the hold, nobody approved: it stays at 1%.
    await drive(rig, release.id, lambda r: time.time() - r.updated_at > 0.4)
    still = await rig.get(release.id)
    assert (still.state, still.weight) == (State.PENDING_APPROVAL, 1)
    assert await rig.flag_pct("payments") == 1

    approved = (await rig.service.approve(carol, "payments")).release

    assert (approved.state, approved.step, approved.weight) == (State.PROGRESSING, 1, 10)
    assert [(a.step, a.by) for a in approved.approvals] == [(0, "carol"), (1, "carol")]
    assert await rig.flag_pct("payments") == 10
    assert await rig.audit("decision:advance") == []
    assert len(await rig.audit("decision:request_approval")) == 1


async def test_paused_release_does_not_advance_and_resume_restarts_the_hold(rig: Rig) -> None:
    release = (await rig.service.deploy(ALICE, "checkout", "v2", STABLE)).release
    paused = (await rig.service.pause(BOB, "checkout", "checking a dashboard")).release

    # Judged all along, well past its hold, and never moved.
    still = await drive(rig, release.id,
                        lambda r: r.evaluations >= 4 and time.time() - paused.updated_at > 0.4)
    assert (still.state, still.step, still.weight) == (State.PAUSED, 0, 1)
    assert await rig.flag_pct("checkout") == 1

    resumed = (await rig.service.resume(BOB, "checkout")).release
    advanced = await drive(rig, release.id, lambda r: r.step == 1)

    [decision] = await rig.audit("decision:advance")
    assert decision.at - resumed.step_started_at >= 0.3 - 0.05  # a full hold after resume
    assert advanced.weight == 10


async def test_resume_restarts_consecutive_failures_but_keeps_the_total(rig: Rig) -> None:
    release = (await rig.service.deploy(ALICE, "checkout", "v2", STABLE)).release
    rig.source.inject("checkout", "error_rate", 25.0, version="v2")
    await one_evaluation(rig.controller)
    await rig.service.pause(BOB, "checkout", "looking")
    await one_evaluation(rig.controller)  # a paused release is still judged
    paused = await rig.get(release.id)
    assert paused.state is State.PAUSED
    assert paused.counters["error_rate"].consecutive_failures == 2

    resumed = (await rig.service.resume(BOB, "checkout")).release

    assert resumed.counters["error_rate"].consecutive_failures == 0
    assert resumed.counters["error_rate"].total_failures == 2


# --- several controllers ------------------------------------------------------------------


async def test_second_controller_takes_over_after_the_lease_expires(rig: Rig) -> None:
    a, b = rig.controller, rig.controller_for("b")
    release = (await rig.service.deploy(ALICE, "checkout", "v2", STABLE)).release

    def one_driver(_r: Release) -> None:
        # Both run every round, but only "a" holds the lease.
        assert release.id not in b.owned

    await drive(rig, release.id, lambda r: r.step == 2, controllers=[a, b], on_round=one_driver)
    assert release.id in a.owned
    owner_a, token_a = await rig.lease(release.id)
    assert owner_a == "a"

    # "a" stops (a crashed process: it just stops renewing). "b" waits for the lease to expire.
    stopped = time.monotonic()
    await drive(rig, release.id, lambda _r: release.id in b.owned, controllers=[b])
    assert time.monotonic() - stopped >= LEASE_TTL - 0.1
    owner_b, token_b = await rig.lease(release.id)
    assert owner_b == "b" and token_b > token_a

    done = await drive(rig, release.id, is_done, controllers=[b])

    assert done.state is State.SUCCEEDED
    assert await rig.flag_pct("checkout") == 100
    await assert_each_step_once(rig)


@pytest.mark.parametrize("how", ["cancel", "stop"])
async def test_running_controllers_hand_over_without_losing_or_doubling_a_step(
        rig: Rig, how: str) -> None:
    release = (await rig.service.deploy(ALICE, "checkout", "v2", STABLE)).release
    controllers = [rig.controller, rig.controller_for("b")]
    stops = [asyncio.Event(), asyncio.Event()]
    tasks = [asyncio.create_task(c.run(s)) for c, s in zip(controllers, stops, strict=True)]
    try:
        deadline = time.monotonic() + DEADLINE
        while (await rig.get(release.id)).step < 2:
            assert time.monotonic() < deadline
            owners = [c for c in controllers if release.id in c.owned]
            assert len(owners) <= 1
            await asyncio.sleep(0.02)
        owner = next(i for i, c in enumerate(controllers) if release.id in c.owned)
        other = controllers[1 - owner]

        stopped = time.monotonic()
        if how == "cancel":  # killed mid-flight: its lease has to expire
            tasks[owner].cancel()
        else:  # a clean shutdown drops the lease at once
            stops[owner].set()
        await asyncio.gather(tasks[owner], return_exceptions=True)
        while release.id not in other.owned:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        handover = time.monotonic() - stopped
        if how == "cancel":
            assert handover >= LEASE_TTL - 0.1
        else:
            assert handover < LEASE_TTL - 0.1

        while (current := await rig.get(release.id)).is_active:
            assert time.monotonic() < deadline, current.describe_state()
            await asyncio.sleep(0.02)
    finally:
        for stop in stops:
            stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)

    assert current.state is State.SUCCEEDED
    assert current.applied_weight == 100
    await assert_each_step_once(rig)


async def test_commit_of_a_controller_that_lost_its_lease_is_fenced(
        rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    source = GatedSource()
    a = rig.controller_for("a", source)
    release = (await rig.service.deploy(ALICE, "checkout", "v2", STABLE)).release
    await one_evaluation(a)
    token_a = (await rig.store.acquire_leases("a", [release.id], LEASE_TTL))[release.id]
    await asyncio.sleep(0.15)  # the next round evaluates

    source.armed = True
    round_a = asyncio.create_task(a.run_once())
    await asyncio.wait_for(source.entered.wait(), DEADLINE)
    # "a" stalls (GC pause, slow metrics) past its lease; "b" takes the release over.
    await asyncio.sleep(LEASE_TTL + 0.1)
    tokens_b = await rig.store.acquire_leases("b", [release.id], 5.0)
    assert tokens_b[release.id] > token_a
    before = await rig.get(release.id)
    audit_before = await rig.audit()

    caplog.set_level(logging.INFO, logger="bot.engine.controller")
    source.go.set()
    stats = await asyncio.wait_for(round_a, DEADLINE)

    # "a" judged the hold as passed and tried to advance; the commit was refused.
    assert stats.decisions == {"advance": 1}
    assert any("not committed (fenced)" in r.getMessage() for r in caplog.records)
    assert await rig.get(release.id) == before
    assert (before.step, before.weight) == (0, 1)
    assert await rig.audit() == audit_before
    assert await rig.flag_pct("checkout") == 1
    assert (await a.run_once()).owned == 0  # and it stays out


async def test_a_release_paused_because_metrics_were_unreadable_resumes_by_itself(
        rig: Rig) -> None:
    source = GatedSource()
    controller = rig.controller_for("a", source)
    release = (await rig.service.deploy(ALICE, "checkout", "v2", STABLE)).release

    source.unreadable = True  # Prometheus is gone
    paused = await drive(rig, release.id, lambda r: r.state is State.PAUSED, [controller])
    assert paused.paused_for_outage and paused.last.by == "shipwatch"
    source.unreadable = False  # and back
    resumed = await drive(rig, release.id, lambda r: r.state is not State.PAUSED, [controller])

    assert resumed.state is State.PROGRESSING and not resumed.paused_for_outage
    [pause] = await rig.audit("decision:pause")
    [resume] = await rig.audit("decision:resume")
    assert "readable again for 3 rounds" in resume.reason
    assert pause.at < resume.at


async def test_a_flag_changed_behind_the_controllers_back_is_set_again_and_said(
        rig: Rig, redis_client: aioredis.Redis) -> None:
    release = (await rig.service.deploy(ALICE, "checkout", "v2", STABLE)).release
    at_ten = await drive(rig, release.id, lambda r: r.applied_weight == 10)

    # Someone (a script, a restore of an old snapshot) puts the flag back to 0%.
    state = await rig.flags.flag("checkout")
    assert state is not None and state.pct == 10
    await FlagWriter(redis_client).publish(replace(state, pct=0, seq=0))
    assert await rig.flag_pct("checkout") == 0

    await drive(rig, release.id, lambda r: r.evaluations > at_ten.evaluations + 1)

    assert await rig.flag_pct("checkout") in (10, 25)  # repaired (and the release goes on)
    await rig.events.drain()
    [repaired] = [e for e in rig.recorder.events if e.kind is EventKind.TRAFFIC_REPAIRED]
    assert repaired.detail == "0"
    assert repaired.release.applied_weight == 10


async def test_an_engine_that_cannot_be_read_back_pauses_the_release(
        rig: Rig, redis_client: aioredis.Redis) -> None:
    release = (await rig.service.deploy(ALICE, "checkout", "v2", STABLE)).release
    dead = WebhookBackend(f"http://127.0.0.1:{free_port()}/hook",
                          read_url=f"http://127.0.0.1:{free_port()}/applied/{{service}}",
                          timeout=0.5)
    rig.cleanups.append(dead.close)
    actuator = TrafficActuator(rig.store, lambda _s: dead, rig.events)
    rig.cleanups.append(actuator.close)

    agrees = await actuator.reconcile(await rig.get(release.id), None)

    assert agrees is False
    paused = await rig.get(release.id)
    assert paused.state is State.PAUSED
    assert paused.reason.startswith("cannot read back the traffic engine: webhook read-back")


# --- the application side ------------------------------------------------------------------


async def test_flag_client_follows_the_release(rig: Rig, redis_url: str) -> None:
    seen: list[int] = []

    def on_change(service: str, state: FlagState | None) -> None:
        if service == "checkout" and state is not None:
            seen.append(state.pct)

    client = FlagClient(redis_url, poll_interval=5.0, on_change=on_change)
    await asyncio.to_thread(client.start)
    try:
        assert client.pct("checkout") == 0 and client.variant("checkout", "u1") == "stable"
        release = (await rig.service.deploy(ALICE, "checkout", "v2", STABLE)).release
        await asyncio.to_thread(client.wait_for, "checkout", lambda s: s.pct == 1, 5.0)
        assert client.state("checkout") is not None

        await drive(rig, release.id, is_done)
        state = await asyncio.to_thread(client.wait_for, "checkout", lambda s: s.pct == 100, 5.0)
    finally:
        await asyncio.to_thread(client.close)

    assert seen == [1, 10, 25, 50, 100]
    assert (state.canary_version, state.stable_version, state.release_id) == (
        "v2", "v1", release.id)
    users = [f"user-{i}" for i in range(200)]
    assert {client.variant("checkout", u) for u in users} == {"canary"}
    assert {client.version("checkout", u) for u in users} == {"v2"}
