"""End to end: real redis-server, real Prometheus, real instances, traffic routed by the flag.

One Prometheus (1 s scrapes) is started for the module and scrapes one stable/canary pair of
instances per test, each pair a service of its own, so no test ever reads another's series.
Every test builds the app the way ``serve`` does (``build_app`` on Settings) with the
PrometheusSource, runs the controller as a task, and drives a release with
``DeployOptions(stable="v1")`` while a load generator routes synthetic users with a
``FlagClient``: what the controller does to the flag is what the instances are asked.

Timing (see POLICY): 2 s analysis interval over a 10 s window. A 20% error fault pushes the
canary's ratio over the control's by more than 0.02 within 1–2 s of scraped data, and two
consecutive failed checks roll back (2 s apart); a +300 ms fault takes the canary's p99 far
over the control's +0.15 s at the first scrape, and the latency metric is critical, so one
failed check rolls back. Both are expected within ~2–7 s of the onset; the tests allow 30 s.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bot.app import App
from bot.engine.events import EventKind
from bot.release.checks import CheckResult
from bot.release.rollout import Actor, Release, State
from tests.support.prometheus import instant_query, wait_for_data
from tests.support.prometheus_rigs import (
    controlled_app,
    deploy_rig,
    routed_rigs,
    scraping_rigs,
    wait_release,
)
from tests.support.recorder import Recorder
from tests.support.routed import (
    ERROR_RATE_RULE,
    LATENCY_P99_RULE,
    FaultKind,
    LoadStats,
    RoutedService,
)

pytestmark = pytest.mark.e2e

HEALTHY = "e2e-healthy"
ERRORS = "e2e-errors"
LATENCY = "e2e-latency"
DRY_RUN = "e2e-dryrun"
SLOWER = "e2e-slower"
SERVICES = (HEALTHY, ERRORS, LATENCY, DRY_RUN, SLOWER)

WINDOW = "10s"
STEPS = [10, 25, 50, 100]
FAULT_TO_STABLE_BOUND = 30.0  # seconds; the expected value is a few seconds
RELEASE_DEADLINE = 60.0  # a healthy release takes ~15 s here

# The mean latency of each version, as a series for the statistical judge. A canary 10 ms
# slower than a 20 ms control is far inside the threshold rules above (+0.15 s): only the
# Mann-Whitney comparison of the two series, with its effect-size gate, can see it.
LATENCY_MEAN: dict[str, Any] = {
    "name": "latency_mean",
    "query": (
        'sum(rate(http_request_duration_seconds_sum{service="{service}",version="{version}"}'
        '[{window}])) / sum(rate(http_request_duration_seconds_count{service="{service}",'
        'version="{version}"}[{window}]))'
    ),
    "unit": "s",
    "judge": "mann_whitney",
    "window": "4s",
    "lookback": "20s",
    "step": "1s",
    "allowed_increase": 1.2,
    "min_requests": 10,
    "failure_limit": 2,
}
SLOW_BASE = 0.02  # both versions answer in 20 ms ...
SLOW_CANARY = 0.03  # ... until the canary takes 30 ms

POLICY: dict[str, Any] = {
    "defaults": {
        "steps": STEPS,
        "hold": "2s",
        "interval": "2s",
        "window": WINDOW,
        "bake": "3s",
        "metrics": [ERROR_RATE_RULE, LATENCY_P99_RULE],
    },
    "services": {
        HEALTHY: {},
        # Longer holds: the fault goes in at 25% and the release should still be there.
        ERRORS: {"hold": "4s"},
        LATENCY: {"hold": "4s"},
        DRY_RUN: {"metrics": [{"name": "latency_p99", "dry_run": True}]},
        # A long hold at each step: the statistical judge needs its lookback filled.
        # Its p99 limit is loosened: at 10% a single slow request (a busy CI machine) moves a
        # low-volume p99 by 0.2 s; this service is about what only the statistics can see.
        SLOWER: {"hold": "40s", "metrics": [{"name": "latency_p99", "max_diff": 0.5},
                                            LATENCY_MEAN]},
    },
}

DEPLOYER = Actor(user="alice", surface="console")


def requests_in_window(service: str, version: str, window: str = WINDOW) -> str:
    return (
        f'sum(increase(http_requests_total{{service="{service}",version="{version}"}}[{window}]))'
    )


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rigs() -> Iterator[dict[str, RoutedService]]:
    """One stable/canary pair per test, serving (idle) for the whole module."""
    with routed_rigs(SERVICES) as built:
        yield built


@pytest.fixture(scope="module")
def prometheus_url(
    rigs: dict[str, RoutedService], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A real Prometheus scraping every instance of every pair once a second."""
    with scraping_rigs(rigs, Path(tmp_path_factory.mktemp("prometheus"))) as url:
        yield url


@dataclass
class Shipwatch:
    app: App
    recorder: Recorder
    redis_url: str
    prometheus_url: str

    async def get(self, release_id: str) -> Release:
        release = await self.app.store.get(release_id)
        assert release is not None
        return release

    async def wait_release(
        self,
        release_id: str,
        until: Callable[[Release], bool],
        timeout: float = RELEASE_DEADLINE,
        what: str = "",
    ) -> Release:
        return await wait_release(self.app, release_id, until, timeout, what)

    async def deploy(self, rig: RoutedService) -> Release:
        return await deploy_rig(self.app, DEPLOYER, rig)


@pytest.fixture
async def shipwatch(redis_url: str, prometheus_url: str) -> AsyncIterator[Shipwatch]:
    """The app as ``serve`` builds it, on the real Redis and Prometheus, controller running."""
    recorder = Recorder()
    async with controlled_app(
        redis_url,
        prometheus_url,
        POLICY,
        "e2e",
        notifiers=[recorder],
        controller_name="e2e-controller",
    ) as app:
        yield Shipwatch(app, recorder, redis_url, prometheus_url)


async def start_load(rig: RoutedService, sw: Shipwatch) -> None:
    """Routed load on, and the control's traffic visible in Prometheus before any deploy."""
    rig.start(sw.redis_url, per_second=120, workers=12, max_seconds=90, max_requests=12_000)
    await asyncio.to_thread(
        wait_for_data,
        sw.prometheus_url,
        requests_in_window(rig.service, rig.stable_version),
        at_least=50,
        timeout=20,
    )


def report(record_property: Callable[[str, object], None], name: str, seconds: float) -> None:
    """Print the measurement and attach it to the test report (visible in JUnit XML too)."""
    print(f"\n{name}: fault onset -> every user on stable in {seconds:.2f}s")
    record_property("fault_to_stable_seconds", round(seconds, 3))


def assert_stable_only_after(stats: LoadStats, zero_at: float) -> None:
    """Nothing was routed to the canary once the flag client held 0%, and stable kept serving."""
    assert stats.last_canary_at is not None
    assert stats.last_canary_at < zero_at, (stats.last_canary_at, zero_at)
    assert stats.by_pct.get(0, {}).get("v1", 0) > 0


def checks_of(checks: Sequence[CheckResult], metric: str) -> list[CheckResult]:
    return [c for c in checks if c.metric == metric]


# --- tests -----------------------------------------------------------------------------------


async def test_healthy_canary_walks_every_step_with_real_traffic(
    shipwatch: Shipwatch, rigs: dict[str, RoutedService]
) -> None:
    rig = rigs[HEALTHY]
    await start_load(rig, shipwatch)
    try:
        release = await shipwatch.deploy(rig)
        done = await shipwatch.wait_release(
            release.id, lambda r: not r.is_active, what="the end of the release"
        )
        # The rig's own client: the flag it followed, and where its requests went.
        await asyncio.to_thread(rig.wait_for_pct, 100, 5.0)
        stats = rig.stats()
    finally:
        rig.stop()
    await shipwatch.app.events.drain()

    assert done.state is State.SUCCEEDED, done.describe_state()
    kinds = shipwatch.recorder.kinds(HEALTHY)
    assert EventKind.ROLLBACK_STARTED not in kinds
    assert kinds.count(EventKind.STEP_ADVANCED) == len(STEPS) - 2  # 10->25->50, then bake
    # The decisions end with success; the written announcement may follow it.
    decided = [k for k in kinds if k is not EventKind.NOTES_FINAL]
    assert EventKind.BAKING in kinds and decided[-1] is EventKind.SUCCEEDED
    assert all(c.outcome == "pass" for c in done.last_checks), done.last_checks
    assert {c.metric for c in done.last_checks} == {"error_rate", "latency_p99"}

    # The flag client saw every step, in order, and nothing else.
    assert rig.pct_history() == STEPS
    # Real requests followed it: none to v2 before the deploy, all of them at 100%, and a
    # share near the weight in between (1,000 users bucketed by murmur3).
    assert stats.by_pct.get(0, {}).get("v2", 0) == 0
    assert stats.by_pct[100].get("v1", 0) == 0 and stats.by_pct[100]["v2"] > 0
    for pct in STEPS[:-1]:
        sent = stats.by_pct[pct]
        share = sent.get("v2", 0) / sum(sent.values())
        assert abs(share - pct / 100) < 0.12, (pct, sent)
    assert stats.failed == 0 and not stats.server_errors
    # The v2 instance served them, and Prometheus counted them.
    assert rig.canary.requests_served >= stats.sent["v2"] > 100
    counted = instant_query(
        shipwatch.prometheus_url, requests_in_window(HEALTHY, "v2", window="2m")
    )
    assert counted and float(counted[0]["value"][1]) > 50


@pytest.mark.parametrize(
    ("service", "fault", "metric"),
    [
        pytest.param(ERRORS, FaultKind.ERRORS, "error_rate", id="errors-20pct"),
        pytest.param(LATENCY, FaultKind.LATENCY, "latency_p99", id="latency-300ms"),
    ],
)
async def test_faulty_canary_is_rolled_back_mid_release(
    shipwatch: Shipwatch,
    rigs: dict[str, RoutedService],
    record_property: Callable[[str, object], None],
    service: str,
    fault: FaultKind,
    metric: str,
) -> None:
    rig = rigs[service]
    await start_load(rig, shipwatch)
    try:
        release = await shipwatch.deploy(rig)
        # Mid-release: healthy through the first step, the flag at 25% for real users.
        await asyncio.to_thread(rig.wait_for_pct, 25, 40.0)
        onset = rig.inject_fault(fault)
        done = await shipwatch.wait_release(
            release.id,
            lambda r: r.state is State.ROLLED_BACK,
            timeout=FAULT_TO_STABLE_BOUND + 10,
            what="the rollback",
        )
        await asyncio.to_thread(rig.wait_for_pct, 0, 5.0)
        await asyncio.sleep(0.3)  # a request routed just before 0% finishes and is counted
        stats = rig.stats()
    finally:
        rig.stop()
    await shipwatch.app.events.drain()

    zero_at = rig.first_pct_at(0, after=onset)
    assert zero_at is not None, rig.pct_changes()
    seconds = zero_at - onset
    report(record_property, f"{service} ({fault.value})", seconds)
    assert 0 < seconds < FAULT_TO_STABLE_BOUND

    # Rolled back by the controller, once, for the metric the fault breaks.
    audit = await shipwatch.app.store.audit_tail(1000)
    decisions = [e for e in audit if e.action == "decision:rollback"]
    assert [e.actor for e in decisions] == ["shipwatch"], decisions
    assert metric in done.reason, done.reason
    failed = [c for c in done.last_checks if c.outcome == "fail"]
    assert [c.metric for c in failed] == [metric], done.last_checks
    assert failed[0].canary is not None and failed[0].control is not None
    kinds = shipwatch.recorder.kinds(service)
    assert EventKind.ROLLBACK_STARTED in kinds and EventKind.ROLLED_BACK in kinds
    assert EventKind.SUCCEEDED not in kinds

    # The flag went up to 25% (maybe one step more before the verdict), then to 0 for good.
    history = rig.pct_history()
    assert history[:2] == [10, 25] and history[-1] == 0, history
    assert_stable_only_after(stats, zero_at)
    # The fault reached real users before the rollback, and the users saw it.
    if fault is FaultKind.ERRORS:
        assert stats.server_errors.get("v2", 0) > 0
        assert stats.server_errors.get("v1", 0) == 0
        assert float(failed[0].canary) > float(failed[0].control) + 0.02
    else:
        assert float(failed[0].canary) > 0.15


async def test_failing_dry_run_metric_is_reported_but_never_rolls_back(
    shipwatch: Shipwatch, rigs: dict[str, RoutedService]
) -> None:
    rig = rigs[DRY_RUN]
    await start_load(rig, shipwatch)
    try:
        # Slow from its first request: the (critical) latency metric fails on every check,
        # but it is dry-run for this service.
        rig.inject_fault(FaultKind.LATENCY)
        release = await shipwatch.deploy(rig)
        done = await shipwatch.wait_release(
            release.id, lambda r: not r.is_active, what="the end of the release"
        )
        stats = rig.stats()
    finally:
        rig.stop()
    await shipwatch.app.events.drain()

    assert done.state is State.SUCCEEDED, done.describe_state()
    assert rig.pct_history() == STEPS
    assert stats.by_pct[100].get("v2", 0) > 0
    kinds = shipwatch.recorder.kinds(DRY_RUN)
    assert EventKind.ROLLBACK_STARTED not in kinds and EventKind.PAUSED not in kinds
    assert [k for k in kinds if k is not EventKind.NOTES_FINAL][-1] is EventKind.SUCCEEDED

    # Reported: the last checks (judged against the baseline while baking) ...
    (latency,) = checks_of(done.last_checks, "latency_p99")
    assert latency.dry_run is True and latency.outcome == "fail", latency
    assert latency.canary is not None and latency.canary > 0.15
    (errors,) = checks_of(done.last_checks, "error_rate")
    assert errors.outcome == "pass" and errors.dry_run is False
    # ... and the events every step carried.
    reported = [
        c
        for e in shipwatch.recorder.events
        if e.release.service == DRY_RUN
        for c in checks_of(e.checks, "latency_p99")
    ]
    assert reported and all(c.dry_run is True for c in reported)
    assert sum(c.outcome == "fail" for c in reported) >= len(STEPS) - 1
    # Never counted against the release.
    assert "latency_p99" not in done.counters or done.counters["latency_p99"].total_failures == 0


async def test_statistical_judge_rolls_back_a_canary_slower_than_the_control_under_the_slo(
    shipwatch: Shipwatch,
    rigs: dict[str, RoutedService],
    record_property: Callable[[str, object], None],
) -> None:
    rig = rigs[SLOWER]
    rig.stable.configure(latency=SLOW_BASE)
    await start_load(rig, shipwatch)
    try:
        rig.canary.configure(latency=SLOW_BASE)
        release = await shipwatch.deploy(rig)
        await asyncio.to_thread(rig.wait_for_pct, 10, 20.0)
        # Healthy for a while at 10%: the judge compares equal versions and lets them be.
        await asyncio.sleep(8)
        healthy = await shipwatch.get(release.id)
        assert healthy.state is State.PROGRESSING, healthy.describe_state()
        onset = time.monotonic()
        rig.canary.configure(latency=SLOW_CANARY)
        done = await shipwatch.wait_release(
            release.id, lambda r: not r.is_active, timeout=50, what="the rollback"
        )
    finally:
        rig.stop()
        rig.stable.configure(latency=0.0)
    await shipwatch.app.events.drain()

    assert done.state is State.ROLLED_BACK, done.describe_state()
    zero_at = rig.first_pct_at(0, after=onset)
    assert zero_at is not None
    report(record_property, f"{SLOWER} (+10 ms on 20 ms)", zero_at - onset)
    (mean,) = checks_of(done.last_checks, "latency_mean")
    assert mean.outcome == "fail"
    verdict = mean.verdict
    assert verdict is not None
    assert verdict["classification"] == "high" and verdict["ci_low"] > 0
    assert verdict["mean_ratio"] >= 1.2
    # The thresholds saw nothing wrong: it was the statistical judge alone.
    (p99,) = checks_of(done.last_checks, "latency_p99")
    assert p99.outcome == "pass", p99
    assert done.last_score is not None and done.last_score.verdict == "fail"
