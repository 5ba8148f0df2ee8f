"""Requests as Slack sends them to an app: the bodies and the signature headers.

Slack signs every request it makes to an app (slash commands, interactivity, events) with the
app's signing secret: ``X-Slack-Signature: v0=<hex HMAC-SHA256(secret, "v0:<ts>:<body>")>``
next to ``X-Slack-Request-Timestamp: <ts>``. The body builders below produce the exact wire
format (form-encoded for commands and interactions, JSON for the Events API) with every field
Slack includes, so the app under test parses what it would parse in production.

    body = slash_command("/ship", "deploy checkout 1.2.3", user_id="U0ALICE",
                         response_url=standin.new_response_url())
    headers = sign(SIGNING_SECRET, body)
    await http.post(f"{bot_url}/slack/events", data=body, headers=headers)
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import time
from typing import Any
from urllib.parse import urlencode

# The workspace the tests pretend to be installed in. The Web API stand-in answers with the
# same identities, so ids in signed requests and in API answers agree.
TEAM_ID = "T0001"
TEAM_DOMAIN = "shipwatch"
API_APP_ID = "A0001"
BOT_USER_ID = "UBOT"
BOT_ID = "B0BOT"
# Slack still puts the (deprecated) verification token in every payload; apps that verify
# signatures ignore it, but it must be there for the shape to be Slack's.
VERIFICATION_TOKEN = "vErIfIcAtIoNtOkEn0000000"

FORM = "application/x-www-form-urlencoded"
JSON = "application/json"

# Trigger ids are single-use in Slack (views.open with a used one fails), so the default ones
# must differ from request to request.
_serial = itertools.count(1)


def signature(secret: str, body: bytes, timestamp: int) -> str:
    """``v0=`` + hex HMAC-SHA256 over ``v0:<timestamp>:<body>``, as in X-Slack-Signature."""
    base = b"v0:" + str(timestamp).encode() + b":" + body
    return "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


def sign(
    secret: str,
    body: bytes,
    timestamp: int | None = None,
    *,
    content_type: str | None = None,
) -> dict[str, str]:
    """The headers Slack sends with ``body``: timestamp, signature and Content-Type.

    ``timestamp`` defaults to now; pass an old one to test replay protection (Slack's SDKs
    refuse requests more than five minutes off). The content type is guessed from the body
    (JSON for Events API envelopes, form-encoded otherwise) unless given.
    """
    ts = int(time.time()) if timestamp is None else timestamp
    if content_type is None:
        content_type = JSON if body.lstrip().startswith(b"{") else FORM
    return {
        "Content-Type": content_type,
        "X-Slack-Request-Timestamp": str(ts),
        "X-Slack-Signature": signature(secret, body, ts),
    }


def retry_headers(num: int, reason: str = "http_timeout") -> dict[str, str]:
    """The headers of Slack's redelivery of an event the app did not acknowledge in time."""
    return {"X-Slack-Retry-Num": str(num), "X-Slack-Retry-Reason": reason}


def new_trigger_id() -> str:
    """A trigger id in Slack's format (``<n>.<n>.<hex>``), different on every call."""
    n = next(_serial)
    return f"{1700000000 + n}.{TEAM_ID[1:]}.{hashlib.sha256(str(n).encode()).hexdigest()[:32]}"


def _action_ts() -> str:
    return f"{time.time():.6f}"


def slash_command(
    command: str,
    text: str,
    *,
    user_id: str,
    response_url: str,
    channel_id: str = "C0RELEASES",
    channel_name: str | None = None,
    team_id: str = TEAM_ID,
    team_domain: str = TEAM_DOMAIN,
    trigger_id: str | None = None,
    user_name: str | None = None,
    api_app_id: str = API_APP_ID,
) -> bytes:
    """The form-encoded body of a slash command invocation, every field Slack sends."""
    fields = {
        "token": VERIFICATION_TOKEN,
        "team_id": team_id,
        "team_domain": team_domain,
        "channel_id": channel_id,
        "channel_name": channel_name or _channel_name(channel_id),
        "user_id": user_id,
        "user_name": user_name or user_id.lower(),
        "command": command,
        "text": text,
        "api_app_id": api_app_id,
        "is_enterprise_install": "false",
        "response_url": response_url,
        "trigger_id": trigger_id or new_trigger_id(),
    }
    return urlencode(fields).encode()


def block_actions(
    action_id: str,
    value: str,
    *,
    user_id: str,
    message_ts: str,
    response_url: str,
    channel_id: str = "C0RELEASES",
    channel_name: str | None = None,
    trigger_id: str | None = None,
    block_id: str | None = None,
    button_text: str | None = None,
    message: dict[str, Any] | None = None,
    user_name: str | None = None,
    team_id: str = TEAM_ID,
    api_app_id: str = API_APP_ID,
) -> bytes:
    """The form-encoded body (``payload=<json>``) of a button click in a bot's message.

    ``message`` is the message the button sits in, as Slack echoes it back; pass the stand-in's
    ``message(channel, ts)`` to hand the app exactly what it posted. A minimal bot message is
    used otherwise.
    """
    name = user_name or user_id.lower()
    action = {
        "action_id": action_id,
        "block_id": block_id or f"{action_id}-block",
        "text": {"type": "plain_text", "text": button_text or value, "emoji": True},
        "value": value,
        "type": "button",
        "action_ts": _action_ts(),
    }
    payload: dict[str, Any] = {
        "type": "block_actions",
        "user": {"id": user_id, "username": name, "name": name, "team_id": team_id},
        "api_app_id": api_app_id,
        "token": VERIFICATION_TOKEN,
        "container": {
            "type": "message",
            "message_ts": message_ts,
            "channel_id": channel_id,
            "is_ephemeral": False,
        },
        "trigger_id": trigger_id or new_trigger_id(),
        "team": {"id": team_id, "domain": TEAM_DOMAIN},
        "enterprise": None,
        "is_enterprise_install": False,
        "channel": {"id": channel_id, "name": channel_name or _channel_name(channel_id)},
        "message": message
        or {
            "type": "message",
            "user": BOT_USER_ID,
            "bot_id": BOT_ID,
            "app_id": api_app_id,
            "team": team_id,
            "ts": message_ts,
            "text": "",
            "blocks": [],
        },
        "state": {"values": {}},
        "response_url": response_url,
        "actions": [action],
    }
    return urlencode({"payload": json.dumps(payload)}).encode()


def event_callback(
    event: dict[str, Any],
    *,
    event_id: str,
    team_id: str = TEAM_ID,
    api_app_id: str = API_APP_ID,
    event_time: int | None = None,
) -> bytes:
    """The JSON body of an Events API delivery wrapping ``event``."""
    envelope = {
        "token": VERIFICATION_TOKEN,
        "team_id": team_id,
        "context_team_id": team_id,
        "context_enterprise_id": None,
        "api_app_id": api_app_id,
        "event": event,
        "type": "event_callback",
        "event_id": event_id,
        "event_time": int(time.time()) if event_time is None else event_time,
        "authorizations": [
            {
                "enterprise_id": None,
                "team_id": team_id,
                "user_id": BOT_USER_ID,
                "is_bot": True,
                "is_enterprise_install": False,
            }
        ],
        "is_ext_shared_channel": False,
        "event_context": f"4-{event_id}",
    }
    return json.dumps(envelope).encode()


def url_verification(challenge: str) -> bytes:
    """The JSON body Slack sends once to check a new Events API request URL."""
    return json.dumps(
        {"token": VERIFICATION_TOKEN, "challenge": challenge, "type": "url_verification"}
    ).encode()


def _channel_name(channel_id: str) -> str:
    # Matches the stand-in's naming: "C0RELEASES" is #releases.
    return channel_id[2:].lower() if channel_id.startswith("C0") else channel_id.lower()
