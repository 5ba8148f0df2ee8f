"""The rule kinds on a real Prometheus scraping the real sample service, with traffic routed by
the real canary flag, and a fault of each rule's shape injected into the canary:

- ``for``: a burst of errors shorter than ``for`` holds the step and does not roll back; errors
  that go on past it roll back.
- ``vs_previous_step``: a canary clean at 10% that errs at 50% is caught against its own value
  at the end of 10%, with every absolute limit far away.
- ``trend``: a canary whose latency climbs second by second is caught by its slope over the
  step, while the flat seconds before the climb passed.

One Prometheus (1 s scrapes) for the module, one stable/canary pair per test (tests never read
each other's series); the app is built as ``serve`` builds it, its controller running.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bot.app import App
from bot.release.rollout import Actor, Release, State
from tests.support.prometheus import wait_for_data
from tests.support.prometheus_rigs import (
    controlled_app,
    deploy_rig,
    routed_rigs,
    scraping_rigs,
    wait_release,
)
from tests.support.recorder import Recorder
from tests.support.routed import ERROR_RATE_QUERY, RoutedService

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

SHORT = "rules-for-short"
LONG = "rules-for-long"
STEP_OVER = "rules-vs-previous"
TREND = "rules-trend"
SERVICES = (SHORT, LONG, STEP_OVER, TREND)

# Judged every second on 3 s of data: a 2 s burst of errors is seen as a breach of at most
# ~6 s (its length, the window and a scrape), well under `for: 12s`.
FOR = 12.0
ERRORS_FOR: dict[str, Any] = {
    "name": "error_rate",
    "query": ERROR_RATE_QUERY,
    "unit": "ratio",
    "max": 0.05,
    "min_requests": 10,
    "failure_limit": 1,
    "for": f"{FOR:g}s",
}
# Absolute limits nobody reaches here: only the comparison with 10% can fail.
ERRORS_VS_PREVIOUS: dict[str, Any] = {
    "name": "error_rate",
    "query": ERROR_RATE_QUERY,
    "unit": "ratio",
    "max": 0.9,
    "min_requests": 10,
    "failure_limit": 2,
    "vs_previous_step": {"max_increase": 0.03},
}
LATENCY_MEAN_QUERY = (
    'sum(rate(http_request_duration_seconds_sum{service="{service}",version="{version}"}'
    '[{window}])) / sum(rate(http_request_duration_seconds_count{service="{service}",'
    'version="{version}"}[{window}]))'
)
# Climbing 20 ms a second is 72 s an hour; a flat canary's slope stays near 0.
LATENCY_TREND: dict[str, Any] = {
    "name": "latency_mean",
    "query": LATENCY_MEAN_QUERY,
    "unit": "s",
    "min_requests": 10,
    "failure_limit": 2,
    "trend": {"max_slope_per_hour": 5, "confidence": 0.95, "min_points": 5},
}
RAMP_PER_SECOND = 0.02

POLICY: dict[str, Any] = {
    "defaults": {
        "steps": [25, 100],
        "hold": "60s",
        "interval": "1s",
        "window": "3s",
        "bake": "60s",
    },
    "services": {
        SHORT: {"metrics": [ERRORS_FOR]},
        LONG: {"metrics": [ERRORS_FOR]},
        STEP_OVER: {
            "steps": [{"weight": 10, "hold": "6s"}, 50, 100],
            "metrics": [ERRORS_VS_PREVIOUS],
        },
        TREND: {"metrics": [LATENCY_TREND]},
    },
}

DEPLOYER = Actor(user="alice", surface="console")


@pytest.fixture(scope="module")
def rigs() -> Iterator[dict[str, RoutedService]]:
    with routed_rigs(SERVICES) as built:
        yield built


@pytest.fixture(scope="module")
def prometheus_url(
    rigs: dict[str, RoutedService], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    with scraping_rigs(rigs, Path(tmp_path_factory.mktemp("prometheus"))) as url:
        yield url


@pytest.fixture
async def app(redis_url: str, prometheus_url: str) -> AsyncIterator[App]:
    async with controlled_app(
        redis_url,
        prometheus_url,
        POLICY,
        "rules-e2e",
        notifiers=[Recorder()],
        controller_name="rules-controller",
    ) as built:
        yield built


async def started(app: App, rig: RoutedService, redis_url: str, prometheus_url: str) -> Release:
    """Routed load on, the control's traffic in Prometheus, then the deploy."""
    rig.start(redis_url, per_second=120, workers=12, max_seconds=80, max_requests=12_000)
    query = f'sum(increase(http_requests_total{{service="{rig.service}",version="v1"}}[3s]))'
    await asyncio.to_thread(wait_for_data, prometheus_url, query, at_least=20, timeout=20)
    return await deploy_rig(app, DEPLOYER, rig)


async def decision_reasons(app: App, release_id: str) -> list[str]:
    entries = await app.store.audit_tail(10_000)
    return [
        e.reason for e in entries if e.release_id == release_id and e.action.startswith("decision:")
    ]


def judged_at(weight: int) -> Callable[[Release], bool]:
    """At ``weight`` with every metric judged (the canary served min_requests)."""
    return lambda r: (
        r.applied_weight == weight
        and bool(r.last_checks)
        and all(c.outcome == "pass" for c in r.last_checks)
        and r.evaluations >= 2
    )


async def test_a_breach_shorter_than_for_does_not_roll_back(
    app: App, rigs: dict[str, RoutedService], redis_url: str, prometheus_url: str
) -> None:
    rig = rigs[SHORT]
    try:
        release = await started(app, rig, redis_url, prometheus_url)
        await wait_release(app, release.id, judged_at(25), 20, "25% judged")
        rig.canary.configure(error_rate=0.5)
        await asyncio.sleep(2.0)
        rig.canary.configure(error_rate=0.0)
        # Long enough for the burst to leave the window and `for` to pass twice over.
        await asyncio.sleep(FOR + 4)
        after = await app.store.get(release.id)
    finally:
        rig.stop()
    assert after is not None
    assert after.state is State.PROGRESSING and after.weight == 25, after.describe_state()
    reasons = await decision_reasons(app, release.id)
    held = [r for r in reasons if "it must last before it rolls back" in r]
    assert held, reasons  # the breach was seen, and held, not ignored
    assert after.counters["error_rate"].failing_since is None  # it passed again since


async def test_a_breach_longer_than_for_rolls_back(
    app: App, rigs: dict[str, RoutedService], redis_url: str, prometheus_url: str
) -> None:
    rig = rigs[LONG]
    try:
        release = await started(app, rig, redis_url, prometheus_url)
        await wait_release(app, release.id, judged_at(25), 20, "25% judged")
        onset = time.monotonic()
        rig.canary.configure(error_rate=0.5)
        done = await wait_release(
            app, release.id, lambda r: r.state is State.ROLLED_BACK, FOR + 20, "the rollback"
        )
        took = time.monotonic() - onset
    finally:
        rig.stop()
    assert "error_rate" in done.reason and "> max 0.05" in done.reason, done.reason
    # Not before the breach had lasted `for` (it starts being seen a scrape after the onset).
    assert took >= FOR, took
    reasons = await decision_reasons(app, release.id)
    assert any("it must last before it rolls back" in r for r in reasons), reasons


async def test_a_step_over_step_regression_is_caught(
    app: App, rigs: dict[str, RoutedService], redis_url: str, prometheus_url: str
) -> None:
    rig = rigs[STEP_OVER]
    try:
        release = await started(app, rig, redis_url, prometheus_url)
        await asyncio.to_thread(rig.wait_for_pct, 50, 30.0)
        rig.canary.configure(error_rate=0.15)
        done = await wait_release(app, release.id, lambda r: not r.is_active, 25, "the rollback")
    finally:
        rig.stop()
    assert done.state is State.ROLLED_BACK, done.describe_state()
    assert done.step == 1
    assert "its value at the end of 10%" in done.reason, done.reason
    # The canary left 10% clean: that is the number it was compared with.
    assert done.step_ends[0]["error_rate"] < 0.03


async def test_a_rising_trend_is_caught(
    app: App, rigs: dict[str, RoutedService], redis_url: str, prometheus_url: str
) -> None:
    rig = rigs[TREND]

    async def ramp() -> None:
        latency = 0.0
        while latency < 0.5:
            latency += RAMP_PER_SECOND / 2
            rig.canary.configure(latency=latency)
            await asyncio.sleep(0.5)

    climbing: asyncio.Task[None] | None = None
    try:
        release = await started(app, rig, redis_url, prometheus_url)
        flat = await wait_release(
            app,
            release.id,
            lambda r: len(r.step_points.get("latency_mean", [])) >= 6,
            30,
            "six flat rounds",
        )
        assert flat.state is State.PROGRESSING
        assert all(c.outcome == "pass" for c in flat.last_checks), flat.last_checks
        climbing = asyncio.create_task(ramp())
        done = await wait_release(app, release.id, lambda r: not r.is_active, 30, "the rollback")
    finally:
        if climbing is not None:
            climbing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await climbing
        rig.stop()
    assert done.state is State.ROLLED_BACK, done.describe_state()
    assert "latency_mean: rising" in done.reason and "past the limit of 5 s/h" in done.reason, (
        done.reason
    )
