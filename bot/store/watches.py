"""The post-release watches in Redis: one record per watched release, the set of running ones,
and the leases that make one process run each watch.
"""

from __future__ import annotations

from collections.abc import Sequence

import redis.asyncio as aioredis

from bot.release.watch import WatchRecord
from bot.store import keys, scripts
from bot.store.redis_io import as_text, run

# How long a watch record outlives its window: the report and the finding stay readable for a
# week after the watch closed, then the record goes by itself.
KEPT_AFTER_S = 7 * 86400
FENCE_TTL_S = 30 * 86400  # longer than any watch (14 d at most)

# KEYS: watch record, running set. ARGV: record, ttl s, ended '1'/'0', release id.
# The first end wins: a record already ended (closed, or superseded by a newer release) is never
# overwritten, so a watcher's late round cannot reopen a watch another process ended.
SAVE = """
local cur = redis.call('GET', KEYS[1])
if cur and cjson.decode(cur)['ended'] ~= '' then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
if ARGV[3] == '1' then redis.call('SREM', KEYS[2], ARGV[4])
else redis.call('SADD', KEYS[2], ARGV[4]) end
return 1
"""


class Watches:
    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis
        self._save = redis.register_script(SAVE)
        self._leases = redis.register_script(scripts.LEASES)
        self._drop = redis.register_script(scripts.DROP_LEASES)

    async def save(self, record: WatchRecord) -> bool:
        """Write ``record``; False when the watch had already ended (someone else ended it)."""
        ttl = int(record.window) + KEPT_AFTER_S
        ended = "1" if record.ended else "0"
        done = await run(
            "saving a watch",
            self._save(
                keys=[keys.watch(record.release_id), keys.watches()],
                args=[record.model_dump_json(), ttl, ended, record.release_id],
            ),
        )
        return bool(int(done))

    async def get(self, release_id: str) -> WatchRecord | None:
        raw = await run("reading a watch", self.redis.get(keys.watch(release_id)))
        return None if raw is None else WatchRecord.model_validate_json(as_text(raw))

    async def get_many(self, release_ids: Sequence[str]) -> dict[str, WatchRecord | None]:
        """The records of ``release_ids`` in one request (None where one expired)."""
        if not release_ids:
            return {}
        raws = await run("reading watches", self.redis.mget([keys.watch(r) for r in release_ids]))
        return {
            rid: None if raw is None else WatchRecord.model_validate_json(as_text(raw))
            for rid, raw in zip(release_ids, raws, strict=True)
        }

    async def running(self) -> list[str]:
        ids = await run("listing watches", self.redis.smembers(keys.watches()))
        return sorted(as_text(i) for i in ids)

    async def forget(self, release_id: str) -> None:
        """Drop a running entry whose record expired or cannot be read."""
        await run("listing watches", self.redis.srem(keys.watches(), release_id))

    async def acquire(self, owner: str, release_ids: Sequence[str], ttl: float) -> dict[str, int]:
        """Take or renew the watch lease of each release; the fencing token of each one held."""
        if not release_ids:
            return {}
        key_list: list[str] = []
        for rid in release_ids:
            key_list += [keys.watch_lease(rid), keys.watch_fence(rid)]
        tokens = await run(
            "taking watch leases",
            self._leases(keys=key_list, args=[owner, max(1, int(ttl * 1000)), FENCE_TTL_S]),
        )
        return {rid: int(t) for rid, t in zip(release_ids, tokens, strict=True) if int(t) > 0}

    async def release(self, owner: str, release_ids: Sequence[str]) -> None:
        if release_ids:
            await run(
                "dropping watch leases",
                self._drop(keys=[keys.watch_lease(r) for r in release_ids], args=[owner]),
            )
