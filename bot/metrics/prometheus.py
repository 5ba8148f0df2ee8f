"""Metrics source that asks a real Prometheus, through ``prometheus-api-client``.

Every judgement needs a handful of instant queries per release (canary and control, one per
metric), and with several releases running a tick can easily need dozens. Sending each as its
own HTTP request multiplies the round trips, so ``query`` batches them:

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
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import requests
from prometheus_api_client import PrometheusConnect
from prometheus_api_client.exceptions import PrometheusApiClientException
from urllib3.exceptions import NewConnectionError
from urllib3.exceptions import TimeoutError as Urllib3Timeout
from urllib3.util.retry import Retry

from bot.errors import MetricsError
from bot.metrics.base import MetricQuery, QueryResult, QueryStatus, SeriesResult

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
    ) -> None:
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, got {timeout!r}")
        if max_batch_chars <= 0:
            raise ValueError(f"max_batch_chars must be positive, got {max_batch_chars!r}")
        self.url = url.rstrip("/")
        self.timeout = float(timeout)
        self.max_batch_chars = max_batch_chars
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
        # and batched requests Prometheus refused, which were then narrowed down.
        self.requests_made = 0
        self.batches_narrowed = 0

    # -- MetricSource ----------------------------------------------------------------------

    async def query(self, queries: Sequence[MetricQuery]) -> list[QueryResult]:
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
        return [answers[index[q.promql]].result_for(q) for q in queries]

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

        A batch that Prometheus rejects is asked query by query, so an error is attributed to
        its own query and the good ones still get their samples.
        """
        index: dict[str, int] = {}
        for q in queries:
            index.setdefault(q.promql, len(index))
        promqls = list(index)
        window = {
            "start_time": _as_datetime(start),
            "end_time": _as_datetime(end),
            "step": f"{step:g}",
        }
        found: dict[int, tuple[list[float], str]] = {}
        for chunk in self._chunks(promqls):
            found.update(await self._series_chunk(promqls, chunk, window))
        out = []
        for q in queries:
            values, error = found[index[q.promql]]
            out.append(SeriesResult.failed(q, error) if error else SeriesResult.ok(q, values))
        return out

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


def _split_batch(raw: object, items: Sequence[int]) -> dict[int, _Outcome]:
    if not isinstance(raw, list) or not all(isinstance(s, dict) for s in raw):
        bad = _error(f"unexpected answer to a batched query: {_shorten(repr(raw))}")
        return dict.fromkeys(items, bad)
    by_item: dict[int, list[dict[str, object]]] = {i: [] for i in items}
    for series in raw:
        metric = series.get("metric")
        tag = metric.get(TAG_LABEL) if isinstance(metric, dict) else None
        try:
            by_item[int(str(tag))].append(series)
        except (KeyError, ValueError):
            logger.warning("series without a known %s tag in a batch answer: %r", TAG_LABEL, metric)
    return {i: _vector_outcome(by_item[i]) for i in items}


def _split_series(raw: object, items: Sequence[int]) -> dict[int, tuple[list[float], str]]:
    if not isinstance(raw, list):
        return dict.fromkeys(items, ([], f"unexpected answer: {_shorten(repr(raw))}"))
    by_item: dict[int, list[object]] = {i: [] for i in items}
    for series in raw:
        metric = series.get("metric") if isinstance(series, dict) else None
        tag = metric.get(TAG_LABEL) if isinstance(metric, dict) else None
        try:
            by_item[int(str(tag))].append(series)
        except (KeyError, ValueError):
            logger.warning("series without a known %s tag in a batch answer: %r", TAG_LABEL, metric)
    return {i: _series_values(by_item[i]) for i in items}


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
