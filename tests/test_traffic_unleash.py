"""The unleash traffic backend against a real Unleash (and PostgreSQL): the flag and shipwatch's
strategy created on the first step, each step read back, the same users in the canary for
Unleash's Python SDK, its Node SDK and bot.flags, rollback to 0, a rollback whose rollout Unleash
refuses turning the flag off, Unleash down; in the whole bot, a change made in Unleash found and
set back, a step decided but never applied finished by the next round, and Unleash down pausing
a release."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import ExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from bot.app import App
from bot.engine.events import EventKind
from bot.errors import TrafficError
from bot.flags import normalized_number
from bot.release.request import DeployOptions
from bot.release.rollout import Actor
from bot.traffic.base import Applied, TrafficAction, TrafficChange
from bot.traffic.unleash import UnleashBackend
from tests.support.engines import (
    a_decided_step_lost_in_a_crash_is_applied,
    app_driving,
    paused_when_the_engine_stops,
    rounds_until,
)
from tests.support.procs import free_port, require_binary
from tests.support.recorder import Recorder
from tests.support.unleash import ADMIN_TOKEN, CLIENT_TOKEN, ENGINES, Unleash, unleash_running

pytestmark = pytest.mark.timeout(180)

USERS = [f"user-{n}" for n in range(2000)]


@pytest.fixture(scope="module")
def unleash(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Unleash]:
    with unleash_running(tmp_path_factory.mktemp("unleash")) as server:
        yield server


@pytest.fixture
async def backend(unleash: Unleash) -> AsyncIterator[UnleashBackend]:
    made = UnleashBackend(unleash.url, ADMIN_TOKEN)
    yield made
    await made.close()


def change(service: str, weight: int, action: TrafficAction = TrafficAction.SHIFT) -> TrafficChange:
    return TrafficChange("r-1", service, "v2", "v1", weight, action)


def python_sdk_users(server: Unleash, flag: str) -> set[str]:
    client = server.python_sdk()
    try:
        return {u for u in USERS if client.is_enabled(flag, {"userId": u})}
    finally:
        client.destroy()


def node_sdk_users(server: Unleash, flag: str) -> set[str]:
    done = subprocess.run(
        [require_binary("node"), str(ENGINES / "enabled_users.js"), server.client_api,
         CLIENT_TOKEN, flag, str(len(USERS))],
        cwd=ENGINES, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


async def sdk_sees(read: Callable[[], set[str]], want: set[str], timeout: float = 15.0) -> set[str]:
    """What an SDK reads once Unleash serves the change to clients (its client API caches
    for a moment): the first read equal to ``want``, or the last one after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        seen = await asyncio.to_thread(read)
        if seen == want or time.monotonic() > deadline:
            return seen
        await asyncio.sleep(0.5)


def flags_users(service: str, pct: int) -> set[str]:
    return {u for u in USERS if normalized_number(u, service) <= pct}


async def test_each_step_is_read_back_and_every_sdk_puts_the_same_users_in_the_canary(
    unleash: Unleash, backend: UnleashBackend
) -> None:
    service = "checkout"
    flag = backend.flag_of(service)
    assert await backend.current(service) == Applied(None)  # no flag yet
    before: set[str] = set()
    for weight, action in [(10, TrafficAction.START), (25, TrafficAction.SHIFT)]:
        await backend.apply(change(service, weight, action))
        assert await backend.current(service) == Applied(weight)
        wanted = flags_users(service, weight)
        python = await sdk_sees(lambda: python_sdk_users(unleash, flag), wanted)
        assert python == wanted
        assert abs(100 * len(python) / len(USERS) - weight) <= 3
        assert before <= python
        before = python
    node = await sdk_sees(lambda: node_sdk_users(unleash, flag), before)
    assert node == before  # Node's SDK agrees, user for user

    await backend.apply(change(service, 25, TrafficAction.ROLLBACK))
    assert await backend.current(service) == Applied(0)
    assert await sdk_sees(lambda: python_sdk_users(unleash, flag), set()) == set()


async def test_an_existing_flag_can_be_driven_and_the_strategy_is_found_again(
    unleash: Unleash, backend: UnleashBackend
) -> None:
    named = UnleashBackend(unleash.url, ADMIN_TOKEN, flag="search-new-ranking")
    try:
        await named.apply(change("search", 10, TrafficAction.START))
        await named.apply(change("search", 50))
        assert await named.current("search") == Applied(50)
        assert await backend.current("search") == Applied(None)  # shipwatch.search untouched
    finally:
        await named.close()


async def test_unleash_down_and_a_wrong_token_are_clear_traffic_errors(unleash: Unleash) -> None:
    down = UnleashBackend(f"http://127.0.0.1:{free_port()}", ADMIN_TOKEN, timeout=1)
    wrong = UnleashBackend(unleash.url, "*:*.not-a-token")
    try:
        with pytest.raises(TrafficError, match="cannot reach Unleash"):
            await down.current("checkout")
        with pytest.raises(TrafficError, match="HTTP 401"):
            await wrong.apply(change("ledger", 10, TrafficAction.START))
    finally:
        await down.close()
        await wrong.close()


async def admin(server: Unleash, method: str, path: str, body: object = None) -> Any:
    """A call to Unleash's Admin API as a person in its UI would make it."""
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            method, server.url + path, json=body, headers={"Authorization": ADMIN_TOKEN}
        ) as resp,
    ):
        text = await resp.text()
        assert 200 <= resp.status < 300, f"{method} {path}: HTTP {resp.status} {text[:300]}"
        return json.loads(text) if text.strip() else None


async def test_a_rollback_whose_rollout_unleash_refuses_turns_the_flag_off(
    unleash: Unleash, backend: UnleashBackend
) -> None:
    service = "payments"
    await backend.apply(change(service, 10, TrafficAction.START))
    feature = f"/api/admin/projects/default/features/{backend.flag_of(service)}"
    strategies = f"{feature}/environments/development/strategies"
    # Someone narrows shipwatch's strategy to a region in Unleash's UI, then drops that region
    # from the context field's legal values: Unleash now refuses every write to the strategy.
    context = {"name": "payments-region", "legalValues": [{"value": "eu"}, {"value": "us"}]}
    await admin(unleash, "POST", "/api/admin/context", context)
    [owned] = await admin(unleash, "GET", strategies)
    region = {"contextName": "payments-region", "operator": "IN", "values": ["eu"]}
    patch = [{"op": "add", "path": "/constraints/-", "value": region}]
    await admin(unleash, "PATCH", f"{strategies}/{owned['id']}", patch)
    await admin(unleash, "DELETE", "/api/admin/context/payments-region/legal-values/eu")
    with pytest.raises(TrafficError, match=r"HTTP 400.*not specified as a legal value"):
        await backend.apply(change(service, 50))  # a step is refused, and says so
    assert await backend.current(service) == Applied(10)

    await backend.apply(change(service, 10, TrafficAction.ROLLBACK))  # does not raise

    assert await backend.current(service) == Applied(0)
    read = await admin(unleash, "GET", feature)
    [development] = [e for e in read["environments"] if e["name"] == "development"]
    assert development["enabled"] is False  # every SDK serves stable
    [still] = development["strategies"]
    assert (still["title"], still["parameters"]["rollout"]) == ("shipwatch", "10")  # refused


def test_a_missing_admin_token_is_refused_at_start(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="admin API token"):
        UnleashBackend("http://unleash.internal", "")


# --- in the whole bot: a change made in Unleash's UI found and repaired, Unleash down -------


@asynccontextmanager
async def bot_on(
    server: Unleash, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[App, Recorder]]:
    monkeypatch.setenv("UNLEASH_ADMIN_TOKEN", ADMIN_TOKEN)
    traffic = {"backend": "unleash", "unleash_url": server.url}
    async with app_driving(redis_url, "ledger", traffic) as built:
        # The server outlives each test (Redis does not): every test starts with no canary.
        await built[0].backends["ledger"].apply(change("ledger", 0, TrafficAction.ROLLBACK))
        yield built


@pytest.fixture
async def app(
    unleash: Unleash, redis_url: str, redis_client: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[App, Recorder]]:
    async with bot_on(unleash, redis_url, monkeypatch) as built:
        yield built


async def test_a_rollout_changed_in_unleash_is_found_and_set_back(
    app: tuple[App, Recorder], unleash: Unleash
) -> None:
    core, recorder = app
    alice = Actor(user="alice", surface="slack")
    started = await core.service.deploy(alice, "ledger", "v2", DeployOptions(stable="v1"))
    backend = core.backends["ledger"]
    assert await backend.current("ledger") == Applied(10)

    # Someone moves the rollout to 80% in Unleash's UI.
    meddler = UnleashBackend(unleash.url, ADMIN_TOKEN)
    try:
        await meddler.apply(change("ledger", 80))
    finally:
        await meddler.close()
    assert await backend.current("ledger") == Applied(80)

    assert await rounds_until(core, backend, "ledger", Applied(10)) == Applied(10)
    await core.events.drain()
    [repaired] = [e for e in recorder.events if e.kind is EventKind.TRAFFIC_REPAIRED]
    assert (repaired.release.id, repaired.detail) == (started.release.id, "80")


async def test_a_step_decided_but_not_applied_before_a_crash_is_applied_by_the_next_round(
    app: tuple[App, Recorder],
) -> None:
    await a_decided_step_lost_in_a_crash_is_applied(app[0], "ledger")


@pytest.fixture
def unleash_to_stop(tmp_path: Path) -> Iterator[tuple[Unleash, Callable[[], None]]]:
    """An Unleash (and PostgreSQL) of this test's own, and what stops it: the module's server
    must stay up for the other tests."""
    with ExitStack() as stack:
        server = stack.enter_context(unleash_running(tmp_path))
        yield server, stack.close


@pytest.mark.unleash  # its server is not the `unleash` fixture the conftest marks by
async def test_unleash_down_mid_release_pauses_it_with_the_reason(
    unleash_to_stop: tuple[Unleash, Callable[[], None]],
    redis_url: str,
    redis_client: aioredis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server, stop = unleash_to_stop
    async with bot_on(server, redis_url, monkeypatch) as (core, recorder):

        async def stopped() -> None:
            await asyncio.to_thread(stop)  # Unleash first, then its PostgreSQL

        paused = await paused_when_the_engine_stops(core, recorder, "ledger", stopped)
        assert paused.reason.startswith(
            f"cannot read back the traffic engine: cannot reach Unleash at {server.url} ("
        ), paused.reason
