"""Moving the keys of an older layout to the current one, once, when a store connects.

Keys written before the hash tag (``shipwatch:…``) are renamed under ``{shipwatch}:…`` so an
upgrade keeps every release, lock and audit entry. ``RENAMENX`` keeps a key's expiry and never
overwrites a key the new layout already has; a marker makes later starts skip the scan.
"""

from __future__ import annotations

import logging

import redis.asyncio as aioredis

from bot.store import keys
from bot.store.redis_io import as_text, translated

log = logging.getLogger(__name__)

LAYOUT = "2"  # keys under the hash-tagged prefix
_KEEP = frozenset({keys.flags()})  # the flag SDKs' contract: its name does not change
_SCAN_COUNT = 1000


async def migrate(redis: aioredis.Redis) -> int:
    """Move legacy keys under the current prefix (once); how many were moved."""
    async with translated("moving keys to the current layout"):
        if await redis.get(keys.schema()) == LAYOUT:
            return 0
        moved = 0
        async for raw in redis.scan_iter(match=f"{keys.LEGACY_PREFIX}*", count=_SCAN_COUNT):
            key = as_text(raw)
            if key in _KEEP:
                continue
            target = keys.PREFIX + key.removeprefix(keys.LEGACY_PREFIX)
            if await redis.renamenx(key, target):
                moved += 1
            else:
                log.warning("kept %s: %s already exists in the current layout", key, target)
        await redis.set(keys.schema(), LAYOUT)
    if moved:
        log.info("moved %d keys of an older shipwatch under %s", moved, keys.PREFIX)
    return moved
