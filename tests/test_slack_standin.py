"""The Slack Web API stand-in, exercised through slack_sdk's real async client.

If these pass, tests of the bot that use the stand-in see what the bot would see from Slack:
the client encodes requests and handles answers (including retries) as in production.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from urllib.parse import parse_qs

import aiohttp
import pytest
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncRateLimitErrorRetryHandler,
    AsyncServerErrorRetryHandler,
)
from slack_sdk.http_retry.builtin_interval_calculators import FixedValueRetryIntervalCalculator
from slack_sdk.signature import SignatureVerifier
from slack_sdk.web.async_client import AsyncWebClient

from tests.support import slack_signing
from tests.support.slack_api import BOT_TOKEN, RESPONSE_URL_USES, SlackStandIn

SECRET = "8f742231b10e8888abcd99yyyzzz85a5"


@pytest.fixture
async def slack() -> AsyncIterator[SlackStandIn]:
    async with SlackStandIn() as standin:
        yield standin


@pytest.fixture
def client(slack: SlackStandIn) -> AsyncWebClient:
    # No retry handlers: a scripted failure must surface unless a test asks for retries.
    return AsyncWebClient(token=BOT_TOKEN, base_url=slack.api_url, retry_handlers=[])


async def test_update_keeps_one_message_with_the_new_text(
    slack: SlackStandIn, client: AsyncWebClient
) -> None:
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "*checkout* 1.2.3: 5%"}}]
    posted = await client.chat_postMessage(channel="#releases", text="Canary at 5%", blocks=blocks)
    assert posted["channel"] == "C0RELEASES"
    assert posted["message"]["text"] == "Canary at 5%"

    await client.chat_update(channel=posted["channel"], ts=posted["ts"], text="Canary at 25%")

    [message] = slack.messages("C0RELEASES")
    assert message["ts"] == posted["ts"]
    assert message["text"] == "Canary at 25%"
    assert message["blocks"] == blocks  # left out of the update, so kept, as in Slack
    assert [v["text"] for v in slack.versions("#releases", posted["ts"])] == [
        "Canary at 5%",
        "Canary at 25%",
    ]
    # The JSON-encoded blocks were recorded as Python objects, with the bearer token.
    [call] = slack.calls_to("chat.postMessage")
    assert call.args["blocks"] == blocks
    assert call.token == BOT_TOKEN


async def test_update_needs_an_existing_message_by_channel_id(client: AsyncWebClient) -> None:
    posted = await client.chat_postMessage(channel="#releases", text="x")
    with pytest.raises(SlackApiError) as by_name:
        await client.chat_update(channel="#releases", ts=posted["ts"], text="y")
    assert by_name.value.response["error"] == "channel_not_found"
    with pytest.raises(SlackApiError) as unknown_ts:
        await client.chat_update(channel="C0RELEASES", ts="1600000000.000100", text="y")
    assert unknown_ts.value.response["error"] == "message_not_found"


async def test_thread_replies(slack: SlackStandIn, client: AsyncWebClient) -> None:
    root = await client.chat_postMessage(channel="#releases", text="Release checkout 1.2.3")
    for step in ("5%", "25%", "100%"):
        reply = await client.chat_postMessage(
            channel=root["channel"], thread_ts=root["ts"], text=f"at {step}"
        )
        assert reply["message"]["thread_ts"] == root["ts"]

    assert [m["text"] for m in slack.thread("C0RELEASES", root["ts"])] == [
        "at 5%",
        "at 25%",
        "at 100%",
    ]
    [parent] = slack.messages("C0RELEASES")  # replies stay out of the channel's history
    assert parent["reply_count"] == 3
    link = await client.chat_getPermalink(channel=root["channel"], message_ts=reply["ts"])
    assert f"thread_ts={root['ts']}" in link["permalink"]


async def test_rate_limit_is_retried_after_retry_after(slack: SlackStandIn) -> None:
    client = slack.client(retry_handlers=[AsyncRateLimitErrorRetryHandler(max_retry_count=1)])
    slack.fail_next("chat.postMessage", status=429, retry_after=1)

    await client.chat_postMessage(channel="#releases", text="after the limit")

    first, second = slack.calls_to("chat.postMessage")
    assert (first.status, first.response) == (429, {"ok": False, "error": "ratelimited"})
    assert second.ok
    assert second.at - first.at >= 1.0
    assert len(slack.messages("#releases")) == 1


async def test_server_error_is_retried(slack: SlackStandIn) -> None:
    fast = FixedValueRetryIntervalCalculator(fixed_internal=0.05)
    client = slack.client(retry_handlers=[AsyncServerErrorRetryHandler(interval_calculator=fast)])
    slack.fail_next("chat.postMessage", status=500)

    await client.chat_postMessage(channel="#releases", text="second time lucky")

    assert [c.status for c in slack.calls_to("chat.postMessage")] == [500, 200]


async def test_scripted_error_and_bad_token(slack: SlackStandIn, client: AsyncWebClient) -> None:
    slack.fail_next("auth.test", error="account_inactive")
    with pytest.raises(SlackApiError) as scripted:
        await client.auth_test()
    assert scripted.value.response.status_code == 200
    assert scripted.value.response["error"] == "account_inactive"
    assert (await client.auth_test())["user_id"] == "UBOT"

    with pytest.raises(SlackApiError) as bad:
        await slack.client(token="xoxp-not-a-bot").auth_test()
    assert bad.value.response["error"] == "invalid_auth"
    with pytest.raises(SlackApiError) as unknown:
        await client.api_call("chat.frobnicate")
    assert unknown.value.response["error"] == "unknown_method"


async def test_usergroup_members(slack: SlackStandIn, client: AsyncWebClient) -> None:
    slack.set_group("S0DEPLOYERS", ["U0ALICE", "U0BOB"])

    listed = await client.usergroups_users_list(usergroup="S0DEPLOYERS")

    assert listed["users"] == ["U0ALICE", "U0BOB"]
    with pytest.raises(SlackApiError) as missing:
        await client.usergroups_users_list(usergroup="S0NOBODY")
    assert missing.value.response["error"] == "no_such_subteam"


async def test_file_upload_v2_end_to_end(slack: SlackStandIn, client: AsyncWebClient) -> None:
    root = await client.chat_postMessage(channel="#releases", text="Release report")
    report = b"p99 latency: 182 ms\nerror rate: 0.2%\n"

    done = await client.files_upload_v2(
        channel=root["channel"],
        thread_ts=root["ts"],
        content=report,
        filename="report.txt",
        title="Canary report",
        initial_comment="Report attached",
    )

    upload = slack.file(done["file"]["id"])
    assert upload.content == report
    assert upload.length == len(report)
    assert (upload.title, upload.completed, upload.channels) == (
        "Canary report",
        True,
        ["C0RELEASES"],
    )
    [shared] = slack.thread("C0RELEASES", root["ts"])
    assert shared["text"] == "Report attached"
    assert shared["files"][0]["id"] == upload.id


async def test_response_url_takes_five_posts(slack: SlackStandIn) -> None:
    posted = await slack.client().chat_postMessage(channel="#releases", text="Approve?")
    url = slack.new_response_url(channel_id="C0RELEASES", message_ts=posted["ts"])

    async with aiohttp.ClientSession() as http:
        for n in range(RESPONSE_URL_USES):
            body = {"replace_original": True, "text": f"update {n}"}
            async with http.post(url, json=body) as answer:
                assert answer.status == 200
        async with http.post(url, json={"text": "one too many"}) as refused:
            assert refused.status == 404
            assert await refused.text() == "used_url"

    assert [r["text"] for r in slack.responses(url)] == [f"update {n}" for n in range(5)]
    assert slack.message("C0RELEASES", posted["ts"])["text"] == "update 4"


def test_signatures_verify_with_slack_sdk() -> None:
    verifier = SignatureVerifier(SECRET)
    url = "http://127.0.0.1:1/response/000001"
    bodies = [
        slack_signing.slash_command(
            "/ship", "status checkout", user_id="U0ALICE", response_url=url
        ),
        slack_signing.block_actions(
            "approve", "rel-42", user_id="U0BOB", message_ts="1700000000.000100", response_url=url
        ),
        slack_signing.event_callback(
            {"type": "app_mention", "user": "U0ALICE", "text": "<@UBOT> status"}, event_id="Ev01"
        ),
        slack_signing.url_verification("challenge-token"),
    ]
    for body in bodies:
        assert verifier.is_valid_request(body, slack_signing.sign(SECRET, body))
        assert not verifier.is_valid_request(body, slack_signing.sign("other-secret", body))
    stale = slack_signing.sign(SECRET, bodies[0], int(time.time()) - 600)
    assert not verifier.is_valid_request(bodies[0], stale)

    command = {k: v[0] for k, v in parse_qs(bodies[0].decode()).items()}
    assert command["command"] == "/ship"
    assert command["channel_name"] == "releases"
    assert slack_signing.sign(SECRET, bodies[2])["Content-Type"] == "application/json"
    assert slack_signing.retry_headers(2) == {
        "X-Slack-Retry-Num": "2",
        "X-Slack-Retry-Reason": "http_timeout",
    }
