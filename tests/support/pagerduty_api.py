"""A local stand-in for PagerDuty's Events API v2 (``POST /v2/enqueue``).

``bot.writing.paging.pagerduty`` sends trigger and resolve events through PagerDuty's own
client; this server answers them the way events.pagerduty.com documents, for that client:

    async with PagerDutyStandIn(routing_key=KEY) as pd:
        settings = PagerDutyPaging(url=pd.base_url, routing_key_env="PD_KEY")
        ...
        assert pd.alerts == {"shipwatch-<id>": "resolved"}

It is strict where the API is: a body that is not a JSON object, an unknown ``event_action``,
a trigger without ``payload.summary`` / ``source`` / a documented ``severity``, a resolve
without ``dedup_key``, or a routing key that is not the one it knows is a 400
``{"status": "invalid event", "message": "Event object is invalid", "errors": [...]}``. An
accepted event is a 202 ``{"status": "success", "message": "Event processed", "dedup_key": …}``.
``fail_next`` scripts 429s and 5xx, ``delay`` a slow answer. Every request is recorded first.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tests.support.standin import LocalServer

Json = dict[str, Any]

SEVERITIES = ("critical", "error", "warning", "info")
ACTIONS = ("trigger", "acknowledge", "resolve")
SUMMARY_LIMIT = 1024
DEDUP_KEY_LIMIT = 255


@dataclass(frozen=True)
class PagerDutyRequest:
    path: str
    headers: dict[str, str]  # names lower-cased
    body: bytes

    @property
    def event(self) -> Json:
        data = json.loads(self.body)
        assert isinstance(data, dict)
        return data


class PagerDutyStandIn(LocalServer):
    """Events API v2 on 127.0.0.1 (free port) for one integration's routing key."""

    def __init__(self, routing_key: str, *, delay: float = 0.0) -> None:
        super().__init__()
        self.routing_key = routing_key
        self.delay = delay
        self.requests: list[PagerDutyRequest] = []
        self.events: list[Json] = []  # accepted events, in order
        self.alerts: dict[str, str] = {}  # dedup key -> triggered | acknowledged | resolved
        self._failures: deque[int] = deque()

    def routes(self, router: web.UrlDispatcher) -> None:
        router.add_post("/v2/enqueue", self._enqueue)

    def fail_next(self, status: int, *, count: int = 1) -> None:
        """Answer the next ``count`` well-formed events with ``status`` (429, 500, 503 …)."""
        self._failures.extend(status for _ in range(count))

    def accepted(self, action: str) -> list[Json]:
        return [e for e in self.events if e["event_action"] == action]

    async def _enqueue(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append(
            PagerDutyRequest(request.path, {k.lower(): v for k, v in request.headers.items()}, body)
        )
        if self.delay:
            await self.stall(self.delay)
        try:
            event = json.loads(body)
        except ValueError:
            return _invalid(["Event object is not valid JSON"])
        problems = self._problems(event)
        if problems:
            return _invalid(problems)
        if self._failures:
            return _throttled_or_down(self._failures.popleft())
        action = event["event_action"]
        key = event.get("dedup_key") or uuid.uuid4().hex
        self.events.append(event)
        if action == "trigger" or key in self.alerts:
            # Like PagerDuty, a resolve for a key with no open alert is accepted and dropped.
            self.alerts[key] = {"trigger": "triggered", "acknowledge": "acknowledged"}.get(
                action, "resolved"
            )
        await asyncio.sleep(0)
        return web.json_response(
            {"status": "success", "message": "Event processed", "dedup_key": key}, status=202
        )

    def _problems(self, event: object) -> list[str]:
        if not isinstance(event, dict):
            return ["Event object must be a JSON object"]
        problems: list[str] = []
        if event.get("routing_key") != self.routing_key:
            problems.append("Invalid routing key")
        action = event.get("event_action")
        if action not in ACTIONS:
            problems.append(
                "'event_action' is invalid (must be one of trigger, acknowledge, resolve)"
            )
        key = event.get("dedup_key")
        if key is not None and (not isinstance(key, str) or len(key) > DEDUP_KEY_LIMIT):
            problems.append("'dedup_key' must be a string of at most 255 characters")
        if action in ("acknowledge", "resolve") and not key:
            problems.append("'dedup_key' is required for acknowledge and resolve events")
        if action == "trigger":
            problems += _payload_problems(event.get("payload"))
        links = event.get("links")
        if links is not None and not (
            isinstance(links, list)
            and all(isinstance(link, dict) and isinstance(link.get("href"), str) for link in links)
        ):
            problems.append("'links' must be a list of objects with an 'href'")
        return problems


def _payload_problems(payload: object) -> list[str]:
    if not isinstance(payload, dict):
        return ["'payload' is missing or not an object"]
    problems: list[str] = []
    summary = payload.get("summary")
    if not isinstance(summary, str) or not summary.strip():
        problems.append("'payload.summary' is missing or blank")
    elif len(summary) > SUMMARY_LIMIT:
        problems.append("'payload.summary' is longer than 1024 characters")
    if not isinstance(payload.get("source"), str) or not payload["source"].strip():
        problems.append("'payload.source' is missing or blank")
    if payload.get("severity") not in SEVERITIES:
        problems.append("'payload.severity' is invalid (critical, error, warning or info)")
    details = payload.get("custom_details")
    if details is not None and not isinstance(details, dict | list | str | int | float | bool):
        problems.append("'payload.custom_details' is invalid")
    return problems


def _invalid(errors: list[str]) -> web.Response:
    body = {"status": "invalid event", "message": "Event object is invalid", "errors": errors}
    return web.json_response(body, status=400)


def _throttled_or_down(status: int) -> web.Response:
    if status == 429:
        body = {
            "status": "throttle event",
            "message": "Requests for this service are arriving too quickly. Please retry later.",
        }
    else:
        body = {"status": "error", "message": "Internal server error"}
    return web.json_response(body, status=status)
