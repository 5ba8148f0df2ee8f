"""What every Slack handler needs (the core and the Slack client), and how errors are shown."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field

from slack_sdk.web.async_client import AsyncWebClient

from bot.app import App
from bot.errors import (
    CommandError,
    ConflictError,
    DependencyError,
    PermissionDenied,
    UserError,
)
from bot.release.rollout import Release
from bot.render.blocks import Message, ephemeral, mention, status_message
from handlers.responses import ResponseUrls

log = logging.getLogger(__name__)


@dataclass
class Core:
    app: App
    client: AsyncWebClient
    responses: ResponseUrls = field(default_factory=ResponseUrls)
    bot_user_id: str = ""  # learnt from auth.test at start; used to spot mentions


def status_of(core: Core, release: Release) -> Message:
    """The release's status message with what its service's policy adds (on-call, limits)."""
    sp = core.app.policy.services.get(release.service)
    if sp is None:
        return status_message(release)
    return status_message(release, oncall=sp.oncall, approvers=sp.approvers, metrics=sp.metrics)


def error_message(exc: Exception, *, what: str) -> Message:
    """The one place that decides what a user sees when something goes wrong."""
    if isinstance(exc, CommandError):
        log.info("bad command (%s): %s", what, exc)
        return ephemeral(f":warning: {exc.args[0]}", usage=exc.usage)
    if isinstance(exc, PermissionDenied):
        log.info("refused (%s): %s", what, exc)
        who = ", ".join(mention(a) for a in exc.allowed) or "nobody is configured"
        return ephemeral(
            f":lock: you may not {exc.action} `{exc.service}`. Who may: {who} "
            "(the service's policy says so)."
        )
    if isinstance(exc, UserError):
        log.info("refused (%s): %s", what, exc)
        return ephemeral(f":warning: {exc}")
    if isinstance(exc, ConflictError):
        return ephemeral(f":no_entry: {exc}")
    if isinstance(exc, DependencyError):
        log.error("dependency failed (%s): %s", what, exc)
        return ephemeral(f":rotating_light: {exc}")
    ref = uuid.uuid4().hex[:8]
    log.exception("unexpected error %s (%s)", ref, what)
    return ephemeral(
        f":boom: something went wrong on our side (ref `{ref}`); nothing was "
        "changed by this request. Try again, or give the ref to the bot's owners."
    )
