"""The CI API: a pipeline starts a release when its staging criteria are met, and follows it.

    POST /api/v1/rollouts                   start a release (exactly as /deploy does)
    GET  /api/v1/rollouts/{service}         the active release of a service, or its last one
    GET  /api/v1/releases?service=&limit=   the deployment record: a service's releases

All three take ``Authorization: Bearer <token>``. Tokens come from ``SHIPWATCH_API_TOKENS``, a
comma-separated list of entries::

    name:token[:service1|service2]

``name`` (letters, digits, ``.``, ``_``, ``-``) says who the caller is: a release started with
it is requested by ``"<requested_by> (via <name>)"``. ``token`` is the secret, at least 16
characters, without ``:``, ``,`` or white space (``openssl rand -hex 32`` makes a good one).
The optional third part limits the token to the services listed, separated by ``|``; without
it the token may start releases of every service. For example::

    SHIPWATCH_API_TOKENS="github:3f9c...e1:checkout|search,jenkins:a81b...07"

Only SHA-256 digests of the tokens are kept after parsing, and a presented token is compared
with every configured digest in constant time, so neither timing nor logs can give a token
away. The policy's own rules still apply to an API caller: locks, one active release per
service, and the service's ``deployers`` list (which names Slack users, so a service with such a
list refuses API releases with 403).

The POST body (unknown fields are refused)::

    {"service": "checkout", "version": "v2.4.1", "requested_by": "octocat",
     "changes": [{"title": "...", "pr": 812, "author": "octocat", "url": "https://..."}],
     "risk": "normal" | "high", "notes": "...", "stable": "v2.4.0", "request_id": "run-4711",
     "gates": {"ci_build": "passed", "tests": {"status": "passed", "url": "https://..."}}}

``risk``, ``notes``, ``stable``, ``request_id`` and ``gates`` are optional, as are a change's
``pr``, ``author`` and ``url``. ``gates`` reports the pre-release gates (bot.engine.gates: status
``passed``, ``failed`` or ``pending``, optionally with a link to the run); without it, the
gates the service requires are read from ``SHIPWATCH_GATES_URL`` as for /deploy. There is no
``force``: starting a release past gates that have not passed is an approver's decision, made
with ``/deploy ... --force``, never a pipeline's. A release started answers 201 with its
summary and ``status_url``; a ``request_id`` seen before (a CI retry) answers 200 with the
release it started, unchanged.

Answers are JSON. Errors are ``{"error": <what went wrong>, ...}``: 401 (no or unknown token,
with ``WWW-Authenticate: Bearer``), 403 (the token may not touch the service), 404 (unknown
service, with a suggestion; or no release yet), 409 (a release is active or the service is
locked: ``release`` and ``lock`` say which; or a required gate has not passed: ``gates``
lists ``required``, the ``results`` used and ``not_passed``, each gate with ``failed``,
``pending`` or ``missing``), 422 (an invalid request: ``fields`` lists each problem by its
path, e.g. ``changes[0].title`` or ``gates.tests.status``), 503 (Redis, the traffic backend
or the gates status URL failed; nothing was started, so the same request may be retried).

``GET /api/v1/releases?service=checkout&limit=20`` is the deployment record, newest first:
``{"service": ..., "count": n, "releases": [...]}``, each release with who started it, from
where, what it replaced, its plan, when it started and finished (ISO 8601 UTC and epoch
seconds), its outcome (``succeeded``, ``rolled_back`` or ``in_progress``) and why, its notes
and change list, its gates and whether (and by whom) they were forced, its approvals, and the
final checks and score. ``service`` is required; ``limit`` is 1 to 100 (default 20). Errors
as above: 401, 403 (the token may not read the service), 404 (unknown service), 422.
"""

from __future__ import annotations

import difflib
import hashlib
import hmac
import logging
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import ErrorDetails

from bot.config import Settings
from bot.engine.gates import GatesNotPassed, GatesUnavailable
from bot.engine.service import Outcome
from bot.errors import (
    Failure,
    LockedError,
    ShipwatchError,
    UnknownServiceError,
    UserError,
)
from bot.observe.logs import log_context
from bot.release.gates import GateReport
from bot.release.policy import Policy, Risk
from bot.release.request import DeployOptions
from bot.release.rollout import Actor, Release, State
from bot.render.errors import report
from bot.store.store import Lock
from handlers.context import Core

log = logging.getLogger(__name__)

ROLLOUTS = "/api/v1/rollouts"
RELEASES = "/api/v1/releases"
DEFAULT_RECORDS = 20
MAX_RECORDS = 100
ENV = "SHIPWATCH_API_TOKENS"
FORMAT = "name:token[:service1|service2], entries separated by commas"
MIN_TOKEN_LENGTH = 16
RETRY_AFTER_S = 5  # what a 503 suggests; Redis or a traffic backend is usually back by then

_TOKEN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_REALM = 'Bearer realm="shipwatch"'

Json = dict[str, Any]


# --- tokens ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ApiToken:
    """One configured token: its name, the digest of its secret, and what it may touch."""

    name: str
    digest: bytes = field(repr=False)
    services: frozenset[str] | None = None  # None: every service

    def allows(self, service: str) -> bool:
        return self.services is None or service in self.services

    def describe_scope(self) -> str:
        return "every service" if self.services is None else ", ".join(sorted(self.services))


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def _format_error(message: str) -> UserError:
    return UserError(f"{ENV}: {message}", hint=f"the format is {FORMAT}")


def parse_tokens(text: str, known_services: Collection[str] | None = None) -> tuple[ApiToken, ...]:
    """Parse ``SHIPWATCH_API_TOKENS``; raise UserError naming the bad entry (never its secret).

    ``known_services``, when given, must hold every service a token is limited to: a typo
    there would otherwise surface only as 403s in some pipeline, long after the start.
    """
    tokens: list[ApiToken] = []
    names: dict[str, int] = {}
    digests: dict[bytes, int] = {}
    entries = [e.strip() for e in text.split(",")]
    for number, entry in enumerate(entries, start=1):
        if not entry:
            continue  # a trailing comma, or an emptied line in a multi-line value
        parts = entry.split(":")
        name = parts[0].strip()
        # Entries are named by position only: with its parts in the wrong order, an entry's
        # "name" is its secret, and this message goes to a terminal or a log.
        where = f"entry {number}"
        if len(parts) not in (2, 3):
            raise _format_error(
                f"{where} has {len(parts)} `:`-separated parts; expected 2 (name:token) or 3 "
                "(name:token:services). Tokens cannot contain `:` or `,`"
            )
        if not _TOKEN_NAME.match(name):
            raise _format_error(
                f"{where}: the name must be letters, digits, `.`, `_` or `-` (at most 64 "
                "characters)"
            )
        secret = parts[1]
        if len(secret) < MIN_TOKEN_LENGTH or any(c.isspace() for c in secret):
            raise _format_error(
                f"{where}: the token must be at least {MIN_TOKEN_LENGTH} characters without "
                "white space (e.g. from `openssl rand -hex 32`)"
            )
        services: frozenset[str] | None = None
        if len(parts) == 3:
            listed = [s.strip() for s in parts[2].split("|")]
            if not all(listed):
                raise _format_error(
                    f"{where}: an empty service name; list services separated by `|`, or leave "
                    "the part out to allow every service"
                )
            if known_services is not None:
                for service in listed:
                    if service not in known_services:
                        close = difflib.get_close_matches(service, sorted(known_services), n=1)
                        guess = f"; did you mean `{close[0]}`?" if close else ""
                        raise _format_error(
                            f"{where}: unknown service `{service}`{guess} "
                            f"(the policy has: {', '.join(sorted(known_services)) or 'none'})"
                        )
            services = frozenset(listed)
        if name in names:
            raise _format_error(f"entries {names[name]} and {number} are both named `{name}`")
        digest = _digest(secret)
        if digest in digests:
            # Two names for one secret would make "who started this release" a guess.
            raise _format_error(f"entries {digests[digest]} and {number} use the same token")
        names[name] = number
        digests[digest] = number
        tokens.append(ApiToken(name=name, digest=digest, services=services))
    return tuple(tokens)


def load_tokens(settings: Settings, policy: Policy) -> tuple[ApiToken, ...]:
    """The configured tokens (none when the variable is unset: the API then refuses everyone)."""
    if settings.api_tokens is None:
        return ()
    return parse_tokens(settings.api_tokens.get_secret_value(), policy.services)


class TokenRing:
    """Answers "whose token is this?" without revealing anything through timing."""

    def __init__(self, tokens: Sequence[ApiToken]) -> None:
        self._tokens = tuple(tokens)

    def __bool__(self) -> bool:
        return bool(self._tokens)

    def authenticate(self, presented: str) -> ApiToken | None:
        # Hashing first gives every comparison the same length, and every configured digest is
        # compared, whatever matched: the time taken says nothing about which token is close.
        digest = _digest(presented)
        found: ApiToken | None = None
        for token in self._tokens:
            if hmac.compare_digest(digest, token.digest):
                found = token
        return found


# --- the request ----------------------------------------------------------------------------


class ChangeIn(BaseModel):
    """One entry of the change list, as CI knows it."""

    model_config = ConfigDict(extra="forbid", strict=True, str_strip_whitespace=True)

    title: str = Field(min_length=1, max_length=500)
    pr: int | None = Field(default=None, ge=1)
    author: str | None = Field(default=None, max_length=100)
    url: str | None = Field(default=None, max_length=2000, pattern=r"^https?://\S+$")


class RolloutRequest(BaseModel):
    # Strict: "12" is not a PR number and 12 is not a version; CI should send what it means.
    model_config = ConfigDict(extra="forbid", strict=True, str_strip_whitespace=True)

    service: str = Field(min_length=1, max_length=64)
    version: str = Field(min_length=1, max_length=128)
    changes: list[ChangeIn] = Field(max_length=500)
    risk: Risk | None = None
    # Shown in Slack as "<requested_by> (via <token name>)": no parentheses, so nobody can
    # append a "(via ...)" of their own, and no angle brackets or control characters.
    requested_by: str = Field(min_length=1, max_length=100, pattern=r"^[^\x00-\x1f\x7f()<>]+$")
    notes: str = Field(default="", max_length=3000)
    stable: str = Field(default="", max_length=128)
    request_id: str = Field(default="", max_length=200, pattern=r"^\S*$")
    gates: GateReport | None = Field(default=None, max_length=50)
    # Declared only to refuse it with a reason: "unknown field" would suggest a typo.
    force: None = None

    @field_validator("force", mode="before")
    @classmethod
    def _no_force(cls, value: object) -> None:
        raise ValueError(
            "a pipeline cannot force a release past its gates: an approver of the service "
            "decides that, with /deploy <service> <version> --force"
        )


class ReleasesQuery(BaseModel):
    """The query of GET /api/v1/releases (unknown parameters are refused: likely typos)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    service: str = Field(min_length=1, max_length=64)
    limit: int = Field(default=DEFAULT_RECORDS, ge=1, le=MAX_RECORDS)


def field_path(loc: Sequence[int | str]) -> str:
    """('changes', 0, 'title') -> 'changes[0].title'; the body itself is '(body)'."""
    out = ""
    for part in loc:
        if part == "[key]":
            continue  # pydantic's marker for "the key itself is wrong": the path names it
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out or "(body)"


# What each pattern means, said in words: a regex is no help to whoever reads a CI log.
_PATTERN_MESSAGES = {
    "requested_by": "should be a name without parentheses, angle brackets or control characters",
    "url": "should be an http:// or https:// URL without white space",
    "request_id": "should not contain white space",
}


def _field_message(error: ErrorDetails) -> str:
    kind = error["type"]
    field_name = error["loc"][-1] if error["loc"] else ""
    if kind == "string_pattern_mismatch" and field_name in _PATTERN_MESSAGES:
        return _PATTERN_MESSAGES[str(field_name)]
    if kind == "string_pattern_mismatch" and field_name == "[key]":
        return "not a gate name: use a lowercase identifier like ci_build, as the policy does"
    if kind == "value_error":
        return str(error["msg"]).removeprefix("Value error, ")
    if kind == "missing":
        return "required"
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "json_invalid":
        return f"not valid JSON: {error.get('ctx', {}).get('error', error['msg'])}"
    if kind == "model_type":
        return "must be a JSON object"
    return str(error["msg"])


def field_errors(exc: ValidationError) -> list[Json]:
    return [
        {"path": field_path(e["loc"]), "message": _field_message(e)}
        for e in exc.errors(include_url=False)
    ]


# --- the answers ----------------------------------------------------------------------------


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def summary(release: Release) -> Json:
    """What a pipeline needs to know of a release; ``step`` is an index into ``steps``."""
    return {
        "id": release.id,
        "number": release.number,
        "service": release.service,
        "version": release.version,
        "stable_version": release.stable_version,
        "state": release.state.value,
        "weight": release.weight,
        "step": release.step,
        "steps": list(release.weights),
        "risk": release.risk,
        "requested_by": release.requested_by,
        "created_at": _iso(release.created_at),
        "description": release.describe_state(),
    }


_OUTCOMES = {State.SUCCEEDED: "succeeded", State.ROLLED_BACK: "rolled_back"}


def record(release: Release) -> Json:
    """One release as the deployment record keeps it: who, what, when, verdicts, outcome."""
    finished = release.finished_at
    gates = release.gates
    weights = release.weights
    return {
        **summary(release),
        "strategy": release.strategy,
        "surface": release.surface,
        "active": release.is_active,
        "outcome": _OUTCOMES.get(release.state, "in_progress"),
        "reason": release.reason,
        "notes": release.notes,
        "changes": release.changes,
        "created_at_epoch": release.created_at,
        "finished_at": _iso(finished) if finished is not None else None,
        "finished_at_epoch": finished,
        "duration_s": round(finished - release.created_at, 3) if finished is not None else None,
        "gates": gates.model_dump() if gates is not None else None,
        "forced": bool(gates and gates.forced),
        "forced_by": gates.forced_by if gates is not None and gates.forced else None,
        "approvals": [
            {
                "step": a.step,
                "weight": weights[a.step] if 0 <= a.step < len(weights) else None,
                "by": a.by,
                "at": _iso(a.at),
                "at_epoch": a.at,
            }
            for a in release.approvals
        ],
        "last_checks": [c.to_dict() for c in release.last_checks],
        "last_score": release.last_score,
    }


def _lock_json(lock: Lock) -> Json:
    return {"by": lock.by, "reason": lock.reason, "at": _iso(lock.at), "surface": lock.surface}


def status_url(service: str) -> str:
    return f"{ROLLOUTS}/{service}"


def _error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


def _invalid(caller: ApiToken, exc: ValidationError) -> web.Response:
    fields = field_errors(exc)
    log.info("API request from %s refused as invalid: %s", caller.name, fields)
    return _error(422, "invalid request", fields=fields)


def _unauthorized(message: str, *, invalid: bool) -> web.Response:
    # RFC 6750: a presented-but-wrong token gets error="invalid_token"; a missing one does not.
    challenge = f'{_REALM}, error="invalid_token"' if invalid else _REALM
    return web.json_response(
        {"error": message}, status=401, headers={"WWW-Authenticate": challenge}
    )


def _forbidden(token: ApiToken, service: str, verb: str) -> web.Response:
    return _error(
        403,
        f"token `{token.name}` may not {verb} `{service}` "
        f"(it is limited to: {token.describe_scope()})",
        service=service,
    )


# --- the routes -----------------------------------------------------------------------------


class RolloutApi:
    def __init__(self, core: Core, tokens: Sequence[ApiToken]) -> None:
        self.core = core
        self.ring = TokenRing(tokens)

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post(ROLLOUTS, self.start),
            web.get(ROLLOUTS + "/{service}", self.status),
            web.get(RELEASES, self.releases),
        ]

    def _caller(self, request: web.Request) -> ApiToken | web.Response:
        """The token's owner, or the 401 to send. Nothing about the token is logged."""
        if not self.ring:
            return _unauthorized(
                f"the API is disabled: no tokens are configured ({ENV})", invalid=False
            )
        scheme, _, presented = request.headers.get("Authorization", "").strip().partition(" ")
        presented = presented.strip()
        if scheme.lower() != "bearer" or not presented:
            return _unauthorized(
                "missing bearer token (Authorization: Bearer <token>)", invalid=False
            )
        token = self.ring.authenticate(presented)
        if token is None:
            log.warning("API request with an unknown token from %s", request.remote)
            return _unauthorized("unknown token", invalid=True)
        return token

    async def start(self, request: web.Request) -> web.Response:
        caller = self._caller(request)
        if isinstance(caller, web.Response):
            return caller
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _error(413, "the request body is too large")
        try:
            body = RolloutRequest.model_validate_json(raw)
        except ValidationError as exc:
            return _invalid(caller, exc)
        # Scope before anything else: a limited token learns nothing about other services,
        # not even whether they exist.
        if not caller.allows(body.service):
            return _forbidden(caller, body.service, "start releases of")
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
                return _error(
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
            {"release": summary(release), "message": result.message, **links},
            status=201,
            headers={"Location": links["status_url"]},
        )

    async def status(self, request: web.Request) -> web.Response:
        caller = self._caller(request)
        if isinstance(caller, web.Response):
            return caller
        service = request.match_info["service"]
        if not caller.allows(service):
            return _forbidden(caller, service, "read")
        try:
            release = await self.core.app.service.status(service)
        except Exception as exc:
            return await self._failure(exc, service, caller)
        if release is None:
            return _error(404, f"no releases of `{service}` yet")
        return web.json_response(
            {
                "release": summary(release),
                "active": release.is_active,
                "last_checks": [c.to_dict() for c in release.last_checks],
                "last_score": release.last_score,
            }
        )

    async def releases(self, request: web.Request) -> web.Response:
        caller = self._caller(request)
        if isinstance(caller, web.Response):
            return caller
        try:
            query = ReleasesQuery.model_validate(dict(request.query))
        except ValidationError as exc:
            return _invalid(caller, exc)
        if not caller.allows(query.service):
            return _forbidden(caller, query.service, "read")
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
        message = str(exc.args[0]) if exc.args else str(exc)
        hint = getattr(exc, "hint", "")
        match failed.kind:
            case Failure.GATES:
                assert isinstance(exc, GatesNotPassed)
                verdict = exc.verdict.as_json()
                return _error(status, message, hint=hint, gates=verdict, release=None)
            case Failure.UNKNOWN_SERVICE:
                assert isinstance(exc, UnknownServiceError)
                suggestion = exc.suggestion
                return _error(status, message, hint=hint, suggestion=suggestion, service=service)
            case Failure.PERMISSION:
                return _error(status, message, hint=hint, service=service)
            case Failure.USAGE | Failure.INVALID:
                return _error(status, message, hint=hint)
            case Failure.CONFLICT:
                blocking = await self._blocking(service, locked=isinstance(exc, LockedError))
                return _error(status, str(exc), **blocking)
            case Failure.DEPENDENCY:
                extra = {}
                if isinstance(exc, GatesUnavailable):
                    extra["gates"] = exc.verdict.as_json()
                return web.json_response(
                    {"error": str(exc), **extra},
                    status=status,
                    headers={"Retry-After": str(RETRY_AFTER_S)},
                )
            case Failure.BUG:
                return _error(
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
                out["lock"] = _lock_json(lock) if lock else None
        except ShipwatchError as exc:
            log.warning("could not read what blocks %s: %s", service, exc)
        return out


def api_routes(core: Core) -> list[web.RouteDef]:
    """The API's routes for ``web_app``; they need nothing of Slack."""
    return RolloutApi(core, load_tokens(core.app.settings, core.app.policy)).routes()


__all__ = [
    "ApiToken",
    "ReleasesQuery",
    "RolloutApi",
    "RolloutRequest",
    "TokenRing",
    "api_routes",
    "load_tokens",
    "parse_tokens",
    "record",
    "summary",
]
