"""The API's error answers: a JSON body with the message and the fields a pipeline acts on."""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from handlers.api.schema import field_errors
from handlers.api.tokens import ApiToken

RETRY_AFTER_S = 5  # what a 503 suggests; Redis or a traffic backend is usually back by then

log = logging.getLogger(__name__)


_REALM = 'Bearer realm="shipwatch"'


def error_answer(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


def invalid_answer(caller: ApiToken, exc: ValidationError) -> web.Response:
    fields = field_errors(exc)
    log.info("API request from %s refused as invalid: %s", caller.name, fields)
    return error_answer(422, "invalid request", fields=fields)


def unauthorized_answer(message: str, *, invalid: bool) -> web.Response:
    # RFC 6750: a presented-but-wrong token gets error="invalid_token"; a missing one does not.
    challenge = f'{_REALM}, error="invalid_token"' if invalid else _REALM
    return web.json_response(
        {"error": message}, status=401, headers={"WWW-Authenticate": challenge}
    )


def forbidden_answer(token: ApiToken, service: str, verb: str) -> web.Response:
    return error_answer(
        403,
        f"token `{token.name}` may not {verb} `{service}` "
        f"(it is limited to: {token.describe_scope()})",
        service=service,
    )
