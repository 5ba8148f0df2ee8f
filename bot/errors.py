"""The one exception tree of shipwatch.

    ShipwatchError
    ├── UserError              bad input; the message says how to fix it, nothing changed
    │   ├── PolicyError        the policy file is invalid (carries every problem with its path)
    │   ├── CommandError       a command could not be parsed
    │   ├── UnknownServiceError
    │   ├── PermissionDenied   the actor may not do this; names who may
    │   ├── GatesNotPassed     a required pre-release gate has not passed (bot.engine.gates)
    │   └── FirstStepTooThin   `first_step: require`: the first step would get no verdict
    │                          at the service's traffic (bot.engine.sizing)
    ├── ConflictError          the release is not in a state that allows this
    │   ├── AlreadyActiveError another release of the service is running
    │   ├── LockedError        the service is locked
    │   └── LostRaceError      someone else changed the release first
    └── DependencyError        a service we depend on failed; state was left safe
        ├── StoreError         Redis
        ├── MetricsError       the metrics source
        ├── TrafficError       the traffic backend
        ├── LLMError           the LLM (bot.writing.llm; callers fall back to template text)
        ├── TicketError        an incident-ticket sink (bot.writing.tickets)
        ├── PageError          a paging service: PagerDuty, Opsgenie (bot.writing.paging)
        ├── GatesUnavailable   the CI status URL the gates are read from (bot.engine.gates)
        └── FirstStepUnsized   `first_step: require` and the traffic could not be read
                               (a subclass of MetricsError; bot.engine.sizing)
    PromptError                a prompt template is missing or lacks a variable (writing.prompts)

Third-party exceptions are translated once, at the client boundary, with ``raise ... from``.
Each class names its ``failure`` kind; what a kind looks like on each surface (a chat reply, the
console, an HTTP status, the log level) is one table, ``bot.render.errors``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar


class Failure(StrEnum):
    """What went wrong, as every surface's one error handler tells it apart."""

    USAGE = "usage"  # a command that did not parse: show how to write it
    PERMISSION = "permission"  # not allowed: name who is
    UNKNOWN_SERVICE = "unknown_service"
    GATES = "gates"  # required pre-release gates have not passed
    INVALID = "invalid"  # any other bad input
    CONFLICT = "conflict"  # the release is not in a state that allows the request
    DEPENDENCY = "dependency"  # a dependency failed; nothing changed, try again later
    BUG = "bug"  # not raised on purpose: a reference to find it in the log


class ShipwatchError(Exception):
    """Base of every error shipwatch raises on purpose."""

    failure: ClassVar[Failure] = Failure.BUG


def failure_of(exc: BaseException) -> Failure:
    """The kind of ``exc``: the one its class declares, or a bug for anything else."""
    return exc.failure if isinstance(exc, ShipwatchError) else Failure.BUG


class UserError(ShipwatchError):
    """The request is wrong; the message tells the user how to fix it. Nothing was changed."""

    failure = Failure.INVALID

    def __init__(self, message: str, *, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint

    def __str__(self) -> str:
        base = super().__str__()
        return f"{base}\n{self.hint}" if self.hint else base


@dataclass(frozen=True)
class PolicyProblem:
    path: str
    message: str
    hint: str = ""

    def render(self) -> str:
        text = f"{self.path}: {self.message}"
        return f"{text}\n    hint: {self.hint}" if self.hint else text


class PolicyError(UserError):
    def __init__(self, source: str, problems: list[PolicyProblem]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(p.render() for p in problems)
        super().__init__(f"{source}: {len(problems)} problem(s) in the policy\n{lines}")


class CommandError(UserError):
    """A command could not be parsed; ``usage`` holds the right form."""

    failure = Failure.USAGE

    def __init__(self, message: str, *, usage: str = "") -> None:
        super().__init__(message, hint=f"usage: {usage}" if usage else "")
        self.usage = usage


class UnknownServiceError(UserError):
    failure = Failure.UNKNOWN_SERVICE

    def __init__(self, service: str, suggestion: str | None, known: list[str]) -> None:
        self.service = service
        self.suggestion = suggestion
        hint = (
            f"did you mean `{suggestion}`?"
            if suggestion
            else "known services: " + (", ".join(known) or "(none in the policy)")
        )
        super().__init__(f"unknown service `{service}`", hint=hint)


class PermissionDenied(UserError):
    failure = Failure.PERMISSION

    def __init__(self, action: str, service: str, allowed: list[str]) -> None:
        self.action = action
        self.service = service
        self.allowed = allowed
        who = ", ".join(allowed) if allowed else "nobody is configured"
        super().__init__(
            f"you may not {action.replace('_', ' ')} `{service}`",
            hint=f"who may: {who} (edit the service's policy to change this)",
        )


class ConflictError(ShipwatchError):
    """The release's state does not allow the request.

    The message says what state it is in and who put it there.
    """

    failure = Failure.CONFLICT


class AlreadyActiveError(ConflictError):
    pass


class LockedError(ConflictError):
    pass


class LostRaceError(ConflictError):
    """An atomic commit found the record changed since it was read: someone else won."""


class JustMovedError(LostRaceError):
    """A typed advance or approve that arrived just after a person moved the release: it was
    meant for the step before, so it does nothing (bot.release.rollout.TYPED_MOVE_GUARD_S)."""

    def __init__(self, label: str, weight: int, by: str, ago: float, wait: float) -> None:
        self.label = label
        self.weight = weight
        self.by = by
        self.ago = ago
        self.wait = wait
        super().__init__(
            f"{label} was just moved to {weight}% by {by} ({ago:.0f}s ago); nothing more was "
            f"done. To move on from {weight}% as well, send the command again in {wait:.0f}s."
        )


class HooksNotPassedError(ConflictError):
    """A person tried to move a release past step hooks that have not passed: the move waits
    for them as the controller's does (bot.engine.hooks)."""

    def __init__(self, label: str, weight: int, where: str) -> None:
        self.label = label
        self.weight = weight
        self.where = where  # "have not started yet", "are running (12s so far)", "failed: …"
        super().__init__(
            f"{label} cannot move to {weight}% yet: the step hooks before it {where}. Nothing "
            f"was changed; shipwatch moves it to {weight}% once they pass, or roll it back."
        )


class DependencyError(ShipwatchError):
    """A dependency failed; the release was left in a safe state."""

    failure = Failure.DEPENDENCY


class StoreError(DependencyError):
    pass


class MetricsError(DependencyError):
    pass


class TrafficError(DependencyError):
    pass
