"""What was written about a release after the fact (its rollback diagnosis), kept for the
release page: the thread has it too, but people outside Slack cannot read the thread.
"""

from __future__ import annotations

from collections.abc import Callable

import redis.asyncio as aioredis

from bot.store import keys
from bot.store.redis_io import as_text, run

# The longest text kept: a diagnosis is a few paragraphs; a runaway answer is cut here.
MAX_CHARS = 20_000


class Writings:
    def __init__(self, redis: aioredis.Redis, kept_for: Callable[[], float]) -> None:
        self.redis = redis
        # The retention of a finished release's record, read when writing (the policy's).
        self._kept_for = kept_for

    async def save_diagnosis(self, release_id: str, text: str) -> None:
        await run(
            "keeping the diagnosis",
            self.redis.set(keys.diagnosis(release_id), text[:MAX_CHARS], ex=int(self._kept_for())),
        )

    async def diagnosis(self, release_id: str) -> str:
        """The release's diagnosis, "" when none was written (or it expired)."""
        raw = await run("reading the diagnosis", self.redis.get(keys.diagnosis(release_id)))
        return as_text(raw) if raw else ""
