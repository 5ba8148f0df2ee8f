"""`shipwatch demo`, the README's first command: on a real Prometheus scraping the real sample
service, on the synthetic source, and stopped half-way; plus its parts (the sample service,
its load, the choice of metrics source) on their own."""

from __future__ import annotations

import asyncio
import io
import json
import os
import pty
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis
import yaml
from prometheus_client.parser import text_string_to_metric_families

from bot.demo.load import LoadGenerator
from bot.demo.rig import SCRIPT, DemoRig, demo_policy, for_real_metrics, scripted_input
from bot.demo.service import Behaviour, DemoService
from bot.errors import MetricsError, UserError
from bot.flags import FlagClient, FlagWriter, in_canary, normalized_number
from bot.release.policy import embedded_policy
from bot.traffic.base import TrafficAction, TrafficChange
from bot.traffic.flags import FlagsBackend
from tests.support.procs import clean_env, free_port, require_binary
from tests.support.unleash import ADMIN_TOKEN, CLIENT_TOKEN, unleash_running

DEMO_TIMEOUT = 240.0  # a bound on a hang; the demo takes well under a minute


def _env(data_dir: Path) -> dict[str, str]:
    """The environment of a fresh machine: no Slack, Redis, Prometheus URL or OpenAI key."""
    env = clean_env()
    env["SHIPWATCH_DATA_DIR"] = str(data_dir)
    return env


def _run_demo(
    tmp_path: Path, data_dir: Path, *args: str, env: dict[str, str] | None = None
) -> tuple[str, float]:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "bot", "demo", "--no-interactive", *args],
        cwd=tmp_path,  # no ./shipwatch.yaml here: the embedded policy
        env=_env(data_dir) | (env or {}),
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT,
        check=False,
    )
    seconds = time.monotonic() - started
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout, seconds


def _assert_both_releases(out: str) -> None:
    assert "checkout `v2` is live for everyone" in out
    assert "Rolling back checkout `v3` to `v2`" in out
    assert "rolled back: traffic is back on v2 (0% canary)" in out
    assert "Why checkout `v3` was rolled back" in out
    assert "template text: no LLM configured" in out
    history = out[out.rindex("you> history checkout") :]
    assert "(v3) by you: rolled_back" in history
    assert "(v2) by you: succeeded" in history


def _assert_handed_back(out: str) -> None:
    """Between the releases the engine's users went back to the stable pool, now on v2."""
    between = out[
        out.index("checkout `v2` is live for everyone") : out.index("you> deploy checkout v3")
    ]
    assert "then `/rollout handback checkout` moves everyone there" in between
    assert "you> handback checkout" in between
    assert "everyone on `checkout` is on the stable pool (v2) again" in between
    assert "checkout `v2` handed back by you: everyone is on the stable pool again" in between


def _prometheus_processes(marker: Path) -> list[int]:
    """Live ``prometheus`` processes whose command line mentions ``marker``."""
    return _processes_mentioning(marker, "prometheus")


def _processes_mentioning(marker: Path, program: str) -> list[int]:
    """Live processes of ``program`` whose command line mentions ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # gone meanwhile
        if program.encode() in argv[0] and any(str(marker).encode() in a for a in argv):
            found.append(int(entry.name))
    return found


# --- the whole demo ------------------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.redis
@pytest.mark.prometheus
def test_demo_plays_both_releases_on_a_real_prometheus(
    tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    require_binary("redis-server")  # the demo starts its own, embedded
    require_binary("prometheus")  # ... and its own Prometheus, because this one is on PATH
    data = tmp_path / "data"
    out, seconds = _run_demo(tmp_path, data)
    record_property("demo_real_seconds", round(seconds, 1))

    first = out.splitlines()[0]
    assert re.fullmatch(
        r"metrics: real Prometheus [0-9.]+ at http://127\.0\.0\.1:\d+, scraping the sample "
        r"services every 1 s \(checkout, payments, search; 100 requests/s each, users routed "
        r"to versions by the canary flag\)",
        first,
    ), first
    assert "shipwatch console · metrics: prometheus ·" in out
    assert "Plan: 10% → 25% → 50% → 100%" in out
    _assert_both_releases(out)
    # The fault went to the real service, and the rollback is about what Prometheus measured.
    assert "sample service: checkout v3: latency ×4 (median latency now 240 ms)" in out
    rollback = next(line for line in out.splitlines() if "Rolling back checkout `v3`" in line)
    assert re.search(r"latency_p99: [0-9.]+ s is [0-9.]+x control \(limit 2x\)", rollback)
    # The blue-green release reaches 100% on what Prometheus measured on its idle colour, which
    # the switch hook's synthetic load gave requests (no user reaches it before the switch).
    assert "The step hooks before 100% passed for" in out
    assert re.search(r"synthetic load on `http://127\.0\.0\.1:\d+/preview/v2`: \d+ of", out)
    assert "search `v2` is live for everyone" in out
    # Nothing it started is left: no Prometheus, no TSDB; its log stays for reading.
    assert not _prometheus_processes(data)
    assert not list(data.glob("prometheus-*"))
    assert (data / "prometheus.log").is_file()
    assert seconds < 120, f"the demo took {seconds:.0f}s"


@pytest.mark.e2e
@pytest.mark.redis
@pytest.mark.prometheus
@pytest.mark.parametrize(
    ("engine", "label", "how"),
    [
        pytest.param(
            "haproxy",
            r"HAProxy [0-9][0-9.\-]*",
            "`set map` on the runtime API, no reload",
            marks=pytest.mark.haproxy,
        ),
        pytest.param(
            "nginx",
            r"NGINX [0-9][0-9.]*",
            "a split_clients include, `nginx -t`, reload",
            marks=pytest.mark.nginx,
        ),
    ],
)
def test_demo_plays_both_releases_through_a_real_proxy(
    tmp_path: Path, engine: str, label: str, how: str
) -> None:
    require_binary("redis-server")
    require_binary("prometheus")
    require_binary(engine)
    data = tmp_path / "data"
    out, _ = _run_demo(tmp_path, data, "--traffic", engine)

    lines = out.splitlines()
    assert re.fullmatch(
        r"metrics: real Prometheus .* users routed to versions through " + label + r"\)",
        lines[0],
    ), lines[0]
    assert re.fullmatch(
        f"traffic: {label} in front of each service's stable and canary pools; shipwatch moves "
        f"users with its {engine} backend " + re.escape(f"({how})"),
        lines[2],
    ), lines[2]
    _assert_both_releases(out)
    # v3 was judged on what its pool served through the proxy (the rollback needs 20 of its
    # requests in the window), and only after the pipeline put it on the canary pool.
    rollback = next(line for line in lines if "Rolling back checkout `v3`" in line)
    assert re.search(r"latency_p99: [0-9.]+ s is [0-9.]+x control \(limit 2x\)", rollback)
    assert "traffic failed" not in out.lower()
    _assert_handed_back(out)
    # Nothing it started is left: the proxy's files are gone, its log stays.
    assert not _processes_mentioning(data, engine)
    assert not list(data.glob(f"{engine}-*"))
    assert (data / f"{engine}.log").is_file()


@pytest.mark.e2e
@pytest.mark.redis
@pytest.mark.prometheus
@pytest.mark.unleash
def test_demo_plays_both_releases_through_a_real_unleash(tmp_path: Path) -> None:
    require_binary("redis-server")
    require_binary("prometheus")
    with unleash_running(tmp_path) as server:
        env = {"UNLEASH_ADMIN_TOKEN": ADMIN_TOKEN, "UNLEASH_CLIENT_TOKEN": CLIENT_TOKEN}
        out, _ = _run_demo(
            tmp_path,
            tmp_path / "data",
            "--traffic",
            "unleash",
            "--unleash-url",
            server.url,
            env=env,
        )
        with urllib.request.urlopen(
            urllib.request.Request(
                f"{server.url}/api/admin/projects/default/features/shipwatch.checkout",
                headers={"Authorization": ADMIN_TOKEN},
            ),
            timeout=10,
        ) as answer:
            flag = json.load(answer)

    lines = out.splitlines()
    assert lines[0].endswith("users routed to versions by Unleash's Python SDK)"), lines[0]
    assert lines[2] == (
        f"traffic: Unleash at {server.url}, flags shipwatch.checkout, shipwatch.payments, "
        "shipwatch.search (project default, environment development); shipwatch moves users "
        "with its unleash backend (a flexibleRollout strategy through the Admin API); the "
        "sample services ask Unleash's Python SDK, refreshing every 1 s"
    )
    _assert_both_releases(out)
    _assert_handed_back(out)
    assert "applications see it within 1s" in out
    # What the rollback left in Unleash: shipwatch's strategy at 0% in development.
    [development] = [e for e in flag["environments"] if e["name"] == "development"]
    [owned] = [s for s in development["strategies"] if s["title"] == "shipwatch"]
    assert owned["parameters"]["rollout"] == "0"
    assert owned["parameters"]["groupId"] == "checkout"


@pytest.mark.redis
def test_unleash_without_its_url_or_tokens_is_refused_before_anything_starts(
    tmp_path: Path,
) -> None:
    base = [sys.executable, "-m", "bot", "demo", "--no-interactive", "--traffic", "unleash"]

    def refused(*args: str, env: dict[str, str] | None = None) -> str:
        done = subprocess.run(
            [*base, *args],
            cwd=tmp_path,
            env=_env(tmp_path / "data") | (env or {}),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 1, done.stdout + done.stderr
        assert "you>" not in done.stdout
        return done.stderr.strip()

    assert refused() == (
        "shipwatch: --traffic unleash drives an Unleash server you run: say where it is\n"
        "add --unleash-url http://unleash.example:4242"
    )
    said = refused("--unleash-url", "http://127.0.0.1:9", env={"UNLEASH_ADMIN_TOKEN": "x"})
    assert said.startswith(
        "shipwatch: --traffic unleash needs UNLEASH_CLIENT_TOKEN in the environment\n"
    ), said
    assert not list((tmp_path / "data").glob("prometheus-*"))


@pytest.mark.redis
def test_a_proxy_on_synthetic_metrics_is_refused_with_the_way_out(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bot",
            "demo",
            "--no-interactive",
            "--traffic",
            "haproxy",
            "--metrics",
            "synthetic",
        ],
        cwd=tmp_path,
        env=_env(tmp_path / "data"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stderr.strip() == (
        "shipwatch: --traffic haproxy moves real requests, and synthetic metrics would not see "
        "them\nleave out --metrics synthetic (the demo then needs prometheus on PATH)"
    )
    assert "you>" not in done.stdout  # nothing was played


@pytest.mark.e2e
@pytest.mark.redis
def test_demo_on_synthetic_metrics_when_asked(tmp_path: Path) -> None:
    require_binary("redis-server")
    data = tmp_path / "data"
    out, _ = _run_demo(tmp_path, data, "--metrics", "synthetic")
    assert out.splitlines()[0] == "metrics: synthetic (asked for with --metrics synthetic)"
    assert "metrics: synthetic (demo data) (made-up numbers for trying the product)" in out
    assert "Plan: 1% → 10% → 25% → 50% → 100%" in out
    _assert_both_releases(out)
    assert "demo fault: checkout latency_p99 ×4 on v3" in out
    assert not list(data.glob("prometheus-*")) and not (data / "prometheus.log").exists()


@contextmanager
def _signals_as_from_a_terminal() -> Iterator[None]:
    """A shell starts background commands with SIGINT ignored, and a child inherits that: give
    the processes started here the default disposition, as a terminal's would have."""
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        yield
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _wait_for_text(path: Path, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in path.read_text(errors="replace"):
            return
        time.sleep(0.1)
    raise AssertionError(f"{text!r} not in the output after {timeout}s:\n{path.read_text()}")


@pytest.mark.e2e
@pytest.mark.redis
@pytest.mark.prometheus
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_stopping_the_demo_half_way_stops_everything_it_started(
    tmp_path: Path, sig: signal.Signals, code: int
) -> None:
    require_binary("redis-server")
    require_binary("prometheus")
    data = tmp_path / "data"
    log = tmp_path / "demo.log"
    with log.open("w") as out, _signals_as_from_a_terminal():
        proc = subprocess.Popen(
            [sys.executable, "-m", "bot", "demo", "--no-interactive"],
            cwd=tmp_path,
            env=_env(data),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait_for_text(log, "you> await checkout", timeout=60)
            assert _prometheus_processes(data), "the demo runs a Prometheus by now"
            proc.send_signal(sig)  # to the demo alone, as `kill` does: it must stop the rest
            assert proc.wait(timeout=30) == code, log.read_text()[-3000:]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert not _prometheus_processes(data)
    assert not list(data.glob("prometheus-*"))
    assert not (data / "redis.sock").exists(), "the embedded Redis is stopped too"


def test_the_script_then_the_user(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("help\nquit\n"))
    said: list[str] = []
    read = scripted_input(True, said.append)
    commands = [line for line in SCRIPT if not line.startswith("#")]
    got = [read() for _ in range(len(commands) + 3)]
    assert got == [*(c + "\n" for c in commands), "help\n", "quit\n", ""]
    assert said.count("\nThe demo is over; the console is yours (try `help`, or `quit`).") == 1
    assert [s for s in said if s.startswith("\n# ")] == [
        "\n" + line for line in SCRIPT if line.startswith("#")
    ]
    # Without a terminal it ends with the script.
    read = scripted_input(False, said.append)
    assert [read() for _ in range(len(commands) + 1)][-1] == ""


def test_real_numbers_get_a_policy_they_can_be_judged_by() -> None:
    policy = demo_policy(embedded_policy())
    real = for_real_metrics(policy)
    checkout = real.service("checkout")
    assert checkout.weights == [10, 25, 50, 100]
    assert (checkout.interval, checkout.hold, checkout.window) == (1.0, 4.0, 5.0)
    metrics = {m.name: m for m in checkout.metrics}
    assert metrics["latency_p99"].judge == "threshold"  # was `both`: no minutes of series here
    assert metrics["latency_p99"].critical and metrics["latency_p99"].max_ratio == 2.0
    assert {m.min_requests for m in metrics.values()} == {20}
    demo_checkout = policy.service("checkout")
    statistical_only = demo_checkout.metrics[1].model_copy(
        update={"name": "latency_mw", "judge": "mann_whitney"}
    )
    only_stats = demo_checkout.model_copy(update={"metrics": [statistical_only]})
    policy = policy.model_copy(update={"services": {"checkout": only_stats}})
    (only,) = for_real_metrics(policy).service("checkout").metrics
    assert only.dry_run and only.judge == "mann_whitney"  # reported, never acted on


# --- where the numbers come from -----------------------------------------------------------


async def test_without_prometheus_on_path_the_demo_says_so_and_makes_numbers_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    rig = DemoRig(tmp_path / "data", embedded_policy())
    try:
        choice = await rig.start()
    finally:
        await rig.close()
    assert choice.prometheus_url is None
    assert choice.line == (
        "metrics: synthetic (prometheus not found on PATH; install it for the real thing: "
        "apt-get install prometheus)"
    )
    assert rig.faults is None  # `fault` goes to the synthetic source
    assert rig.policy.service("checkout").weights == [1, 10, 25, 50, 100]
    assert rig.policy.service("checkout").interval == 1.0


async def test_insisting_on_prometheus_without_it_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    rig = DemoRig(tmp_path / "data", embedded_policy(), "prometheus")
    with pytest.raises(MetricsError, match="cannot use a real Prometheus: prometheus not found"):
        await rig.start()
    await rig.close()


FAILING_PROMETHEUS = """#!/bin/sh
case "$1" in --version) echo "prometheus, version 9.9.9 (branch: none)"; exit 0;; esac
cat "${1#--config.file=}" > "$(dirname "$0")/seen.yml"
echo "level=error msg=\\"opening storage failed\\"" >&2
exit 3
"""


async def test_a_prometheus_that_fails_to_start_falls_back_and_leaves_nothing_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "prometheus"
    fake.write_text(FAILING_PROMETHEUS)
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    data = tmp_path / "data"
    rig = DemoRig(data, embedded_policy())
    try:
        choice = await rig.start()
    finally:
        await rig.close()
    assert choice.prometheus_url is None
    assert choice.line == (
        'metrics: synthetic (prometheus exited with status 3: level=error msg="opening '
        'storage failed")'
    )
    # It was asked to scrape one sample service per service of the policy, every second ...
    config = yaml.safe_load((bin_dir / "seen.yml").read_text())
    assert config["global"]["scrape_interval"] == "1s"
    (job,) = config["scrape_configs"]
    targets = job["static_configs"][0]["targets"]
    assert len(targets) == 3
    # ... and those services are gone again, as is its temporary directory.
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
        for target in targets:
            with pytest.raises(aiohttp.ClientConnectionError):
                await http.get(f"http://{target}/metrics")
    assert not list(data.glob("prometheus-*"))
    assert rig.faults is None


# --- the sample service ----------------------------------------------------------------------


async def _get(http: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, str]]:
    async with http.get(url) as response:
        body = await response.json()
        assert isinstance(body, dict)
        return response.status, body


async def test_sample_service_metrics_and_fault_control() -> None:
    svc = DemoService("checkout", "v1", Behaviour(latency=0.002))
    await svc.start()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            for n in range(10):
                status, body = await _get(http, f"{svc.url}/work?user=u{n}")
                assert (status, body) == (200, {"service": "checkout", "version": "v1",
                                                "user": f"u{n}"})
            # 50 times a nominal 1%: every other request fails, evenly spread.
            said = svc.inject("checkout", "error_rate", 50, "v1")
            assert said == "sample service: checkout v1: errors ×50 (now 50.0% of requests fail)"
            statuses = [(await _get(http, f"{svc.url}/work?user=x"))[0] for _ in range(10)]
            assert statuses.count(500) == 5
            # 20 times slower: 40 ms instead of 2 ms.
            said = svc.inject("checkout", "latency_p99", 20, "v1")
            assert said.endswith("latency ×20 (median latency now 40 ms)")
            started = time.perf_counter()
            status, _ = await _get(http, f"{svc.url}/work?user=y")
            assert status == 200 and time.perf_counter() - started >= 0.04

            # The admin endpoint: per version, validated, fields left out are kept.
            async with http.post(
                f"{svc.url}/admin/config", json={"version": "v2", "error_rate": 0.5}
            ) as response:
                assert response.status == 200
                assert await response.json() == {"error_rate": 0.5, "latency": 0.002,
                                                  "jitter": 0.0}
            for bad, why in (({"error_rate": 2}, "error_rate must be within [0, 1]"),
                             ({"speed": 1}, "unknown fields: ['speed']")):
                async with http.post(f"{svc.url}/admin/config", json=bad) as response:
                    assert response.status == 400
                    assert why in (await response.json())["error"]
            async with http.get(f"{svc.url}/metrics") as response:
                assert response.headers["Content-Type"].startswith("text/plain; version=")
                text = await response.text()
    finally:
        await svc.stop()

    families = {f.name: f for f in text_string_to_metric_families(text)}
    requests = {
        (s.labels["service"], s.labels["version"], s.labels["code"]): s.value
        for s in families["http_requests"].samples
        if s.name == "http_requests_total"
    }
    assert requests == {("checkout", "v1", "200"): 16.0, ("checkout", "v1", "500"): 5.0}
    buckets = {
        s.labels["le"]: s.value
        for s in families["http_request_duration_seconds"].samples
        if s.name.endswith("_bucket") and s.labels["version"] == "v1"
    }
    assert buckets["+Inf"] == 21.0
    assert buckets["0.025"] <= 20.0  # the 40 ms request is above it

    assert svc.behaviour_of("v2").error_rate == 0.5
    svc.clear("checkout")
    assert svc.behaviour_of("v1") == svc.behaviour_of("v2") == Behaviour(latency=0.002)
    with pytest.raises(UserError, match="not `cpu`"):
        svc.inject("checkout", "cpu", 2, "v1")
    with pytest.raises(UserError, match="is `checkout`, not `payments`"):
        svc.inject("payments", "latency_p99", 2, "v1")


async def _until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_traffic_follows_the_canary_flag(
    redis_url: str, redis_client: aioredis.Redis
) -> None:
    users = 200
    flags = FlagClient(redis_url, poll_interval=1.0)
    await asyncio.to_thread(flags.start)
    svc = DemoService("checkout", "v1", Behaviour(latency=0.001), flags=flags)
    await svc.start()
    load = LoadGenerator([svc.url], per_second=200, users=users, max_seconds=60)
    backend = FlagsBackend(FlagWriter(redis_client))

    def canary(user: str, pct: int) -> bool:
        return in_canary(pct, normalized_number(user, "checkout"))

    async def share_of_v2(seconds: float) -> tuple[int, int]:
        before = load.stats().answered
        await asyncio.sleep(seconds)
        after = load.stats().answered
        return (after.get("v2", 0) - before.get("v2", 0), after.get("v1", 0) - before.get("v1", 0))

    load.start()
    try:
        # No flag yet: everyone is served by the service's own version.
        await _until(lambda: load.stats().answered.get("v1", 0) >= 100)
        assert set(load.stats().answered) == {"v1"}

        await backend.apply(TrafficChange("r1", "checkout", "v2", "v1", 30, TrafficAction.START))
        await asyncio.to_thread(flags.wait_for, "checkout", lambda s: s.pct == 30, 5.0)
        await asyncio.sleep(0.2)  # answers to requests routed before the change are in
        v2, v1 = await share_of_v2(2.0)  # every user about twice
        expected = sum(canary(f"u{n}", 30) for n in range(users)) / users
        assert v1 + v2 > 200
        assert abs(v2 / (v1 + v2) - expected) < 0.08, (v2, v1, expected)
        # Each user gets exactly the version the SDK's bucketing gives them.
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            for n in range(users):
                _, body = await _get(http, f"{svc.url}/work?user=u{n}")
                assert body["version"] == ("v2" if canary(f"u{n}", 30) else "v1"), n

        await backend.apply(TrafficChange("r1", "checkout", "v2", "v1", 0, TrafficAction.ROLLBACK))
        await asyncio.to_thread(flags.wait_for, "checkout", lambda s: s.pct == 0, 5.0)
        await asyncio.sleep(0.2)
        v2, v1 = await share_of_v2(1.0)
        assert v2 == 0 and v1 > 100
        assert load.stats().failed == 0
    finally:
        await load.stop()
        await svc.stop()
        await asyncio.to_thread(flags.close)


# The compose file's module, and the name it had before (older compose files still use it).
@pytest.mark.parametrize("module", ["bot.demo.service", "bot.demo_service"])
def test_demo_service_entry_point_serves_and_stops_on_sigterm(tmp_path: Path, module: str) -> None:
    """`python -m bot.demo.service`, as docker compose runs it (here without Redis)."""
    port = free_port()
    env = {**_env(tmp_path), "PORT": str(port), "DEMO_VERSION": "v7", "DEMO_LOAD_RPS": "20"}
    proc = subprocess.Popen(
        [sys.executable, "-m", module],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        served = 0.0
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and served < 5:
            time.sleep(0.2)
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    text = r.read().decode()
            except OSError:
                continue  # not listening yet
            found = re.search(
                r'^http_requests_total\{code="200",service="demo",version="v7"\} (\S+)$',
                text,
                re.M,
            )
            served = float(found.group(1)) if found else 0.0
        assert served >= 5, "its own load reaches it, served as DEMO_VERSION"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        _, err = proc.communicate()
    assert "users routed to v7 (no REDIS_URL)" in err


@pytest.mark.redis
def test_ctrl_c_at_the_console_prompt_ends_it(tmp_path: Path) -> None:
    """Where the demo leaves the user: a prompt waiting on the terminal must not keep the
    process alive after Ctrl-C (the read is blocked on a thread the signal does not reach)."""
    require_binary("redis-server")
    log = tmp_path / "console.out"
    terminal, their_end = pty.openpty()  # stdin is a terminal: the console prompts on it
    try:
        with log.open("w") as out, _signals_as_from_a_terminal():
            proc = subprocess.Popen(
                [sys.executable, "-m", "bot", "console"],
                cwd=tmp_path,
                env=_env(tmp_path / "data"),
                stdin=their_end,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
            try:
                _wait_for_text(log, "you> ", timeout=30)
                proc.send_signal(signal.SIGINT)  # what Ctrl-C sends it
                assert proc.wait(timeout=15) == 130
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    finally:
        os.close(terminal)
        os.close(their_end)
    assert not (tmp_path / "data" / "redis.sock").exists(), "its embedded Redis is stopped"
