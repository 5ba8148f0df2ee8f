"""The setup the real-Prometheus tests share: instances to scrape, the Prometheus scraping them,
and the app as ``serve`` builds it on that Prometheus with its controller running.

Each test module keeps its own (module-scoped) fixtures, because their services, policies and
load differ; the fixtures are thin wrappers over the context managers here, so the way a rig
is built, scraped and torn down is written once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
import yaml

from bot.app import App, build_app
from bot.config import Settings
from bot.demo.service import Behaviour
from bot.engine.events import Notifier
from bot.release.policy import parse_policy
from bot.release.request import DeployOptions
from bot.release.rollout import Actor, Release
from tests.support.prometheus import prometheus_server, wait_for_data
from tests.support.routed import RoutedService, close_all
from tests.support.sample_service import generate_load, sample_service


@contextmanager
def routed_rigs(services: Sequence[str]) -> Iterator[dict[str, RoutedService]]:
    """One stable/canary pair per service (serving, idle), by service name."""
    built: list[RoutedService] = []
    try:
        # Appended one by one: the pairs already built are closed if a later one fails.
        for name in services:
            built.append(RoutedService(name))
        yield {rig.service: rig for rig in built}
    finally:
        close_all(built)


@contextmanager
def scraping_rigs(rigs: dict[str, RoutedService], tmp: Path) -> Iterator[str]:
    """A real Prometheus scraping every instance of every pair once a second; yields its URL."""
    targets = [t for rig in rigs.values() for t in rig.targets]
    with prometheus_server(tmp, targets) as url:
        # Every instance is scraped (its series exist, at zero) before any test sends load.
        wait_for_data(url, 'count(up{job="sample"} == 1)', at_least=len(targets), timeout=20)
        yield url


@contextmanager
def scraped_pair(
    tmp: Path,
    service: str,
    stable: Behaviour,
    canary: Behaviour,
    *,
    per_second: float,
    max_seconds: float,
    max_requests: int = 20_000,
) -> Iterator[str]:
    """A stable (v1) and a canary (v2) sample instance of ``service`` under a bounded load,
    and a Prometheus scraping both; yields its URL (the caller waits for the data it needs)."""
    with (
        sample_service(
            service, "v1", error_rate=stable.error_rate, latency=stable.latency
        ) as stable_app,
        sample_service(
            service, "v2", error_rate=canary.error_rate, latency=canary.latency
        ) as canary_app,
        generate_load(
            [stable_app.url, canary_app.url],
            per_second=per_second,
            max_seconds=max_seconds,
            max_requests=max_requests,
        ),
        prometheus_server(tmp, [stable_app.target, canary_app.target]) as url,
    ):
        yield url


@asynccontextmanager
async def controlled_app(
    redis_url: str,
    prometheus_url: str,
    policy: dict[str, Any],
    source: str,
    *,
    notifiers: Sequence[Notifier],
    controller_name: str,
) -> AsyncIterator[App]:
    """The app as ``serve`` builds it on a flushed Redis and the given Prometheus, its events
    delivered and its controller running (ticking every 0.2 s) until the block ends."""
    flush = aioredis.Redis.from_url(redis_url)
    await flush.flushdb()
    await flush.aclose()
    settings = Settings.model_validate(
        {
            "REDIS_URL": redis_url,
            "PROMETHEUS_URL": prometheus_url,
            "SHIPWATCH_CONTROLLER_TICK": 0.2,
            "SHIPWATCH_PROMETHEUS_TIMEOUT": 3.0,
        }
    )
    app = await build_app(
        settings, policy=parse_policy(yaml.safe_dump(policy), source), notifiers=notifiers
    )
    app.events.start()
    stop = asyncio.Event()
    controller = asyncio.create_task(app.controller.run(stop), name=controller_name)
    try:
        yield app
    finally:
        stop.set()
        await asyncio.wait_for(controller, timeout=10)
        await app.close()


async def deploy_rig(app: App, actor: Actor, rig: RoutedService) -> Release:
    """Deploy the pair's canary version against its stable one."""
    result = await app.service.deploy(
        actor, rig.service, rig.canary_version, DeployOptions(stable=rig.stable_version)
    )
    return result.release


async def wait_release(
    app: App,
    release_id: str,
    until: Callable[[Release], bool],
    timeout: float,
    what: str = "",
) -> Release:
    """The release once ``until`` holds; fails with its state and last checks after
    ``timeout`` seconds (the controller moves it; this only watches the store)."""
    deadline = time.monotonic() + timeout
    while True:
        release = await app.store.get(release_id)
        assert release is not None
        if until(release):
            return release
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"{what or 'condition'} not reached in {timeout}s: {release.describe_state()}"
                f"; last checks: {release.last_checks}"
            )
        await asyncio.sleep(0.1)
