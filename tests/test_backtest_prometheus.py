"""`shipwatch backtest` against a real Prometheus scraping the real sample service, with a past
release run through the product (a real Redis, the controller judging from that Prometheus).

A stable (v1: no errors, 5 ms) and a faulty canary (v2: 30% errors) of one service serve load
from the start; Prometheus scrapes them every second. The app is built as `serve` builds it,
v2 is deployed against v1 and the controller rolls it back within seconds. After about 30 s
of history the command runs with a seconds-scale policy (the same one) and must report:
the past release rolled back by the controller and by the replay too; A/A windows of v1
against itself without a false rollback; and the injected faults caught every time.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from bot.release.request import DeployOptions
from bot.release.rollout import Actor, State
from tests.support.procs import free_port
from tests.support.prometheus import wait_for_data
from tests.support.prometheus_rigs import controlled_app, scraped_pair
from tests.support.recorder import Recorder
from tests.support.routed import ERROR_RATE_QUERY, LATENCY_P99_QUERY
from tests.support.sample_service import Behaviour

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

SERVICE = "bt-checkout"
HISTORY_S = 30.0
POLICY: dict[str, Any] = {
    "defaults": {
        "steps": [10, 50, 100],
        "hold": "3s",
        "interval": "1s",
        "window": "5s",
        "bake": "3s",
        "metrics": [
            {
                "name": "error_rate",
                "query": ERROR_RATE_QUERY,
                "unit": "ratio",
                "max_diff": 0.05,
                "min_requests": 10,
                "failure_limit": 2,
            },
            {
                "name": "latency_p99",
                "query": LATENCY_P99_QUERY,
                "unit": "s",
                "max_diff": 0.15,
                "critical": True,
                "min_requests": 10,
            },
        ],
    },
    "services": {SERVICE: {}},
}


@pytest.fixture(scope="module")
def prometheus_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with scraped_pair(
        Path(tmp_path_factory.mktemp("prometheus")),
        SERVICE,
        stable=Behaviour(error_rate=0.0, latency=0.005),
        canary=Behaviour(error_rate=0.30, latency=0.005),
        per_second=40,
        max_seconds=100,
    ) as url:
        wait_for_data(
            url,
            f'sum(increase(http_requests_total{{service="{SERVICE}",version="v1"}}[5s]))',
            at_least=50,
            timeout=30,
        )
        yield url


async def run_a_release(redis_url: str, prometheus_url: str) -> str:
    """v2 deployed against v1 through the product; returns its id once rolled back."""
    async with controlled_app(
        redis_url,
        prometheus_url,
        POLICY,
        "backtest-e2e",
        notifiers=[Recorder()],
        controller_name="backtest-controller",
    ) as app:
        result = await app.service.deploy(
            Actor(user="alice", surface="console"), SERVICE, "v2", DeployOptions(stable="v1")
        )
        release_id = result.release.id
        deadline = time.monotonic() + 30
        while True:
            release = await app.store.get(release_id)
            assert release is not None
            if release.state is State.ROLLED_BACK:
                return release_id
            assert time.monotonic() < deadline, release.describe_state()
            await asyncio.sleep(0.2)


async def run_cli(args: list[str]) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "bot", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SHIPWATCH_LOG_LEVEL": "WARNING"},
    )


async def test_backtest_on_real_history_and_a_real_audit(
    prometheus_url: str, redis_url: str, tmp_path: Path
) -> None:
    began = time.time()
    # A few seconds of history before the deploy: its first rounds read what was before it
    # (a backtest never reads a sample from after a round's time).
    await asyncio.sleep(4)
    release_id = await run_a_release(redis_url, prometheus_url)
    # History to judge on: the rest of HISTORY_S since the first samples came in.
    await asyncio.sleep(max(0.0, HISTORY_S - (time.time() - began) - 5))
    policy = tmp_path / "shipwatch.yaml"
    policy.write_text(yaml.safe_dump(POLICY))
    out, chart = tmp_path / "backtest.json", tmp_path / "backtest.png"
    args = [
        "backtest",
        "--policy", str(policy),
        "--prometheus-url", prometheus_url,
        "--redis-url", redis_url,
        "--since", f"{HISTORY_S:g}s",
        "--aa-windows", "8",
        "--inject", "error_rate=+0.2",
        "--inject", "latency_p99=+300ms",
        "--target-false-rate", "0.05",
        "--json", str(out),
        "--chart", str(chart),
    ]  # fmt: skip
    # The command as a user runs it, in a process of its own.
    done = await run_cli(args)
    text = done.stdout
    print(text)
    assert done.returncode == 0, done.stderr

    data = json.loads(out.read_text())
    assert data["audit"] == "read"
    report = data["services"][SERVICE]
    # (a) the release the controller rolled back: found in the audit, rolled back on replay.
    (past,) = report["releases"]
    assert past["release_id"] == release_id
    assert (
        past["actual"]["outcome"] == "rolled_back" and past["actual"]["decided_by"] == "shipwatch"
    )
    assert past["replayed"]["outcome"] == "rolled_back"
    assert past["agreement"] == "both_rolled_back"
    assert "error_rate" in past["replayed"]["reason"]
    # (b) v1 against itself: every window judged, none rolled back.
    aa = report["aa"]
    assert aa["windows"] == 8 and aa["judged"] >= 6
    assert aa["false_rollbacks"] == 0 and aa["false_rollback_rate_per_release"] == 0
    assert aa["false_rollbacks_per_day"] == 0 and aa["false_rollback_rate_upper_95"] > 0
    assert aa["offset_seconds"] == 5 and aa["release_seconds"] == 9
    # (c) both faults caught in every judged window: errors at the second failed round (1 s
    # after the start, which the first round judges), latency (critical) at the first.
    errors, latency = report["faults"]
    assert errors["effect"] == "error_rate=+0.2" and errors["detection_rate"] == 1
    assert errors["rounds_to_detection"] == {"median": 2, "max": 2}
    assert errors["seconds_to_detection"]["max"] == 1
    assert latency["detection_rate"] == 1 and latency["rounds_to_detection"]["max"] == 1
    # The grid found a setting, and the table and the chart say so.
    assert report["suggestion"]["chosen"] is not None
    assert "agrees (rolled back)" in text and "false rollbacks: 0 of" in text
    assert chart.read_bytes().startswith(b"\x89PNG")


async def test_without_a_reachable_redis_the_past_releases_are_skipped_with_a_note(
    prometheus_url: str, tmp_path: Path
) -> None:
    policy = tmp_path / "shipwatch.yaml"
    policy.write_text(yaml.safe_dump(POLICY))
    out = tmp_path / "b.json"
    args = [
        "backtest", "--policy", str(policy), "--prometheus-url", prometheus_url,
        "--redis-url", f"redis://127.0.0.1:{free_port()}", "--stable", "v1",
        "--since", "20s", "--aa-windows", "3", "--no-suggest", "--json", str(out),
    ]  # fmt: skip
    done = await run_cli(args)
    assert done.returncode == 0, done.stderr
    data = json.loads(out.read_text())
    assert data["audit"].startswith("skipped: Redis at redis://127.0.0.1:")
    assert data["services"][SERVICE]["releases"] == []
    assert data["services"][SERVICE]["suggestion"] is None
    assert "Past releases: skipped: Redis at" in done.stdout
