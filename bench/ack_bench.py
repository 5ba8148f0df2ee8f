"""Benchmark: slash-command ack latency through the HTTP endpoint.

Run from the project root::

    .venv/bin/python -m bench.ack_bench [--requests 400]

The real server (`handlers.server.web_app` with the bolt app) on a free port, a private
redis-server, the synthetic metrics source, and the local Slack API stand-in the tests use.
Signed `/rollout list` requests (the full path: signature check, bolt middleware, our
listener's ack) are sent at concurrency 1 and 50 from a separate client process, as Slack's
servers would; the time is from sending to the HTTP answer (Slack waits at most 3 s for it).
The work each command does after its ack (the reply on the response_url) runs on the same
server meanwhile. Prints a table, then one JSON line. Target: p99 < 100 ms at 50.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import multiprocessing
import statistics
import tempfile
import threading
import time
from multiprocessing.queues import Queue
from pathlib import Path

import aiohttp
from aiohttp import web

from bot.config import Settings
from bot.release.policy import parse_policy
from handlers.app import build_bolt
from handlers.server import build_core, web_app
from tests.support.procs import free_port, redis_server
from tests.support.slack_api import BOT_TOKEN, SlackStandIn
from tests.support.slack_signing import sign, slash_command

SECRET = "bench-signing-secret"
POLICY = """
defaults:
  metrics:
    - {name: error_rate, query: 'e{version}', max: 0.05}
services:
  checkout: {}
"""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def measure(session: aiohttp.ClientSession, url: str, response_urls: list[str],
                  concurrency: int) -> list[float]:
    latencies: list[float] = []
    gate = asyncio.Semaphore(concurrency)

    async def one(response_url: str) -> None:
        body = slash_command("/rollout", "list", user_id="U0BENCH", response_url=response_url)
        async with gate:
            started = time.perf_counter()
            async with session.post(url, data=body, headers=sign(SECRET, body)) as response:
                await response.read()
                assert response.status == 200, response.status
            latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(one(u) for u in response_urls))
    return latencies


def client_process(url: str, levels: list[tuple[int, list[str]]], out: Queue[object]) -> None:
    """The load, from its own process: its CPU is not the server's."""

    async def go() -> list[list[float]]:
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=100)
        ) as session:
            return [await measure(session, url, urls, c) for c, urls in levels]

    out.put(asyncio.run(go()))


class StandInThread:
    """The Slack stand-in on its own event loop and thread, so its work (answering the
    replies our listeners send after the ack) is not counted in the bot's ack latency."""

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


async def run(n: int, redis_url: str) -> dict[str, object]:
    with StandInThread() as slack:
        settings = Settings.model_validate({
            "REDIS_URL": redis_url, "SLACK_BOT_TOKEN": BOT_TOKEN,
            "SLACK_SIGNING_SECRET": SECRET, "SLACK_API_URL": slack.api_url,
        })
        core, _notifier = await build_core(settings, parse_policy(POLICY, "bench"))
        runner = web.AppRunner(web_app(core, build_bolt(core, SECRET)))
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        url = f"http://127.0.0.1:{port}/slack/events"
        rows: dict[str, dict[str, float]] = {}
        # Each response_url takes 5 posts; give every request its own, as Slack does.
        # Warm-ups first (the first auth.test, then 50 client connections opened), unmeasured.
        plan = ((1, 20), (50, 100), (1, n), (50, n))
        levels = [(c, [slack.new_response_url() for _ in range(k)]) for c, k in plan]
        try:
            ctx = multiprocessing.get_context("spawn")
            out: Queue[object] = ctx.Queue()
            proc = ctx.Process(target=client_process, args=(url, levels, out))
            proc.start()
            results = await asyncio.to_thread(out.get, True, 300)
            proc.join(10)
            assert isinstance(results, list)
            for (concurrency, _), lat in list(zip(levels, results, strict=True))[2:]:
                rows[str(concurrency)] = {
                    "p50_ms": round(statistics.median(lat) * 1000, 2),
                    "p99_ms": round(percentile(lat, 0.99) * 1000, 2),
                    "max_ms": round(max(lat) * 1000, 2),
                }
            # Let the replies on response_urls finish before tearing down.
            await asyncio.sleep(1.0)
        finally:
            await runner.cleanup()
            await core.responses.close()
            await core.app.close()
    return {"requests_per_level": n, "by_concurrency": rows,
            "target_p99_ms_at_50": 100.0,
            "target_met": rows["50"]["p99_ms"] < 100.0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp, redis_server(Path(tmp)) as redis_url:
        result = asyncio.run(run(args.requests, redis_url))
    print(f"{'concurrency':>11}  {'p50 ms':>8}  {'p99 ms':>8}  {'max ms':>8}")
    rows = result["by_concurrency"]
    assert isinstance(rows, dict)
    for level, row in rows.items():
        print(f"{level:>11}  {row['p50_ms']:>8}  {row['p99_ms']:>8}  {row['max_ms']:>8}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
