"""What every Slack handler needs (the core and the Slack client), and how errors are shown."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from slack_sdk.web.async_client import AsyncWebClient

from bot.app import App
from bot.release.rollout import Release
from bot.render.errors import chat_error, report
from bot.render.kit import Message
from bot.render.status import status_for
from handlers.after_ack import AfterAck
from handlers.notifier import SlackNotifier
from handlers.responses import ResponseUrls

log = logging.getLogger(__name__)


@dataclass
class Core:
    app: App
    client: AsyncWebClient
    notifier: SlackNotifier
    responses: ResponseUrls = field(default_factory=ResponseUrls)
    after_ack: AfterAck = field(default_factory=AfterAck)  # what requests ask, after the ack
    bot_user_id: str = ""  # learnt from auth.test at start; used to spot mentions


def status_of(core: Core, release: Release) -> Message:
    """The release's status message with what its service's policy adds (on-call, limits)."""
    return status_for(
        release,
        core.app.policy,
        demo_metrics=core.app.demo_metrics,
        page_url=core.notifier.page_url(release),
    )


def error_message(exc: Exception, *, what: str) -> Message:
    """What the person who asked sees when their request failed (the table in render.errors)."""
    return chat_error(exc, report(exc, what=what, log=log))
