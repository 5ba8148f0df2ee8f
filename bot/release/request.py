"""What a deploy asks for, whoever asks: a slash command, the console or a pipeline."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bot.release.gates import GateResult
from bot.release.policy import Risk, Strategy


@dataclass(frozen=True)
class DeployOptions:
    risk: Risk | None = None
    strategy: Strategy | None = None
    steps: list[int] | None = None
    hold: float | None = None
    notes: str = ""
    stable: str = ""  # the control version, when history does not know it (first release)
    changes: tuple[dict[str, Any], ...] = ()  # the change list from CI: {title, pr, ...}
    # Start even though required gates have not passed (an approver's decision, audited).
    force: bool = False
    # Gate results the caller reports (the API); None: read them from the gates status URL.
    gates: Mapping[str, GateResult] | None = None
