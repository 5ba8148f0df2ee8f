"""Evaluation cases: the JSON schema, loading, and turning a case into the bot's own records.

A case is one rolled-back release as the bot would hold it, written by hand: the release record,
its audit trail, the service's previous release, and what a good diagnosis of it says. Times in
a case are seconds from ``started`` (the release's start), so cases read as a timeline and stay
valid whatever day they are run.

:func:`record_case` writes the case into a Store the way the bot writes it (``Store.create`` and
``Store.commit`` for the releases, ``Store.append_audit`` for the trail), so the evidence pack is
built from Redis by ``bot.writing.evidence.build_evidence`` exactly as in production.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from bot.release.checks import CheckResult
from bot.release.policy import Risk, Strategy
from bot.release.rollout import (
    CONTROLLER,
    Action,
    Actor,
    MetricCounters,
    Release,
    State,
    new_release,
)
from bot.store.audit import AuditEntry
from bot.store.store import CreateStatus, Store

CASES_DIR = Path(__file__).with_name("cases")

# Phrases that admit the evidence shows no cause, used when a case gives none of its own. The
# diagnosis prompt asks for "The evidence does not point to a cause."; the rest are the usual
# ways of saying the same, and "not analysed" is what the template fallback writes.
DEFAULT_UNCERTAINTY = (
    "does not point to",
    "doesn't point to",
    "do not point to",
    "not enough evidence",
    "no evidence",
    "insufficient evidence",
    "no clear cause",
    "no obvious cause",
    "not clear",
    "unclear",
    "cannot tell",
    "can't tell",
    "cannot be determined",
    "cannot determine",
    "none of the changes",
    "does not explain",
    "do not explain",
    "inconclusive",
    "not analysed",
    "not analyzed",
)


class CaseError(ValueError):
    """A case file is missing, unreadable or does not follow the schema."""


class _Strict(BaseModel):
    # A misspelt field in a hand-written case must fail loudly, not be dropped.
    model_config = ConfigDict(extra="forbid", frozen=True)


class Person(_Strict):
    user: str
    surface: str = "slack"  # slack | console | api | controller


class ApprovalSpec(_Strict):
    step: int  # index into weights
    by: str
    at: float


class AuditSpec(_Strict):
    """One audit entry; ``repeat`` writes it ``count`` times, ``every`` seconds apart (the
    controller records a decision every interval, and the pack folds such runs)."""

    at: float
    action: str  # deploy, traffic, decision:hold, decision:advance, rollback, rolled_back, ...
    actor: str = CONTROLLER.user
    surface: str = CONTROLLER.surface
    from_state: str = ""
    to_state: str = ""
    outcome: str = "ok"
    reason: str = ""
    weight: int | None = None  # shorthand for detail["weight"]
    detail: dict[str, Any] = Field(default_factory=dict)
    repeat: tuple[int, float] | None = None  # (count, every seconds)


class ReleaseSpec(_Strict):
    """The release record (bot.release.rollout.Release) in the state the diagnosis sees it."""

    id: str
    number: int
    service: str
    version: str
    stable_version: str
    strategy: str = "canary"
    risk: Risk = Risk.NORMAL
    weights: list[int]
    holds: list[float]
    interval: float = 30.0
    bake: float = 900.0
    requested_by: Person
    notes: str = ""
    changes: list[dict[str, Any]] = Field(default_factory=list)  # {title, pr, author, url}

    state: Literal["rolled_back", "rolling_back"] = "rolled_back"
    step: int  # index of the step it stopped at
    reason: str
    rolled_back_by: Person = Person(user=CONTROLLER.user, surface=CONTROLLER.surface)
    step_started_at: float = 0.0
    rollback_started_at: float
    finished_at: float | None = None  # None while still rolling back
    approvals: list[ApprovalSpec] = Field(default_factory=list)

    last_checks: list[CheckResult] = Field(default_factory=list)
    counters: dict[str, MetricCounters] = Field(default_factory=dict)
    last_score: dict[str, Any] | None = None
    evaluations: int = 0
    baseline: dict[str, float] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> ReleaseSpec:
        if not self.weights or len(self.holds) != len(self.weights):
            raise ValueError("weights and holds must be non-empty and of the same length")
        if not 0 <= self.step < len(self.weights):
            raise ValueError(f"step {self.step} is outside weights {self.weights}")
        if self.state == "rolled_back" and self.finished_at is None:
            raise ValueError("a rolled_back release needs finished_at")
        for i, change in enumerate(self.changes):
            if not str(change.get("title") or "").strip():
                raise ValueError(f"changes[{i}] has no title")
        return self


class PreviousSpec(_Strict):
    """The service's release before this one (only what the evidence pack shows of it)."""

    id: str
    number: int
    version: str
    stable_version: str = ""
    state: Literal["succeeded", "rolled_back"] = "succeeded"
    requested_by: Person
    started_at: float  # negative: before this release started
    finished_at: float
    reason: str = ""


class Expect(_Strict):
    """What a good diagnosis of the case does (see README.md, "Scores")."""

    must_state: list[str] = Field(min_length=1)
    cause_keywords: list[list[str]] = Field(default_factory=list)
    must_not: list[str] = Field(default_factory=list)
    cause_must_not: list[str] = Field(default_factory=list)
    must_admit_uncertainty: bool = False
    uncertainty_phrases: list[str] = Field(default_factory=lambda: list(DEFAULT_UNCERTAINTY))

    @model_validator(mode="after")
    def _groups(self) -> Expect:
        if any(not group or not all(w.strip() for w in group) for group in self.cause_keywords):
            raise ValueError("each cause_keywords group needs one or more non-empty words")
        if self.must_admit_uncertainty and not self.uncertainty_phrases:
            raise ValueError("must_admit_uncertainty needs uncertainty_phrases")
        return self


class Case(_Strict):
    id: str
    title: str
    description: str = ""
    started: datetime  # when the release started; every other time is seconds from here
    units: dict[str, str] = Field(default_factory=dict)  # metric -> unit, as the policy says
    release: ReleaseSpec
    audit: list[AuditSpec] = Field(min_length=1)
    previous: PreviousSpec | None = None
    expect: Expect

    @model_validator(mode="after")
    def _trail(self) -> Case:
        if self.started.tzinfo is None:
            raise ValueError("started needs a time zone, e.g. 2024-05-14T09:12:00Z")
        if self.audit[0].action != "deploy":
            raise ValueError("the first audit entry must be the deploy")
        times = [a.at for a in self.audit]
        if times != sorted(times):
            raise ValueError("audit entries must be in time order")
        return self

    @property
    def t0(self) -> float:
        return self.started.timestamp()


def load_case(path: Path) -> Case:
    try:
        case = Case.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, json.JSONDecodeError, ValidationError) as exc:
        raise CaseError(f"{path}: {exc}") from exc
    if case.id != path.stem:
        raise CaseError(f"{path}: id {case.id!r} differs from the file name {path.stem!r}")
    return case


def load_cases(directory: Path, only: set[str] | None = None) -> list[Case]:
    """Every ``*.json`` case in ``directory``, by file name; ``only`` keeps those ids."""
    if not directory.is_dir():
        raise CaseError(f"{directory}: no such directory")
    cases = [load_case(p) for p in sorted(directory.glob("*.json"))]
    if only is not None:
        unknown = only - {c.id for c in cases}
        if unknown:
            raise CaseError(f"no case named {', '.join(sorted(unknown))} in {directory}")
        cases = [c for c in cases if c.id in only]
    if not cases:
        raise CaseError(f"{directory}: no *.json cases")
    return cases


# --- from a case to the bot's records -------------------------------------------------------------


def _actor(person: Person) -> Actor:
    return Actor(user=person.user, surface=person.surface)


def build_release(case: Case) -> Release:
    """The release record as the bot holds it when the rollback is done."""
    spec, t0 = case.release, case.t0
    base = new_release(
        release_id=spec.id,
        number=spec.number,
        service=spec.service,
        version=spec.version,
        stable_version=spec.stable_version,
        weights=spec.weights,
        holds=spec.holds,
        interval=spec.interval,
        bake=spec.bake,
        strategy=Strategy(spec.strategy),
        risk=spec.risk,
        notes=spec.notes,
        actor=_actor(spec.requested_by),
        now=t0,
    )
    rollback_at = t0 + spec.rollback_started_at
    finished = None if spec.finished_at is None else t0 + spec.finished_at
    done = spec.state == "rolled_back"
    last_at = finished if finished is not None else rollback_at
    record = base.model_dump(mode="json")
    record.update(
        changes=spec.changes,
        # As rollout.start_rollback and finish_rollback leave it: weight 0, step kept, the
        # transition attributed to whoever decided the rollback.
        state=spec.state,
        step=spec.step,
        weight=0,
        applied_weight=0 if done else None,
        awaiting_step=None,
        reason=spec.reason,
        step_started_at=t0 + spec.step_started_at,
        updated_at=last_at,
        rollback_started_at=rollback_at,
        finished_at=finished,
        last={
            "action": (Action.FINISH_ROLLBACK if done else Action.ROLLBACK).value,
            "state": spec.state,
            "by": spec.rolled_back_by.user,
            "surface": spec.rolled_back_by.surface,
            "at": last_at,
            "reason": spec.reason,
        },
        approvals=[{"step": a.step, "by": a.by, "at": t0 + a.at} for a in spec.approvals],
        counters={name: c.model_dump() for name, c in spec.counters.items()},
        last_checks=spec.last_checks,
        last_score=spec.last_score,
        last_eval_at=rollback_at if spec.evaluations else None,
        evaluations=spec.evaluations,
        baseline=spec.baseline,
    )
    return Release.model_validate(record)


def build_previous(case: Case) -> Release | None:
    prev = case.previous
    if prev is None:
        return None
    spec, t0 = case.release, case.t0
    base = new_release(
        release_id=prev.id,
        number=prev.number,
        service=spec.service,
        version=prev.version,
        stable_version=prev.stable_version,
        weights=spec.weights,
        holds=spec.holds,
        interval=spec.interval,
        bake=spec.bake,
        strategy=Strategy(spec.strategy),
        risk=spec.risk,
        notes="",
        actor=_actor(prev.requested_by),
        now=t0 + prev.started_at,
    )
    finished = t0 + prev.finished_at
    state = State(prev.state)
    record = base.model_dump(mode="json")
    record.update(
        state=state.value,
        step=len(spec.weights) - 1 if state is State.SUCCEEDED else 0,
        weight=100 if state is State.SUCCEEDED else 0,
        awaiting_step=None,
        reason=prev.reason,
        updated_at=finished,
        finished_at=finished,
        last={
            "action": (
                Action.SUCCEED if state is State.SUCCEEDED else Action.FINISH_ROLLBACK
            ).value,
            "state": state.value,
            "by": CONTROLLER.user,
            "surface": CONTROLLER.surface,
            "at": finished,
            "reason": prev.reason or "bake window passed",
        },
    )
    return Release.model_validate(record)


def audit_entries(case: Case) -> list[AuditEntry]:
    """The case's audit trail as the bot's AuditEntry values, repeats expanded."""
    out: list[AuditEntry] = []
    for spec in case.audit:
        count, every = spec.repeat or (1, 0.0)
        detail = dict(spec.detail)
        if spec.weight is not None:
            detail["weight"] = spec.weight
        for i in range(count):
            out.append(
                AuditEntry(
                    action=spec.action,
                    actor=spec.actor,
                    surface=spec.surface,
                    service=case.release.service,
                    release_id=case.release.id,
                    from_state=spec.from_state,
                    to_state=spec.to_state,
                    outcome=spec.outcome,
                    reason=spec.reason,
                    detail=detail,
                    at=case.t0 + spec.at + i * every,
                )
            )
    return out


async def record_case(store: Store, case: Case) -> Release:
    """Write the case into ``store`` as the bot would have, and return the release record.

    The previous release is created and finished first, then this one is created with its
    deploy entry, its trail appended, and its final record committed (which, being terminal,
    also takes it out of the active index). ``store`` should hold nothing else for the service.
    """
    previous = build_previous(case)
    if previous is not None:
        deploy = AuditEntry(
            action="deploy",
            actor=previous.requested_by,
            surface=previous.surface,
            service=previous.service,
            release_id=previous.id,
            to_state=State.PROGRESSING.value,
            detail={"version": previous.version, "steps": previous.weights},
            at=previous.created_at,
        )
        await _create(store, previous, deploy)
        await store.commit(previous, expected_rev=0, audit=None)

    release = build_release(case)
    first, *rest = audit_entries(case)
    await _create(store, release, first)
    for entry in rest:
        await store.append_audit(entry)
    committed = await store.commit(release, expected_rev=0, audit=None)
    if committed.current is None:
        raise CaseError(f"{case.id}: saving the release failed ({committed.status})")
    return committed.current


async def _create(store: Store, release: Release, deploy: AuditEntry) -> None:
    created = await store.create(release, deploy)
    if created.status is not CreateStatus.OK:
        raise CaseError(f"{release.label}: could not be created ({created.status})")
