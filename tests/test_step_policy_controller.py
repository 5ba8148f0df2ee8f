"""Per-step policy through the controller: a real redis-server, the real Store, FlagsBackend,
TrafficActuator and ReleaseService, the seeded SyntheticSource, rounds driven one by one.

A step's own interval changes how often it is judged; a step that asks for approval waits for a
click (at normal risk); a step's own threshold applies at that step only.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest
import redis.asyncio as aioredis

from bot.engine.actuator import TrafficActuator
from bot.engine.controller import Controller
from bot.engine.events import EventBus
from bot.engine.service import ReleaseService
from bot.errors import PermissionDenied
from bot.flags import FlagWriter
from bot.metrics.synthetic import SyntheticSource
from bot.release.policy import parse_policy
from bot.release.request import DeployOptions
from bot.release.rollout import Actor, Release, State
from bot.store.audit import AuditEntry
from bot.store.store import Store
from bot.traffic.flags import FlagsBackend
from tests.support.recorder import Recorder

pytestmark = pytest.mark.timeout(30)

# Synthetic error rates sit near 0.004: the service's max (0.05) always passes, the 10% step's
# own max (0.002) always fails.
POLICY = """
defaults:
  hold: 300ms
  interval: 50ms
  window: 1s
  bake: 200ms
  metrics:
    - name: error_rate
      query: 'errors{service="{service}",version="{version}"}'
      max: 0.05
      failure_limit: 2
services:
  paced:
    steps:
      - {weight: 1, hold: 1s}
      - {weight: 10, hold: 1s, interval: 400ms}
      - 100
  gated:
    approvers: [carol]
    steps: [1, {weight: 10, approval: true}, 100]
  strict:
    steps:
      - 1
      - weight: 10
        metrics: [{name: error_rate, max: 0.002}]
      - 100
"""

TICK = 0.02
DEADLINE = 15.0
ALICE = Actor(user="alice", surface="slack")
CAROL = Actor(user="carol", surface="slack")
STABLE = DeployOptions(stable="v1")


@dataclass
class Rig:
    store: Store
    service: ReleaseService
    controller: Controller

    async def get(self, release_id: str) -> Release:
        release = await self.store.get(release_id)
        assert release is not None
        return release

    async def decisions(self) -> list[AuditEntry]:
        """The controller's decisions, oldest first."""
        entries = reversed(await self.store.audit_tail(10_000))
        return [e for e in entries if e.action.startswith("decision:")]

    async def drive(self, release_id: str, until: Callable[[Release], bool]) -> Release:
        deadline = time.monotonic() + DEADLINE
        while not until(release := await self.get(release_id)):
            assert time.monotonic() < deadline, f"stuck: {release.describe_state()}"
            await self.controller.run_once()
            await asyncio.sleep(TICK)
        return release


@pytest.fixture
async def rig(redis_client: aioredis.Redis) -> AsyncIterator[Rig]:
    policy = parse_policy(POLICY, "test")
    store = Store(redis_client)
    events = EventBus([Recorder()])
    flags = FlagsBackend(FlagWriter(redis_client))
    actuator = TrafficActuator(store, lambda _service: flags, events)
    service = ReleaseService(store, policy, actuator, events)
    controller = Controller(
        store,
        policy,
        SyntheticSource(seed=5),
        actuator,
        events,
        tick=TICK,
        lease_ttl=1.0,
        owner="a",
    )
    events.start()
    yield Rig(store, service, controller)
    await actuator.close()
    await events.close()


async def test_a_step_interval_changes_how_often_the_step_is_judged(rig: Rig) -> None:
    release = (await rig.service.deploy(ALICE, "paced", "v2", STABLE)).release
    assert release.intervals == [0.05, 0.4, 0.05]
    await rig.drive(release.id, lambda r: not r.is_active)

    decisions = await rig.decisions()
    at = {w: [e.at for e in decisions if e.detail["weight"] == w] for w in (1, 10)}
    # One second at each step: about 20 rounds every 50 ms, about 3 every 400 ms.
    assert len(at[1]) >= 10, at
    assert 2 <= len(at[10]) <= 4, at
    gaps = [b - a for a, b in zip(at[10], at[10][1:], strict=False)]
    assert all(g >= 0.4 - 0.03 for g in gaps), gaps


async def test_a_step_that_asks_for_approval_waits_for_a_click(rig: Rig) -> None:
    release = (await rig.service.deploy(ALICE, "gated", "v2", STABLE)).release
    assert release.state is State.PROGRESSING  # normal risk: the first step needs nobody
    waiting = await rig.drive(release.id, lambda r: r.state is State.PENDING_APPROVAL)
    assert (waiting.weight, waiting.awaiting_step) == (1, 1)

    # Long past the hold, nobody clicked: it stays at 1%, still judged.
    judged = waiting.evaluations
    for _ in range(15):
        await rig.controller.run_once()
        await asyncio.sleep(TICK)
    still = await rig.get(release.id)
    assert (still.state, still.weight) == (State.PENDING_APPROVAL, 1)
    assert still.evaluations > judged

    # The requester cannot approve it; an approver can.
    with pytest.raises(PermissionDenied):
        await rig.service.approve(ALICE, "gated")
    approved = (await rig.service.approve(CAROL, "gated")).release
    assert (approved.state, approved.weight) == (State.PROGRESSING, 10)
    assert [a.by for a in approved.approvals] == ["carol"]
    # The next step asks for nothing: it goes on by itself.
    done = await rig.drive(release.id, lambda r: not r.is_active)
    assert done.state is State.SUCCEEDED


async def test_a_step_threshold_applies_only_at_that_step(rig: Rig) -> None:
    release = (await rig.service.deploy(ALICE, "strict", "v2", STABLE)).release
    done = await rig.drive(release.id, lambda r: not r.is_active)

    assert done.state is State.ROLLED_BACK
    assert done.step == 1 and "max 0.002" in done.reason, done.reason
    decisions = await rig.decisions()
    limits = {
        w: {c["limit"] for e in decisions if e.detail["weight"] == w for c in e.detail["checks"]}
        for w in (1, 10)
    }
    # At 1% the service's rule passed (no limit crossed); at 10% the step's own max failed.
    assert limits[1] == {""}
    assert limits[10] == {"max 0.002"}
    assert [e.action for e in decisions if e.detail["weight"] == 1][-1] == "decision:advance"
