"""First-step sizing on a real Prometheus scraping real sample services under routed load.

Two services, each a stable/canary pair of ``SampleService`` instances with a load generator
that follows the canary flag: "quiet" gets ~30 requests/s, "busy" ~150. Prometheus scrapes them
every second. With ``window: 10s`` and ``min_requests: 10`` the guard needs 10 canary requests
in 10 s, i.e. 1 request/s on the canary: busy gives ~1.5 at 1%, quiet gives ~0.3 at 1%, ~0.6 at
2% and ~1.5 at 5%. So under ``first_step: auto`` the observed traffic alone decides: busy starts
at 1%, quiet at 5%. A third service has no series at all: "could not size", and it starts as
planned.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
import yaml

from bot.app import App, build_app
from bot.config import Settings
from bot.judging.sizing import SizingOutcome, Unsized
from bot.release.policy import parse_policy
from bot.release.request import DeployOptions
from bot.release.rollout import Actor
from tests.support.prometheus import wait_for_data
from tests.support.prometheus_rigs import routed_rigs, scraping_rigs
from tests.support.routed import ERROR_RATE_QUERY, RoutedService

pytestmark = pytest.mark.e2e

QUIET, BUSY, GHOST = "sizing-quiet", "sizing-busy", "sizing-ghost"
RATES = {QUIET: 30.0, BUSY: 150.0}
WINDOW = "10s"
DEPLOYER = Actor(user="alice", surface="console")

POLICY: dict[str, Any] = {
    "defaults": {
        "steps": [1, 10, 25, 50, 100],
        "hold": "1m",
        "interval": "2s",
        "window": WINDOW,
        "first_step": "auto",
        "metrics": [
            {
                "name": "error_rate",
                "query": ERROR_RATE_QUERY,
                "unit": "ratio",
                "max": 0.05,
                "max_diff": 0.02,
                "min_requests": 10,
            }
        ],
    },
    "services": {QUIET: {}, BUSY: {}, GHOST: {"first_step": "warn"}},
}


def stable_requests(service: str) -> str:
    return f'sum(increase(http_requests_total{{service="{service}",version="v1"}}[{WINDOW}]))'


@pytest.fixture(scope="module")
def rigs() -> Iterator[dict[str, RoutedService]]:
    with routed_rigs(list(RATES)) as built:
        yield built


@pytest.fixture(scope="module")
def prometheus_url(
    rigs: dict[str, RoutedService], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    with scraping_rigs(rigs, Path(tmp_path_factory.mktemp("prometheus"))) as url:
        yield url


@pytest.fixture
async def app(
    redis_url: str, prometheus_url: str, redis_client: aioredis.Redis
) -> AsyncIterator[App]:
    settings = Settings.model_validate(
        {
            "REDIS_URL": redis_url,
            "PROMETHEUS_URL": prometheus_url,
            "SHIPWATCH_PROMETHEUS_TIMEOUT": 3.0,
        }
    )
    policy = parse_policy(yaml.safe_dump(POLICY), "sizing e2e")
    built = await build_app(settings, policy=policy)
    built.events.start()
    try:
        yield built
    finally:
        await built.close()


async def test_the_observed_rate_chooses_the_first_step(
    app: App, rigs: dict[str, RoutedService], redis_url: str, prometheus_url: str
) -> None:
    for name, rate in RATES.items():
        rigs[name].start(redis_url, per_second=rate, workers=6, max_seconds=90)
    try:
        # A full window of load on each stable version, before anything is deployed.
        for name, rate in RATES.items():
            await asyncio.to_thread(
                wait_for_data, prometheus_url, stable_requests(name), at_least=rate * 10 * 0.8,
                timeout=30,
            )  # fmt: skip
        busy = await app.service.deploy(DEPLOYER, BUSY, "v2", DeployOptions(stable="v1"))
        quiet = await app.service.deploy(DEPLOYER, QUIET, "v2", DeployOptions(stable="v1"))
    finally:
        for rig in rigs.values():
            rig.stop()

    assert busy.sizing is not None and busy.sizing.rate is not None
    assert busy.sizing.rate > 100  # ~150 requests/s read back from Prometheus
    assert busy.sizing.outcome is SizingOutcome.ENOUGH
    assert busy.release.weights == [1, 10, 25, 50, 100]

    assert quiet.sizing is not None and quiet.sizing.rate is not None
    assert 20 < quiet.sizing.rate < 40  # ~30 requests/s
    assert quiet.sizing.outcome is SizingOutcome.RAISED
    assert quiet.release.weights == [5, 10, 25, 50, 100]
    assert quiet.release.weight == 5
    assert quiet.sizing.shortfall is not None
    assert quiet.sizing.shortfall.expected < 10  # what 1% would have seen in a window
    assert 'version="v1"' in quiet.sizing.query and "[10s]" in quiet.sizing.query


async def test_a_service_without_series_cannot_be_sized_and_starts_as_planned(app: App) -> None:
    result = await app.service.deploy(DEPLOYER, GHOST, "v2", DeployOptions(stable="v1"))

    assert result.sizing is not None
    assert (result.sizing.outcome, result.sizing.unsized) == (
        SizingOutcome.UNSIZED, Unsized.NO_DATA)  # fmt: skip
    assert result.release.weights == [1, 10, 25, 50, 100]
