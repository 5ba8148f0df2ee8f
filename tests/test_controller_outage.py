"""A Redis outage fails every controller round until Redis is back: the log says so once, and
says when it ends, instead of a traceback every tick."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from bot.engine.actuator import TrafficActuator
from bot.engine.controller import Controller
from bot.engine.events import EventBus
from bot.flags import FlagWriter
from bot.metrics.synthetic import SyntheticSource
from bot.release.policy import parse_policy
from bot.store.store import Store
from bot.traffic.flags import FlagsBackend
from tests.support.procs import free_port, redis_server_cmd, wait_for_port
from tests.support.slack_rig import wait_until

POLICY = """
services:
  checkout:
    metrics:
      - name: error_rate
        query: 'errors{service="{service}",version="{version}"}'
        max: 0.05
"""


@pytest.mark.redis
async def test_a_redis_outage_is_said_once_and_its_end_too(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    client = aioredis.Redis.from_url(
        f"redis://127.0.0.1:{port}/0", decode_responses=True, socket_connect_timeout=0.5
    )
    store = Store(client)
    events = EventBus([])
    flags = FlagsBackend(FlagWriter(client))
    actuator = TrafficActuator(store, lambda _service: flags, events)
    controller = Controller(
        store, parse_policy(POLICY, "outage"), SyntheticSource(), actuator, events, tick=0.02
    )
    stop = asyncio.Event()
    redis_proc: asyncio.subprocess.Process | None = None
    with caplog.at_level(logging.DEBUG, logger="bot.engine.controller"):
        loop = asyncio.create_task(controller.run(stop))
        try:
            # Nothing listens on the port yet: every round fails.
            await wait_until(
                lambda: sum("failed again" in r.getMessage() for r in caplog.records) >= 4,
                "rounds failing",
            )
            redis_proc = await asyncio.create_subprocess_exec(
                *redis_server_cmd(port, tmp_path),
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            await asyncio.to_thread(wait_for_port, port, 10.0)
            await wait_until(
                lambda: any("rounds work again after" in r.getMessage() for r in caplog.records),
                "recovery",
            )
        finally:
            stop.set()
            await asyncio.wait_for(loop, 10)
            await actuator.close()
            await events.close()
            await client.aclose()
            if redis_proc is not None:
                redis_proc.terminate()
                await redis_proc.wait()

    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    assert "controller rounds are failing" in errors[0].getMessage()
    assert errors[0].exc_info is None  # a dependency outage, not a bug: no traceback
    [back] = [r for r in caplog.records if "rounds work again after" in r.getMessage()]
    assert back.levelno == logging.INFO and "failed round(s)" in back.getMessage()
