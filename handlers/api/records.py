"""Releases as the API answers them: the summary after a start, the full deployment record."""

from __future__ import annotations

from datetime import UTC, datetime

from bot.release.rollout import Release, State
from bot.store.store import Lock
from handlers.api.schema import Json

ROLLOUTS = "/api/v1/rollouts"
RELEASES = "/api/v1/releases"


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
        "last_score": release.last_score.to_dict() if release.last_score else None,
    }


def lock_json(lock: Lock) -> Json:
    return {"by": lock.by, "reason": lock.reason, "at": _iso(lock.at), "surface": lock.surface}


def status_url(service: str) -> str:
    return f"{ROLLOUTS}/{service}"
