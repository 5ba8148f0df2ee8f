"""``POST /api/v1/hooks/{token}``: a CI job a webhook step hook started says how it went.

Thin: parse, ask the core (bot.engine.ci_jobs), answer. The token in the URL is the only
credential (random, for one job, dead after the hook's deadline); nothing else is trusted, and
the job's ``detail`` is cut to a line of plain text before it is kept.
"""

from __future__ import annotations

import logging
import re
from typing import Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from bot.engine.ci_jobs import CALLBACK_PATH, CiJobs
from bot.release.hook_runs import CallAnswer, CallState, HookCall
from bot.render.errors import report
from handlers.api.answers import RETRY_AFTER_S, error_answer
from handlers.api.schema import field_errors

log = logging.getLogger(__name__)

# secrets.token_urlsafe(32): 43 characters of the URL-safe alphabet. Anything else is not a
# token we gave out, and never reaches Redis as part of a key.
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{43}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
DETAIL_LIMIT = 300
_UNKNOWN = "no CI job waits on this callback URL (a wrong URL, or one long expired)"


class CallbackBody(BaseModel):
    """What the CI job POSTs (fields a CI may add are ignored)."""

    model_config = ConfigDict(extra="ignore")

    status: Literal["passed", "failed"]
    detail: str = Field(default="", max_length=10_000)

    @field_validator("detail")
    @classmethod
    def _one_line(cls, value: str) -> str:
        line = " ".join(_CONTROL.sub(" ", value).split())
        return line if len(line) <= DETAIL_LIMIT else line[: DETAIL_LIMIT - 1] + "…"


def hook_callback_routes(ci_jobs: CiJobs) -> list[web.RouteDef]:
    async def hook_callback(request: web.Request) -> web.Response:
        token = request.match_info["token"]
        if not _TOKEN.match(token):
            return error_answer(404, _UNKNOWN)
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return error_answer(413, "the request body is too large")
        try:
            body = CallbackBody.model_validate_json(raw)
        except ValidationError as exc:
            log.info("CI job callback refused as invalid: %s", field_errors(exc))
            return error_answer(
                422,
                'invalid callback: send {"status": "passed" | "failed", "detail": "…"}',
                fields=field_errors(exc),
            )
        try:
            said, call = await ci_jobs.answer(token, body.status == "passed", body.detail)
        except Exception as exc:
            failed = report(exc, what="a CI job's callback", log=log)
            status = failed.shown.http_status
            headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else None
            message = "could not record the answer now; nothing changed, send it again"
            return web.json_response({"error": message}, status=status, headers=headers)
        return _answer(said, call, body.status)

    return [web.post(CALLBACK_PATH, hook_callback)]


def _answer(said: CallAnswer, call: HookCall | None, status: str) -> web.Response:
    if said is CallAnswer.UNKNOWN or call is None:
        return error_answer(404, _UNKNOWN)
    about = {
        "release": call.release_id,
        "service": call.service,
        "version": call.version,
        "weight": call.weight,
        "state": call.state.value,
    }
    if said is CallAnswer.RECORDED:
        return web.json_response({"recorded": True, **about})
    if said is CallAnswer.ALREADY and call.state.value == status:
        # A CI retrying the same answer (it did not see our 200) gets the same outcome.
        return web.json_response({"recorded": False, "reason": "already recorded", **about})
    if said is CallAnswer.ALREADY and call.state is not CallState.TIMED_OUT:
        return error_answer(
            409, f"this job's answer was already recorded as {call.state.value}", **about
        )
    return error_answer(
        410, "too late: the step hook's deadline passed and it failed as timed out", **about
    )
