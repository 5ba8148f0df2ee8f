"""A local stand-in for the OpenAI chat-completions API, for the real ``openai`` client.

``bot.writing.llm`` is tested with the SDK's own ``AsyncOpenAI`` (its request encoding, timeouts,
retry settings and error classes are part of what is tested), pointed at this server:

    async with OpenAIStandIn() as api:
        api.reply("Likely cause: the new cache layer.\\nSuggested next step: roll back.")
        llm = LLM(api_key="sk-test", base_url=api.base_url)
        assert (await llm.complete("system", "user")).startswith("Likely cause")
        assert "user" in api.last_prompt()

Answers are scripted, first match wins: a queued failure (``fail_next``), then a queued reply
(``reply`` / ``replies``), then the ``respond_with`` callable, then the default reply.
``delay`` makes the server hang before answering, to run a client into its timeout. Every
request is recorded (path, JSON body, lower-cased headers, arrival time) before any delay, so a
test can count attempts even when the client gave up.

Where the real API rejects a request, so does the stand-in: no bearer token is a 401, a body
without ``model`` or ``messages`` a 400, and ``stream: true`` a 400 since it is not spoken here.
"""

from __future__ import annotations

import itertools
import json
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypedDict

from aiohttp import web
from openai import AsyncOpenAI

from tests.support.standin import LocalServer

Json = dict[str, Any]

DEFAULT_REPLY = (
    "Likely cause: the canary's error rate rose right after the new build took traffic.\n"
    "Suggested next step: keep it rolled back and compare the canary's logs with stable's."
)

# Bodies as the real API writes them for these statuses: type, code and a message.
_ERRORS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Invalid request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: ("invalid_request_error", "unsupported_country_region_territory", "Forbidden."),
    404: ("invalid_request_error", "model_not_found", "The model does not exist."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests."),
    500: ("server_error", None, "The server had an error while processing your request."),
    502: ("server_error", None, "Bad gateway."),
    503: ("server_error", None, "The engine is currently overloaded, please try again later."),
}


class RecordedRequest(TypedDict):
    method: str
    path: str
    json: Json | None  # None when the body was not JSON
    headers: dict[str, str]  # names lower-cased
    at: float  # time.monotonic() on arrival


@dataclass(frozen=True)
class _Failure:
    status: int
    retry_after: float | None
    message: str | None


class OpenAIStandIn(LocalServer):
    """An aiohttp server on 127.0.0.1 (free port) answering ``POST /v1/chat/completions``."""

    def __init__(self, *, default_reply: str = DEFAULT_REPLY) -> None:
        super().__init__()
        self.default_reply = default_reply
        self.requests: list[RecordedRequest] = []
        self._replies: deque[str | None] = deque()
        self._failures: deque[_Failure] = deque()
        self._garbled: deque[str] = deque()
        self._responder: Callable[[Json], str | None] | None = None
        self._delay = 0.0
        self._delay_count: int | None = None
        self._serial = itertools.count(1)

    # -- serving ---------------------------------------------------------------------------

    def routes(self, router: web.UrlDispatcher) -> None:
        router.add_route("POST", "/v1/chat/completions", self._chat_completions)
        router.add_route("*", "/{tail:.*}", self._not_found)

    @property
    def base_url(self) -> str:
        """The ``base_url`` for ``AsyncOpenAI`` clients, e.g. ``http://127.0.0.1:PORT/v1``."""
        return f"{super().base_url}/v1"

    def client(self, api_key: str = "sk-test", **kwargs: Any) -> AsyncOpenAI:
        """A real ``AsyncOpenAI`` pointed at this stand-in."""
        return AsyncOpenAI(api_key=api_key, base_url=self.base_url, **kwargs)

    # -- scripting -------------------------------------------------------------------------

    def reply(self, text: str | None) -> None:
        """Queue one answer; ``None`` answers with ``content: null`` (as for a refusal)."""
        self._replies.append(text)

    def replies(self, texts: Iterable[str | None]) -> None:
        self._replies.extend(texts)

    def respond_with(self, responder: Callable[[Json], str | None] | None) -> None:
        """Compute answers from the request body once the queue is empty; ``None`` clears."""
        self._responder = responder

    def delay(self, seconds: float, *, count: int | None = None) -> None:
        """Hang ``seconds`` before answering the next ``count`` requests (all if ``None``)."""
        self._delay = seconds
        self._delay_count = count

    def fail_next(
        self,
        status: int = 500,
        *,
        count: int = 1,
        retry_after: float | None = None,
        message: str | None = None,
    ) -> None:
        """Answer the next ``count`` requests with an OpenAI-style error body."""
        self._failures.extend(_Failure(status, retry_after, message) for _ in range(count))

    def garble_next(self, body: str, *, count: int = 1) -> None:
        """Answer the next ``count`` requests 200 with ``body`` as it is, labelled JSON: what a
        broken gateway in front of a model server can send."""
        self._garbled.extend(body for _ in range(count))

    # -- inspection ------------------------------------------------------------------------

    def completion_requests(self) -> list[Json]:
        """JSON bodies of the chat-completion requests, in arrival order."""
        return [
            r["json"]
            for r in self.requests
            if r["path"] == "/v1/chat/completions" and r["json"] is not None
        ]

    def last_prompt(self) -> str:
        """Every message of the last chat-completion request, joined by newlines."""
        bodies = self.completion_requests()
        if not bodies:
            raise AssertionError("no chat completion was requested")
        return "\n".join(_message_text(m) for m in bodies[-1].get("messages", []))

    # -- handlers --------------------------------------------------------------------------

    async def _record(self, request: web.Request) -> RecordedRequest:
        raw = await request.read()
        body: Json | None
        try:
            parsed = json.loads(raw) if raw else None
            body = parsed if isinstance(parsed, dict) else None
        except ValueError:
            body = None
        recorded = RecordedRequest(
            method=request.method,
            path=request.path,
            json=body,
            headers={name.lower(): value for name, value in request.headers.items()},
            at=time.monotonic(),
        )
        self.requests.append(recorded)
        return recorded

    async def _hang(self) -> None:
        if self._delay <= 0 or self._delay_count == 0:
            return
        if self._delay_count is not None:
            self._delay_count -= 1
        # Ends at once on close: aiohttp does not cancel a handler whose client went away,
        # and a sleeping one would hold up the runner's shutdown.
        await self.stall(self._delay)

    async def _not_found(self, request: web.Request) -> web.Response:
        await self._record(request)
        return _error(404, "invalid_request_error", None, f"Unknown path {request.path}.")

    async def _chat_completions(self, request: web.Request) -> web.Response:
        recorded = await self._record(request)
        await self._hang()
        if not recorded["headers"].get("authorization", "").startswith("Bearer "):
            return _error(401, "invalid_request_error", "invalid_api_key", "No API key given.")
        body = recorded["json"]
        if body is None:
            return _error(400, "invalid_request_error", None, "The body is not a JSON object.")
        for name in ("model", "messages"):
            if not body.get(name):
                return _error(400, "invalid_request_error", None, f"Missing '{name}'.", name)
        if body.get("stream"):
            return _error(400, "invalid_request_error", None, "stream is not supported here.")
        if self._failures:
            return self._fail(self._failures.popleft())
        if self._garbled:
            return web.Response(text=self._garbled.popleft(), content_type="application/json")

        content: str | None
        if self._replies:
            content = self._replies.popleft()
        elif self._responder is not None:
            content = self._responder(body)
        else:
            content = self.default_reply
        prompt_tokens = sum(len(_message_text(m).split()) for m in body["messages"])
        completion_tokens = len((content or "").split())
        return web.json_response(
            {
                "id": f"chatcmpl-standin{next(self._serial):06d}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content, "refusal": None},
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            }
        )

    def _fail(self, failure: _Failure) -> web.Response:
        kind, code, message = _ERRORS.get(
            failure.status,
            (
                "server_error" if failure.status >= 500 else "invalid_request_error",
                None,
                f"HTTP {failure.status}.",
            ),
        )
        response = _error(failure.status, kind, code, failure.message or message)
        if failure.retry_after is not None:
            response.headers["retry-after"] = f"{failure.retry_after:g}"
        return response


def _error(
    status: int, kind: str, code: str | None, message: str, param: str | None = None
) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return web.json_response(body, status=status, headers={"x-request-id": "req_standin"})


def _message_text(message: object) -> str:
    """The text of a chat message, whether its content is a string or a list of parts."""
    if not isinstance(message, dict):
        return ""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""
