"""The metrics-source port. A failed or empty query is data, never an exception and never a pass."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

# The metric name of the canary's request count (the minimum-traffic guard's query).
REQUESTS_METRIC = "requests"
# The metric name of the stable version's request count before a release starts, when it
# serves every request (first-step sizing: bot.judging.sizing). Same query as REQUESTS_METRIC.
TOTAL_REQUESTS_METRIC = "total_requests"


class Side(StrEnum):
    CANARY = "canary"
    CONTROL = "control"


class QueryStatus(StrEnum):
    OK = "ok"
    NO_DATA = "no_data"
    ERROR = "error"


@dataclass(frozen=True)
class MetricQuery:
    """One instant query: the rendered PromQL plus what it is about (the synthetic source
    reads the metric/service/version/side; Prometheus the PromQL).

    ``template`` and ``window`` are what ``promql`` was rendered from; when they are set,
    Prometheus may answer the queries of many releases that share them in one request
    (``bot.metrics.promql_batch``). Left empty, the query is asked as it is.
    """

    key: str
    promql: str
    metric: str
    service: str
    version: str
    side: Side
    template: str = ""
    window: str = ""


@dataclass(frozen=True)
class QueryResult:
    key: str
    status: QueryStatus
    value: float | None
    query: str
    error: str = ""

    @classmethod
    def ok(cls, q: MetricQuery, value: float) -> QueryResult:
        return cls(q.key, QueryStatus.OK, value, q.promql)

    @classmethod
    def no_data(cls, q: MetricQuery, why: str = "the query returned no series") -> QueryResult:
        return cls(q.key, QueryStatus.NO_DATA, None, q.promql, why)

    @classmethod
    def failed(cls, q: MetricQuery, error: str) -> QueryResult:
        return cls(q.key, QueryStatus.ERROR, None, q.promql, error)


class MetricSource(Protocol):
    """Answers instant queries. ``query`` returns exactly one result per query, in order,
    and never raises for a query that failed: the failure is in the result."""

    name: str
    is_demo: bool

    async def query(self, queries: Sequence[MetricQuery]) -> list[QueryResult]: ...

    async def query_series(
        self, queries: Sequence[MetricQuery], start: float, end: float, step: float
    ) -> list[SeriesResult]:
        """Range queries: one result per query, in order; failures are data, as above."""
        ...

    async def check(self) -> None:
        """Raise MetricsError when the source is unreachable (used by readiness checks)."""
        ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class SeriesResult:
    """Samples of one range query (oldest first), or why there are none."""

    key: str
    status: QueryStatus
    values: tuple[float, ...]
    query: str
    error: str = ""

    @classmethod
    def ok(cls, q: MetricQuery, values: Sequence[float]) -> SeriesResult:
        if not values:
            return cls(q.key, QueryStatus.NO_DATA, (), q.promql, "the query returned no samples")
        return cls(q.key, QueryStatus.OK, tuple(values), q.promql)

    @classmethod
    def failed(cls, q: MetricQuery, error: str) -> SeriesResult:
        return cls(q.key, QueryStatus.ERROR, (), q.promql, error)
