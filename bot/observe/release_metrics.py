"""Release stats as Prometheus series: the numbers of observe.stats over fixed windows, per service.

Prometheus collectors are synchronous and the audit stream is read asynchronously, so the two
halves are apart: ``ReleaseMetrics.refresh`` (awaited by the /metrics handler) reads the stream
and computes, at most once per ``ttl``; ``SERIES``, registered in the bot's registry, serves
the last computed values to every scrape. A failed refresh is logged and counted and the last
values stay, so a Redis outage never breaks /metrics.

The stream is read incrementally: the first refresh reads the longest window (plus the
lookback of bot.observe.stats), later ones only what was added since, from the last stream id seen.
Entries that never change a number are skipped, and the ones kept are slimmed to the fields
the stats use, so the copy held here stays small.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bot.errors import StoreError
from bot.observe import stats, telemetry
from bot.observe.stats import ReleaseStats, ServiceStats, Spread
from bot.store.audit import AuditEntry, AuditReach, AuditStream
from bot.store.store import Store

log = logging.getLogger(__name__)

WINDOWS_DAYS = (7, 30)
REFRESH_EVERY_S = 30.0
# Below the compose Prometheus's 4 s scrape timeout. A first read of a long stream that does
# not fit goes on from where it stopped at the next scrape.
REFRESH_TIMEOUT_S = 2.0
_QUANTILES = (("0.5", "median"), ("0.9", "p90"), ("1", "max"))  # "1" is the slowest one
_DETAIL_USED = ("weight", "rollback_seconds")


def window_label(days: int) -> str:
    return f"{days}d"


class ReleaseSeries(Collector):
    """Serves the last published stats, one set of series per window label."""

    def __init__(self) -> None:
        self._by_window: dict[str, ReleaseStats] = {}

    def publish(self, by_window: Mapping[str, ReleaseStats]) -> None:
        self._by_window = dict(by_window)

    def describe(self) -> Iterable[Metric]:
        return _families({})

    def collect(self) -> Iterable[Metric]:
        return _families(self._by_window)


def _families(by_window: Mapping[str, ReleaseStats]) -> list[Metric]:
    base = ["service", "window"]
    deploys = GaugeMetricFamily(
        "shipwatch_release_deploys", "Releases started in the window.", labels=base
    )
    per_day = GaugeMetricFamily(
        "shipwatch_release_deploys_per_day",
        "Deploy frequency: releases started per day of the window.",
        labels=base,
    )
    finished = GaugeMetricFamily(
        "shipwatch_release_finished",
        "Releases that finished in the window, by outcome (succeeded, rolled_back).",
        labels=[*base, "outcome"],
    )
    ratio = GaugeMetricFamily(
        "shipwatch_release_rollback_ratio",
        "Rolled back / finished releases in the window (absent when none finished).",
        labels=base,
    )
    lead = GaugeMetricFamily(
        "shipwatch_release_lead_time_seconds",
        "Deploy request to traffic confirmed at 100% (quantile 1 = the slowest).",
        labels=[*base, "quantile"],
    )
    rollback = GaugeMetricFamily(
        "shipwatch_release_rollback_time_seconds",
        "Rollback decision (automatic or by a person) to 0% canary confirmed "
        "(quantile 1 = the slowest).",
        labels=[*base, "quantile"],
    )
    step = GaugeMetricFamily(
        "shipwatch_release_step_time_seconds",
        "Time at each canary weight, from its traffic confirmed to the next step's "
        "(100% = the bake; quantile 1 = the slowest).",
        labels=[*base, "weight", "quantile"],
    )
    wait = GaugeMetricFamily(
        "shipwatch_release_approval_wait_seconds",
        "Time a step waited for a person's approval, of waits that ended approved "
        "(quantile 1 = the longest).",
        labels=[*base, "quantile"],
    )
    waits = GaugeMetricFamily(
        "shipwatch_release_approval_waits",
        "Approval waits by how they ended: approved, rolled_back, or waiting (still open).",
        labels=[*base, "ended"],
    )
    refused = GaugeMetricFamily(
        "shipwatch_release_approvals_refused",
        "Approval attempts refused (not an approver, or the requester) in the window.",
        labels=base,
    )
    for label, snapshot in sorted(by_window.items()):
        for s in _scopes(snapshot):
            key = [s.service, label]
            deploys.add_metric(key, s.started)
            per_day.add_metric(key, s.deploys_per_day)
            finished.add_metric([*key, "succeeded"], s.succeeded)
            finished.add_metric([*key, "rolled_back"], s.rolled_back)
            if s.rollback_rate is not None:
                ratio.add_metric(key, s.rollback_rate)
            _quantiles(lead, key, s.lead_time)
            _quantiles(rollback, key, s.rollback_time)
            for weight, spread in s.step_time.items():
                _quantiles(step, [*key, str(weight)], spread)
            _quantiles(wait, key, s.approval_wait)
            waits.add_metric([*key, "approved"], s.approval_wait.count)
            waits.add_metric([*key, "rolled_back"], s.waits_rolled_back)
            waits.add_metric([*key, "waiting"], s.waits_open)
            refused.add_metric(key, s.approvals_refused)
    return [deploys, per_day, finished, ratio, lead, rollback, step, wait, waits, refused]


def _scopes(snapshot: ReleaseStats) -> list[ServiceStats]:
    """Every service with something in the window, and all of them together (ALL)."""
    return [snapshot.overall, *snapshot.by_service.values()]


def _quantiles(family: GaugeMetricFamily, key: Sequence[str], spread: Spread) -> None:
    for quantile, attr in _QUANTILES:
        value = getattr(spread, attr)
        if value is not None:
            family.add_metric([*key, quantile], value)


SERIES = ReleaseSeries()
telemetry.REGISTRY.register(SERIES)


class ReleaseMetrics:
    """Keeps ``SERIES`` up to date from one store's audit stream (see the module doc)."""

    def __init__(
        self,
        store: Store,
        *,
        windows: Sequence[int] = WINDOWS_DAYS,
        ttl: float = REFRESH_EVERY_S,
        timeout: float = REFRESH_TIMEOUT_S,
        clock: Callable[[], float] = time.time,
        series: ReleaseSeries = SERIES,
    ) -> None:
        self.store = store
        self.windows = tuple(windows)
        self.ttl = ttl
        self.timeout = timeout
        self.clock = clock
        self.series = series
        self._span = max(self.windows) * stats.DAY_S + stats.LOOKBACK_S
        self._entries: list[AuditEntry] = []
        self._cursor = ""  # stream id of the last entry read; "" before the first read
        self._tried_at: float | None = None
        self._lock = asyncio.Lock()

    async def refresh(self) -> bool:
        """Recompute unless that was tried less than ``ttl`` ago; True if the series changed.

        Never raises for a Redis failure or a slow read: it is logged and counted in
        ``shipwatch_release_stats_refresh_failures_total``, and the last values stay.
        """
        async with self._lock:  # concurrent scrapes: one reads, the others use its result
            now = self.clock()
            if self._tried_at is not None and now - self._tried_at < self.ttl:
                return False
            # Also after a failure: a Redis that is down is asked again only after ttl.
            self._tried_at = now
            try:
                reach = await asyncio.wait_for(self._catch_up(now), self.timeout)
            except (StoreError, TimeoutError, ValueError) as exc:
                telemetry.RELEASE_STATS_FAILURES.inc()
                log.warning(
                    "release stats not refreshed (the last values stay): %s",
                    str(exc) or type(exc).__name__,
                )
                return False
            horizon = now - self._span
            self._entries = [e for e in self._entries if e.at >= horizon]
            # Tens of thousands of entries take a 100 ms or more of pure Python: in a thread,
            # so the event loop (Slack acks, the controller) keeps its turns meanwhile.
            self.series.publish(
                await asyncio.to_thread(
                    self._compute, list(self._entries), now, reach.oldest if reach.trimmed else None
                )
            )
            telemetry.RELEASE_STATS_UPDATED.set(now)
            if reach.oldest is not None:
                telemetry.AUDIT_OLDEST.set(reach.oldest)
            return True

    def _compute(
        self, entries: list[AuditEntry], now: float, audit_from: float | None
    ) -> dict[str, ReleaseStats]:
        return {
            window_label(days): stats.compute(
                entries, start=now - days * stats.DAY_S, end=now, audit_from=audit_from
            )
            for days in self.windows
        }

    async def _catch_up(self, now: float) -> AuditReach:
        """Read what was added since the last read; how far back the stream reaches.

        Progress is kept page by page, so a read cut off by the timeout resumes where it
        stopped instead of starting over.
        """
        while True:
            lo = f"({self._cursor}" if self._cursor else str(int(max(0.0, now - self._span) * 1000))
            page = await self.store.audit_page(lo, stream=AuditStream.LIFECYCLE)
            self._entries += [_slim(e) for e in page.entries]
            self._cursor = page.last_id or self._cursor
            if page.complete:
                break
        return await self.store.audit_reach(AuditStream.LIFECYCLE)


def _slim(entry: AuditEntry) -> AuditEntry:
    """The entry without the detail the stats never read (check results, scores)."""
    detail = {k: entry.detail[k] for k in _DETAIL_USED if k in entry.detail}
    return dataclasses.replace(entry, detail=detail)
