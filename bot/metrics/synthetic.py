"""A seeded, in-process DEMO metrics source. It ignores PromQL and makes numbers up.

Used by the console demo and the benchmarks so the product can be tried without Prometheus.
Each (service, version) gets an error rate and a latency with noise; faults can be injected at
run time ("make checkout v2 five times slower") to watch a rollback happen.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from bot.metrics.base import (
    REQUESTS_METRIC,
    TOTAL_REQUESTS_METRIC,
    MetricQuery,
    QueryResult,
    SeriesResult,
)


@dataclass(frozen=True)
class Profile:
    base: float
    noise: float  # relative standard deviation


DEFAULT_PROFILES = {
    "error_rate": Profile(0.004, 0.25),
    "latency_p99": Profile(0.25, 0.08),
    "latency_p95": Profile(0.18, 0.08),
    "success_rate": Profile(0.996, 0.001),
    REQUESTS_METRIC: Profile(600.0, 0.1),
    # Before a release, the stable version serves everything: 100 times the canary's count
    # above at 1%, so the demo's first step is big enough for its min_requests.
    TOTAL_REQUESTS_METRIC: Profile(60_000.0, 0.1),
}
FALLBACK = Profile(1.0, 0.05)


class SyntheticSource:
    name = "synthetic (demo data)"
    is_demo = True

    def __init__(self, seed: int = 7, profiles: dict[str, Profile] | None = None) -> None:
        self._rng = random.Random(seed)
        self.profiles = {**DEFAULT_PROFILES, **(profiles or {})}
        # (service, version or "*", metric) -> multiplier on the profile's base value
        self._faults: dict[tuple[str, str, str], float] = {}
        self.queries_answered = 0

    def inject(self, service: str, metric: str, factor: float, version: str = "*") -> None:
        """Multiply ``metric`` of ``service`` (one version, or every version with "*")."""
        self._faults[(service, version, metric)] = factor

    def clear(self, service: str | None = None) -> None:
        for key in [k for k in self._faults if service is None or k[0] == service]:
            del self._faults[key]

    def faults(self) -> dict[tuple[str, str, str], float]:
        return dict(self._faults)

    def value(self, q: MetricQuery) -> float:
        profile = self.profiles.get(q.metric, FALLBACK)
        factor = self._faults.get(
            (q.service, q.version, q.metric), self._faults.get((q.service, "*", q.metric), 1.0)
        )
        noisy = profile.base * factor * (1 + self._rng.gauss(0.0, profile.noise))
        return max(0.0, noisy)

    async def query(self, queries: Sequence[MetricQuery]) -> list[QueryResult]:
        self.queries_answered += len(queries)
        return [QueryResult.ok(q, self.value(q)) for q in queries]

    async def query_series(
        self, queries: Sequence[MetricQuery], start: float, end: float, step: float
    ) -> list[SeriesResult]:
        points = max(1, int((end - start) // max(step, 1e-3)) + 1)
        self.queries_answered += len(queries)
        return [SeriesResult.ok(q, [self.value(q) for _ in range(points)]) for q in queries]

    async def check(self) -> None:
        return None

    async def close(self) -> None:
        return None
