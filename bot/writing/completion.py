"""What the model is told of a finished release, and what of its paragraph may be shown.

The announcement's numbers are formatted by code from the completion summary (bot.render);
the model only phrases a short paragraph around them. It is shown the summary as words, with
no numbers to copy wrong, and any sentence of its answer that holds a digit is dropped: a
number next to the announcement's table that disagrees with it is worse than none.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from bot.release.summary import CompletionSummary, MomentKind

_WHAT = {
    MomentKind.FAILED: "failed some checks and recovered before the failure limit",
    MomentKind.WARNING: "crossed its warning level",
    MomentKind.NEAR_MISS: "came close to a limit without crossing it",
    MomentKind.NO_DATA: "had rounds without a verdict (no data or a query error)",
}

# A sentence ends at . ! or ? followed by space, or at a line end.
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")


def summary_facts(summary: CompletionSummary | None) -> list[str]:
    """The summary in plain words for the prompt (no numbers but the names of things: the
    message shows the numbers)."""
    if summary is None:
        return ["No summary of the release was kept."]
    facts = [
        "All judged metrics were nominal throughout."
        if summary.nominal
        else "Not every metric was nominal throughout."
    ]
    for m in summary.judged:
        state = "passed" if m.outcome == "pass" else "did not pass"
        warned = " with a warning" if m.warning else ""
        facts.append(f"Metric {m.name} {state} its last check{warned}.")
    seen: set[tuple[MomentKind, str]] = set()
    for moment in summary.moments:
        key = (moment.kind, moment.metric)
        if moment.kind in _WHAT and key not in seen:
            seen.add(key)
            facts.append(f"On the way, metric {moment.metric} {_WHAT[moment.kind]}.")
    if summary.of_kind(MomentKind.PAUSE):
        facts.append("The release was paused on the way and resumed.")
    if summary.of_kind(MomentKind.APPROVAL_WAIT):
        facts.append("Some steps waited for a person's approval.")
    if summary.of_kind(MomentKind.TRAFFIC_REPAIR):
        facts.append("The traffic engine once lost the canary's weight and was given it again.")
    if summary.partial:
        facts.append("Part of the record could not be read.")
    return facts


def without_numbers(text: str, names: Sequence[str] = ()) -> str:
    """``text`` without the sentences that hold a digit, not counting those in ``names`` (the
    service, the version and the metrics: the record's own words, "v2" or "latency_p99" are
    not numbers)."""

    def has_number(sentence: str) -> bool:
        for name in sorted(filter(None, names), key=len, reverse=True):
            sentence = sentence.replace(name, "")
        return any(c.isdigit() for c in sentence)

    kept = [s.strip() for s in _SENTENCE.split(text) if s.strip()]
    return " ".join(s for s in kept if not has_number(s))
