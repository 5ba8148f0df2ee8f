"""Redis persistence: release records, the active index, locks, leases, audit and idempotency.

Every multi-key change is one Lua script, so a transition, its audit entry and its idempotency
marker land together or not at all, and a commit that finds the record changed since it was
read reports that someone else won instead of overwriting.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import ResponseError

from bot.errors import StoreError
from bot.release.retention import Retention
from bot.release.rollout import Release
from bot.store import keys, scripts
from bot.store.audit import (
    AUDIT_PAGE,
    ROUTINE_ACTIONS,
    AuditEntry,
    AuditPage,
    AuditReach,
    AuditStream,
    stream_id_time,
)
from bot.store.connection import client_for, is_sentinel
from bot.store.hook_runs import HookRuns
from bot.store.jobs import WritingJobs
from bot.store.migrate import migrate
from bot.store.outbox import Outbox
from bot.store.redis_io import as_text as _text
from bot.store.redis_io import translated as _translated
from bot.store.watches import Watches
from bot.store.writings import Writings

log = logging.getLogger(__name__)

IDEMPOTENCY_TTL_S = 24 * 3600
# A release's first lifecycle id is its start's: written by the Redis server's clock, the
# record's times by the bot's. Later than this past the start, ids were not listed from the
# start (a release begun by an older version) and its story is read by time instead.
_INDEX_SLACK_S = 5.0
# How long a release change waits to reach the replicas (min_replicas) before going on.
REPLICA_WAIT_MS = 1000
HISTORY_LEN = 500
SERIES_LEN = 2000  # analysis rounds kept per release for charts (a long release is thinned)
# Longer than any release lasts: what an active release writes outlives it, and the commit that
# finishes it sets the retention from then on.
ACTIVE_TTL_S = 30 * 86400
GRANT_TTL_S = ACTIVE_TTL_S
SERIES_TTL_S = ACTIVE_TTL_S
FENCE_TTL_S = ACTIVE_TTL_S


class CommitStatus(StrEnum):
    OK = "ok"
    DUPLICATE = "duplicate"  # this request id was applied before; nothing changed
    CONFLICT = "conflict"  # the record changed since it was read: someone else won
    FENCED = "fenced"  # our lease was lost; another controller drives this release now
    MISSING = "missing"


@dataclass(frozen=True)
class CommitResult:
    status: CommitStatus
    current: Release | None = None  # the record that won, on conflict
    previous_result: dict[str, Any] | None = None  # on duplicate


@dataclass(frozen=True)
class Lock:
    service: str
    by: str
    reason: str
    at: float
    surface: str = ""

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(self.at))
        return f"`{self.service}` is locked by {self.by} since {when}: {self.reason}"


class LockStatus(StrEnum):
    OK = "ok"
    LOCKED = "locked"  # someone else's lock was there
    NONE = "none"  # nothing to unlock
    DUPLICATE = "duplicate"  # this request id was applied before


class CreateStatus(StrEnum):
    OK = "ok"
    DUPLICATE = "duplicate"
    LOCKED = "locked"
    ACTIVE = "active"


@dataclass(frozen=True)
class CreateResult:
    status: CreateStatus
    release_id: str = ""
    lock: Lock | None = None


def _dump(release: Release) -> str:
    return release.model_dump_json()


def _load(raw: object) -> Release | None:
    return None if raw is None else Release.model_validate_json(_text(raw))


# A member no user id can be: it keeps an empty group cached (Redis drops empty sets).
_EMPTY_GROUP = ""


class Store:
    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        retention: Retention | None = None,
        clock: Callable[[], float] = time.time,
        min_replicas: int = 0,
    ) -> None:
        self.redis = redis
        # Replicas each release change must reach before it is acted on (Sentinel failover).
        self.min_replicas = min_replicas
        self.retention = retention or Retention()
        self._clock = clock  # the age cut-offs of the audit streams are counted from it
        self._create = redis.register_script(scripts.CREATE)
        self._commit = redis.register_script(scripts.COMMIT)
        self._leases = redis.register_script(scripts.LEASES)
        self._drop_leases = redis.register_script(scripts.DROP_LEASES)
        self._lock = redis.register_script(scripts.LOCK)
        self._unlock = redis.register_script(scripts.UNLOCK)
        self._grant_step = redis.register_script(scripts.GRANT_STEP)
        self._append_audit = redis.register_script(scripts.APPEND_AUDIT)
        self.outbox = Outbox(redis)  # what the bot owes chat, kept until chat has it
        self.jobs = WritingJobs(redis)  # writing under way, for the next process to finish
        # Written after the fact (a diagnosis), kept as long as the finished release's record.
        self.writings = Writings(redis, lambda: self.retention.releases)
        self.watches = Watches(redis)  # the post-release watches of succeeded releases
        # Where each step's hooks stand, and the CI jobs they wait for (every process reads them).
        self.hook_runs = HookRuns(redis, lambda: self.retention.releases)

    @classmethod
    async def connect(
        cls, url: str, *, retention: Retention | None = None, min_replicas: int | None = None
    ) -> Store:
        """A store on a new client for ``url`` (a Redis or a Sentinel URL), checked with a PING
        (StoreError if not). ``min_replicas`` defaults to 1 behind Sentinel, else 0."""
        if min_replicas is None:
            min_replicas = 1 if is_sentinel(url) else 0
        store = cls(client_for(url), retention=retention, min_replicas=min_replicas)
        try:
            await store.ping()
            await migrate(store.redis)
        except StoreError:
            await store.close()
            raise
        return store

    async def _script(self, script: AsyncScript, keys: list[str], args: list[Any]) -> Any:
        """Run one of the store's scripts; with ``min_replicas``, return only once its writes
        are on that many replicas (or the wait timed out, which is logged: the write stands
        on the master, and a failover right now could lose it)."""
        if not self.min_replicas:
            return await script(keys=keys, args=args)
        # WAIT counts the writes of the connection it is sent on: one pipeline, one connection.
        async with self.redis.pipeline(transaction=False) as pipe:
            await script(keys=keys, args=args, client=pipe)
            pipe.wait(self.min_replicas, REPLICA_WAIT_MS)
            result, acked = await pipe.execute()
        if int(acked) < self.min_replicas:
            log.warning(
                "a release change reached %s of %s replicas within %s ms",
                acked,
                self.min_replicas,
                REPLICA_WAIT_MS,
            )
        return result

    async def close(self) -> None:
        await self.redis.aclose()

    async def ping(self) -> None:
        async with _translated("ping"):
            await self.redis.ping()

    async def next_number(self) -> int:
        async with _translated("numbering a release"):
            return int(await self.redis.incr(keys.release_seq()))

    # --- chat user groups, cached for every bot process -------------------------------------

    async def cached_group_members(self, group: str) -> set[str] | None:
        """The members cached for a chat user group, or None when nothing is cached."""
        async with _translated("reading a cached user group"):
            cached = await self.redis.smembers(keys.group_members(group))
        if not cached:
            return None
        return {str(m) for m in cached} - {_EMPTY_GROUP}

    async def cache_group_members(self, group: str, users: Sequence[str], ttl: int) -> None:
        key = keys.group_members(group)
        async with (
            _translated("caching a user group"),
            self.redis.pipeline(transaction=True) as pipe,
        ):
            pipe.delete(key)
            pipe.sadd(key, _EMPTY_GROUP, *users)  # the marker caches an empty group too
            pipe.expire(key, ttl)
            await pipe.execute()

    # --- releases ---------------------------------------------------------------------------

    async def create(
        self, release: Release, audit: AuditEntry, request_id: str = ""
    ) -> CreateResult:
        idem = json.dumps({"release_id": release.id, "action": "deploy"}) if request_id else ""
        async with _translated("starting a release"):
            status, payload = await self._script(
                self._create,
                [
                    keys.release(release.id),
                    keys.active_index(),
                    keys.history(release.service),
                    keys.lock(release.service),
                    keys.audit(),
                    keys.idempotency(request_id or "-"),
                    keys.lifecycle(),
                    keys.release_lifecycle(release.id),
                ],
                [
                    release.service,
                    release.id,
                    _dump(release),
                    idem,
                    IDEMPOTENCY_TTL_S,
                    HISTORY_LEN,
                    self._kept_after_end(),
                    *self._trim(AuditStream.FULL),
                    *self._trim(AuditStream.LIFECYCLE),
                    *audit.fields(),
                ],
            )
        status = CreateStatus(status)
        if status is CreateStatus.LOCKED:
            return CreateResult(status, lock=_lock_from(release.service, payload))
        if status is CreateStatus.DUPLICATE:
            return CreateResult(status, release_id=json.loads(payload)["release_id"])
        return CreateResult(status, release_id=payload)

    async def commit(
        self,
        new: Release,
        *,
        expected_rev: int,
        audit: AuditEntry | None,
        request_id: str = "",
        fence: int | None = None,
        result: dict[str, Any] | None = None,
    ) -> CommitResult:
        """Write ``new`` if the stored record is still at ``expected_rev`` (and, with a fence,
        if our lease still holds that token). The record's rev is bumped here."""
        record = new.model_copy(update={"rev": expected_rev + 1})
        idem = json.dumps(result or {"release_id": new.id}) if request_id else ""
        audit_fields = audit.fields() if audit else []
        async with _translated("saving a release"):
            status, payload = await self._script(
                self._commit,
                [
                    keys.release(new.id),
                    keys.active_index(),
                    keys.audit(),
                    keys.idempotency(request_id or "-"),
                    keys.lease(new.id),
                    keys.lifecycle(),
                    keys.series(new.id),
                    keys.release_lifecycle(new.id),
                    keys.fence(new.id),
                    keys.messages(new.id),
                    keys.granted_steps(new.id),
                ],
                [
                    str(expected_rev),
                    _dump(record),
                    new.service,
                    new.id,
                    "1" if not new.is_active else "0",
                    "" if fence is None else str(fence),
                    idem,
                    IDEMPOTENCY_TTL_S,
                    *self._trim(AuditStream.FULL),
                    *(
                        self._trim(AuditStream.LIFECYCLE)
                        if audit and audit.action not in ROUTINE_ACTIONS
                        else ("0", "0")
                    ),
                    int(self.retention.releases),
                    int(self.retention.charts),
                    *audit_fields,
                ],
            )
        st = CommitStatus(status)
        if st is CommitStatus.OK:
            return CommitResult(st, current=record)
        if st is CommitStatus.CONFLICT:
            return CommitResult(st, current=_load(payload))
        if st is CommitStatus.DUPLICATE:
            return CommitResult(st, previous_result=json.loads(payload))
        return CommitResult(st)

    async def applied(self, request_id: str) -> dict[str, Any] | None:
        """What a request id already did, if it was applied before (Slack retry, double click)."""
        if not request_id:
            return None
        async with _translated("checking a request id"):
            raw = await self.redis.get(keys.idempotency(request_id))
        return json.loads(_text(raw)) if raw else None

    async def get(self, release_id: str) -> Release | None:
        async with _translated("reading a release"):
            return _load(await self.redis.get(keys.release(release_id)))

    async def get_many(self, release_ids: Sequence[str]) -> list[Release]:
        if not release_ids:
            return []
        async with _translated("reading releases"):
            raws = await self.redis.mget([keys.release(i) for i in release_ids])
        return [r for r in (_load(raw) for raw in raws) if r is not None]

    async def active_index(self) -> dict[str, str]:
        async with _translated("listing active releases"):
            raw = await self.redis.hgetall(keys.active_index())
        return {_text(k): _text(v) for k, v in raw.items()}

    async def active_releases(self) -> list[Release]:
        index = await self.active_index()
        return await self.get_many(sorted(index.values()))

    async def active_for(self, service: str) -> Release | None:
        async with _translated("reading the active release"):
            release_id = await self.redis.hget(keys.active_index(), service)
        return await self.get(_text(release_id)) if release_id else None

    async def newest_release_ids(self, services: Iterable[str]) -> dict[str, str]:
        """Each service's newest release id (services with none are left out), in one
        round trip whatever their number."""
        names = sorted(set(services))
        if not names:
            return {}
        async with _translated("reading history"), self.redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.lindex(keys.history(name), 0)
            found = await pipe.execute()
        return {name: _text(i) for name, i in zip(names, found, strict=True) if i is not None}

    async def history(self, service: str, limit: int = 10) -> list[Release]:
        async with _translated("reading history"):
            ids = await self.redis.lrange(keys.history(service), 0, limit - 1)
        return await self.get_many([_text(i) for i in ids])

    # --- locks ------------------------------------------------------------------------------

    async def lock(
        self, lock: Lock, audit: AuditEntry, request_id: str = ""
    ) -> tuple[LockStatus, Lock]:
        """Take the lock. LOCKED with the lock that was there; DUPLICATE with the lock this
        request id took before (a retry changes nothing)."""
        data = json.dumps(
            {"by": lock.by, "reason": lock.reason, "at": lock.at, "surface": lock.surface}
        )
        async with _translated("locking"):
            status, raw = await self._lock(
                keys=[keys.lock(lock.service), keys.idempotency(request_id or "-")],
                args=[data, data if request_id else "", IDEMPOTENCY_TTL_S],
            )
            if _text(status) == "ok":
                await self.append_audit(audit)
        return LockStatus(_text(status)), _lock_from(lock.service, _text(raw))

    async def unlock(
        self, service: str, audit: AuditEntry, request_id: str = ""
    ) -> tuple[LockStatus, Lock | None]:
        """Drop the lock: OK with the lock removed, NONE when there was none, DUPLICATE with the
        lock this request id removed before."""
        async with _translated("unlocking"):
            status, raw = await self._unlock(
                keys=[keys.lock(service), keys.idempotency(request_id or "-")],
                args=[request_id, IDEMPOTENCY_TTL_S],
            )
            if _text(status) == "ok":
                await self.append_audit(audit)
        return LockStatus(_text(status)), _lock_from(service, _text(raw)) if raw else None

    async def get_lock(self, service: str) -> Lock | None:
        async with _translated("reading a lock"):
            raw = await self.redis.get(keys.lock(service))
        return _lock_from(service, _text(raw)) if raw else None

    # --- audit ------------------------------------------------------------------------------

    async def append_audit(self, entry: AuditEntry) -> None:
        lifecycle = entry.action not in ROUTINE_ACTIONS
        index_ttl = self._kept_after_end() if lifecycle and entry.release_id else 0
        async with _translated("writing the audit log"):
            await self._append_audit(
                keys=[
                    keys.audit(),
                    keys.lifecycle(),
                    keys.release_lifecycle(entry.release_id or "-"),
                ],
                args=[
                    *self._trim(AuditStream.FULL),
                    *(self._trim(AuditStream.LIFECYCLE) if lifecycle else ("0", "0")),
                    index_ttl,
                    *entry.fields(),
                ],
            )

    async def lifecycle_of(self, release: Release) -> list[AuditEntry]:
        """The release's entries in the lifecycle stream, oldest first: read by the ids listed
        under it, so the cost is the release's own story, not every service's since it
        started. A release that began before the ids were listed is read the old way."""
        async with _translated("reading the audit log"):
            listed = await self.redis.lrange(keys.release_lifecycle(release.id), 0, -1)
        ids = [_text(i) for i in listed]
        if not ids or stream_id_time(ids[0]) > release.created_at + _INDEX_SLACK_S:
            start = release.created_at - _INDEX_SLACK_S
            end = release.finished_at + _INDEX_SLACK_S if release.finished_at else None
            entries = await self.audit_between(start, end, stream=AuditStream.LIFECYCLE)
            return [e for e in entries if e.release_id == release.id]
        async with (
            _translated("reading the audit log"),
            self.redis.pipeline(transaction=False) as pipe,
        ):
            for entry_id in ids:
                pipe.xrange(keys.lifecycle(), min=entry_id, max=entry_id, count=1)
            rows = await pipe.execute()
        out = []
        for found in rows:
            for _, data in found or []:  # an entry trimmed by the retention is gone: skipped
                fields = {_text(k): _text(v) for k, v in (data or {}).items()}
                out.append(AuditEntry.from_fields(fields))
        return out

    def _trim(self, stream: AuditStream) -> tuple[str, str]:
        """(MINID, MAXLEN) that keep ``stream`` within its retention: the id below which
        entries are older than the kept age, and the count backstop."""
        r = self.retention
        age, cap = (
            (r.audit, r.audit_max_entries)
            if stream is AuditStream.FULL
            else (r.lifecycle, r.lifecycle_max_entries)
        )
        return f"{max(0, int((self._clock() - age) * 1000))}-0", str(cap)

    def _kept_after_end(self) -> int:
        """Seconds a release's history list is kept after its last release started: the
        retention of its records plus the longest a release runs."""
        return int(self.retention.releases) + ACTIVE_TTL_S

    async def audit_tail(self, count: int = 50, service: str | None = None) -> list[AuditEntry]:
        """Newest first."""
        async with _translated("reading the audit log"):
            rows = await self.redis.xrevrange(
                keys.audit(), count=count if not service else count * 20
            )
        entries = [
            AuditEntry.from_fields({_text(k): _text(v) for k, v in (data or {}).items()})
            for _, data in rows or []
        ]
        if service:
            entries = [e for e in entries if e.service == service]
        return entries[:count]

    async def audit_page(
        self,
        lo: str,
        hi: str = "+",
        *,
        count: int = AUDIT_PAGE,
        skip_actions: Collection[str] = (),
        stream: AuditStream = AuditStream.FULL,
    ) -> AuditPage:
        """Up to ``count`` entries with stream ids in [lo, hi], oldest first.

        Bounds are XRANGE ids: ``"1700000000000"`` (a millisecond time), ``"-"``/``"+"``, or
        ``"(<id>"`` for an exclusive bound, which is how the next page continues after
        ``last_id``. Entries whose action is in ``skip_actions`` are not parsed or returned.
        """
        async with _translated("reading the audit log"):
            rows = await self.redis.xrange(stream.key, min=lo, max=hi, count=count)
        entries = []
        for _, data in rows or []:
            fields = {_text(k): _text(v) for k, v in (data or {}).items()}
            if fields.get("action", "") not in skip_actions:
                entries.append(AuditEntry.from_fields(fields))
        last_id = _text(rows[-1][0]) if rows else ""
        return AuditPage(entries, last_id, complete=len(rows or []) < count)

    async def audit_between(
        self,
        start: float,
        end: float | None = None,
        *,
        skip_actions: Collection[str] = (),
        page: int = AUDIT_PAGE,
        stream: AuditStream = AuditStream.FULL,
    ) -> list[AuditEntry]:
        """Entries written in [start, end] (seconds; None = up to now), oldest first.

        The window is on the stream ids, i.e. the Redis server's clock when each entry was
        added, not on the entries' own ``at``. It is read ``page`` entries at a time, so a long
        stream never holds Redis up in one command.
        """
        lo = str(max(0, int(start * 1000)))
        hi = "+" if end is None else str(max(0, int(end * 1000)))
        out: list[AuditEntry] = []
        while True:
            chunk = await self.audit_page(
                lo, hi, count=page, skip_actions=skip_actions, stream=stream
            )
            out += chunk.entries
            if chunk.complete or not chunk.last_id:
                return out
            lo = f"({chunk.last_id}"

    async def audit_reach(self, stream: AuditStream = AuditStream.FULL) -> AuditReach:
        """How far back the (capped) stream reaches, and whether it was ever trimmed."""
        async with _translated("reading the audit log"):
            try:
                info = await self.redis.xinfo_stream(stream.key)
            except ResponseError as exc:
                if "no such key" in str(exc).lower():
                    return AuditReach(None, trimmed=False)
                raise
        first = info.get("first-entry")
        oldest = stream_id_time(_text(first[0])) if first else None
        length = int(info.get("length", 0))
        # entries-added exists from Redis 7; before it, a stream at its cap has been trimmed.
        added = info.get("entries-added")
        cap = (
            self.retention.audit_max_entries
            if stream is AuditStream.FULL
            else self.retention.lifecycle_max_entries
        )
        trimmed = int(added) > length if added is not None else length >= cap
        return AuditReach(oldest, trimmed)

    # --- chat messages ----------------------------------------------------------------------

    async def message_refs(self, release_id: str) -> dict[str, str]:
        """{channel, ts, thread_ts} of the release's status message, or {} before it exists."""
        async with _translated("reading message refs"):
            raw = await self.redis.hgetall(keys.messages(release_id))
        return {_text(k): _text(v) for k, v in raw.items()}

    async def save_message_refs(self, release_id: str, refs: dict[str, str]) -> None:
        async with (
            _translated("saving message refs"),
            self.redis.pipeline(transaction=True) as pipe,
        ):
            for field, value in refs.items():
                pipe.hset(keys.messages(release_id), field, value)
            # The refs are written while the release runs; the commit that finishes it sets
            # the retention on them (the thread link keeps this longest lifetime).
            kept = self._kept_after_end()
            pipe.expire(keys.messages(release_id), kept)
            if refs.get("channel") and refs.get("ts"):
                pipe.set(keys.thread(refs["channel"], refs["ts"]), release_id, ex=kept)
            await pipe.execute()

    async def release_for_thread(self, channel: str, thread_ts: str) -> Release | None:
        async with _translated("reading a thread"):
            release_id = await self.redis.get(keys.thread(channel, thread_ts))
        return await self.get(_text(release_id)) if release_id else None

    async def append_point(self, release_id: str, point: dict[str, Any]) -> None:
        """One analysis round's numbers (canary and control per metric), newest last."""
        async with (
            _translated("recording a data point"),
            self.redis.pipeline(transaction=False) as pipe,
        ):
            pipe.rpush(keys.series(release_id), json.dumps(point))
            pipe.ltrim(keys.series(release_id), -SERIES_LEN, -1)
            pipe.expire(keys.series(release_id), SERIES_TTL_S)
            await pipe.execute()

    async def points(self, release_id: str) -> list[dict[str, Any]]:
        async with _translated("reading data points"):
            raw = await self.redis.lrange(keys.series(release_id), 0, -1)
        return [json.loads(_text(r)) for r in raw]

    async def claim_digest(self, channel: str, day: str, ttl: int = 3 * 86400) -> bool:
        """True for the one process that posts a channel's digest of a local day (SET NX):
        replicas that find the marker set skip it. It outlives the day, then expires."""
        async with _translated("claiming a daily digest"):
            key = keys.digest_posted(channel, day)
            return bool(await self.redis.set(key, "1", nx=True, ex=ttl))

    async def first_time(self, event_id: str, ttl: int = 3600) -> bool:
        """True once per event id: deliveries retried by the platform are acted on once."""
        async with _translated("deduplicating an event"):
            return bool(await self.redis.set(keys.seen_event(event_id), "1", nx=True, ex=ttl))

    async def grant_step(self, release_id: str, allowed: int, ttl: int = GRANT_TTL_S) -> bool:
        """One more weight increase for an engine that asks first, if fewer than ``allowed``
        were granted for the release; atomic, so a retried or duplicated ask is never granted
        twice past what the release allows."""
        async with _translated("granting a step"):
            granted = await self._grant_step(
                keys=[keys.granted_steps(release_id)], args=[allowed, ttl]
            )
        return bool(granted)

    # --- leases -----------------------------------------------------------------------------

    async def acquire_leases(
        self, owner: str, release_ids: Sequence[str], ttl: float
    ) -> dict[str, int]:
        """Take or renew the lease of each release not driven by someone else. Returns the
        fencing token of every release this owner now drives."""
        if not release_ids:
            return {}
        key_list: list[str] = []
        for rid in release_ids:
            key_list += [keys.lease(rid), keys.fence(rid)]
        async with _translated("taking leases"):
            tokens = await self._leases(
                keys=key_list, args=[owner, max(1, int(ttl * 1000)), FENCE_TTL_S]
            )
        return {rid: int(t) for rid, t in zip(release_ids, tokens, strict=True) if int(t) > 0}

    async def drop_leases(self, owner: str, release_ids: Sequence[str]) -> int:
        if not release_ids:
            return 0
        async with _translated("dropping leases"):
            return int(
                await self._drop_leases(keys=[keys.lease(r) for r in release_ids], args=[owner])
            )


def _lock_from(service: str, raw: str) -> Lock:
    data = json.loads(raw)
    return Lock(
        service=service,
        by=data.get("by", "?"),
        reason=data.get("reason", ""),
        at=float(data.get("at", 0)),
        surface=data.get("surface", ""),
    )
