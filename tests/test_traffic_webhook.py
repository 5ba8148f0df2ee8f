"""WebhookBackend against a real HTTP receiver on 127.0.0.1 (no mocks)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from bot.errors import TrafficError
from bot.traffic.base import Applied, TrafficAction, TrafficBackend, TrafficChange
from bot.traffic.webhook import (
    DELIVERY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WebhookBackend,
    sign,
    verify_signature,
)
from tests.support.procs import free_port
from tests.support.standin import LocalServer

SECRET = "s3cr3t-key"


@dataclass(frozen=True)
class Reply:
    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds the receiver stalls before answering


@dataclass(frozen=True)
class Seen:
    headers: CIMultiDict[str]
    body: bytes
    at: float  # time.monotonic() on arrival
    signature_ok: bool

    @property
    def delivery(self) -> str:
        return self.headers[DELIVERY_HEADER]


class Receiver(LocalServer):
    """A webhook receiver that answers from a script (the last reply repeats) and records
    every request, checking its signature the way a user's receiver would."""

    def __init__(self, replies: Sequence[Reply]) -> None:
        super().__init__()
        self.requests: list[Seen] = []
        self._replies = list(replies) or [Reply()]
        self._arrived = asyncio.Event()
        # What GET /applied/{service} answers: a JSON value, or an int for a bare status.
        self.applied: dict[str, object] = {}
        self.reads: list[Seen] = []

    def routes(self, router: web.UrlDispatcher) -> None:
        router.add_post("/hook", self._handle)
        router.add_get("/applied/{service}", self._read_back)

    async def _read_back(self, request: web.Request) -> web.Response:
        ok = verify_signature(
            SECRET,
            request.headers.get(TIMESTAMP_HEADER, ""),
            b"",
            request.headers.get(SIGNATURE_HEADER, ""),
        )
        self.reads.append(Seen(CIMultiDict(request.headers), b"", time.monotonic(), ok))
        answer = self.applied.get(request.match_info["service"], 404)
        if isinstance(answer, int):
            return web.Response(status=answer, text="no such service")
        if isinstance(answer, str):
            return web.Response(text=answer, content_type="text/plain")
        return web.json_response(answer)

    def url(self) -> URL:
        return URL(f"{self.base_url}/hook")

    async def wait_for_requests(self, count: int) -> None:
        while len(self.requests) < count:
            self._arrived.clear()
            await self._arrived.wait()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        ok = verify_signature(
            SECRET,
            request.headers.get(TIMESTAMP_HEADER, ""),
            body,
            request.headers.get(SIGNATURE_HEADER, ""),
        )
        self.requests.append(Seen(CIMultiDict(request.headers), body, time.monotonic(), ok))
        self._arrived.set()
        reply = self._replies[min(len(self.requests), len(self._replies)) - 1]
        if reply.delay:
            # Ends at once when the receiver closes, so teardown never waits for it.
            await self.stall(reply.delay)
        return web.Response(
            status=reply.status, headers=reply.headers, text=f"reply {reply.status}"
        )


Serve = Callable[[Sequence[Reply]], Awaitable[Receiver]]
Make = Callable[..., WebhookBackend]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    started: list[Receiver] = []

    async def start(replies: Sequence[Reply]) -> Receiver:
        receiver = Receiver(replies)
        await receiver.start()
        started.append(receiver)
        return receiver

    yield start
    for receiver in started:
        await receiver.close()


@pytest.fixture
async def make() -> AsyncIterator[Make]:
    """Backends tuned to be fast (tiny waits), closed after the test."""
    made: list[WebhookBackend] = []

    def build(url: URL | str, **overrides: Any) -> WebhookBackend:
        options: dict[str, Any] = {
            "secret": SECRET,
            "timeout": 2.0,
            "retries": 3,
            "backoff": 0.01,
            "max_backoff": 0.05,
            "rollback_retry_cap": 0.02,
        }
        options.update(overrides)
        backend = WebhookBackend(str(url), **options)
        made.append(backend)
        return backend

    yield build
    for backend in made:
        await backend.close()


def change(action: TrafficAction = TrafficAction.SHIFT, weight: int = 25) -> TrafficChange:
    return TrafficChange(
        release_id="r-42",
        service="checkout",
        version="1.5.0-β",  # non-ASCII on purpose: the body must be UTF-8, not \u-escaped
        stable_version="1.4.0",
        weight=weight,
        action=action,
    )


async def test_posts_compact_signed_json(serve: Serve, make: Make) -> None:
    receiver = await serve([Reply(200)])
    backend = make(receiver.url(), headers={"Authorization": "Bearer abc"})

    await backend.apply(change(TrafficAction.START, 5))

    [seen] = receiver.requests
    assert (
        seen.body
        == (
            '{"action":"start","release_id":"r-42","service":"checkout",'
            '"stable_version":"1.4.0","version":"1.5.0-β","weight":5}'
        ).encode()
    )
    assert json.loads(seen.body) == {
        "service": "checkout",
        "version": "1.5.0-β",
        "stable_version": "1.4.0",
        "weight": 5,
        "action": "start",
        "release_id": "r-42",
    }
    assert seen.signature_ok
    assert seen.headers["Content-Type"] == "application/json"
    assert seen.headers["User-Agent"] == "shipwatch"
    assert seen.headers["Authorization"] == "Bearer abc"
    assert uuid.UUID(seen.delivery).version == 4
    assert abs(int(seen.headers[TIMESTAMP_HEADER]) - time.time()) < 5
    assert seen.headers[SIGNATURE_HEADER].startswith("v1=")


async def test_signature_fails_for_tampered_body_wrong_secret_or_stale_time(
    serve: Serve, make: Make
) -> None:
    receiver = await serve([Reply(200)])
    await make(receiver.url()).apply(change())
    [seen] = receiver.requests
    ts, sig = seen.headers[TIMESTAMP_HEADER], seen.headers[SIGNATURE_HEADER]
    now = float(ts)

    assert verify_signature(SECRET, ts, seen.body, sig, now=now)
    assert not verify_signature(SECRET, ts, seen.body.replace(b"25", b"99"), sig, now=now)
    assert not verify_signature("other-secret", ts, seen.body, sig, now=now)
    assert not verify_signature("", ts, seen.body, sig, now=now)
    # Replays: too old, and too far in the future.
    assert not verify_signature(SECRET, ts, seen.body, sig, now=now + 301)
    assert not verify_signature(SECRET, ts, seen.body, sig, now=now - 301)
    assert verify_signature(SECRET, ts, seen.body, sig, now=now + 10, tolerance=30)
    # The timestamp is covered by the signature: moving it breaks it.
    assert not verify_signature(SECRET, str(int(ts) + 1), seen.body, sig, now=now)
    assert not verify_signature(SECRET, "not-a-time", seen.body, sig, now=now)
    assert not verify_signature(SECRET, ts, seen.body, sig.removeprefix("v1="), now=now)
    assert not verify_signature(SECRET, ts, seen.body, "v1=ünïcödé", now=now)
    assert sign(SECRET, ts, seen.body) == sig


async def test_no_secret_sends_no_signature(serve: Serve, make: Make) -> None:
    receiver = await serve([Reply(200)])
    await make(receiver.url(), secret=None).apply(change())

    [seen] = receiver.requests
    assert SIGNATURE_HEADER not in seen.headers
    assert TIMESTAMP_HEADER in seen.headers
    assert DELIVERY_HEADER in seen.headers


@pytest.mark.parametrize("status", [500, 502, 503, 408, 429])
async def test_retryable_status_then_success_keeps_delivery_id(
    serve: Serve, make: Make, status: int
) -> None:
    receiver = await serve([Reply(status), Reply(200)])

    await make(receiver.url()).apply(change())

    first, second = receiver.requests
    assert first.delivery == second.delivery
    assert first.body == second.body
    assert first.signature_ok and second.signature_ok


async def test_client_error_is_not_retried(serve: Serve, make: Make) -> None:
    receiver = await serve([Reply(400), Reply(200)])

    with pytest.raises(TrafficError) as caught:
        await make(receiver.url()).apply(change())

    assert len(receiver.requests) == 1
    message = str(caught.value)
    assert "HTTP 400" in message
    assert "reply 400" in message  # the receiver's reason is passed on
    assert "1 attempt;" in message
    assert str(receiver.url()) in message
    assert caught.value.__cause__ is not None


async def test_redirect_is_not_followed(serve: Serve, make: Make) -> None:
    receiver = await serve([Reply(302, {"Location": "/elsewhere"})])

    with pytest.raises(TrafficError, match="HTTP 302"):
        await make(receiver.url()).apply(change())

    assert len(receiver.requests) == 1


async def test_gives_up_after_retries_without_leaking_credentials(serve: Serve, make: Make) -> None:
    receiver = await serve([Reply(500)])
    url = receiver.url().with_user("deploy").with_password("hunter2").with_query(token="qsecret")

    with pytest.raises(TrafficError) as caught:
        await make(url, retries=3).apply(change())

    assert len(receiver.requests) == 3
    assert len({seen.delivery for seen in receiver.requests}) == 1
    message = str(caught.value)
    assert "HTTP 500" in message
    assert "after 3 attempts" in message
    assert f"127.0.0.1:{receiver.url().port}/hook" in message
    for leaked in ("hunter2", "deploy", "qsecret", "token", "@"):
        assert leaked not in message
    assert caught.value.__cause__ is not None
    # The credentials still reach the receiver, as basic auth.
    assert receiver.requests[0].headers["Authorization"].startswith("Basic ")


async def test_slow_endpoint_times_out(serve: Serve, make: Make) -> None:
    receiver = await serve([Reply(200, delay=10)])
    started = time.monotonic()

    with pytest.raises(TrafficError) as caught:
        await make(receiver.url(), timeout=0.2, retries=2).apply(change())

    assert time.monotonic() - started < 3
    assert len(receiver.requests) == 2
    assert "timed out after 0.2s" in str(caught.value)
    assert "after 2 attempts" in str(caught.value)
    assert isinstance(caught.value.__cause__, TimeoutError)


async def test_unreachable_endpoint_names_the_error(serve: Serve, make: Make) -> None:
    receiver = await serve([])
    url = receiver.url()
    await receiver.close()  # nothing listens on the port any more

    with pytest.raises(TrafficError) as caught:
        await make(url, retries=2).apply(change())

    assert "after 2 attempts" in str(caught.value)
    assert "ClientConnectorError" in str(caught.value)
    assert isinstance(caught.value.__cause__, aiohttp.ClientError)


async def test_retry_after_is_honoured(serve: Serve, make: Make) -> None:
    receiver = await serve([Reply(429, {"Retry-After": "0.3"}), Reply(200)])

    await make(receiver.url(), backoff=0.001, max_backoff=5).apply(change())

    first, second = receiver.requests
    assert second.at - first.at >= 0.29


async def test_retry_after_is_capped(serve: Serve, make: Make) -> None:
    receiver = await serve([Reply(503, {"Retry-After": "3600"}), Reply(200)])
    started = time.monotonic()

    await make(receiver.url(), max_backoff=0.05).apply(change())

    assert len(receiver.requests) == 2
    assert time.monotonic() - started < 2


async def test_rollback_retries_until_it_succeeds(
    serve: Serve, make: Make, caplog: pytest.LogCaptureFixture
) -> None:
    # 400 too: a rollback is retried even when the receiver refuses it.
    receiver = await serve([Reply(500), Reply(503), Reply(400), Reply(200)])
    backend = make(receiver.url(), retries=1)  # the attempt limit does not apply to rollbacks

    with caplog.at_level(logging.ERROR, logger="bot.traffic.webhook"):
        await backend.apply(change(TrafficAction.ROLLBACK, 0))

    assert len(receiver.requests) == 4
    assert len({seen.delivery for seen in receiver.requests}) == 1
    assert all(seen.signature_ok for seen in receiver.requests)
    assert json.loads(receiver.requests[-1].body)["action"] == "rollback"
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 3
    assert all("ROLLBACK NOT YET APPLIED" in r.getMessage() for r in errors)


async def test_rollback_stops_only_when_cancelled(
    serve: Serve, make: Make, caplog: pytest.LogCaptureFixture
) -> None:
    receiver = await serve([Reply(503)])
    backend = make(receiver.url(), retries=1)

    with caplog.at_level(logging.ERROR, logger="bot.traffic.webhook"):
        task = asyncio.create_task(backend.apply(change(TrafficAction.ROLLBACK, 0)))
        async with asyncio.timeout(5):
            await receiver.wait_for_requests(5)
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    assert len(receiver.requests) >= 5
    assert "ROLLBACK NOT APPLIED" in caplog.records[-1].getMessage()


async def test_a_rollback_still_retrying_ends_when_the_backend_closes(
    serve: Serve, make: Make
) -> None:
    # A shutdown closes the backend: the retry loop stops at its next turn even without a
    # cancel (which Python 3.11 can lose), and says so; the record keeps the rollback to finish.
    receiver = await serve([Reply(503)])
    backend = make(receiver.url(), retries=1)
    task = asyncio.create_task(backend.apply(change(TrafficAction.ROLLBACK, 0)))
    async with asyncio.timeout(5):
        await receiver.wait_for_requests(3)
    await backend.close()
    done, _ = await asyncio.wait({task}, timeout=5)
    assert done, "the retry loop ran on after close"
    with pytest.raises(TrafficError, match="closed while retrying"):
        task.result()


async def test_close_leaves_a_borrowed_session_open(serve: Serve) -> None:
    receiver = await serve([Reply(200)])
    async with aiohttp.ClientSession() as session:
        backend = WebhookBackend(str(receiver.url()), SECRET, session=session)
        await backend.apply(change())
        await backend.close()
        assert not session.closed
    assert len(receiver.requests) == 1


async def test_owned_session_is_closed(serve: Serve) -> None:
    receiver = await serve([Reply(200)])
    backend: TrafficBackend = WebhookBackend(str(receiver.url()), SECRET)
    assert backend.name == "webhook"
    await backend.apply(change())
    await backend.close()
    await backend.close()  # idempotent

    with pytest.raises(RuntimeError, match="closed"):
        await backend.apply(change())


@pytest.mark.parametrize(
    ("url", "options"),
    [
        ("ftp://example.com/hook", {}),
        ("/relative/hook", {}),
        ("http://example.com/hook", {"retries": 0}),
        ("http://example.com/hook", {"timeout": 0}),
        ("http://example.com/hook", {"secret": ""}),
        ("http://example.com/hook", {"rollback_retry_cap": 0}),
        ("http://example.com/hook", {"headers": {"x-shipwatch-signature": "forged"}}),
    ],
)
def test_rejects_bad_configuration(url: str, options: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        WebhookBackend(url, **options)


def test_bad_url_error_does_not_echo_credentials() -> None:
    with pytest.raises(ValueError) as caught:
        WebhookBackend("ftp://user:hunter2@example.com/hook?key=k")
    assert "hunter2" not in str(caught.value)
    assert "key=k" not in str(caught.value)


# --- read-back -----------------------------------------------------------------------------


async def test_without_a_read_url_nothing_is_read_back(serve: Serve, make: Make) -> None:
    receiver = await serve([Reply()])
    assert await make(receiver.url()).current("checkout") is None


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ({"weight": 25, "version": "v2", "stable_version": "v1"}, Applied(25, "v2", "v1")),
        ({"weight": 0}, Applied(0)),
        ({"weight": None}, Applied(None)),
        (404, Applied(None)),
    ],
)
async def test_read_back_says_what_the_receiver_applies(
    serve: Serve, make: Make, answer: object, expected: Applied
) -> None:
    receiver = await serve([Reply()])
    receiver.applied["checkout"] = answer
    backend = make(receiver.url(), read_url=f"{receiver.base_url}/applied/{{service}}")

    assert await backend.current("checkout") == expected
    [read] = receiver.reads
    assert read.signature_ok  # signed like a change, over an empty body


@pytest.mark.parametrize(
    "answer", [{"weight": "25"}, {"weight": 101}, {"weight": True}, ["x"], "not json", 500]
)
async def test_a_read_back_that_makes_no_sense_is_a_traffic_error(
    serve: Serve, make: Make, answer: object
) -> None:
    receiver = await serve([Reply()])
    receiver.applied["checkout"] = answer
    backend = make(receiver.url(), read_url=f"{receiver.base_url}/applied/{{service}}")

    with pytest.raises(TrafficError, match="read-back"):
        await backend.current("checkout")


async def test_an_unreachable_read_back_is_a_traffic_error(serve: Serve, make: Make) -> None:
    receiver = await serve([Reply()])
    backend = make(receiver.url(), read_url=f"http://127.0.0.1:{free_port()}/applied/{{service}}")

    with pytest.raises(TrafficError, match="read-back"):
        await backend.current("checkout")
