"""What a request to the API must look like, and its field errors in words a pipeline's
author can act on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import ErrorDetails

from bot.release.gates import GateReport
from bot.release.policy import Risk

DEFAULT_RECORDS = 20
Json = dict[str, Any]
MAX_RECORDS = 100


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


class HandbackRequest(BaseModel):
    """The body of POST /api/v1/rollouts/{service}/handback: who asks (as for a start)."""

    model_config = ConfigDict(extra="forbid", strict=True, str_strip_whitespace=True)

    requested_by: str = Field(min_length=1, max_length=100, pattern=r"^[^\x00-\x1f\x7f()<>]+$")
    request_id: str = Field(default="", max_length=200, pattern=r"^\S*$")


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
