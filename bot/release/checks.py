"""One metric's check in one analysis round: what the canary showed against its limit and the
control, and the outcome. Typed from the judge to the record to every renderer; the record
keeps it as JSON with the field names as keys."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any


class Outcome(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    NO_DATA = "no_data"
    ERROR = "error"


@dataclass(frozen=True)
class CheckResult:
    metric: str
    outcome: Outcome
    canary: float | None
    control: float | None
    reason: str
    limit: str = ""  # the rule that decided, e.g. "max 0.05" or "max_ratio 2x"
    warning: str = ""  # a warn_* level crossed (never fails the check)
    critical: bool = False
    dry_run: bool = False
    query: str = ""  # the exact query, for errors and no-data
    verdict: dict[str, Any] | None = None  # the statistical judge's verdict, when it ran

    def to_dict(self) -> dict[str, Any]:
        """The JSON form kept in the release record and the audit (the field names as keys)."""
        out = asdict(self)
        out["outcome"] = self.outcome.value
        return out


@dataclass(frozen=True)
class ScoreRecord:
    """The statistical judge's canary score for a round, as the record keeps it."""

    value: float  # 0 to 100
    verdict: str  # pass | marginal | fail
    text: str  # the score in words, e.g. "canary score 97 (pass; pass ≥ 95)"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
