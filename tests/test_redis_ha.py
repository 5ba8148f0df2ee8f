"""Redis high availability through Redis' own engines: a release driven through Redis Sentinel
(three redis-servers, three redis-sentinels, all real) survives its master being SIGKILLed
mid-release with no step lost or doubled; every key shares one hash slot so Redis Cluster
runs the multi-key scripts (a whole release on a real cluster of three masters); keys of the
older layout move under the hash tag on connect."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot

from bot.engine.actuator import TrafficActuator
from bot.engine.controller import Controller
from bot.engine.events import EventBus
from bot.engine.service import ReleaseService
from bot.errors import StoreError, UserError
from bot.flags import FlagClient, FlagWriter
from bot.metrics.synthetic import SyntheticSource
from bot.release.policy import parse_policy
from bot.release.request import DeployOptions
from bot.release.rollout import Actor, Release, State
from bot.store import keys
from bot.store.audit import AuditStream
from bot.store.connection import client_for, parse_sentinel_url
from bot.store.migrate import migrate
from bot.store.store import Store
from bot.traffic.flags import FlagsBackend
from tests.support.sentinel import SentinelRig, redis_cluster, sentinel_rig

ALICE = Actor(user="alice", surface="slack")

# --- Cluster: one slot ------------------------------------------------------------------------


def test_every_key_the_scripts_touch_hashes_to_one_slot() -> None:
    samples = [
        keys.release("r1"), keys.active_index(), keys.history("checkout"), keys.lock("checkout"),
        keys.audit(), keys.lifecycle(), keys.idempotency("req"), keys.lease("r1"),
        keys.fence("r1"), keys.messages("r1"), keys.series("r1"), keys.granted_steps("r1"),
        keys.release_seq(), keys.thread("C1", "1.2"), keys.seen_event("Ev1"),
        keys.group_members("S1"), keys.outbox_seq(), keys.outbox_item("1"),
        keys.outbox_queue("C1"), keys.outbox_thread("C1", "r1"), keys.outbox_status("C1"),
        keys.outbox_status_gen("C1"), keys.outbox_status_posting("r1"), keys.outbox_channels(),
        keys.outbox_owner("C1"), keys.outbox_channel_id("#releases"), keys.outbox_dead(),
        keys.writing_jobs(), keys.schema(),
        # A service or channel name with braces cannot move a key out of the slot: only the
        # first {...} of a key counts, and the prefix has it.
        keys.history("{evil}"), keys.outbox_queue("{C2}"),
    ]
    assert {key_slot(k.encode()) for k in samples} == {key_slot(b"shipwatch")}


# --- the Sentinel URL -------------------------------------------------------------------------


def test_a_sentinel_url_names_the_sentinels_the_master_and_the_passwords() -> None:
    spec = parse_sentinel_url(
        "redis+sentinel://:s3cret@10.0.0.1:26379,10.0.0.2:26380/prod-redis/2"
        "?sentinel_password=other")
    assert spec.sentinels == (("10.0.0.1", 26379), ("10.0.0.2", 26380))
    assert (spec.master, spec.db, spec.password, spec.sentinel_password) == (
        "prod-redis", 2, "s3cret", "other")


@pytest.mark.parametrize(("url", "says"), [
    ("redis+sentinel://10.0.0.1/prod", "without a port"),
    ("redis+sentinel://10.0.0.1:26379", "must name the master"),
    ("redis+sentinel://10.0.0.1:26379/a/b", "must name the master"),
    ("redis+sentinel://10.0.0.1:26379/prod?timeout=3", "unknown options ['timeout']"),
])
def test_a_wrong_sentinel_url_says_how_to_write_it(url: str, says: str) -> None:
    with pytest.raises(UserError) as err:
        parse_sentinel_url(url)
    assert says in str(err.value)
    assert "redis+sentinel://[:password@]host:26379[,host:26379]/mymaster[/0]" in err.value.hint


@pytest.mark.parametrize(("url", "says"), [
    ("redis+cluster://10.0.0.1:6379/2", "takes no database or options"),
    ("redis+cluster://10.0.0.1:6379,10.0.0.2", "`10.0.0.2` without a port"),
])
def test_a_wrong_cluster_url_says_how_to_write_it(url: str, says: str) -> None:
    with pytest.raises(UserError) as err:
        client_for(url)
    assert says in str(err.value)
    assert "redis+cluster://[:password@]host:6379[,host:6379]" in err.value.hint


# --- the older layout -------------------------------------------------------------------------


async def test_keys_of_the_older_layout_move_under_the_hash_tag_once(
    redis_client: aioredis.Redis,
) -> None:
    await redis_client.set("shipwatch:release:r1", '{"id": "r1"}', ex=3600)
    await redis_client.hset("shipwatch:active", "checkout", "r1")
    await redis_client.xadd("shipwatch:audit", {"action": "deploy"})
    await redis_client.hset("shipwatch:flags", "checkout", '{"pct": 10}')
    await redis_client.set("other-app:key", "theirs")

    assert await migrate(redis_client) == 3

    assert await redis_client.get(keys.release("r1")) == '{"id": "r1"}'
    assert 0 < await redis_client.ttl(keys.release("r1")) <= 3600  # the expiry came along
    assert await redis_client.hget(keys.active_index(), "checkout") == "r1"
    assert await redis_client.xlen(keys.audit()) == 1
    # The flag hash keeps the name applications' SDKs read; other apps' keys are not ours.
    assert await redis_client.hget("shipwatch:flags", "checkout") == '{"pct": 10}'
    assert await redis_client.get("other-app:key") == "theirs"
    assert await redis_client.exists("shipwatch:release:r1", "shipwatch:active") == 0

    # Once moved, later starts do not scan again.
    await redis_client.set("shipwatch:release:r2", "late")
    assert await migrate(redis_client) == 0
    assert await redis_client.get("shipwatch:release:r2") == "late"


# --- a failover mid-release -------------------------------------------------------------------

POLICY = """
defaults:
  steps: [1, 10, 25, 50, 100]
  hold: 600ms
  interval: 100ms
  window: 1s
  bake: 600ms
  metrics:
    - name: error_rate
      query: 'errors{service="{service}",version="{version}"}'
      max: 0.05
services:
  checkout: {}
"""


@pytest.fixture
def sentinel(tmp_path: Path) -> Iterator[SentinelRig]:
    with sentinel_rig(tmp_path) as rig:
        yield rig


@pytest.fixture
async def ha_store(sentinel: SentinelRig) -> AsyncIterator[Store]:
    store = await Store.connect(sentinel.url)
    yield store
    await store.close()


@pytest.mark.timeout(120)
async def test_a_master_killed_mid_release_loses_no_step_and_doubles_none(
    sentinel: SentinelRig, ha_store: Store
) -> None:
    assert ha_store.min_replicas == 1  # behind Sentinel, each change waits for a replica
    policy = parse_policy(POLICY, "test")
    events = EventBus([])
    flags = FlagsBackend(FlagWriter(ha_store.redis))
    actuator = TrafficActuator(ha_store, lambda _s: flags, events)
    service = ReleaseService(ha_store, policy, actuator, events)
    controller = Controller(ha_store, policy, SyntheticSource(seed=1), actuator, events,
                            tick=0.05, lease_ttl=2.0, owner="a")
    events.start()
    # An application's flag SDK behind the same sentinels: it must follow the failover too.
    app_flags = FlagClient(sentinel.url)
    await asyncio.to_thread(app_flags.start)
    try:
        deployed = await service.deploy(ALICE, "checkout", "v2", DeployOptions(stable="v1"))
        release = deployed.release
        killed_at: int | None = None
        deadline = time.monotonic() + 90
        while True:
            try:
                current: Release | None = await ha_store.get(release.id)
                assert current is not None
                if not current.is_active:
                    break
                if killed_at is None and (current.applied_weight or 0) >= 25:
                    killed_at = await asyncio.to_thread(sentinel.kill_master)
                await controller.run_once()
            except StoreError:
                # What the controller's loop logs and retries (the client's own retries
                # usually carry a command over the election).
                pass
            assert time.monotonic() < deadline, "the release did not finish after the failover"
            await asyncio.sleep(0.02)
        assert killed_at is not None
        new_master = await asyncio.to_thread(sentinel.wait_for_new_master, killed_at)
        assert new_master != killed_at

        assert current.state is State.SUCCEEDED
        entries = list(reversed(await ha_store.audit_tail(10_000)))
        advances = [e.detail["weight"] for e in entries if e.action == "decision:advance"]
        traffic = [e.detail["weight"] for e in entries if e.action == "traffic"]
        assert advances == [1, 10, 25, 50]
        assert traffic == [1, 10, 25, 50, 100]
        assert [e.action for e in entries].count("decision:succeed") == 1
        state = await flags.flag("checkout")
        assert state is not None and state.pct == 100
        seen = await asyncio.to_thread(app_flags.wait_for, "checkout", lambda s: s.pct == 100, 20)
        assert seen is not None and seen.pct == 100
    finally:
        await asyncio.to_thread(app_flags.close)
        await actuator.close()
        await events.close()


# --- Redis Cluster ----------------------------------------------------------------------------


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[str]:
    with redis_cluster(tmp_path) as url:
        yield url


@pytest.mark.timeout(120)
async def test_a_release_runs_on_a_redis_cluster_of_three_masters(cluster: str) -> None:
    store = await Store.connect(cluster)
    policy = parse_policy(POLICY, "test")
    events = EventBus([])
    flags = FlagsBackend(FlagWriter(store.redis))
    actuator = TrafficActuator(store, lambda _s: flags, events)
    service = ReleaseService(store, policy, actuator, events)
    controller = Controller(store, policy, SyntheticSource(seed=1), actuator, events,
                            tick=0.05, lease_ttl=2.0, owner="a")
    events.start()
    try:
        deployed = await service.deploy(ALICE, "checkout", "v2", DeployOptions(stable="v1"))
        deadline = time.monotonic() + 60
        while (current := await store.get(deployed.release.id)) is not None and current.is_active:
            assert time.monotonic() < deadline, current.describe_state()
            await controller.run_once()
            await asyncio.sleep(0.02)
        assert current is not None and current.state is State.SUCCEEDED
        entries = list(reversed(await store.audit_tail(10_000)))
        assert [e.detail["weight"] for e in entries if e.action == "traffic"] == [
            1, 10, 25, 50, 100]
        lifecycle = await store.audit_between(0, stream=AuditStream.LIFECYCLE)
        actions = [e.action for e in lifecycle]
        assert actions[0] == "deploy" and actions.count("decision:succeed") == 1
        await store.save_message_refs(current.id, {"channel": "C1", "ts": "1.1"})
        assert await store.release_for_thread("C1", "1.1") == current
    finally:
        await actuator.close()
        await events.close()
        await store.close()
