"""The traffic-backend port."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol


class TrafficAction(StrEnum):
    START = "start"  # first weight of a new release
    SHIFT = "shift"  # a later step
    PROMOTE = "promote"  # the canary becomes the only version (100%)
    ROLLBACK = "rollback"  # everyone back to stable (0%)


@dataclass(frozen=True)
class TrafficChange:
    release_id: str
    service: str
    version: str  # the canary (new) version
    stable_version: str  # the version users go back to on rollback
    weight: int  # percent of users on the canary, 0..100
    action: TrafficAction


class TrafficBackend(Protocol):
    """Applies a weight. Returns when the change is done; raises TrafficError when it is not."""

    name: str

    async def apply(self, change: TrafficChange) -> None: ...

    async def close(self) -> None: ...
