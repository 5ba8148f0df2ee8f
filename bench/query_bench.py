"""Benchmark of a round's Prometheus queries: HTTP requests and wall time per round, by the
number of active releases, one query per template against one query per release.

Run from the project root::

    .venv/bin/python -m bench.query_bench [--releases 10,100,1000,5000] [--rounds 5] [--live 200]

A real Prometheus (scraping every second) and real sample services: 20 services, each
release on one of them with its own stable and canary versions (``1.<n>.0`` → ``1.<n>.1``).
The first ``--live`` releases serve traffic, so their series exist; the others have none
yet (a canary nobody was sent to), which Prometheus answers as quickly as it can. A round
asks what the controller asks for every due release: the embedded policy's instant queries
(error_rate, latency_p99, the request count; canary and control) and the latency_p99 range
series for the statistical judge, as ``Controller._ask`` does. Each round is asked twice,
once by a PrometheusSource batching per template and once by one with
``batch_templates=False`` (the per-release path, several queries per request joined with
``or``), alternating which goes first. Prints a table, then one JSON object on the last line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from bot.judging import analysis
from bot.metrics.base import MetricQuery
from bot.metrics.prometheus import PrometheusSource
from bot.release.policy import Risk, ServicePolicy, Strategy, embedded_policy
from bot.release.rollout import Actor, Release, new_release
from tests.support.prometheus import prometheus_server, wait_for_data
from tests.support.sample_service import SampleService

SERVICES = 20
ACTOR = Actor(user="bench", surface="api")


class ByUser:
    """The sample service's router: the user id names the version ("<version>/<n>")."""

    def version(self, service: str, user: str) -> str | None:
        return user.split("/", 1)[0] or None


def service_of(n: int) -> str:
    return f"svc{n % SERVICES}"


def releases(count: int) -> list[Release]:
    now = time.time()
    return [
        new_release(
            release_id=f"rel-{n}",
            number=n,
            service=service_of(n),
            version=f"1.{n}.1",
            stable_version=f"1.{n}.0",
            weights=[10, 50, 100],
            holds=[60.0, 60.0, 60.0],
            interval=30.0,
            bake=60.0,
            strategy=Strategy.CANARY,
            risk=Risk.NORMAL,
            notes="",
            actor=ACTOR,
            now=now,
        )
        for n in range(count)
    ]


@contextmanager
def live_fleet(tmp: Path, live: int) -> Iterator[str]:
    """Sample services with traffic for the first ``live`` releases, and Prometheus; its URL."""
    with ExitStack() as stack:
        apps = [SampleService(f"svc{i}", "0.0.0") for i in range(SERVICES)]
        for app in apps:
            app.app.flags = ByUser()
            app.start()
            stack.callback(app.stop)
        url = stack.enter_context(prometheus_server(tmp, [a.target for a in apps]))
        for rounds in range(3):  # a few requests each, over more than one scrape
            for n in range(live):
                for version in (f"1.{n}.0", f"1.{n}.1"):
                    user = f"{version}/{rounds}"
                    address = f"{apps[n % SERVICES].url}/work?user={user}"
                    with urllib.request.urlopen(address, timeout=5) as response:
                        response.read()
            time.sleep(1.2)
        wait_for_data(
            url, "count(sum by (service, version) (http_requests_total))", at_least=2 * live
        )
        yield url


async def ask(source: PrometheusSource, plans: list[analysis.Plan]) -> None:
    """One round's queries, as the controller asks them."""
    now = time.time()
    instant = [q for p in plans for q in p.instant]
    by_window: dict[tuple[float, float], list[MetricQuery]] = {}
    for p in plans:
        for sq in p.series:
            by_window.setdefault((sq.lookback, sq.step), []).append(sq.query)
    await asyncio.gather(
        source.query(instant),
        *(source.query_series(qs, now - lb, now, st) for (lb, st), qs in by_window.items()),
    )


async def measure(url: str, count: int, rounds: int, sp: ServicePolicy) -> dict[str, object]:
    plans = [analysis.plan(r, sp) for r in releases(count)]
    queries = sum(len(p.instant) + len(p.series) for p in plans)
    batched = PrometheusSource(url, timeout=30.0)
    each = PrometheusSource(url, timeout=30.0, batch_templates=False)
    stats: dict[str, tuple[list[int], list[float]]] = {"batched": ([], []), "each": ([], [])}
    try:
        for r in range(rounds):
            order = [("batched", batched), ("each", each)]
            for name, source in order if r % 2 == 0 else reversed(order):
                sent = source.requests_made
                started = time.perf_counter()
                await ask(source, plans)
                stats[name][1].append(time.perf_counter() - started)
                stats[name][0].append(source.requests_made - sent)
        fallbacks = batched.template_fallbacks
    finally:
        await batched.close()
        await each.close()
    out: dict[str, object] = {"releases": count, "queries_per_round": queries}
    for name, (requests, walls) in stats.items():
        out[f"{name}_requests_per_round"] = statistics.median(requests)
        out[f"{name}_wall_ms_median"] = round(statistics.median(walls) * 1000, 1)
    out["batched_fallbacks"] = fallbacks
    return out


async def run(url: str, counts: list[int], rounds: int) -> list[dict[str, object]]:
    sp = embedded_policy().services["checkout"]
    results = []
    for count in counts:
        # The largest size gets fewer rounds: the per-release path takes seconds per round.
        results.append(
            await measure(url, count, rounds if count < 5000 else max(1, rounds // 2), sp)
        )
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--releases", default="10,100,1000,5000")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--live", type=int, default=200, help="releases whose series exist")
    args = parser.parse_args()
    counts = [int(c) for c in args.releases.split(",")]
    logging.basicConfig(level=logging.WARNING)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, live_fleet(Path(tmp), args.live) as url:
        results = asyncio.run(run(url, counts, args.rounds))
    columns = [
        ("releases", "releases"),
        ("queries_per_round", "queries"),
        ("batched_requests_per_round", "req batched"),
        ("each_requests_per_round", "req per-release"),
        ("batched_wall_ms_median", "ms batched"),
        ("each_wall_ms_median", "ms per-release"),
    ]
    print("  ".join(f"{title:>15}" for _, title in columns))
    for row in results:
        print("  ".join(f"{row[key]!s:>15}" for key, _ in columns))
    summary = {
        "bench": "query_bench",
        "live_releases": args.live,
        "rounds": args.rounds,
        "total_s": round(time.perf_counter() - started, 1),
        "results": results,
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
