"""A notifier for tests: keeps every event the bus delivers."""

from __future__ import annotations

from bot.engine.events import EventKind, ReleaseEvent


class Recorder:
    def __init__(self) -> None:
        self.events: list[ReleaseEvent] = []

    async def notify(self, event: ReleaseEvent) -> None:
        self.events.append(event)

    def kinds(self, service: str | None = None) -> list[EventKind]:
        return [e.kind for e in self.events if service is None or e.release.service == service]
