"""A metrics source whose queries can be held: to catch the controller in the middle of a round.

Synthetic numbers underneath. Once ``armed``, the next instant query sets ``entered`` and waits
until the test sets ``go``; range queries and checks are never held. While ``unreadable``, every
instant query fails as an unreachable Prometheus makes it fail.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from bot.metrics.base import MetricQuery, QueryResult, SeriesResult
from bot.metrics.synthetic import SyntheticSource


class GatedSource:
    name = "gated synthetic"
    is_demo = True

    def __init__(self, *, seed: int = 3, armed: bool = False) -> None:
        self.inner = SyntheticSource(seed=seed)
        self.armed = armed
        self.entered = asyncio.Event()
        self.go = asyncio.Event()
        self.unreadable = False

    async def query(self, queries: Sequence[MetricQuery]) -> list[QueryResult]:
        if self.armed:
            self.entered.set()
            await self.go.wait()
        if self.unreadable:
            return [QueryResult.failed(q, "connection refused") for q in queries]
        return await self.inner.query(queries)

    async def query_series(
        self, queries: Sequence[MetricQuery], start: float, end: float, step: float
    ) -> list[SeriesResult]:
        return await self.inner.query_series(queries, start, end, step)

    async def check(self) -> None:
        return None

    async def close(self) -> None:
        return None
