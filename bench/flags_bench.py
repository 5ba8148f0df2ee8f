"""Benchmark of bot.flags: request-path cost, and how fast a change reaches every client.

Run from the project root::

    .venv/bin/python -m bench.flags_bench

(a) ``FlagClient.variant()`` against the UnleashClient SDK evaluating the same gradual rollout
    (flexibleRollout, stickiness userId, groupId = service), both in this process on the same
    user ids. Unleash is bootstrapped from a local file cache and runs offline: registration
    and metrics are off, toggles are never fetched, and its URL is a port nothing listens on.
(b) Propagation: a private redis-server, 20 FlagClients, and N percentage changes written
    through FlagsBackend; for each change, the time from the start of the write until the
    last of the 20 clients has applied it.

Prints a table, then one JSON object on the last line (for CI to parse).
Targets: variant < 1 us and faster than Unleash; propagation p99 < 50 ms.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import platform
import random
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from UnleashClient.cache import FileCache
from UnleashClient.clients.unleash_client import UnleashClient

from bot.flags import FlagClient, FlagState, FlagWriter
from bot.traffic.base import TrafficAction, TrafficChange
from bot.traffic.flags import FlagsBackend
from tests.support.procs import free_port, redis_server

SERVICE = "checkout"
PCT = 25
# Other services' flags, so the client's lookup dict is not trivially small.
OTHER_SERVICES = 30

VARIANT_CALLS = 200_000
VARIANT_REPEATS = 7
# Unleash is ~two orders of magnitude slower per call; fewer calls keep the run short
# while each repeat still lasts long enough to time reliably.
UNLEASH_CALLS = 20_000
UNLEASH_REPEATS = 5

CLIENTS = 20
CHANGES = 200
ARRIVAL_TIMEOUT = 5.0

TARGET_VARIANT_NS = 1_000
TARGET_P99_MS = 50.0


def user_ids(count: int, seed: int = 42) -> list[str]:
    """Ids as applications have them: numeric, uuid, e-mail and prefixed, evenly mixed."""
    rng = random.Random(seed)
    makers: list[Callable[[int], str]] = [
        lambda _i: str(rng.randrange(1, 10**10)),
        lambda _i: str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        lambda _i: f"user{rng.randrange(10**7)}@example.com",
        lambda i: f"acct-{i:08d}",
    ]
    return [makers[i % len(makers)](i) for i in range(count)]


def change(weight: int, service: str = SERVICE) -> TrafficChange:
    return TrafficChange(
        release_id="bench-1", service=service, version="v2", stable_version="v1",
        weight=weight, action=TrafficAction.SHIFT,
    )


@contextmanager
def gc_paused() -> Iterator[None]:
    # As timeit does: a collection landing in one repeat but not another is noise.
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def median_ns_per_call(run: Callable[[list[str]], None], ids: list[str], calls: int,
                       repeats: int) -> float:
    """Median over ``repeats`` of the mean ns per call of ``run`` over ``calls`` ids."""
    workload = (ids * (calls // len(ids) + 1))[:calls]
    run(workload[: min(calls, 5_000)])  # warm caches and lazy initialisation
    samples: list[float] = []
    for _ in range(repeats):
        with gc_paused():
            started = time.perf_counter_ns()
            run(workload)
            samples.append((time.perf_counter_ns() - started) / calls)
    return statistics.median(samples)


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile: the smallest value with pct% of the values at or below it."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * pct // 100))
    return ordered[int(rank) - 1]


def offline_unleash(directory: Path) -> UnleashClient:
    cache = FileCache("shipwatch-bench", directory=str(directory))
    cache.bootstrap_from_dict({
        "version": 1,
        "features": [{
            "name": SERVICE,
            "enabled": True,
            "strategies": [{
                "name": "flexibleRollout",
                "parameters": {"rollout": str(PCT), "stickiness": "userId", "groupId": SERVICE},
            }],
        }],
    })
    client = UnleashClient(
        url=f"http://127.0.0.1:{free_port()}/api",  # nothing listens there
        app_name="shipwatch-bench",
        disable_metrics=True,
        disable_registration=True,
        cache=cache,
    )
    # fetch_toggles=False: the offline connector only re-reads the bootstrapped cache.
    client.initialize_client(fetch_toggles=False)
    return client


def bench_request_path(flags: FlagClient, unleash: UnleashClient) -> dict[str, Any]:
    ids = user_ids(50_000)

    def loop_baseline(batch: list[str]) -> None:
        def nothing(_service: str, _user: str) -> str:
            return "stable"

        for uid in batch:
            nothing(SERVICE, uid)

    def ours(batch: list[str]) -> None:
        variant = flags.variant
        for uid in batch:
            variant(SERVICE, uid)

    def ours_unknown(batch: list[str]) -> None:
        variant = flags.variant
        for uid in batch:
            variant("no-such-service", uid)

    def theirs(batch: list[str]) -> None:
        is_enabled = unleash.is_enabled
        for uid in batch:
            is_enabled(SERVICE, {"userId": uid})

    agree = sum(
        (flags.variant(SERVICE, uid) == "canary") == unleash.is_enabled(SERVICE, {"userId": uid})
        for uid in ids[:5_000]
    )
    share = sum(flags.variant(SERVICE, uid) == "canary" for uid in ids) / len(ids)
    return {
        "loop_baseline_ns": median_ns_per_call(loop_baseline, ids, VARIANT_CALLS,
                                               VARIANT_REPEATS),
        "variant_ns": median_ns_per_call(ours, ids, VARIANT_CALLS, VARIANT_REPEATS),
        "variant_unknown_service_ns": median_ns_per_call(ours_unknown, ids, VARIANT_CALLS,
                                                         VARIANT_REPEATS),
        "unleash_ns": median_ns_per_call(theirs, ids, UNLEASH_CALLS, UNLEASH_REPEATS),
        "agreement_with_unleash": agree / 5_000,
        "canary_share_pct": 100 * share,
    }


class Arrivals:
    """Collects, per change, the moment each client applied it (from on_change callbacks)."""

    def __init__(self, clients: int) -> None:
        self._clients = clients
        self._lock = threading.Lock()
        self._target = -1
        self._times: list[int] = []
        self.complete = threading.Event()

    def expect(self, seq: int) -> None:
        with self._lock:
            self._target = seq
            self._times = []
            self.complete.clear()

    def on_change(self, service: str, state: FlagState | None) -> None:
        now = time.perf_counter_ns()  # first thing: this is the arrival time
        if service != SERVICE or state is None:
            return
        with self._lock:
            if state.seq == self._target:
                self._times.append(now)
                if len(self._times) == self._clients:
                    self.complete.set()

    def last(self) -> int | None:
        with self._lock:
            return max(self._times) if len(self._times) == self._clients else None


async def bench_propagation(url: str, arrivals: Arrivals, writer: aioredis.Redis) -> dict[str, Any]:
    backend = FlagsBackend(FlagWriter(writer))
    state = await backend.flag(SERVICE)
    seq = state.seq if state is not None else 0
    latencies_ms: list[float] = []
    writes_ms: list[float] = []
    lost = 0
    for i in range(CHANGES):
        pct = (PCT + 1 + i * 37) % 101  # wanders over 0..100, never repeats the previous
        seq += 1  # the only writer: Redis will assign exactly this seq
        arrivals.expect(seq)
        started = time.perf_counter_ns()
        await backend.apply(change(pct))
        writes_ms.append((time.perf_counter_ns() - started) / 1e6)
        await asyncio.to_thread(arrivals.complete.wait, ARRIVAL_TIMEOUT)
        last = arrivals.last()
        if last is None:
            lost += 1
            continue
        latencies_ms.append((last - started) / 1e6)
    if not latencies_ms:
        raise RuntimeError(f"no change reached all {CLIENTS} clients within {ARRIVAL_TIMEOUT}s")
    return {
        "changes": CHANGES,
        "clients": CLIENTS,
        "lost": lost,
        "p50_ms": percentile(latencies_ms, 50),
        "p99_ms": percentile(latencies_ms, 99),
        "max_ms": max(latencies_ms),
        "write_p50_ms": percentile(writes_ms, 50),
    }


async def seed_flags(writer: aioredis.Redis) -> None:
    backend = FlagsBackend(FlagWriter(writer))
    for n in range(OTHER_SERVICES):
        await backend.apply(change(random.Random(n).randrange(101), service=f"svc-{n:02d}"))
    await backend.apply(change(PCT))


def render(request: dict[str, Any], propagation: dict[str, Any]) -> str:
    ratio = request["unleash_ns"] / request["variant_ns"]
    rows = [
        ("python loop + call baseline", f"{request['loop_baseline_ns']:.0f} ns/call"),
        (f"FlagClient.variant() at {PCT}%", f"{request['variant_ns']:.0f} ns/call"),
        ("FlagClient.variant() unknown service",
         f"{request['variant_unknown_service_ns']:.0f} ns/call"),
        (f"UnleashClient.is_enabled() at {PCT}%", f"{request['unleash_ns']:.0f} ns/call"),
        ("Unleash / FlagClient", f"{ratio:.1f}x"),
        ("same bucket as Unleash", f"{100 * request['agreement_with_unleash']:.2f}% of users"),
        ("users in canary", f"{request['canary_share_pct']:.2f}% (flag at {PCT}%)"),
        (f"propagation to all {CLIENTS} clients p50", f"{propagation['p50_ms']:.2f} ms"),
        (f"propagation to all {CLIENTS} clients p99", f"{propagation['p99_ms']:.2f} ms"),
        ("propagation max", f"{propagation['max_ms']:.2f} ms"),
        ("write (Lua HGET/HSET/PUBLISH) p50", f"{propagation['write_p50_ms']:.2f} ms"),
        ("changes not seen by every client", f"{propagation['lost']} of {CHANGES}"),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [f"{'measure':<{width}}  value", f"{'-' * width}  {'-' * 24}"]
    lines += [f"{name:<{width}}  {value}" for name, value in rows]
    return "\n".join(lines)


async def run(url: str, directory: Path) -> dict[str, Any]:
    writer = aioredis.Redis.from_url(url, decode_responses=True)
    arrivals = Arrivals(CLIENTS)
    try:
        await seed_flags(writer)
        with ExitStack() as stack:
            flags = stack.enter_context(FlagClient(url))
            unleash = offline_unleash(directory)
            stack.callback(unleash.destroy)
            request = bench_request_path(flags, unleash)
            for _ in range(CLIENTS):
                stack.enter_context(FlagClient(url, on_change=arrivals.on_change))
            propagation = await bench_propagation(url, arrivals, writer)
    finally:
        await writer.aclose()
    return {"request_path": request, "propagation": propagation}


def main() -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="flags-bench-") as tmp, \
            redis_server(Path(tmp)) as url:
        results = asyncio.run(run(url, Path(tmp)))
    request, propagation = results["request_path"], results["propagation"]
    print(render(request, propagation))
    summary = {
        "variant_ns_median": round(request["variant_ns"], 1),
        "variant_unknown_service_ns_median": round(request["variant_unknown_service_ns"], 1),
        "unleash_ns_median": round(request["unleash_ns"], 1),
        "unleash_over_variant": round(request["unleash_ns"] / request["variant_ns"], 2),
        "loop_baseline_ns": round(request["loop_baseline_ns"], 1),
        "agreement_with_unleash": request["agreement_with_unleash"],
        "propagation_p50_ms": round(propagation["p50_ms"], 3),
        "propagation_p99_ms": round(propagation["p99_ms"], 3),
        "propagation_max_ms": round(propagation["max_ms"], 3),
        "propagation_lost": propagation["lost"],
        "clients": CLIENTS,
        "changes": CHANGES,
        "variant_calls": VARIANT_CALLS,
        "unleash_calls": UNLEASH_CALLS,
        "targets_met": {
            "variant_under_1us": request["variant_ns"] < TARGET_VARIANT_NS,
            "variant_faster_than_unleash": request["variant_ns"] < request["unleash_ns"],
            "propagation_p99_under_50ms": propagation["p99_ms"] < TARGET_P99_MS
            and propagation["lost"] == 0,
        },
        "python": platform.python_version(),
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    print(json.dumps(summary))
    return 0 if all(summary["targets_met"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
