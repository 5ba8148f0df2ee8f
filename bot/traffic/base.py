"""The traffic-backend port."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, runtime_checkable


class TrafficAction(StrEnum):
    START = "start"  # first weight of a new release
    SHIFT = "shift"  # a later step
    PROMOTE = "promote"  # the canary becomes the only version (100%)
    ROLLBACK = "rollback"  # everyone back to stable (0%)
    # After a success, once the stable pool runs the new version too: everyone to it (0%), so
    # the canary pool is idle (and safe to deploy the next build to) between releases.
    HAND_BACK = "hand_back"


@dataclass(frozen=True)
class TrafficChange:
    release_id: str
    service: str
    version: str  # the canary (new) version
    stable_version: str  # the version users go back to on rollback
    weight: int  # percent of users on the canary, 0..100
    action: TrafficAction


def target_weight(change: TrafficChange) -> int:
    """The percent on the canary a change asks for: promote and rollback are absolute whatever
    weight the caller carried (a rollback that left 1% on a bad version would not be one)."""
    if change.action in (TrafficAction.ROLLBACK, TrafficAction.HAND_BACK):
        return 0
    if change.action is TrafficAction.PROMOTE:
        return 100
    return change.weight


@dataclass(frozen=True)
class Applied:
    """What an engine really applies for a service, read back from it."""

    weight: int | None  # percent of users on the canary; None: the engine has nothing set
    version: str = ""  # the canary version, where the engine knows it
    stable_version: str = ""


class TrafficBackend(Protocol):
    """Applies a weight. Returns when the change is done; raises TrafficError when it is not.

    ``current`` reads back what the engine applies now (None when this engine cannot be read
    back); it raises TrafficError when the engine cannot be reached."""

    name: str

    async def apply(self, change: TrafficChange) -> None: ...

    async def current(self, service: str) -> Applied | None: ...

    async def close(self) -> None: ...


@runtime_checkable
class PlanChecker(Protocol):
    """An engine with steps of its own (Argo Rollouts): they must agree with a release's plan
    before it starts. ``check_plan`` says how they differ ("" when they agree); TrafficError
    when the engine cannot be read."""

    async def check_plan(self, service: str, weights: list[int]) -> str: ...
