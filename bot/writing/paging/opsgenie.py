"""Opsgenie's Alert API through Opsgenie's own client (PyPI ``opsgenie-sdk``).

A rollback's page creates an alert (``POST /v2/alerts``) whose ``alias`` is the release's key,
so Opsgenie folds a repeat into the open alert; the release's end closes it by that alias
(``POST /v2/alerts/{alias}/close?identifierType=alias``). The API key is read from the
environment variable the policy names and sent only in the ``Authorization: GenieKey …``
header. Opsgenie answers 202 and processes the request later: a 202 is taken as done. The
client retries 429 and 5xx answers and network errors a bounded number of times with a
randomised, doubling backoff; 401 (a bad key) and 422 (a refused alert) are not retried.
"""

from __future__ import annotations

import json
from typing import Any

import opsgenie_sdk  # type: ignore[import-untyped]
import tenacity
import urllib3

from bot.redact import redact
from bot.release.policy import OpsgeniePaging
from bot.writing.paging.alert import Alert, PageError
from bot.writing.paging.calls import FIRST_BACKOFF_S, backoff_total, deadline, in_thread

# Opsgenie cuts an alert's message at 130 characters; the whole summary goes in its description.
MESSAGE_LIMIT = 130


class Opsgenie:
    name = "Opsgenie"

    def __init__(self, settings: OpsgeniePaging, api_key: str) -> None:
        self.settings = settings
        self._api_key = api_key

    async def trigger(self, alert: Alert) -> None:
        payload = opsgenie_sdk.CreateAlertPayload(
            message=alert.summary[:MESSAGE_LIMIT],
            alias=alert.key,
            description=alert.summary,
            responders=self.settings.responders or None,
            tags=["shipwatch", "post-release-finding" if alert.finding else "rollback"],
            details=_string_map(alert.details),
            entity=alert.service,
            source="shipwatch",
            priority=self.settings.priority,
        )
        await self._send(lambda api, limit: api.create_alert(payload, _request_timeout=limit))

    async def resolve(self, key: str) -> None:
        payload = opsgenie_sdk.CloseAlertPayload(
            source="shipwatch", note="The release has ended: closed by shipwatch."
        )
        await self._send(
            lambda api, limit: api.close_alert(
                key, identifier_type="alias", close_alert_payload=payload, _request_timeout=limit
            )
        )

    def _api(self) -> Any:
        # A client per call: the SDK's client keeps each request's retry state on itself. Its
        # Configuration also sets the `urllib3` and `opsgenie_sdk` loggers to WARNING (its
        # debug switch, off), which only quietens urllib3's own debug lines.
        conf = opsgenie_sdk.Configuration()
        conf.host = self.settings.url.rstrip("/")
        conf.api_key["Authorization"] = self._api_key
        conf.api_key_prefix["Authorization"] = "GenieKey"
        conf.retry_enabled = True
        conf.retry_count = self.settings.retries
        conf.back_off = FIRST_BACKOFF_S
        conf.retry_delay = max(FIRST_BACKOFF_S, backoff_total(self.settings.retries))
        conf.retry_max_delay = deadline(self.settings.timeout, self.settings.retries)
        return opsgenie_sdk.AlertApi(api_client=opsgenie_sdk.ApiClient(configuration=conf))

    async def _send(self, call: Any) -> None:
        if not self._api_key:
            raise PageError(f"Opsgenie: ${self.settings.api_key_env} is empty (the API key)")
        # (connect, read): the client only takes a whole number or such a pair.
        limit = (self.settings.timeout, self.settings.timeout)
        within = deadline(self.settings.timeout, self.settings.retries)
        try:
            await in_thread(lambda: call(self._api(), limit), within)
        except tenacity.RetryError as exc:
            retried = self.settings.retries > 0
            raise PageError(_why(exc.last_attempt.exception(), retried=retried)) from exc
        except (opsgenie_sdk.OpenApiException, urllib3.exceptions.HTTPError) as exc:
            raise PageError(_why(exc, retried=False)) from exc
        except TimeoutError as exc:
            raise PageError(f"Opsgenie did not answer within {within:.0f}s") from exc


def _string_map(details: dict[str, Any]) -> dict[str, str]:
    """Opsgenie's ``details`` hold strings only: numbers and lists are written as JSON."""
    return {
        k: v if isinstance(v, str) else json.dumps(v, default=str)
        for k, v in details.items()
        if v is not None
    }


def _why(exc: BaseException | None, *, retried: bool) -> str:
    """Opsgenie's answer in one line: its status and message (never the key)."""
    tried = " after its retries" if retried else ""
    status = getattr(exc, "status", None)
    if not isinstance(exc, opsgenie_sdk.OpenApiException) or not status:
        return redact(f"Opsgenie unreachable{tried}: {type(exc).__name__}: {exc}")
    try:
        body = json.loads(getattr(exc, "body", None) or "{}")
    except (TypeError, ValueError):
        body = {}
    body = body if isinstance(body, dict) else {}
    message = str(body.get("message") or getattr(exc, "reason", "") or "")
    errors = body.get("errors")
    more = (
        f" ({'; '.join(f'{k}: {v}' for k, v in errors.items())})"
        if isinstance(errors, dict) and errors
        else ""
    )
    return redact(f"Opsgenie answered HTTP {status}{tried}: {message}{more}")
