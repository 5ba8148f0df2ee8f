"""Who may read a release page: the holder of a signed link for that release, or an API token
scoped to its service. Refusals are pages that say how to get in."""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from urllib.parse import urlencode

from aiohttp import web

from bot.page_links import LinkCheck, PageLinks, check_link
from bot.render.page_index import FRESH_LINK, refusal_page
from bot.render.page_kit import page_headers
from handlers.api.tokens import ApiToken, TokenRing

log = logging.getLogger(__name__)

_REALM = 'Bearer realm="shipwatch"'


@dataclass(frozen=True)
class Access:
    """How the visitor got in: ``link`` (signed, its query kept for the live updates) or
    ``token`` (its name, for the log)."""

    by: str
    query: str = ""


def new_nonce() -> str:
    return secrets.token_urlsafe(16)


def html_answer(status: int, markup: str, nonce: str, **headers: str) -> web.Response:
    return web.Response(
        status=status,
        text=markup,
        content_type="text/html",
        charset="utf-8",
        headers={**page_headers(nonce), **headers},
    )


def refusal(status: int, title: str, message: str, how: str, **headers: str) -> web.Response:
    nonce = new_nonce()
    return html_answer(status, refusal_page(title, message, how, nonce), nonce, **headers)


def not_found(service: str) -> web.Response:
    return refusal(
        404,
        "No such release",
        f"There is no release with this id for {service} (finished releases are kept for the "
        "policy's retention, then forgotten).",
        "Check the link, or find the release in /rollout history in Slack.",
    )


class Gate:
    def __init__(self, links: PageLinks, ring: TokenRing) -> None:
        self.links = links
        self.ring = ring

    def token(self, request: web.Request) -> ApiToken | web.Response:
        """The bearer token's owner, or the 401 page."""
        scheme, _, presented = request.headers.get("Authorization", "").strip().partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            return refusal(
                401,
                "Sign-in needed",
                "This page opens with a signed link from the release's status message, or with "
                "an API token.",
                FRESH_LINK,
                **{"WWW-Authenticate": _REALM},
            )
        token = self.ring.authenticate(presented.strip())
        if token is None:
            log.warning("release page asked with an unknown token from %s", request.remote)
            return refusal(
                401,
                "Unknown token",
                "The API token presented is not one of SHIPWATCH_API_TOKENS.",
                FRESH_LINK,
                **{"WWW-Authenticate": f'{_REALM}, error="invalid_token"'},
            )
        return token

    def release(self, request: web.Request, service: str, release_id: str) -> Access | web.Response:
        """Whether the request may read this release's page: a signed link first (it is what a
        browser has), else a token for the service."""
        query = request.query
        if "mac" in query or "exp" in query:
            return self._link(service, release_id, query.get("exp", ""), query.get("mac", ""))
        token = self.token(request)
        if isinstance(token, web.Response):
            return token
        if not token.allows(service):
            return refusal(
                403,
                "Not for this token",
                f"The token {token.name} may read {token.describe_scope()}, not {service}.",
                FRESH_LINK,
            )
        return Access(by=f"token {token.name}")

    def _link(self, service: str, release_id: str, exp: str, mac: str) -> Access | web.Response:
        if not self.links.secret:
            return refusal(
                403,
                "Links are off here",
                "This shipwatch has no SHIPWATCH_PAGE_SECRET, so it accepts no signed links.",
                "Use an API token, or ask the bot's owners to set SHIPWATCH_PAGE_SECRET.",
            )
        match check_link(self.links.secret, service, release_id, exp, mac):
            case LinkCheck.VALID:
                return Access(by="link", query=urlencode({"exp": exp, "mac": mac}))
            case LinkCheck.EXPIRED:
                return refusal(
                    403, "This link has expired", "Release page links expire.", FRESH_LINK
                )
            case _:
                return refusal(
                    403,
                    "This link is not valid",
                    "The link was changed, belongs to another release, or was signed with "
                    "another key (the key changes when SHIPWATCH_PAGE_SECRET does).",
                    FRESH_LINK,
                )
