"""Canary flags: Unleash-compatible bucketing, the Redis writer, and FlagClient against a real
Redis (no mocks: every propagation path, reconnect and data-loss case runs for real)."""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.exceptions import RedisError
from UnleashClient.cache import FileCache
from UnleashClient.clients.unleash_client import UnleashClient
from UnleashClient.utils import normalized_hash

from bot.errors import TrafficError
from bot.flags import (
    CLIENT_NAME,
    FlagClient,
    FlagState,
    FlagStoreError,
    FlagWriter,
    in_canary,
    normalized_number,
)
from bot.store import keys
from bot.traffic.base import TrafficAction, TrafficBackend, TrafficChange
from bot.traffic.flags import FlagsBackend
from tests.support.procs import free_port

SERVICE = "checkout"
TIMEOUT = 5.0

MakeClient = Callable[..., Awaitable[FlagClient]]


def change(
    weight: int,
    action: TrafficAction = TrafficAction.SHIFT,
    *,
    service: str = SERVICE,
    release_id: str = "rel-1",
) -> TrafficChange:
    return TrafficChange(
        release_id=release_id,
        service=service,
        version="v2",
        stable_version="v1",
        weight=weight,
        action=action,
    )


def user_ids(count: int, seed: int = 7) -> list[str]:
    """A realistic mix of ids: numeric, uuid, e-mail-like and prefixed, deterministic."""
    rng = random.Random(seed)
    ids: list[str] = []
    for i in range(count):
        kind = i % 4
        if kind == 0:
            ids.append(str(rng.randrange(1, 10**9)))
        elif kind == 1:
            ids.append(str(uuid.UUID(int=rng.getrandbits(128), version=4)))
        elif kind == 2:
            ids.append(f"user{rng.randrange(10**6)}@example.com")
        else:
            ids.append(f"u-{i}")
    return ids


async def wait_for(
    client: FlagClient, predicate: Callable[[FlagState], bool], within: float = TIMEOUT
) -> FlagState:
    # FlagClient.wait_for blocks; run it off the event loop so the test's own Redis I/O and
    # the client's thread never wait on each other.
    return await asyncio.to_thread(client.wait_for, SERVICE, predicate, within)


def pct_is(pct: int) -> Callable[[FlagState], bool]:
    return lambda state: state.pct == pct


async def eventually(check: Callable[[], bool], within: float = TIMEOUT) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


@pytest.fixture
async def make_client(
    redis_url: str, redis_client: aioredis.Redis
) -> AsyncIterator[MakeClient]:
    """Started FlagClients on the (flushed) test database, closed after the test.

    The default poll interval is long so that a test passing proves pub/sub delivered,
    unless the test asks for a short one on purpose.
    """
    made: list[FlagClient] = []

    async def make(
        *,
        poll_interval: float = 60.0,
        group_id: str | None = None,
        on_change: Callable[[str, FlagState | None], None] | None = None,
    ) -> FlagClient:
        client = FlagClient(
            redis_url, poll_interval=poll_interval, group_id=group_id, on_change=on_change
        )
        made.append(client)
        await asyncio.to_thread(client.start)
        return client

    yield make
    for client in made:
        await asyncio.to_thread(client.close)


@pytest.fixture
def backend(redis_client: aioredis.Redis) -> FlagsBackend:
    return FlagsBackend(FlagWriter(redis_client))


# -- bucketing ---------------------------------------------------------------------------------


def test_bucketing_matches_unleash_specification_values() -> None:
    # The normalized values every Unleash SDK is tested against (client-specification).
    assert normalized_number("123", "gr1") == 73
    assert normalized_number("999", "groupX") == 25


@pytest.mark.parametrize("normalizer", [100, 1000, 10_000])
def test_bucketing_matches_unleash_python_sdk(normalizer: int) -> None:
    groups = ["checkout", "payments-api", "gr1", "", "ümlaut-svc"]
    for group in groups:
        for uid in user_ids(4000, seed=len(group)):
            assert normalized_number(uid, group, normalizer) == normalized_hash(
                uid, group, normalizer
            ), (uid, group)


async def test_flag_client_agrees_with_the_unleash_engine(
    make_client: MakeClient, backend: FlagsBackend, tmp_path: Path
) -> None:
    """Same users in the canary as an Unleash flexibleRollout flag at the same percentage."""
    pcts = [1, 25, 50, 99]
    cache = FileCache("shipwatch-test", directory=str(tmp_path))
    cache.bootstrap_from_dict(
        {
            "version": 1,
            "features": [
                {
                    "name": f"rollout-{pct}",
                    "enabled": True,
                    "strategies": [
                        {
                            "name": "flexibleRollout",
                            "parameters": {
                                "rollout": str(pct),
                                "stickiness": "userId",
                                "groupId": SERVICE,
                            },
                        }
                    ],
                }
                for pct in pcts
            ],
        }
    )
    unleash = UnleashClient(
        url=f"http://127.0.0.1:{free_port()}/api",  # nothing listens; never contacted
        app_name="shipwatch-test",
        disable_metrics=True,
        disable_registration=True,
        cache=cache,
    )
    unleash.initialize_client(fetch_toggles=False)  # evaluate the bootstrap, offline
    client = await make_client()
    ids = user_ids(2000)
    try:
        for pct in pcts:
            await backend.apply(change(pct))
            await wait_for(client, pct_is(pct))
            for uid in ids:
                ours = client.variant(SERVICE, uid) == "canary"
                assert ours == unleash.is_enabled(f"rollout-{pct}", {"userId": uid}), (pct, uid)
    finally:
        unleash.destroy()


def test_canary_membership_is_monotonic_in_pct() -> None:
    for uid in user_ids(5000):
        n = normalized_number(uid, SERVICE)
        inside = [in_canary(p, n) for p in range(101)]
        first = inside.index(True)
        assert not any(inside[:first]) and all(inside[first:]), uid
    assert not in_canary(0, 1)
    assert in_canary(100, 100)


async def test_users_stay_in_the_canary_as_it_grows(
    make_client: MakeClient, backend: FlagsBackend
) -> None:
    client = await make_client()
    ids = user_ids(20_000)
    previous: set[str] = set()
    for pct in [1, 5, 10, 25, 50, 75, 100]:
        await backend.apply(change(pct))
        await wait_for(client, pct_is(pct))
        canary = {uid for uid in ids if client.variant(SERVICE, uid) == "canary"}
        assert previous <= canary, f"users left the canary when it grew to {pct}%"
        previous = canary
    assert previous == set(ids)


async def test_canary_share_is_close_to_pct(
    make_client: MakeClient, backend: FlagsBackend
) -> None:
    client = await make_client()
    ids = user_ids(100_000)
    for pct in [1, 5, 10, 33, 50, 90]:
        await backend.apply(change(pct))
        await wait_for(client, pct_is(pct))
        share = 100 * sum(client.variant(SERVICE, uid) == "canary" for uid in ids) / len(ids)
        # Binomial sd at 50% over 100k users is 0.16 points; 0.6 is ~4 sd.
        assert abs(share - pct) < 0.6, (pct, share)


async def test_group_id_overrides_the_service_as_hash_group(
    make_client: MakeClient, backend: FlagsBackend
) -> None:
    client = await make_client(group_id="shared-group")
    await backend.apply(change(40))
    await wait_for(client, lambda s: s.pct == 40)
    for uid in user_ids(2000):
        expected = in_canary(40, normalized_number(uid, "shared-group"))
        assert (client.variant(SERVICE, uid) == "canary") is expected


# -- writer, backend and state -----------------------------------------------------------------


def test_flag_state_json_round_trip_and_validation() -> None:
    state = FlagState(SERVICE, 25, "v2", "v1", "rel-1", 3, 1_700_000_000.5)
    assert FlagState.from_json(state.to_json()) == state
    assert json.loads(state.to_json())["service"] == SERVICE
    # Another writer may store an integral number as a float.
    assert FlagState.from_json(state.to_json().replace('"pct":25', '"pct":25.0')).pct == 25
    bad = [
        "[]",
        "not json",
        state.to_json().replace('"pct":25', '"pct":101'),
        state.to_json().replace('"pct":25', '"pct":true'),
        state.to_json().replace('"pct":25', '"pct":2.5'),
        state.to_json().replace('"seq":3', '"seq":-1'),
        state.to_json().replace(f'"service":"{SERVICE}"', '"service":""'),
        json.dumps({"service": SERVICE, "pct": 1}),
    ]
    for raw in bad:
        with pytest.raises(ValueError):
            FlagState.from_json(raw)


async def test_backend_writes_state_with_increasing_seq(
    backend: FlagsBackend, redis_client: aioredis.Redis
) -> None:
    checked: TrafficBackend = backend  # the backend satisfies the port (checked by mypy)
    assert checked.name == "flags"
    assert await backend.flag(SERVICE) is None

    await backend.apply(change(5, TrafficAction.START))
    await backend.apply(change(20))
    state = await backend.flag(SERVICE)
    assert state is not None
    assert (state.pct, state.seq, state.canary_version, state.stable_version) == (20, 2, "v2", "v1")
    assert state.release_id == "rel-1" and state.updated_at > 0

    await backend.apply(change(20, TrafficAction.PROMOTE))
    promoted = await backend.flag(SERVICE)
    assert promoted is not None and (promoted.pct, promoted.seq) == (100, 3)
    await backend.apply(change(37, TrafficAction.ROLLBACK))
    rolled_back = await backend.flag(SERVICE)
    assert rolled_back is not None and (rolled_back.pct, rolled_back.seq) == (0, 4)

    raw = await redis_client.hget(keys.flags(), SERVICE)
    assert raw is not None and FlagState.from_json(raw) == rolled_back
    await backend.close()


async def test_concurrent_writers_never_reorder(
    make_client: MakeClient, backend: FlagsBackend, redis_url: str
) -> None:
    seen: list[FlagState] = []
    client = await make_client(on_change=lambda _s, st: seen.append(st) if st else None)
    writers = [aioredis.Redis.from_url(redis_url, decode_responses=True) for _ in range(5)]
    try:
        backends = [FlagsBackend(FlagWriter(w)) for w in writers]
        await asyncio.gather(
            *(backends[i % 5].apply(change(i % 101)) for i in range(50))
        )
    finally:
        for w in writers:
            await w.aclose()
    final = await backend.flag(SERVICE)
    assert final is not None and final.seq == 50
    await wait_for(client, lambda s: s.seq == 50)
    assert client.state(SERVICE) == final
    seqs = [s.seq for s in seen]
    assert seqs == sorted(set(seqs)), "a client applied an older state after a newer one"


async def test_backend_rejects_an_invalid_weight(backend: FlagsBackend) -> None:
    with pytest.raises(TrafficError, match=r"0\.\.100"):
        await backend.apply(change(101))


async def test_backend_refuses_to_overwrite_a_corrupt_flag(
    backend: FlagsBackend, redis_client: aioredis.Redis
) -> None:
    await redis_client.hset(keys.flags(), SERVICE, "{garbage")
    with pytest.raises(TrafficError, match="not valid JSON") as info:
        await backend.apply(change(10))
    # Through the SDK's writer, which names Redis's own error as its cause.
    assert isinstance(info.value.__cause__, FlagStoreError)
    assert isinstance(info.value.__cause__.__cause__, RedisError)
    with pytest.raises(TrafficError, match="malformed"):
        await backend.flag(SERVICE)


async def test_backend_translates_connection_errors() -> None:
    dead = aioredis.Redis.from_url(
        f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=1
    )
    try:
        backend = FlagsBackend(FlagWriter(dead))
        with pytest.raises(TrafficError, match="could not set the canary flag") as info:
            await backend.apply(change(10))
        assert isinstance(info.value.__cause__, FlagStoreError)
        assert isinstance(info.value.__cause__.__cause__, RedisError)
        with pytest.raises(TrafficError, match="could not read"):
            await backend.flag(SERVICE)
    finally:
        await dead.aclose()


# -- FlagClient --------------------------------------------------------------------------------


async def test_backend_change_reaches_a_subscribed_client(
    make_client: MakeClient, backend: FlagsBackend
) -> None:
    client = await make_client()  # polls once a minute: only pub/sub can deliver in time
    started = time.monotonic()
    await backend.apply(change(30, TrafficAction.START, release_id="rel-9"))
    state = await wait_for(client, lambda s: s.pct == 30, within=2.0)
    assert time.monotonic() - started < 2.0
    assert (state.release_id, state.canary_version, state.stable_version) == ("rel-9", "v2", "v1")
    assert client.pct(SERVICE) == 30


async def test_client_loads_existing_flags_on_start(
    redis_url: str, backend: FlagsBackend
) -> None:
    await backend.apply(change(45))
    with FlagClient(redis_url, poll_interval=60.0) as client:
        # No waiting: start() returns with the hash already loaded.
        assert client.pct(SERVICE) == 45


async def test_rollback_sends_everyone_to_stable(
    make_client: MakeClient, backend: FlagsBackend
) -> None:
    client = await make_client()
    ids = user_ids(10_000)
    await backend.apply(change(50))
    await wait_for(client, lambda s: s.pct == 50)
    assert any(client.variant(SERVICE, uid) == "canary" for uid in ids)

    await backend.apply(change(50, TrafficAction.ROLLBACK))
    await wait_for(client, lambda s: s.pct == 0)
    assert all(client.variant(SERVICE, uid) == "stable" for uid in ids)
    assert {client.version(SERVICE, uid) for uid in ids} == {"v1"}

    await backend.apply(change(0, TrafficAction.PROMOTE))
    await wait_for(client, lambda s: s.pct == 100)
    assert all(client.variant(SERVICE, uid) == "canary" for uid in ids)
    assert {client.version(SERVICE, uid) for uid in ids} == {"v2"}


async def test_unknown_service_is_stable(
    make_client: MakeClient, backend: FlagsBackend
) -> None:
    await backend.apply(change(100))
    client = await make_client()
    assert client.variant(SERVICE, "u-1") == "canary"
    assert client.variant("no-such-service", "u-1") == "stable"
    assert client.version("no-such-service", "u-1") is None
    assert client.pct("no-such-service") == 0
    assert client.state("no-such-service") is None


async def test_older_and_duplicate_seq_are_ignored(
    make_client: MakeClient, backend: FlagsBackend, redis_client: aioredis.Redis
) -> None:
    seen: list[tuple[int, int]] = []
    client = await make_client(
        on_change=lambda _svc, st: seen.append((st.seq, st.pct)) if st else None
    )
    await backend.apply(change(10))
    await backend.apply(change(20))
    current = await wait_for(client, lambda s: s.seq == 2)

    stale = FlagState(SERVICE, 90, "v2", "v1", "rel-1", 1, time.time())
    duplicate = FlagState(SERVICE, 95, "v2", "v1", "rel-1", 2, time.time())
    for message in (stale, duplicate):
        await redis_client.publish(keys.flags_channel(), message.to_json())
    # Messages on one subscription arrive in order, so once seq 3 is applied the stale ones
    # have been handled (and must have been dropped).
    await backend.apply(change(30))
    await wait_for(client, lambda s: s.seq == 3)
    assert seen == [(1, 10), (2, 20), (3, 30)]
    assert current.pct == 20


async def test_malformed_messages_and_failing_callbacks_do_not_stop_the_client(
    make_client: MakeClient, backend: FlagsBackend, redis_client: aioredis.Redis
) -> None:
    def explode(_service: str, _state: FlagState | None) -> None:
        raise RuntimeError("callback bug")

    client = await make_client(on_change=explode)
    for garbage in ("not json", "[1]", json.dumps({"service": SERVICE, "pct": 500})):
        await redis_client.publish(keys.flags_channel(), garbage)
    await backend.apply(change(12))
    await backend.apply(change(13))
    await wait_for(client, lambda s: s.pct == 13)


async def test_polling_heals_a_missed_message(
    make_client: MakeClient, backend: FlagsBackend, redis_client: aioredis.Redis
) -> None:
    client = await make_client(poll_interval=0.2)
    await backend.apply(change(10))
    await wait_for(client, lambda s: s.seq == 1)

    # Written to the hash without a PUBLISH: as if the message had been lost.
    silent = FlagState(SERVICE, 40, "v2", "v1", "rel-1", 2, time.time())
    await redis_client.hset(keys.flags(), SERVICE, silent.to_json())
    assert await wait_for(client, lambda s: s.seq == 2, within=3.0) == silent
    assert client.pct(SERVICE) == 40


async def test_client_follows_redis_after_it_lost_its_data(
    make_client: MakeClient, backend: FlagsBackend, redis_client: aioredis.Redis
) -> None:
    client = await make_client(poll_interval=0.2)
    for pct in (10, 20, 30):
        await backend.apply(change(pct))
    await wait_for(client, lambda s: s.seq == 3)

    # A restart without persistence: the seq starts again at 1, below what the client holds.
    # The message is (correctly) ignored as older; the next poll must still converge.
    await redis_client.flushdb()
    await backend.apply(change(5))
    state = await wait_for(client, lambda s: s.seq == 1, within=3.0)
    assert state.pct == 5

    # A flag deleted from Redis is no flag at all: everyone on stable.
    await redis_client.delete(keys.flags())
    await eventually(lambda: client.state(SERVICE) is None, within=3.0)
    assert client.variant(SERVICE, "u-1") == "stable"


async def test_client_reconnects_after_its_connection_is_killed(
    make_client: MakeClient, backend: FlagsBackend, redis_client: aioredis.Redis
) -> None:
    client = await make_client()  # no polling help within the test's time
    await backend.apply(change(10))
    await wait_for(client, lambda s: s.pct == 10)

    # Only this client's subscription: the Redis server is shared by the whole session.
    subscribers = await redis_client.client_list(_type="pubsub")
    ours = [c["id"] for c in subscribers if c.get("name") == CLIENT_NAME]
    assert len(ours) == 1
    assert await redis_client.client_kill_filter(_id=ours[0]) == 1
    # Written while the subscription is down: the reload after resubscribing must find it.
    await backend.apply(change(70))
    await wait_for(client, lambda s: s.pct == 70)
    # And the new subscription delivers later changes.
    await backend.apply(change(80))
    await wait_for(client, lambda s: s.pct == 80, within=2.0)


def test_client_without_redis_serves_stable_and_closes_quickly() -> None:
    client = FlagClient(f"redis://127.0.0.1:{free_port()}/0", poll_interval=0.5)
    started = time.monotonic()
    client.start()  # must not raise: an application boots even if Redis is down
    assert client.variant(SERVICE, "u-1") == "stable"
    assert client.version(SERVICE, "u-1") is None
    client.close()
    assert time.monotonic() - started < 3.0
    with pytest.raises(TimeoutError):
        client.wait_for(SERVICE, lambda s: True, timeout=0.05)
