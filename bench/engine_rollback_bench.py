"""How long each traffic engine takes to put everyone back on stable, side by side in one run.

Run from the project root::

    .venv/bin/python -m bench.engine_rollback_bench [--runs 7]

For each backend shipwatch drives (flags, haproxy, nginx, unleash; real redis-server, HAProxy,
NGINX, PostgreSQL and Unleash started here on free ports), a canary at 50%, then the rollback
as the actuator applies it: from the call until every one of 200 users is routed to stable
(flags: a FlagClient subscribed to Redis; haproxy and nginx: HTTP requests through the engine,
each user asking in turn until it gets stable; unleash: Unleash's Python SDK with a 1 s
refresh). Backends are interleaved run by run. This is the engine's part of a rollback; the
judge's part (fault onset to decision) is the same whatever the engine and is measured by
bench/rollback_bench.py with a real Prometheus.

Prints a table (median and max per backend, in ms), then one JSON object on the last line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from pathlib import Path

import aiohttp
import redis.asyncio as aioredis

from bot.flags import FlagClient, FlagWriter
from bot.traffic.base import TrafficAction, TrafficBackend, TrafficChange
from bot.traffic.flags import FlagsBackend
from bot.traffic.haproxy import HAProxyBackend, RuntimeApi
from bot.traffic.nginx import NginxBackend
from bot.traffic.unleash import UnleashBackend
from tests.support.haproxy import HAProxy, haproxy_running
from tests.support.nginx import Nginx, nginx_running
from tests.support.procs import redis_server
from tests.support.unleash import ADMIN_TOKEN, Unleash, unleash_running

USERS = [f"user-{n}" for n in range(200)]
DEADLINE_S = 10.0


def change(weight: int, action: TrafficAction) -> TrafficChange:
    return TrafficChange("bench", "checkout", "v2", "v1", weight, action)


async def _http_all_stable(url: str, headers: Callable[[str], dict[str, str]]) -> None:
    async with aiohttp.ClientSession() as session:
        for user in USERS:
            while True:
                async with session.get(url, headers=headers(user)) as resp:
                    if (await resp.text()).strip() == "stable":
                        break


async def _timed(
    backend: TrafficBackend, all_stable: Callable[[], Awaitable[None]]
) -> tuple[float, float]:
    """(ms from the rollback call until every user is on stable, ms one pass of the check
    takes once they all are: the part of the first figure that is the asking, not the engine)."""
    await backend.apply(change(50, TrafficAction.SHIFT))
    await asyncio.sleep(0.2)  # settled at 50%
    started = time.perf_counter()
    await backend.apply(change(50, TrafficAction.ROLLBACK))
    await asyncio.wait_for(all_stable(), DEADLINE_S)
    took = time.perf_counter() - started
    started = time.perf_counter()
    await all_stable()
    return took * 1000, (time.perf_counter() - started) * 1000


async def run(
    runs: int, redis_url: str, proxy: HAProxy, nginx: Nginx, server: Unleash
) -> dict[str, list[tuple[float, float]]]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    flags = FlagsBackend(FlagWriter(client))
    flag_client = FlagClient(redis_url, poll_interval=5.0)
    await asyncio.to_thread(flag_client.start)
    haproxy = HAProxyBackend(RuntimeApi(proxy.socket), map_path=proxy.map_file)
    ngx = NginxBackend(
        nginx.include_file,
        test_command=nginx.command("-t", "-q"),
        reload_command=nginx.command("-s", "reload"),
        marker_url=nginx.marker_url,
    )

    unleash = UnleashBackend(server.url, ADMIN_TOKEN)
    await unleash.apply(change(50, TrafficAction.START))
    sdk = await asyncio.to_thread(server.python_sdk)

    def sdk_canary() -> int:
        return sum(sdk.is_enabled("shipwatch.checkout", {"userId": u}) for u in USERS)

    async def unleash_stable() -> None:
        while True:
            if not await asyncio.to_thread(sdk_canary):
                return
            await asyncio.sleep(0.01)

    async def unleash_at_50() -> None:
        while True:
            if await asyncio.to_thread(sdk_canary):
                return
            await asyncio.sleep(0.05)

    async def flags_stable() -> None:
        await asyncio.to_thread(flag_client.wait_for, "checkout", lambda s: s.pct == 0, DEADLINE_S)
        assert all(flag_client.variant("checkout", u) == "stable" for u in USERS)

    measured: dict[str, list[tuple[float, float]]] = {
        "flags": [], "haproxy": [], "nginx": [], "unleash": []
    }  # fmt: skip
    try:
        for _ in range(runs):
            measured["flags"].append(await _timed(flags, flags_stable))
            measured["haproxy"].append(
                await _timed(
                    haproxy,
                    lambda: _http_all_stable(
                        proxy.url, lambda u: {"X-Service": "checkout", "X-User-Id": u}
                    ),
                )
            )
            measured["nginx"].append(
                await _timed(ngx, lambda: _http_all_stable(nginx.url, lambda u: {"X-User-Id": u}))
            )
            await unleash.apply(change(50, TrafficAction.SHIFT))
            await asyncio.wait_for(unleash_at_50(), DEADLINE_S)  # the SDK has the canary again
            measured["unleash"].append(await _timed(unleash, unleash_stable))
    finally:
        await asyncio.to_thread(sdk.destroy)
        await unleash.close()
        await asyncio.to_thread(flag_client.close)
        await client.aclose()
    return measured


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="engine-rollback-")))
        for sub in ("redis", "haproxy", "nginx", "unleash"):
            (tmp / sub).mkdir()
        redis_url = stack.enter_context(redis_server(tmp / "redis"))
        proxy = stack.enter_context(haproxy_running(tmp / "haproxy"))
        nginx = stack.enter_context(nginx_running(tmp / "nginx"))
        server = stack.enter_context(unleash_running(tmp / "unleash"))
        measured = asyncio.run(run(args.runs, redis_url, proxy, nginx, server))
    print(f"rollback applied → all {len(USERS)} users on stable, {args.runs} runs (ms)")
    print(f"{'backend':<10}{'median':>10}{'max':>10}{'of it, asking':>16}")
    summary = {}
    for name, pairs in measured.items():
        values = [took for took, _ in pairs]
        summary[name] = {
            "median_ms": round(statistics.median(values), 1),
            "max_ms": round(max(values), 1),
            "check_ms": round(statistics.median(check for _, check in pairs), 1),
            "runs_ms": [round(v, 1) for v in values],
        }
        row = summary[name]
        print(f"{name:<10}{row['median_ms']:>10}{row['max_ms']:>10}{row['check_ms']:>16}")
    print(json.dumps({"users": len(USERS), "runs": args.runs, "backends": summary}))


if __name__ == "__main__":
    main()
