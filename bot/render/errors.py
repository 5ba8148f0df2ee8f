"""What a failure looks like on each surface: one table, one row per kind of failure.

Each exception class names its kind (``bot.errors.Failure``); the row says how a chat reply
starts, what the HTTP API answers and how loud the log line is. Slack and the console render the
same reply; the API adds its machine-readable fields to the row's status.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

from bot.engine.sizing import SizingRefusal
from bot.errors import CommandError, Failure, JustMovedError, PermissionDenied, failure_of
from bot.redact import redact
from bot.render.kit import Message, ephemeral, mrkdwn_message
from bot.render.mrkdwn import esc, mention
from bot.render.sizing import sizing_refusal


@dataclass(frozen=True)
class Shown:
    mark: str  # how a chat reply starts
    http_status: int  # what the API answers
    log_level: int  # how loud the log line is; a bug also logs its traceback
    logged_as: str  # how the log line starts


SHOWN: dict[Failure, Shown] = {
    Failure.USAGE: Shown(":warning:", 422, logging.INFO, "bad command"),
    Failure.PERMISSION: Shown(":lock:", 403, logging.INFO, "refused, not allowed"),
    Failure.UNKNOWN_SERVICE: Shown(":warning:", 404, logging.INFO, "refused, unknown service"),
    Failure.GATES: Shown(":warning:", 409, logging.INFO, "refused, gates not passed"),
    Failure.INVALID: Shown(":warning:", 422, logging.INFO, "refused"),
    Failure.CONFLICT: Shown(":no_entry:", 409, logging.INFO, "conflict"),
    Failure.DEPENDENCY: Shown(":rotating_light:", 503, logging.ERROR, "dependency failed"),
    Failure.BUG: Shown(":boom:", 500, logging.ERROR, "unexpected error"),
}


@dataclass(frozen=True)
class Failed:
    """A failure as reported: its kind, its row, and for a bug the reference in the log."""

    kind: Failure
    shown: Shown
    ref: str = ""


def report(exc: BaseException, *, what: str, log: logging.Logger) -> Failed:
    """Log ``exc`` as loud as its kind deserves (``what`` says which request it ended)."""
    kind = failure_of(exc)
    shown = SHOWN[kind]
    if kind is Failure.BUG:
        ref = uuid.uuid4().hex[:8]
        log.error("%s %s (%s)", shown.logged_as, ref, what, exc_info=exc)
        return Failed(kind, shown, ref)
    log.log(shown.log_level, "%s (%s): %s", shown.logged_as, what, exc)
    return Failed(kind, shown)


# Slack shows a modal's field error as plain text, on a line under the field.
MODAL_ERROR_LIMIT = 150


def modal_error(exc: BaseException, failed: Failed) -> str:
    """What a modal shows under the field when its submission was refused."""
    if failed.kind is Failure.BUG:
        return f"Something went wrong on our side (ref {failed.ref}); nothing was saved."
    said = str(exc).strip() or "refused"
    said = said[0].upper() + said[1:]
    if len(said) > MODAL_ERROR_LIMIT:
        said = said[: MODAL_ERROR_LIMIT - 1].rstrip() + "…"
    return redact(said)


def chat_error(exc: BaseException, failed: Failed) -> Message:
    """The reply only the person who asked sees, in Slack and in the console."""
    mark = failed.shown.mark
    if failed.kind is Failure.BUG:
        return ephemeral(
            f"{mark} something went wrong on our side (ref `{failed.ref}`); nothing was "
            "changed by this request. Try again, or give the ref to the bot's owners."
        )
    if isinstance(exc, CommandError):
        return ephemeral(f"{mark} {exc.args[0]}", usage=exc.usage)
    if isinstance(exc, SizingRefusal):
        return ephemeral(f"{mark} {sizing_refusal(exc.sizing)}")
    if isinstance(exc, PermissionDenied):
        # The people who may are mentions made from their ids; the rest is escaped text.
        who = ", ".join(mention(a) for a in exc.allowed) or "nobody is configured"
        head = esc(f"you may not {exc.action} `{exc.service}`. Who may: ")
        return mrkdwn_message(f"{mark} {head}{who} (the service's policy says so).")
    if isinstance(exc, JustMovedError):
        return mrkdwn_message(
            f"{mark} {esc(exc.label)} was just moved to {exc.weight}% by {mention(exc.by)} "
            f"({exc.ago:.0f}s ago); nothing more was done. To move on from {exc.weight}% as "
            f"well, send the command again in {exc.wait:.0f}s."
        )
    return ephemeral(f"{mark} {exc}")


def said(exc: BaseException) -> str:
    """A refusal in words on the surfaces that show plain text (the console, the API): the
    exception's own message, or, for a refusal that carries data, its rendering."""
    if isinstance(exc, SizingRefusal):
        return sizing_refusal(exc.sizing)
    return str(exc)
