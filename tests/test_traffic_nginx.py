"""The nginx traffic backend against a real NGINX: the include written, tested and reloaded at
each step, the split within a few points, nobody moving back, 0% and 100% as one line, the
workers read back through the marker, a bad include refused with the old one put back, and
NGINX down."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.errors import TrafficError
from bot.traffic.base import Applied, TrafficAction, TrafficChange
from bot.traffic.nginx import NginxBackend
from tests.support.nginx import Nginx, nginx_running

USERS = 2000
TOLERANCE = 3.0


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


def change(weight: int, action: TrafficAction = TrafficAction.SHIFT) -> TrafficChange:
    return TrafficChange("r-1", "checkout", "v2", "v1", weight, action)


async def canary_users(proxy: Nginx) -> set[str]:
    sem = asyncio.Semaphore(50)
    async with aiohttp.ClientSession() as session:

        async def ask(user: str) -> str:
            async with sem, session.get(proxy.url, headers={"X-User-Id": user}) as resp:
                return (await resp.text()).strip()

        names = [f"user-{n}" for n in range(USERS)]
        answers = await asyncio.gather(*(ask(u) for u in names))
    return {u for u, a in zip(names, answers, strict=True) if a == "canary"}


async def test_each_step_is_tested_reloaded_and_shown_and_nobody_moves_back(
    nginx: Nginx,
) -> None:
    backend = backend_for(nginx)
    assert await backend.current("checkout") == Applied(0)
    before: set[str] = set()
    for weight, action in [(1, TrafficAction.START), (10, TrafficAction.SHIFT),
                           (50, TrafficAction.SHIFT), (100, TrafficAction.PROMOTE)]:  # fmt: skip
        await backend.apply(change(weight, action))
        assert await backend.current("checkout") == Applied(weight)
        canary = await canary_users(nginx)
        share = 100 * len(canary) / USERS
        assert abs(share - weight) <= TOLERANCE, f"{share:.1f}% on the canary at {weight}%"
        assert before <= canary, "a user moved back to stable between steps"
        before = canary
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
    backend = backend_for(nginx)
    nginx.stop()

    with pytest.raises(TrafficError, match="cannot read NGINX's marker"):
        await backend.current("checkout")
    with pytest.raises(TrafficError, match="did not reload"):
        await backend.apply(change(10))
