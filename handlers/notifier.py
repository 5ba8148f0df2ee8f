"""The Slack face of the notifier port: one status message per release, a thread of events.

Nothing here calls Slack to say something: each event is rendered and written to the outbox
in Redis (bot.store.outbox), and the outbox writer (handlers.outbox) sends it, paced per
channel, once, whichever process is alive to do it. A release's status message is posted with
its first event and then kept up to date in place; its channel id and ts live in Redis, so a
restarted bot keeps editing the same message.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.web.async_client import AsyncWebClient

from bot.engine.digest import Digest
from bot.engine.events import EventKind, ReleaseEvent
from bot.page_links import PageLinks
from bot.release.policy import Policy
from bot.release.rollout import Release
from bot.render.digest import digest_message
from bot.render.kit import Message
from bot.render.status import status_for
from bot.render.thread import event_message
from bot.store.outbox import EntryKind
from bot.store.store import Store
from handlers.outbox import OutboxWriter

DEFAULT_CHANNEL = "#releases"
# What people must see before anything else waiting in the channel: a rollback, a request to
# approve, traffic that did not move.
URGENT = frozenset(
    {
        EventKind.ROLLBACK_STARTED,
        EventKind.ROLLED_BACK,
        EventKind.APPROVAL_NEEDED,
        EventKind.TRAFFIC_FAILED,
    }
)


def new_entry_id() -> str:
    return uuid.uuid4().hex


class SlackNotifier:
    def __init__(
        self,
        client: AsyncWebClient,
        store: Store,
        policy: Policy,
        writer_client: AsyncWebClient,
        *,
        owner: str,
        demo_metrics: bool = False,
        rate: float = 1.0,
        burst: int = 3,
    ) -> None:
        self.client = client
        self.store = store
        self._policy = policy
        self.demo_metrics = demo_metrics  # every status message says so
        # The daily digest's optional model summary (bot.writing.digest); None: none.
        self.summarize: Callable[[Digest], Awaitable[tuple[str, str]]] | None = None
        # Signed links to the release page (none unless its key and public URL are set).
        self.page_links = PageLinks()
        self.writer = OutboxWriter(
            writer_client, store, self._status, owner=owner, rate=rate, burst=burst
        )

    def start(self) -> None:
        self.writer.start()

    async def close(self) -> None:
        await self.writer.close()

    async def notify(self, event: ReleaseEvent) -> None:
        release = event.release
        if event.kind is EventKind.NOTES_FINAL:
            sp = self._policy.services.get(release.service)
            channel = (sp.announce_channel or sp.channel) if sp else DEFAULT_CHANNEL
            message = event_message(event, page_url=self.page_url(release))
            await self.store.outbox.add(
                channel, release.id, EntryKind.POST, text=message.text, blocks=message.blocks,
                item_id=new_entry_id(),
            )  # fmt: skip
            self.writer.wake()
            return
        channel = self.channel_of(release)
        message = self._event(event)
        # The status mark goes in with the entry: the status message shows the newest state,
        # and is posted (it starts the thread) before the first entry of its thread.
        await self.store.outbox.add(
            channel, release.id, EntryKind.THREAD, text=message.text, blocks=message.blocks,
            urgent=event.kind in URGENT, status=True, item_id=new_entry_id(),
        )  # fmt: skip
        if event.files:
            await self.store.outbox.add(
                channel, release.id, EntryKind.FILES, files=tuple(event.files),
                item_id=new_entry_id(),
            )  # fmt: skip
        self.writer.wake()

    async def post_digest(self, digest: Digest) -> None:
        """The daily digest: a post of its own in the channel, in the channel's line."""
        summary, label = await self.summarize(digest) if self.summarize else ("", "")
        message = digest_message(digest, summary=summary, label=label)
        await self.store.outbox.add(
            digest.channel, f"digest:{digest.day.isoformat()}", EntryKind.POST,
            text=message.text, blocks=message.blocks, item_id=new_entry_id(),
        )  # fmt: skip
        self.writer.wake()

    async def reply(self, release: Release, message: Message) -> None:
        """A reply in the release's thread (an answer to a question), in the channel's line."""
        await self.store.outbox.add(
            self.channel_of(release), release.id, EntryKind.THREAD, text=message.text,
            blocks=message.blocks, item_id=new_entry_id(),
        )  # fmt: skip
        self.writer.wake()

    def page_url(self, release: Release) -> str:
        """The release page's signed link, "" when links are off. Signed from the record's
        last change, so re-rendering an unchanged release gives the same text."""
        return self.page_links.url_for(release.service, release.id, release.updated_at)

    def channel_of(self, release: Release) -> str:
        sp = self._policy.services.get(release.service)
        return sp.channel if sp else DEFAULT_CHANNEL

    async def permalink(self, release: Release) -> str:
        """A link to the release's thread, for tickets; "" when Slack cannot give one."""
        refs = await self.store.message_refs(release.id)
        if not refs.get("ts"):
            return ""
        try:
            response = await self.client.chat_getPermalink(
                channel=refs["channel"], message_ts=refs["ts"]
            )
        except (SlackApiError, SlackClientError, TimeoutError):
            return ""
        return str(response.get("permalink", ""))

    def _event(self, event: ReleaseEvent) -> Message:
        sp = self._policy.services.get(event.release.service)
        page_url = self.page_url(event.release)
        if sp is None:
            return event_message(event, page_url=page_url)
        return event_message(
            event,
            oncall=sp.oncall,
            approvers=sp.approvers,
            metrics=sp.metrics_at(event.release.step_weight),  # a step's own limits
            traffic=sp.traffic,
            page_url=page_url,
        )

    def _status(self, release: Release) -> Message:
        return status_for(
            release, self._policy, demo_metrics=self.demo_metrics, page_url=self.page_url(release)
        )
