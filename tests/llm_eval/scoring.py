"""Score one diagnosis against its case's expectations. Pure text work, no I/O.

The diagnosis the team reads is our facts sentence followed by the written part (the model's
"Likely cause:" / "Suggested next step:" text, or the template's). The checks:

* facts: share of ``must_state`` items found in the whole text;
* cause: some ``cause_keywords`` group has all its words in the "Likely cause" part;
* no_invented: no ``must_not`` phrase in the written part, no ``cause_must_not`` phrase in its
  "Likely cause" part;
* numbers: every number in the written part appears in the evidence pack the model was shown
  (formatting, rounding and percent/ratio differences allowed);
* uncertainty: when the case requires it, the written part admits the evidence shows no cause;
* format: both labelled parts are there.

A check that does not apply to a case (no cause keywords, no uncertainty required) is left out
of that case's score, which is the mean of the checks that apply.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

CRITERIA = ("facts", "cause", "no_invented", "numbers", "uncertainty", "format")

CAUSE_LABEL = "likely cause"
NEXT_LABEL = "suggested next step"


def normalize(text: str) -> str:
    """Lower case, typographic quotes and dashes made plain, markdown emphasis marks (``*``)
    dropped, whitespace collapsed. Underscores stay: metric names carry them."""
    text = text.replace("’", "'").replace("‘", "'").replace("“", '"').replace("”", '"')
    text = text.replace("–", "-").replace("—", "-").replace("*", "")
    return " ".join(text.lower().split())


def _phrase_pattern(phrase: str) -> re.Pattern[str]:
    """``phrase`` as a regex: whitespace-tolerant, anchored at word starts so "orm" does not
    match "format" (but "index" does match "indexes"), and digit-bounded so "1.84" does not
    match "11.84" or "1.845"."""
    words = normalize(phrase).split()
    body = r"\s+".join(re.escape(w) for w in words)
    first, last = words[0][0], words[-1][-1]
    if first.isdigit():
        left = r"(?<![0-9])(?<![0-9]\.)"
    elif first.isalnum() or first == "_":
        left = r"(?<![a-z0-9_])"
    else:
        left = ""
    right = r"(?![0-9])(?!\.[0-9])" if last.isdigit() else ""
    return re.compile(left + body + right)


def contains(text: str, phrase: str) -> bool:
    """Whether normalized ``text`` holds ``phrase`` (see :func:`_phrase_pattern`)."""
    if not phrase.strip():
        return False
    return _phrase_pattern(phrase).search(normalize(text)) is not None


def hits(text: str, phrases: Iterable[str]) -> list[str]:
    return [p for p in phrases if contains(text, p)]


def section(text: str, label: str) -> str:
    """The text after ``label:`` up to the next known label (or the end); "" if absent."""
    flat = normalize(text)
    labels = "|".join(re.escape(x) for x in (CAUSE_LABEL, NEXT_LABEL))
    match = re.search(rf"{re.escape(label)}\s*:(.*?)(?=(?:{labels})\s*:|$)", flat)
    return match.group(1).strip() if match else ""


# --- numbers --------------------------------------------------------------------------------------

# A number as the written part may use it: 1.84, 1,840, 0.12, 12%, 4.00x, v2.31.0, 09:32, and
# dates (2024-05-14) as one token, so a date's parts do not vouch for other numbers. Not taken:
# digits glued to a word (latency_p99, http2, "dev2"), status classes (5xx), and "N+1" (an
# idiom, removed before the scan).
_TOKEN = r"\d{4}-\d{2}-\d{2}|\d+(?:[.,:]\d+)*"
_CANDIDATE = re.compile(rf"(?<![a-z0-9_.])v?({_TOKEN})(?!xx)", re.IGNORECASE)
_IDIOMS = re.compile(r"\bn\s*\+\s*1\b", re.IGNORECASE)
# Every number in the evidence, wherever it stands (ids, offsets like +3m20s, versions).
_ANY = re.compile(_TOKEN)
_THOUSANDS = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_PLAIN = re.compile(r"\d+(?:\.\d+)?")


def _value(token: str) -> float | None:
    if _THOUSANDS.fullmatch(token):
        return float(token.replace(",", ""))
    if _PLAIN.fullmatch(token):
        return float(token)
    return None


@dataclass(frozen=True)
class KnownNumbers:
    """The numbers of a reference text (the evidence pack), as tokens and as values."""

    tokens: frozenset[str]
    values: tuple[float, ...]

    @classmethod
    def of(cls, reference: str) -> KnownNumbers:
        tokens: set[str] = set()
        values: set[float] = set()
        for token in _ANY.findall(reference):
            tokens.add(token)
            # Prefixes of versions and clock times: "2.31" of "2.31.0", "09:32" of "09:32:03".
            for sep in ".:":
                pieces = token.split(sep)
                tokens.update(sep.join(pieces[:n]) for n in range(2, len(pieces)))
            value = _value(token)
            if value is not None:
                values.add(value)
            elif re.fullmatch(r"[\d.]+(?:,[\d.]+)+", token):  # "3,4": a list, not thousands
                values.update(v for p in token.split(",") if (v := _value(p)) is not None)
        return cls(frozenset(tokens), tuple(sorted(values)))

    def allows(self, token: str) -> bool:
        if token in self.tokens:
            return True
        value = _value(token)
        if value is None:  # a version or a clock time not in the evidence
            return False
        decimals = len(token.split(".")[1]) if "." in token else 0
        for known in self.values:
            # The same value, or the same as a percentage / as a ratio (0.12 and 12%).
            for k in (known, known * 100, known / 100):
                if math.isclose(value, k, rel_tol=1e-9, abs_tol=1e-12):
                    return True
                # Rounded: "4.5" for 4.49, "1.8" for 1.84 (whole numbers must match exactly).
                if decimals and math.isclose(round(k, decimals), value, abs_tol=1e-12):
                    return True
        return False


def numbers_in(text: str) -> list[str]:
    return _CANDIDATE.findall(_IDIOMS.sub(" ", text))


def unknown_numbers(text: str, known: KnownNumbers) -> list[str]:
    """Numbers in ``text`` that ``known`` does not allow, each once, in order of appearance."""
    out: list[str] = []
    for token in numbers_in(text):
        if not known.allows(token) and token not in out:
            out.append(token)
    return out


# --- the score ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Expectations:
    must_state: Sequence[str]
    cause_keywords: Sequence[Sequence[str]] = ()
    must_not: Sequence[str] = ()
    cause_must_not: Sequence[str] = ()
    must_admit_uncertainty: bool = False
    uncertainty_phrases: Sequence[str] = ()


@dataclass(frozen=True)
class Score:
    facts_found: tuple[str, ...]
    facts_missing: tuple[str, ...]
    cause_group: tuple[str, ...] | None  # the group that matched; None: none did
    cause_applies: bool
    invented: tuple[str, ...]  # must_not / cause_must_not phrases found
    unknown_numbers: tuple[str, ...]
    uncertainty: bool | None  # None: not required by the case
    format_ok: bool

    @property
    def criteria(self) -> dict[str, float | None]:
        """Each criterion's value in [0, 1], or None where it does not apply."""
        total = len(self.facts_found) + len(self.facts_missing)
        return {
            "facts": len(self.facts_found) / total if total else 1.0,
            "cause": (1.0 if self.cause_group is not None else 0.0) if self.cause_applies else None,
            "no_invented": 0.0 if self.invented else 1.0,
            "numbers": 0.0 if self.unknown_numbers else 1.0,
            "uncertainty": None if self.uncertainty is None else float(self.uncertainty),
            "format": 1.0 if self.format_ok else 0.0,
        }

    @property
    def total(self) -> float:
        values = [v for v in self.criteria.values() if v is not None]
        return sum(values) / len(values)


def score(text: str, written: str, known: KnownNumbers, expect: Expectations) -> Score:
    """Score ``text`` (the whole diagnosis) whose written part is ``written``; ``known`` holds
    the numbers of the evidence the writer was shown."""
    found = tuple(p for p in expect.must_state if contains(text, p))
    missing = tuple(p for p in expect.must_state if p not in found)
    cause_text = section(written, CAUSE_LABEL) or normalize(written)
    group = next(
        (tuple(g) for g in expect.cause_keywords if all(contains(cause_text, w) for w in g)),
        None,
    )
    invented = tuple(hits(written, expect.must_not)) + tuple(
        f"{p} (in the cause)" for p in hits(cause_text, expect.cause_must_not)
    )
    admitted = (
        bool(hits(written, expect.uncertainty_phrases)) if expect.must_admit_uncertainty else None
    )
    flat = normalize(written)
    return Score(
        facts_found=found,
        facts_missing=missing,
        cause_group=group,
        cause_applies=bool(expect.cause_keywords),
        invented=invented,
        unknown_numbers=tuple(unknown_numbers(written, known)),
        uncertainty=admitted,
        format_ok=f"{CAUSE_LABEL}:" in flat and f"{NEXT_LABEL}:" in flat,
    )
