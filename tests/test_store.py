"""Store against a real redis-server: the Lua-scripted create/commit (expected rev, fencing
token, idempotency, audit), the active index, locks and leases."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
import redis.asyncio as aioredis

from bot.release import rollout
from bot.release.policy import Risk, Strategy
from bot.release.rollout import Actor, Release, State
from bot.store import keys
from bot.store.audit import AuditEntry
from bot.store.store import CommitStatus, CreateStatus, Lock, LockStatus, Store

ALICE = Actor(user="alice", surface="slack")
BOB = Actor(user="bob", surface="api")


@pytest.fixture
def store(redis_client: aioredis.Redis) -> Store:
    return Store(redis_client)


def make_release(release_id: str, service: str = "checkout", version: str = "v2",
                 actor: Actor = ALICE) -> Release:
    return rollout.new_release(
        release_id=release_id, number=1, service=service, version=version,
        stable_version="v1", weights=[1, 10, 100], holds=[1.0, 1.0, 1.0], interval=0.1,
        bake=1.0, strategy=Strategy.CANARY, risk=Risk.NORMAL, notes="", actor=actor,
        now=time.time())


def deploy_audit(release: Release, actor: Actor = ALICE) -> AuditEntry:
    return AuditEntry(action="deploy", actor=actor.user, surface=actor.surface,
                      service=release.service, release_id=release.id, to_state=release.state)


def move_audit(old: Release, new: Release, action: str, actor: Actor = ALICE) -> AuditEntry:
    return AuditEntry(action=action, actor=actor.user, surface=actor.surface,
                      service=old.service, release_id=old.id, from_state=old.state,
                      to_state=new.state, detail={"weight": new.weight})


async def created(store: Store, release_id: str = "rel-1", service: str = "checkout") -> Release:
    release = make_release(release_id, service=service)
    result = await store.create(release, deploy_audit(release))
    assert result.status is CreateStatus.OK
    stored = await store.get(release_id)
    assert stored is not None
    return stored


async def audit_oldest_first(store: Store) -> list[AuditEntry]:
    return list(reversed(await store.audit_tail(1000)))


# --- create -------------------------------------------------------------------------------


async def test_create_and_get_round_trip(store: Store, redis_client: aioredis.Redis) -> None:
    release = make_release("rel-1")
    result = await store.create(release, deploy_audit(release))

    assert result.status is CreateStatus.OK
    assert result.release_id == "rel-1"
    assert await store.get("rel-1") == release
    stored = await redis_client.get(keys.release("rel-1"))
    assert stored is not None
    assert json.loads(stored)["schema_version"] == rollout.SCHEMA_VERSION
    assert await store.active_index() == {"checkout": "rel-1"}
    assert await store.active_for("checkout") == release
    assert [r.id for r in await store.history("checkout")] == ["rel-1"]
    [entry] = await store.audit_tail()
    assert (entry.action, entry.actor, entry.surface, entry.release_id, entry.to_state) == (
        "deploy", "alice", "slack", "rel-1", State.PROGRESSING)


async def test_second_create_for_an_active_service_is_refused(store: Store) -> None:
    first = await created(store, "rel-1")
    second = make_release("rel-2", version="v3", actor=BOB)

    result = await store.create(second, deploy_audit(second, BOB))

    assert result.status is CreateStatus.ACTIVE
    assert result.release_id == first.id  # names the release that holds the service
    assert await store.get("rel-2") is None
    assert await store.active_index() == {"checkout": "rel-1"}
    assert [r.id for r in await store.history("checkout")] == ["rel-1"]
    assert len(await store.audit_tail()) == 1  # the refused create wrote nothing


async def test_create_for_another_service_is_independent(store: Store) -> None:
    await created(store, "rel-1")
    await created(store, "rel-2", service="payments")
    assert await store.active_index() == {"checkout": "rel-1", "payments": "rel-2"}


async def test_create_on_a_locked_service_is_refused(store: Store) -> None:
    lock = Lock(service="checkout", by="carol", reason="freeze for black friday",
                at=time.time(), surface="api")
    status, _ = await store.lock(lock, AuditEntry(action="lock", actor="carol", surface="api",
                                                  service="checkout"))
    assert status is LockStatus.OK
    release = make_release("rel-1")

    result = await store.create(release, deploy_audit(release))

    assert result.status is CreateStatus.LOCKED
    assert result.lock is not None
    assert (result.lock.by, result.lock.reason, result.lock.surface) == (
        "carol", "freeze for black friday", "api")
    assert "carol" in result.lock.describe() and "black friday" in result.lock.describe()
    assert await store.get("rel-1") is None
    assert await store.active_index() == {}


async def test_create_with_a_seen_request_id_is_a_duplicate(store: Store) -> None:
    first = make_release("rel-1")
    assert (await store.create(first, deploy_audit(first), "req-1")).status is CreateStatus.OK
    retry = make_release("rel-2")  # a retry builds a new record with a new id

    result = await store.create(retry, deploy_audit(retry), "req-1")

    assert result.status is CreateStatus.DUPLICATE
    assert result.release_id == "rel-1"
    assert await store.get("rel-2") is None
    assert len(await store.audit_tail()) == 1


async def test_a_retried_lock_or_unlock_changes_nothing(store: Store) -> None:
    lock = Lock(service="checkout", by="carol", reason="incident", at=time.time())
    audit = AuditEntry(action="lock", actor="carol", surface="slack", service="checkout")
    unlock = AuditEntry(action="unlock", actor="carol", surface="slack", service="checkout")

    assert (await store.lock(lock, audit, "slack:t1"))[0] is LockStatus.OK
    assert (await store.unlock("checkout", unlock, "slack:t2"))[0] is LockStatus.OK
    # Slack delivers the lock again (same trigger): it does not lock the service again.
    status, again = await store.lock(lock, audit, "slack:t1")
    assert status is LockStatus.DUPLICATE and again.reason == "incident"
    assert await store.get_lock("checkout") is None
    # And a retried unlock does not lift a lock someone took since.
    other = Lock(service="checkout", by="dave", reason="release freeze", at=time.time())
    assert (await store.lock(other, audit, "slack:t3"))[0] is LockStatus.OK
    status, removed = await store.unlock("checkout", unlock, "slack:t2")
    assert status is LockStatus.DUPLICATE and removed is not None and removed.by == "carol"
    held = await store.get_lock("checkout")
    assert held is not None and held.by == "dave"
    assert [e.action for e in await store.audit_tail()].count("lock") == 2


async def test_lock_twice_returns_the_holder_and_unlock_lifts_it(store: Store) -> None:
    first = Lock(service="checkout", by="carol", reason="incident", at=time.time())
    other = Lock(service="checkout", by="dave", reason="mine", at=time.time())
    audit = AuditEntry(action="lock", actor="x", surface="api", service="checkout")

    assert (await store.lock(first, audit))[0] is LockStatus.OK
    status, holder = await store.lock(other, audit)
    assert status is LockStatus.LOCKED and (holder.by, holder.reason) == ("carol", "incident")

    status, removed = await store.unlock("checkout", AuditEntry(action="unlock", actor="carol",
                                                                surface="api", service="checkout"))
    assert status is LockStatus.OK and removed is not None and removed.by == "carol"
    assert await store.get_lock("checkout") is None
    assert await store.unlock("checkout", audit) == (LockStatus.NONE, None)
    release = make_release("rel-1")
    assert (await store.create(release, deploy_audit(release))).status is CreateStatus.OK
    # lock, unlock and the deploy are audited; the refused lock and the no-op unlock are not
    assert [e.action for e in await audit_oldest_first(store)] == ["lock", "unlock", "deploy"]


# --- commit -------------------------------------------------------------------------------


async def test_commit_bumps_rev_and_writes_one_audit_entry(store: Store) -> None:
    release = await created(store)
    moved = rollout.advance(release, ALICE, time.time(), "by hand")

    result = await store.commit(moved, expected_rev=release.rev,
                                audit=move_audit(release, moved, "advance"))

    assert result.status is CommitStatus.OK
    assert result.current is not None and result.current.rev == release.rev + 1
    stored = await store.get(release.id)
    assert stored is not None
    assert (stored.rev, stored.step, stored.weight) == (release.rev + 1, 1, 10)
    entries = await audit_oldest_first(store)
    assert [e.action for e in entries] == ["deploy", "advance"]
    advance = entries[1]
    assert (advance.actor, advance.surface, advance.from_state, advance.to_state) == (
        "alice", "slack", State.PROGRESSING, State.PROGRESSING)
    assert advance.detail == {"weight": 10}


async def test_commit_without_audit_writes_no_entry(store: Store) -> None:
    release = await created(store)
    note = release.model_copy(update={"notes": "x"})
    result = await store.commit(note, expected_rev=release.rev, audit=None)
    assert result.status is CommitStatus.OK
    assert len(await store.audit_tail()) == 1


async def test_commit_with_stale_rev_is_a_conflict_with_the_winner(store: Store) -> None:
    release = await created(store)
    now = time.time()
    winner = rollout.advance(release, ALICE, now, "alice first")
    loser = rollout.pause(release, BOB, now, "bob second")
    won = await store.commit(winner, expected_rev=release.rev,
                             audit=move_audit(release, winner, "advance"))
    assert won.status is CommitStatus.OK

    result = await store.commit(loser, expected_rev=release.rev,
                                audit=move_audit(release, loser, "pause", BOB))

    assert result.status is CommitStatus.CONFLICT
    assert result.current is not None
    assert (result.current.rev, result.current.step, result.current.last.by) == (
        release.rev + 1, 1, "alice")
    stored = await store.get(release.id)
    assert stored is not None and stored.state is State.PROGRESSING and stored.step == 1
    assert [e.action for e in await audit_oldest_first(store)] == ["deploy", "advance"]


async def test_commit_of_an_unknown_release_is_missing(store: Store) -> None:
    ghost = make_release("nope")
    result = await store.commit(ghost, expected_rev=0, audit=None)
    assert result.status is CommitStatus.MISSING
    assert await store.get("nope") is None


async def test_commit_with_a_wrong_fencing_token_is_fenced(store: Store) -> None:
    release = await created(store)
    tokens = await store.acquire_leases("a", [release.id], ttl=5)
    token = tokens[release.id]
    moved = rollout.advance(release, rollout.CONTROLLER, time.time(), "hold passed")

    for bad in (token + 1, token - 1):
        result = await store.commit(moved, expected_rev=release.rev,
                                    audit=move_audit(release, moved, "decision:advance"),
                                    fence=bad)
        assert result.status is CommitStatus.FENCED
    assert await store.get(release.id) == release
    assert len(await store.audit_tail()) == 1

    ok = await store.commit(moved, expected_rev=release.rev,
                            audit=move_audit(release, moved, "decision:advance"), fence=token)
    assert ok.status is CommitStatus.OK


async def test_commit_with_a_fence_but_no_lease_is_fenced(store: Store) -> None:
    release = await created(store)
    moved = rollout.advance(release, rollout.CONTROLLER, time.time(), "hold passed")
    result = await store.commit(moved, expected_rev=release.rev, audit=None, fence=1)
    assert result.status is CommitStatus.FENCED
    assert await store.get(release.id) == release


async def test_same_request_id_twice_is_a_duplicate_and_changes_nothing(store: Store) -> None:
    release = await created(store)
    moved = rollout.advance(release, ALICE, time.time(), "")
    first = await store.commit(moved, expected_rev=release.rev,
                               audit=move_audit(release, moved, "advance"), request_id="req-7",
                               result={"release_id": release.id, "step": 1})
    assert first.status is CommitStatus.OK
    after_first = await store.get(release.id)
    assert after_first is not None

    # The retry is built from the fresh record, so the rev check alone would let it through.
    again = rollout.advance(after_first, ALICE, time.time(), "")
    second = await store.commit(again, expected_rev=after_first.rev,
                                audit=move_audit(after_first, again, "advance"),
                                request_id="req-7")

    assert second.status is CommitStatus.DUPLICATE
    assert second.previous_result == {"release_id": release.id, "step": 1}
    assert await store.get(release.id) == after_first
    assert [e.action for e in await audit_oldest_first(store)] == ["deploy", "advance"]


async def test_audit_gets_one_entry_per_commit_in_order(store: Store) -> None:
    release = await created(store)
    now = time.time()
    paused = rollout.pause(release, BOB, now, "looks odd")
    r1 = await store.commit(paused, expected_rev=release.rev,
                            audit=move_audit(release, paused, "pause", BOB))
    assert r1.current is not None
    resumed = rollout.resume(r1.current, ALICE, now)
    r2 = await store.commit(resumed, expected_rev=r1.current.rev,
                            audit=move_audit(r1.current, resumed, "resume"))
    assert r2.status is CommitStatus.OK

    entries = await audit_oldest_first(store)
    assert [(e.action, e.actor, e.surface, e.from_state, e.to_state) for e in entries] == [
        ("deploy", "alice", "slack", "", State.PROGRESSING),
        ("pause", "bob", "api", State.PROGRESSING, State.PAUSED),
        ("resume", "alice", "slack", State.PAUSED, State.PROGRESSING),
    ]
    assert all(e.release_id == release.id and e.service == "checkout" for e in entries)
    assert entries[0].at <= entries[1].at <= entries[2].at


async def test_terminal_commit_leaves_the_active_index(store: Store) -> None:
    release = await created(store)
    now = time.time()
    rolling = rollout.start_rollback(release, ALICE, now, "bad")
    r1 = await store.commit(rolling, expected_rev=release.rev, audit=None)
    assert r1.current is not None
    assert await store.active_index() == {"checkout": release.id}  # rolling back is active

    done = rollout.finish_rollback(r1.current, rollout.CONTROLLER, now)
    r2 = await store.commit(done, expected_rev=r1.current.rev, audit=None)

    assert r2.status is CommitStatus.OK
    assert await store.active_index() == {}
    assert await store.active_for("checkout") is None
    history = await store.history("checkout")
    assert [(r.id, r.state) for r in history] == [(release.id, State.ROLLED_BACK)]
    # The service is free again.
    assert (await store.create(make_release("rel-2"), deploy_audit(release))).status is (
        CreateStatus.OK)


async def test_terminal_commit_of_an_old_release_keeps_the_new_one_indexed(store: Store) -> None:
    old = await created(store, "rel-1")
    rolling = rollout.start_rollback(old, ALICE, time.time(), "bad")
    r1 = await store.commit(rolling, expected_rev=old.rev, audit=None)
    assert r1.current is not None
    await store.redis.hset(keys.active_index(), "checkout", "rel-2")  # someone else's release

    done = rollout.finish_rollback(r1.current, rollout.CONTROLLER, time.time())
    assert (await store.commit(done, expected_rev=r1.current.rev, audit=None)).status is (
        CommitStatus.OK)
    assert await store.active_index() == {"checkout": "rel-2"}


# --- leases -------------------------------------------------------------------------------


async def test_only_one_owner_gets_a_lease(store: Store) -> None:
    a = await store.acquire_leases("a", ["r1", "r2"], ttl=5)
    b = await store.acquire_leases("b", ["r1", "r2", "r3"], ttl=5)

    assert set(a) == {"r1", "r2"} and all(t > 0 for t in a.values())
    assert b == {"r3": b["r3"]}  # only the release nobody held
    # Renewing keeps the token.
    assert await store.acquire_leases("a", ["r1", "r2"], ttl=5) == a


async def test_expired_lease_goes_to_the_other_owner_with_a_higher_token(store: Store) -> None:
    a = await store.acquire_leases("a", ["r1"], ttl=0.2)
    assert await store.acquire_leases("b", ["r1"], ttl=0.2) == {}

    await asyncio.sleep(0.35)
    b = await store.acquire_leases("b", ["r1"], ttl=5)

    assert b["r1"] > a["r1"]
    assert await store.acquire_leases("a", ["r1"], ttl=5) == {}  # "a" cannot come back
    assert await store.redis.get(keys.lease("r1")) == f"b|{b['r1']}"


async def test_renewal_keeps_a_lease_alive_past_its_ttl(store: Store) -> None:
    a = await store.acquire_leases("a", ["r1"], ttl=0.3)
    for _ in range(4):
        await asyncio.sleep(0.1)
        assert await store.acquire_leases("a", ["r1"], ttl=0.3) == a
    assert await store.acquire_leases("b", ["r1"], ttl=0.3) == {}


async def test_drop_leases_frees_only_our_own(store: Store) -> None:
    a = await store.acquire_leases("a", ["r1", "r2"], ttl=5)
    b = await store.acquire_leases("b", ["r3"], ttl=5)

    dropped = await store.drop_leases("a", ["r1", "r2", "r3"])

    assert dropped == 2
    assert await store.redis.get(keys.lease("r3")) == f"b|{b['r3']}"
    taken = await store.acquire_leases("b", ["r1", "r2"], ttl=5)
    assert set(taken) == {"r1", "r2"}
    assert taken["r1"] > a["r1"] and taken["r2"] > a["r2"]
    assert await store.drop_leases("a", []) == 0
    assert await store.acquire_leases("a", [], ttl=5) == {}


# --- a release's own story ------------------------------------------------------------------


async def test_a_release_reads_its_own_lifecycle_entries_by_id(
    store: Store, redis_client: aioredis.Redis
) -> None:
    mine = await created(store, "rel-mine", service="checkout")
    other = await created(store, "rel-other", service="search")
    for release in (mine, other):  # interleaved with another service's releases
        moved = rollout.advance(release, ALICE, time.time(), "by hand")
        result = await store.commit(
            moved, expected_rev=release.rev, audit=move_audit(release, moved, "advance")
        )
        assert result.status is CommitStatus.OK
    refusal = AuditEntry(action="approve", actor="bob", surface="slack", service="checkout",
                         release_id="rel-mine", outcome="refused", reason="requester")  # fmt: skip
    await store.append_audit(refusal)
    routine = AuditEntry(action="decision:hold", actor="shipwatch", surface="controller",
                         service="checkout", release_id="rel-mine")  # fmt: skip
    await store.append_audit(routine)  # routine: the full stream only, not the story

    story = await store.lifecycle_of(mine)
    assert [(e.action, e.release_id) for e in story] == [
        ("deploy", "rel-mine"),
        ("advance", "rel-mine"),
        ("approve", "rel-mine"),
    ]
    assert story[2].outcome == "refused"
    # The list of ids lives as long as the release's history, never forever.
    assert await redis_client.ttl(keys.release_lifecycle("rel-mine")) > 0
    # A release begun before the ids were listed is read by time, to the same story.
    await redis_client.delete(keys.release_lifecycle("rel-mine"))
    assert [e.action for e in await store.lifecycle_of(mine)] == ["deploy", "advance", "approve"]


async def test_a_finished_release_keeps_its_story_for_the_retention(
    store: Store, redis_client: aioredis.Redis
) -> None:
    release = await created(store, "rel-done")
    now = time.time()
    done = rollout.finish_rollback(rollout.start_rollback(release, ALICE, now, "x"), ALICE, now)
    result = await store.commit(
        done, expected_rev=release.rev, audit=move_audit(release, done, "rolled_back")
    )
    assert result.status is CommitStatus.OK
    ttl = await redis_client.ttl(keys.release_lifecycle("rel-done"))
    assert 0 < ttl <= int(store.retention.releases)
    assert not done.is_active
    assert [e.action for e in await store.lifecycle_of(done)] == ["deploy", "rolled_back"]
