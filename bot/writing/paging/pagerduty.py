"""PagerDuty's Events API v2 (``POST {url}/v2/enqueue``), sent with aiohttp.

A rollback's page is an ``event_action: trigger`` whose ``dedup_key`` is the release's key; the
release's end sends ``resolve`` with the same key. The routing key (an Events API v2
integration key) is read from the environment variable the policy names and goes only into the
request body, as the API requires. PagerDuty answers 202 when it took the event, 400 when the
event or the routing key is invalid (not retried), 429 when the integration is rate limited and
5xx when it is in trouble: those, a network error or a timeout are retried a bounded number of
times with a doubling backoff (``Retry-After`` honoured when given, within a cap).

PagerDuty's own Python client (PyPI ``pagerduty``) was tried first: it refuses any base URL that
is not https://, retries a 429 without end unless configured otherwise, sleeps in the calling
thread between tries and brings its own HTTP stack. The API is one POST; aiohttp (as for the
incident tickets) keeps it async and cancellable.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import aiohttp

from bot.redact import redact, redact_url
from bot.release.policy import PagerDutyPaging
from bot.writing.paging.alert import Alert, PageError
from bot.writing.paging.calls import FIRST_BACKOFF_S, deadline

_RETRIED = frozenset({429, 500, 502, 503, 504})
# A Retry-After longer than this is not waited for: the page would be too late to matter.
RETRY_AFTER_CAP_S = 10.0


class PagerDuty:
    name = "PagerDuty"

    def __init__(self, settings: PagerDutyPaging, routing_key: str) -> None:
        self.settings = settings
        self._routing_key = routing_key

    @property
    def endpoint(self) -> str:
        return f"{self.settings.url.rstrip('/')}/v2/enqueue"

    async def trigger(self, alert: Alert) -> None:
        payload: dict[str, Any] = {
            "summary": alert.summary,
            "source": alert.service,
            "severity": self.settings.severity,
            "component": alert.service,
            "group": "shipwatch",
            "class": "post-release finding" if alert.finding else "automatic rollback",
            "custom_details": alert.details,
        }
        event: dict[str, Any] = {
            "event_action": "trigger",
            "dedup_key": alert.key,
            "payload": payload,
            "client": "shipwatch",
        }
        if alert.thread_url:
            event["links"] = [{"href": alert.thread_url, "text": "Release thread in Slack"}]
        await self._send(event)

    async def resolve(self, key: str) -> None:
        await self._send({"event_action": "resolve", "dedup_key": key})

    async def _send(self, event: dict[str, Any]) -> None:
        if not self._routing_key:
            raise PageError(
                f"PagerDuty: ${self.settings.routing_key_env} is empty (the Events API "
                "integration key)"
            )
        body = {"routing_key": self._routing_key, **event}
        within = deadline(self.settings.timeout, self.settings.retries)
        try:
            async with asyncio.timeout(within), aiohttp.ClientSession() as session:
                await self._post_with_retries(session, body)
        except TimeoutError as exc:
            raise PageError(f"PagerDuty did not answer within {within:.0f}s") from exc

    async def _post_with_retries(
        self, session: aiohttp.ClientSession, body: dict[str, Any]
    ) -> None:
        backoff = FIRST_BACKOFF_S
        for attempt in range(self.settings.retries + 1):
            last = attempt == self.settings.retries
            try:
                again = await self._post(session, body, last=last)
            except (aiohttp.ClientError, TimeoutError) as exc:
                if last:
                    raise PageError(
                        redact(f"PagerDuty unreachable at {redact_url(self.endpoint)}: {exc!r}")
                    ) from exc
                again = _Again()
            if again is None:
                return
            await asyncio.sleep(backoff if again.after is None else again.after)
            backoff *= 2

    async def _post(
        self, session: aiohttp.ClientSession, body: dict[str, Any], *, last: bool
    ) -> _Again | None:
        """One POST: None when PagerDuty took the event, ``_Again`` when a 429 or a 5xx leaves a
        try; PageError when it refused the event for good."""
        async with session.post(
            self.endpoint,
            json=body,
            headers={"User-Agent": "shipwatch"},
            timeout=aiohttp.ClientTimeout(total=self.settings.timeout),
        ) as resp:
            answer = await _json(resp)
            if 200 <= resp.status < 300:
                return None
            if resp.status in _RETRIED and not last:
                return _Again(_retry_after(resp.headers.get("Retry-After")))
            retried = resp.status in _RETRIED and self.settings.retries > 0
            raise PageError(_refusal(resp.status, answer, retried=retried))


@dataclass(frozen=True)
class _Again:
    after: float | None = None  # PagerDuty's Retry-After; None: the backoff's next wait


def _retry_after(value: str | None) -> float | None:
    try:
        return min(max(0.0, float(value)), RETRY_AFTER_CAP_S) if value else None
    except ValueError:
        return None


async def _json(resp: aiohttp.ClientResponse) -> dict[str, Any]:
    try:
        data = await resp.json(content_type=None)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _refusal(status: int, answer: dict[str, Any], *, retried: bool) -> str:
    """PagerDuty's answer in one line: its status, message and errors (never the key)."""
    message = str(answer.get("message") or answer.get("status") or "no message")
    errors = answer.get("errors")
    more = f" ({'; '.join(str(e) for e in errors)})" if isinstance(errors, list) and errors else ""
    tried = " after its retries" if retried else ""
    return redact(f"PagerDuty answered HTTP {status}{tried}: {message}{more}")
