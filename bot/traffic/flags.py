"""Traffic backend that moves users by rewriting the service's canary flag in Redis.

Applications embed ``bot.flags.FlagClient`` and route each request with ``variant()``; this
backend is the writing side. ``apply`` returns once Redis has stored and published the new
state: clients converge within pub/sub latency, or one poll interval if a message is lost.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from bot.errors import TrafficError
from bot.flags import FlagState, FlagStoreError, FlagWriter
from bot.traffic.base import Applied, TrafficChange, target_weight


class FlagsBackend:
    """TrafficBackend over ``bot.flags``'s writer (which talks to Redis for it)."""

    name = "flags"

    def __init__(self, writer: FlagWriter, *, clock: Callable[[], float] = time.time) -> None:
        self._writer = writer
        self._clock = clock

    async def apply(self, change: TrafficChange) -> None:
        """Write the flag for ``change``; raises TrafficError if Redis did not take it."""
        pct = target_weight(change)
        try:
            state = FlagState(
                service=change.service,
                pct=pct,
                canary_version=change.version,
                stable_version=change.stable_version,
                release_id=change.release_id,
                seq=0,  # assigned by Redis
                updated_at=self._clock(),
            )
        except ValueError as exc:
            raise TrafficError(
                f"cannot set the canary flag of `{change.service}` ({change.action}): {exc}"
            ) from exc
        try:
            await self._writer.publish(state)
        except FlagStoreError as exc:
            raise TrafficError(
                f"could not set the canary flag of `{change.service}` to {pct}% "
                f"({change.action} of release {change.release_id}) in Redis: {exc}"
            ) from exc

    async def current(self, service: str) -> Applied:
        """What the flag in Redis applies for ``service`` (weight None: no flag)."""
        state = await self.flag(service)
        if state is None:
            return Applied(None)
        return Applied(state.pct, state.canary_version, state.stable_version)

    async def flag(self, service: str) -> FlagState | None:
        """The flag state Redis holds for ``service``, or None if it has none."""
        try:
            return await self._writer.read(service)
        except FlagStoreError as exc:
            raise TrafficError(
                f"could not read the canary flag of `{service}` from Redis: {exc}"
            ) from exc
        except ValueError as exc:
            raise TrafficError(
                f"the canary flag of `{service}` in Redis is malformed ({exc}); "
                f"fix or delete field `{service}` of hash `{self._writer.key}`"
            ) from exc

    async def close(self) -> None:
        """Nothing to release: the writer's Redis client belongs to the caller."""
