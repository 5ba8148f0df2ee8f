"""Benchmark of the controller: CPU per evaluation round with many active releases.

Run from the project root::

    .venv/bin/python -m bench.controller_bench [--releases 1000] [--rounds 15] [--judge both]

A private redis-server, N services each with one active release (two metrics, canary and
control, plus the request-count guard: 5 queries per release; with ``--judge both`` the
latency metric's canary and control series too, judged by Mann-Whitney) on the synthetic
source, and a
controller whose interval is short enough that every round evaluates every release. For each
round it records the bot process's CPU time (process_time) and wall time, and the Redis
server's CPU from INFO. Prints a table, then one JSON object on the last line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path

import redis.asyncio as aioredis

from bot.engine.actuator import TrafficActuator
from bot.engine.controller import Controller
from bot.engine.events import EventBus
from bot.engine.service import ReleaseService
from bot.flags import FlagWriter
from bot.metrics.synthetic import SyntheticSource
from bot.release.policy import Policy, parse_policy
from bot.release.request import DeployOptions
from bot.release.rollout import Actor
from bot.store.connection import client_for
from bot.store.store import Store
from bot.traffic.flags import FlagsBackend
from tests.support.procs import redis_server

METRICS = """
    - name: error_rate
      query: 'sum(rate(errors_total{service="{service}",version="{version}"}[{window}]))'
      max: 0.05
      max_diff: 0.01
      min_requests: 10
    - name: latency_p99
      query: 'histogram_quantile(0.99, rate(d_bucket{service="{service}",version="{version}"}[1m]))'
      max_ratio: 2
      critical: true
"""


# With --judge both, the latency metric is also compared statistically (Mann-Whitney on a
# 60-sample series a side), as the default policy does.
STATISTICAL = """      judge: both
      lookback: 5m
      step: 5s
"""


def _policy(n: int, judge: str = "threshold") -> Policy:
    services = "\n".join(f"  svc{i}: {{}}" for i in range(n))
    metrics = METRICS + (STATISTICAL if judge == "both" else "")
    text = f"defaults:\n  interval: 0.05s\n  hold: 1h\n  metrics:{metrics}services:\n{services}\n"
    return parse_policy(text, "bench")


async def _redis_cpu(client: aioredis.Redis) -> float:
    info = await client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


async def run(n: int, rounds: int, url: str, judge: str = "threshold") -> dict[str, object]:
    # The store's own client (a blocking pool of 64): a round acts on every release at once.
    client = client_for(url)
    await client.flushdb()
    policy = _policy(n, judge)
    store = Store(client)
    events = EventBus([])
    flags = FlagsBackend(FlagWriter(client))
    actuator = TrafficActuator(store, lambda _s: flags, events)
    service = ReleaseService(store, policy, actuator, events)
    source = SyntheticSource(seed=3)
    controller = Controller(store, policy, source, actuator, events, summary_every=0,
                            owner="bench", lease_ttl=60)
    actor = Actor(user="bench", surface="api")
    t0 = time.perf_counter()
    for i in range(n):
        # --stable: these are first releases, so name the control version explicitly.
        await service.deploy(actor, f"svc{i}", "v2", DeployOptions(stable="v1"))
    setup_s = time.perf_counter() - t0
    cpu: list[float] = []
    wall: list[float] = []
    redis_cpu: list[float] = []
    evaluated: list[int] = []
    await controller.run_once()  # warm-up: leases, first traffic sync
    for _ in range(rounds):
        await asyncio.sleep(0.06)
        r0 = await _redis_cpu(client)
        c0, w0 = time.process_time(), time.perf_counter()
        stats = await controller.run_once()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
        redis_cpu.append(await _redis_cpu(client) - r0)
        evaluated.append(stats.evaluated)
    await client.aclose()
    cpu_ms = statistics.median(cpu) * 1000
    return {
        "releases": n,
        "judge": judge,
        "rounds": rounds,
        "evaluated_per_round_median": statistics.median(evaluated),
        "queries_per_round": stats.queries,
        "bot_cpu_ms_per_round_median": round(cpu_ms, 1),
        "bot_cpu_us_per_release_median": round(cpu_ms * 1000 / n, 1),
        "wall_ms_per_round_median": round(statistics.median(wall) * 1000, 1),
        "redis_cpu_ms_per_round_median": round(statistics.median(redis_cpu) * 1000, 1),
        "deploy_setup_s": round(setup_s, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--releases", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--judge", choices=("threshold", "both"), default="threshold",
                        help="both: the latency metric is also judged statistically")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp, redis_server(Path(tmp)) as url:
        result = asyncio.run(run(args.releases, args.rounds, url, args.judge))
    width = max(len(k) for k in result)
    print(f"{'measure':<{width}}  value")
    print(f"{'-' * width}  -----")
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
