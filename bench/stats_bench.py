"""Benchmark of the release metrics: reading and computing them from a full audit stream.

Run from the project root::

    .venv/bin/python -m bench.stats_bench [--entries 200000] [--repeat 5]

A private redis-server gets an audit stream of ``--entries`` entries (200,000 by default)
spread over the last 30 days, shaped like the controller writes it: per release a deploy, a
confirmed traffic change per step, a decision every round (mostly holds), then success or a
rollback (one in ten). It then times, side by side in one run:

- ``/rollout stats --days 7`` and ``--days 30`` as the command computes them (read the window
  plus the look-back from Redis, compute, render), from the lifecycle stream it reads and, for
  comparison, from the full audit stream (skipping holds);
- the ``/metrics`` refresher's first read (everything in the 30-day span) and a refresh after
  100 new entries (the incremental read every scrape does).

Prints a table, then one JSON object on the last line.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import random
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import redis.asyncio as aioredis
from redis.typing import EncodableT

from bot.observe import stats
from bot.observe.release_metrics import ReleaseMetrics, ReleaseSeries
from bot.store import keys
from bot.store.audit import ROUTINE_ACTIONS, AuditEntry, AuditStream
from bot.store.store import Store
from tests.support.procs import redis_server

WEIGHTS = (1, 10, 25, 50, 100)
SERVICES = [f"svc{i}" for i in range(20)]


def _release_entries(n: int, start: float, rounds_per_step: int) -> list[AuditEntry]:
    """One release's audit entries, in the order the bot writes them."""
    rng = random.Random(n)
    service = rng.choice(SERVICES)
    rid = f"r{n:06d}"
    t = start
    out = [
        AuditEntry("deploy", "dana", "slack", service, rid, "", "progressing", at=t,
                   detail={"version": f"v{n}", "steps": list(WEIGHTS)}),
    ]
    rolled_back = n % 10 == 0
    for step, weight in enumerate(WEIGHTS):
        t += 0.5
        out.append(AuditEntry("traffic", "shipwatch", "controller", service, rid,
                              "progressing", "progressing", at=t, detail={"weight": weight}))
        for _ in range(rounds_per_step):
            t += 30.0
            out.append(AuditEntry("decision:hold", "shipwatch", "controller", service, rid,
                                  "progressing", "progressing", at=t,
                                  detail={"weight": weight, "checks": [{"metric": "error_rate",
                                          "outcome": "pass", "canary": 0.01, "control": 0.01}]}))
        if rolled_back and step == 1:
            t += 30.0
            out.append(AuditEntry("decision:rollback", "shipwatch", "controller", service, rid,
                                  "progressing", "rolling_back", at=t, detail={"weight": weight}))
            t += 2.0
            out.append(AuditEntry("rolled_back", "shipwatch", "controller", service, rid,
                                  "rolling_back", "rolled_back", at=t,
                                  detail={"rollback_seconds": 2.0}))
            return out
        t += 30.0
        last = step == len(WEIGHTS) - 1
        out.append(AuditEntry("decision:succeed" if last else "decision:advance", "shipwatch",
                              "controller", service, rid, "progressing",
                              "succeeded" if last else "progressing", at=t,
                              detail={"weight": weight}))
    return out


async def _fill(client: aioredis.Redis, total: int, now: float) -> int:
    """About ``total`` entries over the last 30 days, each stream id at its entry's time."""
    span = 30 * stats.DAY_S
    per_release = len(_release_entries(1, 0.0, 12))
    releases = max(1, total // per_release)
    # Releases overlap in time, as they do in a team: interleave their entries by time, since
    # a stream's ids only grow.
    timeline = sorted(
        (e for n in range(releases)
         for e in _release_entries(n, now - span + n * (span - 4 * 3600) / releases, 12)),
        key=lambda e: e.at,
    )
    pipe = client.pipeline(transaction=False)
    for seq, entry in enumerate(timeline):
        fields = entry.fields()
        mapping: dict[EncodableT, EncodableT] = dict(zip(fields[::2], fields[1::2], strict=True))
        stream_id = f"{int(entry.at * 1000)}-{seq}"
        # As Store writes them: everything to the audit stream, all but holds to both.
        pipe.xadd(keys.audit(), mapping, id=stream_id)
        if entry.action not in ROUTINE_ACTIONS:
            pipe.xadd(keys.lifecycle(), mapping, id=stream_id)
        if len(pipe) >= 5000:
            await pipe.execute()
    await pipe.execute()
    return len(timeline)


async def _stats_command(store: Store, days: int, now: float, stream: AuditStream) -> str:
    """What `/rollout stats --days N` does (bot.engine.dispatch), reading ``stream``: the lifecycle
    stream is what it reads; the full audit stream (skipping holds) is the way it was before."""
    start = now - days * stats.DAY_S
    entries = await store.audit_between(
        start - stats.LOOKBACK_S, skip_actions=ROUTINE_ACTIONS, stream=stream
    )
    return stats.render(stats.compute(entries, start=start, end=now))


async def _timed(repeat: int, make: Callable[[], Awaitable[object]]) -> list[float]:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        await make()
        out.append((time.perf_counter() - t0) * 1000)
    return out


async def run(entries: int, repeat: int, url: str) -> dict[str, object]:
    client = aioredis.Redis.from_url(url, decode_responses=True)
    await client.flushdb()
    store = Store(client)
    now = time.time()
    written = await _fill(client, entries, now)
    results: dict[str, list[float]] = {}
    for days in (7, 30):
        for stream in (AuditStream.FULL, AuditStream.LIFECYCLE):
            results[f"stats --days {days} ({stream.value})"] = await _timed(
                repeat, functools.partial(_stats_command, store, days, now, stream)
            )
    first: list[float] = []
    incremental: list[float] = []
    for _ in range(repeat):
        metrics = ReleaseMetrics(store, ttl=0.0, timeout=600.0, series=ReleaseSeries())
        t0 = time.perf_counter()
        assert await metrics.refresh()
        first.append((time.perf_counter() - t0) * 1000)
        for entry in _release_entries(10_000 + len(first), time.time() - 3600, 3)[:100]:
            await store.append_audit(entry)
        t0 = time.perf_counter()
        assert await metrics.refresh()
        incremental.append((time.perf_counter() - t0) * 1000)
    results["/metrics first refresh"] = first
    results["/metrics refresh, 100 new"] = incremental
    reply = await _stats_command(store, 30, time.time(), AuditStream.LIFECYCLE)
    full_30 = statistics.median(results["stats --days 30 (full)"])
    lifecycle_30 = statistics.median(results["stats --days 30 (lifecycle)"])
    await client.aclose()
    return {
        "entries": written,
        "repeat": repeat,
        "median_ms": {k: round(statistics.median(v), 1) for k, v in results.items()},
        "max_ms": {k: round(max(v), 1) for k, v in results.items()},
        "stats_reply_chars": len(reply),
        "lifecycle_speedup_30d": round(full_30 / lifecycle_30, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entries", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, redis_server(Path(tmp)) as url:
        out = asyncio.run(run(args.entries, args.repeat, url))
    print(f"audit stream: {out['entries']:,} entries over 30 days")
    print(f"{'operation':<30}{'median ms':>12}{'max ms':>10}")
    medians, maxes = out["median_ms"], out["max_ms"]
    assert isinstance(medians, dict) and isinstance(maxes, dict)
    for name, median in medians.items():
        print(f"{name:<30}{median:>12.1f}{maxes[name]:>10.1f}")
    print(f"lifecycle stream vs full audit stream, --days 30: {out['lifecycle_speedup_30d']}x")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
