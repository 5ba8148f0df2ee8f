"""PrometheusSource against a real Prometheus scraping two real instances of a sample service.

The module starts, once: a stable (v1, 1% errors) and a canary (v2, 20% errors, slower)
instance of "checkout", a bounded load generator hitting both, and Prometheus scraping them
every second. Tests that only need an unreachable or silent server run without any of it.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from bot.errors import MetricsError
from bot.metrics.base import MetricQuery, QueryResult, QueryStatus, Side
from bot.metrics.prometheus import PrometheusQueryError, PrometheusSource
from tests.support.procs import free_port
from tests.support.prometheus import wait_for_data
from tests.support.prometheus_rigs import scraped_pair
from tests.support.sample_service import Behaviour, sample_service

SERVICE = "checkout"
WINDOW = "15s"


def error_rate(version: str, window: str = WINDOW) -> str:
    selector = f'service="{SERVICE}",version="{version}"'
    return (
        f'sum(rate(http_requests_total{{{selector},code=~"5.."}}[{window}]))'
        f" / sum(rate(http_requests_total{{{selector}}}[{window}]))"
    )


def request_rate(version: str, window: str = WINDOW) -> str:
    return f'sum(rate(http_requests_total{{service="{SERVICE}",version="{version}"}}[{window}]))'


def p90_latency(version: str, window: str = WINDOW) -> str:
    return (
        "histogram_quantile(0.9, sum by (le) (rate(http_request_duration_seconds_bucket"
        f'{{service="{SERVICE}",version="{version}"}}[{window}])))'
    )


def mq(key: str, promql: str, version: str = "v1") -> MetricQuery:
    side = Side.CONTROL if version == "v1" else Side.CANARY
    return MetricQuery(key, promql, "error_rate", SERVICE, version, side)


@pytest.fixture(scope="module")
def prometheus_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with scraped_pair(
        Path(tmp_path_factory.mktemp("prometheus")),
        SERVICE,
        stable=Behaviour(error_rate=0.01, latency=0.001),
        canary=Behaviour(error_rate=0.20, latency=0.02),
        # The load is bounded on its own (60 s, 10k requests) in case teardown never comes.
        per_second=40,
        max_seconds=60,
        max_requests=10_000,
    ) as url:
        # rate() needs two scrapes in its window; wait until the canary has 150+ requests in
        # it, so the measured error ratios are not made of a handful of requests.
        wait_for_data(
            url,
            f"sum(increase(http_requests_total{{version='v2'}}[{WINDOW}]))",
            at_least=150,
            timeout=30,
        )
        wait_for_data(url, error_rate("v1"), timeout=10)
        yield url


@pytest.fixture
async def source(prometheus_url: str) -> AsyncIterator[PrometheusSource]:
    src = PrometheusSource(prometheus_url, timeout=5.0)
    yield src
    await src.close()


async def test_error_rates_per_version(source: PrometheusSource) -> None:
    stable, canary = await source.query(
        [mq("stable", error_rate("v1")), mq("canary", error_rate("v2"), "v2")]
    )
    assert (stable.key, canary.key) == ("stable", "canary")
    assert stable.status is QueryStatus.OK, stable
    assert canary.status is QueryStatus.OK, canary
    assert stable.value is not None and canary.value is not None
    assert 0.0 <= stable.value < 0.05
    assert 0.12 < canary.value < 0.30
    assert stable.query == error_rate("v1")
    # Two queries, one request: they went in one batch.
    assert source.requests_made == 1


async def test_latency_histogram_tells_versions_apart(source: PrometheusSource) -> None:
    stable, canary = await source.query(
        [mq("p90-stable", p90_latency("v1")), mq("p90-canary", p90_latency("v2"), "v2")]
    )
    assert stable.status is QueryStatus.OK and canary.status is QueryStatus.OK
    assert stable.value is not None and canary.value is not None
    assert canary.value > stable.value


async def test_unknown_version_is_no_data(source: PrometheusSource) -> None:
    (result,) = await source.query([mq("ghost", error_rate("v9"), "v9")])
    assert result.status is QueryStatus.NO_DATA
    assert result.value is None
    assert result.error == "the query returned no series"


async def test_nan_and_scalar_results(source: PrometheusSource) -> None:
    nan, scalar, scalar_nan = await source.query(
        [
            mq("nan", "vector(0) / vector(0)"),
            mq("scalar", f"scalar({request_rate('v1')})"),
            mq("scalar-nan", "scalar(vector(0) / vector(0))"),
        ]
    )
    assert nan.status is QueryStatus.NO_DATA and "NaN" in nan.error
    # A scalar cannot be tagged for a batch; it is asked alone and still answered.
    assert scalar.status is QueryStatus.OK and scalar.value is not None and scalar.value > 0
    assert scalar_nan.status is QueryStatus.NO_DATA


async def test_syntax_error_names_the_exact_query(source: PrometheusSource) -> None:
    broken = 'sum(rate(http_requests_total{version="v1"}[15s])'
    (result,) = await source.query([mq("broken", broken)])
    assert result.status is QueryStatus.ERROR
    assert result.query == broken
    assert "parse error" in result.error
    assert result.value is None


async def test_several_series_is_an_error(source: PrometheusSource) -> None:
    promql = f'sum by (version) (rate(http_requests_total{{service="{SERVICE}"}}[{WINDOW}]))'
    (result,) = await source.query([mq("by-version", promql)])
    assert result.status is QueryStatus.ERROR
    assert "2 series" in result.error and "sum(" in result.error
    assert result.query == promql


async def test_range_vector_is_an_error(source: PrometheusSource) -> None:
    (result,) = await source.query([mq("matrix", f"http_requests_total[{WINDOW}]")])
    assert result.status is QueryStatus.ERROR
    assert "range vector" in result.error


async def test_batch_with_a_broken_query(source: PrometheusSource) -> None:
    valid: list[MetricQuery] = []
    for version in ("v1", "v2"):
        for window in ("10s", "12s", "15s", "20s", "30s"):
            valid.append(mq(f"err-{version}-{window}", error_rate(version, window), version))
            valid.append(mq(f"rps-{version}-{window}", request_rate(version, window), version))
    assert len(valid) == 20
    broken = mq("broken", 'sum(rate(http_requests_total{version="v1"}[15s]) by version')
    duplicate = mq("dup", valid[0].promql)
    queries = [*valid[:7], broken, *valid[7:], duplicate]

    results = await source.query(queries)

    assert [r.key for r in results] == [q.key for q in queries]
    by_key = {r.key: r for r in results}
    assert by_key["broken"].status is QueryStatus.ERROR
    assert by_key["broken"].query == broken.promql
    for q in valid:
        r = by_key[q.key]
        assert r.status is QueryStatus.OK, r
        assert r.query == q.promql
        assert r.value is not None
        if q.key.startswith("err-v1"):
            assert r.value < 0.05
        elif q.key.startswith("err-v2"):
            assert 0.1 < r.value < 0.35
        else:
            # Not ~40/s yet: a window longer than the data so far divides by the whole window.
            assert r.value > 0
    assert by_key["dup"] == QueryResult.ok(duplicate, by_key[valid[0].key].value or 0.0)
    # The rejected batch, the broken query alone, the 20 good ones again as one batch.
    assert source.requests_made == 3
    assert source.batches_narrowed == 1


async def test_small_batches_still_answer_everything(prometheus_url: str) -> None:
    # A limit that fits about two queries per request forces several batches.
    src = PrometheusSource(prometheus_url, max_batch_chars=300)
    try:
        queries = [mq(f"q{i}", request_rate("v1", f"{10 + i}s")) for i in range(8)]
        queries.insert(3, mq("scalar", "scalar(vector(2))"))
        results = await src.query(queries)
    finally:
        await src.close()
    assert all(r.status is QueryStatus.OK for r in results), results
    assert results[3].value == 2.0
    assert 1 < src.requests_made < len(queries)


async def test_long_queries_go_in_the_request_body(source: PrometheusSource) -> None:
    # Over Go's 1 MB limit for a request's headers: it only works if the query is not in the
    # URL. The comment keeps the query itself trivial for Prometheus to parse.
    huge = "vector(1)\n# " + "x" * 1_100_000
    (result,) = await source.query([mq("huge", huge)])
    assert result.status is QueryStatus.OK, result.error
    assert result.value == 1.0


async def test_trailing_comments_do_not_break_a_batch(source: PrometheusSource) -> None:
    queries = [
        mq("a", f"{request_rate('v1')} # stable"),
        mq("b", f"# canary\n{request_rate('v2')}  # requests per second"),
    ]
    results = await source.query(queries)
    assert [r.status for r in results] == [QueryStatus.OK, QueryStatus.OK], results
    assert source.requests_made == 1


async def test_evaluation_error_is_narrowed_down(source: PrometheusSource) -> None:
    # Fails only at evaluation (many-to-many match), so Prometheus gives no position:
    # the batch is split until the bad query is alone.
    bad = "http_requests_total / on (version) http_requests_total"
    queries = [mq(f"q{i}", request_rate("v1", f"{10 + i}s")) for i in range(6)]
    queries.insert(4, mq("bad", bad))
    results = await source.query(queries)
    assert results[4].status is QueryStatus.ERROR and results[4].query == bad
    assert "execution" in results[4].error
    assert all(r.status is QueryStatus.OK for i, r in enumerate(results) if i != 4)
    assert source.requests_made < 2 * len(queries)


async def test_check_passes_on_a_live_prometheus(source: PrometheusSource) -> None:
    await source.check()


async def test_query_range_returns_samples(source: PrometheusSource) -> None:
    end = time.time()
    samples = await source.query_range(request_rate("v2"), end - 20, end, 1)
    assert len(samples) >= 3
    times = [t for t, _ in samples]
    assert times == sorted(times)
    assert all(v >= 0 for _, v in samples)
    assert await source.query_range(request_rate("v9"), end - 20, end, "1s") == []


async def test_query_range_failures_carry_the_query(source: PrometheusSource) -> None:
    end = time.time()
    broken = "sum(rate(http_requests_total[15s])"
    with pytest.raises(PrometheusQueryError) as info:
        await source.query_range(broken, end - 20, end, 1)
    assert info.value.query == broken and broken in str(info.value)
    several = f"sum by (code) (rate(http_requests_total[{WINDOW}]))"
    with pytest.raises(PrometheusQueryError, match="must return exactly one") as info:
        await source.query_range(several, end - 20, end, 1)
    assert info.value.query == several


async def test_range_series_are_batched_and_failures_stay_with_their_query(
    source: PrometheusSource,
) -> None:
    end = time.time()
    broken = "sum(rate(http_requests_total[15s])"
    several = f"sum by (code) (rate(http_requests_total[{WINDOW}]))"
    queries = [
        mq("v1", error_rate("v1"), "v1"),
        mq("v2", error_rate("v2"), "v2"),
        mq("rate", request_rate("v2"), "v2"),
        mq("none", request_rate("v9"), "v9"),
        mq("several", several),
    ]
    results = {r.key: r for r in await source.query_series(queries, end - 20, end, 1)}

    assert results["v1"].status is QueryStatus.OK and results["v2"].status is QueryStatus.OK
    assert len(results["v2"].values) >= 3
    # The canary's error rate (~20%) sits well above the stable one's (~1%) in every sample.
    assert min(results["v2"].values) > max(results["v1"].values)
    assert results["none"].status is QueryStatus.NO_DATA
    assert results["several"].status is QueryStatus.ERROR
    assert "one" in results["several"].error and results["several"].query == several
    assert source.requests_made == 1  # five series, one request

    results = {
        r.key: r
        for r in await source.query_series([*queries[:2], mq("broken", broken)], end - 20, end, 1)
    }
    assert results["broken"].status is QueryStatus.ERROR and results["broken"].query == broken
    assert results["v1"].status is QueryStatus.OK and results["v2"].status is QueryStatus.OK


async def test_unreachable_prometheus() -> None:
    src = PrometheusSource(f"http://127.0.0.1:{free_port()}", timeout=1.0)
    try:
        queries = [mq("a", error_rate("v1")), mq("b", error_rate("v2"), "v2"), mq("c", "up")]
        started = time.monotonic()
        results = await src.query(queries)
        elapsed = time.monotonic() - started
        assert [r.status for r in results] == [QueryStatus.ERROR] * 3
        assert [r.query for r in results] == [q.promql for q in queries]
        assert all("connection refused" in r.error for r in results), results
        assert elapsed < 1.5
        with pytest.raises(MetricsError, match="not usable"):
            await src.check()
        with pytest.raises(PrometheusQueryError):
            await src.query_range("up", time.time() - 10, time.time(), 1)
    finally:
        await src.close()


async def test_silent_server_times_out() -> None:
    # Accepts connections (the kernel does, from the backlog) and never answers.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        src = PrometheusSource(f"http://127.0.0.1:{port}", timeout=0.5)
        try:
            started = time.monotonic()
            results = await src.query([mq("a", "up"), mq("b", "vector(1)")])
            elapsed = time.monotonic() - started
            assert [r.status for r in results] == [QueryStatus.ERROR] * 2
            assert all(r.error.startswith("timed out after 0.5s") for r in results), results
            assert elapsed < 2.0
            with pytest.raises(MetricsError, match="timed out"):
                await src.check()
        finally:
            await src.close()


async def test_empty_query_list_sends_nothing() -> None:
    src = PrometheusSource(f"http://127.0.0.1:{free_port()}")
    try:
        assert await src.query([]) == []
        assert src.requests_made == 0
    finally:
        await src.close()


def test_sample_service_is_configurable_at_run_time() -> None:
    with sample_service("demo", "v3", error_rate=0.0) as app:
        request = urllib.request.Request(
            f"{app.url}/admin/config",
            data=json.dumps({"error_rate": 1.0}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=2) as response:
            assert json.load(response) == {"error_rate": 1.0, "latency": 0.0, "jitter": 0.0}
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(f"{app.url}/work?user=7", timeout=2)
        assert info.value.code == 500
        info.value.close()
        app.configure(error_rate=0.0)
        with urllib.request.urlopen(f"{app.url}/work?user=7", timeout=2) as response:
            assert json.load(response)["user"] == "7"
        with urllib.request.urlopen(f"{app.url}/metrics", timeout=2) as response:
            text = response.read().decode()
        assert 'http_requests_total{code="500",service="demo",version="v3"} 1.0' in text
