"""A local stand-in for Opsgenie's Alert API: create an alert, close one by its alias.

``bot.writing.paging.opsgenie`` talks to it through Opsgenie's own client, as to
api.opsgenie.com:

    async with OpsgenieStandIn(api_key=KEY) as og:
        settings = OpsgeniePaging(url=og.base_url, api_key_env="OG_KEY")
        ...
        assert og.alerts["shipwatch-<id>"].status == "closed"

Routes: ``POST /v2/alerts`` and ``POST /v2/alerts/{identifier}/close?identifierType=…``. It is
strict where Opsgenie is: no ``Authorization: GenieKey <key>`` with the key it knows is a 401;
a body that is not a JSON object, a create without a ``message`` (or one over 130
characters), an ``alias`` over 512, ``details`` that are not a map of strings, responders
without a documented ``type`` and an ``id``/``name``/``username``, a priority outside P1–P5,
or an unknown ``identifierType`` is a 422 with Opsgenie's ``errors`` map. Every answer carries
``took`` and ``requestId``; an accepted request is a 202 ``{"result": "Request will be
processed", …}``, processed at once here (Opsgenie does it moments later). ``fail_next``
scripts 429s and 5xx, ``delay`` a slow answer. Every request is recorded first.
"""

from __future__ import annotations

import json
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.support.standin import LocalServer

Json = dict[str, Any]

MESSAGE_LIMIT = 130
ALIAS_LIMIT = 512
PRIORITIES = ("P1", "P2", "P3", "P4", "P5")
RESPONDER_TYPES = ("team", "user", "escalation", "schedule")
IDENTIFIER_TYPES = ("id", "alias", "tiny")


@dataclass(frozen=True)
class OpsgenieRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # names lower-cased
    body: bytes

    @property
    def json(self) -> Json:
        data = json.loads(self.body or b"{}")
        assert isinstance(data, dict)
        return data


@dataclass
class OpsgenieAlert:
    alias: str
    message: str
    body: Json
    status: str = "open"  # open | closed
    count: int = 1  # creates with the same alias while open (Opsgenie's deduplication)
    closed_by: Json = field(default_factory=dict)


class OpsgenieStandIn(LocalServer):
    """Opsgenie's Alert API on 127.0.0.1 (free port) for one API integration's key."""

    def __init__(self, api_key: str, *, delay: float = 0.0) -> None:
        super().__init__()
        self.api_key = api_key
        self.delay = delay
        self.requests: list[OpsgenieRequest] = []
        self.alerts: dict[str, OpsgenieAlert] = {}  # alias -> alert
        self._failures: deque[int] = deque()

    def routes(self, router: web.UrlDispatcher) -> None:
        router.add_post("/v2/alerts", self._create)
        router.add_post("/v2/alerts/{identifier}/close", self._close)

    def fail_next(self, status: int, *, count: int = 1) -> None:
        """Answer the next ``count`` authorised, well-formed requests with ``status``."""
        self._failures.extend(status for _ in range(count))

    # -- handlers --------------------------------------------------------------------------

    async def _admit(self, request: web.Request) -> tuple[OpsgenieRequest, web.Response | None]:
        recorded = OpsgenieRequest(
            request.method,
            request.path,
            dict(request.query),
            {k.lower(): v for k, v in request.headers.items()},
            await request.read(),
        )
        self.requests.append(recorded)
        if self.delay:
            await self.stall(self.delay)
        scheme, _, key = recorded.headers.get("authorization", "").partition(" ")
        if scheme != "GenieKey" or key.strip() != self.api_key:
            return recorded, _answer(401, message="Could not authenticate")
        try:
            recorded.json  # noqa: B018 - parsed to be judged
        except (ValueError, AssertionError):
            return recorded, _unprocessable({"body": "Request body is not a JSON object."})
        return recorded, None

    async def _create(self, request: web.Request) -> web.Response:
        recorded, refused = await self._admit(request)
        if refused is not None:
            return refused
        body = recorded.json
        problems = _create_problems(body)
        if problems:
            return _unprocessable(problems)
        if self._failures:
            return _failure(self._failures.popleft())
        alias = str(body.get("alias") or uuid.uuid4())
        open_alert = self.alerts.get(alias)
        if open_alert is not None and open_alert.status == "open":
            open_alert.count += 1
        else:
            self.alerts[alias] = OpsgenieAlert(alias, body["message"], body)
        return _answer(202, result="Request will be processed")

    async def _close(self, request: web.Request) -> web.Response:
        recorded, refused = await self._admit(request)
        if refused is not None:
            return refused
        kind = recorded.query.get("identifierType", "id")
        if kind not in IDENTIFIER_TYPES:
            return _unprocessable({"identifierType": f"Identifier type '{kind}' is not valid."})
        body = recorded.json
        if any(k not in ("user", "source", "note") for k in body):
            return _unprocessable({"body": "Unknown fields in the close request."})
        if self._failures:
            return _failure(self._failures.popleft())
        alert = self.alerts.get(request.match_info["identifier"]) if kind == "alias" else None
        if alert is not None:
            alert.status = "closed"
            alert.closed_by = body
        # Accepted either way: Opsgenie says later (in its request status) if nothing matched.
        return _answer(202, result="Request will be processed")


def _create_problems(body: Json) -> dict[str, str]:
    problems: dict[str, str] = {}
    message = body.get("message")
    if not isinstance(message, str) or not message.strip():
        problems["message"] = "Message can not be empty."
    elif len(message) > MESSAGE_LIMIT:
        problems["message"] = "Message can not be longer than 130 characters."
    alias = body.get("alias")
    if alias is not None and (not isinstance(alias, str) or len(alias) > ALIAS_LIMIT):
        problems["alias"] = "Alias can not be longer than 512 characters."
    details = body.get("details")
    if details is not None and not (
        isinstance(details, dict) and all(isinstance(v, str) for v in details.values())
    ):
        problems["details"] = "Details must be a map of strings."
    if body.get("priority", "P3") not in PRIORITIES:
        problems["priority"] = "Priority should be one of [P1, P2, P3, P4, P5]."
    for responder in body.get("responders") or []:
        if not (
            isinstance(responder, dict)
            and responder.get("type") in RESPONDER_TYPES
            and (responder.get("id") or responder.get("name") or responder.get("username"))
        ):
            problems["responders"] = "Responder type and one of id, name or username are required."
    return problems


def _answer(status: int, **fields: Any) -> web.Response:
    body = {**fields, "took": 0.01, "requestId": str(uuid.uuid4())}
    return web.json_response(body, status=status)


def _unprocessable(errors: dict[str, str]) -> web.Response:
    return _answer(
        422, message="Request body is not processable. Please check the errors.", errors=errors
    )


def _failure(status: int) -> web.Response:
    if status == 429:
        return _answer(
            429,
            message="You are making too many requests! To avoid errors, we recommend you "
            "limit requests.",
        )
    return _answer(status, message="Internal Server Error")
