"""bot.writing.llm through the real openai client against a local stand-in of the API (no mocks)."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

import pytest

from bot.errors import DependencyError
from bot.observe.telemetry import REGISTRY
from bot.writing.llm import LLM, LLMError
from tests.support.openai_api import DEFAULT_REPLY, OpenAIStandIn

API_KEY = "sk-test-shipwatch-0123456789abcdef"
# A key with no recognisable shape: only the literal scrub in bot.writing.llm can keep it out.
ODD_KEY = "gw-7f3c9e21-internal-gateway"
SYSTEM = "You explain canary rollbacks to on-call engineers in two lines."
USER = "checkout v2.4.1 rolled back: error rate 7.5% vs 0.4% on stable (U0ABC123 started it)."


@pytest.fixture
async def api() -> AsyncIterator[OpenAIStandIn]:
    async with OpenAIStandIn() as standin:
        yield standin


@pytest.fixture
async def llm(api: OpenAIStandIn) -> AsyncIterator[LLM]:
    client = LLM(api_key=API_KEY, base_url=api.base_url, model="test-model", timeout=2.0)
    yield client
    await client.close()


def failures(reason: str) -> float:
    value = REGISTRY.get_sample_value("shipwatch_llm_failures_total", {"reason": reason})
    return value or 0.0


def successes() -> float:
    return REGISTRY.get_sample_value("shipwatch_llm_successes_total") or 0.0


async def test_reply_comes_back_stripped(api: OpenAIStandIn, llm: LLM) -> None:
    api.reply("  Likely cause: a bad cache key.\nSuggested next step: roll back.  \n")
    before = successes()

    text = await llm.complete(SYSTEM, USER)

    assert text == "Likely cause: a bad cache key.\nSuggested next step: roll back."
    assert successes() == before + 1
    # The default reply follows once the queue is empty.
    assert await llm.complete(SYSTEM, USER) == DEFAULT_REPLY


async def test_request_carries_model_messages_and_limits(api: OpenAIStandIn, llm: LLM) -> None:
    await llm.complete(SYSTEM, USER, max_tokens=123, temperature=0.0)

    [request] = api.requests
    body = request["json"]
    assert body is not None
    assert body["model"] == "test-model"
    assert body["messages"] == [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": USER},
    ]
    assert body["max_tokens"] == 123
    assert body["temperature"] == 0.0
    assert not body.get("stream")
    assert request["headers"]["authorization"] == f"Bearer {API_KEY}"
    assert api.last_prompt() == f"{SYSTEM}\n{USER}"


async def test_default_max_tokens_is_sent(api: OpenAIStandIn, llm: LLM) -> None:
    await llm.complete(SYSTEM, USER)
    assert api.completion_requests()[0]["max_tokens"] == 700


async def test_answer_computed_from_the_prompt(api: OpenAIStandIn, llm: LLM) -> None:
    api.respond_with(lambda body: f"echo: {body['messages'][-1]['content'][:8]}")
    assert await llm.complete(SYSTEM, USER) == "echo: checkout"


async def test_secrets_are_redacted_before_they_are_sent(api: OpenAIStandIn, llm: LLM) -> None:
    slack_token = "xoxb-1234567890-0987654321-abcdefghijkl"
    await llm.complete(SYSTEM, f"deploy log: SLACK_BOT_TOKEN={slack_token} at v2.4.1")

    prompt = api.last_prompt()
    assert slack_token not in prompt
    assert "[redacted]" in prompt
    assert "v2.4.1" in prompt


async def test_hanging_endpoint_times_out_within_the_bound(api: OpenAIStandIn) -> None:
    api.delay(10.0)
    llm = LLM(api_key=API_KEY, base_url=api.base_url, timeout=0.3)
    before = failures("timeout")
    started = time.monotonic()
    try:
        with pytest.raises(LLMError) as caught:
            await llm.complete(SYSTEM, USER)
    finally:
        await llm.close()

    assert time.monotonic() - started < 0.3 + 0.7
    assert caught.value.reason == "timeout"
    assert isinstance(caught.value, DependencyError)
    assert caught.value.__cause__ is not None
    assert failures("timeout") == before + 1
    assert len(api.requests) == 1


@pytest.mark.parametrize(
    ("status", "reason"),
    [(500, "error"), (503, "error"), (400, "error"), (401, "error"), (429, "rate_limited")],
)
async def test_http_failures_are_translated_and_not_retried(
    api: OpenAIStandIn, llm: LLM, status: int, reason: str
) -> None:
    api.fail_next(status, retry_after=0 if status == 429 else None)
    before = failures(reason)

    with pytest.raises(LLMError) as caught:
        await llm.complete(SYSTEM, USER)

    assert caught.value.reason == reason
    assert f"HTTP {status}" in str(caught.value)
    assert caught.value.__cause__ is not None
    assert failures(reason) == before + 1
    # max_retries=0: one attempt, even for the statuses the SDK would retry by default.
    assert len(api.requests) == 1


async def test_next_call_after_a_failure_succeeds(api: OpenAIStandIn, llm: LLM) -> None:
    api.fail_next(500)
    api.reply("recovered")
    with pytest.raises(LLMError):
        await llm.complete(SYSTEM, USER)
    assert await llm.complete(SYSTEM, USER) == "recovered"


@pytest.mark.parametrize("content", ["", "   \n", None])
async def test_empty_content_is_an_error(api: OpenAIStandIn, llm: LLM, content: str | None) -> None:
    api.reply(content)
    before = failures("empty")

    with pytest.raises(LLMError) as caught:
        await llm.complete(SYSTEM, USER)

    assert caught.value.reason == "empty"
    assert failures("empty") == before + 1


async def test_refused_connection_is_an_error() -> None:
    # A stand-in started and closed leaves a port nothing listens on.
    async with OpenAIStandIn() as gone:
        base_url = gone.base_url
    llm = LLM(api_key=API_KEY, base_url=base_url, timeout=2.0)
    try:
        with pytest.raises(LLMError) as caught:
            await llm.complete(SYSTEM, USER)
    finally:
        await llm.close()
    assert caught.value.reason == "error"


@pytest.mark.parametrize("key", [None, ""])
async def test_disabled_without_key_does_no_io(api: OpenAIStandIn, key: str | None) -> None:
    llm = LLM(api_key=key, base_url=api.base_url)
    before = {reason: failures(reason) for reason in ("disabled", "error", "timeout")}

    assert not llm.enabled
    with pytest.raises(LLMError) as caught:
        await llm.complete(SYSTEM, USER)
    await llm.close()

    assert caught.value.reason == "disabled"
    assert api.requests == []
    assert {reason: failures(reason) for reason in before} == before


@pytest.mark.parametrize("key", [API_KEY, ODD_KEY])
async def test_api_key_never_in_errors_or_logs(
    api: OpenAIStandIn, key: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    # Some gateways echo the key they were given in their error message.
    api.fail_next(401, message=f"Incorrect API key provided: {key}. Find your key at ...")
    api.fail_next(500, message=f"upstream failed for key={key}")
    api.fail_next(429, message=f"Rate limit reached for {key}")
    llm = LLM(api_key=key, base_url=api.base_url, timeout=2.0)
    errors: list[LLMError] = []
    try:
        for _ in range(3):
            with pytest.raises(LLMError) as caught:
                await llm.complete(SYSTEM, USER)
            errors.append(caught.value)
    finally:
        await llm.close()

    assert [e.reason for e in errors] == ["error", "error", "rate_limited"]
    assert "Incorrect API key provided: [redacted]" in str(errors[0])
    for error in errors:
        assert key not in str(error)
        assert key not in repr(error)
    warnings = [r for r in caplog.records if r.name == "bot.writing.llm"]
    assert len(warnings) == 3
    assert all(r.levelno == logging.WARNING for r in warnings)
    assert key not in caplog.text


async def test_llm_error_message_is_bounded(api: OpenAIStandIn, llm: LLM) -> None:
    api.fail_next(500, message="x" * 5000)
    with pytest.raises(LLMError) as caught:
        await llm.complete(SYSTEM, USER)
    assert len(str(caught.value)) < 300


@pytest.mark.parametrize("body", ["{not json", "", "<html>502 Bad Gateway</html>", "[1, 2]"])
async def test_an_answer_that_is_not_the_apis_json_is_an_error(
    api: OpenAIStandIn, llm: LLM, body: str
) -> None:
    api.garble_next(body)
    with pytest.raises(LLMError) as info:
        await llm.complete("system", "user")
    assert info.value.reason in ("error", "empty")
    api.reply("fine again")
    assert await llm.complete("system", "user") == "fine again"
