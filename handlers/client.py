"""The Slack Web API client: slack_sdk's, with the retries Slack's limits call for.

slack_sdk retries only connection errors by default. A 429 carries Retry-After and must be
waited out; a 5xx is worth a few tries with backoff. Every call has a timeout.
"""

from __future__ import annotations

from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
    AsyncServerErrorRetryHandler,
)
from slack_sdk.web.async_client import AsyncWebClient

DEFAULT_TIMEOUT = 10


def web_client(
    token: str, base_url: str, timeout: int = DEFAULT_TIMEOUT, *, retries: bool = True
) -> AsyncWebClient:
    """A client for ``base_url``. ``retries=False`` is the outbox writer's: it decides itself
    what a 429 or a 5xx means for the message, and a blind retry of a post that did land
    would post it twice."""
    return AsyncWebClient(
        token=token,
        base_url=base_url if base_url.endswith("/") else base_url + "/",
        timeout=timeout,
        retry_handlers=[
            AsyncConnectionErrorRetryHandler(max_retry_count=2),
            AsyncRateLimitErrorRetryHandler(max_retry_count=3),
            AsyncServerErrorRetryHandler(max_retry_count=2),
        ]
        if retries
        else [],
    )


def slack_error(exc: SlackApiError) -> str:
    """Slack's error code from a refused call, whatever its body was: a proxy or an outage can
    answer HTML or plain text, where reading ``error`` off the body would raise."""
    data = exc.response.data
    if isinstance(data, dict):
        return str(data.get("error") or f"HTTP {exc.response.status_code}")
    return f"HTTP {exc.response.status_code} with a body that is not Slack's JSON"
