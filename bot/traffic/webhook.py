"""Traffic backend that hands every weight change to an HTTP endpoint you run.

Put a small receiver in front of whatever really moves users (a mesh, a load balancer, a flag
system) and shipwatch POSTs one JSON document to it per change::

    {"action":"shift","release_id":"r-42","service":"checkout","stable_version":"1.4.0",
     "version":"1.5.0","weight":25}

The body is compact JSON with sorted keys, encoded as UTF-8. ``action`` is one of ``start``,
``shift``, ``promote``, ``rollback`` or ``hand_back`` (after a success, once the stable side runs
``version`` too: weight 0, everyone to the stable side); ``weight`` is the percent of users on
``version``.

Headers on every attempt::

    Content-Type:          application/json
    User-Agent:            shipwatch
    X-Shipwatch-Delivery:  a UUID4, the same on every retry of one change (dedupe on it)
    X-Shipwatch-Timestamp: unix seconds at which this attempt was signed
    X-Shipwatch-Signature: v1=<hex HMAC-SHA256(secret, "v1:" + timestamp + ":" + body)>

The signature header is only sent when a secret is configured. To check a delivery, pass the
raw request body bytes (exactly as received, never the re-serialised JSON) together with the two
header values to :func:`bot.signing.verify_signature` (also importable from here). It recomputes
the HMAC, compares in constant time and rejects a timestamp more than ``tolerance`` seconds
(default five minutes) away from the receiver's clock, so a captured request cannot be replayed
later. Every retry is signed afresh with a new timestamp, which is why a delivery retried for a
long time never goes stale, and why receivers must dedupe on the delivery id rather than on the
signature.

What the receiver's answer means:

* 2xx: the change is applied.
* 408, 429 and 5xx (and connection errors and timeouts): retried with capped exponential
  backoff; a ``Retry-After`` header (seconds or an HTTP date) is honoured, also capped.
* anything else: the receiver refused the change; it is not retried. Redirects are not
  followed either, because a redirected POST turns into a body-less GET on the way: configure
  the final URL instead.

A rollback is never given up on: it is retried (every status, with backoff capped at
``rollback_retry_cap``) until the receiver accepts it, logging an error on every failed attempt.
Callers run it in a background task and cancel that task if they must stop.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import math
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC

import aiohttp
from yarl import URL

from bot.errors import TrafficError
from bot.redact import redact_url
from bot.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign, verify_signature
from bot.traffic.base import Applied, TrafficAction, TrafficChange

logger = logging.getLogger(__name__)

DELIVERY_HEADER = "X-Shipwatch-Delivery"
USER_AGENT = "shipwatch"

# The headers that make up the protocol. Extra static headers may not replace them: a
# configured "Content-Type" or "X-Shipwatch-Signature" would silently break every receiver.
_PROTOCOL_HEADERS = frozenset(
    h.lower()
    for h in ("Content-Type", "User-Agent", SIGNATURE_HEADER, TIMESTAMP_HEADER, DELIVERY_HEADER)
)
# Statuses that say "not now" rather than "no".
_RETRYABLE_4XX = frozenset({408, 429})
# How much of a refusal's body goes into the error message: enough for the receiver's reason,
# not so much that an HTML error page floods the log or the Slack message.
_SNIPPET_BYTES = 512
_SNIPPET_CHARS = 200
# Keeps `2 ** n` finite during a rollback that is retried for days.
_MAX_BACKOFF_EXPONENT = 30


def _applied_from(data: object, where: str) -> Applied:
    weight = data.get("weight") if isinstance(data, dict) else "missing"
    if weight is not None and (
        isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= 100
    ):
        raise TrafficError(
            f"webhook read-back {where} answered {str(data)[:200]!r}: expected "
            '{"weight": 0..100 or null, "version": "...", "stable_version": "..."}'
        )
    assert isinstance(data, dict)
    return Applied(weight, str(data.get("version") or ""), str(data.get("stable_version") or ""))


def encode_change(change: TrafficChange) -> bytes:
    """The exact body sent for ``change``: compact JSON, sorted keys, UTF-8."""
    payload = {
        "service": change.service,
        "version": change.version,
        "stable_version": change.stable_version,
        "weight": change.weight,
        "action": change.action.value,
        "release_id": change.release_id,
    }
    return json.dumps(payload, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode(
        "utf-8"
    )


def _parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After value, or None when absent or unreadable.

    Fractional seconds are accepted as well as the standard integer and HTTP-date forms.
    """
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - now
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


class _RefusedResponse(Exception):
    """A non-2xx answer, turned into an exception so the final TrafficError can chain it."""


@dataclass(frozen=True, slots=True)
class _Failure:
    description: str
    retryable: bool
    retry_after: float | None
    cause: BaseException


class WebhookBackend:
    """Applies weight changes by POSTing them, signed, to a receiver you run.

    ``retries`` is the total number of attempts for one change (the first one counts), except
    for rollbacks, which are retried until they succeed. ``backoff`` is the first wait; each
    further wait doubles, up to ``max_backoff`` (``rollback_retry_cap`` for rollbacks), which
    also caps a receiver's ``Retry-After``. ``timeout`` bounds each attempt, including reading
    the answer. A ``session`` passed in is borrowed and left open by :meth:`close`.
    """

    name = "webhook"

    def __init__(
        self,
        url: str,
        secret: str | None = None,
        *,
        timeout: float = 5.0,
        retries: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 10.0,
        rollback_retry_cap: float = 5.0,
        session: aiohttp.ClientSession | None = None,
        headers: Mapping[str, str] | None = None,
        read_url: str | None = None,
    ) -> None:
        parsed = URL(url)
        if read_url is not None and URL(read_url).scheme not in ("http", "https"):
            raise ValueError(
                f"webhook read_url must be an absolute http(s) URL, got {redact_url(read_url)!r}"
            )
        self._read_url = read_url
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError(
                f"webhook url must be an absolute http(s) URL, got {redact_url(url)!r}"
            )
        if secret == "":
            raise ValueError("webhook secret must be non-empty, or None to send unsigned requests")
        if timeout <= 0:
            raise ValueError(f"webhook timeout must be positive, got {timeout}")
        if retries < 1:
            raise ValueError(
                f"webhook retries is the number of attempts and must be >= 1, got {retries}"
            )
        if backoff < 0 or max_backoff < 0:
            raise ValueError("webhook backoff and max_backoff must not be negative")
        if rollback_retry_cap <= 0:
            # Zero would retry a failing rollback in a tight loop against a struggling receiver.
            raise ValueError(
                f"webhook rollback_retry_cap must be positive, got {rollback_retry_cap}"
            )
        extra = dict(headers or {})
        clashing = sorted(h for h in extra if h.lower() in _PROTOCOL_HEADERS)
        if clashing:
            raise ValueError(f"webhook headers may not override {', '.join(clashing)}")

        self._url = parsed
        self._safe_url = redact_url(parsed)
        self._secret = secret
        self._timeout = timeout
        self._client_timeout = aiohttp.ClientTimeout(total=timeout)
        self._retries = retries
        self._backoff = backoff
        self._max_backoff = max_backoff
        self._rollback_retry_cap = rollback_retry_cap
        self._extra_headers = extra
        self._session = session
        self._owns_session = session is None
        self._closed = False
        self._url_secrets = self._secret_fragments(parsed)

    @property
    def url(self) -> str:
        """The target URL with credentials and query removed."""
        return self._safe_url

    async def apply(self, change: TrafficChange) -> None:
        if self._closed:
            raise RuntimeError("the webhook backend is closed")
        session = self._get_session()
        body = encode_change(change)
        delivery = str(uuid.uuid4())
        rollback = change.action is TrafficAction.ROLLBACK
        what = f"{change.action.value} {change.service} {change.version} to {change.weight}%"
        attempt = 0
        applied = False
        try:
            while True:
                if self._closed:
                    # Closed while retrying (a shutdown): stop here, even if a cancel was lost;
                    # the release record still says what to finish, and the next owner does.
                    raise TrafficError(f"webhook backend closed while retrying {what}")
                attempt += 1
                failure = await self._attempt(session, body, delivery)
                if failure is None:
                    applied = True
                    # A retried change is worth a line; the usual first-time success is not.
                    logger.log(
                        logging.INFO if attempt > 1 else logging.DEBUG,
                        "webhook %s applied %s (delivery %s) after %d attempt(s)",
                        self._safe_url,
                        what,
                        delivery,
                        attempt,
                    )
                    return
                if rollback:
                    delay = self._delay(attempt, failure.retry_after, self._rollback_retry_cap)
                    logger.error(
                        "ROLLBACK NOT YET APPLIED: webhook %s failed attempt %d for %s "
                        "(delivery %s): %s; users may still be on %s, retrying in %.2fs",
                        self._safe_url,
                        attempt,
                        what,
                        delivery,
                        failure.description,
                        change.version,
                        delay,
                    )
                    await asyncio.sleep(delay)
                    continue
                if not failure.retryable:
                    raise TrafficError(
                        f"webhook {self._safe_url} refused {what}: {failure.description} "
                        f"(after {attempt} attempt{'s' if attempt != 1 else ''}; not retried)"
                    ) from failure.cause
                if attempt >= self._retries:
                    raise TrafficError(
                        f"webhook {self._safe_url} failed to apply {what} after {attempt} "
                        f"attempt{'s' if attempt != 1 else ''}: last error {failure.description}"
                    ) from failure.cause
                delay = self._delay(attempt, failure.retry_after, self._max_backoff)
                logger.warning(
                    "webhook %s attempt %d/%d for %s (delivery %s) failed: %s; retrying in %.2fs",
                    self._safe_url,
                    attempt,
                    self._retries,
                    what,
                    delivery,
                    failure.description,
                    delay,
                )
                await asyncio.sleep(delay)
        except asyncio.CancelledError:
            if rollback and not applied:
                # The caller stopped us; whoever did must know the rollback did not happen.
                logger.error(
                    "ROLLBACK NOT APPLIED: retrying %s against webhook %s was cancelled after "
                    "%d attempt(s) (delivery %s)",
                    what,
                    self._safe_url,
                    attempt,
                    delivery,
                )
            raise

    async def current(self, service: str) -> Applied | None:
        """What the receiver says it applies, from ``read_url`` (``{service}`` filled in), or
        None when no read-back URL is configured. The receiver answers 200 with
        ``{"weight": 0..100 or null, "version": "...", "stable_version": "..."}`` (404: nothing
        set for that service); requests are signed like changes, over an empty body."""
        if self._read_url is None:
            return None
        url = self._read_url.replace("{service}", service)
        safe = redact_url(url)
        try:
            async with self._get_session().get(
                url,
                headers=self._headers(b"", str(uuid.uuid4())),
                timeout=self._client_timeout,
                allow_redirects=False,
            ) as resp:
                if resp.status == 404:
                    return Applied(None)
                if resp.status != 200:
                    raise TrafficError(f"webhook read-back {safe} answered HTTP {resp.status}")
                data = await resp.json(content_type=None)
        except TimeoutError as exc:
            raise TrafficError(
                f"webhook read-back {safe} timed out after {self._timeout:g}s"
            ) from exc
        except (aiohttp.ClientError, ValueError) as exc:
            raise TrafficError(f"webhook read-back {safe} failed: {self._describe(exc)}") from exc
        return _applied_from(data, safe)

    async def close(self) -> None:
        self._closed = True
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    def _get_session(self) -> aiohttp.ClientSession:
        # Created on first use rather than in __init__: aiohttp wants a running event loop,
        # and the backend is usually built while loading configuration.
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    def _headers(self, body: bytes, delivery: str) -> dict[str, str]:
        # A fresh timestamp per attempt keeps a long-retried delivery inside the receiver's
        # replay window; the delivery id is what stays fixed.
        timestamp = str(int(time.time()))
        headers = dict(self._extra_headers)
        headers.update(
            {
                "Content-Type": "application/json",
                "User-Agent": USER_AGENT,
                DELIVERY_HEADER: delivery,
                TIMESTAMP_HEADER: timestamp,
            }
        )
        if self._secret is not None:
            headers[SIGNATURE_HEADER] = sign(self._secret, timestamp, body)
        return headers

    async def _attempt(
        self, session: aiohttp.ClientSession, body: bytes, delivery: str
    ) -> _Failure | None:
        """One POST. None when the change was accepted, otherwise what went wrong."""
        try:
            async with session.post(
                self._url,
                data=body,
                headers=self._headers(body, delivery),
                timeout=self._client_timeout,
                allow_redirects=False,
            ) as resp:
                if 200 <= resp.status < 300:
                    return None
                description = f"HTTP {resp.status} {resp.reason or ''}".rstrip()
                snippet = await self._snippet(resp)
                if snippet:
                    description = f"{description}: {snippet}"
                retryable = resp.status in _RETRYABLE_4XX or resp.status >= 500
                retry_after = (
                    _parse_retry_after(resp.headers.get("Retry-After"), time.time())
                    if retryable
                    else None
                )
                return _Failure(description, retryable, retry_after, _RefusedResponse(description))
        except TimeoutError as exc:
            # Before ClientError: aiohttp's timeout errors are both.
            return _Failure(f"timed out after {self._timeout:g}s", True, None, exc)
        except aiohttp.ClientError as exc:
            return _Failure(self._describe(exc), True, None, exc)

    @staticmethod
    async def _snippet(resp: aiohttp.ClientResponse) -> str:
        raw = await resp.content.read(_SNIPPET_BYTES)
        text = " ".join(raw.decode("utf-8", "replace").split())
        return text if len(text) <= _SNIPPET_CHARS else text[: _SNIPPET_CHARS - 1] + "…"

    def _delay(self, attempt: int, retry_after: float | None, cap: float) -> float:
        if retry_after is not None:
            return min(cap, retry_after)
        return min(cap, self._backoff * 2.0 ** min(attempt - 1, _MAX_BACKOFF_EXPONENT))

    def _describe(self, exc: BaseException) -> str:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        # Some aiohttp errors quote the URL they were given; ours may carry a password.
        for fragment in self._url_secrets:
            text = text.replace(fragment, self._safe_url if fragment == str(self._url) else "")
        return text

    @staticmethod
    def _secret_fragments(url: URL) -> list[str]:
        """Substrings of ``url`` that must never appear in a message, longest first."""
        fragments = [str(url)]
        if url.raw_user is not None or url.raw_password is not None:
            user = url.raw_user or ""
            if url.raw_password is not None:
                fragments.append(f"{user}:{url.raw_password}@")
            fragments.append(f"{user}@")
        if url.raw_query_string:
            fragments.append(f"?{url.raw_query_string}")
        return [f for f in fragments if f and f != "@"]


# What a receiver written against this module imports; the signing itself lives in bot.signing,
# shared with the incident-ticket webhook.
__all__ = [
    "DELIVERY_HEADER",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "USER_AGENT",
    "WebhookBackend",
    "encode_change",
    "sign",
    "verify_signature",
]
