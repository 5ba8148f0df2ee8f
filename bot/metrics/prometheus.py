"""Metrics source that asks a real Prometheus, through ``prometheus-api-client``.

Every judgement needs a handful of instant queries per release (canary and control, one per
metric), and with several releases running a tick can easily need thousands. Two ways keep
the number of HTTP requests down.

**One query per template.** A query that says which template and window it was rendered
from (``MetricQuery.template``/``window``, filled by the analysis plan) is grouped with the
other releases' queries of the same template and window, and the group is asked as ONE
query over all their (service, version) pairs (``bot.metrics.promql_batch`` rewrites it and
splits the answer back by the two labels), so a round costs about one request per template
whatever the number of releases; a group whose regexes would pass
``max_template_batch_chars`` is split into a few requests. A template the rewrite cannot
prove safe (``topk``, ``scalar(``, ``on()`` without both labels, …) goes the per-release way
below. So does a group Prometheus refuses (4xx, ``bad_data``) or whose answer does not split
into one series per pair: in the same call, and the template is then not tried batched for
``unbatchable_for`` seconds (logged once, at warning, with the reason). A connection error or
a timeout is not retried query by query: every query of the group gets the error.

**Per release, joined with ``or``.** Everything else:

* identical PromQL within one call is asked once;
* each distinct query is tagged with a label of its own,
  ``label_replace(<q>, "shipwatch_q", "<n>", "", "")`` (an empty regex on a missing label
  always matches, so every series gets ``shipwatch_q="<n>"``), and the tagged queries are
  joined with ``or`` into as few requests as ``max_batch_chars`` allows. Their label sets
  differ by the tag, so ``or`` keeps every series and the answer splits back by the tag.

One bad query makes Prometheus reject the whole batch: a syntax error, a scalar (which
``label_replace`` does not take), a many-to-many match at evaluation time. Then the batch is
narrowed down rather than dropped: a parse error names a position in the batch text, which
points at the sub-query that caused it, so that one is asked alone (its own answer or error is
exact) and the others are sent again as a batch. Errors without a position (evaluation errors)
split the batch in halves. A query asked alone is never tagged, so a scalar query works.

Errors that are not about the query (connection refused, timeouts, 5xx, an answer that is not
Prometheus JSON) are not retried: every query of that request gets the error.

``PrometheusConnect`` is synchronous, so every call runs on a thread of the executor and is
bounded twice: by the HTTP timeout inside the thread and by ``asyncio.wait_for`` outside it,
and Prometheus is asked to give up evaluating after the same time.
"""

from __future__ import annotations

import ast
import asyncio
import functools
import json
import logging
import math
import re
import socket
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

import requests
from prometheus_api_client import PrometheusConnect
from prometheus_api_client.exceptions import PrometheusApiClientException
from urllib3.exceptions import NewConnectionError
from urllib3.exceptions import TimeoutError as Urllib3Timeout
from urllib3.util.retry import Retry

from bot.errors import MetricsError
from bot.metrics.base import MetricQuery, QueryResult, QueryStatus, SeriesResult
from bot.metrics.promql_batch import (
    AmbiguousAnswerError,
    BatchTemplate,
    NotBatchableError,
    Pair,
    analyse,
    encodable,
)
from bot.release.policy import render_template

logger = logging.getLogger(__name__)

TAG_LABEL = "shipwatch_q"
_JOINER = " or "
# Statuses with which Prometheus (or a proxy in front of it) refuses the query text itself, so
# a smaller batch can succeed: bad_data, execution errors, and "too large" from proxies.
_NARROWABLE_STATUSES = frozenset({400, 413, 414, 422, 431})
# The client formats a non-200 answer as: HTTP Status Code <code> (<repr of the body bytes>).
_HTTP_ERROR = re.compile(r"HTTP Status Code (\d+) \((b(['\"]).*\3)\)\Z", re.DOTALL)
_PARSE_POSITION = re.compile(r"(\d+):(\d+): parse error")
# Prometheus prefixes every rejected query with this; it says nothing the user needs.
_PARAM_PREFIX = 'invalid parameter "query": '
# Long enough for Prometheus' reason, short enough for a Slack message.
_MAX_MESSAGE = 300
_SERIES_PREVIEW = 3
# The longest query text of one template batch, about 1,000 typical (service, version) pairs.
# Prometheus itself takes far longer text (it arrives as a form body, not in the URL), but a
# query is evaluated on one core and bounded by the same timeout as any other request:
# several requests of this size run side by side on the executor (and on Prometheus' cores),
# one timing out costs the checks of its own releases only, and the text stays under the
# request-size limits of the proxies that commonly sit in front of Prometheus.
MAX_TEMPLATE_BATCH_CHARS = 20_000
# How long a template whose batched query Prometheus refused (or whose answer did not split)
# is asked per release before it is tried batched again: a fixed Prometheus or policy gets the
# saving back, a broken one costs one extra request per this period.
UNBATCHABLE_FOR = 600.0


class PrometheusQueryError(MetricsError):
    """A range query failed; ``query`` is the exact PromQL that was sent."""

    def __init__(self, query: str, message: str) -> None:
        super().__init__(f"{message}\nquery: {query}")
        self.query = query
        self.reason = message


class _FormPostSession(requests.Session):
    """A session that sends a POST's parameters as a form body instead of in the URL.

    PrometheusConnect(method="POST") still passes the query as ``params``, which requests puts
    in the URL; Prometheus reads the same parameters from an urlencoded body, which has no
    practical size limit.
    """

    def request(
        self, method: str, url: str | bytes, *args: Any, **kwargs: Any
    ) -> requests.Response:
        if method.upper() == "POST" and not args and kwargs.get("data") is None:
            kwargs["data"] = kwargs.pop("params", None)
        return super().request(method, url, *args, **kwargs)


class _RequestFailed(Exception):
    """One HTTP request to Prometheus failed; ``message`` is short and meant for users."""

    def __init__(self, message: str, *, status: int | None = None, prom_error: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.prom_error = prom_error

    @property
    def narrowable(self) -> bool:
        """Whether the failure is about the query text, so asking fewer queries may succeed."""
        return self.status in _NARROWABLE_STATUSES


@dataclass(frozen=True)
class _Group:
    """The queries of many releases rendered from one template and window; ``members`` maps
    each (service, version) pair to the indexes of the queries asking for it."""

    batch: BatchTemplate
    window: str
    members: dict[Pair, list[int]]


@dataclass(frozen=True)
class _Outcome:
    """The answer to one distinct PromQL, before it is attached to the MetricQuery(s) asking it."""

    status: QueryStatus
    value: float | None = None
    message: str = ""

    def result_for(self, q: MetricQuery) -> QueryResult:
        if self.status is QueryStatus.OK and self.value is not None:
            return QueryResult.ok(q, self.value)
        if self.status is QueryStatus.NO_DATA:
            return QueryResult.no_data(q, self.message) if self.message else QueryResult.no_data(q)
        return QueryResult.failed(q, self.message)


def _error(message: str) -> _Outcome:
    return _Outcome(QueryStatus.ERROR, None, _shorten(message))


# What one query's answer is read into: an _Outcome for instant queries, (samples, error) for
# range queries. The template-group machinery is the same for both, only the reading differs.
_Answer = TypeVar("_Answer")


@dataclass(frozen=True)
class _GroupReading(Generic[_Answer]):
    """How a template group's request is sent and its answer read, for one kind of query.

    ``samples`` is the key every series of the answer carries ("value" or "values"), ``kind``
    names the request in the warning when it fails, ``failed`` is every member's answer to such
    a failure, ``per_pair`` reads one pair's series (a list of none or one).
    """

    ask: Callable[[str], Awaitable[object]]
    samples: str
    kind: str
    failed: Callable[[str], _Answer]
    per_pair: Callable[[Sequence[object]], _Answer]


def _shorten(text: str) -> str:
    text = text.strip()
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 1] + "…"


def _seconds(value: float) -> str:
    return f"{value:g}s"


class PrometheusSource:
    """A ``MetricSource`` backed by a Prometheus server (or anything speaking its HTTP API)."""

    name: str = "prometheus"
    is_demo: bool = False

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 5.0,
        max_batch_chars: int = 6000,
        executor: ThreadPoolExecutor | None = None,
        headers: dict[str, str] | None = None,
        batch_templates: bool = True,
        max_template_batch_chars: int = MAX_TEMPLATE_BATCH_CHARS,
        unbatchable_for: float = UNBATCHABLE_FOR,
    ) -> None:
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, got {timeout!r}")
        if max_batch_chars <= 0:
            raise ValueError(f"max_batch_chars must be positive, got {max_batch_chars!r}")
        self.url = url.rstrip("/")
        self.timeout = float(timeout)
        self.max_batch_chars = max_batch_chars
        # False: every query goes the per-release way (how benchmarks measure the difference).
        self.batch_templates = batch_templates
        self.max_template_batch_chars = max_template_batch_chars
        self.unbatchable_for = unbatchable_for
        # Template -> monotonic time until which it is asked per release (Prometheus refused
        # its batched form); templates the rewrite refuses, already logged once.
        self._unbatchable: dict[str, float] = {}
        self._explained: set[str] = set()
        # No retries on the way: the client's default retries 5xx and connection errors with
        # backoff for seconds, which would blow through our timeout and hide an outage from
        # the judge. One immediate reconnect only, for a refused or reset connect.
        retry = Retry(total=1, connect=1, read=0, status=0, other=0, redirect=0, backoff_factor=0)
        # POST with a form body: a batch of tagged queries is long, and URL-encoded PromQL
        # grows by half again ({, ", spaces), past the 8 KB URL limit of common proxies.
        self._client = PrometheusConnect(
            url=self.url,
            headers=dict(headers) if headers else None,
            retry=retry,
            session=_FormPostSession(),
            timeout=self.timeout,
            method="POST",
        )
        self._owns_executor = executor is None
        # Few threads: the requests session shares one connection pool (10 connections by
        # default) among them, and more threads than connections only thrash the pool.
        self._executor = executor or ThreadPoolExecutor(
            max_workers=4, thread_name_prefix="shipwatch-prometheus"
        )
        self._closed = False
        # Counters for tests and benchmarks: HTTP requests sent (instant, range and checks),
        # batched requests Prometheus refused, which were then narrowed down, requests that
        # answered a template's group of releases, and such requests whose queries had to be
        # asked per release after all (refused, or an answer that did not split).
        self.requests_made = 0
        self.batches_narrowed = 0
        self.template_requests = 0
        self.template_fallbacks = 0

    # -- MetricSource ----------------------------------------------------------------------

    async def query(self, queries: Sequence[MetricQuery]) -> list[QueryResult]:
        reading = _GroupReading(
            ask=lambda text: self._call(self._client.custom_query, query=text),
            samples="value",
            kind="query",
            failed=_error,
            per_pair=_vector_outcome,
        )
        outcomes = await self._answer_grouped(queries, self._query_each, reading)
        return [outcomes[i].result_for(q) for i, q in enumerate(queries)]

    async def _query_each(self, queries: Sequence[MetricQuery]) -> list[_Outcome]:
        """Per-release answers, the per-release PromQL of several queries joined with ``or``."""
        # Deduplicate: canary and control of different releases often share a query, and a
        # key may be asked twice in one tick; a dict keeps first-seen order.
        index: dict[str, int] = {}
        for q in queries:
            index.setdefault(q.promql, len(index))
        promqls = list(index)
        if not promqls:
            return []

        chunks = self._chunks(promqls)
        logger.debug(
            "asking %d queries (%d distinct) in %d batch(es)",
            len(queries),
            len(promqls),
            len(chunks),
        )
        answers: dict[int, _Outcome] = {}
        for part in await asyncio.gather(*(self._resolve(promqls, c) for c in chunks)):
            answers.update(part)
        return [answers[index[q.promql]] for q in queries]

    async def check(self) -> None:
        """Raise MetricsError unless Prometheus answers a trivial query correctly.

        The query API answers 503 until Prometheus is ready (TSDB loaded), so this covers
        "unreachable", "not ready" and "not Prometheus at all".
        """
        try:
            raw = await self._call(self._client.custom_query, query="vector(1)")
        except _RequestFailed as exc:
            raise MetricsError(f"Prometheus at {self.url} is not usable: {exc.message}") from exc
        outcome = _vector_outcome(raw) if isinstance(raw, list) else _error("not a vector")
        if outcome.status is not QueryStatus.OK or outcome.value != 1.0:
            raise MetricsError(
                f"{self.url} does not answer like Prometheus: vector(1) gave {_shorten(repr(raw))}"
            )

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # Off the loop: shutting down waits for a request still running on a thread, which
        # is bounded by the timeout but can take that long.
        await asyncio.to_thread(self._shutdown)

    def _shutdown(self) -> None:
        self._client.close()
        if self._owns_executor:
            self._executor.shutdown(wait=True, cancel_futures=True)

    # -- range queries -----------------------------------------------------------------------

    async def query_range(
        self,
        promql: str,
        start: datetime | float,
        end: datetime | float,
        step: float | str,
    ) -> list[tuple[float, float]]:
        """(timestamp, value) samples of a query returning one series, oldest first.

        ``start``/``end`` are datetimes or unix seconds (Prometheus' client rounds them to whole
        seconds), ``step`` is seconds or a Prometheus duration ("15s"). No series gives an
        empty list. Non-finite samples (a 0/0 ratio over an idle step) are dropped: a
        statistical comparison can do nothing with them. Raises PrometheusQueryError, a
        MetricsError carrying the query, when the request fails or the query returns several
        series.
        """
        try:
            raw = await self._call(
                self._client.custom_query_range,
                query=promql,
                start_time=_as_datetime(start),
                end_time=_as_datetime(end),
                step=step if isinstance(step, str) else f"{step:g}",
            )
        except _RequestFailed as exc:
            raise PrometheusQueryError(promql, exc.message) from exc
        if not isinstance(raw, list) or not all(isinstance(s, dict) and "values" in s for s in raw):
            raise PrometheusQueryError(promql, f"unexpected answer: {_shorten(repr(raw))}")
        if not raw:
            return []
        if len(raw) > 1:
            raise PrometheusQueryError(promql, _too_many_series(raw))
        samples: list[tuple[float, float]] = []
        try:
            for ts, text in raw[0]["values"]:
                value = float(text)
                if math.isfinite(value):
                    samples.append((float(ts), value))
        except (TypeError, ValueError) as exc:
            raise PrometheusQueryError(promql, f"unexpected sample in the answer: {exc}") from exc
        return samples

    async def query_series(
        self, queries: Sequence[MetricQuery], start: float, end: float, step: float
    ) -> list[SeriesResult]:
        """Range queries for the statistical judge, batched like instant ones.

        A template's group of releases is one range query, split back by pair, as for
        ``query``. A batch that Prometheus rejects is asked query by query, so an error is
        attributed to its own query and the good ones still get their samples.
        """
        window = {
            "start_time": _as_datetime(start),
            "end_time": _as_datetime(end),
            "step": f"{step:g}",
        }
        reading: _GroupReading[tuple[list[float], str]] = _GroupReading(
            ask=lambda text: self._call(self._client.custom_query_range, query=text, **window),
            samples="values",
            kind="range query",
            failed=lambda message: ([], message),
            per_pair=_series_values,
        )
        found = await self._answer_grouped(
            queries, lambda each: self._series_each(each, window), reading
        )
        out = []
        for i, q in enumerate(queries):
            values, error = found[i]
            out.append(SeriesResult.failed(q, error) if error else SeriesResult.ok(q, values))
        return out

    async def _series_each(
        self, queries: Sequence[MetricQuery], window: dict[str, object]
    ) -> list[tuple[list[float], str]]:
        """Per-release samples (or an error text), several queries per request."""
        index: dict[str, int] = {}
        for q in queries:
            index.setdefault(q.promql, len(index))
        promqls = list(index)
        found: dict[int, tuple[list[float], str]] = {}
        for chunk in self._chunks(promqls):
            found.update(await self._series_chunk(promqls, chunk, window))
        return [found[index[q.promql]] for q in queries]

    async def _series_chunk(
        self, promqls: Sequence[str], chunk: list[int], window: dict[str, object]
    ) -> dict[int, tuple[list[float], str]]:
        if len(chunk) > 1:
            text, _ = _batch_text(promqls, chunk)
            try:
                raw = await self._call(self._client.custom_query_range, query=text, **window)
            except _RequestFailed as exc:
                if not exc.narrowable:
                    return dict.fromkeys(chunk, ([], exc.message))
                self.batches_narrowed += 1
            else:
                return _split_series(raw, chunk)
        answers = await asyncio.gather(*(self._series_alone(promqls[i], window) for i in chunk))
        return dict(zip(chunk, answers, strict=True))

    async def _series_alone(
        self, promql: str, window: dict[str, object]
    ) -> tuple[list[float], str]:
        try:
            raw = await self._call(self._client.custom_query_range, query=promql, **window)
        except _RequestFailed as exc:
            return [], exc.message
        return _series_values(raw if isinstance(raw, list) else [])

    # -- one query per template ----------------------------------------------------------------

    def _template_groups(self, queries: Sequence[MetricQuery]) -> tuple[list[_Group], list[int]]:
        """The queries that can be asked per template, grouped by (template, window), and the
        indexes of the others. A group of one pair gains nothing, so it stays with the others:
        they share requests with ``or``."""
        by_template: dict[tuple[str, str], dict[Pair, list[int]]] = {}
        batches: dict[str, BatchTemplate] = {}
        rest: list[int] = []
        for i, q in enumerate(queries):
            batch = self._batchable(q) if self.batch_templates else None
            if batch is None:
                rest.append(i)
                continue
            batches[q.template] = batch
            members = by_template.setdefault((q.template, q.window), {})
            members.setdefault((q.service, q.version), []).append(i)
        groups: list[_Group] = []
        for (template, window), members in by_template.items():
            if len(members) < 2:
                rest += [i for indexes in members.values() for i in indexes]
            else:
                groups.append(_Group(batches[template], window, members))
        rest.sort()
        return groups, rest

    def _batchable(self, q: MetricQuery) -> BatchTemplate | None:
        if not q.template or not q.window:
            return None
        until = self._unbatchable.get(q.template)
        if until is not None:
            if asyncio.get_running_loop().time() < until:
                return None
            del self._unbatchable[q.template]
        try:
            batch = analyse(q.template)
        except NotBatchableError as exc:
            if q.template not in self._explained:
                self._explained.add(q.template)
                logger.info("asking %r per release: %s", q.template, exc.reason)
            return None
        # The batched query stands for the per-release one only if that is what was rendered
        # from the template; a value that cannot be encoded is left to fail on its own.
        rendered = render_template(
            q.template, service=q.service, version=q.version, window=q.window
        )
        if rendered != q.promql or not (encodable(q.service) and encodable(q.version)):
            return None
        return batch

    def _give_up(self, template: str, reason: str) -> None:
        """Ask ``template`` per release for a while; say so once."""
        self.template_fallbacks += 1
        if template not in self._unbatchable:
            logger.warning(
                "asking %r per release for the next %gs: its query for many releases failed: %s",
                template,
                self.unbatchable_for,
                reason,
            )
        self._unbatchable[template] = asyncio.get_running_loop().time() + self.unbatchable_for

    async def _answer_grouped(
        self,
        queries: Sequence[MetricQuery],
        ask_each: Callable[[Sequence[MetricQuery]], Awaitable[list[_Answer]]],
        reading: _GroupReading[_Answer],
    ) -> dict[int, _Answer]:
        """Every query's answer by index: template groups one request per chunk, the rest (and
        any group that falls back) per release through ``ask_each``."""
        groups, rest = self._template_groups(queries)
        answers: dict[int, _Answer] = {}
        fallback: list[int] = []
        # The groups and the per-release rest go out together; a group that falls back is
        # asked per release once the first answers are in.
        each, batched = await asyncio.gather(
            ask_each([queries[i] for i in rest]),
            asyncio.gather(*(self._group_answers(g, reading) for g in groups)),
        )
        answers.update(zip(rest, each, strict=True))
        for answered, failed in batched:
            answers.update(answered)
            fallback += failed
        if fallback:
            again = await ask_each([queries[i] for i in fallback])
            answers.update(zip(fallback, again, strict=True))
        return answers

    async def _group_answers(
        self, group: _Group, reading: _GroupReading[_Answer]
    ) -> tuple[dict[int, _Answer], list[int]]:
        """Answers of a group (one request per chunk of pairs), and the indexes of the queries
        that have to be asked per release after all."""
        chunks = group.batch.chunks(group.window, group.members, self.max_template_batch_chars)
        answered: dict[int, _Answer] = {}
        fallback: list[int] = []
        for part, failed in await asyncio.gather(
            *(self._group_chunk(group, c, reading) for c in chunks)
        ):
            answered.update(part)
            fallback += failed
        return answered, fallback

    async def _group_chunk(
        self, group: _Group, pairs: list[Pair], reading: _GroupReading[_Answer]
    ) -> tuple[dict[int, _Answer], list[int]]:
        indexes = [i for p in pairs for i in group.members[p]]
        text = group.batch.render(group.window, pairs)
        try:
            raw = await reading.ask(text)
        except _RequestFailed as exc:
            if exc.narrowable:
                self._give_up(group.batch.template, exc.message)
                return {}, indexes
            logger.warning(
                "Prometheus %s for %d releases failed: %s", reading.kind, len(pairs), exc.message
            )
            return dict.fromkeys(indexes, reading.failed(exc.message)), []
        self.template_requests += 1
        try:
            found = _split_group(group.batch, raw, pairs, reading.samples)
        except AmbiguousAnswerError as exc:
            self._give_up(group.batch.template, str(exc))
            return {}, indexes
        answered: dict[int, _Answer] = {}
        for pair in pairs:
            series = found.get(pair)
            answer = reading.per_pair([series] if series is not None else [])
            answered.update(dict.fromkeys(group.members[pair], answer))
        return answered, []

    # -- batching ----------------------------------------------------------------------------

    def _chunks(self, promqls: Sequence[str]) -> list[list[int]]:
        """Group query indexes so each batch's text stays under ``max_batch_chars``.

        A query too long to share a batch gets one of its own (and is sent untagged).
        """
        chunks: list[list[int]] = []
        current: list[int] = []
        size = 0
        for i, promql in enumerate(promqls):
            cost = len(_tag(promql, i)) + (len(_JOINER) if current else 0)
            if current and size + cost > self.max_batch_chars:
                chunks.append(current)
                current, size = [], 0
                cost = len(_tag(promql, i))
            current.append(i)
            size += cost
        if current:
            chunks.append(current)
        return chunks

    async def _resolve(self, promqls: Sequence[str], items: list[int]) -> dict[int, _Outcome]:
        """Answers for ``items`` (indexes into ``promqls``), narrowing a rejected batch down."""
        if len(items) == 1:
            return {items[0]: await self._ask_alone(promqls[items[0]])}

        text, spans = _batch_text(promqls, items)
        try:
            raw = await self._call(self._client.custom_query, query=text)
        except _RequestFailed as exc:
            if not exc.narrowable:
                logger.warning("Prometheus batch of %d queries failed: %s", len(items), exc.message)
                return dict.fromkeys(items, _error(exc.message))
            self.batches_narrowed += 1
            culprit = _culprit(exc.prom_error, text, items, spans)
            if culprit is not None:
                logger.info(
                    "batch of %d rejected, parse error in query %r; asking it alone",
                    len(items),
                    promqls[culprit],
                )
                parts = [[culprit], [i for i in items if i != culprit]]
            else:
                logger.info("batch of %d rejected (%s); splitting it", len(items), exc.message)
                half = len(items) // 2
                parts = [items[:half], items[half:]]
            answers: dict[int, _Outcome] = {}
            for part in await asyncio.gather(*(self._resolve(promqls, p) for p in parts)):
                answers.update(part)
            return answers
        return _split_batch(raw, items)

    async def _ask_alone(self, promql: str) -> _Outcome:
        try:
            raw = await self._call(self._client.custom_query, query=promql)
        except _RequestFailed as exc:
            return _error(exc.message)
        return _single_outcome(raw)

    # -- the one place that talks to the client ------------------------------------------------

    async def _call(self, method: Callable[..., object], **kwargs: object) -> object:
        """Run one client call on the executor, bounded in time; failures become _RequestFailed."""
        if self._closed:
            raise _RequestFailed("the Prometheus source is closed")
        self.requests_made += 1
        # The client passes ``params`` through to the API: Prometheus' own evaluation timeout,
        # so a slow query stops using its CPU when we stop waiting for it.
        call = functools.partial(
            method, params={"timeout": f"{self.timeout:g}"}, timeout=self.timeout, **kwargs
        )
        loop = asyncio.get_running_loop()
        try:
            future = loop.run_in_executor(self._executor, call)
        except RuntimeError as exc:  # the executor was shut down under us
            raise _RequestFailed(f"the Prometheus source is closed ({exc})") from exc
        try:
            return await asyncio.wait_for(future, self.timeout)
        except TimeoutError as exc:
            raise _RequestFailed(f"timed out after {_seconds(self.timeout)}") from exc
        except PrometheusApiClientException as exc:
            raise self._http_failure(exc) from exc
        except requests.exceptions.JSONDecodeError as exc:
            raise _RequestFailed(
                f"{self.url} did not answer with Prometheus JSON (is it Prometheus?)"
            ) from exc
        except requests.RequestException as exc:
            if _is_timeout(exc):
                raise _RequestFailed(f"timed out after {_seconds(self.timeout)}") from exc
            raise _RequestFailed(f"cannot reach Prometheus at {self.url}: {_reason(exc)}") from exc
        except (KeyError, TypeError, ValueError) as exc:
            # A 200 whose JSON lacks data.result: something else answers on that URL.
            raise _RequestFailed(
                f"{self.url} answered with unexpected JSON ({type(exc).__name__}: {exc})"
            ) from exc

    def _http_failure(self, exc: PrometheusApiClientException) -> _RequestFailed:
        match = _HTTP_ERROR.match(str(exc))
        if match is None:
            return _RequestFailed(f"Prometheus request failed: {_shorten(str(exc))}")
        status = int(match.group(1))
        try:
            body = ast.literal_eval(match.group(2))
        except (ValueError, SyntaxError):
            body = b""
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else ""
        try:
            payload = json.loads(text)
        except ValueError:
            payload = None
        if isinstance(payload, dict) and isinstance(payload.get("error"), str):
            error_type = str(payload.get("errorType", "error"))
            prom_error: str = payload["error"].removeprefix(_PARAM_PREFIX)
            if error_type == "timeout":
                message = f"timed out after {_seconds(self.timeout)} (Prometheus: {prom_error})"
            else:
                message = f"Prometheus rejected it (HTTP {status} {error_type}): {prom_error}"
            return _RequestFailed(_shorten(message), status=status, prom_error=prom_error)
        snippet = " ".join(text.split())[:120]
        return _RequestFailed(
            f"Prometheus answered HTTP {status}" + (f": {snippet}" if snippet else ""),
            status=status,
        )


# -- helpers without state --------------------------------------------------------------------


def _tag(promql: str, index: int) -> str:
    # The newline ends a trailing "# comment" in the query, which would otherwise swallow the
    # rest of the wrapper (PromQL comments run to the end of the line).
    return f'label_replace({promql}\n, "{TAG_LABEL}", "{index}", "", "")'


def _batch_text(promqls: Sequence[str], items: Sequence[int]) -> tuple[str, list[tuple[int, int]]]:
    """The batched query, and each item's [start, end) byte span in it (tag and joiner included).

    Byte spans, because Prometheus reports parse error positions in bytes.
    """
    parts = [_tag(promqls[i], i) for i in items]
    spans: list[tuple[int, int]] = []
    offset = 0
    joiner = len(_JOINER.encode())
    for part in parts:
        end = offset + len(part.encode()) + joiner
        spans.append((offset, end))
        offset = end
    return _JOINER.join(parts), spans


def _culprit(
    prom_error: str, text: str, items: Sequence[int], spans: Sequence[tuple[int, int]]
) -> int | None:
    """The item a parse error's ``line:col`` falls into, or None when it has no position.

    The position can land in a good query when a broken one swallows what follows it (an
    unclosed quote), which costs a request but never a wrong answer: the query asked alone
    gets its own result, and the rest is tried again.
    """
    match = _PARSE_POSITION.search(prom_error)
    if match is None:
        return None
    line, col = int(match.group(1)), int(match.group(2))
    lines = text.encode().split(b"\n")
    if not 1 <= line <= len(lines):
        return None
    offset = sum(len(b) + 1 for b in lines[: line - 1]) + col - 1
    for item, (start, end) in zip(items, spans, strict=True):
        if start <= offset < end:
            return item
    return None


def _split_group(
    batch: BatchTemplate, raw: object, pairs: Sequence[Pair], samples: str
) -> dict[Pair, object]:
    """The answer of a template's group split by pair; ``samples`` is the key every series
    must carry ("value" for an instant vector, "values" for a range query's matrix). Anything
    else (a scalar, a range vector from an instant query) is what the per-release queries
    should report, each in its own words, so it counts as not splitting."""
    if not isinstance(raw, list):
        raise AmbiguousAnswerError(f"the answer is not a list of series: {_shorten(repr(raw))}")
    for series in raw:
        if not isinstance(series, dict) or samples not in series:
            raise AmbiguousAnswerError(f"unexpected series in the answer: {_shorten(repr(series))}")
    return batch.split(raw, set(pairs))


def _split_batch(raw: object, items: Sequence[int]) -> dict[int, _Outcome]:
    if not isinstance(raw, list) or not all(isinstance(s, dict) for s in raw):
        bad = _error(f"unexpected answer to a batched query: {_shorten(repr(raw))}")
        return dict.fromkeys(items, bad)
    by_item = _by_tag(raw, items)
    return {i: _vector_outcome(by_item[i]) for i in items}


def _split_series(raw: object, items: Sequence[int]) -> dict[int, tuple[list[float], str]]:
    if not isinstance(raw, list):
        return dict.fromkeys(items, ([], f"unexpected answer: {_shorten(repr(raw))}"))
    by_item = _by_tag(raw, items)
    return {i: _series_values(by_item[i]) for i in items}


def _by_tag(raw: list[object], items: Sequence[int]) -> dict[int, list[object]]:
    """The series of a batched answer (instant or range) by the item their tag names; a series
    without a known tag is logged and left out, so its query reads as having none."""
    by_item: dict[int, list[object]] = {i: [] for i in items}
    for series in raw:
        metric = series.get("metric") if isinstance(series, dict) else None
        tag = metric.get(TAG_LABEL) if isinstance(metric, dict) else None
        try:
            by_item[int(str(tag))].append(series)
        except (KeyError, ValueError):
            logger.warning("series without a known %s tag in a batch answer: %r", TAG_LABEL, metric)
    return by_item


def _series_values(series: Sequence[object]) -> tuple[list[float], str]:
    """Finite sample values of one series; an error text when there are several series."""
    if len(series) > 1:
        return [], _too_many_series(series)
    if not series:
        return [], ""
    only = series[0]
    samples = only.get("values") if isinstance(only, dict) else None
    if not isinstance(samples, list):
        return [], f"unexpected series in the answer: {_shorten(repr(only))}"
    values: list[float] = []
    for sample in samples:
        try:
            value = float(sample[1])
        except (TypeError, ValueError, IndexError):
            return [], f"unexpected sample in the answer: {_shorten(repr(sample))}"
        # A 0/0 ratio over an idle step is NaN: nothing a statistical comparison can use.
        if math.isfinite(value):
            values.append(value)
    return values, ""


def _single_outcome(raw: object) -> _Outcome:
    """Classify the result of one untagged query: vector, scalar/string, or range vector."""
    if (
        isinstance(raw, list)
        and len(raw) == 2
        and isinstance(raw[0], int | float)
        and isinstance(raw[1], str)
    ):
        # custom_query drops resultType; a scalar (or string) result is a bare [time, "value"].
        return _value_outcome(raw[1])
    if isinstance(raw, list) and all(isinstance(s, dict) for s in raw):
        if any("values" in s for s in raw):
            return _error(
                "the query returns a range vector; it must be an instant query, "
                "e.g. rate(metric[5m]) instead of metric[5m]"
            )
        return _vector_outcome(raw)
    return _error(f"unexpected answer: {_shorten(repr(raw))}")


def _vector_outcome(series: Sequence[object]) -> _Outcome:
    if not series:
        return _Outcome(QueryStatus.NO_DATA)
    if len(series) > 1:
        return _error(_too_many_series(series))
    only = series[0]
    value = only.get("value") if isinstance(only, dict) else None
    if not isinstance(value, list) or len(value) != 2:
        return _error(f"unexpected series in the answer: {_shorten(repr(only))}")
    return _value_outcome(value[1])


def _value_outcome(text: object) -> _Outcome:
    try:
        value = float(str(text))
    except ValueError:
        return _error(f"the query returned {text!r}, not a number")
    if math.isnan(value):
        return _Outcome(
            QueryStatus.NO_DATA, None, "the query returned NaN (a 0/0: no traffic in the window?)"
        )
    if math.isinf(value):
        return _Outcome(
            QueryStatus.NO_DATA, None, f"the query returned {value:+} (a division by zero)"
        )
    return _Outcome(QueryStatus.OK, value)


def _too_many_series(series: Sequence[object]) -> str:
    labels = []
    for s in series[:_SERIES_PREVIEW]:
        metric = s.get("metric") if isinstance(s, dict) else None
        pairs = metric.items() if isinstance(metric, dict) else ()
        labels.append("{" + ", ".join(f'{k}="{v}"' for k, v in pairs if k != TAG_LABEL) + "}")
    more = ", …" if len(series) > _SERIES_PREVIEW else ""
    return (
        f"the query returned {len(series)} series ({', '.join(labels)}{more}) but must return "
        "exactly one: aggregate it, e.g. sum(...) or sum without (instance) (...)"
    )


def _is_timeout(exc: BaseException) -> bool:
    """Whether a requests/urllib3 error is a timeout, wherever in its chain it hides.

    Depending on the retry path, a read timeout arrives as requests' ReadTimeout or as a
    ConnectionError wrapping urllib3's MaxRetryError(ReadTimeoutError).
    """
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, requests.Timeout | TimeoutError):
            return True
        # urllib3 counts "connection refused" as a connect timeout; it is not one.
        if isinstance(e, Urllib3Timeout) and not isinstance(e, NewConnectionError):
            return True
        reason = getattr(e, "reason", None)
        todo.extend(
            [reason if isinstance(reason, BaseException) else None, e.__cause__, e.__context__]
        )
        todo.extend(a for a in e.args if isinstance(a, BaseException))
    return False


def _reason(exc: BaseException) -> str:
    """The root cause of a connection error in a few words (the raw text repeats the URL)."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, ConnectionRefusedError):
            return "connection refused"
        if isinstance(e, ConnectionResetError):
            return "connection reset"
        if isinstance(e, socket.gaierror):
            return f"cannot resolve the host ({e})"
        reason = getattr(e, "reason", None)
        todo.extend(
            [reason if isinstance(reason, BaseException) else None, e.__cause__, e.__context__]
        )
        todo.extend(a for a in e.args if isinstance(a, BaseException))
    return _shorten(type(exc).__name__ + ": " + str(exc))[:120]


def _as_datetime(moment: datetime | float) -> datetime:
    return moment if isinstance(moment, datetime) else datetime.fromtimestamp(moment, UTC)
