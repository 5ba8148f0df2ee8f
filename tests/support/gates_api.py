"""A local stand-in for a CI system's gate status endpoint, as ``bot.engine.gates`` reads it.

It answers ``GET /gates/{service}/{version}`` with the results a test sets in ``answers``,
checks the bearer token, and can be made to fail the ways a real one does through ``fault``
(an error status, a slow answer, a body that is not JSON or a report in the wrong shape), or
be closed to be not running at all:

    async with GatesStandIn(token="t") as gates:
        gates.answers["checkout", "v2"] = {"tests": "passed"}
        checker = GateChecker(gates.template, token="t")
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tests.support.standin import LocalServer


@dataclass(frozen=True)
class Fault:
    """How the stand-in misbehaves instead of answering."""

    status: int = 200
    body: bytes = b""
    delay: float = 0.0


class GatesStandIn(LocalServer):
    """A CI system's gate status endpoint on 127.0.0.1 (free port)."""

    def __init__(self, token: str) -> None:
        super().__init__(shutdown_timeout=0.2)
        self.token = token
        self.answers: dict[tuple[str, str], dict[str, Any]] = {}
        self.fault: Fault | None = None
        self.requests: list[tuple[str, dict[str, str]]] = []

    def routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/gates/{service}/{version}", self._gates)

    @property
    def template(self) -> str:
        """The status URL template (``SHIPWATCH_GATES_URL``) pointing here."""
        return f"{self.base_url}/gates/{{service}}/{{version}}"

    def url(self, service: str, version: str) -> str:
        return f"{self.base_url}/gates/{service}/{version}"

    async def _gates(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.path, dict(request.headers)))
        fault = self.fault
        if fault is not None and fault.delay:
            await asyncio.sleep(fault.delay)
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.json_response({"error": "bad credentials"}, status=401)
        if fault is not None and (fault.status != 200 or fault.body):
            return web.Response(status=fault.status, body=fault.body)
        key = (request.match_info["service"], request.match_info["version"])
        if key not in self.answers:
            return web.json_response({"error": "no pipeline for this version"}, status=404)
        return web.json_response({"gates": self.answers[key], "pipeline": 4711})
