"""Writing under way (a diagnosis, release notes) that must outlive the process doing it.

Each job is recorded before it starts with the time its claim lapses; the process doing it
clears it when its event is out. A process that stops first leaves it behind: a graceful stop
makes it due at once, a crash lets the claim lapse, and whichever process looks next claims it.
"""

from __future__ import annotations

import time

import redis.asyncio as aioredis

from bot.store import keys
from bot.store.redis_io import as_text, run

CLAIM = """
-- KEYS: jobs   ARGV: now, lapse at, count
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
for _, job in ipairs(due) do redis.call('ZADD', KEYS[1], ARGV[2], job) end
return due
"""


class WritingJobs:
    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis
        self._claim = redis.register_script(CLAIM)

    async def begin(self, job: str, lapse: float) -> None:
        await run(
            "recording writing under way",
            self.redis.zadd(keys.writing_jobs(), {job: time.time() + lapse}),
        )

    async def end(self, job: str) -> None:
        await run("ending writing", self.redis.zrem(keys.writing_jobs(), job))

    async def hand_over(self, jobs: list[str]) -> None:
        """Jobs this process will not finish: due now, for the next process to take."""
        if jobs:
            await run(
                "handing writing over",
                self.redis.zadd(keys.writing_jobs(), dict.fromkeys(jobs, 0), xx=True),
            )

    async def claim(self, lapse: float, count: int = 10) -> list[str]:
        """Jobs whose claim lapsed (their process stopped), now claimed by the caller."""
        now = time.time()
        raw = await run(
            "claiming writing",
            self._claim(keys=[keys.writing_jobs()], args=[repr(now), repr(now + lapse), count]),
        )
        return [as_text(j) for j in raw]
