"""A click on a status message's button, the same flow for Slack and the console.

A button carries only an opaque reference (release id, step, rev). The click is acted on only
when the release still exists and is still in a state the button applies to; then it is the
same service call a typed command makes, by whoever clicked, with their permissions.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum

from bot.engine.service import ReleaseService, Result
from bot.errors import UserError
from bot.release.buttons import ButtonAction, ButtonRef, parse_button_value, stale_reason
from bot.release.request import DeployOptions
from bot.release.rollout import Actor, Release, Surface

# Who clicked, once the release (and so its service's policy) is known.
Clicker = Callable[[Release], Awaitable[Actor]]

# The reason a pause or rollback by a Slack button gets. A Slack user is an id, which a
# plain-text reason cannot show as a name (the status message names the clicker from the
# record); elsewhere the service's own reason names who did it.
_FROM_SLACK = {
    ButtonAction.PAUSE: "paused from Slack",
    ButtonAction.ROLLBACK: "rolled back from Slack",
}


class NotAButton(UserError):
    """The click carries a value no status message of ours produced (forged or garbled)."""

    def __init__(self) -> None:
        super().__init__(
            "that is not a shipwatch button", hint="use the buttons on a release's status message"
        )


class ClickStatus(StrEnum):
    APPLIED = "applied"  # the service call ran (``result`` says what it did)
    UNKNOWN_RELEASE = "unknown_release"  # the release is gone
    STALE = "stale"  # the release moved on; ``stale`` says how it is now


@dataclass(frozen=True)
class Click:
    status: ClickStatus
    release: Release | None = None  # as it is now, when it still exists
    result: Result | None = None
    stale: str = ""


async def click(
    service: ReleaseService,
    action_id: str,
    value: str,
    clicker: Clicker,
    *,
    request_id: str = "",
) -> Click:
    """Carry out a click; NotAButton when ``value`` is not a reference we produced."""
    try:
        ref = parse_button_value(value)
    except ValueError:
        raise NotAButton() from None
    release = await service.store.get(ref.release_id)
    if release is None:
        return Click(ClickStatus.UNKNOWN_RELEASE)
    if stale := await _stale(service, release, ref, action_id):
        return Click(ClickStatus.STALE, release, stale=stale)
    action = ButtonAction(action_id)  # stale_reason has refused any other
    actor = await clicker(release)
    name = release.service
    reason = _FROM_SLACK.get(action, "") if actor.surface is Surface.SLACK else ""
    result: Result
    match action:
        case ButtonAction.ADVANCE:
            result = await service.advance(
                actor, name, expected_step=ref.step, request_id=request_id
            )
        case ButtonAction.APPROVE:
            result = await service.approve(
                actor, name, expected_step=ref.step, request_id=request_id
            )
        case ButtonAction.PAUSE:
            result = await service.pause(actor, name, reason, request_id)
        case ButtonAction.RESUME:
            result = await service.resume(actor, name, request_id)
        case ButtonAction.ROLLBACK:
            result = await service.rollback(actor, name, reason, request_id)
        case ButtonAction.ROLL_BACK_TO:
            # A fast release of the version this one replaced, judged like any release:
            # the deploy checks who may deploy, the lock and a release already under way.
            back = DeployOptions(steps=[100], stable=release.version)
            result = await service.deploy(
                actor, name, release.stable_version or "", back, request_id
            )
    return Click(ClickStatus.APPLIED, release, result)


async def _stale(service: ReleaseService, release: Release, ref: ButtonRef, action_id: str) -> str:
    """Why the click no longer applies ("" when it does). Going back from a release that a newer
    one replaced since would replace the newer one, with a control that is not running."""
    if stale := stale_reason(release, ref, action_id):
        return stale
    if action_id == ButtonAction.ROLL_BACK_TO:
        newest = await service.store.history(release.service, limit=1)
        if newest and newest[0].id != release.id:
            return f"{newest[0].label} started since"
    return ""
