"""The Slack face of the notifier port: one status message per release, a thread of events.

The status message is posted once, its channel id and ts are stored in Redis, and every later
event updates it in place with chat.update, so a restarted bot keeps editing the same message.
A status update that fails (after the client's own retries) is marked stale in Redis and
retried by a background task (of this process or, after a restart, the next one); it is never
posted a second time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.web.async_client import AsyncWebClient

from bot.engine.events import EventKind, ReleaseEvent
from bot.errors import StoreError
from bot.observe import telemetry
from bot.release.policy import Policy
from bot.release.rollout import Release
from bot.render.kit import Message
from bot.render.status import status_for
from bot.render.thread import event_message
from bot.store.store import Store
from bot.tasks import CLOSE_TIMEOUT_S, cancel_and_wait
from handlers.client import slack_error

log = logging.getLogger(__name__)


class SlackNotifier:
    def __init__(
        self,
        client: AsyncWebClient,
        store: Store,
        policy: Policy,
        retry_interval: float = 15.0,
        *,
        demo_metrics: bool = False,
    ) -> None:
        self.client = client
        self.store = store
        self._policy = policy
        self.retry_interval = retry_interval
        self.demo_metrics = demo_metrics  # every status message says so
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    def start(self) -> None:
        if self._task is None:
            self._stop.clear()
            self._task = asyncio.create_task(self._retry_loop(), name="slack-status-retry")

    async def close(self) -> None:
        if self._task is not None:
            self._stop.set()
            await cancel_and_wait([self._task], CLOSE_TIMEOUT_S)
            self._task = None

    async def notify(self, event: ReleaseEvent) -> None:
        if event.kind is EventKind.NOTES_FINAL:
            await self._announce(event)
            return
        # The newest record, not the event's snapshot: the status message shows "now".
        release = await self.store.get(event.release.id) or event.release
        refs = await self.store.message_refs(release.id)
        if not refs.get("ts"):
            refs = await self._post_status(release)
        else:
            await self.refresh(release, refs)
        if refs.get("ts"):
            await self._reply(event, refs)
            if event.files:
                await self._attach(event, refs)

    async def _attach(self, event: ReleaseEvent, refs: dict[str, str]) -> None:
        """Files (a chart) into the thread, through Slack's three-step upload."""
        try:
            await self.client.files_upload_v2(
                channel=refs["channel"],
                thread_ts=refs["thread_ts"],
                file_uploads=[
                    {"content": data, "filename": name, "title": name} for name, data in event.files
                ],
            )
        except (SlackApiError, SlackClientError, TimeoutError) as exc:
            self._failed("files.upload", event.release, exc)

    async def _announce(self, event: ReleaseEvent) -> None:
        sp = self._policy.services.get(event.release.service)
        channel = (sp.announce_channel or sp.channel) if sp else "#releases"
        message = event_message(event)
        try:
            await self.client.chat_postMessage(
                channel=channel, text=message.text, blocks=message.blocks, unfurl_links=False
            )
        except (SlackApiError, SlackClientError, TimeoutError) as exc:
            self._failed("chat.postMessage", event.release, exc)

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

    async def refresh(self, release: Release, refs: dict[str, str] | None = None) -> bool:
        """Bring the status message up to date; on failure it is retried later."""
        refs = refs if refs is not None else await self.store.message_refs(release.id)
        if not refs.get("ts"):
            return False
        message = self._status(release)
        try:
            await self.client.chat_update(
                channel=refs["channel"], ts=refs["ts"], text=message.text, blocks=message.blocks
            )
        except (SlackApiError, SlackClientError, TimeoutError) as exc:
            self._failed("chat.update", release, exc)
            await self._mark(release.id, stale=True)
            return False
        await self._mark(release.id, stale=False)
        return True

    async def _mark(self, release_id: str, *, stale: bool) -> None:
        try:
            await self.store.mark_stale_message(release_id, stale)
        except StoreError as exc:
            log.error(
                "cannot record the status message of %s as %s: %s",
                release_id,
                "stale" if stale else "fresh",
                exc,
            )

    async def _post_status(self, release: Release) -> dict[str, str]:
        sp = self._policy.services.get(release.service)
        channel = sp.channel if sp else "#releases"
        message = self._status(release)
        try:
            response = await self.client.chat_postMessage(
                channel=channel, text=message.text, blocks=message.blocks, unfurl_links=False
            )
        except (SlackApiError, SlackClientError, TimeoutError) as exc:
            self._failed("chat.postMessage", release, exc)
            return {}
        refs = {
            "channel": str(response["channel"]),
            "ts": str(response["ts"]),
            "thread_ts": str(response["ts"]),
        }
        await self.store.save_message_refs(release.id, refs)
        return refs

    async def _reply(self, event: ReleaseEvent, refs: dict[str, str]) -> None:
        sp = self._policy.services.get(event.release.service)
        message: Message = (
            event_message(event, oncall=sp.oncall, approvers=sp.approvers, metrics=sp.metrics)
            if sp
            else event_message(event)
        )
        try:
            await self.client.chat_postMessage(
                channel=refs["channel"],
                thread_ts=refs["thread_ts"],
                text=message.text,
                blocks=message.blocks,
                unfurl_links=False,
            )
        except (SlackApiError, SlackClientError, TimeoutError) as exc:
            self._failed("chat.postMessage", event.release, exc)

    def _status(self, release: Release) -> Message:
        return status_for(release, self._policy, demo_metrics=self.demo_metrics)

    def _failed(self, method: str, release: Release, exc: Exception) -> None:
        telemetry.CHAT_ERRORS.labels(method).inc()
        error = slack_error(exc) if isinstance(exc, SlackApiError) else exc
        log.error("%s failed for %s: %s", method, release.label, error)

    async def retry_stale(self) -> int:
        """Update every status message marked stale; returns how many are still stale."""
        left = 0
        for release_id in await self.store.stale_messages():
            release = await self.store.get(release_id)
            if release is None:
                await self._mark(release_id, stale=False)
            elif not await self.refresh(release):
                left += 1
        return left

    async def _retry_loop(self) -> None:
        # Ends on the stop event, not on the cancel alone. On Python 3.11, asyncio.wait_for,
        # which redis-py puts around every command it sends, swallows a cancel that lands just
        # as the command completes (CPython gh-86296, fixed in 3.12): the loop would run on, and
        # close would wait for it forever.
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.retry_interval)
            if self._stop.is_set():
                return
            try:
                await self.retry_stale()
            except StoreError as exc:
                log.warning("cannot retry stale status messages now: %s", exc)
