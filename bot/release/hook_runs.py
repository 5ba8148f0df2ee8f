"""What the step hooks did: each hook's result, a step's run of them, and the CI job a webhook
hook started and waits for (pure records; bot.engine.hooks runs them, bot.store keeps them).

They are kept in Redis so that every process sees them: the web process refuses a person's
`/advance` past hooks that have not passed, and answers the CI job's callback, while the
controller process runs the hooks.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from bot.release.policy import HookFailure


@dataclass(frozen=True)
class HookResult:
    """What one hook did."""

    kind: str  # "url" | "load" | "webhook"
    target: str  # the URL called or loaded, placeholders filled in (from the policy)
    passed: bool
    detail: str  # "HTTP 500", "timed out after 5s", "598 of 600 requests answered"
    seconds: float
    timed_out: bool = False
    on_failure: HookFailure = HookFailure.HOLD

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "target": self.target,
            "passed": self.passed,
            "detail": self.detail,
            "seconds": round(self.seconds, 3),
            "timed_out": self.timed_out,
            "on_failure": self.on_failure.value,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HookResult:
        return cls(
            kind=str(d["kind"]),
            target=str(d["target"]),
            passed=bool(d["passed"]),
            detail=str(d["detail"]),
            seconds=float(d["seconds"]),
            timed_out=bool(d.get("timed_out", False)),
            on_failure=HookFailure(d.get("on_failure", HookFailure.HOLD.value)),
        )


@dataclass(frozen=True)
class HookRun:
    """The hooks run before a release enters one step, all finished."""

    release_id: str
    step: int  # the step the hooks guard (index into the release's weights)
    weight: int  # that step's weight
    results: tuple[HookResult, ...]
    finished_at: float
    started_at: float = 0.0

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    @property
    def on_failure(self) -> HookFailure:
        """What the failed hooks ask for: the strictest of them (rollback > pause > hold)."""
        asked = {r.on_failure for r in self.results if not r.passed}
        for failure in (HookFailure.ROLLBACK, HookFailure.PAUSE):
            if failure in asked:
                return failure
        return HookFailure.HOLD

    @property
    def first_failure(self) -> HookResult | None:
        return next((r for r in self.results if not r.passed), None)

    def to_dict(self) -> dict[str, Any]:
        """For the audit entry of the decision the run led to, and the store."""
        return {
            "step": self.step,
            "weight": self.weight,
            "passed": self.passed,
            "started_at": round(self.started_at, 3),
            "finished_at": round(self.finished_at, 3),
            "results": [r.to_dict() for r in self.results],
        }

    @classmethod
    def from_dict(cls, release_id: str, d: dict[str, Any]) -> HookRun:
        return cls(
            release_id=release_id,
            step=int(d["step"]),
            weight=int(d["weight"]),
            results=tuple(HookResult.from_dict(r) for r in d["results"]),
            finished_at=float(d["finished_at"]),
            started_at=float(d.get("started_at", 0.0)),
        )


@dataclass(frozen=True)
class HookProgress:
    """Where the hooks before one step stand: running since ``started_at``, or finished."""

    step: int
    weight: int
    started_at: float
    run: HookRun | None = None  # None while they run
    reported: bool = False  # the finished run was said in the thread and the audit


class CallState(StrEnum):
    PENDING = "pending"  # the job was started; its callback has not come
    PASSED = "passed"
    FAILED = "failed"
    TIMED_OUT = "timed_out"  # no callback before the hook's deadline


class HookCall(BaseModel):
    """A CI job a webhook hook started, waiting for its callback to ``/api/v1/hooks/{token}``.

    The token is the callback's only credential: random, unguessable, used for one job and
    dead after its deadline (a capability URL, like Slack's response_url)."""

    model_config = ConfigDict(frozen=True)

    token: str
    release_id: str
    service: str
    version: str
    step: int
    weight: int
    index: int  # the hook's place in the step's list
    started_at: float
    deadline: float
    state: CallState = CallState.PENDING
    detail: str = Field(default="", max_length=1000)
    answered_at: float | None = None

    @property
    def answered(self) -> bool:
        return self.state is not CallState.PENDING


class CallAnswer(StrEnum):
    """What became of a callback."""

    RECORDED = "recorded"
    UNKNOWN = "unknown"  # no such call (a wrong token, or one long expired)
    ALREADY = "already"  # the call had its answer (or timed out) before
    TOO_LATE = "too_late"  # the hook's deadline had passed
