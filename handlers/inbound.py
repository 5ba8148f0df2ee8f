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
        return None if _is_object(text) else _refused(400, "signed JSON body is not an object")
    fields = parse_qs(text, keep_blank_values=True)
    if "payload" in fields and not _is_object(fields["payload"][0]):
        return _refused(400, "signed form's payload is not a JSON object")
    return None


def unescaped(text: str) -> str:
    """Text a person typed, as they typed it. Slack sends ``&``, ``<`` and ``>`` as entities;
    undone once here, at the boundary, and escaped again wherever it is shown."""
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def _is_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False


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
