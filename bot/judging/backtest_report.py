"""One backtest's results, per service, and their JSON form. Pure.

The JSON is the contract for scripts (schema 1): numbers and codes only; sentences are the
renderer's (bot.render.backtest).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bot.judging.backtest import (
    AASummary,
    FaultSummary,
    ReleaseReplay,
    ServiceInputs,
    StableSpan,
    aa_and_faults,
    replay_releases,
)
from bot.judging.calibrate import GRID_TEXT, Candidate, Suggestion, search
from bot.judging.replay import Round, Run

SCHEMA = 1


@dataclass(frozen=True)
class ServiceReport:
    service: str
    stable: tuple[StableSpan, ...]
    aa: AASummary
    faults: tuple[FaultSummary, ...]
    releases: tuple[ReleaseReplay, ...]
    suggestion: Suggestion | None = None
    target: float = 0.01


@dataclass(frozen=True)
class BacktestReport:
    policy: str
    prometheus: str
    start: float
    end: float
    resolution: float
    target: float
    services: tuple[ServiceReport, ...]
    audit: str  # "read", or why the past releases were not replayed
    notes: tuple[str, ...] = field(default_factory=tuple)


def backtest_service(
    inputs: ServiceInputs, target: float, *, suggest: bool = True
) -> ServiceReport:
    """The policy as written on every part, and the grid when asked for."""
    aa, faults = aa_and_faults(inputs, inputs.sp)
    releases = replay_releases(inputs, inputs.sp)
    suggestion = search(inputs, target) if suggest and aa.runs else None
    return ServiceReport(
        inputs.service,
        inputs.stable,
        aa,
        tuple(faults),
        tuple(releases),
        suggestion,
        target,
    )


def _num(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def _round(r: Round) -> dict[str, Any]:
    return {
        "at": round(r.at, 3),
        "weight": r.weight,
        "state": r.state,
        "verdict": r.verdict,
        "failing": list(r.failing),
        "no_data": list(r.no_data),
        "reason": r.reason,
    }


def _run(run: Run, *, rounds: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "start": round(run.start, 3),
        "end": round(run.end, 3),
        "outcome": run.outcome,
        "informative": run.informative,
        "rounds_judged": len(run.rounds),
        "failed_rounds": run.failed_rounds,
        "seconds": round(run.seconds, 3),
        "reason": run.reason,
    }
    if rounds:
        out["rounds"] = [_round(r) for r in run.rounds]
    return out


def aa_dict(aa: AASummary) -> dict[str, Any]:
    return {
        "windows": len(aa.runs),
        "judged": len(aa.judged),
        "without_data": len(aa.runs) - len(aa.judged),
        "left_out_stable_changed": aa.straddling,
        "offset_seconds": aa.offset,
        "release_seconds": aa.ladder,
        "false_rollbacks": aa.false_rollbacks,
        "false_rollback_rate_per_release": _num(aa.rate),
        "false_rollback_rate_upper_95": _num(aa.upper_95),
        "false_rollbacks_per_day": _num(aa.per_day),
        "failed_round_rate": _num(aa.failed_round_rate),
        "paused": aa.count("paused"),
        "unfinished": aa.count("unfinished"),
        "culprits": aa.culprits,
        "runs": [_run(r) for r in aa.runs],
    }


def _spread(values: Sequence[float]) -> dict[str, float | None]:
    return {
        "median": _num(statistics.median(values)) if values else None,
        "max": _num(max(values)) if values else None,
    }


def fault_dict(f: FaultSummary) -> dict[str, Any]:
    return {
        "effect": f.effect.text,
        "metric": f.effect.metric,
        "kind": f.effect.kind,
        "amount": f.effect.amount,
        "windows": len(f.runs),
        "judged": len(f.judged),
        "detected": len(f.detected),
        "detection_rate": _num(f.rate),
        "rounds_to_detection": _spread([float(n) for n in f.rounds]),
        "seconds_to_detection": _spread(f.seconds),
        "runs": [_run(r) for r in f.runs],
    }


def release_dict(item: ReleaseReplay) -> dict[str, Any]:
    past = item.past
    run = item.run
    last = run.ended_at
    return {
        "release_id": past.release_id,
        "version": past.version,
        "stable": past.stable,
        "started_at": round(past.start, 3),
        "steps": list(past.weights),
        "actual": {
            "outcome": past.outcome,
            "at": round(past.left_canary_at, 3),
            "decided_by": past.decided_by,
            "reason": past.reason,
        },
        "replayed": {
            **_run(run, rounds=True),
            "at_weight": last.weight if last is not None else None,
        },
        "agreement": item.agreement,
    }


def _candidate(c: Candidate) -> dict[str, Any]:
    return {
        "failure_limit": c.failure_limit,
        "margin_scale": c.scale,
        "false_rollback_rate": _num(c.aa.rate),
        "false_rollbacks": c.aa.false_rollbacks,
        "judged": len(c.aa.judged),
        "detection": {f.effect.text: _num(f.rate) for f in c.faults},
        "median_seconds_to_detection": {f.effect.text: _num(f.median_seconds) for f in c.faults},
        "meets": c.meets,
    }


def suggestion_dict(s: Suggestion) -> dict[str, Any]:
    chosen = s.chosen
    return {
        "grid": GRID_TEXT,
        "chosen": None
        if chosen is None
        else {"failure_limit": chosen.failure_limit, "margin_scale": chosen.scale},
        "settings": s.settings,
        "current": s.current,
        "candidates": [_candidate(c) for c in s.candidates],
    }


def to_dict(report: BacktestReport) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "policy": report.policy,
        "prometheus": report.prometheus,
        "history": {
            "start": round(report.start, 3),
            "end": round(report.end, 3),
            "resolution_seconds": report.resolution,
        },
        "target_false_rollback_rate": report.target,
        "audit": report.audit,
        "notes": list(report.notes),
        "services": {
            s.service: {
                "stable": [{"since": round(x.since, 3), "version": x.version} for x in s.stable],
                "aa": aa_dict(s.aa),
                "faults": [fault_dict(f) for f in s.faults],
                "releases": [release_dict(r) for r in s.releases],
                "suggestion": suggestion_dict(s.suggestion) if s.suggestion else None,
            }
            for s in report.services
        },
    }
