"""Recorded metric history: what each query returned over time, read back as the controller
would have seen it at any past moment. Pure.

A Prometheus range query evaluates the instant query at every ``resolution`` seconds, so the
sample at a grid point *is* the answer an instant query would have had at that time. A round
at a moment between grid points reads the latest point before it (up to one resolution old),
and a statistical series is the grid points of its lookback, thinned to the metric's step.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Samples:
    """One query's (time, value) samples, oldest first; only finite values are kept."""

    times: tuple[float, ...] = ()
    values: tuple[float, ...] = ()

    @classmethod
    def of(cls, pairs: Sequence[tuple[float, float]]) -> Samples:
        ordered = sorted(pairs)
        return cls(tuple(t for t, _ in ordered), tuple(v for _, v in ordered))

    def __len__(self) -> int:
        return len(self.times)


@dataclass(frozen=True)
class History:
    """Samples per PromQL text, on one grid of ``resolution`` seconds over [start, end]."""

    start: float
    end: float
    resolution: float
    series: Mapping[str, Samples] = field(default_factory=dict)

    def at(self, promql: str, moment: float) -> float | None:
        """The value an instant query would have returned at ``moment``; None when the query
        returned nothing then (no series, or a NaN such as 0/0 on an idle window)."""
        samples = self.series.get(promql)
        if samples is None:
            return None
        i = bisect_right(samples.times, moment) - 1
        # A grid point further back than one resolution means the query had no answer at the
        # grid point in between: no data then, not the older value.
        if i < 0 or moment - samples.times[i] >= self.resolution * 1.5:
            return None
        return samples.values[i]

    def between(self, promql: str, moment: float, lookback: float, step: float) -> list[float]:
        """The series a range query over [moment - lookback, moment] at ``step`` would return:
        the grid points in that span, every ``step / resolution``-th counted back from the
        newest, oldest first."""
        samples = self.series.get(promql)
        if samples is None:
            return []
        lo = bisect_left(samples.times, moment - lookback - 1e-9)
        hi = bisect_right(samples.times, moment + 1e-9)
        stride = max(1, round(step / self.resolution))
        picked = list(samples.values[lo:hi])[::-1][::stride]
        return picked[::-1]

    def data_from(self, promqls: Iterable[str]) -> float:
        """When every one of ``promqls`` that has samples at all has begun to have them (the
        history's start when none has): judging before that would judge missing data."""
        firsts = [self.series[q].times[0] for q in promqls if len(self.series.get(q, Samples()))]
        return max([self.start, *firsts])
