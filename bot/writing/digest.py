"""The daily digest's optional model summary: a few sentences phrased from the digest in words.

The model is told the releases without numbers, and any sentence of its answer that holds a
digit is dropped (bot.writing.completion): the numbers of the post come from code only. With no
model, or no usable answer, the post simply has no summary; its facts are all template text.
"""

from __future__ import annotations

import logging

from bot.engine.digest import Digest, DigestRelease
from bot.redact import redact
from bot.release.rollout import State
from bot.writing.completion import without_numbers
from bot.writing.evidence import llm_label
from bot.writing.llm import LLM, LLMError
from bot.writing.prompts import render_pair

log = logging.getLogger(__name__)

_STATE_WORDS = {
    State.PROGRESSING: "is progressing and advances by itself if its metrics hold",
    State.BAKING: "is at full traffic, baking before it is declared done",
    State.PAUSED: "is paused and waits for a person to resume or roll it back",
    State.PENDING_APPROVAL: "waits for an approver before its next step",
    State.ROLLING_BACK: "is rolling back",
}


def digest_facts(digest: Digest) -> list[str]:
    """The digest in plain words for the prompt: names and states, never a number."""
    return [_fact(item) for item in digest.releases]


def _fact(item: DigestRelease) -> str:
    r = item.release
    state = _STATE_WORDS.get(r.state, f"is {r.state.value}")
    failing = [c.metric for c in r.last_checks if c.outcome.value == "fail"]
    health = (
        f"its last check failed on {', '.join(failing)}"
        if failing
        else "its last checks passed"
        if r.last_checks
        else "it has no checks judged yet"
    )
    since = "failed rounds since yesterday" if item.failed_rounds else "no failed rounds"
    paused = any(e.action.endswith("pause") for e in item.issues)
    return redact(
        f"Release of {r.service} {state}; {health}; {since}"
        f"{'; it was paused since yesterday' if paused else ''}."
    )


class DigestWriter:
    """Asks the model for the summary; ("", "") when there is none to show."""

    def __init__(self, llm: LLM) -> None:
        self.llm = llm

    async def summarize(self, digest: Digest) -> tuple[str, str]:
        """(summary, its label): text without numbers, and who wrote it."""
        if not self.llm.enabled or not digest.releases:
            return "", ""
        system, user = render_pair("digest", facts=digest_facts(digest))
        try:
            written = await self.llm.complete(system, user)
        except LLMError as exc:
            log.warning("LLM unavailable for the daily digest (%s): posting it without", exc.reason)
            return "", ""
        names: list[str] = []
        for item in digest.releases:
            names += [item.release.service, item.release.version]
            names += [c.metric for c in item.release.last_checks]
        kept = without_numbers(written.strip(), names)
        return (kept, llm_label(self.llm.model)) if kept else ("", "")
