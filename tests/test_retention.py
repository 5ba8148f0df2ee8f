"""Bounded storage against a real redis-server: the audit streams trimmed by age (MINID) with
a count backstop, a finished release's keys expiring after the policy's retention, and every
key a whole release leaves behind bounded by age or by count. The clock that decides the age
cut-off is the store's, so a test moves it forward instead of waiting months."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from bot.engine.actuator import TrafficActuator
from bot.engine.controller import Controller
from bot.engine.events import EventBus
from bot.engine.service import ReleaseService
from bot.errors import PolicyError
from bot.flags import FlagWriter
from bot.metrics.synthetic import SyntheticSource
from bot.release import rollout
from bot.release.policy import Risk, Strategy, parse_policy
from bot.release.request import DeployOptions
from bot.release.retention import Retention
from bot.release.rollout import Actor, Release
from bot.store import keys
from bot.store.audit import AuditEntry, AuditStream
from bot.store.store import CommitStatus, CreateStatus, Store
from bot.traffic.flags import FlagsBackend

DAY = 86400.0
ALICE = Actor(user="alice", surface="slack")


class Clock:
    """The store's clock, moved by the test."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def entry(action: str, release_id: str = "") -> AuditEntry:
    return AuditEntry(
        action=action, actor="alice", surface="slack", service="checkout", release_id=release_id
    )


def new_release(release_id: str) -> Release:
    return rollout.new_release(
        release_id=release_id,
        number=1,
        service="checkout",
        version="v2",
        stable_version="v1",
        weights=[1, 100],
        holds=[1.0, 1.0],
        interval=0.1,
        bake=1.0,
        strategy=Strategy.CANARY,
        risk=Risk.NORMAL,
        notes="",
        actor=ALICE,
        now=time.time(),
    )


async def actions(store: Store, stream: AuditStream) -> list[str]:
    """The actions in ``stream``, oldest first."""
    entries = await store.audit_between(0, stream=stream)
    return [e.action for e in entries]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(redis_client: aioredis.Redis, clock: Clock) -> Store:
    retention = Retention(releases=2 * DAY, charts=1 * DAY, audit=7 * DAY, lifecycle=30 * DAY)
    return Store(redis_client, retention=retention, clock=clock)


# --- the audit streams ------------------------------------------------------------------------


async def test_entries_older_than_the_retention_go_when_the_next_is_written(
    store: Store, clock: Clock
) -> None:
    await store.append_audit(entry("deploy"))
    await store.append_audit(entry("decision:hold"))  # routine: the full stream only
    await asyncio.sleep(0.01)  # the next entry's id is later than the cut-off below

    clock.offset = 7 * DAY  # a week on: the full stream's entries are past its retention
    await store.append_audit(entry("approve"))

    assert await actions(store, AuditStream.FULL) == ["approve"]
    # The lifecycle stream keeps 30 days: nothing of it is old enough yet.
    assert await actions(store, AuditStream.LIFECYCLE) == ["deploy", "approve"]
    reach = await store.audit_reach(AuditStream.FULL)
    assert reach.trimmed and reach.oldest is not None
    assert not (await store.audit_reach(AuditStream.LIFECYCLE)).trimmed

    await asyncio.sleep(0.01)
    clock.offset = 30 * DAY
    await store.append_audit(entry("lock"))
    assert await actions(store, AuditStream.LIFECYCLE) == ["lock"]
    assert (await store.audit_reach(AuditStream.LIFECYCLE)).trimmed


async def test_release_scripts_trim_the_streams_by_age_too(store: Store, clock: Clock) -> None:
    # The fake clock runs ahead of the stream ids Redis gives new entries, so it never moves
    # further than the shortest retention: a real week later, a real entry is new.
    await store.append_audit(entry("lock"))
    await asyncio.sleep(0.01)
    clock.offset = 7 * DAY
    release = new_release("rel-1")
    assert (await store.create(release, entry("deploy", release.id))).status is CreateStatus.OK
    assert await actions(store, AuditStream.FULL) == ["deploy"]
    assert await actions(store, AuditStream.LIFECYCLE) == ["lock", "deploy"]

    await asyncio.sleep(0.01)
    paused = rollout.pause(release, ALICE, time.time(), "look")
    done = await store.commit(paused, expected_rev=release.rev, audit=entry("pause", release.id))
    assert done.status is CommitStatus.OK
    assert await actions(store, AuditStream.FULL) == ["pause"]
    assert await actions(store, AuditStream.LIFECYCLE) == ["lock", "deploy", "pause"]


async def test_the_count_backstop_holds_a_flood_inside_the_age_window(
    redis_client: aioredis.Redis,
) -> None:
    store = Store(redis_client, retention=Retention(audit_max_entries=1000))
    for _chunk in range(30):
        await asyncio.gather(*(store.append_audit(entry("decision:hold")) for _ in range(100)))
    length = await redis_client.xlen(keys.audit())
    # Approximate trimming drops whole nodes of the stream (100 entries each by default).
    assert 1000 <= length <= 1100, length
    assert (await store.audit_reach(AuditStream.FULL)).trimmed


# --- a finished release -----------------------------------------------------------------------


async def test_a_finished_release_expires_after_the_retention_and_not_before(
    store: Store, redis_client: aioredis.Redis
) -> None:
    release = new_release("rel-1")
    await store.create(release, entry("deploy", release.id))
    await store.acquire_leases("ctl", [release.id], ttl=5)
    await store.save_message_refs(release.id, {"channel": "C1", "ts": "1.1", "thread_ts": "1.1"})
    await store.append_point(release.id, {"t": 1})
    await store.grant_step(release.id, allowed=1)
    # While it runs, its record never expires; what it wrote keeps the long working lifetime.
    assert await redis_client.ttl(keys.release(release.id)) == -1
    assert await redis_client.ttl(keys.fence(release.id)) > 20 * DAY

    rolling = rollout.start_rollback(release, ALICE, time.time(), "bad")
    r1 = await store.commit(rolling, expected_rev=release.rev, audit=None)
    assert r1.current is not None and r1.status is CommitStatus.OK
    assert await redis_client.ttl(keys.release(release.id)) == -1  # rolling back is active
    done = rollout.finish_rollback(r1.current, rollout.CONTROLLER, time.time())
    r2 = await store.commit(done, expected_rev=r1.current.rev, audit=None)
    assert r2.status is CommitStatus.OK and r2.current is not None

    for key in (
        keys.release(release.id),
        keys.fence(release.id),
        keys.messages(release.id),
        keys.granted_steps(release.id),
    ):
        ttl = await redis_client.ttl(key)
        assert 2 * DAY - 60 <= ttl <= 2 * DAY, (key, ttl)
    assert DAY - 60 <= await redis_client.ttl(keys.series(release.id)) <= DAY
    # A later change to the finished record (a note, a diagnosis) keeps it bounded: the SET
    # clears the expiry and the commit sets it again.
    noted = r2.current.model_copy(update={"notes": "db migration"})
    r3 = await store.commit(noted, expected_rev=r2.current.rev, audit=None)
    assert r3.status is CommitStatus.OK
    assert 0 < await redis_client.ttl(keys.release(release.id)) <= 2 * DAY


# --- a whole release through the product ------------------------------------------------------

POLICY = """
defaults:
  steps: [1, 50, 100]
  hold: 200ms
  interval: 100ms
  window: 1s
  bake: 200ms
  metrics:
    - name: error_rate
      query: 'errors{service="{service}",version="{version}"}'
      max: 0.05
services:
  checkout: {}
retention:
  releases: 3d
  audit: 7d
  lifecycle: 400d
"""

# Keys bounded by count, not age: one per service or channel, or a stream trimmed by both.
_BOUNDED_BY_COUNT = {
    keys.active_index(),
    keys.flags(),
    keys.release_seq(),
    keys.audit(),
    keys.lifecycle(),
}


@pytest.fixture
async def product(redis_client: aioredis.Redis) -> AsyncIterator[tuple[ReleaseService, Controller]]:
    policy = parse_policy(POLICY, "test")
    store = Store(redis_client, retention=policy.retention)
    events = EventBus([])
    flags = FlagsBackend(FlagWriter(redis_client))
    actuator = TrafficActuator(store, lambda _service: flags, events)
    service = ReleaseService(store, policy, actuator, events)
    controller = Controller(
        store,
        policy,
        SyntheticSource(seed=1),
        actuator,
        events,
        tick=0.05,
        lease_ttl=0.5,
        owner="a",
    )
    events.start()
    yield service, controller
    await actuator.close()
    await events.close()


async def test_every_key_a_finished_release_leaves_is_bounded(
    product: tuple[ReleaseService, Controller], redis_client: aioredis.Redis
) -> None:
    service, controller = product
    release = (await service.deploy(ALICE, "checkout", "v2", DeployOptions(stable="v1"))).release
    await service.store.save_message_refs(
        release.id, {"channel": "C1", "ts": "5.5", "thread_ts": "5.5"}
    )
    deadline = time.monotonic() + 20
    while (current := await service.store.get(release.id)) is not None and current.is_active:
        assert time.monotonic() < deadline, current.describe_state()
        await controller.run_once()
        await asyncio.sleep(0.02)
    assert current is not None and not current.is_active

    unbounded = []
    async for key in redis_client.scan_iter(match=f"{keys.PREFIX}*"):
        if key not in _BOUNDED_BY_COUNT and await redis_client.ttl(key) < 0:
            unbounded.append(key)
    assert unbounded == []
    assert 0 < await redis_client.ttl(keys.release(release.id)) <= 3 * DAY
    assert await redis_client.ttl(keys.history("checkout")) > 3 * DAY


# --- the policy -------------------------------------------------------------------------------


def test_retention_defaults_and_refusals() -> None:
    policy = parse_policy("services: {a: {unjudged: true}}\n", "test")
    assert policy.retention.lifecycle == 400 * DAY
    assert policy.retention.audit == 14 * DAY

    with pytest.raises(PolicyError) as err:
        parse_policy(
            "services: {a: {unjudged: true}}\nretention: {lifecyle: 30d, audit: 5m}\n", "test"
        )
    text = str(err.value)
    assert "retention.audit" in text and "5m is too short: keep at least 1h" in text
    assert "retention.lifecyle" in text and "did you mean `lifecycle`?" in text
