"""The API's routes: start a release, read one, read the release record."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from aiohttp import web
from pydantic import ValidationError

from bot.engine.gates import GatesNotPassed, GatesUnavailable
from bot.engine.service import Outcome
from bot.engine.sizing import SizingRefusal
from bot.errors import Failure, LockedError, ShipwatchError, UnknownServiceError
from bot.observe.logs import log_context
from bot.release.request import DeployOptions
from bot.release.rollout import Actor
from bot.render.errors import report, said
from bot.render.sizing import with_sizing
from handlers.api.answers import (
    RETRY_AFTER_S,
    error_answer,
    forbidden_answer,
    invalid_answer,
    unauthorized_answer,
)
from handlers.api.records import RELEASES, ROLLOUTS, lock_json, record, status_url, summary
from handlers.api.schema import HandbackRequest, Json, ReleasesQuery, RolloutRequest
from handlers.api.tokens import ENV, ApiToken, TokenRing
from handlers.context import Core

log = logging.getLogger(__name__)


class RolloutApi:
    def __init__(self, core: Core, tokens: Sequence[ApiToken]) -> None:
        self.core = core
        self.ring = TokenRing(tokens)

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post(ROLLOUTS, self.start),
            web.get(ROLLOUTS + "/{service}", self.status),
            web.post(ROLLOUTS + "/{service}/handback", self.hand_back),
            web.get(RELEASES, self.releases),
        ]

    def _caller(self, request: web.Request) -> ApiToken | web.Response:
        """The token's owner, or the 401 to send. Nothing about the token is logged."""
        if not self.ring:
            return unauthorized_answer(
                f"the API is disabled: no tokens are configured ({ENV})", invalid=False
            )
        scheme, _, presented = request.headers.get("Authorization", "").strip().partition(" ")
        presented = presented.strip()
        if scheme.lower() != "bearer" or not presented:
            return unauthorized_answer(
                "missing bearer token (Authorization: Bearer <token>)", invalid=False
            )
        token = self.ring.authenticate(presented)
        if token is None:
            log.warning("API request with an unknown token from %s", request.remote)
            return unauthorized_answer("unknown token", invalid=True)
        return token

    def _scoped(self, request: web.Request, verb: str) -> tuple[ApiToken, str] | web.Response:
        """The caller and the ``{service}`` of the path it may ``verb``, or the 401/403."""
        caller = self._caller(request)
        if isinstance(caller, web.Response):
            return caller
        service = request.match_info["service"]
        if not caller.allows(service):
            return forbidden_answer(caller, service, verb)
        return caller, service

    async def start(self, request: web.Request) -> web.Response:
        caller = self._caller(request)
        if isinstance(caller, web.Response):
            return caller
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return error_answer(413, "the request body is too large")
        try:
            body = RolloutRequest.model_validate_json(raw)
        except ValidationError as exc:
            return invalid_answer(caller, exc)
        # Scope before anything else: a limited token learns nothing about other services,
        # not even whether they exist.
        if not caller.allows(body.service):
            return forbidden_answer(caller, body.service, "start releases of")
        actor = Actor(user=f"{body.requested_by} (via {caller.name})", surface="api")
        options = DeployOptions(
            risk=body.risk,
            stable=body.stable,
            notes=body.notes,
            changes=tuple(c.model_dump() for c in body.changes),
            gates=body.gates,
        )
        # Namespaced by token: two pipelines picking the same id never see each other's release.
        request_id = f"api:{caller.name}:{body.request_id}" if body.request_id else ""
        try:
            with log_context(service=body.service, idempotency_key=request_id):
                result = await self.core.app.service.deploy(
                    actor, body.service, body.version, options, request_id=request_id
                )
        except Exception as exc:
            return await self._failure(exc, body.service, caller)
        release = result.release
        links = {"status_url": status_url(release.service)}
        if result.outcome is Outcome.DUPLICATE:
            if (release.service, release.version) != (body.service, body.version):
                return error_answer(
                    422,
                    f"request_id `{body.request_id}` was already used for {release.label}; "
                    "use a new request_id for a different release",
                    release=summary(release),
                )
            return web.json_response(
                {"release": summary(release), "duplicate": True, **links}, status=200
            )
        log.info(
            "%s started %s via the API",
            actor.user,
            release.label,
            extra={"release_id": release.id, "service": release.service},
        )
        return web.json_response(
            {
                "release": summary(release),
                "message": with_sizing(result.message, result.sizing),
                **({"first_step": result.sizing.as_json()} if result.sizing is not None else {}),
                **links,
            },
            status=201,
            headers={"Location": links["status_url"]},
        )

    async def hand_back(self, request: web.Request) -> web.Response:
        """The pipeline's last step after a success: the stable pool runs the version now."""
        scoped = self._scoped(request, "hand back")
        if isinstance(scoped, web.Response):
            return scoped
        caller, service = scoped
        try:
            body = HandbackRequest.model_validate_json(await request.read() or b"{}")
        except web.HTTPRequestEntityTooLarge:
            return error_answer(413, "the request body is too large")
        except ValidationError as exc:
            return invalid_answer(caller, exc)
        actor = Actor(user=f"{body.requested_by} (via {caller.name})", surface="api")
        request_id = f"api:{caller.name}:{body.request_id}" if body.request_id else ""
        try:
            with log_context(service=service, idempotency_key=request_id):
                result = await self.core.app.service.hand_back(actor, service, request_id)
        except Exception as exc:
            return await self._failure(exc, service, caller)
        return web.json_response(
            {
                "release": summary(result.release),
                "message": result.message,
                "duplicate": result.outcome is Outcome.DUPLICATE,
            }
        )

    async def status(self, request: web.Request) -> web.Response:
        scoped = self._scoped(request, "read")
        if isinstance(scoped, web.Response):
            return scoped
        caller, service = scoped
        try:
            release = await self.core.app.service.status(service)
        except Exception as exc:
            return await self._failure(exc, service, caller)
        if release is None:
            return error_answer(404, f"no releases of `{service}` yet")
        return web.json_response(
            {
                "release": summary(release),
                "active": release.is_active,
                "last_checks": [c.to_dict() for c in release.last_checks],
                "last_score": release.last_score.to_dict() if release.last_score else None,
            }
        )

    async def releases(self, request: web.Request) -> web.Response:
        caller = self._caller(request)
        if isinstance(caller, web.Response):
            return caller
        try:
            query = ReleasesQuery.model_validate(dict(request.query))
        except ValidationError as exc:
            return invalid_answer(caller, exc)
        if not caller.allows(query.service):
            return forbidden_answer(caller, query.service, "read")
        try:
            history = await self.core.app.service.history(query.service, query.limit)
        except Exception as exc:
            return await self._failure(exc, query.service, caller)
        return web.json_response(
            {
                "service": query.service,
                "count": len(history),
                "releases": [record(r) for r in history],
            }
        )

    async def _failure(self, exc: Exception, service: str, caller: ApiToken) -> web.Response:
        """The API's face of the failure table (bot.render.errors): its row's status, plus the
        fields a pipeline acts on."""
        failed = report(exc, what=f"API, {caller.name} for {service}", log=log)
        status = failed.shown.http_status
        # A refusal that carries data (first-step sizing) gives its rendering and its numbers.
        sized = {"first_step": exc.sizing.as_json()} if isinstance(exc, SizingRefusal) else {}
        message = said(exc) if sized else str(exc.args[0]) if exc.args else str(exc)
        hint = getattr(exc, "hint", "")
        match failed.kind:
            case Failure.GATES:
                assert isinstance(exc, GatesNotPassed)
                verdict = exc.verdict.as_json()
                return error_answer(status, message, hint=hint, gates=verdict, release=None)
            case Failure.UNKNOWN_SERVICE:
                assert isinstance(exc, UnknownServiceError)
                suggestion = exc.suggestion
                return error_answer(
                    status, message, hint=hint, suggestion=suggestion, service=service
                )
            case Failure.PERMISSION:
                return error_answer(status, message, hint=hint, service=service)
            case Failure.USAGE | Failure.INVALID:
                return error_answer(status, message, hint=hint, **sized)
            case Failure.CONFLICT:
                blocking = await self._blocking(service, locked=isinstance(exc, LockedError))
                return error_answer(status, str(exc), **blocking)
            case Failure.DEPENDENCY:
                extra = {}
                if isinstance(exc, GatesUnavailable):
                    extra["gates"] = exc.verdict.as_json()
                return web.json_response(
                    {"error": said(exc), **extra, **sized},
                    status=status,
                    headers={"Retry-After": str(RETRY_AFTER_S)},
                )
            case Failure.BUG:
                return error_answer(
                    status,
                    f"something went wrong on our side (ref {failed.ref}); give the ref to the "
                    "bot's owners",
                )

    async def _blocking(self, service: str, *, locked: bool) -> Json:
        """What stands in the way of a release: the active release and, if any, the lock.

        Read after the refusal, so a release that just finished may show as null; the error
        text, written at the moment of refusal, stays the authority.
        """
        store = self.core.app.store
        out: Json = {"release": None}
        try:
            active = await store.active_for(service)
            out["release"] = summary(active) if active else None
            if locked:
                lock = await store.get_lock(service)
                out["lock"] = lock_json(lock) if lock else None
        except ShipwatchError as exc:
            log.warning("could not read what blocks %s: %s", service, exc)
        return out
