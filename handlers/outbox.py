"""Writes the chat outbox (bot.store.outbox) to Slack: each channel paced, in order, once.

One task per channel that has something to write, in whichever process holds the channel's
lease: a busy channel never delays another, and a channel's pace (Slack allows about one post
per second per channel, with short bursts) is kept by the one writer that has it. A 429 pauses
the channel for its Retry-After. An answer that never came (a timeout, a 5xx) leaves the entry
marked ``sending``; before it is sent again the writer looks for it in the channel by the id
every post carries as message metadata, so it appears once. What Slack refuses for good is
logged and kept in a capped list, never retried forever; blocks Slack rejects are sent once more
as text alone, so the words still arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

import aiohttp
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.web.async_client import AsyncWebClient

from bot.errors import StoreError
from bot.observe import telemetry
from bot.release.rollout import Release
from bot.render.kit import Message
from bot.store.outbox import Entry, EntryKind, Next, Outbox, StatusDue
from bot.store.store import Store
from bot.tasks import CLOSE_TIMEOUT_S, cancel_and_wait
from handlers.client import slack_error

log = logging.getLogger(__name__)

METADATA_TYPE = "shipwatch_message"
MAX_AGE_S = 24 * 3600  # an entry Slack has not taken in a day is given up, loudly
LOOKBACK_S = 120  # how far before an entry was queued its copy may sit in the channel
LIST_PAGES = 10  # of conversations.list, looking for a channel's id by its name
# Slack's errors that say the message did not land and will not: anything else ok:false is
# final too, except these, which say nothing about whether it landed.
UNCLEAR = {"internal_error", "fatal_error", "service_unavailable", "request_timeout"}
BAD_BLOCKS = {"invalid_blocks", "invalid_blocks_format", "invalid_attachments", "msg_too_long"}


class Verdict(Enum):
    SENT = "sent"
    RATE_LIMITED = "rate_limited"  # not taken; wait Retry-After
    UNCLEAR = "unclear"  # may or may not have landed; look before sending again
    BAD_BLOCKS = "bad_blocks"  # not taken: send once more as text
    REFUSED = "refused"  # not taken, and will not be


@dataclass(frozen=True)
class Answer:
    verdict: Verdict
    why: str = ""
    retry_after: float = 0.0


def judge(exc: BaseException) -> Answer:
    """What a failed Web API call means for the message it carried."""
    if isinstance(exc, SlackApiError):
        status = exc.response.status_code
        error = slack_error(exc)
        if status == 429 or error == "ratelimited":
            headers = {k.lower(): v for k, v in (exc.response.headers or {}).items()}
            header = headers.get("retry-after")
            try:
                wait = float(header) if header is not None else 1.0
            except ValueError:
                wait = 1.0
            return Answer(Verdict.RATE_LIMITED, error, max(0.0, min(wait, 300.0)))
        if status >= 500 or not isinstance(exc.response.data, dict) or error in UNCLEAR:
            return Answer(Verdict.UNCLEAR, error)
        if error in BAD_BLOCKS:
            return Answer(Verdict.BAD_BLOCKS, error)
        return Answer(Verdict.REFUSED, error)
    return Answer(Verdict.UNCLEAR, f"{type(exc).__name__}: {exc}".rstrip(": "))


class Pace:
    """A channel's token bucket: ``rate`` messages a second on average, ``burst`` at once."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = max(1.0, float(burst))
        self._tokens = self.burst
        self._at = time.monotonic()
        self._paused_until = 0.0

    def _refill(self) -> float:
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        return now

    def wait(self) -> float:
        """Seconds until the next message may go (0: now)."""
        now = self._refill()
        short = 0.0 if self._tokens >= 1 else (1 - self._tokens) / self.rate
        return max(short, self._paused_until - now)

    def take(self) -> None:
        self._refill()
        self._tokens -= 1

    def pause(self, seconds: float) -> None:
        self._paused_until = max(self._paused_until, time.monotonic() + seconds)
        self._tokens = 0.0


StatusRender = Callable[[Release], Message]


class OutboxWriter:
    def __init__(
        self,
        client: AsyncWebClient,
        store: Store,
        render_status: StatusRender,
        *,
        owner: str,
        rate: float = 1.0,
        burst: int = 3,
        hold_ttl: float = 15.0,
        poll: float = 0.5,
        retry_base: float = 1.0,
    ) -> None:
        self.client = client
        self.store = store
        self.outbox: Outbox = store.outbox
        self.render_status = render_status
        self.owner = owner
        self.rate = rate
        self.burst = burst
        self.hold_ttl = hold_ttl
        self.poll = poll
        self.retry_base = retry_base  # first wait after an unclear answer; doubles, up to a minute
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self._main: asyncio.Task[None] | None = None
        self._channels: dict[str, asyncio.Task[None]] = {}
        self._store_down = False

    # --- life ---------------------------------------------------------------------------------

    def start(self) -> None:
        if self._main is None:
            self._stop.clear()
            self._main = asyncio.create_task(self._run(), name="slack-outbox")

    def wake(self) -> None:
        """Something was queued by this process: look now rather than at the next poll."""
        self._wake.set()

    async def flush(self, timeout: float) -> bool:
        """Wait until nothing is left to write, for at most ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if await self.outbox.pending() == 0:
                    return True
            except StoreError:
                return False
            if time.monotonic() >= deadline:
                return False
            self.wake()
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        self._stop.set()
        self._wake.set()
        tasks = [t for t in [self._main, *self._channels.values()] if t is not None]
        await cancel_and_wait(tasks, CLOSE_TIMEOUT_S)
        self._main = None
        self._channels.clear()

    # --- the loops ----------------------------------------------------------------------------

    async def _run(self) -> None:
        # Ends on the stop event, not on the cancel alone (CPython gh-86296 on 3.11: a cancel
        # landing as a Redis command completes can be swallowed).
        while not self._stop.is_set():
            self._wake.clear()
            try:
                channels = await self.outbox.channels()
            except StoreError as exc:
                self._say_store_down(exc)
                channels = []
            else:
                self._say_store_back()
            for channel in channels:
                task = self._channels.get(channel)
                if task is None or task.done():
                    self._channels[channel] = asyncio.create_task(
                        self._write_channel(channel), name=f"slack-outbox-{channel}"
                    )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll)

    def _say_store_down(self, exc: StoreError) -> None:
        if not self._store_down:
            self._store_down = True
            log.error("cannot read the chat outbox; messages wait until Redis is back: %s", exc)

    def _say_store_back(self) -> None:
        if self._store_down:
            self._store_down = False
            log.info("the chat outbox is readable again; sending what waited")

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    async def _write_channel(self, channel: str) -> None:
        pace = Pace(self.rate, self.burst)
        not_before = 0.0  # after an unclear answer: the channel's backoff
        # Waits are cut into pieces shorter than the lease, renewed between them: a long
        # Retry-After or backoff must not let the lease lapse while this writer still has the
        # channel (another process would take it and could send the same entry).
        step = self.hold_ttl / 3
        try:
            while not self._stop.is_set():
                if not await self.outbox.hold(channel, self.owner, self.hold_ttl):
                    return  # another process writes this channel
                wait = max(pace.wait(), not_before - time.monotonic())
                if wait > 0:
                    await self._pause(min(wait, step))
                    continue
                due = await self.outbox.next(channel)
                if due is None:
                    if await self.outbox.idle(channel, self.owner):
                        return
                    continue
                pace.take()
                not_before = time.monotonic() + await self._deliver_or_set_aside(due, pace)
        except StoreError as exc:
            self._say_store_down(exc)
        finally:
            if self._stop.is_set():
                # Let another process take the channel now rather than when the lease lapses.
                with contextlib.suppress(StoreError):
                    await self.outbox.let_go(channel, self.owner)

    # --- one delivery -------------------------------------------------------------------------

    async def _deliver_or_set_aside(self, due: Next, pace: Pace) -> float:
        """``_deliver``, except that an entry whose sending fails in a way nobody foresaw is set
        aside (logged with its traceback) instead of failing the channel again and again."""
        try:
            return await self._deliver(due, pace)
        except StoreError:
            raise
        except Exception:
            log.exception("cannot send %s; set aside", _what(due))
            if isinstance(due, StatusDue):
                await self.outbox.status_done(due)
            else:
                await self.outbox.dead(due, "unexpected error (see the log)")
            return 0.0

    async def _deliver(self, due: Next, pace: Pace) -> float:
        """Send one entry or status update; how long the channel should wait before the next."""
        if isinstance(due, StatusDue):
            answer = await self._status(due)
            if answer.verdict is Verdict.SENT or answer.verdict is Verdict.REFUSED:
                await self.outbox.status_done(due)
            return self._after(answer, pace, attempts=0)
        if time.time() - due.created > MAX_AGE_S:
            log.error("giving up %s: Slack has not taken it in a day", due.describe())
            await self.outbox.dead(due, "not taken within a day")
            return 0.0
        if due.sending and await self._landed(due):
            log.info("%s had landed after all; not sending it again", due.describe())
            await self.outbox.done(due)
            return 0.0
        await self.outbox.sending(due)
        answer = await self._send(due)
        if answer.verdict is Verdict.BAD_BLOCKS and due.blocks:
            log.warning("Slack refused the blocks of %s (%s): sending the text alone",
                        due.describe(), answer.why)  # fmt: skip
            answer = await self._send(due, text_only=True)
        if answer.verdict is Verdict.SENT:
            await self.outbox.done(due)
        elif answer.verdict in (Verdict.REFUSED, Verdict.BAD_BLOCKS):
            log.error("Slack refused %s for good: %s", due.describe(), answer.why)
            await self.outbox.dead(due, answer.why)
        elif answer.verdict is Verdict.RATE_LIMITED:
            await self.outbox.not_sent(due)
        return self._after(answer, pace, attempts=due.attempts + 1)

    def _after(self, answer: Answer, pace: Pace, *, attempts: int) -> float:
        if answer.verdict is Verdict.RATE_LIMITED:
            log.warning(
                "Slack asked to slow down (%s): waiting %.1fs", answer.why, answer.retry_after
            )
            pace.pause(answer.retry_after)
            return 0.0
        if answer.verdict is Verdict.UNCLEAR:
            wait: float = min(60.0, self.retry_base * 2.0 ** max(0, attempts - 1))
            log.warning(
                "Slack did not answer clearly (%s): trying again in %.1fs", answer.why, wait
            )
            return wait
        return 0.0

    async def _call(self, method: str, release_id: str, call: Any) -> tuple[Answer, Any]:
        try:
            return Answer(Verdict.SENT), await call
        except (SlackApiError, SlackClientError, aiohttp.ClientError, TimeoutError) as exc:
            telemetry.CHAT_ERRORS.labels(method).inc()
            answer = judge(exc)
            log.debug("%s for %s: %s", method, release_id, answer.why)
            return answer, None

    async def _status(self, due: StatusDue) -> Answer:
        release = await self.store.get(due.release_id)
        if release is None:
            return Answer(Verdict.REFUSED, "the release is gone")
        refs = await self.store.message_refs(release.id)
        message = self.render_status(release)
        if not refs.get("ts"):
            return await self._post_status(due.channel, release, message)
        answer, _ = await self._call(
            "chat.update",
            release.id,
            self.client.chat_update(
                channel=refs["channel"], ts=refs["ts"], text=message.text, blocks=message.blocks
            ),
        )
        return answer

    async def _post_status(self, channel: str, release: Release, message: Message) -> Answer:
        """The release's status message, whose thread carries everything else about it."""
        marker = f"status-{release.id}"
        unclear_before = await self.outbox.posting_status(release.id)
        found = (
            await self._find(channel, "", marker, since=release.created_at)
            if unclear_before
            else None
        )
        if found is not None:
            answer, response = Answer(Verdict.SENT), {"channel": found[0], "ts": found[1]}
        else:
            answer, response = await self._call(
                "chat.postMessage",
                release.id,
                self.client.chat_postMessage(
                    channel=channel,
                    text=message.text,
                    blocks=message.blocks,
                    unfurl_links=False,
                    metadata=_metadata(marker, release.id),
                ),
            )
        if answer.verdict is not Verdict.UNCLEAR:
            await self.outbox.posting_status(release.id, done=True)
        if answer.verdict is Verdict.SENT:
            refs = {
                "channel": str(response["channel"]),
                "ts": str(response["ts"]),
                "thread_ts": str(response["ts"]),
            }
            await self.store.save_message_refs(release.id, refs)
            await self.outbox.learn_channel_id(channel, refs["channel"])
        return answer

    async def _send(self, entry: Entry, *, text_only: bool = False) -> Answer:
        blocks = None if text_only or not entry.blocks else entry.blocks
        if entry.kind is EntryKind.POST:
            answer, response = await self._call(
                "chat.postMessage",
                entry.release_id,
                self.client.chat_postMessage(
                    channel=entry.channel, text=entry.text, blocks=blocks, unfurl_links=False,
                    metadata=_metadata(entry.id, entry.release_id),
                ),
            )  # fmt: skip
            if answer.verdict is Verdict.SENT:
                await self.outbox.learn_channel_id(entry.channel, str(response["channel"]))
            return answer
        where = await self._thread_of(entry)
        if isinstance(where, Answer):
            return where
        channel, thread_ts = where
        if entry.kind is EntryKind.FILES:
            answer, _ = await self._call(
                "files.upload",
                entry.release_id,
                self.client.files_upload_v2(
                    channel=channel,
                    thread_ts=thread_ts,
                    file_uploads=[
                        {"content": data, "filename": name, "title": name}
                        for name, data in entry.files
                    ],
                ),
            )
            return answer
        answer, _ = await self._call(
            "chat.postMessage",
            entry.release_id,
            self.client.chat_postMessage(
                channel=channel, thread_ts=thread_ts, text=entry.text, blocks=blocks,
                unfurl_links=False, metadata=_metadata(entry.id, entry.release_id),
            ),
        )  # fmt: skip
        return answer

    async def _thread_of(self, entry: Entry) -> tuple[str, str] | Answer:
        """(channel id, thread ts) the entry goes to; the status message is posted first when
        the release has none yet."""
        refs = await self.store.message_refs(entry.release_id)
        if not refs.get("ts"):
            release = await self.store.get(entry.release_id)
            if release is None:
                return Answer(Verdict.REFUSED, "the release is gone")
            answer = await self._post_status(entry.channel, release, self.render_status(release))
            if answer.verdict is not Verdict.SENT:
                return answer
            refs = await self.store.message_refs(entry.release_id)
        return refs["channel"], refs["thread_ts"]

    # --- was it sent after all? ----------------------------------------------------------------

    async def _landed(self, entry: Entry) -> bool:
        if entry.kind is EntryKind.FILES:
            return False  # uploads carry no metadata to look for; sent again
        if entry.kind is EntryKind.POST:
            return await self._find(entry.channel, "", entry.id, since=entry.created) is not None
        refs = await self.store.message_refs(entry.release_id)
        if not refs.get("ts"):
            return False  # no thread yet, so nothing in it
        found = await self._find(refs["channel"], refs["thread_ts"], entry.id, since=entry.created)
        return found is not None

    async def _find(
        self, channel: str, thread_ts: str, marker: str, *, since: float
    ) -> tuple[str, str] | None:
        """(channel id, ts) of the bot's message carrying ``marker``, if it is in the channel
        (or the thread). Unknown channel ids and failed reads count as not found."""
        channel_id = await self.outbox.channel_id(channel) or await self._look_up_id(channel)
        if not channel_id:
            return None
        oldest = f"{max(0.0, since - LOOKBACK_S):.6f}"
        try:
            if thread_ts:
                response = await self.client.conversations_replies(
                    channel=channel_id, ts=thread_ts, oldest=oldest, limit=200,
                    include_all_metadata=True,
                )  # fmt: skip
            else:
                response = await self.client.conversations_history(
                    channel=channel_id, oldest=oldest, limit=200, include_all_metadata=True
                )
        except (SlackApiError, SlackClientError, aiohttp.ClientError, TimeoutError) as exc:
            error = slack_error(exc) if isinstance(exc, SlackApiError) else str(exc)
            log.warning("cannot look for %s in %s (%s)", marker, channel, error)
            return None
        for message in response.get("messages") or []:
            payload = (message.get("metadata") or {}).get("event_payload") or {}
            if isinstance(payload, dict) and payload.get("id") == marker:
                return channel_id, str(message.get("ts", ""))
        return None

    async def _look_up_id(self, channel: str) -> str:
        """The id of a channel the policy names by name, from Slack's channel list (needed to
        read its history before any post to it has told us); "" when Slack cannot say."""
        name = channel.removeprefix("#")
        cursor = ""
        try:
            for _ in range(LIST_PAGES):
                page = await self.client.conversations_list(
                    types="public_channel,private_channel", exclude_archived=True, limit=1000,
                    cursor=cursor or None,
                )  # fmt: skip
                for found in page.get("channels") or []:
                    if isinstance(found, dict) and found.get("name") == name:
                        await self.outbox.learn_channel_id(channel, str(found.get("id", "")))
                        return str(found.get("id", ""))
                cursor = str((page.get("response_metadata") or {}).get("next_cursor") or "")
                if not cursor:
                    break
        except (SlackApiError, SlackClientError, aiohttp.ClientError, TimeoutError) as exc:
            error = slack_error(exc) if isinstance(exc, SlackApiError) else str(exc)
            log.warning("cannot find the id of %s (%s)", channel, error)
        return ""


def _what(due: Next) -> str:
    if isinstance(due, StatusDue):
        return f"the status message of {due.release_id} in {due.channel}"
    return due.describe()


def _metadata(marker: str, release_id: str) -> dict[str, Any]:
    return {"event_type": METADATA_TYPE, "event_payload": {"id": marker, "release": release_id}}
