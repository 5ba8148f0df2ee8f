"""Benchmark of automatic rollback: fault onset to every flag client on stable, end to end.

Run from the project root::

    .venv/bin/python -m bench.rollback_bench [--runs 5] [--clients 5]

A private redis-server and a real Prometheus scraping every second; one stable ("v1") and
canary ("v2") pair of sample instances per run (a service of its own, so no run reads
another's series), with a load generator that routes synthetic users by the canary flag. The
app is built as ``serve`` builds it (Settings, PrometheusSource, controller task; 0.2 s tick)
on a policy with a 2 s analysis interval and a 10 s window.

Each run deploys a canary, lets it settle at the first step (10%, one clean check), waits a
different fraction of the analysis interval after that check (so the onset does not always
fall at the same point of the controller's schedule), injects a fault into the canary
(alternately 20% errors and +300 ms), and measures from the onset until each of N
independent FlagClients has applied 0%. Prints a table (per run, then median and max), then
one JSON object on the last line. Target: all clients on stable within 10 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from bot.app import App, build_app
from bot.config import Settings
from bot.engine.events import EventKind
from bot.flags import FlagClient, FlagState
from bot.release.policy import Policy, parse_policy
from bot.release.request import DeployOptions
from bot.release.rollout import Actor, Release, State
from tests.support.procs import redis_server
from tests.support.prometheus import prometheus_server, wait_for_data
from tests.support.recorder import Recorder
from tests.support.routed import (
    ERROR_RATE_RULE,
    LATENCY_P99_RULE,
    FaultKind,
    RoutedService,
    close_all,
)

TARGET_S = 10.0
INTERVAL_S = 2.0
WINDOW = "10s"
SCRAPE_S = 1.0  # tests.support.prometheus scrapes every second
RUN_DEADLINE_S = 40.0  # any single wait of a run
ACTOR = Actor(user="bench", surface="api")


def bench_policy(services: Sequence[str]) -> Policy:
    """The e2e tests' rules; a long hold keeps each release at its first step (10%)."""
    metrics = [ERROR_RATE_RULE, LATENCY_P99_RULE]
    doc = {
        "defaults": {
            "steps": [10, 50, 100],
            "hold": "1h",
            "interval": f"{INTERVAL_S:g}s",
            "window": WINDOW,
            "metrics": metrics,
        },
        "services": {name: {} for name in services},
    }
    return parse_policy(yaml.safe_dump(doc), "rollback-bench")


class Watchers:
    """N independent flag clients, each keeping when it applied every pct of every service."""

    def __init__(self, redis_url: str, n: int) -> None:
        self._lock = threading.Lock()
        self._seen: list[list[tuple[float, str, int]]] = [[] for _ in range(n)]
        self.clients = [FlagClient(redis_url, on_change=self._recorder(i)) for i in range(n)]

    def _recorder(self, index: int) -> Callable[[str, FlagState | None], None]:
        def record(service: str, state: FlagState | None) -> None:
            at = time.monotonic()
            with self._lock:
                self._seen[index].append((at, service, 0 if state is None else state.pct))

        return record

    def start(self) -> None:
        for client in self.clients:
            client.start()

    def close(self) -> None:
        for client in self.clients:
            client.close()

    def zero_at(self, service: str, after: float) -> list[float | None]:
        """Per client: when it first applied 0% for ``service`` at or after ``after``."""
        with self._lock:
            return [
                next((t for t, s, pct in seen if s == service and pct == 0 and t >= after), None)
                for seen in self._seen
            ]


@dataclass
class RunResult:
    run: int
    service: str
    fault: str
    phase_s: float  # onset, after the last clean check
    decided_s: float  # onset -> the controller's rollback decision (event time)
    all_stable_s: float  # onset -> the last of the N clients at 0%
    first_client_s: float  # onset -> the first client at 0%
    reason: str


async def wait_release(
    app: App,
    release_id: str,
    until: Callable[[Release], bool],
    what: str,
    timeout: float = RUN_DEADLINE_S,
) -> Release:
    deadline = time.monotonic() + timeout
    while True:
        release = await app.store.get(release_id)
        if release is not None and until(release):
            return release
        if time.monotonic() >= deadline:
            state = release.describe_state() if release else "missing"
            if release is not None and release.last_checks:
                state += "; last checks: " + "; ".join(
                    f"{c.metric} {c.outcome.value}: {c.reason}" for c in release.last_checks
                )
            raise TimeoutError(f"{what} not reached within {timeout}s: {state}")
        await asyncio.sleep(0.02)


async def one_run(
    index: int,
    rig: RoutedService,
    fault: FaultKind,
    app: App,
    recorder: Recorder,
    watchers: Watchers,
    urls: tuple[str, str],
    phase: float,
) -> RunResult:
    redis_url, prometheus_url = urls
    rig.start(redis_url, per_second=120, workers=12, max_seconds=60, max_requests=8_000)
    try:
        selector = f'service="{rig.service}",version="{rig.stable_version}"'
        await asyncio.to_thread(
            wait_for_data,
            prometheus_url,
            f"sum(increase(http_requests_total{{{selector}}}[{WINDOW}]))",
            at_least=50,
            timeout=20,
        )
        deployed = await app.service.deploy(
            ACTOR, rig.service, rig.canary_version, DeployOptions(stable=rig.stable_version)
        )
        settled = await wait_release(
            app,
            deployed.release.id,
            lambda r: r.step == 0 and r.clean_checks_in_step >= 1,
            "a clean check at the first step",
        )
        assert settled.last_eval_at is not None
        await asyncio.sleep(max(0.0, settled.last_eval_at + phase - time.time()))
        onset_wall = time.time()
        onset = rig.inject_fault(fault)
        done = await wait_release(
            app,
            deployed.release.id,
            lambda r: r.state is State.ROLLED_BACK,
            "the rollback",
        )
        deadline = time.monotonic() + 5.0
        while None in (zeros := watchers.zero_at(rig.service, onset)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"not every flag client reached 0%: {zeros}")
            await asyncio.sleep(0.01)
    finally:
        rig.stop()
    await app.events.drain()
    started = [
        e
        for e in recorder.events
        if e.kind is EventKind.ROLLBACK_STARTED and e.release.id == deployed.release.id
    ]
    times = [z for z in zeros if z is not None]
    return RunResult(
        run=index + 1,
        service=rig.service,
        fault=fault.value,
        phase_s=round(phase, 2),
        decided_s=round(started[0].at - onset_wall, 3) if started else float("nan"),
        all_stable_s=round(max(times) - onset, 3),
        first_client_s=round(min(times) - onset, 3),
        reason=done.reason,
    )


async def run(
    runs: int, clients: int, rigs: list[RoutedService], urls: tuple[str, str]
) -> list[RunResult]:
    redis_url, prometheus_url = urls
    recorder = Recorder()
    settings = Settings.model_validate(
        {
            "REDIS_URL": redis_url,
            "PROMETHEUS_URL": prometheus_url,
            "SHIPWATCH_CONTROLLER_TICK": 0.2,
            "SHIPWATCH_PROMETHEUS_TIMEOUT": 3.0,
        }
    )
    policy = bench_policy([r.service for r in rigs])
    app = await build_app(settings, policy=policy, notifiers=[recorder])
    app.events.start()
    stop = asyncio.Event()
    controller = asyncio.create_task(app.controller.run(stop), name="bench-controller")
    watchers = Watchers(redis_url, clients)
    await asyncio.to_thread(watchers.start)
    results: list[RunResult] = []
    try:
        for i, rig in enumerate(rigs[:runs]):
            fault = FaultKind.ERRORS if i % 2 == 0 else FaultKind.LATENCY
            phase = INTERVAL_S * i / runs
            results.append(await one_run(i, rig, fault, app, recorder, watchers, urls, phase))
    finally:
        stop.set()
        await asyncio.wait_for(controller, timeout=10)
        await asyncio.to_thread(watchers.close)
        await app.close()
    return results


@contextmanager
def environment(runs: int, tmp: Path) -> Iterator[tuple[list[RoutedService], tuple[str, str]]]:
    with ExitStack() as stack:
        rigs: list[RoutedService] = []
        stack.callback(close_all, rigs)
        for i in range(runs):
            rigs.append(RoutedService(f"bench-{i}"))
        (tmp / "redis").mkdir()
        redis_url = stack.enter_context(redis_server(tmp / "redis"))
        targets = [t for rig in rigs for t in rig.targets]
        prometheus_url = stack.enter_context(prometheus_server(tmp / "prometheus", targets))
        wait_for_data(
            prometheus_url, 'count(up{job="sample"} == 1)', at_least=len(targets), timeout=20
        )
        yield rigs, (redis_url, prometheus_url)


def render(results: list[RunResult], clients: int) -> dict[str, Any]:
    stable = [r.all_stable_s for r in results]
    decided = [r.decided_s for r in results]
    header = (
        f"{'run':>3}  {'fault':<8} {'phase s':>7} {'decided s':>9} "
        f"{'first 0% s':>10} {f'all {clients} 0% s':>12}  reason"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r.run:>3}  {r.fault:<8} {r.phase_s:>7.2f} {r.decided_s:>9.2f} "
            f"{r.first_client_s:>10.2f} {r.all_stable_s:>12.2f}  {r.reason[:70]}"
        )
    print("-" * len(header))
    summary = {
        "median_all_stable_s": round(statistics.median(stable), 3),
        "max_all_stable_s": round(max(stable), 3),
        "median_decided_s": round(statistics.median(decided), 3),
        "max_decided_s": round(max(decided), 3),
    }
    print(
        f"median {summary['median_all_stable_s']:.2f}s, max {summary['max_all_stable_s']:.2f}s "
        f"from fault onset to all {clients} clients on stable (target < {TARGET_S:g}s: "
        f"{'met' if summary['max_all_stable_s'] < TARGET_S else 'MISSED'})"
    )
    return {
        "bench": "rollback",
        "scrape_interval_s": SCRAPE_S,
        "analysis_interval_s": INTERVAL_S,
        "window": WINDOW,
        "clients": clients,
        "runs": [asdict(r) for r in results],
        **summary,
        "target_s": TARGET_S,
        "target_met": summary["max_all_stable_s"] < TARGET_S,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--clients", type=int, default=5)
    args = parser.parse_args()
    if args.runs < 1 or args.clients < 1:
        parser.error("--runs and --clients must be at least 1")
    logging.basicConfig(level=logging.WARNING)
    try:
        with (
            tempfile.TemporaryDirectory() as tmp,
            environment(args.runs, Path(tmp)) as (rigs, urls),
        ):
            results = asyncio.run(run(args.runs, args.clients, rigs, urls))
    except pytest.skip.Exception as exc:  # a server binary is missing
        print(f"cannot run: {exc.msg}")
        return 2
    print(json.dumps(render(results, args.clients)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
