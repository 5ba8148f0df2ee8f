"""The traffic "backend" of a service whose canary Flagger runs: Flagger moves the traffic and
asks shipwatch first, through its webhooks (bot.engine.flagger_gate answers them).

So nothing is applied here: a step shipwatch decides is the permission Flagger's next
``confirm-traffic-increase`` gets, a promotion the ``confirm-promotion`` it gets, a rollback
the 200 its ``rollback`` webhook gets at its next analysis round. Nothing can be read back
either: Flagger's own status is the place to look.
"""

from __future__ import annotations

from bot.traffic.base import Applied, TrafficChange


class FlaggerBackend:
    name = "flagger"

    async def apply(self, change: TrafficChange) -> None:
        """Nothing to write: Flagger asks for each change (see the module's docstring)."""

    async def current(self, service: str) -> Applied | None:
        return None

    async def close(self) -> None:
        """Nothing to close."""
