"""What the traffic-engine tests share: the bot built on a policy that drives one service through
an engine, users counted through an engine, and controller rounds until the engine agrees."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager

import aiohttp

from bot.app import App, build_app
from bot.config import Settings
from bot.release.policy import parse_policy
from bot.traffic.base import Applied, TrafficBackend
from tests.support.recorder import Recorder

POLICY = """
services:
  {service}:
    steps: [10, 50, 100]
    hold: 1h
    bake: 0s
    interval: 100ms
    window: 1s
    traffic:
{traffic}
    metrics:
      - name: error_rate
        query: 'errors{{service="{{service}}",version="{{version}}"}}'
        max: 0.05
"""


@asynccontextmanager
async def app_driving(
    redis_url: str, service: str, traffic: Mapping[str, str]
) -> AsyncIterator[tuple[App, Recorder]]:
    """The bot as `serve` builds it (controller not running: tests call its rounds), with one
    service whose traffic settings are ``traffic``; and a recorder of its events."""
    lines = "\n".join(f'      {key}: "{value}"' for key, value in traffic.items())
    policy = parse_policy(POLICY.format(service=service, traffic=lines), "engine test")
    recorder = Recorder()
    settings = Settings.model_validate(
        {"REDIS_URL": redis_url, "SHIPWATCH_CONTROLLER_TICK": 0.05, "SHIPWATCH_LEASE_TTL": 2}
    )
    app = await build_app(settings, policy=policy, notifiers=[recorder])
    app.start()
    try:
        yield app, recorder
    finally:
        await app.close()


async def rounds_until(
    app: App, backend: TrafficBackend, service: str, want: Applied, rounds: int = 60
) -> Applied | None:
    """Controller rounds until the engine reads back ``want``; what it read last."""
    seen = await backend.current(service)
    for _ in range(rounds):
        if seen == want:
            break
        await app.controller.run_once()
        await asyncio.sleep(0.05)
        seen = await backend.current(service)
    return seen


async def canary_users(
    url: str, users: list[str], headers: Callable[[str], dict[str, str]]
) -> set[str]:
    """The users an HTTP engine sends to the canary (its backends answer their name)."""
    sem = asyncio.Semaphore(50)
    async with aiohttp.ClientSession() as session:

        async def ask(user: str) -> str:
            async with sem, session.get(url, headers=headers(user)) as resp:
                return (await resp.text()).strip()

        answers = await asyncio.gather(*(ask(u) for u in users))
    return {u for u, a in zip(users, answers, strict=True) if a == "canary"}
