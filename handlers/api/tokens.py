"""Who may call the API: per-service bearer tokens from ``SHIPWATCH_API_TOKENS``, kept as
digests and compared in constant time.
"""

from __future__ import annotations

import difflib
import hashlib
import hmac
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from bot.config import Settings
from bot.errors import UserError
from bot.release.policy import Policy

ENV = "SHIPWATCH_API_TOKENS"
FORMAT = "name:token[:service1|service2], entries separated by commas"
MIN_TOKEN_LENGTH = 16
_TOKEN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class ApiToken:
    """One configured token: its name, the digest of its secret, and what it may touch."""

    name: str
    digest: bytes = field(repr=False)
    services: frozenset[str] | None = None  # None: every service

    def allows(self, service: str) -> bool:
        return self.services is None or service in self.services

    def describe_scope(self) -> str:
        return "every service" if self.services is None else ", ".join(sorted(self.services))


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def _format_error(message: str) -> UserError:
    return UserError(f"{ENV}: {message}", hint=f"the format is {FORMAT}")


# Each malformed entry gets its own message naming the entry and how to fix it.
def parse_tokens(text: str, known_services: Collection[str] | None = None) -> tuple[ApiToken, ...]:  # noqa: C901
    """Parse ``SHIPWATCH_API_TOKENS``; raise UserError naming the bad entry (never its secret).

    ``known_services``, when given, must hold every service a token is limited to: a typo
    there would otherwise surface only as 403s in some pipeline, long after the start.
    """
    tokens: list[ApiToken] = []
    names: dict[str, int] = {}
    digests: dict[bytes, int] = {}
    entries = [e.strip() for e in text.split(",")]
    for number, entry in enumerate(entries, start=1):
        if not entry:
            continue  # a trailing comma, or an emptied line in a multi-line value
        parts = entry.split(":")
        name = parts[0].strip()
        # Entries are named by position only: with its parts in the wrong order, an entry's
        # "name" is its secret, and this message goes to a terminal or a log.
        where = f"entry {number}"
        if len(parts) not in (2, 3):
            raise _format_error(
                f"{where} has {len(parts)} `:`-separated parts; expected 2 (name:token) or 3 "
                "(name:token:services). Tokens cannot contain `:` or `,`"
            )
        if not _TOKEN_NAME.match(name):
            raise _format_error(
                f"{where}: the name must be letters, digits, `.`, `_` or `-` (at most 64 "
                "characters)"
            )
        secret = parts[1]
        if len(secret) < MIN_TOKEN_LENGTH or any(c.isspace() for c in secret):
            raise _format_error(
                f"{where}: the token must be at least {MIN_TOKEN_LENGTH} characters without "
                "white space (e.g. from `openssl rand -hex 32`)"
            )
        services: frozenset[str] | None = None
        if len(parts) == 3:
            listed = [s.strip() for s in parts[2].split("|")]
            if not all(listed):
                raise _format_error(
                    f"{where}: an empty service name; list services separated by `|`, or leave "
                    "the part out to allow every service"
                )
            if known_services is not None:
                for service in listed:
                    if service not in known_services:
                        close = difflib.get_close_matches(service, sorted(known_services), n=1)
                        guess = f"; did you mean `{close[0]}`?" if close else ""
                        raise _format_error(
                            f"{where}: unknown service `{service}`{guess} "
                            f"(the policy has: {', '.join(sorted(known_services)) or 'none'})"
                        )
            services = frozenset(listed)
        if name in names:
            raise _format_error(f"entries {names[name]} and {number} are both named `{name}`")
        digest = _digest(secret)
        if digest in digests:
            # Two names for one secret would make "who started this release" a guess.
            raise _format_error(f"entries {digests[digest]} and {number} use the same token")
        names[name] = number
        digests[digest] = number
        tokens.append(ApiToken(name=name, digest=digest, services=services))
    return tuple(tokens)


def load_tokens(settings: Settings, policy: Policy) -> tuple[ApiToken, ...]:
    """The configured tokens (none when the variable is unset: the API then refuses everyone)."""
    if settings.api_tokens is None:
        return ()
    return parse_tokens(settings.api_tokens.get_secret_value(), policy.services)


class TokenRing:
    """Answers "whose token is this?" without revealing anything through timing."""

    def __init__(self, tokens: Sequence[ApiToken]) -> None:
        self._tokens = tuple(tokens)

    def __bool__(self) -> bool:
        return bool(self._tokens)

    def authenticate(self, presented: str) -> ApiToken | None:
        # Hashing first gives every comparison the same length, and every configured digest is
        # compared, whatever matched: the time taken says nothing about which token is close.
        digest = _digest(presented)
        found: ApiToken | None = None
        for token in self._tokens:
            if hmac.compare_digest(digest, token.digest):
                found = token
        return found
