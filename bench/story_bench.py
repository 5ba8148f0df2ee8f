"""Benchmark of reading one release's story (its lifecycle entries) while other releases write.

Run from the project root::

    .venv/bin/python -m bench.story_bench [--others 100,1000,10000] [--repeats 20]

The completion summary, the release page (on every change it shows) and the step timeline
read a release's own entries of the lifecycle stream. Two ways, side by side on one private
redis-server, on a release whose lifetime saw ``others`` entries of other releases:

- by id: ``Store.lifecycle_of``, the ids listed under the release as its entries were written;
- the scan (the peer, how it was read before): every lifecycle entry since the release
  started, filtered by release id (``Store.audit_between`` + a filter).

The release itself has about 15 entries (a deploy, then traffic entries, advances and approvals,
spread evenly among the others). Medians over ``--repeats`` reads of each, taken
in turn. Prints a table, then one JSON object on the last line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

from bot.release import rollout
from bot.release.policy import Risk, Strategy
from bot.release.rollout import Actor, Release
from bot.store.audit import AuditEntry, AuditStream
from bot.store.connection import client_for
from bot.store.store import Store
from tests.support.procs import redis_server

OWN_ENTRIES = 15
ACTOR = Actor(user="bench", surface="api")


def _release(release_id: str, service: str) -> Release:
    return rollout.new_release(
        release_id=release_id, number=1, service=service, version="v2", stable_version="v1",
        weights=[1, 10, 25, 50, 100], holds=[60.0] * 5, interval=30.0, bake=3600.0,
        strategy=Strategy.CANARY, risk=Risk.NORMAL, notes="", actor=ACTOR, now=time.time(),
    )  # fmt: skip


def _entry(release_id: str, service: str, n: int) -> AuditEntry:
    action = ("traffic", "advance", "approve")[n % 3]
    return AuditEntry(
        action=action, actor="bench", surface="api", service=service, release_id=release_id,
        detail={"weight": 10, "step": n % 5}, reason=f"entry {n}",
    )  # fmt: skip


async def _scan(store: Store, release: Release) -> list[AuditEntry]:
    entries = await store.audit_between(release.created_at - 5, stream=AuditStream.LIFECYCLE)
    return [e for e in entries if e.release_id == release.id]


async def run_one(url: str, others: int, repeats: int) -> dict[str, object]:
    client = client_for(url)
    await client.flushdb()
    store = Store(client)
    mine = _release("mine", "checkout")
    deploy = AuditEntry(action="deploy", actor="bench", surface="api", service="checkout",
                        release_id="mine", to_state=mine.state)  # fmt: skip
    await store.create(mine, deploy)
    every = max(1, others // OWN_ENTRIES)
    for n in range(others):
        await store.append_audit(_entry(f"other-{n % 500}", f"svc{n % 500}", n))
        if n % every == 0:
            await store.append_audit(_entry("mine", "checkout", n))
    by_id: list[float] = []
    scan: list[float] = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        story = await store.lifecycle_of(mine)
        by_id.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        scanned = await _scan(store, mine)
        scan.append(time.perf_counter() - t0)
    if [e.reason for e in story] != [e.reason for e in scanned]:
        raise RuntimeError("the two ways read different stories")
    await client.aclose()
    by_id_ms = statistics.median(by_id) * 1000
    scan_ms = statistics.median(scan) * 1000
    return {
        "other_entries": others,
        "own_entries": len(story),
        "by_id_ms_median": round(by_id_ms, 2),
        "scan_ms_median": round(scan_ms, 2),
        "scan_to_by_id_ratio": round(scan_ms / by_id_ms, 1) if by_id_ms else None,
    }


def _sizes(text: str) -> list[int]:
    sizes = [int(part) for part in text.split(",") if part.strip()]
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"give entry counts such as 100,1000, got {text!r}")
    return sizes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--others", type=_sizes, default=[100, 1000, 10000])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, redis_server(Path(tmp)) as url:
        rows = [asyncio.run(run_one(url, n, args.repeats)) for n in args.others]
    header = ("other entries", "own entries", "by id ms", "scan ms (peer)", "scan ÷ by id")
    print("  ".join(header))
    for row in rows:
        cells = (
            row["other_entries"], row["own_entries"], row["by_id_ms_median"],
            row["scan_ms_median"], row["scan_to_by_id_ratio"],
        )  # fmt: skip
        print("  ".join(str(c).rjust(len(h)) for c, h in zip(cells, header, strict=True)))
    print(json.dumps({"repeats": args.repeats, "results": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
