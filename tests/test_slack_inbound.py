"""POST /slack/events with what is not a Slack request: refused with a 4xx and one WARNING line,
never a 500 or a traceback, and nothing unsigned is parsed."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from handlers.inbound import MAX_BODY
from tests.support.slack_rig import ALICE, SECRET, SlackRig, running_rig
from tests.support.slack_signing import FORM, JSON, sign, signature, slash_command


@pytest.fixture
async def rig(redis_url: str, redis_client: aioredis.Redis) -> AsyncIterator[SlackRig]:
    async with running_rig(redis_url) as rig:
        yield rig


def errors_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


JUNK_TS = {"Content-Type": JSON, "X-Slack-Request-Timestamp": "soon", "X-Slack-Signature": "x"}
HUGE_TS = {**JUNK_TS, "X-Slack-Request-Timestamp": "9" * 400}
UNSIGNED = [
    (b"{not json", {"Content-Type": JSON}, 401),
    (b"[1]", {"Content-Type": JSON}, 401),
    (b"", {}, 401),
    (b"payload=%7Bnope", {"Content-Type": FORM}, 401),
    (b"{}", JUNK_TS, 401),
    (b"{}", HUGE_TS, 401),
    # Not UTF-8: not Slack's, whatever its headers say.
    (b"\xff\xfe\xfd", {"Content-Type": FORM}, 400),
]


@pytest.mark.parametrize(("body", "headers", "expected"), UNSIGNED)
async def test_unsigned_junk_is_refused_before_it_is_parsed(
    rig: SlackRig,
    caplog: pytest.LogCaptureFixture,
    body: bytes,
    headers: dict[str, str],
    expected: int,
) -> None:
    with caplog.at_level(logging.INFO):
        status, _ = await rig.deliver(body, headers)
    assert status == expected
    assert not errors_logged(caplog)
    assert any("refused a request to /slack/events" in r.getMessage() for r in caplog.records)


def signed(body: bytes, content_type: str) -> dict[str, str]:
    return sign(SECRET, body, content_type=content_type)


SIGNED_JUNK = [
    (b"{not json", JSON),
    (b"[1]", JSON),
    (b'"a string"', JSON),
    (b"\xff\xfe\xfd", FORM),
    (b"payload=%7Bnope", FORM),
    (b"payload=%5B1%5D", FORM),
]


@pytest.mark.parametrize(("body", "content_type"), SIGNED_JUNK)
async def test_signed_junk_is_a_bad_request_not_a_crash(
    rig: SlackRig, caplog: pytest.LogCaptureFixture, body: bytes, content_type: str
) -> None:
    with caplog.at_level(logging.INFO):
        status, _ = await rig.deliver(body, signed(body, content_type))
    assert status == 400
    assert not errors_logged(caplog)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "/slack/events" in warnings[0].getMessage()


async def test_a_body_over_the_limit_gets_413(
    rig: SlackRig, caplog: pytest.LogCaptureFixture
) -> None:
    body = b"text=" + b"a" * MAX_BODY
    with caplog.at_level(logging.INFO):
        status, _ = await rig.deliver(body, signed(body, FORM))
    assert status == 413
    assert not errors_logged(caplog)


async def test_a_replayed_request_older_than_five_minutes_is_refused(rig: SlackRig) -> None:
    url = rig.new_response_url("C0RELEASES", ALICE)
    body = slash_command("/rollout", "list", user_id=ALICE, response_url=url)
    old = int(time.time()) - 6 * 60
    headers = {
        "Content-Type": FORM,
        "X-Slack-Request-Timestamp": str(old),
        "X-Slack-Signature": signature(SECRET, body, old),
    }
    status, _ = await rig.deliver(body, headers)
    assert status == 401


async def test_a_real_signed_command_still_goes_through(rig: SlackRig) -> None:
    url = rig.new_response_url("C0RELEASES", ALICE)
    body = slash_command("/rollout", "list", user_id=ALICE, response_url=url)
    status, _ = await rig.deliver(body, sign(SECRET, body))
    assert status == 200
