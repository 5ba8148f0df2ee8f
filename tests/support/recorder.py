"""A notifier for tests: keeps every event the bus delivers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from bot.engine.events import EventKind, ReleaseEvent


class Recorder:
    def __init__(self) -> None:
        self.events: list[ReleaseEvent] = []
        # Awaited before an event is recorded: the Slack rig waits here until the outbox has
        # sent what the event asked for, so a test that saw the event finds it in Slack.
        self.delivered: Callable[[], Awaitable[object]] | None = None

    async def notify(self, event: ReleaseEvent) -> None:
        if self.delivered is not None:
            await self.delivered()
        self.events.append(event)

    def kinds(self, service: str | None = None) -> list[EventKind]:
        return [e.kind for e in self.events if service is None or e.release.service == service]
