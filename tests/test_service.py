"""ReleaseService against a real redis-server, wired like build_app wires it: real Store,
FlagsBackend, TrafficActuator and EventBus (with a recording notifier)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from bot.engine.events import EventKind
from bot.engine.service import Outcome, Result
from bot.errors import (
    AlreadyActiveError,
    ConflictError,
    JustMovedError,
    LockedError,
    LostRaceError,
    PermissionDenied,
    UserError,
)
from bot.release.request import DeployOptions
from bot.release.rollout import TYPED_MOVE_GUARD_S, Actor, Release, State
from tests.support.release_rig import ReleaseRig

POLICY = """
defaults:
  steps: [1, 10, 25, 50, 100]
  hold: 300ms
  interval: 100ms
  window: 1s
  bake: 300ms
  metrics:
    - name: error_rate
      query: 'errors{service="{service}",version="{version}"}'
      max: 0.05
      max_diff: 0.01
    - name: latency_p99
      query: 'p99{service="{service}",version="{version}"}'
      max_ratio: 2
      critical: true
services:
  checkout: {}
  payments:
    risk: high
    approvers: [carol]
  ledger:
    deployers: [alice]
"""

ALICE = Actor(user="alice", surface="slack")
BOB = Actor(user="bob", surface="slack")
CAROL = Actor(user="carol", surface="slack")
DAVE = Actor(user="dave", surface="console")
CI = Actor(user="ci-bot", surface="api")
STABLE = DeployOptions(stable="v1")


# The service alone needs nothing beyond the shared wiring.
Rig = ReleaseRig


@pytest.fixture
async def rig(redis_client: aioredis.Redis) -> AsyncIterator[Rig]:
    rig = ReleaseRig.wire(redis_client, POLICY)
    rig.events.start()
    yield rig
    await rig.close()


async def deployed(rig: Rig, service: str = "checkout", actor: Actor = ALICE,
                   version: str = "v2") -> Release:
    result = await rig.service.deploy(actor, service, version, STABLE)
    assert result.outcome is Outcome.DONE
    return result.release


async def stored(rig: Rig, release_id: str) -> Release:
    release = await rig.store.get(release_id)
    assert release is not None
    return release


# --- deploy -------------------------------------------------------------------------------


async def test_deploy_starts_at_the_first_step_and_sets_the_flag(rig: Rig) -> None:
    result = await rig.service.deploy(ALICE, "checkout", "v2", STABLE)

    release = result.release
    assert result.outcome is Outcome.DONE
    assert (release.state, release.step, release.weight, release.applied_weight) == (
        State.PROGRESSING, 0, 1, 1)
    assert (release.version, release.stable_version, release.requested_by) == ("v2", "v1", "alice")
    assert await stored(rig, release.id) == release
    flag = await rig.flags.flag("checkout")
    assert flag is not None
    assert (flag.pct, flag.canary_version, flag.stable_version, flag.release_id) == (
        1, "v2", "v1", release.id)
    assert await rig.store.active_index() == {"checkout": release.id}
    assert [(e.action, e.actor, e.surface) for e in await rig.audit()] == [
        ("deploy", "alice", "slack"), ("traffic", "shipwatch", "controller")]
    assert (await rig.recorded()).kinds() == [EventKind.STARTED]


async def test_first_release_without_a_control_version_is_refused(rig: Rig) -> None:
    with pytest.raises(UserError) as info:
        await rig.service.deploy(ALICE, "checkout", "v2")

    assert "--stable" in str(info.value)
    assert await rig.store.active_index() == {}
    assert await rig.flags.flag("checkout") is None


async def test_second_deploy_of_an_active_service_names_who_what_and_when(rig: Rig) -> None:
    first = await deployed(rig)

    with pytest.raises(AlreadyActiveError) as caught:
        await rig.service.deploy(BOB, "checkout", "v3", STABLE)

    text = str(caught.value)
    when = time.strftime("%H:%M UTC", time.gmtime(first.created_at))
    assert "alice" in text and "v2" in text and when in text and "v3" in text
    assert await rig.store.active_for("checkout") == await stored(rig, first.id)
    [refused] = await rig.audit("deploy", "refused")
    assert (refused.actor, refused.release_id) == ("bob", first.id)
    assert await rig.flag_pct("checkout") == 1


async def test_a_deploy_while_another_runs_is_refused_for_that_before_anything_else(
    rig: Rig,
) -> None:
    # The first release of the service: nothing succeeded before it, so a deploy without
    # --stable would also lack a control. The release in the way is the reason to give.
    first = await deployed(rig)

    with pytest.raises(AlreadyActiveError, match="already being released"):
        await rig.service.deploy(BOB, "checkout", "v3")
    with pytest.raises(AlreadyActiveError):
        await rig.service.deploy(BOB, "checkout", "v3 with a space")
    assert await rig.store.active_for("checkout") == await stored(rig, first.id)


async def test_deploy_with_the_same_request_id_twice_starts_one_release(rig: Rig) -> None:
    first = await rig.service.deploy(ALICE, "checkout", "v2", STABLE, request_id="slack-1")
    again = await rig.service.deploy(ALICE, "checkout", "v2", STABLE, request_id="slack-1")

    assert again.outcome is Outcome.DUPLICATE
    assert again.release.id == first.release.id
    assert len(await rig.audit("deploy")) == 1
    assert (await rig.recorded()).kinds() == [EventKind.STARTED]


@pytest.mark.parametrize(("locker", "deployer"), [(CI, ALICE), (ALICE, CI), (DAVE, BOB)])
async def test_a_lock_from_any_surface_blocks_deploy_until_unlocked(
        rig: Rig, locker: Actor, deployer: Actor) -> None:
    await rig.service.lock(locker, "checkout", "  payment provider incident  ")

    with pytest.raises(LockedError) as caught:
        await rig.service.deploy(deployer, "checkout", "v2", STABLE)

    assert locker.user in str(caught.value)
    assert "payment provider incident" in str(caught.value)
    assert await rig.store.active_for("checkout") is None
    assert await rig.flags.flag("checkout") is None
    [refused] = await rig.audit("deploy", "refused")
    assert refused.actor == deployer.user and "payment provider incident" in refused.reason

    removed = await rig.service.unlock(deployer, "checkout")
    assert (removed.by, removed.surface) == (locker.user, locker.surface)
    release = await deployed(rig, actor=deployer)
    assert release.state is State.PROGRESSING
    assert [e.action for e in await rig.audit(outcome="ok")][:3] == ["lock", "unlock", "deploy"]


async def test_locking_twice_names_the_holder(rig: Rig) -> None:
    await rig.service.lock(CI, "checkout", "release train")
    with pytest.raises(LockedError, match="ci-bot"):
        await rig.service.lock(ALICE, "checkout", "mine")
    lock = await rig.store.get_lock("checkout")
    assert lock is not None and lock.by == "ci-bot"


# --- races and idempotency ----------------------------------------------------------------


async def test_fifty_concurrent_advances_make_exactly_one_step(rig: Rig) -> None:
    release = await deployed(rig)
    actors = [Actor(user=f"user{i}", surface="slack") for i in range(50)]

    results = await asyncio.gather(
        *(rig.service.advance(actor, "checkout", expected_step=0, request_id=f"click-{i}")
          for i, actor in enumerate(actors)),
        return_exceptions=True)

    won = [r for r in results if isinstance(r, Result)]
    lost = [r for r in results if isinstance(r, BaseException)]
    assert len(won) == 1 and won[0].outcome is Outcome.DONE
    assert len(lost) == 49
    assert all(isinstance(e, LostRaceError | ConflictError) for e in lost), lost
    after = await stored(rig, release.id)
    assert (after.state, after.step, after.weight, after.applied_weight) == (
        State.PROGRESSING, 1, 10, 10)
    [advance] = await rig.audit("advance", "ok")
    assert advance.detail == {"step": 1, "weight": 10}
    assert advance.actor == won[0].release.last.by
    assert await rig.flag_pct("checkout") == 10


async def test_typed_advances_sent_together_move_one_step(rig: Rig) -> None:
    release = await deployed(rig)
    actors = [Actor(user=f"user{i}", surface="slack") for i in range(10)]

    # No expected step: typed commands, from people who all saw the release at 1%.
    results = await asyncio.gather(
        *(rig.service.advance(actor, "checkout", request_id=f"typed-{i}")
          for i, actor in enumerate(actors)),
        return_exceptions=True)

    assert len([r for r in results if isinstance(r, Result)]) == 1
    assert all(isinstance(r, LostRaceError) for r in results if not isinstance(r, Result))
    assert (await stored(rig, release.id)).step == 1


async def test_a_typed_advance_just_after_a_person_moved_the_release_does_nothing(
        rig: Rig) -> None:
    release = await deployed(rig)
    await rig.service.advance(ALICE, "checkout", request_id="typed-1")

    # Another replica, a moment later: the command was typed while the release was at 1%.
    with pytest.raises(JustMovedError) as refused:
        await rig.service.advance(BOB, "checkout", request_id="typed-2")

    assert (refused.value.weight, refused.value.by) == (10, ALICE.user)
    assert "nothing more was done" in str(refused.value)
    assert (await stored(rig, release.id)).step == 1
    # Sent again once the moment has passed, it moves on.
    real_clock = rig.service.clock
    rig.service.clock = lambda: real_clock() + TYPED_MOVE_GUARD_S
    moved = await rig.service.advance(BOB, "checkout", request_id="typed-3")
    assert (moved.outcome, moved.release.step) == (Outcome.DONE, 2)


async def test_same_request_id_twice_is_a_duplicate_and_changes_nothing(rig: Rig) -> None:
    release = await deployed(rig)
    first = await rig.service.advance(BOB, "checkout", request_id="slack-42")
    assert first.outcome is Outcome.DONE
    before = await stored(rig, release.id)

    again = await rig.service.advance(BOB, "checkout", request_id="slack-42")

    assert again.outcome is Outcome.DUPLICATE
    assert await stored(rig, release.id) == before
    assert (before.step, before.weight) == (1, 10)
    assert len(await rig.audit("advance")) == 1
    assert await rig.flag_pct("checkout") == 10
    assert (await rig.recorded()).kinds().count(EventKind.STEP_ADVANCED) == 1


async def test_retry_of_an_applied_advance_with_its_expected_step_is_a_duplicate(
        rig: Rig) -> None:
    # The request id must be looked at before the expected step: the retry's step is stale
    # precisely because its first delivery was applied.
    release = await deployed(rig)
    first = await rig.service.advance(BOB, "checkout", expected_step=0, request_id="btn-1")
    assert first.outcome is Outcome.DONE
    before = await stored(rig, release.id)

    # Slack re-delivers the same button click: same request id, same expected step.
    again = await rig.service.advance(BOB, "checkout", expected_step=0, request_id="btn-1")

    assert again.outcome is Outcome.DUPLICATE
    assert await stored(rig, release.id) == before


async def test_retry_of_a_finished_rollback_is_a_duplicate(rig: Rig) -> None:
    # A rollback can outlast Slack's 3s ack, so Slack re-delivers it once it has finished.
    release = await deployed(rig)
    first = await rig.service.rollback(BOB, "checkout", "bad", request_id="slack-rb")
    assert first.release.state is State.ROLLED_BACK

    again = await rig.service.rollback(BOB, "checkout", "bad", request_id="slack-rb")

    assert again.outcome is Outcome.DUPLICATE
    assert (await stored(rig, release.id)).state is State.ROLLED_BACK
    assert await rig.audit(outcome="refused") == []


# --- approvals and permissions ------------------------------------------------------------


async def test_high_risk_release_needs_an_approver_who_is_not_the_requester(rig: Rig) -> None:
    release = await deployed(rig, "payments", actor=BOB)
    assert (release.state, release.weight, release.awaiting_step) == (
        State.PENDING_APPROVAL, 0, 0)
    assert await rig.flags.flag("payments") is None  # nobody moved before approval

    with pytest.raises(PermissionDenied) as own:
        await rig.service.approve(BOB, "payments")
    assert "carol" in str(own.value)
    with pytest.raises(PermissionDenied) as other:
        await rig.service.approve(DAVE, "payments")
    assert other.value.allowed == ["carol"] and "carol" in str(other.value)
    assert (await stored(rig, release.id)).state is State.PENDING_APPROVAL

    result = await rig.service.approve(CAROL, "payments")

    after = result.release
    assert (after.state, after.step, after.weight, after.applied_weight) == (
        State.PROGRESSING, 0, 1, 1)
    assert [(a.step, a.by) for a in after.approvals] == [(0, "carol")]
    assert await stored(rig, release.id) == after
    assert await rig.flag_pct("payments") == 1
    [approval] = await rig.audit("approve", "ok")
    assert (approval.actor, approval.from_state, approval.to_state) == (
        "carol", State.PENDING_APPROVAL, State.PROGRESSING)
    refused = await rig.audit("approve", "refused")
    assert [(e.actor, e.reason) for e in refused] == [
        ("bob", "requester cannot approve"), ("dave", "not in ['carol']")]
    kinds = (await rig.recorded()).kinds("payments")
    assert kinds == [EventKind.STARTED, EventKind.APPROVAL_NEEDED, EventKind.APPROVED,
                     EventKind.STEP_ADVANCED]


async def test_advance_of_a_high_risk_release_is_an_approval(rig: Rig) -> None:
    await deployed(rig, "payments", actor=BOB)
    with pytest.raises(PermissionDenied):
        await rig.service.advance(DAVE, "payments")
    result = await rig.service.advance(CAROL, "payments")
    assert result.release.approvals[-1].by == "carol"
    assert result.release.weight == 1


async def test_non_deployer_is_refused_and_told_who_may(rig: Rig) -> None:
    with pytest.raises(PermissionDenied) as caught:
        await rig.service.deploy(BOB, "ledger", "v2", STABLE)

    assert caught.value.allowed == ["alice"]
    assert "alice" in str(caught.value) and "deploy" in str(caught.value)
    assert await rig.store.active_for("ledger") is None
    [refused] = await rig.audit("deploy", "refused")
    assert (refused.actor, refused.service) == ("bob", "ledger")

    release = await deployed(rig, "ledger", actor=ALICE)
    with pytest.raises(PermissionDenied, match="alice"):
        await rig.service.rollback(BOB, "ledger")
    assert (await stored(rig, release.id)).state is State.PROGRESSING


async def test_a_command_the_state_does_not_allow_is_refused_and_audited(rig: Rig) -> None:
    release = await deployed(rig)

    with pytest.raises(ConflictError) as caught:
        await rig.service.resume(BOB, "checkout")

    assert "progressing" in str(caught.value) and "alice" in str(caught.value)
    [refused] = await rig.audit("resume", "refused")
    assert (refused.actor, refused.surface, refused.release_id) == ("bob", "slack", release.id)
    assert "progressing" in refused.reason
    assert await stored(rig, release.id) == release


# --- rollback, pause, resume --------------------------------------------------------------


async def test_rollback_sends_the_flag_to_zero_and_ends_rolled_back(rig: Rig) -> None:
    release = await deployed(rig)
    await rig.service.advance(ALICE, "checkout")
    assert await rig.flag_pct("checkout") == 10

    result = await rig.service.rollback(BOB, "checkout", "customers report errors")

    after = result.release
    assert (after.state, after.weight, after.applied_weight) == (State.ROLLED_BACK, 0, 0)
    assert after.reason == "customers report errors" and after.finished_at is not None
    assert await stored(rig, release.id) == after
    assert await rig.flag_pct("checkout") == 0
    assert await rig.store.active_for("checkout") is None
    [started] = await rig.audit("rollback")
    assert (started.actor, started.to_state, started.reason) == (
        "bob", State.ROLLING_BACK, "customers report errors")
    [done] = await rig.audit("rolled_back")
    assert done.to_state == State.ROLLED_BACK and done.detail["backend"] == "flags"
    # The finished rollback stays attributed to the person who asked for it; the audit line
    # for moving the traffic names the controller, which did that part.
    assert (done.actor, done.surface) == ("shipwatch", "controller")
    assert (after.last.by, after.last.surface) == ("bob", "slack")
    kinds = (await rig.recorded()).kinds()
    assert kinds[-2:] == [EventKind.ROLLBACK_STARTED, EventKind.ROLLED_BACK]
    # The service is free for the next attempt.
    assert (await deployed(rig, version="v3")).state is State.PROGRESSING


async def test_pause_freezes_and_resume_restarts_the_hold(rig: Rig) -> None:
    release = await deployed(rig)

    paused = (await rig.service.pause(BOB, "checkout", "watching a dashboard")).release

    assert (paused.state, paused.paused_from, paused.reason) == (
        State.PAUSED, State.PROGRESSING, "watching a dashboard")
    assert await rig.flag_pct("checkout") == 1  # traffic stays where it was
    with pytest.raises(ConflictError):
        await rig.service.advance(BOB, "checkout")
    assert (await stored(rig, release.id)).step == 0

    resumed = (await rig.service.resume(ALICE, "checkout")).release

    assert (resumed.state, resumed.paused_from, resumed.reason, resumed.weight) == (
        State.PROGRESSING, None, "", 1)
    assert resumed.step_started_at > release.step_started_at
    assert resumed.counters == {}
    assert [(e.action, e.from_state, e.to_state) for e in await rig.audit(outcome="ok")
            if e.action in ("pause", "resume")] == [
        ("pause", State.PROGRESSING, State.PAUSED), ("resume", State.PAUSED, State.PROGRESSING)]
    kinds = (await rig.recorded()).kinds()
    assert kinds[-2:] == [EventKind.PAUSED, EventKind.RESUMED]


async def test_status_and_history_follow_the_release(rig: Rig) -> None:
    release = await deployed(rig)
    status = await rig.service.status("checkout")
    assert status is not None and status.id == release.id
    await rig.service.rollback(ALICE, "checkout")
    status = await rig.service.status("checkout")
    assert status is not None and status.state is State.ROLLED_BACK
    assert [r.id for r in await rig.service.history("checkout")] == [release.id]
    assert await rig.service.list_active() == []
