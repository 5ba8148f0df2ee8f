"""The audit trail: one entry per decision, refusal and transition, in two streams (every
entry, and the lifecycle without routine hold rounds, which the release metrics read).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from bot.release.rollout import Actor, Release
from bot.store import keys

# Audit actions that only say "judged, nothing changed": in the audit stream, not the lifecycle.
ROUTINE_ACTIONS = frozenset({"decision:hold"})
AUDIT_PAGE = 1000  # entries per XRANGE when reading the audit stream by time


class AuditStream(StrEnum):
    """The two audit streams: every entry, or the release lifecycle (no routine holds)."""

    FULL = "full"
    LIFECYCLE = "lifecycle"

    @property
    def key(self) -> str:
        return keys.audit() if self is AuditStream.FULL else keys.lifecycle()


@dataclass(frozen=True)
class AuditEntry:
    """One line of the audit stream: who did what, from where, and the numbers behind it."""

    action: str
    actor: str
    surface: str
    service: str = ""
    release_id: str = ""
    from_state: str = ""
    to_state: str = ""
    outcome: str = "ok"  # ok | refused | duplicate | failed
    reason: str = ""
    request_id: str = ""
    detail: dict[str, Any] = field(default_factory=dict)
    at: float = field(default_factory=time.time)

    def fields(self) -> list[str]:
        flat: list[str] = []
        for name in (
            "action",
            "actor",
            "surface",
            "service",
            "release_id",
            "from_state",
            "to_state",
            "outcome",
            "reason",
            "request_id",
        ):
            flat += [name, str(getattr(self, name))]
        flat += ["at", f"{self.at:.3f}", "detail", json.dumps(self.detail, default=str)]
        return flat

    @classmethod
    def transition(
        cls,
        action: str,
        actor: Actor,
        old: Release,
        new: Release,
        *,
        reason: str = "",
        request_id: str = "",
        detail: dict[str, Any] | None = None,
    ) -> AuditEntry:
        """The entry for a change of one release, from ``old`` to ``new``."""
        return cls(
            action=action,
            actor=actor.user,
            surface=actor.surface,
            service=old.service,
            release_id=old.id,
            from_state=old.state,
            to_state=new.state,
            reason=reason,
            request_id=request_id,
            detail=detail if detail is not None else {"step": new.step, "weight": new.weight},
        )

    @classmethod
    def from_fields(cls, data: dict[str, str]) -> AuditEntry:
        return cls(
            action=data.get("action", ""),
            actor=data.get("actor", ""),
            surface=data.get("surface", ""),
            service=data.get("service", ""),
            release_id=data.get("release_id", ""),
            from_state=data.get("from_state", ""),
            to_state=data.get("to_state", ""),
            outcome=data.get("outcome", ""),
            reason=data.get("reason", ""),
            request_id=data.get("request_id", ""),
            detail=json.loads(data.get("detail") or "{}"),
            at=float(data.get("at") or 0),
        )


@dataclass(frozen=True)
class AuditPage:
    """One read of the audit stream: its entries, and where the next read continues."""

    entries: list[AuditEntry]
    last_id: str  # the stream id of the last entry read ("" when nothing was read)
    complete: bool  # the range held no more entries when it was read


@dataclass(frozen=True)
class AuditReach:
    oldest: float | None  # when the oldest entry still held was added (None: the log is empty)
    trimmed: bool  # older entries were dropped to keep the stream capped


def stream_id_time(stream_id: str) -> float:
    """Seconds since the epoch of a stream id ("<ms>-<seq>": Redis's clock when it was added)."""
    return int(stream_id.split("-", 1)[0]) / 1000
