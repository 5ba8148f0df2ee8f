"""The release machinery wired as ``build_app`` wires it, on a real Redis, for tests that drive
it directly: Store, FlagsBackend, TrafficActuator, EventBus (with a recording notifier) and
ReleaseService.

``ReleaseRig.wire`` builds it without starting the bus, so a test module can add its own parts
(a controller, a metric source) in a subclass before anything runs; ``close`` stops it.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis

from bot.engine.actuator import TrafficActuator
from bot.engine.events import EventBus
from bot.engine.service import ReleaseService
from bot.flags import FlagWriter
from bot.release.policy import Policy, parse_policy
from bot.store.audit import AuditEntry
from bot.store.store import Store
from bot.traffic.flags import FlagsBackend
from tests.support.recorder import Recorder


@dataclass
class ReleaseRig:
    policy: Policy
    store: Store
    flags: FlagsBackend
    events: EventBus
    recorder: Recorder
    actuator: TrafficActuator
    service: ReleaseService

    @staticmethod
    def wire(redis_client: aioredis.Redis, policy_yaml: str) -> ReleaseRig:
        """Every part built on ``redis_client`` and the policy; the event bus not started."""
        policy = parse_policy(policy_yaml, "test")
        store = Store(redis_client)
        recorder = Recorder()
        events = EventBus([recorder])
        flags = FlagsBackend(FlagWriter(redis_client))
        actuator = TrafficActuator(store, lambda _service: flags, events)
        service = ReleaseService(store, policy, actuator, events)
        return ReleaseRig(policy, store, flags, events, recorder, actuator, service)

    async def close(self) -> None:
        await self.actuator.close()
        await self.events.close()

    async def flag_pct(self, service: str) -> int | None:
        state = await self.flags.flag(service)
        return None if state is None else state.pct

    async def audit(
        self, action: str | None = None, outcome: str | None = None
    ) -> list[AuditEntry]:
        """Oldest first, optionally filtered."""
        entries = reversed(await self.store.audit_tail(10_000))
        return [
            e
            for e in entries
            if (action is None or e.action == action) and (outcome is None or e.outcome == outcome)
        ]

    async def recorded(self) -> Recorder:
        """The recorder once every event published so far has been delivered to it."""
        await self.events.drain()
        return self.recorder
