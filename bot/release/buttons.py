"""The buttons on a release's status message: what each does, the reference a click carries,
and whether a click still applies to the release as it is now. Pure; the click itself is
``bot.engine.clicks``, the words and Block Kit ``bot.render``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from bot.release.rollout import Release, State


class ButtonAction(StrEnum):
    """A button's ``action_id``, the same in Slack and the console."""

    ADVANCE = "shipwatch_advance"
    APPROVE = "shipwatch_approve"
    PAUSE = "shipwatch_pause"
    RESUME = "shipwatch_resume"
    ROLLBACK = "shipwatch_rollback"
    # On a post-release watch's finding: a fast release of the version the release replaced.
    ROLL_BACK_TO = "shipwatch_roll_back_to"


# Which state each button is offered in. A click is only acted on while the release is still
# in such a state (see stale_reason).
_OFFERED_IN: dict[ButtonAction, frozenset[State]] = {
    # Shown while progressing; still right once the controller asks for approval of that
    # same next step (high risk), since the click then approves exactly that step.
    ButtonAction.ADVANCE: frozenset({State.PROGRESSING, State.PENDING_APPROVAL}),
    ButtonAction.APPROVE: frozenset({State.PENDING_APPROVAL}),
    ButtonAction.PAUSE: frozenset({State.PROGRESSING, State.PENDING_APPROVAL, State.BAKING}),
    ButtonAction.RESUME: frozenset({State.PAUSED}),
    ButtonAction.ROLLBACK: frozenset(
        {State.PROGRESSING, State.PENDING_APPROVAL, State.PAUSED, State.BAKING}
    ),
    # The release is finished; its button starts a new one (which the deploy checks as any).
    ButtonAction.ROLL_BACK_TO: frozenset({State.SUCCEEDED}),
}
# Clicks that move the release forward are tied to the step they were shown at; pausing and
# rolling back stay valid while the release moves on (they are the safe direction, and a
# rollback lost to a race with the controller's next advance is the costliest miss).
_STEP_BOUND = frozenset({ButtonAction.ADVANCE, ButtonAction.APPROVE, ButtonAction.RESUME})


@dataclass(frozen=True)
class ButtonRef:
    release_id: str
    step: int
    rev: int


_VALUE = re.compile(r"([A-Za-z0-9_-]{1,64}):([0-9]{1,9}):([0-9]{1,15})")


def button_value(release: Release) -> str:
    return f"{release.id}:{release.step}:{release.rev}"


def parse_button_value(value: str) -> ButtonRef:
    """The reference a button carries; ValueError for anything we did not produce."""
    match = _VALUE.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"not a shipwatch button value: {str(value)[:80]!r}")
    return ButtonRef(match.group(1), int(match.group(2)), int(match.group(3)))


def stale_reason(release: Release, ref: ButtonRef, action_id: str) -> str:
    """Why a click no longer applies to ``release`` as it is now, or "" when it still does.

    The rev is not compared: the controller bumps it on every analysis round, so it would
    make every button older than one interval stale. The step and the state say whether the
    release moved on in a way that changes what the button means.
    """
    try:
        action = ButtonAction(action_id)
    except ValueError:
        return f"unknown button `{action_id[:40]}`"
    if ref.release_id != release.id:
        return f"that button belongs to another release than {release.label}"
    if not release.is_active and action is not ButtonAction.ROLL_BACK_TO:
        return release.describe_state()
    if release.state not in _OFFERED_IN[action]:
        return release.describe_state()
    if action in _STEP_BOUND and release.step != ref.step:
        return release.describe_state()
    return ""
