"""The post-release watch: after a release succeeded, judge it against its pre-release baseline
at a slow cadence for the policy's window, say one thing on a finding, and close with a report.

The watch holds neither the service's release lock nor its active slot: the release is finished,
and a newer deploy of the service is accepted at once; the watcher sees it and ends the older
watch. Several processes may run a watcher; a lease per watch makes one of them judge it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable

from bot.engine.events import EventBus, EventKind, ReleaseEvent
from bot.judging import analysis
from bot.metrics.base import MetricSource
from bot.release.checks import CheckResult, Outcome
from bot.release.policy import Policy, ServicePolicy
from bot.release.rollout import Release, State
from bot.release.watch import Finding, MetricTally, WatchEnd, WatchRecord
from bot.store.store import Store

log = logging.getLogger(__name__)

# Pages the on-call about a finding (the pager's finding entry point, wired by the composition
# root); None when nobody is paged.
PageFinding = Callable[[Release, WatchRecord], Awaitable[object]]


class Watcher:
    def __init__(
        self,
        store: Store,
        policy: Policy,
        source: MetricSource,
        events: EventBus,
        *,
        page: PageFinding | None = None,
        tick: float = 5.0,
        lease_ttl: float = 30.0,
        owner: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.policy = policy
        self.source = source
        self.events = events
        self.page = page
        self.tick = tick
        self.lease_ttl = lease_ttl
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.clock = clock

    # --- starting a watch: the watcher listens to the bus for successes ----------------------

    async def notify(self, event: ReleaseEvent) -> None:
        if event.kind is EventKind.SUCCEEDED:
            await self.begin(event.release)

    async def begin(self, release: Release) -> WatchRecord | None:
        """Start watching ``release`` (it succeeded); None when its policy turns the watch off."""
        sp = self.policy.services.get(release.service)
        if sp is None or sp.watch.window <= 0 or release.state is not State.SUCCEEDED:
            return None
        record = WatchRecord(
            release_id=release.id,
            service=release.service,
            version=release.version,
            previous_version=release.stable_version or "",
            started_at=self.clock(),
            window=sp.watch.window,
            interval=sp.watch.interval,
            baseline=dict(release.baseline),
        )
        # A success delivered twice (a retried event) must not restart a watch under way.
        if await self.store.watches.get(release.id) is not None:
            return None
        await self.store.watches.save(record)
        log.info("%s: watching for %ss", release.label, sp.watch.window)
        return record

    # --- the loop ----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.run_once()
            except Exception:
                # An outage fails this round only: the records in Redis are untouched.
                log.exception("watch round failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.tick)
        with contextlib.suppress(Exception):
            await self.store.watches.release(self.owner, await self.store.watches.running())

    async def run_once(self) -> None:
        ids = await self.store.watches.running()
        held = await self.store.watches.acquire(self.owner, ids, self.lease_ttl)
        mine = [i for i in ids if i in held]
        if not mine:
            return
        # A tick reads every watch it holds in one request and each service's newest release
        # id in another: most ticks of a watch judge nothing (it judges every few minutes), so
        # the records of the releases themselves are read only when there is something to do.
        records = await self.store.watches.get_many(mine)
        live = [r for r in records.values() if r is not None and not r.ended]
        newest = await self.store.newest_release_ids({r.service for r in live})
        for release_id, record in records.items():
            if record is None:
                await self.store.watches.forget(release_id)  # expired: nothing left to watch
            elif not record.ended:
                await self._visit(record, newest.get(record.service))

    async def _visit(self, record: WatchRecord, newest_id: str | None) -> None:
        now = self.clock()
        superseded = newest_id is not None and newest_id != record.release_id
        if not superseded and now < record.ends_at and not record.due(now):
            return
        release = await self.store.get(record.release_id)
        if release is None:
            await self.store.watches.forget(record.release_id)
            return
        newer = await self.store.get(newest_id) if superseded and newest_id else None
        if newer is not None:
            ended = record.model_copy(update={"ended": WatchEnd.SUPERSEDED, "ended_by": newer.id})
            if await self.store.watches.save(ended):
                self._emit(EventKind.WATCH_SUPERSEDED, release, ended, detail=newer.version)
            return
        if now >= record.ends_at:
            closed = record.model_copy(update={"ended": WatchEnd.CLOSED})
            if await self.store.watches.save(closed):
                self._emit(EventKind.WATCH_CLOSED, release, closed)
            return
        sp = self.policy.services.get(record.service)
        if sp is None or not record.due(now):
            return
        await self._round(record, release, sp, now)

    async def _round(
        self, record: WatchRecord, release: Release, sp: ServicePolicy, now: float
    ) -> None:
        checks = await self._judge(record, release, sp, now)
        tallies = dict(record.tallies)
        failing = dict(record.failing)
        for check in checks:
            if check.canary is not None and check.outcome in (Outcome.PASS, Outcome.FAIL):
                tallies[check.metric] = tallies.get(check.metric, MetricTally()).add(check.canary)
            failed = check.outcome is Outcome.FAIL and not check.dry_run
            failing[check.metric] = failing.get(check.metric, 0) + 1 if failed else 0
        finding = record.finding or _finding(checks, failing, sp, now)
        updated = record.model_copy(
            update={
                "tallies": tallies,
                "failing": failing,
                "rounds": record.rounds + 1,
                "last_round_at": now,
                "finding": finding,
            }
        )
        if not await self.store.watches.save(updated):
            return  # ended meanwhile by another process (a newer release)
        if record.finding is None and finding is not None:
            # At most one message per watch: the finding is kept, later rounds only count.
            self._emit(EventKind.WATCH_FINDING, release, updated)
            if self.page is not None:
                try:
                    await self.page(release, updated)
                except Exception:
                    log.exception("%s: paging the watch finding failed", release.label)

    async def _judge(
        self, record: WatchRecord, release: Release, sp: ServicePolicy, now: float
    ) -> list[CheckResult]:
        # The same judging as the bake: at 100% there is no control left, so the thresholds
        # compare the release with the baseline frozen before it took all the traffic.
        as_baked = release.model_copy(
            update={"state": State.BAKING, "baseline": record.baseline or release.baseline}
        )
        plan = analysis.plan(as_baked, sp, at=now)
        answers = await self.source.query(plan.instant)
        result = analysis.analyse(plan, {a.key: a for a in answers}, {})
        return result.checks

    def _emit(
        self, kind: EventKind, release: Release, record: WatchRecord, detail: str = ""
    ) -> None:
        self.events.emit(ReleaseEvent(kind, release, detail=detail, at=self.clock(), watch=record))


def _finding(
    checks: list[CheckResult], failing: dict[str, int], sp: ServicePolicy, now: float
) -> Finding | None:
    """The first metric whose failures in a row reached its limit, like the release's own
    consecutive-failure rule: one bad scrape in 24 hours is a blip, not a finding."""
    limits = {m.name: m.failure_limit for m in sp.metrics}
    for check in checks:
        if check.outcome is Outcome.FAIL and failing.get(check.metric, 0) >= limits.get(
            check.metric, 1
        ):
            return Finding(
                metric=check.metric,
                value=check.canary,
                baseline=check.control,
                limit=check.limit,
                reason=check.reason,
                at=now,
            )
    return None
