"""The nginx traffic backend against a real NGINX: the include written, tested and reloaded at
each step, the split within a few points, nobody moving back, 0% and 100% as one line, the
workers read back through the marker, a bad include refused with the old one put back, and
NGINX down; in the whole bot, a hand edit found and repaired, a step decided but never applied
finished by the next round, and NGINX down named at start and pausing a release."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from bot.app import App
from bot.engine.events import EventKind
from bot.errors import TrafficError
from bot.release.request import DeployOptions
from bot.release.rollout import Actor
from bot.traffic.base import Applied, TrafficAction
from bot.traffic.nginx import NginxBackend
from tests.support.engines import (
    USER_IDS,
    a_decided_step_lost_in_a_crash_is_applied,
    app_driving,
    assert_share,
    change,
    down_is_a_traffic_error,
    paused_when_the_engine_stops,
    rounds_until,
    split_at_each_step,
    unreachable_after_stop,
)
from tests.support.engines import canary_users as through_engine
from tests.support.nginx import EMPTY_INCLUDE, Nginx, nginx_running
from tests.support.recorder import Recorder


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[Nginx]:
    with nginx_running(tmp_path) as proxy:
        yield proxy


def included(backend: NginxBackend) -> str:
    """The include as shipwatch left it on disk."""
    return backend.path("checkout").read_text(encoding="utf-8")


def backend_for(proxy: Nginx, **overrides: str) -> NginxBackend:
    options: dict[str, Any] = {
        "test_command": proxy.command("-t", "-q"),
        "reload_command": proxy.command("-s", "reload"),
        "marker_url": proxy.marker_url,
    } | overrides
    return NginxBackend(proxy.include_file, **options)


async def canary_users(proxy: Nginx) -> set[str]:
    return await through_engine(proxy.url, USER_IDS, lambda u: {"X-User-Id": u})


async def test_each_step_is_tested_reloaded_and_shown_and_nobody_moves_back(
    nginx: Nginx,
) -> None:
    backend = backend_for(nginx)
    assert await backend.current("checkout") == Applied(0)
    await split_at_each_step(
        backend,
        [(1, TrafficAction.START), (10, TrafficAction.SHIFT),
         (50, TrafficAction.SHIFT), (100, TrafficAction.PROMOTE)],
        lambda: canary_users(nginx),
    )  # fmt: skip
    assert "* canary;" in included(backend)  # 100% is one line

    await backend.apply(change(100, TrafficAction.ROLLBACK))
    await asyncio.sleep(0.3)  # a rollback does not wait for the marker; the workers follow
    assert await backend.current("checkout") == Applied(0)
    assert await canary_users(nginx) == set()


async def test_an_include_nginx_refuses_is_not_left_in_place(nginx: Nginx) -> None:
    backend = backend_for(nginx, split_key="${undefined_variable_here")
    before = included(backend)

    with pytest.raises(TrafficError, match="NGINX refused the include"):
        await backend.apply(change(10))

    assert included(backend) == before
    assert await backend.current("checkout") == Applied(0)


async def test_nginx_down_is_a_clear_traffic_error(nginx: Nginx) -> None:
    await down_is_a_traffic_error(
        backend_for(nginx),
        nginx.stop,
        reading="cannot read NGINX's marker",
        applying="did not reload",
    )


# --- in the whole bot: a hand edit found and repaired, NGINX down -----------------------------


@pytest.fixture
async def app(
    nginx: Nginx, redis_url: str, redis_client: aioredis.Redis
) -> AsyncIterator[tuple[App, Recorder]]:
    traffic = {
        "backend": "nginx",
        "include_file": nginx.include_file,
        "marker_url": nginx.marker_url,
        "test_command": nginx.command("-t", "-q"),
        "reload_command": nginx.command("-s", "reload"),
    }
    async with app_driving(redis_url, "checkout", traffic) as built:
        yield built


def hand_edited_to_zero(proxy: Nginx) -> None:
    """Someone puts the include back to 0% and reloads NGINX behind shipwatch's back."""
    (proxy.tmp / "split-checkout.conf").write_text(EMPTY_INCLUDE, encoding="utf-8")
    subprocess.run([*proxy.base, "-s", "reload"], check=True, capture_output=True)


async def test_a_hand_edit_of_the_include_is_found_and_repaired(
    app: tuple[App, Recorder], nginx: Nginx
) -> None:
    core, recorder = app
    alice = Actor(user="alice", surface="slack")
    started = await core.service.deploy(alice, "checkout", "v2", DeployOptions(stable="v1"))
    backend = core.backends["checkout"]
    assert await backend.current("checkout") == Applied(10)

    await asyncio.to_thread(hand_edited_to_zero, nginx)
    # The workers of before the reload answer for a moment longer: wait until they are gone.
    in_a_row = 0
    for _ in range(200):
        in_a_row = in_a_row + 1 if await backend.current("checkout") == Applied(0) else 0
        if in_a_row >= 10:
            break
        await asyncio.sleep(0.02)
    assert in_a_row >= 10, "the hand edit never took"

    assert await rounds_until(core, backend, "checkout", Applied(10)) == Applied(10)
    await core.events.drain()
    [repaired] = [e for e in recorder.events if e.kind is EventKind.TRAFFIC_REPAIRED]
    assert (repaired.release.id, repaired.detail) == (started.release.id, "0")


async def test_an_engine_that_cannot_be_reached_is_named_at_start(
    app: tuple[App, Recorder], nginx: Nginx
) -> None:
    said = await unreachable_after_stop(app[0], "checkout", nginx.stop)
    marker = nginx.marker_url.replace("{service}", "checkout")
    assert said.startswith(f"cannot read NGINX's marker {marker} (")


async def test_a_step_decided_but_not_applied_before_a_crash_is_applied_by_the_next_round(
    app: tuple[App, Recorder], nginx: Nginx
) -> None:
    await a_decided_step_lost_in_a_crash_is_applied(app[0], "checkout")
    assert "50% canary;" in (nginx.tmp / "split-checkout.conf").read_text(encoding="utf-8")
    assert_share(await canary_users(nginx), 50)


async def test_nginx_down_mid_release_pauses_it_with_the_reason(
    app: tuple[App, Recorder], nginx: Nginx
) -> None:
    async def stop() -> None:
        nginx.stop()

    paused = await paused_when_the_engine_stops(*app, "checkout", stop)
    marker = nginx.marker_url.replace("{service}", "checkout")
    assert paused.reason.startswith(
        f"cannot read back the traffic engine: cannot read NGINX's marker {marker} ("
    ), paused.reason
