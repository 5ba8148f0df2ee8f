"""Benchmark of Redis memory: what a release and a judged round cost, and a day of a service.

Run from the project root::

    .venv/bin/python -m bench.storage_bench [--releases 20]

A private redis-server; releases played through the real product (release service, controller,
embedded flags, the synthetic source) with the default policy's two metrics plus the request
guard, each with its status message refs saved as the chat outbox saves them. Redis' own
``MEMORY USAGE`` is summed per kind of key, then divided by what it holds:

- a finished release: its record, message refs, thread link, fence;
- an entry of each audit stream (the full stream gets one per judged round, the lifecycle
  about fifteen per release);
- a chart point (one per judged round).

From these, what Redis holds at steady state (every retention window full, the count
backstops applied) for a few fleet sizes, under the default retention (finished releases 30 d,
their chart points 7 d, audit 14 d, lifecycle 400 d) and the default policy's rounds (five
steps of 15 min and a 1 h bake, judged every 30 s: 270 rounds a release). Prints a table, then
one JSON object on the last line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from pathlib import Path

import redis.asyncio as aioredis

from bot.engine.actuator import TrafficActuator
from bot.engine.controller import Controller
from bot.engine.events import EventBus
from bot.engine.service import ReleaseService
from bot.flags import FlagWriter
from bot.metrics.synthetic import SyntheticSource
from bot.release.policy import embedded_policy, parse_policy
from bot.release.request import DeployOptions
from bot.release.retention import Retention
from bot.release.rollout import Actor
from bot.store import keys
from bot.store.store import Store
from bot.traffic.flags import FlagsBackend
from tests.support.procs import redis_server

DAY = 86400.0
ROUNDS_PER_RELEASE = 5 * (15 * 60 // 30) + 3600 // 30  # the default policy: 150 + 120
LIFECYCLE_PER_RELEASE = 15  # deploy, traffic and advance per step, bake, succeed


def _policy_text() -> str:
    """The embedded policy's metrics with seconds-long steps, so a release takes ~1 s."""
    metrics = embedded_policy().services["checkout"].metrics
    lines = [
        "defaults:",
        "  steps: [1, 10, 25, 50, 100]",
        "  hold: 300ms",
        "  interval: 50ms",
        "  window: 1s",
        "  bake: 300ms",
        "  metrics:",
    ]
    for m in metrics:
        lines += [f"    - name: {m.name}", f"      query: {json.dumps(m.query)}", "      max: 1e9"]
        if m.min_requests:
            lines.append(f"      min_requests: {m.min_requests}")
    lines += ["services:", "  checkout: {}"]
    return "\n".join(lines) + "\n"


async def _usage(client: aioredis.Redis, key: str) -> int:
    return int(await client.memory_usage(key, samples=0) or 0)


async def run(releases: int, url: str) -> dict[str, object]:
    client = aioredis.Redis.from_url(url, decode_responses=True)
    policy = parse_policy(_policy_text(), "bench")
    store = Store(client, retention=Retention())
    events = EventBus([])
    flags = FlagsBackend(FlagWriter(client))
    actuator = TrafficActuator(store, lambda _s: flags, events)
    service = ReleaseService(store, policy, actuator, events)
    controller = Controller(
        store,
        policy,
        SyntheticSource(seed=3),
        actuator,
        events,
        tick=0.01,
        lease_ttl=5,
        owner="bench",
    )
    events.start()
    ids = []
    for n in range(releases):
        actor = Actor(user="bench", surface="api")
        outcome = await service.deploy(actor, "checkout", f"v{n + 2}", DeployOptions(stable="v1"))
        release = outcome.release
        ids.append(release.id)
        await store.save_message_refs(
            release.id,
            {
                "channel": "C0123ABCD",
                "ts": f"17000000{n:02d}.000100",
                "thread_ts": f"17000000{n:02d}.000100",
            },
        )
        while (current := await store.get(release.id)) is not None and current.is_active:
            await controller.run_once()
            await asyncio.sleep(0.005)
    await actuator.close()
    await events.close()

    per_release = 0
    points = 0
    for rid in ids:
        refs = await store.message_refs(rid)
        for key in (
            keys.release(rid),
            keys.messages(rid),
            keys.fence(rid),
            keys.thread(refs["channel"], refs["ts"]),
        ):
            per_release += await _usage(client, key)
        points += await client.llen(keys.series(rid))
    series_bytes = sum([await _usage(client, keys.series(rid)) for rid in ids])
    audit_entries = await client.xlen(keys.audit())
    lifecycle_entries = await client.xlen(keys.lifecycle())
    audit_bytes = await _usage(client, keys.audit())
    lifecycle_bytes = await _usage(client, keys.lifecycle())
    await client.aclose()

    sizes = {
        "finished_release": per_release / releases,
        "chart_point": series_bytes / points,
        "audit_entry": audit_bytes / audit_entries,
        "lifecycle_entry": lifecycle_bytes / lifecycle_entries,
    }
    return {
        "releases": releases,
        "bytes": {k: round(v) for k, v in sizes.items()},
        "rounds_per_default_release": ROUNDS_PER_RELEASE,
        "sizing": [_steady_state(sizes, services, per_day) for services, per_day in SCALES],
    }


# (services, releases a day per service) for the sizing table.
SCALES = [(1, 1), (10, 2), (100, 1), (100, 10)]


def _steady_state(sizes: dict[str, float], services: int, per_day: int) -> dict[str, float]:
    """Megabytes held once every retention window is full, the count backstops applied, and
    how many days of each stream that is."""
    r = Retention()
    daily = services * per_day
    release_mb = (
        daily
        * (
            r.releases / DAY * sizes["finished_release"]
            + r.charts / DAY * ROUNDS_PER_RELEASE * sizes["chart_point"]
        )
        / 1e6
    )
    audit_per_day = daily * ROUNDS_PER_RELEASE
    audit_days = min(r.audit / DAY, r.audit_max_entries / audit_per_day)
    lifecycle_per_day = daily * LIFECYCLE_PER_RELEASE
    lifecycle_days = min(r.lifecycle / DAY, r.lifecycle_max_entries / lifecycle_per_day)
    audit_mb = audit_per_day * audit_days * sizes["audit_entry"] / 1e6
    lifecycle_mb = lifecycle_per_day * lifecycle_days * sizes["lifecycle_entry"] / 1e6
    return {
        "services": services,
        "releases_per_day": per_day,
        "releases_mb": round(release_mb, 1),
        "audit_mb": round(audit_mb, 1),
        "audit_days": round(audit_days, 1),
        "lifecycle_mb": round(lifecycle_mb, 1),
        "lifecycle_days": round(lifecycle_days, 1),
        "total_mb": round(release_mb + audit_mb + lifecycle_mb, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--releases", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, redis_server(Path(tmp)) as url:
        out = asyncio.run(run(args.releases, url))
    sizes = out["bytes"]
    assert isinstance(sizes, dict)
    print(f"{'what':<24}{'bytes':>8}")
    for name, size in sizes.items():
        print(f"{name.replace('_', ' '):<24}{size:>8,}")
    print()
    header = (
        "services",
        "rel/day",
        "releases MB",
        "audit MB (days)",
        "lifecycle MB (days)",
        "total MB",
    )
    widths = (10, 9, 13, 17, 21, 10)
    print("".join(f"{h:>{w}}" for h, w in zip(header, widths, strict=True)))
    rows = out["sizing"]
    assert isinstance(rows, list)
    for row in rows:
        cells = (
            row["services"],
            row["releases_per_day"],
            row["releases_mb"],
            f"{row['audit_mb']} ({row['audit_days']:g})",
            f"{row['lifecycle_mb']} ({row['lifecycle_days']:g})",
            row["total_mb"],
        )
        print("".join(f"{c:>{w}}" for c, w in zip(cells, widths, strict=True)))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
