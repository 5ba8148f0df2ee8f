"""A local stand-in for the Slack Web API, for the real slack_sdk client to talk to.

The bot is tested with slack_sdk's own ``AsyncWebClient`` (its request encoding, retry handlers
and error handling are part of what is tested), pointed at this server instead of slack.com:

    async with SlackStandIn() as slack:
        client = AsyncWebClient(token=BOT_TOKEN, base_url=slack.api_url)
        posted = await client.chat_postMessage(channel="#releases", text="Deploying")
        await client.chat_update(channel=posted["channel"], ts=posted["ts"], text="Done")
        assert [m["text"] for m in slack.messages("#releases")] == ["Done"]

It keeps the workspace's state the way Slack would show it: messages per channel (latest version
of each, with every earlier version kept), thread replies, ephemeral messages, modal views,
uploaded files and the posts made to ``response_url``s. Every Web API call is recorded as a
``Call`` (method, parsed arguments, token, monotonic arrival time, answer) so tests can assert
on what the bot asked for and when.

Identities match ``tests.support.slack_signing``: team T0001, bot user UBOT, app A0001. Channel
names map to stable ids ("#releases" -> "C0RELEASES"); ids are accepted only for channels the
workspace knows (by a name used before, ``add_channel``, or the default #releases), so a bot
configured with a wrong id gets ``channel_not_found`` as it would from Slack.

Failures are scripted per method: ``fail_next("chat.update", status=429, retry_after=1)``,
``fail_next("chat.postMessage", status=503)``, ``fail_next("chat.update",
error="message_not_found")``; ``delay("views.open", 3.5)`` makes a method slow. The upload URL
and the response URLs take scripted failures too, under the names "upload" and "response_url".

Where Slack is lenient about a bot's mistake, the stand-in is strict when strictness makes a bug
visible in a test: a reply to a ``thread_ts`` that is no message fails with ``thread_not_found``
here instead of landing in the channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import itertools
import json
import mimetypes
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from slack_sdk.web.async_client import AsyncWebClient

from tests.support.slack_signing import API_APP_ID, BOT_ID, BOT_USER_ID, TEAM_DOMAIN, TEAM_ID
from tests.support.standin import LocalServer

Json = dict[str, Any]

BOT_TOKEN = "xoxb-0001-0001-shipwatchtests"
TEAM_NAME = "Shipwatch"
BOT_NAME = "shipwatch"

# Message timestamps are unique per channel in Slack and are the time the message was posted (a
# reader filters with ``oldest`` against the clock); the wall clock in µs, bumped to stay unique
# and ordered when two messages land in the same µs.
_TS_STEP_MICROS = 100

# Arguments Slack takes as JSON text inside a form field or a query parameter; decoded so tests
# compare Python objects, whichever encoding the client chose.
JSON_FIELDS = ("blocks", "attachments", "view", "files", "metadata")

RESPONSE_URL_USES = 5
MAX_BLOCKS = 50
MAX_TEXT = 40_000

_CHANNEL_ID = re.compile(r"^[CGD][A-Z0-9]{2,}$")
_USER_ID = re.compile(r"^[UW][A-Z0-9]{2,}$")
_CHANNEL_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,79}$")

_SERVER_ERRORS = {500: "internal_error", 502: "bad_gateway", 503: "service_unavailable"}


class SlackError(Exception):
    """A method's refusal, answered as HTTP 200 with ``{"ok": false, "error": ...}``."""

    def __init__(self, error: str) -> None:
        super().__init__(error)
        self.error = error


@dataclass
class Call:
    """One Web API request as the stand-in received it, and what it answered."""

    method: str
    args: Json
    token: str | None
    at: float  # time.monotonic() on arrival, before any scripted delay
    http_method: str = "POST"
    status: int | None = None  # None while the answer is still being delayed
    response: Json | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200 and bool(self.response and self.response.get("ok"))


@dataclass
class UploadedFile:
    """A file through the three steps of Slack's external upload."""

    id: str
    filename: str
    length: int  # as announced to files.getUploadURLExternal
    alt_txt: str | None = None
    snippet_type: str | None = None
    content: bytes | None = None  # None until the upload URL received the bytes
    title: str | None = None
    completed: bool = False
    channels: list[str] = field(default_factory=list)
    initial_comment: str | None = None
    thread_ts: str | None = None


@dataclass(frozen=True)
class _Failure:
    status: int
    retry_after: int
    error: str | None
    html: bool = False  # a 5xx page from a proxy in front of Slack, not Slack's JSON
    applied: bool = False  # the call was carried out, and only its answer is the failure


@dataclass
class _Bucket:
    """Slack's per-channel posting limit as the stand-in enforces it (a token bucket)."""

    tokens: float
    at: float


@dataclass
class _Channel:
    id: str
    name: str
    is_private: bool = False
    user: str | None = None  # the other member of a direct message
    # ts -> versions of that message, oldest first. Timestamps only grow, so insertion order is
    # ts order and listing a channel needs no sorting.
    versions: dict[str, list[Json]] = field(default_factory=dict)
    ephemerals: list[Json] = field(default_factory=list)

    @property
    def is_im(self) -> bool:
        return self.user is not None


@dataclass
class _ResponseUrl:
    id: str
    channel_id: str | None
    message_ts: str | None
    user_id: str | None
    posts: list[Json] = field(default_factory=list)


@dataclass
class _User:
    id: str
    name: str
    real_name: str
    email: str
    is_admin: bool = False
    is_bot: bool = False
    deleted: bool = False
    tz: str = "Europe/Berlin"


def _flag(value: Any) -> bool:
    # Form and query arguments arrive as text; JSON ones as booleans.
    return value is True or (isinstance(value, str) and value.lower() in ("1", "true"))


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _after(message: Json, oldest: Any) -> bool:
    try:
        return float(message["ts"]) >= float(oldest or 0)
    except ValueError:
        return True


def _limit(args: Json) -> int:
    try:
        return max(1, min(1000, int(args.get("limit") or 100)))
    except ValueError:
        return 100


def _with_metadata(messages: list[Json], args: Json) -> list[Json]:
    """Slack returns a message's metadata only to a reader who asks for it."""
    if _flag(args.get("include_all_metadata")):
        return messages
    return [{k: v for k, v in m.items() if k != "metadata"} for m in messages]


PROXY_PAGE = "<html><head><title>502 Bad Gateway</title></head><body>bad gateway</body></html>"


def _answer(status: int, body: Json, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(body, status=status, headers=headers)


class SlackStandIn(LocalServer):
    """The Slack Web API on 127.0.0.1, a free port, in the running event loop."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[Call] = []
        self._last_ts_micros = 0
        self._serial = itertools.count(1)
        self._channels: dict[str, _Channel] = {}
        self._channel_names: dict[str, str] = {}
        self._users: dict[str, _User] = {}
        self._groups: dict[str, list[str]] = {}
        self._views: dict[str, list[Json]] = {}
        self._used_triggers: set[str] = set()
        self._files: dict[str, UploadedFile] = {}
        self._response_urls: dict[str, _ResponseUrl] = {}
        self._failures: dict[str, deque[_Failure]] = {}
        self._delays: dict[str, float] = {}
        self._limit: tuple[frozenset[str], float, float] | None = None
        self._buckets: dict[str, _Bucket] = {}
        self.rate_limited = 0  # calls refused by the per-channel limit (limit_rate)
        self._methods: dict[str, Callable[[Json], Json]] = {
            "auth.test": self._auth_test,
            "chat.postMessage": self._chat_post_message,
            "chat.update": self._chat_update,
            "chat.delete": self._chat_delete,
            "chat.postEphemeral": self._chat_post_ephemeral,
            "chat.getPermalink": self._chat_get_permalink,
            "views.open": self._views_open,
            "views.update": self._views_update,
            "users.info": self._users_info,
            "usergroups.users.list": self._usergroups_users_list,
            "conversations.info": self._conversations_info,
            "conversations.replies": self._conversations_replies,
            "conversations.history": self._conversations_history,
            "conversations.list": self._conversations_list,
            "files.getUploadURLExternal": self._files_get_upload_url,
            "files.completeUploadExternal": self._files_complete_upload,
        }
        self.add_user(BOT_USER_ID, name=BOT_NAME, real_name="Shipwatch", is_bot=True)
        # The channel slack_signing's requests come from by default.
        self.add_channel("releases")

    # ------------------------------------------------------------------ serving

    def build_app(self) -> web.Application:
        # Uploads may exceed aiohttp's 1 MiB default body limit.
        app = web.Application(client_max_size=64 * 1024 * 1024)
        self.routes(app.router)
        return app

    def routes(self, router: web.UrlDispatcher) -> None:
        router.add_route("*", "/api/{method}", self._handle_api)
        router.add_route("POST", "/upload/{file_id}", self._handle_upload)
        router.add_route("PUT", "/upload/{file_id}", self._handle_upload)
        router.add_route("POST", "/response/{response_id}", self._handle_response_url)

    @property
    def url(self) -> str:
        return self.base_url

    @property
    def api_url(self) -> str:
        """The ``base_url`` for slack_sdk clients (trailing slash included, as it expects)."""
        return f"{self.url}/api/"

    def client(self, token: str = BOT_TOKEN, **kwargs: Any) -> AsyncWebClient:
        """A real slack_sdk client pointed at this stand-in."""
        return AsyncWebClient(token=token, base_url=self.api_url, **kwargs)

    # ------------------------------------------------------------------ workspace set-up

    def add_channel(self, name: str, *, is_private: bool = False) -> str:
        """Make ``name`` (with or without "#") a channel of the workspace; returns its id."""
        return self._channel_by_name(name, is_private=is_private).id

    def channel_id(self, name_or_id: str) -> str:
        """The id of a channel given by name ("#releases" or "releases") or id."""
        return self._known_channel(name_or_id).id

    def add_user(
        self,
        user_id: str,
        *,
        name: str | None = None,
        real_name: str | None = None,
        email: str | None = None,
        is_admin: bool = False,
        is_bot: bool = False,
        deleted: bool = False,
        tz: str = "Europe/Berlin",
    ) -> None:
        """Give a user a specific profile. Any other well-formed user id (U… or W…) exists too,
        with a profile made up from the id, since tests invent user ids freely."""
        handle = name or user_id.lower()
        self._users[user_id] = _User(
            id=user_id,
            name=handle,
            real_name=real_name or handle.replace(".", " ").title(),
            email=email or f"{handle}@{TEAM_DOMAIN}.example",
            is_admin=is_admin,
            is_bot=is_bot,
            deleted=deleted,
            tz=tz,
        )

    def set_group(self, group_id: str, user_ids: list[str]) -> None:
        """The members ``usergroups.users.list`` answers for user group ``group_id`` (S…)."""
        self._groups[group_id] = list(user_ids)

    def new_response_url(
        self,
        *,
        channel_id: str | None = None,
        message_ts: str | None = None,
        user_id: str | None = None,
    ) -> str:
        """A fresh ``response_url`` on this server.

        Tie it to what Slack ties it to, so its posts change the workspace as Slack's do:
        ``channel_id`` (where "in_channel" responses go), ``message_ts`` (the message a button
        sat in, which ``replace_original`` / ``delete_original`` act on) and ``user_id`` (who
        sees "ephemeral" responses). Untied, posts are only recorded.
        """
        response_id = f"{next(self._serial):06d}"
        self._response_urls[response_id] = _ResponseUrl(
            id=response_id,
            channel_id=self.channel_id(channel_id) if channel_id else None,
            message_ts=message_ts,
            user_id=user_id,
        )
        return f"{self.url}/response/{response_id}"

    # ------------------------------------------------------------------ scripted trouble

    def fail_next(
        self,
        method: str,
        *,
        status: int = 429,
        retry_after: int = 1,
        count: int = 1,
        error: str | None = None,
        html: bool = False,
        applied: bool = False,
    ) -> None:
        """Make the next ``count`` calls of ``method`` fail.

        With ``error``, they answer HTTP 200 ``{"ok": false, "error": error}`` (``status`` is then
        ignored); otherwise HTTP ``status``: 429 comes with ``Retry-After: retry_after`` and
        ``{"ok": false, "error": "ratelimited"}``, a 5xx with an error body, or with ``html`` an
        HTML error page such as a proxy in front of Slack answers. With ``applied`` the call is
        carried out first and only its answer fails, as when Slack posts a message and the
        answer is lost on the way back. Failures scripted for the same method queue up in order.
        """
        if count < 1:
            raise ValueError("count must be at least 1")
        if error is None and not (status == 429 or 500 <= status <= 599):
            raise ValueError(f"status must be 429 or 5xx, got {status}")
        queue = self._failures.setdefault(method, deque())
        queue.extend(_Failure(status, retry_after, error, html, applied) for _ in range(count))

    def limit_rate(
        self,
        per_second: float,
        burst: int,
        methods: tuple[str, ...] = ("chat.postMessage", "chat.update"),
    ) -> None:
        """Refuse ``methods`` with 429 (Retry-After: 1) above ``per_second`` calls per channel
        on average with bursts of ``burst``, the way Slack limits posting to a channel."""
        self._limit = (frozenset(methods), per_second, float(burst))
        self._buckets.clear()

    def _over_limit(self, method: str, args: Json) -> bool:
        if self._limit is None or method not in self._limit[0]:
            return False
        ref = args.get("channel")
        try:
            channel = self._postable(ref).id if method == "chat.postMessage" else str(ref)
        except SlackError:
            return False
        _, rate, burst = self._limit
        now = time.monotonic()
        bucket = self._buckets.setdefault(channel, _Bucket(burst, now))
        bucket.tokens = min(burst, bucket.tokens + (now - bucket.at) * rate)
        bucket.at = now
        if bucket.tokens < 1:
            self.rate_limited += 1
            return True
        bucket.tokens -= 1
        return False

    def clear_failures(self, method: str) -> None:
        """Drop the failures still scripted for ``method``: the outage is over."""
        self._failures.pop(method, None)

    def delay(self, method: str, seconds: float) -> None:
        """Answer every later call of ``method`` only after ``seconds`` (0 to stop)."""
        if seconds <= 0:
            self._delays.pop(method, None)
        else:
            self._delays[method] = seconds

    # ------------------------------------------------------------------ what happened

    def calls_to(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method]

    def messages(self, channel: str) -> list[Json]:
        """The channel's messages as its history shows them: top-level messages and replies
        also sent to the channel, each in its latest version, oldest first."""
        chan = self._known_channel(channel)
        return [
            copy.deepcopy(versions[-1])
            for ts, versions in chan.versions.items()
            if versions[-1].get("thread_ts", ts) == ts
            or versions[-1].get("subtype") == "thread_broadcast"
        ]

    def thread(self, channel: str, thread_ts: str) -> list[Json]:
        """The replies in a thread (its parent not included), latest versions, oldest first."""
        chan = self._known_channel(channel)
        return [
            copy.deepcopy(versions[-1])
            for ts, versions in chan.versions.items()
            if ts != thread_ts and versions[-1].get("thread_ts") == thread_ts
        ]

    def message(self, channel: str, ts: str) -> Json:
        """The latest version of a message; KeyError if there is none (or it was deleted)."""
        return copy.deepcopy(self.versions(channel, ts)[-1])

    def versions(self, channel: str, ts: str) -> list[Json]:
        """Every version of a message, as posted first and after each update."""
        chan = self._known_channel(channel)
        if ts not in chan.versions:
            raise KeyError(f"no message {ts} in {chan.id}")
        return copy.deepcopy(chan.versions[ts])

    def ephemerals(self, channel: str, user: str | None = None) -> list[Json]:
        """Ephemeral messages shown in the channel (to ``user`` only, if given)."""
        chan = self._known_channel(channel)
        return [copy.deepcopy(e) for e in chan.ephemerals if user is None or e["user"] == user]

    def view(self, view_id: str) -> Json:
        """The latest version of a modal view."""
        return copy.deepcopy(self._views[view_id][-1])

    def views(self) -> list[Json]:
        """Every view opened, in its latest version, in the order opened."""
        return [copy.deepcopy(v[-1]) for v in self._views.values()]

    def file(self, file_id: str) -> UploadedFile:
        return self._files[file_id]

    def uploads(self) -> list[UploadedFile]:
        return list(self._files.values())

    def responses(self, url_or_id: str) -> list[Json]:
        """The JSON bodies a response_url accepted, in order."""
        response_id = urlsplit(url_or_id).path.rstrip("/").rsplit("/", 1)[-1]
        return copy.deepcopy(self._response_urls[response_id].posts)

    # ------------------------------------------------------------------ HTTP handlers

    async def _handle_api(self, request: web.Request) -> web.StreamResponse:
        method = request.match_info["method"]
        args, token, problem = await self._read_args(request)
        call = Call(method, args, token, time.monotonic(), request.method)
        # Appended on arrival, so ``calls`` is in arrival order even when answers are delayed.
        self.calls.append(call)
        pause = self._delays.get(method, 0.0)
        if pause:
            await asyncio.sleep(pause)
        failure = self._take_failure(method)
        if failure is None and self._over_limit(method, args):
            failure = _Failure(429, 1, None)
        if failure is not None and failure.applied:
            call.response = self._dispatch(method, args, token, problem)
        if failure is not None and failure.html:
            call.status = failure.status
            return web.Response(status=failure.status, text=PROXY_PAGE, content_type="text/html")
        if failure is not None:
            status, body, headers = self._failure_answer(failure)
            if failure.applied:  # what was done, for the tests; the client sees the failure
                call.status = status
                return _answer(status, body, headers)
        else:
            status, headers = 200, {}
            body = self._dispatch(method, args, token, problem)
        call.status, call.response = status, body
        return _answer(status, body, headers)

    def _dispatch(self, method: str, args: Json, token: str | None, problem: str | None) -> Json:
        handler = self._methods.get(method)
        if handler is None:
            return {"ok": False, "error": "unknown_method"}
        if token is None:
            return {"ok": False, "error": "not_authed"}
        if not token.startswith("xoxb-"):
            return {"ok": False, "error": "invalid_auth"}
        if problem is not None:
            return {"ok": False, "error": problem}
        try:
            return handler(args)
        except SlackError as refusal:
            return {"ok": False, "error": refusal.error}

    async def _read_args(self, request: web.Request) -> tuple[Json, str | None, str | None]:
        """Query, form or JSON arguments merged into one dict, the token, and a parse error."""
        args: Json = dict(request.query)
        problem: str | None = None
        if request.can_read_body:
            if request.content_type == "application/json":
                try:
                    parsed = await request.json()
                except ValueError:
                    parsed = None
                if isinstance(parsed, dict):
                    args.update(parsed)
                else:
                    problem = "invalid_json"
            elif request.content_type in (
                "application/x-www-form-urlencoded",
                "multipart/form-data",
            ):
                form = await request.post()
                for key, item in form.items():
                    args[key] = item.file.read() if isinstance(item, web.FileField) else item
        # slack_sdk sends the token as a bearer header; older clients put it in the arguments.
        token: str | None = args.pop("token", None)
        authorization = request.headers.get("Authorization", "")
        if authorization.startswith("Bearer "):
            token = authorization.removeprefix("Bearer ").strip()
        for name in JSON_FIELDS:
            value = args.get(name)
            if isinstance(value, str):
                # Invalid JSON is kept as sent: the method then refuses it, as Slack would.
                with contextlib.suppress(ValueError):
                    args[name] = json.loads(value)
        return args, token, problem

    def _take_failure(self, key: str) -> _Failure | None:
        queue = self._failures.get(key)
        return queue.popleft() if queue else None

    @staticmethod
    def _failure_answer(failure: _Failure) -> tuple[int, Json, dict[str, str]]:
        if failure.error is not None:
            return 200, {"ok": False, "error": failure.error}, {}
        if failure.status == 429:
            headers = {"Retry-After": str(failure.retry_after)}
            return 429, {"ok": False, "error": "ratelimited"}, headers
        error = _SERVER_ERRORS.get(failure.status, "fatal_error")
        return failure.status, {"ok": False, "error": error}, {}

    async def _handle_upload(self, request: web.Request) -> web.StreamResponse:
        upload = self._files.get(request.match_info["file_id"])
        if upload is None:
            return web.Response(status=404, text="file_not_found", content_type="text/plain")
        failure = self._take_failure("upload")
        if failure is not None:
            status, body, headers = self._failure_answer(failure)
            return _answer(status, body, headers)
        if request.content_type == "multipart/form-data":
            # Slack's upload URL takes the bytes raw or as the file part of a multipart form.
            form = await request.post()
            parts = [v for v in form.values() if isinstance(v, web.FileField)]
            data = parts[0].file.read() if parts else b""
        else:
            data = await request.read()
        upload.content = data
        # The real upload endpoint answers in plain text; slack_sdk only looks at the status.
        return web.Response(text=f"OK - {len(data)}", content_type="text/plain")

    async def _handle_response_url(self, request: web.Request) -> web.StreamResponse:
        target = self._response_urls.get(request.match_info["response_id"])
        if target is None:
            return web.Response(status=404, text="expired_url", content_type="text/plain")
        failure = self._take_failure("response_url")
        if failure is not None:
            status, body, headers = self._failure_answer(failure)
            return _answer(status, body, headers)
        if len(target.posts) >= RESPONSE_URL_USES:
            return web.Response(status=404, text="used_url", content_type="text/plain")
        try:
            payload = await request.json()
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            return web.Response(status=400, text="invalid_payload", content_type="text/plain")
        if not _flag(payload.get("delete_original")) and not (
            payload.get("text") or payload.get("blocks") or payload.get("attachments")
        ):
            return web.Response(status=400, text="no_text", content_type="text/plain")
        target.posts.append(payload)
        self._apply_response(target, payload)
        return web.Response(text="ok", content_type="text/plain")

    def _apply_response(self, target: _ResponseUrl, payload: Json) -> None:
        """Change the workspace the way a response_url post does."""
        chan = self._channels.get(target.channel_id or "")
        if chan is None:
            return
        original = chan.versions.get(target.message_ts or "")
        if _flag(payload.get("delete_original")):
            if original is not None:
                self._remove_message(chan, original[-1]["ts"])
            return
        content: Json = {k: payload[k] for k in ("text", "blocks", "attachments") if k in payload}
        if _flag(payload.get("replace_original")):
            if original is not None:
                # Replacing means the message becomes the payload: parts left out are gone.
                replaced = copy.deepcopy(original[-1])
                for key in ("text", "blocks", "attachments"):
                    replaced.pop(key, None)
                replaced.update(content)
                replaced.setdefault("text", "")
                original.append(replaced)
            return
        if payload.get("response_type") == "in_channel":
            message = self._bot_message(self._next_ts(), content)
            thread_ts = payload.get("thread_ts")
            if isinstance(thread_ts, str) and thread_ts in chan.versions:
                message["thread_ts"] = thread_ts
            self._store_message(chan, message)
        else:
            chan.ephemerals.append(
                {"type": "message", "user": target.user_id, "ts": self._next_ts(), **content}
            )

    # ------------------------------------------------------------------ state helpers

    def _next_ts(self) -> str:
        micros = max(int(time.time() * 1_000_000), self._last_ts_micros + _TS_STEP_MICROS)
        self._last_ts_micros = micros
        return f"{micros // 1_000_000}.{micros % 1_000_000:06d}"

    def _channel_by_name(self, name: str, *, is_private: bool = False) -> _Channel:
        name = name.removeprefix("#").lower()
        if not _CHANNEL_NAME.match(name):
            raise SlackError("channel_not_found")
        existing = self._channel_names.get(name)
        if existing is not None:
            return self._channels[existing]
        # "deploy-alerts" -> "C0DEPLOYALERTS": stable across runs, readable in failures.
        base = ("G0" if is_private else "C0") + re.sub(r"[^A-Z0-9]", "", name.upper())
        channel_id = base
        for n in itertools.count(2):
            if channel_id not in self._channels:
                break
            channel_id = f"{base}{n}"
        chan = _Channel(id=channel_id, name=name, is_private=is_private)
        self._channels[channel_id] = chan
        self._channel_names[name] = channel_id
        return chan

    def _im_with(self, user_id: str) -> _Channel:
        channel_id = "D" + user_id[1:]
        chan = self._channels.get(channel_id)
        if chan is None:
            chan = _Channel(id=channel_id, name=channel_id, user=user_id)
            self._channels[channel_id] = chan
        return chan

    def _postable(self, ref: Any) -> _Channel:
        """The channel a post goes to: an id the workspace knows, a name, or a user (their DM)."""
        if not isinstance(ref, str) or not ref:
            raise SlackError("channel_not_found")
        if _CHANNEL_ID.match(ref):
            return self._by_id(ref)
        if _USER_ID.match(ref):
            return self._im_with(ref)
        return self._channel_by_name(ref)

    def _by_id(self, ref: Any) -> _Channel:
        """Methods such as chat.update and conversations.info take channel ids only."""
        chan = self._channels.get(ref) if isinstance(ref, str) else None
        if chan is None:
            raise SlackError("channel_not_found")
        return chan

    def _known_channel(self, ref: str) -> _Channel:
        # For the test-facing accessors: a name resolves (creating an empty channel is
        # harmless), an unknown id is the test's mistake.
        if _CHANNEL_ID.match(ref):
            chan = self._channels.get(ref)
            if chan is None:
                raise KeyError(f"no channel {ref}")
            return chan
        try:
            return self._channel_by_name(ref)
        except SlackError:
            raise KeyError(f"no channel named {ref!r}") from None

    def _bot_message(self, ts: str, content: Json) -> Json:
        message: Json = {
            "type": "message",
            "user": BOT_USER_ID,
            "bot_id": BOT_ID,
            "app_id": API_APP_ID,
            "team": TEAM_ID,
            "ts": ts,
            "text": "",
            "bot_profile": {
                "id": BOT_ID,
                "app_id": API_APP_ID,
                "name": BOT_NAME,
                "team_id": TEAM_ID,
                "deleted": False,
                "updated": 1700000000,
                "icons": {"image_48": f"https://avatars.{TEAM_DOMAIN}.example/bot_48.png"},
            },
        }
        message.update(copy.deepcopy(content))
        return message

    def _store_message(self, chan: _Channel, message: Json) -> None:
        chan.versions[message["ts"]] = [message]
        thread_ts = message.get("thread_ts")
        if thread_ts is not None:
            self._refresh_thread(chan, thread_ts)

    def _remove_message(self, chan: _Channel, ts: str) -> None:
        removed = chan.versions.pop(ts)
        thread_ts = removed[-1].get("thread_ts")
        if thread_ts is not None and thread_ts != ts:
            self._refresh_thread(chan, thread_ts)

    def _refresh_thread(self, chan: _Channel, thread_ts: str) -> None:
        """Keep a thread's parent carrying the reply summary Slack adds to it."""
        parent = chan.versions.get(thread_ts)
        if parent is None:
            return
        replies = [
            v[-1]
            for ts, v in chan.versions.items()
            if ts != thread_ts and v[-1].get("thread_ts") == thread_ts
        ]
        root = parent[-1]
        for key in ("reply_count", "reply_users_count", "latest_reply", "reply_users"):
            root.pop(key, None)
        if not replies:
            root.pop("thread_ts", None)
            return
        users = list(dict.fromkeys(r["user"] for r in replies))
        root.update(
            thread_ts=thread_ts,
            reply_count=len(replies),
            reply_users_count=len(users),
            latest_reply=replies[-1]["ts"],
            reply_users=users,
        )

    @staticmethod
    def _content(args: Json) -> Json:
        """The text, blocks and attachments given, checked the way Slack checks them."""
        content: Json = {}
        if "text" in args and args["text"] is not None:
            text = str(args["text"])
            if len(text) > MAX_TEXT:
                raise SlackError("msg_too_long")
            content["text"] = text
        blocks = args.get("blocks")
        if blocks is not None:
            if (
                not isinstance(blocks, list)
                or len(blocks) > MAX_BLOCKS
                or not all(isinstance(b, dict) and isinstance(b.get("type"), str) for b in blocks)
            ):
                raise SlackError("invalid_blocks")
            content["blocks"] = blocks
        attachments = args.get("attachments")
        if attachments is not None:
            if not isinstance(attachments, list) or not all(
                isinstance(a, dict) for a in attachments
            ):
                raise SlackError("invalid_attachments")
            content["attachments"] = attachments
        return content

    @staticmethod
    def _require_some_content(content: Json) -> None:
        if not (content.get("text") or content.get("blocks") or content.get("attachments")):
            raise SlackError("no_text")

    def _user(self, user_id: Any) -> _User:
        if not isinstance(user_id, str) or not _USER_ID.match(user_id):
            raise SlackError("user_not_found")
        if user_id not in self._users:
            self.add_user(user_id)
        return self._users[user_id]

    # ------------------------------------------------------------------ Web API methods

    def _auth_test(self, args: Json) -> Json:
        return {
            "ok": True,
            "url": f"https://{TEAM_DOMAIN}.slack.com/",
            "team": TEAM_NAME,
            "user": BOT_NAME,
            "team_id": TEAM_ID,
            "user_id": BOT_USER_ID,
            "bot_id": BOT_ID,
            "is_enterprise_install": False,
        }

    def _chat_post_message(self, args: Json) -> Json:
        chan = self._postable(args.get("channel"))
        content = self._content(args)
        self._require_some_content(content)
        message = self._bot_message(self._next_ts(), content)
        if isinstance(args.get("metadata"), dict):
            message["metadata"] = args["metadata"]
        thread_ts = args.get("thread_ts")
        if thread_ts:
            parent = chan.versions.get(str(thread_ts))
            if parent is None:
                raise SlackError("thread_not_found")
            # Replying to a reply lands in the thread of its root, as in Slack.
            root_ts: str = parent[-1].get("thread_ts") or parent[-1]["ts"]
            message["thread_ts"] = root_ts
            message["parent_user_id"] = chan.versions[root_ts][-1]["user"]
            if _flag(args.get("reply_broadcast")):
                message["subtype"] = "thread_broadcast"
        self._store_message(chan, message)
        return {
            "ok": True,
            "channel": chan.id,
            "ts": message["ts"],
            "message": copy.deepcopy(message),
        }

    def _chat_update(self, args: Json) -> Json:
        chan = self._by_id(args.get("channel"))
        ts = args.get("ts")
        versions = chan.versions.get(ts) if isinstance(ts, str) else None
        if versions is None:
            raise SlackError("message_not_found")
        content = self._content(args)
        if not content:
            raise SlackError("no_text")
        updated = copy.deepcopy(versions[-1])
        # Parts left out keep their previous value; an empty list removes blocks/attachments.
        for key, value in content.items():
            if value == [] and key != "text":
                updated.pop(key, None)
            else:
                updated[key] = copy.deepcopy(value)
        updated["edited"] = {"user": BOT_USER_ID, "ts": self._next_ts()}
        versions.append(updated)
        return {
            "ok": True,
            "channel": chan.id,
            "ts": ts,
            "text": updated.get("text", ""),
            "message": copy.deepcopy(updated),
        }

    def _chat_delete(self, args: Json) -> Json:
        chan = self._by_id(args.get("channel"))
        ts = args.get("ts")
        if not isinstance(ts, str) or ts not in chan.versions:
            raise SlackError("message_not_found")
        self._remove_message(chan, ts)
        return {"ok": True, "channel": chan.id, "ts": ts}

    def _chat_post_ephemeral(self, args: Json) -> Json:
        chan = self._postable(args.get("channel"))
        user = self._user(args.get("user"))
        content = self._content(args)
        self._require_some_content(content)
        ts = self._next_ts()
        ephemeral: Json = {"type": "message", "user": user.id, "ts": ts, **copy.deepcopy(content)}
        if args.get("thread_ts"):
            ephemeral["thread_ts"] = str(args["thread_ts"])
        chan.ephemerals.append(ephemeral)
        return {"ok": True, "message_ts": ts}

    def _chat_get_permalink(self, args: Json) -> Json:
        chan = self._by_id(args.get("channel"))
        ts = args.get("message_ts")
        versions = chan.versions.get(ts) if isinstance(ts, str) else None
        if versions is None or ts is None:
            raise SlackError("message_not_found")
        link = f"https://{TEAM_DOMAIN}.slack.com/archives/{chan.id}/p{ts.replace('.', '')}"
        thread_ts = versions[-1].get("thread_ts")
        if thread_ts is not None and thread_ts != ts:
            link += f"?thread_ts={thread_ts}&cid={chan.id}"
        return {"ok": True, "channel": chan.id, "permalink": link}

    def _build_view(self, view_id: str, spec: Json, previous: Json | None) -> Json:
        return {
            "id": view_id,
            "team_id": TEAM_ID,
            "type": spec.get("type", "modal"),
            "blocks": copy.deepcopy(spec.get("blocks", [])),
            "private_metadata": spec.get("private_metadata", ""),
            "callback_id": spec.get("callback_id", ""),
            "state": {"values": {}},
            "hash": f"{int(time.time())}.{next(self._serial)}",
            "title": copy.deepcopy(spec.get("title")),
            "clear_on_close": bool(spec.get("clear_on_close", False)),
            "notify_on_close": bool(spec.get("notify_on_close", False)),
            "close": copy.deepcopy(spec.get("close")),
            "submit": copy.deepcopy(spec.get("submit")),
            "previous_view_id": None,
            "root_view_id": previous["root_view_id"] if previous else view_id,
            "app_id": API_APP_ID,
            "external_id": spec.get("external_id", ""),
            "app_installed_team_id": TEAM_ID,
            "bot_id": BOT_ID,
        }

    @staticmethod
    def _view_spec(args: Json) -> Json:
        spec = args.get("view")
        if not isinstance(spec, dict) or spec.get("type") not in ("modal", "home"):
            raise SlackError("invalid_arguments")
        return spec

    def _views_open(self, args: Json) -> Json:
        trigger_id = args.get("trigger_id")
        if not isinstance(trigger_id, str) or not trigger_id:
            raise SlackError("invalid_trigger_id")
        # A trigger opens one view only; a second use is a bug Slack reports this way.
        if trigger_id in self._used_triggers:
            raise SlackError("exchanged_trigger_id")
        spec = self._view_spec(args)
        self._used_triggers.add(trigger_id)
        view_id = f"V{next(self._serial):010d}"
        view = self._build_view(view_id, spec, None)
        self._views[view_id] = [view]
        return {"ok": True, "view": copy.deepcopy(view)}

    def _views_update(self, args: Json) -> Json:
        view_id = args.get("view_id")
        if not view_id and args.get("external_id"):
            matches = [
                vid for vid, v in self._views.items() if v[-1]["external_id"] == args["external_id"]
            ]
            view_id = matches[-1] if matches else None
        if not isinstance(view_id, str) or view_id not in self._views:
            raise SlackError("not_found")
        versions = self._views[view_id]
        if args.get("hash") and args["hash"] != versions[-1]["hash"]:
            raise SlackError("hash_conflict")
        view = self._build_view(view_id, self._view_spec(args), versions[-1])
        versions.append(view)
        return {"ok": True, "view": copy.deepcopy(view)}

    def _users_info(self, args: Json) -> Json:
        user = self._user(args.get("user"))
        profile = {
            "real_name": user.real_name,
            "real_name_normalized": user.real_name,
            "display_name": user.name,
            "display_name_normalized": user.name,
            "email": user.email,
            "team": TEAM_ID,
        }
        if user.is_bot:
            profile["bot_id"] = BOT_ID
            profile.pop("email")
        return {
            "ok": True,
            "user": {
                "id": user.id,
                "team_id": TEAM_ID,
                "name": user.name,
                "deleted": user.deleted,
                "real_name": user.real_name,
                "tz": user.tz,
                "tz_label": "Central European Time",
                "tz_offset": 3600,
                "profile": profile,
                "is_admin": user.is_admin,
                "is_owner": False,
                "is_primary_owner": False,
                "is_restricted": False,
                "is_ultra_restricted": False,
                "is_bot": user.is_bot,
                "is_app_user": False,
                "updated": 1700000000,
            },
        }

    def _usergroups_users_list(self, args: Json) -> Json:
        members = self._groups.get(str(args.get("usergroup", "")))
        if members is None:
            raise SlackError("no_such_subteam")
        return {"ok": True, "users": list(members)}

    def _conversations_replies(self, args: Json) -> Json:
        chan = self._by_id(args.get("channel"))
        ts = str(args.get("ts", ""))
        if ts not in chan.versions:
            raise SlackError("thread_not_found")
        parent = copy.deepcopy(chan.versions[ts][-1])
        replies = [m for m in self.thread(chan.id, ts) if _after(m, args.get("oldest"))]
        messages = _with_metadata([parent, *replies], args)
        return {"ok": True, "messages": messages[: _limit(args)], "has_more": False}

    def _conversations_list(self, args: Json) -> Json:
        """The workspace's channels (direct messages left out), in one page."""
        channels = [
            {"id": c.id, "name": c.name, "is_private": c.is_private, "is_archived": False}
            for c in self._channels.values()
            if not c.is_im
        ]
        return {"ok": True, "channels": channels, "response_metadata": {"next_cursor": ""}}

    def _conversations_history(self, args: Json) -> Json:
        """The channel's messages, newest first, as Slack lists them."""
        chan = self._by_id(args.get("channel"))
        listed = [m for m in self.messages(chan.id) if _after(m, args.get("oldest"))]
        messages = _with_metadata(list(reversed(listed)), args)
        limit = _limit(args)
        return {"ok": True, "messages": messages[:limit], "has_more": len(messages) > limit}

    def _conversations_info(self, args: Json) -> Json:
        chan = self._by_id(args.get("channel"))
        if chan.is_im:
            return {
                "ok": True,
                "channel": {
                    "id": chan.id,
                    "created": 1700000000,
                    "is_im": True,
                    "is_org_shared": False,
                    "user": chan.user,
                    "is_user_deleted": False,
                    "priority": 0,
                },
            }
        return {
            "ok": True,
            "channel": {
                "id": chan.id,
                "name": chan.name,
                "name_normalized": chan.name,
                "is_channel": not chan.is_private,
                "is_group": chan.is_private,
                "is_im": False,
                "is_mpim": False,
                "is_private": chan.is_private,
                "is_archived": False,
                "is_general": chan.name == "general",
                "is_shared": False,
                "is_ext_shared": False,
                "is_org_shared": False,
                "is_member": True,
                "created": 1700000000,
                "creator": "U0ADMIN",
                "unlinked": 0,
                "topic": {"value": "", "creator": "", "last_set": 0},
                "purpose": {"value": "", "creator": "", "last_set": 0},
                "previous_names": [],
                "context_team_id": TEAM_ID,
            },
        }

    def _files_get_upload_url(self, args: Json) -> Json:
        filename = args.get("filename")
        try:
            length = int(args.get("length", ""))
        except ValueError:
            length = -1
        if not isinstance(filename, str) or not filename or length < 0:
            raise SlackError("invalid_arguments")
        file_id = f"F{next(self._serial):010d}"
        self._files[file_id] = UploadedFile(
            id=file_id,
            filename=filename,
            length=length,
            alt_txt=args.get("alt_txt"),
            snippet_type=args.get("snippet_type"),
        )
        return {"ok": True, "upload_url": f"{self.url}/upload/{file_id}", "file_id": file_id}

    def _file_object(self, upload: UploadedFile) -> Json:
        name = upload.filename
        extension = name.rsplit(".", 1)[-1].lower() if "." in name else "binary"
        mimetype = mimetypes.guess_type(name)[0] or "application/octet-stream"
        private = f"https://files.slack.com/files-pri/{TEAM_ID}-{upload.id}/{name}"
        return {
            "id": upload.id,
            "created": 1700000000,
            "timestamp": 1700000000,
            "name": name,
            "title": upload.title or name,
            "mimetype": mimetype,
            "filetype": extension,
            "pretty_type": extension.upper(),
            "user": BOT_USER_ID,
            "user_team": TEAM_ID,
            "editable": False,
            "size": len(upload.content or b""),
            "mode": "hosted",
            "is_external": False,
            "external_type": "",
            "is_public": any(c.startswith("C") for c in upload.channels),
            "public_url_shared": False,
            "url_private": private,
            "url_private_download": private.replace("/files-pri/", "/files-pri/download/"),
            "permalink": f"https://{TEAM_DOMAIN}.slack.com/files/{BOT_USER_ID}/{upload.id}/{name}",
            "channels": list(upload.channels),
            "comments_count": 0,
        }

    def _files_complete_upload(self, args: Json) -> Json:
        specs = args.get("files")
        if not isinstance(specs, list) or not specs:
            raise SlackError("invalid_arguments")
        uploads: list[UploadedFile] = []
        for spec in specs:
            upload = self._files.get(spec.get("id", "")) if isinstance(spec, dict) else None
            if upload is None or upload.content is None:
                raise SlackError("file_not_found")
            uploads.append(upload)
        channel_ids = [c for c in str(args.get("channels") or "").split(",") if c]
        if args.get("channel_id"):
            channel_ids.insert(0, str(args["channel_id"]))
        chans = [self._by_id(c) for c in channel_ids]
        thread_ts = args.get("thread_ts")
        if thread_ts and (not chans or str(thread_ts) not in chans[0].versions):
            raise SlackError("thread_not_found")
        for upload, spec in zip(uploads, specs, strict=True):
            upload.title = spec.get("title") or upload.filename
            upload.completed = True
            upload.channels = [c.id for c in chans]
            upload.initial_comment = args.get("initial_comment")
            upload.thread_ts = str(thread_ts) if thread_ts else None
        files = [self._file_object(u) for u in uploads]
        # Sharing posts one message carrying the files (and the comment) where they were shared.
        for chan in chans:
            message = self._bot_message(
                self._next_ts(), {"text": _text(args.get("initial_comment"))}
            )
            message.update(files=copy.deepcopy(files), upload=True, display_as_bot=False)
            if thread_ts and chan is chans[0]:
                message["thread_ts"] = str(thread_ts)
            self._store_message(chan, message)
        return {"ok": True, "files": files}
