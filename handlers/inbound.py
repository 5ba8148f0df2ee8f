"""What a request to /slack/events must be before bolt sees it: small enough, signed by Slack
over its raw bytes, and a body bolt can parse.

Bolt parses the body before it checks the signature, so unsigned junk (``{not json``, invalid
UTF-8, a JSON array) would raise inside it and answer 500. Here the order is the safe one: size,
then UTF-8, then the signature over the body (slack_sdk's verifier, with its five-minute replay
window), then the shape. Every refusal is one WARNING line and a 4xx; nothing unsigned is parsed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import parse_qs

from aiohttp import web
from aiohttp.typedefs import Handler
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.async_app import AsyncApp
from slack_sdk.signature import SignatureVerifier

log = logging.getLogger(__name__)

# Slack's own payloads are a few kilobytes; a megabyte leaves room for the largest modal state.
MAX_BODY = 1024 * 1024
_MAX_TIMESTAMP_DIGITS = 15  # unix seconds; longer is junk, and int() of a huge string is slow


@dataclass(frozen=True)
class Refusal:
    status: int
    error: str


def refusal(body: bytes, headers: Mapping[str, str], verifier: SignatureVerifier) -> Refusal | None:
    """Why this request must not reach bolt, or None when it may."""
    if len(body) > MAX_BODY:
        return _too_big()
    try:
        # Slack sends UTF-8, and the verifier hashes the decoded text: anything else is not
        # Slack's, signed or not.
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return _refused(400, "body is not UTF-8")
    timestamp = headers.get("X-Slack-Request-Timestamp", "").strip()
    signature = headers.get("X-Slack-Signature", "").strip()
    if not (timestamp.isascii() and timestamp.isdigit()) or len(timestamp) > _MAX_TIMESTAMP_DIGITS:
        return _refused(401, "missing or malformed X-Slack-Request-Timestamp")
    if not signature.isascii() or not verifier.is_valid(text, timestamp, signature):
        return _refused(401, "invalid or expired Slack signature")
    content_type = headers.get("Content-Type", "").split(";")[0].strip().lower()
    if content_type == "application/json":
        return _shape_refusal(text, "signed JSON body")
    fields = parse_qs(text, keep_blank_values=True)
    if "payload" in fields:
        return _shape_refusal(fields["payload"][0], "signed form's payload")
    return None


# The fields bolt and the handlers read from Slack's payloads, with the type Slack sends them
# as. Slack never sends another; a signed body that does is a forged or broken one, and bolt
# would trip over it (a string where it reads a dict) and answer 500.
_OBJECTS = ("view", "user", "team", "channel", "container", "message", "event", "enterprise")
_NULLABLE = ("enterprise", "channel", "container", "message")  # Slack sends null for these
_LISTS = ("actions", "authorizations")
_STRINGS = (
    "type", "token", "callback_id", "trigger_id", "response_url", "api_app_id", "team_id",
    "event_id", "user_id", "channel_id", "command", "text", "enterprise_id",
)  # fmt: skip
_VIEW_STRINGS = ("id", "type", "callback_id", "private_metadata", "hash", "team_id")


def _shape_refusal(text: str, what: str) -> Refusal | None:
    try:
        data = json.loads(text)
    except ValueError:
        return _refused(400, f"{what} is not JSON")
    problem = _shape_problem(data)
    return _refused(400, f"{what} {problem}") if problem else None


def _shape_problem(data: object) -> str:  # noqa: C901 (one check per field kind, in a row)
    if not isinstance(data, dict):
        return "is not a JSON object"
    for name in _OBJECTS:
        if name in data and not isinstance(data[name], dict):
            if data[name] is None and name in _NULLABLE:
                continue
            return f"has a `{name}` that is not an object"
    for name in _LISTS:
        value = data.get(name)
        if value is not None and not (
            isinstance(value, list) and all(isinstance(item, dict) for item in value)
        ):
            return f"has `{name}` that are not a list of objects"
    for name in _STRINGS:
        if name in data and not isinstance(data[name], str):
            return f"has a `{name}` that is not a string"
    view = data.get("view")
    if isinstance(view, dict):
        for name in _VIEW_STRINGS:
            if name in view and not isinstance(view[name], str):
                return f"has a view `{name}` that is not a string"
        state = view.get("state")
        if state is not None and not (
            isinstance(state, dict) and isinstance(state.get("values", {}), dict)
        ):
            return "has a view `state` that is not an object of values"
    return ""


def unescaped(text: str) -> str:
    """Text a person typed, as they typed it. Slack sends ``&``, ``<`` and ``>`` as entities;
    undone once here, at the boundary, and escaped again wherever it is shown."""
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def _too_big() -> Refusal:
    return _refused(413, f"body over {MAX_BODY} bytes")


def _refused(status: int, error: str) -> Refusal:
    log.warning("refused a request to /slack/events: %s", error, extra={"status": status})
    return Refusal(status, error)


def events_endpoint(bolt: AsyncApp | None, signing_secret: str | None) -> Handler:
    """POST /slack/events: the checks above, then bolt."""
    verifier = SignatureVerifier(signing_secret) if signing_secret else None

    async def slack_events(request: web.Request) -> web.StreamResponse:
        if bolt is None or verifier is None:
            return web.json_response({"error": "Slack runs over Socket Mode here"}, status=404)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            body = None  # past the app's own limit: refused like any body over MAX_BODY
        refused = _too_big() if body is None else refusal(body, request.headers, verifier)
        if refused:
            return web.json_response({"error": refused.error}, status=refused.status)
        response = await bolt.async_dispatch(await to_bolt_request(request))
        return await to_aiohttp_response(response)

    return slack_events
