"""The post-release watch against a real redis-server and the seeded synthetic source: a release
runs to success on the real controller, then the watcher judges it on a fake clock."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import redis.asyncio as aioredis

from bot.engine.actuator import TrafficActuator
from bot.engine.clicks import ClickStatus, click
from bot.engine.controller import Controller
from bot.engine.events import EventBus, EventKind, ReleaseEvent
from bot.engine.service import Outcome, ReleaseService
from bot.engine.watch import Watcher
from bot.errors import UserError
from bot.flags import FlagWriter
from bot.metrics.synthetic import SyntheticSource
from bot.release.policy import Policy, parse_policy
from bot.release.request import DeployOptions
from bot.release.rollout import Actor, Release, State
from bot.release.watch import Finding, WatchRecord
from bot.render.terminal import render_text
from bot.render.thread import event_message
from bot.store import keys
from bot.store.store import Store
from bot.traffic.flags import FlagsBackend
from tests.support.recorder import Recorder
from tests.test_blocks import HOSTILE, LIVE_MARKUP, assert_valid, hostile_release, marked_up

pytestmark = pytest.mark.timeout(60)

POLICY = """
defaults:
  steps: [50, 100]
  hold: 100ms
  interval: 50ms
  window: 1s
  bake: 100ms
  watch: {window: 1h, interval: 5m}
  metrics:
    - name: error_rate
      query: 'errors{service="{service}",version="{version}"}'
      max: 0.05
      max_diff: 0.01
      failure_limit: 2
services:
  checkout: {}
"""

DEADLINE = 10.0
ALICE = Actor(user="alice", surface="slack")
MINUTE = 60.0


class Clock:
    """The watcher's time, moved by the test: a day of watching takes milliseconds."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@dataclass
class Rig:
    policy: Policy
    store: Store
    events: EventBus
    recorder: Recorder
    service: ReleaseService
    source: SyntheticSource
    controller: Controller
    watcher: Watcher
    clock: Clock
    pages: list[tuple[str, WatchRecord]]

    def watch_events(self) -> list[ReleaseEvent]:
        return [e for e in self.recorder.events if e.kind.value.startswith("watch_")]

    async def ship(self, version: str, stable: str) -> Release:
        """Deploy and run the controller until the release ended; its success is delivered."""
        result = await self.service.deploy(ALICE, "checkout", version, DeployOptions(stable=stable))
        assert result.outcome is Outcome.DONE, result.message
        deadline = time.monotonic() + DEADLINE
        while (release := await self.store.get(result.release.id)) is not None and (
            release.is_active
        ):
            assert time.monotonic() < deadline, release.describe_state()
            await self.controller.run_once()
            await asyncio.sleep(0.01)
        assert release is not None and release.state is State.SUCCEEDED
        await self.events.drain()
        return release

    async def rounds(self, count: int, step: float = 5 * MINUTE) -> None:
        for _ in range(count):
            self.clock.now += step
            await self.watcher.run_once()
        await self.events.drain()


@pytest.fixture
async def rig(redis_client: aioredis.Redis) -> AsyncIterator[Rig]:
    policy = parse_policy(POLICY, "test")
    store = Store(redis_client)
    recorder = Recorder()
    events = EventBus([recorder])
    flags = FlagsBackend(FlagWriter(redis_client))
    actuator = TrafficActuator(store, lambda _service: flags, events)
    service = ReleaseService(store, policy, actuator, events)
    source = SyntheticSource(seed=1)
    controller = Controller(store, policy, source, actuator, events, tick=0.05, owner="a")
    clock = Clock()
    pages: list[tuple[str, WatchRecord]] = []

    async def page(release: Release, watch: WatchRecord) -> None:
        pages.append((release.id, watch))

    watcher = Watcher(store, policy, source, events, page=page, owner="w1", clock=clock)
    events.notifiers.append(watcher)
    events.start()
    yield Rig(policy, store, events, recorder, service, source, controller, watcher, clock, pages)
    await actuator.close()
    await events.close()


def said(event: ReleaseEvent, rig: Rig) -> str:
    metrics = rig.policy.service("checkout").metrics
    return render_text(event_message(event, metrics=metrics))[0]


async def test_a_healthy_watch_closes_after_its_window_with_the_report(rig: Rig) -> None:
    release = await rig.ship("v2", "v1")
    watch = await rig.store.watches.get(release.id)
    assert watch is not None and watch.window == 3600 and watch.baseline

    await rig.rounds(11)  # 55 minutes: still watching, nothing said
    assert rig.watch_events() == []
    await rig.rounds(2)  # past the hour
    (closed,) = rig.watch_events()
    assert closed.kind is EventKind.WATCH_CLOSED and closed.watch is not None
    assert closed.watch.rounds >= 11
    text = said(closed, rig)
    assert "Watched 1h: error_rate" in text and "before" in text and "no anomalies" in text
    assert rig.pages == []
    # Closed: off the running set, and later rounds say nothing more.
    assert await rig.store.watches.running() == []
    await rig.rounds(3)
    assert len(rig.watch_events()) == 1


async def test_a_fault_after_release_is_one_finding_message_and_one_page(rig: Rig) -> None:
    release = await rig.ship("v2", "v1")
    rig.source.inject("checkout", "error_rate", 25.0, version="v2")

    await rig.rounds(8)  # many failing rounds: one message, not one per round
    findings = [e for e in rig.watch_events() if e.kind is EventKind.WATCH_FINDING]
    assert len(findings) == 1
    watch = findings[0].watch
    assert watch is not None and watch.finding is not None
    assert watch.finding.metric == "error_rate" and watch.finding.value is not None
    text = said(findings[0], rig)
    assert "error_rate" in text and "/deploy checkout v1" in text
    assert [rid for rid, _ in rig.pages] == [release.id]

    await rig.rounds(6)  # the watch goes on to its end; the report names the finding
    closed = rig.watch_events()[-1]
    assert closed.kind is EventKind.WATCH_CLOSED
    assert "1 finding (error_rate" in said(closed, rig)


async def test_the_finding_button_starts_a_fast_release_of_the_previous_version(rig: Rig) -> None:
    release = await rig.ship("v2", "v1")
    rig.source.inject("checkout", "error_rate", 25.0, version="v2")
    await rig.rounds(3)
    (finding,) = rig.watch_events()
    message = event_message(finding, metrics=rig.policy.service("checkout").metrics)
    (button,) = [e for b in message.blocks if b["type"] == "actions" for e in b["elements"]]
    assert button["text"]["text"] == "Roll back to v1"

    async def clicker(_: Release) -> Actor:
        return ALICE

    done = await click(rig.service, button["action_id"], button["value"], clicker)
    assert done.status is ClickStatus.APPLIED and done.result is not None
    back = done.result.release
    assert done.result.outcome is Outcome.DONE, done.result.message
    assert (back.version, back.stable_version, back.weights) == ("v1", "v2", [100])
    # Judged as any release: it runs to success on the controller.
    deadline = time.monotonic() + DEADLINE
    while (current := await rig.store.get(back.id)) is not None and current.is_active:
        assert time.monotonic() < deadline, current.describe_state()
        await rig.controller.run_once()
        await asyncio.sleep(0.01)
    assert current is not None and current.state is State.SUCCEEDED
    # The newer release ends the watch of the one it replaced.
    await rig.rounds(1)
    assert rig.watch_events()[-1].kind is EventKind.WATCH_SUPERSEDED
    assert release.id == rig.watch_events()[-1].release.id


async def test_the_finding_button_is_stale_once_a_newer_release_started(rig: Rig) -> None:
    await rig.ship("v2", "v1")
    rig.source.inject("checkout", "error_rate", 25.0, version="v2")
    await rig.rounds(3)
    (finding,) = rig.watch_events()
    (button,) = [
        e for b in event_message(finding).blocks if b["type"] == "actions" for e in b["elements"]
    ]
    newer = await rig.service.deploy(ALICE, "checkout", "v3", DeployOptions(stable="v2"))
    assert newer.outcome is Outcome.DONE

    async def clicker(_: Release) -> Actor:
        return ALICE

    done = await click(rig.service, button["action_id"], button["value"], clicker)
    assert done.status is ClickStatus.STALE and "started since" in done.stale
    active = await rig.store.active_for("checkout")
    assert active is not None and active.version == "v3"


async def test_the_finding_button_is_refused_to_who_may_not_deploy(rig: Rig) -> None:
    await rig.ship("v2", "v1")
    rig.source.inject("checkout", "error_rate", 25.0, version="v2")
    await rig.rounds(3)
    (finding,) = rig.watch_events()
    message = event_message(finding)
    (button,) = [e for b in message.blocks if b["type"] == "actions" for e in b["elements"]]
    policy = parse_policy(
        POLICY.replace("services:\n  checkout: {}", "services:\n  checkout: {deployers: [UCAROL]}"),
        "test",
    )
    assert policy.service("checkout").deployers == ["UCAROL"]
    guarded = ReleaseService(rig.store, policy, rig.service.actuator, rig.events)

    async def clicker(_: Release) -> Actor:
        return ALICE

    with pytest.raises(UserError):
        await click(guarded, button["action_id"], button["value"], clicker)
    assert await rig.store.active_for("checkout") is None


async def test_the_watch_holds_no_lock_and_a_newer_deploy_ends_it(rig: Rig) -> None:
    release = await rig.ship("v2", "v1")
    await rig.rounds(2)
    # The service is free while the watch runs: no active release, no lock.
    assert await rig.store.active_for("checkout") is None
    assert await rig.store.get_lock("checkout") is None
    newer = await rig.service.deploy(ALICE, "checkout", "v3", DeployOptions(stable="v2"))
    assert newer.outcome is Outcome.DONE, newer.message

    await rig.rounds(1)
    (ended,) = rig.watch_events()
    assert ended.kind is EventKind.WATCH_SUPERSEDED and ended.release.id == release.id
    text = said(ended, rig)
    assert "v3" in text and "newer release" in text
    stored = await rig.store.watches.get(release.id)
    assert stored is not None and stored.ended_by == newer.release.id
    await rig.rounds(20)
    assert len(rig.watch_events()) == 1  # ended once, never closed after


async def test_one_process_judges_each_watch(rig: Rig) -> None:
    release = await rig.ship("v2", "v1")
    other = Watcher(rig.store, rig.policy, rig.source, rig.events, owner="w2", clock=rig.clock)
    rig.clock.now += 5 * MINUTE
    await rig.watcher.run_once()
    await other.run_once()
    watch = await rig.store.watches.get(release.id)
    assert watch is not None and watch.rounds == 1
    lease = await rig.store.redis.get(keys.watch_lease(release.id))
    assert isinstance(lease, str) and lease.startswith("w1|")


async def test_a_policy_window_of_zero_turns_the_watch_off(rig: Rig) -> None:
    release = await rig.ship("v2", "v1")
    policy = parse_policy(POLICY.replace("window: 1h", "window: 0"), "test")
    off = Watcher(rig.store, policy, rig.source, rig.events, owner="w3", clock=rig.clock)
    assert await off.begin(release.model_copy(update={"id": "another"})) is None
    assert await rig.store.watches.get("another") is None


@pytest.mark.parametrize(
    "kind", [EventKind.WATCH_FINDING, EventKind.WATCH_CLOSED, EventKind.WATCH_SUPERSEDED]
)
def test_watch_messages_are_valid_blocks_and_ping_nobody(kind: EventKind) -> None:
    release = hostile_release(EventKind.SUCCEEDED)
    finding = Finding(
        metric=HOSTILE[:200], value=0.3, baseline=0.01, limit=HOSTILE[:100],
        reason=HOSTILE, at=release.created_at + 7200,
    )  # fmt: skip
    watch = WatchRecord(
        release_id=release.id, service=release.service, version=release.version,
        previous_version="v2.4.0", started_at=release.created_at, window=86400, interval=300,
        baseline={HOSTILE[:50]: 0.01}, finding=finding, rounds=3,
        last_round_at=release.created_at + 900,
    )  # fmt: skip
    event = ReleaseEvent(kind, release, HOSTILE[:60], watch=watch)
    message = event_message(event)
    assert_valid(message)
    found = [(p, t[:80]) for t in marked_up(message) for p in LIVE_MARKUP if p in t]
    assert not found, found[:2]
    buttons = [e for b in message.blocks if b["type"] == "actions" for e in b["elements"]]
    expected = ["Roll back to v2.4.0"] if kind is EventKind.WATCH_FINDING else []
    assert [b["text"]["text"] for b in buttons] == expected
