"""What the traffic-engine tests share: the bot built on a policy that drives one service through
an engine, users counted through an engine (and their share checked at each step), controller
rounds until the engine agrees, and an engine that stops answering."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager

import aiohttp
import pytest

from bot.app import App, build_app
from bot.config import Settings
from bot.engine.events import EventKind
from bot.errors import TrafficError
from bot.release.policy import parse_policy
from bot.release.request import DeployOptions
from bot.release.rollout import Actor, Release, State, advance
from bot.traffic.base import Applied, TrafficAction, TrafficBackend, TrafficChange
from tests.support.recorder import Recorder

# Users sent through an HTTP engine to count its split; enough that a share lands within
# TOLERANCE points of the weight.
USERS = 2000
USER_IDS = [f"user-{n}" for n in range(USERS)]
TOLERANCE = 3.0  # points of the weight

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


def change(weight: int, action: TrafficAction = TrafficAction.SHIFT) -> TrafficChange:
    """A change of checkout's v2 canary (stable v1) to ``weight``."""
    return TrafficChange("r-1", "checkout", "v2", "v1", weight, action)


def assert_share(canary: set[str], weight: int) -> None:
    """The canary's users (of USER_IDS) are ``weight`` percent of them, within TOLERANCE."""
    share = 100 * len(canary) / USERS
    assert abs(share - weight) <= TOLERANCE, f"{share:.1f}% on the canary at {weight}%"


async def split_at_each_step(
    backend: TrafficBackend,
    steps: Sequence[tuple[int, TrafficAction]],
    canary_users: Callable[[], Awaitable[set[str]]],
) -> None:
    """Apply each (weight, action) to checkout: the engine reads it back, the users follow it,
    and no user on the canary goes back to stable at a later step."""
    before: set[str] = set()
    for weight, action in steps:
        await backend.apply(change(weight, action))
        assert await backend.current("checkout") == Applied(weight)
        canary = await canary_users()
        assert_share(canary, weight)
        assert before <= canary, "a user moved back to stable between steps"
        before = canary


async def down_is_a_traffic_error(
    backend: TrafficBackend, stop: Callable[[], None], *, reading: str, applying: str
) -> None:
    """With the engine stopped, reading back and applying checkout both raise TrafficError,
    matching ``reading`` and ``applying``."""
    stop()
    with pytest.raises(TrafficError, match=reading):
        await backend.current("checkout")
    with pytest.raises(TrafficError, match=applying):
        await backend.apply(change(10))


async def unreachable_after_stop(app: App, service: str, stop: Callable[[], None]) -> str:
    """The app finds every engine reachable, then, once ``stop`` ran, names ``service``'s alone;
    what it says of it."""
    assert await app.unreachable_engines() == {}
    stop()
    unreachable = await app.unreachable_engines()
    assert list(unreachable) == [service]
    return unreachable[service]


async def a_decided_step_lost_in_a_crash_is_applied(app: App, service: str) -> None:
    """Deploy ``service`` (10%), store its next step (50%) as a process does before it dies
    without telling the engine, then check that the controller's next rounds apply it."""
    alice = Actor(user="alice", surface="slack")
    release = (await app.service.deploy(alice, service, "v2", DeployOptions(stable="v1"))).release
    backend = app.backends[service]
    assert await backend.current(service) == Applied(10)
    stored = await app.store.get(release.id)
    assert stored is not None
    decided = advance(stored, alice, time.time(), "advanced, then the process died")
    committed = await app.store.commit(decided, expected_rev=stored.rev, audit=None)
    assert committed.status.value == "ok"
    assert await backend.current(service) == Applied(10)

    assert await rounds_until(app, backend, service, Applied(50)) == Applied(50)
    after = await app.store.get(release.id)
    assert after is not None and after.applied_weight == 50


async def paused_when_the_engine_stops(
    app: App, recorder: Recorder, service: str, stop: Callable[[], Awaitable[None]]
) -> Release:
    """Deploy ``service``, ``stop`` its engine, run controller rounds until the release pauses
    (it must, with a PAUSED event); the paused release."""
    alice = Actor(user="alice", surface="slack")
    started = await app.service.deploy(alice, service, "v2", DeployOptions(stable="v1"))
    assert await app.backends[service].current(service) == Applied(10)
    await stop()
    current = started.release
    for _ in range(40):
        await app.controller.run_once()
        current = await app.store.get(started.release.id) or current
        if current.state is State.PAUSED:
            break
        await asyncio.sleep(0.05)
    assert current.state is State.PAUSED, current.describe_state()
    await app.events.drain()
    assert EventKind.PAUSED in recorder.kinds(service)
    return current
