"""One request per metric template, against a real Prometheus scraping real sample services.

The module runs three sample services ("checkout", "payments", "search"), each serving twelve
versions side by side (a router sends each user to one of them, as a canary flag would) with
different error rates, a load generator, and two Prometheus servers scraping them every
second: a plain one, and one started with a small ``--query.max-samples`` that refuses a
query over every release at once but not a query over one. Once every version has traffic,
the load and the services stop, so the stored samples no longer change and the answers of
the batched and the per-release way can be compared exactly, query by query.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from bot.judging import analysis
from bot.metrics.base import MetricQuery, QueryResult, QueryStatus, SeriesResult, Side
from bot.metrics.prometheus import PrometheusSource
from bot.release.policy import Risk, ServicePolicy, Strategy, embedded_policy, render_template
from bot.release.rollout import Actor, Release, new_release
from tests.support.procs import free_port
from tests.support.prometheus import prometheus_server, wait_for_data
from tests.support.sample_service import LoadGenerator, SampleService

# Starting the fleet takes about half a minute, counted in the first test's time.
pytestmark = pytest.mark.timeout(150)

SERVICES = ("checkout", "payments", "search")
# Twelve versions per service, as users type them: dots, plus signs, colons, slashes.
VERSIONS = (
    "v1",
    "v10",
    "v1.0",
    "1.2.3",
    "1.2.3+build.7",
    "2024.01.01-rc1",
    "a:b/c@d~e",
    "v2",
    "v2-canary",
    "V2",
    "r7",
    "v3",
)
# Served, but by no release: the batched regex for "v1.0" must not pick it up.
UNASKED = "v1x0"
# Stored samples stop changing when the services stop; a window this long still covers them
# all when the last test runs.
WINDOW_SECONDS = 900
# A request-count template over one release loads 2 samples (one series per status code); over
# every release at once, about 70.
MAX_SAMPLES = 50
ACTOR = Actor(user="U1", surface="api")


class VersionByUser:
    """Routes user ``u<n>`` to one of the versions, in turn (the sample service's Router)."""

    def __init__(self, versions: tuple[str, ...]) -> None:
        self.versions = versions

    def version(self, service: str, user: str) -> str | None:
        digits = user.removeprefix("u")
        return self.versions[int(digits) % len(self.versions)] if digits.isdigit() else None


@dataclass(frozen=True)
class Fleet:
    url: str
    limited_url: str
    quiet_at: float  # the counters stood still from before this moment until the services stopped


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    tmp = Path(tmp_path_factory.mktemp("batch"))
    with ExitStack() as servers:
        apps = []
        for n, service in enumerate(SERVICES):
            app = SampleService(service, VERSIONS[0])
            app.app.flags = VersionByUser((*VERSIONS, UNASKED))
            for k, version in enumerate(VERSIONS):
                app.app.configure(version=version, error_rate=((k + n) % 4) * 0.05)
            apps.append(app)
        targets = [a.target for a in apps]
        url = servers.enter_context(prometheus_server(tmp / "plain", targets))
        limited = servers.enter_context(
            prometheus_server(tmp / "limited", targets, f"--query.max-samples={MAX_SAMPLES}")
        )
        with ExitStack() as traffic:
            for app in apps:
                app.start()
                traffic.callback(app.stop)
            load = LoadGenerator(
                [a.url for a in apps], per_second=80, max_seconds=90, max_requests=30_000
            )
            load.start()
            traffic.callback(load.stop)
            pairs = len(SERVICES) * (len(VERSIONS) + 1)
            wait_for_data(
                url, "count(sum by (service, version) (http_requests_total))", at_least=pairs
            )
            # The limited one refuses the query above; it scrapes the same targets as often.
            for u in (url, limited):
                wait_for_data(u, "min(count_over_time(up[10m]))", at_least=10, timeout=60)
            # Scraped at least twice with the final counts before the services stop.
            load.stop()
            time.sleep(3)
            quiet_at = time.time() - 1.5
        # Traffic stopped and the services gone: once both have seen them down, no sample is
        # added any more and every answer below is stable.
        for u in (url, limited):
            wait_for_data(u, "max(up) == 0", timeout=10)
        # rate() extrapolates to the end of its window by the time since the last sample
        # while that is under 1.1 scrape intervals: past that, the answer stops moving.
        time.sleep(2)
        yield Fleet(url, limited, quiet_at)


@pytest.fixture(scope="module")
def prometheus_url(fleet: Fleet) -> str:
    return fleet.url


def checkout_policy() -> ServicePolicy:
    return embedded_policy().services["checkout"].model_copy(update={"window": WINDOW_SECONDS})


def releases() -> list[Release]:
    """Six releases per service over its twelve versions, one per service whose canary never
    served, and one of a service Prometheus never saw."""
    out = []
    plans = [(s, VERSIONS[i], VERSIONS[i + 1]) for s in SERVICES for i in range(0, 12, 2)]
    plans += [(s, "v1", "v99-never-served") for s in SERVICES]
    plans.append(("nobody", "v1", "v2"))
    for n, (service, stable, canary) in enumerate(plans):
        out.append(
            new_release(
                release_id=f"rel-{n}",
                number=n,
                service=service,
                version=canary,
                stable_version=stable,
                weights=[10, 50, 100],
                holds=[60.0, 60.0, 60.0],
                interval=30.0,
                bake=60.0,
                strategy=Strategy.CANARY,
                risk=Risk.NORMAL,
                notes="",
                actor=ACTOR,
                now=time.time(),
            )
        )
    return out


def planned() -> list[analysis.Plan]:
    sp = checkout_policy()
    return [analysis.plan(r, sp) for r in releases()]


def templated(
    template: str, pairs: list[tuple[str, str]], window: str = "900s"
) -> list[MetricQuery]:
    return [
        MetricQuery(
            key=f"{service}|{version}",
            promql=render_template(template, service=service, version=version, window=window),
            metric="m",
            service=service,
            version=version,
            side=Side.CANARY,
            template=template,
            window=window,
        )
        for service, version in pairs
    ]


def all_pairs() -> list[tuple[str, str]]:
    return [(s, v) for s in (*SERVICES, "nobody") for v in (*VERSIONS, "v99-never-served")]


@asynccontextmanager
async def both_ways(url: str) -> AsyncIterator[tuple[PrometheusSource, PrometheusSource]]:
    """(batched, per release): two sources on ``url`` that differ only in batching templates,
    both closed when the block ends."""
    batched = PrometheusSource(url)
    each = PrometheusSource(url, batch_templates=False)
    try:
        yield batched, each
    finally:
        await batched.close()
        await each.close()


def assert_same(batched: list[QueryResult], each: list[QueryResult]) -> None:
    assert [r.key for r in batched] == [r.key for r in each]
    for b, e in zip(batched, each, strict=True):
        assert (b.key, b.status, b.query, b.error) == (e.key, e.status, e.query, e.error)
        if e.value is None:
            assert b.value is None, b
        else:
            assert b.value == pytest.approx(e.value, rel=1e-9, abs=1e-12), b.key


def assert_same_series(batched: list[SeriesResult], each: list[SeriesResult]) -> None:
    for b, e in zip(batched, each, strict=True):
        assert (b.key, b.status, b.query, b.error) == (e.key, e.status, e.query, e.error)
        assert b.values == pytest.approx(e.values, rel=1e-9, abs=1e-12), b.key


async def test_the_plan_says_which_template_and_window_a_query_comes_from() -> None:
    (p, *_) = planned()
    sp = checkout_policy()
    templates = {m.name: m.query for m in sp.metrics} | {"requests": sp.requests_query}
    for q in [*p.instant, *(s.query for s in p.series)]:
        assert q.template == templates[q.metric]
        assert q.window == "900s"
        assert q.promql == render_template(
            q.template, service=q.service, version=q.version, window=q.window
        )


async def test_batched_answers_equal_per_release_answers(prometheus_url: str) -> None:
    plans = planned()
    queries = [q for p in plans for q in p.instant]
    assert len({(q.service, q.version) for q in queries}) >= 40
    async with both_ways(prometheus_url) as (batched, each):
        got = await batched.query(queries)
        expected = await each.query(queries)

    assert_same(got, expected)
    statuses = {r.status for r in got}
    assert statuses == {QueryStatus.OK, QueryStatus.NO_DATA}
    by_key = {r.key: r for r in got}
    for p in plans:
        canary = by_key[analysis.query_key(p.release.id, "error_rate", Side.CANARY)]
        served = p.release.service != "nobody" and p.release.version in VERSIONS
        assert (canary.status is QueryStatus.OK) == served, canary
    # error_rate, latency_p99 and the request count: one request each, whatever the number
    # of releases; the per-release way needs several.
    assert batched.requests_made == 3 == batched.template_requests
    assert batched.template_fallbacks == 0
    assert each.requests_made > 3 and each.template_requests == 0


async def test_batched_range_series_equal_per_release_series(prometheus_url: str) -> None:
    plans = planned()
    queries = [s.query for p in plans for s in p.series]
    assert len(queries) == 2 * len(plans)
    end = time.time()
    async with both_ways(prometheus_url) as (batched, each):
        got = await batched.query_series(queries, end - 120, end, 5)
        expected = await each.query_series(queries, end - 120, end, 5)
    assert_same_series(got, expected)
    assert sum(r.status is QueryStatus.OK for r in got) >= 36
    assert all(len(r.values) >= 2 for r in got if r.status is QueryStatus.OK)
    assert batched.requests_made == 1 == batched.template_requests
    assert each.requests_made > 1


@pytest.mark.parametrize(
    "template",
    [
        "topk(1, sum by (code) (increase(http_requests_total"
        '{service="{service}",version="{version}"}[{window}])))',
        'scalar(sum(increase(http_requests_total{service="{service}",version="{version}"}'
        "[{window}])))",
    ],
    ids=["topk", "scalar"],
)
async def test_templates_that_cannot_be_batched_go_per_release(
    prometheus_url: str, template: str
) -> None:
    queries = templated(template, all_pairs())
    async with both_ways(prometheus_url) as (batched, each):
        got = await batched.query(queries)
        expected = await each.query(queries)
    assert_same(got, expected)
    assert batched.template_requests == 0 and batched.requests_made == each.requests_made
    served = [r for r in got if r.key.split("|")[1] in VERSIONS and r.key[0] != "n"]
    assert len(served) == 36
    assert all(r.status is QueryStatus.OK and (r.value or 0) > 0 for r in served), served


async def test_a_batched_query_prometheus_refuses_falls_back(
    prometheus_url: str, fleet: Fleet, caplog: pytest.LogCaptureFixture
) -> None:
    # This Prometheus answers each release's request count but refuses to load the samples
    # of all of them at once. The query reads the counters where they stood still: an
    # instant selector loads every matching series at once (a range function reads them one
    # by one, which the limit does not see).
    offset = round((time.time() - fleet.quiet_at) * 1000)
    template = (
        f'sum(http_requests_total{{service="{{service}}",version="{{version}}"}} offset {offset}ms)'
    )
    queries = templated(template, all_pairs())
    async with both_ways(fleet.limited_url) as (batched, each):
        with caplog.at_level(logging.WARNING, logger="bot.metrics.prometheus"):
            got = await batched.query(queries)
        expected = await each.query(queries)
        assert_same(got, expected)
        assert sum(r.status is QueryStatus.OK for r in got) == 36
        assert batched.template_fallbacks == 1 and batched.template_requests == 0
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "too many samples" in warnings[0], warnings
        # Remembered: the next round goes per release at once, without trying again.
        sent = batched.requests_made
        assert_same(await batched.query(queries), expected)
        assert batched.requests_made - sent == each.requests_made
        assert batched.template_fallbacks == 1


async def test_a_template_prometheus_rejects_gets_each_query_its_own_error(
    prometheus_url: str,
) -> None:
    # Passes the rewrite (an unknown function is not its business); Prometheus refuses it,
    # batched or not, and each query then carries its own error, as before batching.
    template = 'sum(rat(http_requests_total{service="{service}",version="{version}"}[{window}]))'
    queries = templated(template, all_pairs()[:20])
    async with both_ways(prometheus_url) as (batched, each):
        got = await batched.query(queries)
        expected = await each.query(queries)
    assert_same(got, expected)
    assert all(r.status is QueryStatus.ERROR and "rat" in r.error for r in got), got[0]
    assert batched.template_fallbacks == 1


async def test_an_unreachable_prometheus_is_not_asked_per_release() -> None:
    template = embedded_policy().services["checkout"].requests_query
    src = PrometheusSource(f"http://127.0.0.1:{free_port()}", timeout=1.0)
    try:
        results = await src.query(templated(template, all_pairs()))
    finally:
        await src.close()
    assert all(r.status is QueryStatus.ERROR for r in results)
    assert all("connection refused" in r.error for r in results), results[0]
    assert src.requests_made == 1 and src.template_fallbacks == 0
