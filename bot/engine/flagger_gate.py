"""shipwatch as Flagger's gate: the answers to a Canary's webhooks.

A canary Flagger runs becomes a shipwatch release (its status message, its thread, its judge),
created at ``confirm-rollout`` and found again by the Canary's checksum, so a webhook Flagger
retries never starts a second one. Then each webhook is a question the release answers:

- ``confirm-rollout``: may the canary start? Yes once the release runs (a high-risk one waits
  for its approval).
- ``confirm-traffic-increase``: may the weight go up? Yes as many times as the release has
  reached steps: its first step, then one more per step shipwatch's judge (or a person)
  advanced it to. Granted atomically, so a retried call is never granted twice.
- ``confirm-promotion``: may the canary become the primary? Yes once the release reached 100%.
- ``rollback``: must Flagger roll back? Yes once shipwatch decided to roll back (judge, button
  or /rollback).

Every other answer is "not now", with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from bot.engine.service import ReleaseService
from bot.release.request import DeployOptions
from bot.release.rollout import Actor, Release, State
from bot.store.store import Store

RUNNING = frozenset({State.PROGRESSING, State.BAKING})


class Hook(StrEnum):
    CONFIRM_ROLLOUT = "confirm-rollout"
    CONFIRM_TRAFFIC_INCREASE = "confirm-traffic-increase"
    CONFIRM_PROMOTION = "confirm-promotion"
    ROLLBACK = "rollback"


@dataclass(frozen=True)
class CanaryCall:
    """One webhook call: which Canary, at which revision, and what its webhook's metadata says
    (``service``, ``version`` and ``stable`` are read from it when set)."""

    name: str
    namespace: str
    phase: str
    checksum: str
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def service(self) -> str:
        return str(self.metadata.get("service") or self.name).lower()

    @property
    def version(self) -> str:
        return str(self.metadata.get("version") or self.checksum[:12] or "unknown")

    @property
    def request_id(self) -> str:
        return f"flagger:{self.namespace}/{self.name}:{self.checksum}"


@dataclass(frozen=True)
class Answer:
    yes: bool
    reason: str
    release: Release | None = None


class FlaggerGate:
    def __init__(self, service: ReleaseService, store: Store) -> None:
        self.service = service
        self.store = store

    async def answer(self, hook: Hook, call: CanaryCall, actor: Actor) -> Answer:
        if hook is Hook.CONFIRM_ROLLOUT:
            return await self._confirm_rollout(call, actor)
        release = await self._release_of(call)
        if release is None:
            return Answer(False, f"no release of `{call.service}` {call.version} is running")
        if hook is Hook.ROLLBACK:
            if release.state in (State.ROLLING_BACK, State.ROLLED_BACK):
                return Answer(True, f"roll back: {release.reason}", release)
            return Answer(False, f"{release.label} is not rolled back", release)
        if release.state not in RUNNING and release.state is not State.SUCCEEDED:
            return Answer(False, release.describe_state(), release)
        if hook is Hook.CONFIRM_PROMOTION:
            if release.weight >= 100:
                return Answer(True, f"{release.label} reached 100%", release)
            return Answer(False, f"{release.label} is at {release.weight}%, not 100%", release)
        # confirm-traffic-increase: one increase per step the release reached.
        if release.state is State.SUCCEEDED or await self.store.grant_step(
            release.id, release.step + 1
        ):
            return Answer(True, f"{release.label} is at {release.weight}%", release)
        return Answer(
            False, f"{release.label} holds at {release.weight}%: not judged past it yet", release
        )

    async def _confirm_rollout(self, call: CanaryCall, actor: Actor) -> Answer:
        active = await self.store.active_for(call.service)
        if active is not None and active.version != call.version:
            return Answer(
                False,
                f"{active.label} is being released; {call.version} waits for it to end",
                active,
            )
        if active is None:
            options = DeployOptions(stable=str(call.metadata.get("stable") or ""))
            result = await self.service.deploy(
                actor, call.service, call.version, options, request_id=call.request_id
            )
            active = result.release
        if active.state in RUNNING:
            return Answer(True, f"{active.label} started", active)
        return Answer(False, active.describe_state(), active)

    async def _release_of(self, call: CanaryCall) -> Release | None:
        """The release this Canary revision became: the active one, else the latest, when it
        is of this version."""
        release = await self.service.status(call.service)
        if release is None or release.version != call.version:
            return None
        return release
