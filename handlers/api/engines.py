"""The API engines ask shipwatch through: Flagger's webhooks (``POST /api/v1/flagger/{hook}``)
and a verdict for Argo Rollouts' AnalysisTemplate web metric (``GET /api/v1/verdict/{service}``).

Thin: parse, authenticate like the rest of the API (a bearer token; Flagger's webhooks carry no
headers, so theirs may come as ``metadata.token``), ask the core, answer. A Flagger webhook
gets 200 for "yes" and 403 for "not now" (Flagger only looks at the status), with the reason
in the body either way.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bot.engine.flagger_gate import CanaryCall, Hook
from bot.observe.logs import log_context
from bot.release.rollout import Actor
from bot.release.verdict import verdict_of
from handlers.api.answers import error_answer, forbidden_answer, invalid_answer
from handlers.api.hook_callbacks import hook_callback_routes
from handlers.api.records import summary
from handlers.api.routes import RolloutApi
from handlers.api.tokens import ApiToken, load_tokens
from handlers.context import Core

log = logging.getLogger(__name__)

FLAGGER = "/api/v1/flagger/{hook}"
VERDICT = "/api/v1/verdict/{service}"


class FlaggerPayload(BaseModel):
    """What Flagger POSTs to a webhook (fields it may add later are ignored)."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    name: str = Field(min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    namespace: str = Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    phase: str = Field(default="", max_length=64)
    checksum: str = Field(default="", max_length=128, pattern=r"^[A-Za-z0-9._-]*$")
    metadata: dict[str, str] = Field(default_factory=dict, max_length=50)


class EngineApi(RolloutApi):
    def routes(self) -> list[web.RouteDef]:
        return [
            *super().routes(),
            web.post(FLAGGER, self.flagger),
            web.get(VERDICT, self.verdict),
        ]

    async def flagger(self, request: web.Request) -> web.Response:
        try:
            hook = Hook(request.match_info["hook"])
        except ValueError:
            hooks = ", ".join(h.value for h in Hook)
            return error_answer(
                404, f"no Flagger webhook `{request.match_info['hook']}` here ({hooks})"
            )
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return error_answer(413, "the request body is too large")
        try:
            body = FlaggerPayload.model_validate_json(raw)
        except ValidationError as exc:
            caller = self._caller(request)
            if isinstance(caller, web.Response):
                return caller
            return invalid_answer(caller, exc)
        caller = self._token_of(request, body.metadata)
        if isinstance(caller, web.Response):
            return caller
        call = CanaryCall(body.name, body.namespace, body.phase, body.checksum, dict(body.metadata))
        if not caller.allows(call.service):
            return forbidden_answer(caller, call.service, "answer Flagger for")
        gate = self.core.app.flagger
        assert gate is not None  # built by the composition root
        actor = Actor(
            user=f"Flagger {call.namespace}/{call.name} (via {caller.name})", surface="api"
        )
        try:
            with log_context(service=call.service, idempotency_key=call.request_id):
                answer = await gate.answer(hook, call, actor)
        except Exception as exc:
            return await self._failure(exc, call.service, caller)
        log.info("flagger %s for %s %s: %s (%s)", hook.value, call.service, call.version,
                 "yes" if answer.yes else "not now", answer.reason)  # fmt: skip
        out: dict[str, Any] = {"allowed": answer.yes, "reason": answer.reason}
        if answer.release is not None:
            out["release"] = summary(answer.release)
        return web.json_response(out, status=200 if answer.yes else 403)

    async def verdict(self, request: web.Request) -> web.Response:
        scoped = self._scoped(request, "read")
        if isinstance(scoped, web.Response):
            return scoped
        caller, service = scoped
        try:
            # The running release, else the last one: a rollback stays a "fail" to the engine.
            release = await self.core.app.service.status(service)
        except Exception as exc:
            return await self._failure(exc, service, caller)
        judged = verdict_of(release)
        return web.json_response(
            {
                "service": service,
                "verdict": judged.verdict.value,
                "reason": judged.reason,
                "release": summary(release) if release is not None else None,
            }
        )

    def _token_of(self, request: web.Request, metadata: dict[str, str]) -> ApiToken | web.Response:
        """The bearer token's owner, or the one of ``metadata.token`` (Flagger cannot send
        headers); the 401 to send otherwise."""
        if request.headers.get("Authorization") or "token" not in metadata:
            return self._caller(request)
        token = self.ring.authenticate(metadata["token"])
        if token is None:
            log.warning("Flagger webhook with an unknown token from %s", request.remote)
            return error_answer(401, "unknown token")
        return token


def api_routes(core: Core) -> list[web.RouteDef]:
    """The API's routes for ``web_app``; they need nothing of Slack."""
    routes = EngineApi(core, load_tokens(core.app.settings, core.app.policy)).routes()
    if core.app.ci_jobs is not None:
        routes += hook_callback_routes(core.app.ci_jobs)
    return routes
