"""Graceful shutdown: `shipwatch serve` as a real process on a real redis-server (Slack is the
stand-in), with a release it drives. SIGTERM must end it within a bound, with its leases handed
over at once (not after lease_ttl) and every phase of the drain in its JSON log. The draining
web app is checked in-process: /readyz says 503 and new work is turned away."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestServer

from bot.store import keys
from bot.store.store import Store
from handlers.api.records import ROLLOUTS
from handlers.server import DRAINING, REQUEST_ID, web_app
from tests.support.procs import clean_env, free_port
from tests.support.slack_api import BOT_TOKEN, SlackStandIn
from tests.support.slack_rig import SlackRig, running_rig
from tests.support.standin import LocalServer

SIGNING_SECRET = "5d41402abc4b2a76b9719d911017c592"
API_TOKEN = "shutdown-test-token-0123456789"
LEASE_TTL = 60.0  # far beyond the test: a lease that is gone was dropped, not expired
EXIT_BOUND = 10.0  # seconds from SIGTERM to exit; a healthy drain takes well under one
START_BOUND = 30.0
CLOSE_BOUND = 2.0  # seconds for the Slack notifier to close; it takes milliseconds

POLICY = """
defaults:
  steps: [1, 10, 100]
  hold: 10m
  interval: 100ms
  window: 1s
  metrics:
    - name: error_rate
      query: 'errors{service="{service}",version="{version}"}'
      max: 0.05
services:
  checkout:
    channel: "#checkout-releases"
"""

PHASES = ["signal", "drain", "controller", "leases", "http", "flush", "close", "done"]


async def poll(check: Any, what: str, timeout: float) -> Any:
    """Await ``check()`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        got = await check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


@dataclass
class Served:
    """`shipwatch serve` running as a process of its own."""

    proc: asyncio.subprocess.Process
    base: str
    log_path: Path
    http: aiohttp.ClientSession
    redis: aioredis.Redis

    def log_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log_path.read_text().splitlines()]

    async def up(self, probe: str) -> None:
        async def answers() -> bool:
            if self.proc.returncode is not None:
                raise AssertionError(f"serve exited: {self.log_path.read_text()[-3000:]}")
            try:
                async with self.http.get(f"{self.base}{probe}") as resp:
                    return resp.status == 200
            except aiohttp.ClientConnectionError:
                return False

        await poll(answers, f"serve to answer {probe}", START_BOUND)

    async def deploy(self, request_id: str) -> str:
        body = {"service": "checkout", "version": "v2", "stable": "v1", "changes": [],
                "requested_by": "ci"}
        headers = {"Authorization": f"Bearer {API_TOKEN}", REQUEST_ID: request_id}
        async with self.http.post(f"{self.base}{ROLLOUTS}", json=body, headers=headers) as resp:
            assert resp.status == 201, await resp.text()
            assert resp.headers[REQUEST_ID] == request_id
            return str((await resp.json())["release"]["id"])

    async def lease_token(self, release_id: str) -> int:
        """The fencing token of the release's lease, once this process holds it."""

        async def held_here() -> str | None:
            raw = await self.redis.get(keys.lease(release_id))
            # Owner ids are host:pid:nonce.
            return raw if isinstance(raw, str) and f":{self.proc.pid}:" in raw else None

        lease = await poll(held_here, "serve's controller to lease the release", 10)
        return int(lease.rsplit("|", 1)[1])

    async def terminate(self) -> tuple[int, float]:
        """SIGTERM; the exit code and the seconds it took."""
        self.proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        code = await asyncio.wait_for(self.proc.wait(), EXIT_BOUND)
        return code, time.monotonic() - started


@asynccontextmanager
async def serving(
    tmp_path: Path, redis_client: aioredis.Redis, redis_url: str, **env: str
) -> AsyncIterator[Served]:
    policy = tmp_path / "shipwatch.yaml"
    policy.write_text(POLICY)
    port = free_port()
    log_path = tmp_path / "serve.log"
    inherited = clean_env()
    async with SlackStandIn() as slack, aiohttp.ClientSession() as http:
        settings = {
            "REDIS_URL": redis_url,
            "SLACK_BOT_TOKEN": BOT_TOKEN,
            "SLACK_SIGNING_SECRET": SIGNING_SECRET,
            "SLACK_API_URL": slack.api_url,
            "SHIPWATCH_API_TOKENS": f"ci:{API_TOKEN}",
            "SHIPWATCH_DATA_DIR": str(tmp_path / "data"),
            "SHIPWATCH_CONTROLLER_TICK": "0.1",
            "SHIPWATCH_LEASE_TTL": str(LEASE_TTL),
            "PORT": str(port),
        }
        with log_path.open("wb") as stderr:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bot", "serve", "--policy", str(policy),
                # Synthetic metrics are a demo part: serve needs it said, unless given Prometheus.
                *([] if "PROMETHEUS_URL" in env else ["--demo"]),
                cwd=tmp_path, env=inherited | settings | env,
                stdout=asyncio.subprocess.DEVNULL, stderr=stderr,
            )
        try:
            yield Served(proc, f"http://127.0.0.1:{port}", log_path, http, redis_client)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def assert_handed_over(redis_client: aioredis.Redis, release_id: str, token: int) -> None:
    """The lease is gone (long before it would have expired), another replica takes the
    release at once, and the release itself is as it was: a shutdown decides nothing."""
    assert await redis_client.get(keys.lease(release_id)) is None
    other = await Store(redis_client).acquire_leases("replica-b", [release_id], 5.0)
    assert other[release_id] > token
    release = await Store(redis_client).get(release_id)
    assert release is not None and release.is_active


async def test_sigterm_hands_leases_over_and_logs_each_phase(
    tmp_path: Path, redis_url: str, redis_client: aioredis.Redis
) -> None:
    async with serving(tmp_path, redis_client, redis_url, SHIPWATCH_SHUTDOWN_TIMEOUT="8") as bot:
        await bot.up("/readyz")
        release_id = await bot.deploy("deploy-1")
        token = await bot.lease_token(release_id)
        code, took = await bot.terminate()

    lines = bot.log_lines()
    assert code == 0, lines[-20:]
    assert took < EXIT_BOUND
    await assert_handed_over(redis_client, release_id, token)

    # serve logs JSON by default: every line parsed, and the drain is there phase by phase.
    assert all({"ts", "level", "logger", "msg"} <= line.keys() for line in lines)
    assert [line["phase"] for line in lines if "phase" in line] == PHASES
    signalled = next(i for i, line in enumerate(lines) if line.get("phase") == "signal")
    drain = lines[signalled:]
    assert not [line for line in drain if line["level"] in ("WARNING", "ERROR")], drain
    [handed] = [line for line in lines if line["msg"].startswith("handed over")]
    assert handed["msg"] == "handed over 1 release(s): their leases are dropped"
    assert handed["releases"] == [release_id]
    [started_line] = [line for line in lines if "via the API" in line["msg"]]
    assert (started_line["request_id"], started_line["release_id"]) == ("deploy-1", release_id)
    # The access log line names the request too, though it is written after the request.
    [access] = [line for line in lines if line["msg"].startswith(f"POST {ROLLOUTS} 201")]
    assert (access["logger"], access["request_id"]) == ("aiohttp.access", "deploy-1")
    log_text = bot.log_path.read_text()
    for secret in (BOT_TOKEN, SIGNING_SECRET, API_TOKEN):
        assert secret not in log_text


class SilentPrometheus(LocalServer):
    """An HTTP server that takes every query and never answers it (a wedged Prometheus)."""

    def routes(self, router: web.UrlDispatcher) -> None:
        router.add_route("*", "/{tail:.*}", self._hang)

    async def _hang(self, _: web.Request) -> web.Response:
        await self.stall()
        return web.Response(status=503)


async def test_a_round_stuck_on_its_metrics_is_cut_off_and_its_leases_still_go(
    tmp_path: Path, redis_url: str, redis_client: aioredis.Redis
) -> None:
    async with SilentPrometheus() as prometheus, serving(
        tmp_path,
        redis_client,
        redis_url,
        PROMETHEUS_URL=prometheus.base_url,
        SHIPWATCH_PROMETHEUS_TIMEOUT="4",
        SHIPWATCH_SHUTDOWN_TIMEOUT="1",
    ) as bot:
        await bot.up("/healthz")  # not /readyz: the metrics source is the thing that is down
        release_id = await bot.deploy("deploy-2")
        token = await bot.lease_token(release_id)
        await asyncio.sleep(0.3)  # the round that took the lease is waiting on Prometheus
        code, took = await bot.terminate()

    lines = bot.log_lines()
    assert code == 0, lines[-20:]
    # The round is given the shutdown timeout (1 s), then cancelled; the query's own thread
    # ends within its HTTP timeout (4 s).
    assert took < 4 + 1 + 3
    await assert_handed_over(redis_client, release_id, token)
    assert list(dict.fromkeys(line["phase"] for line in lines if "phase" in line)) == PHASES
    [cut] = [line for line in lines if "did not finish in time" in line["msg"]]
    assert cut["level"] == "WARNING"
    [handed] = [line for line in lines if line["msg"].startswith("handed over")]
    assert handed["releases"] == [release_id]


@pytest.fixture
async def rig(redis_url: str, redis_client: aioredis.Redis) -> AsyncIterator[SlackRig]:
    settings = {"SHIPWATCH_API_TOKENS": f"ci:{API_TOKEN}"}
    async with running_rig(redis_url, extra_settings=settings) as rig:
        yield rig


async def test_a_draining_app_is_not_ready_and_turns_new_work_away(rig: SlackRig) -> None:
    app = web_app(rig.core, None)
    server = TestServer(app)
    await server.start_server()
    try:
        async with rig.http.get(str(server.make_url("/readyz"))) as resp:
            assert resp.status == 200
        app[DRAINING].set()

        async with rig.http.get(str(server.make_url("/readyz"))) as resp:
            assert resp.status == 503
            assert await resp.json() == {"ready": False, "draining": True}
        async with rig.http.get(str(server.make_url("/healthz"))) as resp:
            assert resp.status == 200  # alive, only leaving: no reason to be killed early
        body = {"service": "checkout", "version": "v2", "changes": [], "requested_by": "ci"}
        headers = {"Authorization": f"Bearer {API_TOKEN}", REQUEST_ID: "late-1"}
        async with rig.http.post(
            str(server.make_url(ROLLOUTS)), json=body, headers=headers
        ) as resp:
            assert resp.status == 503
            assert resp.headers["Retry-After"] == "5"
            assert resp.headers[REQUEST_ID] == "late-1"
    finally:
        await server.close()
    assert await rig.releases("checkout") == []  # nothing was started


# The thread method ends the whole run with every thread's stack if this test ever hangs again:
# a loop that lost its cancel spins on the event loop, where a signal cannot reach it.
@pytest.mark.timeout(60, method="thread")
async def test_the_outbox_writer_ends_on_close_wherever_its_redis_command_is(
    rig: SlackRig,
) -> None:
    # On Python 3.11, asyncio.wait_for (redis-py sends every command under one) swallows a
    # cancel that lands just as the command completes (CPython gh-86296, fixed in 3.12). Back to
    # back, the loop is always inside a Redis command: closing it one more loop turn later each
    # time walks the cancel across whole round trips. A loop ended by the cancel alone ran on
    # after about one close in six, and close waited for it forever.
    notifier = rig.notifier
    await notifier.close()
    notifier.writer.poll = 0.0
    try:
        for turns in range(40):
            notifier.start()
            for _ in range(turns):
                await asyncio.sleep(0)
            # Not asyncio.timeout: close suppresses the CancelledError of the task it awaits,
            # and the timeout's own cancel would be swallowed with it.
            closing = asyncio.create_task(notifier.close())
            done, _ = await asyncio.wait({closing}, timeout=CLOSE_BOUND)
            assert done, f"close still waits for the writer's loop, {turns} loop turns in"
    finally:
        # A loop left running back to back would spin; paced, the rig's close can still end it.
        notifier.writer.poll = 0.05
