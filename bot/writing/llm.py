"""The one place shipwatch talks to a language model.

Any OpenAI-compatible endpoint works (OpenAI, Azure-style gateways, vLLM, Ollama, ...) through
the ``openai`` SDK's ``AsyncOpenAI``. The model only ever adds prose to a message a person reads
(a likely cause, a suggested next step), so a failure here must cost little: one attempt, a
hard time bound, and an ``LLMError`` the caller answers with its plain, template-only message.

    llm = LLM(api_key=settings.openai_api_key, base_url=settings.openai_base_url)
    try:
        text = await llm.complete(SYSTEM, prompt)
    except LLMError:
        text = fallback

Every prompt goes through ``bot.redact.redact`` before it is sent. Third-party exceptions are
translated here, once, into ``LLMError`` with a ``reason``; its message and our log lines are
built from the status and the endpoint's message after redaction, and never contain the key.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Literal

import openai
from openai import AsyncOpenAI
from prometheus_client import Counter, Histogram

from bot.errors import DependencyError
from bot.observe.telemetry import REGISTRY
from bot.redact import REDACTED, redact

log = logging.getLogger(__name__)

Reason = Literal["timeout", "rate_limited", "error", "empty", "disabled"]

LLM_FAILURES = Counter(
    "shipwatch_llm_failures_total",
    "LLM calls that failed, by reason (timeout, rate_limited, error, empty).",
    ["reason"],
    registry=REGISTRY,
)
LLM_SUCCESSES = Counter(
    "shipwatch_llm_successes_total",
    "LLM calls that returned a usable answer.",
    registry=REGISTRY,
)
LLM_SECONDS = Histogram(
    "shipwatch_llm_seconds",
    "Duration of LLM calls, by outcome (ok or the failure reason).",
    ["outcome"],
    # The default buckets stop at 10 s; calls are bounded by a 20 s timeout by default.
    buckets=(0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0),
    registry=REGISTRY,
)

# Endpoint messages are quoted in errors and logs for diagnosis, cut to keep them one line.
_DETAIL_LIMIT = 200


class LLMError(DependencyError):
    """The model gave no usable answer; the caller falls back to its template-only text."""

    def __init__(self, reason: Reason, detail: str = "") -> None:
        self.reason: Reason = reason
        self.detail = detail
        super().__init__(f"LLM {reason}: {detail}" if detail else f"LLM {reason}")


class LLM:
    """A chat-completions client with one attempt per call and a hard time bound."""

    def __init__(
        self,
        *,
        api_key: str | None,
        base_url: str | None = None,
        model: str = "gpt-4o-mini",
        timeout: float = 20.0,
        max_tokens: int = 700,
    ) -> None:
        self.model = model
        self.timeout = timeout
        self.max_tokens = max_tokens
        # Kept only to scrub it from endpoint messages: some gateways echo the key they got.
        self._api_key = api_key or None
        self._client: AsyncOpenAI | None = None
        if self._api_key is not None:
            self._client = AsyncOpenAI(
                api_key=self._api_key,
                base_url=base_url,
                timeout=timeout,
                # No retries: callers (rollback notices, thread replies) must not wait behind
                # backoff for optional prose; they fall back to their plain text instead.
                max_retries=0,
            )

    @property
    def enabled(self) -> bool:
        return self._client is not None

    async def complete(
        self,
        system: str,
        user: str,
        *,
        max_tokens: int | None = None,
        temperature: float = 0.2,
    ) -> str:
        """The model's answer to ``user`` under ``system``, stripped; never empty.

        Raises ``LLMError`` with reason "disabled" (no key, no I/O), "timeout", "rate_limited",
        "error" or "empty".
        """
        client = self._client
        if client is None:
            # Not counted as a failure: running without a key is a configuration, and every
            # call would otherwise page as an error rate of 100%.
            raise LLMError("disabled", "no API key configured (set OPENAI_API_KEY)")
        started = time.monotonic()
        try:
            # The SDK's timeout applies per phase (connect, each read), so a server trickling
            # bytes could outlast it; wait_for bounds the whole call.
            completion = await asyncio.wait_for(
                client.chat.completions.create(
                    model=self.model,
                    messages=[
                        {"role": "system", "content": redact(system)},
                        {"role": "user", "content": redact(user)},
                    ],
                    max_tokens=max_tokens if max_tokens is not None else self.max_tokens,
                    temperature=temperature,
                    stream=False,
                ),
                timeout=self.timeout,
            )
        except (openai.APITimeoutError, TimeoutError) as exc:
            raise self._failed("timeout", f"no answer within {self.timeout:g}s", started) from exc
        except openai.RateLimitError as exc:
            raise self._failed("rate_limited", self._describe(exc), started) from exc
        except openai.OpenAIError as exc:
            # APIStatusError (4xx/5xx), APIConnectionError (refused, reset, DNS) and the SDK's
            # own response errors: all mean "no answer from the model this time".
            raise self._failed("error", self._describe(exc), started) from exc
        except ValueError as exc:
            # A 200 whose body is not the API's JSON (a gateway's error page, a cut-off body):
            # the SDK lets the decoding error through. Still no answer, not a crash.
            detail = f"the answer was not the API's JSON ({type(exc).__name__})"
            raise self._failed("error", detail, started) from exc

        # Lenient about the shape: compatible servers differ, and a missing field is just
        # "no answer" rather than a crash in the caller.
        choices = getattr(completion, "choices", None) or []
        message = getattr(choices[0], "message", None) if choices else None
        content = getattr(message, "content", None)
        text = content.strip() if isinstance(content, str) else ""
        if not text:
            finish = getattr(choices[0], "finish_reason", None) if choices else None
            detail = f"no content (finish_reason={finish})" if choices else "no choices"
            raise self._failed("empty", detail, started)

        LLM_SUCCESSES.inc()
        LLM_SECONDS.labels(outcome="ok").observe(time.monotonic() - started)
        return text

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    def _failed(self, reason: Reason, detail: str, started: float) -> LLMError:
        elapsed = time.monotonic() - started
        LLM_FAILURES.labels(reason=reason).inc()
        LLM_SECONDS.labels(outcome=reason).observe(elapsed)
        log.warning("LLM call failed after %.2fs (%s): %s", elapsed, reason, detail)
        return LLMError(reason, detail)

    def _describe(self, exc: openai.OpenAIError) -> str:
        """A one-line account of ``exc`` that is safe to log and to show."""
        if isinstance(exc, openai.APIStatusError):
            message = exc.message
            # The SDK prefixes "Error code: N - " to the body; the status is given once.
            body = exc.body
            if isinstance(body, dict) and isinstance(body.get("message"), str):
                message = body["message"]
            detail = f"HTTP {exc.status_code}: {message}"
        elif isinstance(exc, openai.APIError):
            detail = exc.message
        else:
            detail = str(exc) or type(exc).__name__
        return self._scrub(detail)

    def _scrub(self, text: str) -> str:
        # The literal key first: a key with no recognisable shape (a gateway's own format)
        # would pass redact() untouched.
        if self._api_key:
            text = text.replace(self._api_key, REDACTED)
        text = " ".join(redact(text).split())
        if len(text) > _DETAIL_LIMIT:
            text = text[: _DETAIL_LIMIT - 1] + "…"
        return text
