"""The command port: every human (or CI) request goes through here, whatever the surface.

Each command checks permission, reads the release, applies a pure transition and commits it
atomically. A commit that loses a race is retried against the fresh record only while the
request still makes sense (an advance of step k does not become an advance of step k+1).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from bot.engine.actuator import TrafficActuator
from bot.engine.events import EventBus, EventKind, ReleaseEvent
from bot.engine.gates import GateChecker
from bot.engine.sizing import audit_reason, refusal, size
from bot.errors import (
    AlreadyActiveError,
    ConflictError,
    HooksNotPassedError,
    JustMovedError,
    LockedError,
    LostRaceError,
    PermissionDenied,
    TrafficError,
    UserError,
)
from bot.judging.sizing import Sizing
from bot.metrics.base import MetricSource
from bot.release import rollout
from bot.release.plan import plan_release, step_settings
from bot.release.policy import Policy, ServicePolicy
from bot.release.request import DeployOptions
from bot.release.rollout import Actor, GateRecord, Release, State
from bot.store.audit import AuditEntry
from bot.store.store import CommitStatus, CreateResult, CreateStatus, Lock, LockStatus, Store

log = logging.getLogger(__name__)

MAX_RACE_RETRIES = 5


class Outcome(StrEnum):
    DONE = "done"
    DUPLICATE = "duplicate"  # the same request id was applied before; nothing changed


@dataclass(frozen=True)
class Result:
    outcome: Outcome
    release: Release
    message: str
    sizing: Sizing | None = None  # deploy: the first step against the service's traffic


class ReleaseService:
    def __init__(
        self,
        store: Store,
        policy: Policy,
        actuator: TrafficActuator,
        events: EventBus,
        clock: Callable[[], float] = time.time,
        gates: GateChecker | None = None,
        source: MetricSource | None = None,
    ) -> None:
        self.store = store
        self.policy = policy
        self.actuator = actuator
        self.events = events
        self.clock = clock
        # Without a checker, gates can only come from the caller (no status URL is known).
        self.gates = gates or GateChecker()
        # Where a deploy reads the service's traffic to size its first step; None: not sized.
        self.source = source

    # --- permissions ------------------------------------------------------------------------

    def _may(self, actor: Actor, allowed: list[str]) -> bool:
        return actor.is_controller or actor.user in allowed or bool(actor.groups & set(allowed))

    async def _require(
        self, actor: Actor, sp: ServicePolicy, service: str, action: str, allowed: list[str]
    ) -> None:
        if not allowed or self._may(actor, allowed):
            return
        await self._refuse(actor, service, action, f"not in {allowed}")
        raise PermissionDenied(action, service, allowed)

    async def _require_deployer(
        self, actor: Actor, sp: ServicePolicy, service: str, action: str
    ) -> None:
        allowed = sorted(set(sp.deployers) | set(sp.approvers)) if sp.deployers else []
        await self._require(actor, sp, service, action, allowed)

    async def _refuse(
        self,
        actor: Actor,
        service: str,
        action: str,
        reason: str,
        release_id: str = "",
        detail: dict[str, Any] | None = None,
    ) -> None:
        log.info("refused %s of %s for %s: %s", action, service, actor.user, reason)
        await self.store.append_audit(
            AuditEntry(
                action=action,
                actor=actor.user,
                surface=actor.surface,
                service=service,
                release_id=release_id,
                outcome="refused",
                reason=reason,
                detail=detail or {},
            )
        )

    # --- deploy -----------------------------------------------------------------------------

    async def deploy(
        self,
        actor: Actor,
        service: str,
        version: str,
        options: DeployOptions | None = None,
        request_id: str = "",
    ) -> Result:
        """Start a release: permission, the plan, the gates, then one atomic create."""
        if replay := await self._replayed(request_id):
            return replay
        opts = options or DeployOptions()
        sp = self.policy.service(service)
        await self._require_deployer(actor, sp, service, "deploy")
        if opts.force and not (actor.is_controller or self._may(actor, list(sp.approvers))):
            # Forcing past the gates is the approvers' call; with none configured, nobody's.
            await self._refuse(actor, service, "deploy", "--force by someone not an approver")
            raise PermissionDenied("force a release past the gates of", service, sp.approvers)
        # The real reason first: a release already running is why this one cannot start, however
        # its plan would have been judged. (The create below refuses it atomically as well.)
        if (active := await self.store.active_for(service)) is not None:
            raise await self._already_active(actor, service, version, active)
        previous = await self.store.history(service, limit=20)
        if sp.traffic.hands_back:
            await self._require_handed_back(actor, service, version, previous)
        plan = plan_release(sp, service, version, opts, previous)
        # Sized before the engine is asked: `auto` may change the steps the engine must match.
        sizing = await size(self.source, sp, service, plan, explicit=opts.steps is not None)
        if sizing is not None:
            if sizing.refused:
                await self._refuse(
                    actor, service, "deploy", audit_reason(sizing),
                    detail={"first_step": sizing.as_json()},
                )  # fmt: skip
                raise refusal(sizing)
            plan = replace(plan, weights=list(sizing.weights), holds=list(sizing.holds))
        await self._require_engine_agrees(actor, service, plan.version, plan.weights)
        gates = await self._check_gates(actor, sp, service, plan.version, opts)
        intervals, approval_steps = step_settings(sp, plan.weights)
        release = rollout.new_release(
            release_id=uuid.uuid4().hex[:12],
            number=await self.store.next_number(),
            service=service,
            version=plan.version,
            stable_version=plan.stable,
            weights=plan.weights,
            holds=plan.holds,
            interval=sp.interval,
            bake=sp.bake,
            strategy=plan.strategy,
            risk=plan.risk,
            notes=opts.notes,
            actor=actor,
            now=self.clock(),
            intervals=intervals,
            approval_steps=approval_steps,
        ).model_copy(update={"changes": [dict(c) for c in opts.changes], "gates": gates})
        created = await self.store.create(
            release, _deploy_audit(release, request_id, sizing), request_id
        )
        if created.status is CreateStatus.DUPLICATE:
            existing = await self.store.get(created.release_id)
            assert existing is not None
            return Result(Outcome.DUPLICATE, existing, "this request was already applied")
        if created.status is not CreateStatus.OK:
            raise await self._not_created(actor, release, created)
        return Result(
            Outcome.DONE,
            await self._start(release, actor, sizing),
            _started_text(release),
            sizing,
        )

    async def _not_created(
        self, actor: Actor, release: Release, created: CreateResult
    ) -> ConflictError:
        """Why the store refused to create ``release`` (a lock, another active release),
        audited as a refusal."""
        service = release.service
        if created.status is CreateStatus.LOCKED:
            lock = created.lock.describe() if created.lock else f"`{service}` is locked"
            await self._refuse(actor, service, "deploy", lock)
            return LockedError(f"cannot deploy: {lock}. `/rollout unlock {service}` lifts it.")
        other = await self.store.get(created.release_id)
        return await self._already_active(actor, service, release.version, other)

    async def _already_active(
        self, actor: Actor, service: str, version: str, other: Release | None
    ) -> AlreadyActiveError:
        """The refusal of a deploy while ``other`` is being released: who, what, since when."""
        await self._refuse(
            actor, service, "deploy", "another release is active", other.id if other else ""
        )
        when = time.strftime("%H:%M UTC", time.gmtime(other.created_at)) if other else "?"
        who = other.requested_by if other else "?"
        what = other.version if other else "?"
        return AlreadyActiveError(
            f"cannot deploy {version.strip()}: {service} {what} is already being released, "
            f"started by {who} at {when} ({other.describe_state() if other else 'unknown state'}"
            f"). Wait for it, or `/rollback {service}` first."
        )

    async def _require_handed_back(
        self, actor: Actor, service: str, version: str, previous: list[Release]
    ) -> None:
        """Refuse a release while the canary pool still serves users of the last one: the next
        build goes to that pool, and would reach them unjudged."""
        try:
            applied = await self.actuator.current(service)
        except TrafficError as exc:
            await self._refuse(actor, service, "deploy", f"traffic engine unreadable: {exc}")
            raise TrafficError(
                f"cannot deploy {version.strip()}: the traffic engine of `{service}` cannot be "
                f"read ({exc}). Nothing was changed; try again once it answers."
            ) from exc
        if applied is None or not applied.weight:
            return
        last = previous[0] if previous else None
        await self._refuse(actor, service, "deploy", f"canary pool at {applied.weight}%")
        head = (
            f"cannot deploy {version.strip()}: the canary pool of `{service}` still serves "
            f"{applied.weight}% of users"
        )
        if last is not None and last.state is State.SUCCEEDED:
            raise ConflictError(
                f"{head} since {last.label} succeeded. Put `{last.version}` on the stable pool, "
                f"then `/rollout handback {service}` moves everyone there; deploy the new build "
                "to the canary pool after that."
            )
        # Nothing of ours put it there (or it was changed after our last release ended).
        raise ConflictError(
            f"{head}, and no release of it is running. Set it to 0% in the traffic engine (or "
            "finish whatever set it), then deploy again."
        )

    async def _require_engine_agrees(
        self, actor: Actor, service: str, version: str, weights: list[int]
    ) -> None:
        """An engine with steps of its own (Argo Rollouts) must have the plan's steps."""
        try:
            problem = await self.actuator.plan_problem(service, weights)
        except TrafficError as exc:
            await self._refuse(actor, service, "deploy", f"traffic engine unreadable: {exc}")
            raise TrafficError(
                f"cannot deploy {version.strip()}: {exc}. Nothing was changed; try again once "
                "the traffic engine answers."
            ) from exc
        if problem:
            await self._refuse(actor, service, "deploy", f"engine steps differ: {problem}")
            raise ConflictError(
                f"cannot deploy {version.strip()}: {problem}. Make the engine's steps match "
                "(or the service's `steps` in the policy), then deploy again."
            )

    async def hand_back(self, actor: Actor, service: str, request_id: str = "") -> Result:
        """After a success, once the stable pool runs the released version too: everyone to
        the stable pool (0%), so the canary pool is free for the next build."""
        sp = self.policy.service(service)
        await self._require_deployer(actor, sp, service, "hand_back")
        if (active := await self.store.active_for(service)) is not None:
            raise ConflictError(
                f"cannot hand back `{service}`: {active.describe_state()}. A release in "
                f"progress moves its own traffic; `/rollback {service}` sends everyone to stable."
            )
        history = await self.store.history(service, limit=1)
        last = history[0] if history else None
        if last is None or last.state is not State.SUCCEEDED:
            what = f"{last.label} {last.state.value}" if last else "there is no release yet"
            raise ConflictError(
                f"nothing to hand back for `{service}`: {what}. A handback follows a release "
                "that succeeded."
            )
        applied = await self.actuator.current(service)
        if applied is not None and applied.weight == 0:
            return Result(
                Outcome.DUPLICATE, last, f"everyone on `{service}` is on the stable pool already"
            )
        await self.actuator.hand_back(last)
        await self.store.append_audit(
            AuditEntry(
                action="hand_back",
                actor=actor.user,
                surface=actor.surface,
                service=service,
                release_id=last.id,
                reason=f"{last.version} on the stable pool",
                request_id=request_id,
            )
        )
        self.events.emit(ReleaseEvent(EventKind.HANDED_BACK, last, actor=actor.user))
        return Result(
            Outcome.DONE,
            last,
            f"everyone on `{service}` is on the stable pool ({last.version}) again; the canary "
            "pool is free for the next build",
        )

    async def _start(self, release: Release, actor: Actor, sizing: Sizing | None = None) -> Release:
        """Announce a created release and move its first traffic (or ask for approval)."""
        self.events.emit(ReleaseEvent(EventKind.STARTED, release, actor=actor.user, sizing=sizing))
        if release.state is State.PENDING_APPROVAL:
            self.events.emit(ReleaseEvent(EventKind.APPROVAL_NEEDED, release, actor=actor.user))
            return release
        return await self.actuator.sync(release)

    async def _check_gates(
        self, actor: Actor, sp: ServicePolicy, service: str, version: str, opts: DeployOptions
    ) -> GateRecord | None:
        """The gates to record on the release; refuses (audited) unless they all passed or an
        approver forces it."""
        verdict = await self.gates.check(service, version, sp.gates, opts.gates)
        if not verdict.required and not verdict.results:
            return None
        if not verdict.passed and not opts.force:
            await self._refuse(
                actor, service, "deploy", verdict.summary(), detail={"gates": verdict.as_json()}
            )
            raise verdict.refusal(service, version)
        if not verdict.passed:
            log.warning(
                "%s forced %s %s past the gates: %s",
                actor.user,
                service,
                version,
                verdict.summary(),
            )
        return verdict.record(forced_by=actor.user)

    # --- transitions on the active release ---------------------------------------------------

    async def _replayed(self, request_id: str) -> Result | None:
        """A request id seen before changes nothing: answer with the release as it is now."""
        previous = await self.store.applied(request_id)
        if previous is None:
            return None
        release = await self.store.get(str(previous.get("release_id", "")))
        if release is None:
            return None
        return Result(Outcome.DUPLICATE, release, "this request was already applied")

    async def _active(self, service: str) -> Release:
        self.policy.service(service)  # unknown service: a clear error with a suggestion
        release = await self.store.active_for(service)
        if release is None:
            history = await self.store.history(service, limit=1)
            tail = f" The last one: {history[0].describe_state()}." if history else ""
            raise ConflictError(f"`{service}` has no active release.{tail}")
        return release

    async def _transition(
        self,
        actor: Actor,
        service: str,
        action: str,
        request_id: str,
        step: Callable[[Release], Release],
        *,
        expected_step: int | None = None,
        reason: str = "",
    ) -> Result:
        release = await self._active(service)
        for _ in range(MAX_RACE_RETRIES):
            if expected_step is not None and release.step != expected_step:
                raise LostRaceError(f"someone else won: {release.describe_state()}")
            try:
                new = step(release)
            except ConflictError:
                await self._refuse(actor, service, action, release.describe_state(), release.id)
                raise
            audit = AuditEntry.transition(
                action, actor, release, new, reason=reason, request_id=request_id
            )
            result = await self.store.commit(
                new, expected_rev=release.rev, audit=audit, request_id=request_id
            )
            if result.status is CommitStatus.OK and result.current is not None:
                return Result(Outcome.DONE, result.current, "")
            if result.status is CommitStatus.DUPLICATE:
                return Result(Outcome.DUPLICATE, release, "this request was already applied")
            if result.status is not CommitStatus.CONFLICT or result.current is None:
                raise LostRaceError(f"{release.label} changed under us; try again")
            release = result.current
            if not release.is_active:
                raise LostRaceError(f"someone else won: {release.describe_state()}")
        raise LostRaceError(f"{release.label} is changing too fast; try again")

    async def advance(
        self, actor: Actor, service: str, *, expected_step: int | None = None, request_id: str = ""
    ) -> Result:
        """Skip the rest of the hold (normal risk), or approve the next step (high risk)."""
        if replay := await self._replayed(request_id):
            return replay
        current = await self._active(service)
        if expected_step is None:
            self._refuse_a_second_typed_move(current)
            expected_step = current.step
        # A step that asks for approval (or high risk) is entered by an approval, not a skip.
        if current.state is State.PENDING_APPROVAL or current.needs_approval(current.step + 1):
            return await self.approve(
                actor, service, expected_step=expected_step, request_id=request_id
            )
        sp = self.policy.service(service)
        await self._require_deployer(actor, sp, service, "advance")
        await self._require_hooks_passed(actor, current, sp, "advance")
        now = self.clock()
        res = await self._transition(
            actor,
            service,
            "advance",
            request_id,
            lambda r: rollout.advance(r, actor, now, f"advanced by {actor.user}"),
            expected_step=current.step if expected_step is None else expected_step,
        )
        if res.outcome is Outcome.DONE:
            res = await self._after_move(res, actor)
        return res

    async def _require_hooks_passed(
        self, actor: Actor, current: Release, sp: ServicePolicy, action: str
    ) -> None:
        """A person's move past a step's hooks waits for them as the controller's does: the
        hooks are there because someone decided the traffic must not move without them."""
        if current.is_last_step:
            return
        step = current.step + 1
        weight = current.weights[step]
        if not sp.hooks_before(current.strategy, weight):
            return
        progress = await self.store.hook_runs.get(current.id, step)
        if progress is not None and progress.run is not None and progress.run.passed:
            return
        if progress is None:
            where = "have not started yet"
        elif progress.run is None:
            where = f"are running ({max(0.0, self.clock() - progress.started_at):.0f}s so far)"
        else:
            failed = progress.run.first_failure
            assert failed is not None
            where = f"failed ({failed.kind} {failed.target}: {failed.detail})"
        await self._refuse(actor, current.service, action, f"step hooks {where}", current.id)
        raise HooksNotPassedError(current.label, weight, where)

    def _refuse_a_second_typed_move(self, current: Release) -> None:
        """A typed advance or approve is meant for the step its author saw: if a person moved
        the release a moment ago, this one came too late for that step."""
        now = self.clock()
        if rollout.moved_by_person_just_now(current, now):
            ago = now - current.last.at
            wait = max(1.0, rollout.TYPED_MOVE_GUARD_S - ago)
            raise JustMovedError(current.label, current.weight, current.last.by, ago, wait)

    async def approve(
        self, actor: Actor, service: str, *, expected_step: int | None = None, request_id: str = ""
    ) -> Result:
        if replay := await self._replayed(request_id):
            return replay
        current = await self._active(service)
        if expected_step is None:
            self._refuse_a_second_typed_move(current)
        sp = self.policy.service(service)
        if actor.user == current.requested_by and not actor.is_controller:
            await self._refuse(actor, service, "approve", "requester cannot approve", current.id)
            who = ", ".join(sp.approvers) or "anyone else"
            raise PermissionDenied(
                "approve your own release of", service, [f"{who} (not the requester)"]
            )
        await self._require(actor, sp, service, "approve", list(sp.approvers))
        if current.state is State.PROGRESSING:  # approving ahead moves the traffic at once
            await self._require_hooks_passed(actor, current, sp, "approve")
        now = self.clock()

        def step(r: Release) -> Release:
            if r.state is State.PROGRESSING:
                # An approver clicking ahead of the hold: approve the next step right away.
                r = rollout.request_approval(r, actor, now, "approval given early")
            return rollout.approve(r, actor, now)

        res = await self._transition(
            actor,
            service,
            "approve",
            request_id,
            step,
            expected_step=current.step if expected_step is None else expected_step,
        )
        if res.outcome is Outcome.DONE:
            self.events.emit(ReleaseEvent(EventKind.APPROVED, res.release, actor=actor.user))
            res = await self._after_move(res, actor)
        return res

    async def _after_move(self, res: Result, actor: Actor) -> Result:
        release = res.release
        kind = EventKind.BAKING if release.state is State.BAKING else EventKind.STEP_ADVANCED
        text = (
            f"at 100%, baking for {release.bake:.0f}s against the pre-release baseline"
            if kind is EventKind.BAKING
            else f"advanced to {release.weight}% (step {release.step + 1}/{len(release.weights)})"
        )
        self.events.emit(ReleaseEvent(kind, release, actor=actor.user))
        release = await self.actuator.sync(release)
        return Result(res.outcome, release, text)

    async def rollback(
        self, actor: Actor, service: str, reason: str = "", request_id: str = ""
    ) -> Result:
        if replay := await self._replayed(request_id):
            return replay
        sp = self.policy.service(service)
        await self._require_deployer(actor, sp, service, "roll back")
        now = self.clock()
        why = reason.strip() or f"manual rollback by {actor.user}"
        res = await self._transition(
            actor,
            service,
            "rollback",
            request_id,
            lambda r: rollout.start_rollback(r, actor, now, why),
            reason=why,
        )
        if res.outcome is Outcome.DONE:
            self.events.emit(
                ReleaseEvent(EventKind.ROLLBACK_STARTED, res.release, why, actor=actor.user)
            )
            release = await self.actuator.sync(res.release)
            return Result(res.outcome, release, f"rolled back: {why}")
        return res

    async def pause(
        self, actor: Actor, service: str, reason: str = "", request_id: str = ""
    ) -> Result:
        if replay := await self._replayed(request_id):
            return replay
        sp = self.policy.service(service)
        await self._require_deployer(actor, sp, service, "pause")
        now = self.clock()
        why = reason.strip() or f"paused by {actor.user}"
        res = await self._transition(
            actor,
            service,
            "pause",
            request_id,
            lambda r: rollout.pause(r, actor, now, why),
            reason=why,
        )
        if res.outcome is Outcome.DONE:
            self.events.emit(ReleaseEvent(EventKind.PAUSED, res.release, why, actor=actor.user))
        return res

    async def resume(self, actor: Actor, service: str, request_id: str = "") -> Result:
        if replay := await self._replayed(request_id):
            return replay
        sp = self.policy.service(service)
        await self._require_deployer(actor, sp, service, "resume")
        now = self.clock()
        res = await self._transition(
            actor, service, "resume", request_id, lambda r: rollout.resume(r, actor, now)
        )
        if res.outcome is Outcome.DONE:
            self.events.emit(ReleaseEvent(EventKind.RESUMED, res.release, actor=actor.user))
        return res

    async def edit_notes(self, actor: Actor, release_id: str, notes: str) -> Release:
        """Replace a release's notes (the draft shown in its thread, edited by a person)."""
        release = await self.store.get(release_id)
        if release is None:
            raise UserError("that release is not known any more")
        sp = self.policy.service(release.service)
        await self._require_deployer(actor, sp, release.service, "edit the notes of")
        text = notes.strip()
        if len(text) > 3000:
            raise UserError(
                "release notes are limited to 3,000 characters",
                hint="shorten them, or link to a longer document",
            )
        for _ in range(MAX_RACE_RETRIES):
            new = release.model_copy(update={"notes": text, "updated_at": self.clock()})
            audit = AuditEntry.transition(
                "edit_notes", actor, release, new, detail={"chars": len(text)}
            )
            result = await self.store.commit(new, expected_rev=release.rev, audit=audit)
            if result.status is CommitStatus.OK and result.current is not None:
                return result.current
            if result.status is not CommitStatus.CONFLICT or result.current is None:
                break
            release = result.current  # the controller bumped it meanwhile: notes still apply
        raise LostRaceError(f"{release.label} changed too fast to save the notes; try again")

    # --- locks ------------------------------------------------------------------------------

    async def lock(self, actor: Actor, service: str, reason: str, request_id: str = "") -> Lock:
        sp = self.policy.service(service)
        await self._require_deployer(actor, sp, service, "lock")
        if not reason.strip():
            raise UserError("a lock needs a reason", hint=f"/rollout lock {service} <why>")
        lock = Lock(
            service=service,
            by=actor.user,
            reason=reason.strip(),
            at=self.clock(),
            surface=actor.surface,
        )
        status, existing = await self.store.lock(
            lock,
            AuditEntry(
                action="lock",
                actor=actor.user,
                surface=actor.surface,
                service=service,
                reason=lock.reason,
            ),
            request_id,
        )
        if status is LockStatus.LOCKED:
            raise LockedError(f"already locked: {existing.describe()}")
        return existing  # the lock as stored (a retried request: as it took it)

    async def unlock(self, actor: Actor, service: str, request_id: str = "") -> Lock:
        sp = self.policy.service(service)
        await self._require_deployer(actor, sp, service, "unlock")
        _, removed = await self.store.unlock(
            service,
            AuditEntry(action="unlock", actor=actor.user, surface=actor.surface, service=service),
            request_id,
        )
        if removed is None:
            raise ConflictError(f"`{service}` is not locked")
        return removed

    # --- reads ------------------------------------------------------------------------------

    async def status(self, service: str) -> Release | None:
        self.policy.service(service)
        active = await self.store.active_for(service)
        if active:
            return active
        history = await self.store.history(service, limit=1)
        return history[0] if history else None

    async def list_active(self) -> list[Release]:
        return await self.store.active_releases()

    async def history(self, service: str, limit: int = 10) -> list[Release]:
        self.policy.service(service)
        return await self.store.history(service, limit)


def _deploy_audit(release: Release, request_id: str, sizing: Sizing | None) -> AuditEntry:
    gates = release.gates
    return AuditEntry(
        action="deploy",
        actor=release.requested_by,
        surface=release.surface,
        service=release.service,
        release_id=release.id,
        to_state=release.state,
        request_id=request_id,
        detail={
            "version": release.version,
            "risk": release.risk,
            "strategy": release.strategy,
            "steps": release.weights,
            "stable": release.stable_version,
            **({"gates": gates.model_dump()} if gates else {}),
            "forced": bool(gates and gates.forced),
            **({"first_step": sizing.as_json()} if sizing else {}),
        },
    )


def _started_text(release: Release) -> str:
    plan = " → ".join(f"{w}%" for w in release.weights)
    stable = release.stable_version or "the current version"
    forced = ""
    if release.gates is not None and release.gates.forced:
        past = ", ".join(f"{g} ({why})" for g, why in release.gates.overridden.items())
        forced = f"; forced by {release.gates.forced_by} past the gates: {past}"
    return (
        f"{release.requested_by} started {release.service} {release.version} "
        f"(replacing {stable}), {release.strategy}, risk {release.risk}: {plan}{forced}"
    )


__all__ = ["Outcome", "ReleaseService", "Result"]
