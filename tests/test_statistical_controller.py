"""The controller with the statistical judge: range series, verdicts and the canary score."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import redis.asyncio as aioredis

from bot.engine.actuator import TrafficActuator
from bot.engine.controller import Controller
from bot.engine.events import EventBus, EventKind
from bot.engine.service import ReleaseService
from bot.flags import FlagWriter
from bot.metrics.synthetic import SyntheticSource
from bot.release.policy import parse_policy
from bot.release.request import DeployOptions
from bot.release.rollout import Actor, Release, State
from bot.store.store import Store
from bot.traffic.flags import FlagsBackend
from tests.support.recorder import Recorder

# latency_p99 is 30% slower under the fault: far inside the threshold rule (2x), so only the
# statistical judge can see it.
POLICY = """
defaults:
  steps: [1, 10, 100]
  hold: 300ms
  interval: 100ms
  window: 1s
  bake: 200ms
  metrics:
    - name: error_rate
      query: 'errors{service="{service}",version="{version}"}'
      max: 0.05
    - name: latency_p99
      query: 'p99{service="{service}",version="{version}"}'
      judge: both
      max_ratio: 2
      lookback: 5m
      step: 5s
      allowed_increase: 1.1
      critical_increase: 1.5
      critical: true
      failure_limit: 2
services:
  checkout: {}
  shadow:
    metrics:
      - name: latency_p99
        dry_run: true
  fine:
    metrics:
      - name: latency_p99
        judge: mann_whitney
        lookback: 1h
        step: 100ms
"""
ALICE = Actor(user="alice", surface="slack")
STABLE = DeployOptions(stable="v1")
DEADLINE = 10.0


@dataclass
class Rig:
    store: Store
    service: ReleaseService
    source: SyntheticSource
    controller: Controller
    recorder: Recorder
    events: EventBus


@pytest.fixture
async def rig(redis_client: aioredis.Redis) -> AsyncIterator[Rig]:
    policy = parse_policy(POLICY, "test")
    store = Store(redis_client)
    recorder = Recorder()
    events = EventBus([recorder])
    flags = FlagsBackend(FlagWriter(redis_client))
    actuator = TrafficActuator(store, lambda _s: flags, events)
    service = ReleaseService(store, policy, actuator, events)
    source = SyntheticSource(seed=5)
    controller = Controller(store, policy, source, actuator, events, tick=0.05,
                            lease_ttl=1.0, owner="a")
    events.start()
    yield Rig(store, service, source, controller, recorder, events)
    await actuator.close()
    await events.close()


async def run_until_done(rig: Rig, release_id: str, *, stop_at_weight: int | None = None,
                         ) -> Release:
    deadline = time.monotonic() + DEADLINE
    while True:
        release = await rig.store.get(release_id)
        assert release is not None
        if not release.is_active or (stop_at_weight is not None
                                     and release.applied_weight == stop_at_weight):
            return release
        assert time.monotonic() < deadline, f"stuck: {release.describe_state()}"
        await rig.controller.run_once()
        await asyncio.sleep(0.01)


async def test_a_canary_slower_than_the_control_but_under_the_limits_is_rolled_back(
        rig: Rig) -> None:
    release = (await rig.service.deploy(ALICE, "checkout", "v2", STABLE)).release
    await run_until_done(rig, release.id, stop_at_weight=10)

    rig.source.inject("checkout", "latency_p99", 1.3, version="v2")
    done = await run_until_done(rig, release.id)

    assert done.state is State.ROLLED_BACK
    assert "latency_p99 is high" in done.reason
    latency = next(c for c in done.last_checks if c.metric == "latency_p99")
    assert latency.outcome == "fail"
    verdict = latency.verdict
    assert verdict is not None
    assert verdict["classification"] == "high"
    assert verdict["critical"] is False  # 1.3x is under the critical effect size (1.5)
    assert verdict["ci_low"] > 0 and verdict["mean_ratio"] > 1.1
    assert done.last_score is not None and done.last_score.verdict == "fail"
    # Not critical: it took the failure limit (2 consecutive checks), not the first one.
    decisions = [e for e in reversed(await rig.store.audit_tail(500))
                 if e.action.startswith("decision:") and e.detail.get("weight") == 10]
    failing = [d for d in decisions if d.detail["score"] and d.detail["score"]["verdict"] == "fail"]
    assert len(failing) == 2 and failing[-1].action == "decision:rollback"
    assert failing[0].action == "decision:hold"


async def test_a_canary_far_past_the_critical_effect_size_rolls_back_at_once(rig: Rig) -> None:
    release = (await rig.service.deploy(ALICE, "checkout", "v2", STABLE)).release
    await run_until_done(rig, release.id, stop_at_weight=10)

    rig.source.inject("checkout", "latency_p99", 1.8, version="v2")
    done = await run_until_done(rig, release.id)

    assert done.state is State.ROLLED_BACK
    assert done.reason.startswith("critical metric failed: latency_p99")


async def test_a_healthy_canary_scores_100_and_succeeds(rig: Rig) -> None:
    release = (await rig.service.deploy(ALICE, "checkout", "v2", STABLE)).release

    done = await run_until_done(rig, release.id)

    assert done.state is State.SUCCEEDED
    await rig.events.drain()
    advanced = [e for e in rig.recorder.events if e.kind is EventKind.STEP_ADVANCED]
    assert advanced and advanced[0].release.last_score is not None
    assert advanced[0].release.last_score.value == 100
    # While baking there is no control series: the statistical judge says so and stays idle.
    latency = next(c for c in done.last_checks if c.metric == "latency_p99")
    assert "idle while baking" in latency.reason


async def test_a_failing_dry_run_metric_is_reported_but_never_rolls_back(rig: Rig) -> None:
    release = (await rig.service.deploy(ALICE, "shadow", "v2", STABLE)).release
    rig.source.inject("shadow", "latency_p99", 3.0, version="v2")
    seen_fail = False
    deadline = time.monotonic() + DEADLINE
    while True:
        current = await rig.store.get(release.id)
        assert current is not None
        for check in current.last_checks:
            if check.metric == "latency_p99" and check.outcome == "fail":
                assert check.dry_run is True
                seen_fail = True
        if not current.is_active:
            break
        assert time.monotonic() < deadline, current.describe_state()
        await rig.controller.run_once()
        await asyncio.sleep(0.01)

    assert seen_fail
    assert current.state is State.SUCCEEDED


async def test_a_series_longer_than_the_judge_takes_is_judged_on_its_latest_samples(
        rig: Rig) -> None:
    stored = (await rig.service.deploy(ALICE, "fine", "v2", STABLE)).release
    for _ in range(100):
        await rig.controller.run_once()
        stored = await rig.store.get(stored.id) or stored
        if stored.last_checks:
            break
        await asyncio.sleep(0.01)
    [latency] = [c for c in stored.last_checks if c.metric == "latency_p99"]
    # 1 h at 100 ms is 36,000 samples a side: judged (off the event loop) on the latest.
    assert latency.reason.endswith("(judged on the last 20,000 of 36,000 samples)")
    assert latency.verdict is not None and latency.verdict["classification"] == "pass"
