"""What the bot writes after the fact: rollback diagnoses, release notes, answers in threads.

It listens on the event bus like any notifier but never holds the bus up: each piece of
writing runs as its own tracked task, so a slow or hanging LLM delays nothing, least of all a
rollback (which is finished before the event that triggers a diagnosis is even emitted).
The facts are ours (bot.writing.evidence renders them from the record); the LLM only adds the likely
cause and suggestions, release-note prose, or answers grounded in the record. Without an LLM,
or when it fails, deterministic template text is used and labelled as such.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from enum import StrEnum
from typing import Any

from bot.engine.events import EventBus, EventKind, ReleaseEvent
from bot.errors import ShipwatchError, StoreError
from bot.observe.logs import log_context
from bot.redact import redact, redact_obj
from bot.release.policy import Policy
from bot.release.rollout import Release, Surface
from bot.store.store import Store
from bot.tasks import CLOSE_TIMEOUT_S, cancel_and_wait
from bot.writing.chart import render_png
from bot.writing.completion import summary_facts, without_numbers
from bot.writing.evidence import (
    NO_LLM_LABEL,
    Evidence,
    build_evidence,
    facts_sentence,
    llm_down_label,
    llm_label,
    template_answer,
    template_diagnosis,
    template_release_notes,
)
from bot.writing.llm import LLM, LLMError
from bot.writing.prompts import render_pair
from bot.writing.tickets import Incident, TicketSinks

log = logging.getLogger(__name__)

MAX_THREAD_MESSAGES = 30
JOB_LAPSE_S = 300.0  # a process that stopped mid-writing is taken over after this long
ADOPT_INTERVAL_S = 5.0


class Job(StrEnum):
    DIAGNOSIS = "diagnosis"
    NOTES = "notes"
    FINAL_NOTES = "final-notes"


LinkFor = Callable[[Release], Awaitable[str]]


async def _no_link(_: Release) -> str:
    return ""


class Narrator:
    def __init__(
        self,
        store: Store,
        llm: LLM,
        events: EventBus,
        policy: Policy,
        *,
        link_for: LinkFor = _no_link,
        tickets_for: Callable[[str], TicketSinks | None] | None = None,
    ) -> None:
        self.store = store
        self.llm = llm
        self.events = events
        self._policy = policy
        self.link_for = link_for
        self.tickets_for = tickets_for or self._tickets_from_policy
        self._running: dict[str, asyncio.Task[None]] = {}
        self._adopter: asyncio.Task[None] | None = None
        self._stopping = False

    # --- the notifier port -----------------------------------------------------------------

    async def notify(self, event: ReleaseEvent) -> None:
        release = event.release
        if event.kind is EventKind.ROLLED_BACK:
            await self._begin(Job.DIAGNOSIS, release)
        elif event.kind is EventKind.STARTED and (release.notes or release.changes):
            await self._begin(Job.NOTES, release)
        elif event.kind is EventKind.SUCCEEDED:
            await self._begin(Job.FINAL_NOTES, release)

    # --- writing as jobs that outlive the process ---------------------------------------------
    # Each piece of writing is recorded in Redis before it starts and cleared once its event is
    # out; a process that stops first leaves it there, and the next one (another replica, or
    # this one restarted) picks it up: a graceful stop hands it over at once, a crash after
    # JOB_LAPSE_S.

    def start(self) -> None:
        if self._adopter is None:
            self._stopping = False
            self._adopter = asyncio.create_task(self._adopt_loop(), name="writing-adopter")

    async def _begin(self, job: Job, release: Release) -> None:
        name = f"{job.value}|{release.id}"
        try:
            await self.store.jobs.begin(name, JOB_LAPSE_S)
        except StoreError as exc:
            # The writing still happens; only a restart in the next minutes would lose it.
            log.warning("cannot record %s as under way: %s", name, exc)
        self._spawn(name, release)

    def _spawn(self, name: str, release: Release) -> None:
        if name in self._running:
            return
        # The task inherits this context: what the writing logs names its release.
        with log_context(release_id=release.id, service=release.service):
            task = asyncio.ensure_future(self._guarded(name, release))
        task.set_name(name)
        self._running[name] = task
        task.add_done_callback(lambda _: self._running.pop(name, None))

    async def _guarded(self, name: str, release: Release) -> None:
        job = Job(name.split("|", 1)[0])
        work = {
            Job.DIAGNOSIS: self.diagnose,
            Job.NOTES: self.draft_notes,
            Job.FINAL_NOTES: self.final_notes,
        }[job]
        try:
            await work(release)
        except Exception:
            log.exception("writing the %s failed", job.value)
        try:
            await self.store.jobs.end(name)
        except StoreError as exc:
            log.warning("cannot record %s as done: %s", name, exc)

    async def _adopt_loop(self) -> None:
        while not self._stopping:
            try:
                await self.adopt()
            except StoreError as exc:
                log.warning("cannot look for writing left unfinished: %s", exc)
            await asyncio.sleep(ADOPT_INTERVAL_S)

    async def adopt(self) -> int:
        """Take up the writing a stopped process left; how many pieces were taken."""
        taken = 0
        for name in await self.store.jobs.claim(JOB_LAPSE_S):
            kind, _, release_id = name.partition("|")
            release = await self.store.get(release_id)
            if release is None or kind not in Job.__members__.values():
                await self.store.jobs.end(name)
                continue
            log.info("taking up the %s of %s left unfinished", kind, release.label)
            self._spawn(name, release)
            taken += 1
        return taken

    async def drain(self) -> None:
        """Wait for the writing under way (tests, shutdown)."""
        while self._running:
            await asyncio.gather(*list(self._running.values()), return_exceptions=True)

    async def close(self) -> None:
        self._stopping = True
        unfinished = list(self._running)
        tasks = list(self._running.values())
        if self._adopter is not None:
            tasks.append(self._adopter)
            self._adopter = None
        await cancel_and_wait(tasks, CLOSE_TIMEOUT_S)
        try:
            await self.store.jobs.hand_over(unfinished)
        except StoreError as exc:
            log.warning("cannot hand unfinished writing over (taken up later): %s", exc)
        await self.llm.close()

    # --- diagnosis --------------------------------------------------------------------------

    async def diagnose(self, release: Release) -> str:
        evidence = await build_evidence(self.store, release, units=self._units(release.service))
        facts = facts_sentence(evidence)
        written, label = await self._write("diagnosis", evidence=redact_obj(evidence.to_dict()))
        text = (
            f"{facts}\n{written}\n{label}".strip()
            if written
            else template_diagnosis(evidence, label=label)
        )
        files = await self._chart(release, evidence)
        self.events.emit(ReleaseEvent(EventKind.DIAGNOSIS, release, text, files=files))
        try:
            await self.store.writings.save_diagnosis(release.id, text)  # for the release page
        except StoreError as exc:
            log.warning("the diagnosis is in the thread but not kept for the page: %s", exc)
        if release.last.surface is Surface.CONTROLLER:
            await self._file_tickets(release, evidence, text)
        return text

    async def _chart(self, release: Release, evidence: Evidence) -> list[tuple[str, bytes]]:
        metric = next((c.metric for c in evidence.failing), None)
        if metric is None:
            return []
        try:
            points = await self.store.points(release.id)
        except ShipwatchError:
            return []
        sp = self._policy.services.get(release.service)
        unit = next((m.unit for m in sp.metrics if m.name == metric), "") if sp else ""
        png = await asyncio.to_thread(
            render_png,
            metric,
            points,
            unit=unit,
            title=f"{release.service} {release.version}: {metric}, canary vs control",
        )
        return [(f"{release.service}-{release.number}-{metric}.png", png)] if png else []

    async def _file_tickets(self, release: Release, evidence: Evidence, diagnosis: str) -> None:
        sinks = self.tickets_for(release.service)
        if sinks is None or not sinks.configured:
            return
        incident = Incident(
            release=release.label,
            release_id=release.id,
            service=release.service,
            version=release.version,
            stable_version=release.stable_version,
            title=f"Rollback: {release.service} {release.version} at {evidence.step_weight}%",
            diagnosis=diagnosis,
            thread_url=await self.link_for(release),
            metrics=[
                {
                    "metric": c.metric,
                    "canary": c.canary,
                    "control": c.control,
                    "limit": c.limit,
                    "reason": c.reason,
                }
                for c in evidence.failing
            ],
            decided_at=release.rollback_started_at,
            rolled_back_at=release.finished_at,
        )
        tickets = await sinks.file(incident)
        if tickets:
            where = "; ".join(
                f"{t.where}: {t.url}" if t.url else f"{t.where} (no link given)" for t in tickets
            )
            self.events.emit(ReleaseEvent(EventKind.TICKET_FILED, release, link=where))
        else:
            self.events.emit(ReleaseEvent(EventKind.TICKET_FILED, release))

    # --- release notes ----------------------------------------------------------------------

    async def draft_notes(self, release: Release) -> str:
        written, label = await self._write(
            "release_notes",
            service=release.service,
            version=release.version,
            notes=redact(release.notes),
            changes=redact_obj(release.changes),
        )
        text = (
            f"{written}\n{label}"
            if written
            else template_release_notes(
                release.service, release.version, release.notes, release.changes, label=label
            )
        )
        self.events.emit(ReleaseEvent(EventKind.NOTES_DRAFT, release, text))
        return text

    async def final_notes(self, release: Release) -> str:
        """The announcement's paragraph: the model phrases the completion summary (its
        warnings and near misses included) with the notes; the announcement's numbers are
        rendered from the summary, so a sentence of the model's with a number is dropped.
        Without a model (or without a usable answer) only the label is said."""
        written, label = await self._write(
            "completion",
            service=release.service,
            version=release.version,
            notes=redact(release.notes),
            changes=redact_obj(release.changes),
            facts=summary_facts(release.summary),
        )
        metrics = [m.name for m in release.summary.metrics] if release.summary else []
        kept = without_numbers(written, (release.service, release.version, *metrics))
        text = f"{kept}\n{label}" if kept else label
        self.events.emit(ReleaseEvent(EventKind.NOTES_FINAL, release, text))
        return text

    # --- questions in a thread --------------------------------------------------------------

    async def answer(
        self, release: Release, question: str, thread: Sequence[dict[str, Any]] = ()
    ) -> str:
        evidence = await build_evidence(self.store, release, units=self._units(release.service))
        messages = [
            {"user": str(m.get("user", "?")), "text": redact(str(m.get("text", "")))}
            for m in list(thread)[-MAX_THREAD_MESSAGES:]
        ]
        written, label = await self._write(
            "answer",
            question=redact(question),
            evidence=redact_obj(evidence.to_dict()),
            thread=messages,
        )
        if written:
            return f"{written}\n{label}"
        return template_answer(question, evidence, label=label)

    # --- the LLM, or why not ------------------------------------------------------------------

    async def _write(self, template: str, **context: Any) -> tuple[str, str]:
        """(text, label): the LLM's text and its label, or ("", why-not label)."""
        if not self.llm.enabled:
            return "", NO_LLM_LABEL
        system, user = render_pair(template, **context)
        try:
            text = await self.llm.complete(system, user)
        except LLMError as exc:
            log.warning(
                "LLM unavailable for %s (%s): using the template text", template, exc.reason
            )
            return "", llm_down_label(exc.reason)
        return capped(text.strip()), llm_label(self.llm.model)

    def _units(self, service: str) -> dict[str, str]:
        sp = self._policy.services.get(service)
        return {m.name: m.unit for m in sp.metrics} if sp else {}

    def _tickets_from_policy(self, service: str) -> TicketSinks | None:
        sp = self._policy.services.get(service)
        return TicketSinks(sp.tickets) if sp is not None else None


# What a model may add to one post: a flood of text is cut here, so the whole answer fits one
# message and its label (who wrote it) is never pushed into a later one.
WRITTEN_LIMIT = 2800


def capped(written: str) -> str:
    """``written`` within WRITTEN_LIMIT characters, cut at a line or word, saying so."""
    if len(written) <= WRITTEN_LIMIT:
        return written
    cut = written[:WRITTEN_LIMIT]
    at = max(cut.rfind("\n"), cut.rfind(" "))
    cut = cut[:at] if at > WRITTEN_LIMIT // 2 else cut
    return (
        f"{cut.rstrip()} … (cut: the model wrote more than one message holds; "
        "`/rollout status` has the record)"
    )
