"""Signed links to a release page: anyone holding one may read that one release until it expires,
without a Slack login or an API token.

    {public_url}/releases/{service}/{release_id}?exp=<unix seconds>&mac=<hex>
    mac = hex HMAC-SHA256(SHIPWATCH_PAGE_SECRET, "page-v1\\n" + service + "\\n" + id + "\\n" + exp)

The parameter is ``mac``, not ``sig``: chat text goes through bot.redact, which rightly removes
the values of ``sig=``/``signature=`` (other systems' signed links); this one is meant to be
posted.

Pure: no clock is read unless the caller leaves ``now`` out, nothing is stored. A link for one
release proves nothing about another, and a changed expiry breaks the signature.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import quote, urlencode

from pydantic import SecretStr

# How long a posted link stays good after the release last changed. The status message is
# edited at every change, so an active release's link is renewed as it moves; a finished
# release's link lasts this long after its end.
LINK_TTL_S = 7 * 86400
_DOMAIN = "page-v1"  # keeps these signatures apart from every other HMAC made with the key
_MAX_EXP_DIGITS = 12  # unix seconds need 10 for centuries; longer is junk


class LinkCheck(StrEnum):
    VALID = "valid"
    EXPIRED = "expired"
    INVALID = "invalid"  # forged, tampered, for another release, or malformed


def page_path(service: str, release_id: str) -> str:
    return f"/releases/{quote(service, safe='')}/{quote(release_id, safe='')}"


def _message(service: str, release_id: str, expires: int) -> bytes:
    # Newline-separated: neither a service name nor a release id holds one, so no two
    # (service, id, exp) triples make the same message.
    return f"{_DOMAIN}\n{service}\n{release_id}\n{expires}".encode()


def signature(secret: str, service: str, release_id: str, expires: int) -> str:
    return hmac.new(
        secret.encode("utf-8"), _message(service, release_id, expires), hashlib.sha256
    ).hexdigest()


def check_link(
    secret: str,
    service: str,
    release_id: str,
    exp: str,
    mac: str,
    *,
    now: float | None = None,
) -> LinkCheck:
    """Whether ``exp`` and ``mac`` (the link's query values) open this release's page now."""
    if not secret:
        return LinkCheck.INVALID  # an empty key is everyone's key
    exp = exp.strip()
    if not (exp.isascii() and exp.isdigit()) or len(exp) > _MAX_EXP_DIGITS:
        return LinkCheck.INVALID
    expected = signature(secret, service, release_id, int(exp)).encode("ascii")
    # Bytes: compare_digest refuses non-ASCII str, and the query is the visitor's to choose.
    if not hmac.compare_digest(expected, mac.strip().lower().encode("utf-8", "replace")):
        return LinkCheck.INVALID
    # Checked after the signature, so "expired" is only ever said of a link we made.
    current = time.time() if now is None else now
    return LinkCheck.EXPIRED if int(exp) < current else LinkCheck.VALID


@dataclass(frozen=True)
class PageLinks:
    """Makes the signed links; falsy (and every link "") unless both the key and the public
    address are configured."""

    secret: str = ""
    public_url: str = ""

    @classmethod
    def from_settings(cls, secret: SecretStr | None, public_url: str | None) -> PageLinks:
        return cls(
            secret.get_secret_value() if secret is not None else "",
            (public_url or "").strip().rstrip("/"),
        )

    def __bool__(self) -> bool:
        return bool(self.secret and self.public_url)

    def query(self, service: str, release_id: str, expires: int) -> str:
        """The ``exp=…&mac=…`` part of a link (for pages that link to other pages)."""
        mac = signature(self.secret, service, release_id, expires)
        return urlencode({"exp": expires, "mac": mac})

    def url(self, service: str, release_id: str, expires: int) -> str:
        if not self:
            return ""
        return (
            f"{self.public_url}{page_path(service, release_id)}"
            f"?{self.query(service, release_id, expires)}"
        )

    def url_for(self, service: str, release_id: str, changed_at: float) -> str:
        """The link to post for a release last changed at ``changed_at``: the same text for
        the same record, so re-rendering an unchanged message changes nothing."""
        return self.url(service, release_id, int(changed_at) + LINK_TTL_S)
