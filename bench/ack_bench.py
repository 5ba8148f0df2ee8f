"""Benchmark: how fast Slack gets its ack while the controller drives 1,000 releases.

Run from the project root::

    .venv/bin/python -m bench.ack_bench [--releases 1000] [--requests 300] [--repeats 3]

A private redis-server holds ``--releases`` active releases (one per service, seeded through
the release service before anything is measured), judged every 5 s on the synthetic source. The
local Slack API stand-in answers every Web API call. Three setups, each its own processes,
started and stopped in turn and interleaved over ``--repeats`` rounds:

- ``bolt peer``: the smallest bolt app that acks ``/rollout`` (``bench.bolt_peer``), no
  controller anywhere: the floor any bolt app on this machine has;
- ``serve --role all``: one shipwatch process that answers Slack and drives the releases;
- ``serve --role web`` + ``serve --role controller``: the same, split in two processes (the
  controller's at nice 10, standing for the CPU it would have to itself in a deployment).

Signed ``/rollout status svcN`` requests (signature check, bolt middleware, the listener's
ack) come from a separate client process at concurrency 1 and 50, as Slack's servers would
send them; the time is from sending to the HTTP answer (Slack waits at most 3 s). Prints a
table of medians over the repeats, then one JSON line. Target: p99 ≤ 50 ms at 50 concurrent
for the split setup.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import multiprocessing
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from multiprocessing.queues import Queue
from pathlib import Path
from typing import Any

import aiohttp

from bot.app import build_app
from bot.config import Settings
from bot.release.policy import Policy, parse_policy
from bot.release.request import DeployOptions
from bot.release.rollout import Actor
from tests.support.procs import clean_env, free_port, redis_server, stop_process
from tests.support.slack_api import BOT_TOKEN, SlackStandIn
from tests.support.slack_signing import sign, slash_command

SECRET = "bench-signing-secret"
METRICS = """
    - {name: error_rate, query: 'e{service}{version}', max: 0.05, min_requests: 5}
    - {name: latency_p99, query: 'l{service}{version}', max_ratio: 2}
"""
PEER = "bolt peer"
SPLIT = "serve --role web + controller"
SETUPS = (PEER, "serve --role all", SPLIT)
# Not in the default run: the web process alone, no controller anywhere (the split's floor).
WEB_ALONE = "serve --role web"
LEVELS = (1, 50)
TARGET_P99_MS = 50.0


def policy_text(services: int) -> str:
    names = "\n".join(f"  svc{i}: {{}}" for i in range(services))
    return (
        "defaults:\n  hold: 1h\n  interval: 5s\n  channel: '#releases'\n"
        f"  metrics:{METRICS}services:\n{names}\n"
    )


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def measure(
    session: aiohttp.ClientSession,
    url: str,
    response_urls: list[str],
    concurrency: int,
    services: int,
) -> list[float]:
    latencies: list[float] = []
    gate = asyncio.Semaphore(concurrency)
    rng = random.Random(concurrency)

    async def one(response_url: str) -> None:
        text = f"status svc{rng.randrange(services)}"
        body = slash_command("/rollout", text, user_id="U0BENCH", response_url=response_url)
        async with gate:
            started = time.perf_counter()
            async with session.post(url, data=body, headers=sign(SECRET, body)) as response:
                await response.read()
                assert response.status == 200, response.status
            latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(one(u) for u in response_urls))
    return latencies


def client_process(
    url: str, levels: list[tuple[int, list[str]]], services: int, out: Queue[object]
) -> None:
    """The load, from its own process: its CPU is not the server's."""

    async def go() -> list[list[float]]:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100)) as session:
            return [await measure(session, url, urls, c, services) for c, urls in levels]

    out.put(asyncio.run(go()))


class StandInThread:
    """The Slack stand-in on its own event loop and thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.slack = SlackStandIn()

    def __enter__(self) -> SlackStandIn:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.slack.start(), self.loop).result(10)
        return self.slack

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.slack.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def _env(redis_url: str, api_url: str, port: int) -> dict[str, str]:
    return {
        **clean_env(),
        "REDIS_URL": redis_url,
        "SLACK_BOT_TOKEN": BOT_TOKEN,
        "SLACK_SIGNING_SECRET": SECRET,
        "SLACK_API_URL": api_url,
        "PORT": str(port),
    }


def _spawn(
    cmd: list[str], log: Path, env: dict[str, str] | None = None, nice: int = 0
) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            cmd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=(lambda: os.nice(nice)) if nice else None,  # noqa: PLW1509
        )


def _serve(
    role: str, policy: Path, env: dict[str, str], log: Path, nice: int = 0
) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "bot", "serve", "--role", role, "--policy", str(policy), "--demo"]
    return _spawn(cmd, log, env, nice)


async def _ready(port: int, path: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            try:
                async with session.get(f"http://127.0.0.1:{port}{path}") as response:
                    if response.status < 500:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise TimeoutError(f"nothing answered on :{port}{path} within {timeout}s")


async def seed(redis_url: str, policy: Policy, releases: int) -> None:
    """Every service gets an active release, through the release service (as /deploy would)."""
    settings = Settings.model_validate({"REDIS_URL": redis_url})
    app = await build_app(settings, policy=policy)
    try:
        actor = Actor(user="bench", surface="api")
        for i in range(releases):
            await app.service.deploy(actor, f"svc{i}", "v2", DeployOptions(stable="v1"))
    finally:
        await app.close()


async def one_setup(
    setup: str,
    redis_url: str,
    slack: SlackStandIn,
    policy: Path,
    tmp: Path,
    requests: int,
    services: int,
) -> list[list[float]]:
    port = free_port()
    procs: list[subprocess.Popen[bytes]] = []
    log = tmp / f"{setup.replace(' ', '_')}.log"
    try:
        if setup == PEER:
            cmd = [
                sys.executable,
                "-m",
                "bench.bolt_peer",
                str(port),
                SECRET,
                slack.api_url,
                BOT_TOKEN,
            ]
            procs.append(_spawn(cmd, log))
            await _ready(port, "/")
        elif setup == "serve --role all":
            procs.append(_serve("all", policy, _env(redis_url, slack.api_url, port), log))
            await _ready(port, "/readyz")
        elif setup == WEB_ALONE:
            procs.append(_serve("web", policy, _env(redis_url, slack.api_url, port), log))
            await _ready(port, "/readyz")
        else:
            procs.append(_serve("web", policy, _env(redis_url, slack.api_url, port), log))
            ctl_port = free_port()
            procs.append(
                _serve("controller", policy, _env(redis_url, slack.api_url, ctl_port), log, 10)
            )
            await _ready(port, "/readyz")
            await _ready(ctl_port, "/readyz")
        if setup != PEER:
            await asyncio.sleep(6)  # at least one whole controller round has started
        plan = [(1, 20), (50, 100), *((c, requests) for c in LEVELS)]  # warm-ups first
        levels = [(c, [slack.new_response_url() for _ in range(k)]) for c, k in plan]
        ctx = multiprocessing.get_context("spawn")
        out: Queue[object] = ctx.Queue()
        client = ctx.Process(
            target=client_process,
            args=(f"http://127.0.0.1:{port}/slack/events", levels, services, out),
        )
        client.start()
        results = await asyncio.to_thread(out.get, True, 600)
        client.join(10)
        assert isinstance(results, list)
        return results[2:]
    finally:
        for proc in procs:
            await asyncio.to_thread(stop_process, proc)


async def run(
    releases: int,
    requests: int,
    repeats: int,
    redis_url: str,
    tmp: Path,
    setups: tuple[str, ...] = SETUPS,
) -> dict[str, object]:
    policy = tmp / "shipwatch.yaml"
    text = policy_text(releases)
    policy.write_text(text, encoding="utf-8")
    started = time.perf_counter()
    await seed(redis_url, parse_policy(text, str(policy)), releases)
    seeded_s = time.perf_counter() - started
    runs: dict[str, dict[int, list[dict[str, float]]]] = {
        s: {c: [] for c in LEVELS} for s in setups
    }
    with StandInThread() as slack:
        for _ in range(repeats):
            for setup in setups:
                results = await one_setup(setup, redis_url, slack, policy, tmp, requests, releases)
                for c, lat in zip(LEVELS, results, strict=True):
                    runs[setup][c].append(
                        {
                            "p50_ms": statistics.median(lat) * 1000,
                            "p99_ms": percentile(lat, 0.99) * 1000,
                        }
                    )
    table: dict[str, dict[str, dict[str, Any]]] = {
        setup: {
            str(c): {
                "p50_ms": round(statistics.median(r["p50_ms"] for r in rows), 1),
                "p99_ms": round(statistics.median(r["p99_ms"] for r in rows), 1),
                "p99_ms_range": [
                    round(min(r["p99_ms"] for r in rows), 1),
                    round(max(r["p99_ms"] for r in rows), 1),
                ],
            }
            for c, rows in by_level.items()
        }
        for setup, by_level in runs.items()
    }
    split = table[SPLIT]["50"]["p99_ms"] if SPLIT in table else None
    peer = table[PEER]["50"]["p99_ms"] if PEER in table else None
    return {
        "active_releases": releases,
        "seeded_in_s": round(seeded_s, 1),
        "requests_per_level": requests,
        "repeats": repeats,
        "by_setup": table,
        "split_vs_peer_p99_at_50": round(split / peer, 2) if split and peer else None,
        "target_p99_ms_at_50": TARGET_P99_MS,
        "target_met": split is not None and split <= TARGET_P99_MS,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--releases", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--setup", action="append", choices=[*SETUPS, WEB_ALONE], help="only these (repeatable)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp, redis_server(Path(tmp)) as redis_url:
        result = asyncio.run(
            run(
                args.releases,
                args.requests,
                args.repeats,
                redis_url,
                Path(tmp),
                tuple(args.setup or SETUPS),
            )
        )
    print(f"{result['active_releases']} active releases; medians over {args.repeats} repeats")
    print(f"{'setup':<32}{'conc':>5}{'p50 ms':>9}{'p99 ms':>9}  p99 range")
    table = result["by_setup"]
    assert isinstance(table, dict)
    for setup, levels in table.items():
        for level, row in levels.items():
            lo, hi = row["p99_ms_range"]
            print(f"{setup:<32}{level:>5}{row['p50_ms']:>9}{row['p99_ms']:>9}  [{lo}..{hi}]")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
