"""A pre-release gate's reported result (CI build, tests, security scan, compliance), as a
pipeline sends it or a gate status URL answers it. Pure: reading the results is
``bot.engine.gates``'s job."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints

from bot.release.policy import GATE_NAME


class GateStatus(StrEnum):
    PASSED = "passed"
    FAILED = "failed"
    PENDING = "pending"


class GateResult(BaseModel):
    """One gate's reported result, and where its run can be seen."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    status: GateStatus
    url: str | None = Field(default=None, max_length=2000, pattern=r"^https?://\S+$")


def _shorthand(value: Any) -> Any:
    # "tests": "passed" is the common form; the object form adds the link to the run.
    if isinstance(value, str):
        return {"status": value}
    if isinstance(value, dict | GateResult):
        return value
    raise ValueError(
        'a gate\'s result is its status ("passed", "failed" or "pending") or an object '
        '{"status": ..., "url": ...}'
    )


ReportedGate = Annotated[GateResult, BeforeValidator(_shorthand)]
# What a pipeline sends in the API body: names as the policy spells them.
GateName = Annotated[str, StringConstraints(pattern=GATE_NAME.pattern)]
GateReport = dict[GateName, ReportedGate]
