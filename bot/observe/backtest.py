"""`shipwatch backtest`'s reading: history from Prometheus, past releases from the audit.

Everything read here is handed to the pure judging (bot.judging.backtest): one range query per
distinct PromQL over the whole history (split into requests Prometheus accepts), and the
lifecycle audit stream through the store. Every call is bounded: the Prometheus source's
timeout on each request, the store's socket timeouts and AUDIT_TIMEOUT_S on the whole read.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from bot.errors import StoreError, UserError
from bot.judging.analysis import plan
from bot.judging.backtest import (
    ActualOutcome,
    PastRelease,
    ServiceInputs,
    StableSpan,
    queries_of,
    warmup,
)
from bot.judging.backtest_report import BacktestReport, ServiceReport, backtest_service
from bot.judging.effects import Effect, parse_effects
from bot.judging.history import History, Samples
from bot.judging.replay import StepMove, start_release
from bot.metrics.prometheus import PrometheusSource
from bot.release.plan import checked_version
from bot.release.policy import Policy, ServicePolicy
from bot.store.audit import AuditEntry, AuditStream
from bot.store.store import Store

log = logging.getLogger(__name__)

# Prometheus refuses a range query of more than 11,000 points per series; stay under it.
POINTS_PER_REQUEST = 10_000
# Past this many points per series over the whole history the grid gets coarser: a week at 1 s
# would be 600,000 points a query, more than a calibration needs.
MAX_POINTS = 100_000
AUDIT_TIMEOUT_S = 30.0
PARALLEL_QUERIES = 4


@dataclass(frozen=True)
class BacktestRequest:
    """What the command line asked for, checked before anything is read."""

    policy: Policy
    services: tuple[str, ...]
    since: float  # seconds of history
    prometheus_url: str
    prometheus_timeout: float = 5.0
    redis_url: str | None = None  # None: the audit is not read
    redis_note: str = ""  # why there is no redis_url
    aa_windows: int = 20
    inject: tuple[str, ...] = ()
    target: float = 0.01
    stable: str = ""  # the stable version when the audit cannot name it
    offset: float | None = None
    suggest: bool = True


@dataclass(frozen=True)
class Checked:
    services: dict[str, ServicePolicy]
    effects: dict[str, list[Effect]]


def check(req: BacktestRequest) -> Checked:
    """UserError for anything wrong with the request, before any I/O."""
    names = req.services or tuple(sorted(n for n, sp in req.policy.services.items() if sp.metrics))
    if not names:
        raise UserError(
            "no service of the policy has metrics: nothing to backtest",
            hint="add metrics to the policy (see the README's policy section)",
        )
    services = {n: req.policy.service(n) for n in names}
    for name, sp in services.items():
        if not sp.metrics:
            raise UserError(
                f"`{name}` has no metrics: nothing judges its releases",
                hint="pick a service with metrics, or add some to the policy",
            )
    effects: dict[str, list[Effect]] = {}
    for name, sp in services.items():
        try:
            effects[name] = parse_effects(req.inject, sp.metrics)
        except UserError as exc:
            raise UserError(f"{name}: {exc}") from exc
    if req.stable:
        checked_version(req.stable)
    if not 0 <= req.target < 1:
        raise UserError(
            f"--target-false-rate {req.target:g} is not a rate", hint="give one like 0.01 (1%)"
        )
    if req.aa_windows < 1:
        raise UserError("--aa-windows must be at least 1", hint="e.g. --aa-windows 20")
    if req.since <= 0:
        raise UserError("--since must be a positive duration", hint="e.g. --since 7d")
    return Checked(services, effects)


def resolution(services: Iterable[ServicePolicy], span: float) -> float:
    """The grid of the history: as fine as the finest round interval or statistical step
    (at least 1 s), coarser only to stay under MAX_POINTS per series."""
    finest = 60.0
    for sp in services:
        finest = min(finest, sp.interval)
        finest = min([finest, *(m.step for m in sp.metrics if m.uses_statistics)])
    finest = max(1.0, float(math.floor(finest)))
    return max(finest, float(math.ceil(span / MAX_POINTS)))


def queries_for(sp: ServicePolicy, service: str, versions: Iterable[str]) -> set[str]:
    """Every PromQL the controller would send for ``service`` at these versions (the plan of
    a release of each version against itself has both sides' texts)."""
    found: set[str] = set()
    for version in versions:
        found |= queries_of(plan(start_release(sp, service, version, version, 0.0), sp))
    return found


async def read_history(
    source: PrometheusSource, promqls: Sequence[str], start: float, end: float, step: float
) -> History:
    """One series per query over [start, end] at ``step``; MetricsError naming the query
    when one fails (a query error is a policy to fix before a backtest means anything)."""
    gate = asyncio.Semaphore(PARALLEL_QUERIES)
    chunk = step * POINTS_PER_REQUEST

    async def one(promql: str) -> tuple[str, Samples]:
        pairs: list[tuple[float, float]] = []
        lo = start
        while lo <= end:
            hi = min(end, lo + chunk)
            async with gate:
                pairs += await source.query_range(promql, lo, hi, step)
            lo = hi + step
        return promql, Samples.of(sorted(dict(pairs).items()))

    answers = await asyncio.gather(*(one(q) for q in promqls))
    return History(start, end, step, dict(answers))


# --- the audit ---------------------------------------------------------------------------------


async def read_audit(url: str, start: float, end: float) -> list[AuditEntry]:
    """The lifecycle entries of [start, end] (no routine holds), oldest first."""
    store = await asyncio.wait_for(Store.connect(url), AUDIT_TIMEOUT_S)
    try:
        return await asyncio.wait_for(
            store.audit_between(start, end, stream=AuditStream.LIFECYCLE), AUDIT_TIMEOUT_S
        )
    finally:
        await store.close()


def past_releases(entries: Sequence[AuditEntry], end: float) -> dict[str, list[PastRelease]]:
    """The releases the entries tell of, per service, each with its steps and its end.

    A release counts from its ``deploy`` entry (started before the history: left out). Its
    steps are the ``traffic`` confirmations of its weights; it left its canary at the first
    move to ``rolling_back``, at ``succeeded``, or is still on it at ``end``.
    """
    by_id: dict[str, list[AuditEntry]] = {}
    for e in entries:
        if e.release_id and e.outcome == "ok":
            by_id.setdefault(e.release_id, []).append(e)
    out: dict[str, list[PastRelease]] = {}
    for release_id, items in by_id.items():
        past = _past(release_id, sorted(items, key=lambda e: e.at), end)
        if past is not None:
            out.setdefault(items[0].service, []).append(past)
    return {s: sorted(v, key=lambda p: p.start) for s, v in out.items()}


def _past(release_id: str, items: list[AuditEntry], end: float) -> PastRelease | None:
    deploy = next((e for e in items if e.action == "deploy"), None)
    if deploy is None:
        return None
    detail = deploy.detail
    try:
        version = checked_version(str(detail.get("version", "")))
        stable = checked_version(str(detail.get("stable", "")))
        weights = tuple(int(w) for w in detail.get("steps", []))
    except (UserError, TypeError, ValueError):
        return None  # not a release this bot could have judged against a control
    moves = []
    for e in items:
        weight = e.detail.get("weight") if e.action == "traffic" else None
        if isinstance(weight, int) and weight in weights and weights.index(weight) > 0:
            moves.append(StepMove(e.at, weights.index(weight)))
    outcome: ActualOutcome = "active"
    at, by, reason = end, "", ""
    for e in items:
        if e.to_state == "rolling_back":
            outcome, at, by, reason = "rolled_back", e.at, e.actor, e.reason
            break
        if e.to_state == "succeeded":
            outcome, at = "succeeded", e.at
            break
    return PastRelease(
        release_id=release_id,
        number=0,
        version=version,
        stable=stable,
        weights=weights,
        start=deploy.at,
        moves=tuple(moves),
        left_canary_at=at,
        outcome=outcome,
        decided_by=by,
        reason=reason,
    )


def stable_spans(releases: Sequence[PastRelease], given: str) -> tuple[StableSpan, ...]:
    """The stable version over time: each deploy's control from its start, each success's
    version from its end; ``given`` (--stable) overrides them all."""
    if given:
        return (StableSpan(0.0, given),)
    spans = [StableSpan(p.start, p.stable) for p in releases]
    spans += [StableSpan(p.left_canary_at, p.version) for p in releases if p.outcome == "succeeded"]
    kept: list[StableSpan] = []
    for span in sorted(spans, key=lambda s: s.since):
        if not kept or kept[-1].version != span.version:  # only the changes
            kept.append(span)
    return tuple(kept)


# --- the whole run -----------------------------------------------------------------------------


async def run_backtest(req: BacktestRequest, now: float) -> BacktestReport:
    """Read, judge, report. UserError, or MetricsError (Prometheus unreachable, a query it
    refuses), for what the user must fix."""
    checked = check(req)
    start = now - req.since
    notes: list[str] = []
    by_service: dict[str, list[PastRelease]] = {}
    audit = req.redis_note or "not read"
    if req.redis_url:
        try:
            entries = await read_audit(req.redis_url, start, now)
        except (StoreError, TimeoutError, OSError) as exc:
            audit = f"skipped: Redis at {req.redis_url} could not be read ({exc})"
        else:
            by_service = past_releases(entries, now)
            audit = "read"
    step = resolution(checked.services.values(), req.since)
    plans: dict[str, tuple[ServicePolicy, tuple[StableSpan, ...], list[PastRelease]]] = {}
    for name, sp in checked.services.items():
        releases = by_service.get(name, [])
        spans = stable_spans(releases, req.stable)
        if not spans:
            notes.append(
                f"{name}: skipped, no stable version known (no release of it in the audit): "
                "give --stable VERSION"
            )
            continue
        plans[name] = (sp, spans, releases)
    if not plans:
        raise UserError(
            "no stable version known for any service: the audit names none",
            hint="give the version running now with --stable VERSION",
        )
    source = PrometheusSource(req.prometheus_url, timeout=req.prometheus_timeout)
    try:
        await source.check()
        promqls: set[str] = set()
        for name, (sp, spans, releases) in plans.items():
            versions = {s.version for s in spans} | {p.version for p in releases}
            promqls |= queries_for(sp, name, versions)
        lead = max(warmup(sp) for sp, _, _ in plans.values())
        history = await read_history(source, sorted(promqls), start - lead, now, step)
    finally:
        await source.close()
    reports: list[ServiceReport] = []
    for name, (sp, spans, releases) in plans.items():
        inputs = ServiceInputs(
            service=name,
            sp=sp,
            history=history,
            stable=spans,
            releases=tuple(releases),
            effects=tuple(checked.effects[name]),
            aa_windows=req.aa_windows,
            offset=req.offset,
        )
        # Judging is CPU work: off the loop, so a signal is still handled promptly.
        reports.append(
            await asyncio.to_thread(backtest_service, inputs, req.target, suggest=req.suggest)
        )
        if not reports[-1].aa.runs:
            notes.append(
                f"{name}: the history is shorter than one release of the policy plus its "
                "split; no A/A window fits (give a longer --since, or a policy with shorter "
                "holds and bake)"
            )
    return BacktestReport(
        policy=req.policy.source,
        prometheus=req.prometheus_url,
        start=start,
        end=now,
        resolution=step,
        target=req.target,
        services=tuple(reports),
        audit=audit,
        notes=tuple(notes),
    )
