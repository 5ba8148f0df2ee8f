"""Remove secrets from text before it leaves the process: prompts, Slack posts, tickets, logs.

Prompts, posts and tickets are built from things people paste into Slack or CI, release
records, log excerpts and metric labels, any of which can carry a credential. Nothing sent can
be taken back, so every prompt (``bot.writing.llm``), every rendered message
(``bot.render.kit.fit``), every ticket and every log line goes through ``redact``. The bot's own
secrets (its tokens, signing secret, API keys, webhook and ticket secrets) are removed as
literal text whatever their shape: ``remember_secrets`` is called with them at start.

The patterns aim at what secrets look like (a token's prefix, a ``password=`` label, a PEM
armour) rather than at how random a string is: release ids, commit hashes, Slack user ids and
PromQL are exactly the high-entropy text an explanation needs, so they must come through whole.
A secret is replaced by ``[redacted]``; the user part of a URL by ``***`` so the host stays
readable ("which database?" is often the question).

The result is stable: ``redact(redact(text)) == redact(text)``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import TypeVar, cast

from yarl import URL

REDACTED = "[redacted]"
USERINFO = "***"

T = TypeVar("T")

# A user name this long in a URL is taken for a token (personal access tokens, OAuth tokens).
_TOKEN_AS_USER = 16
# The bot's own secrets shorter than this are not looked for as text: "test" or "changeme"
# would blank out ordinary words; a real token or secret is far longer.
MIN_KNOWN_SECRET = 8

# The configured secrets, longest first (so one that contains another goes whole).
_known: list[str] = []


def remember_secrets(values: Iterable[str | None]) -> None:
    """Remove these values wherever they appear from now on (the bot's configured secrets)."""
    found = {v.strip() for v in values if v and len(v.strip()) >= MIN_KNOWN_SECRET}
    _known[:] = sorted(set(_known) | found, key=len, reverse=True)


# Names whose value is a secret, used for ``name=value`` / ``name: value`` assignments and for
# dict keys in ``redact_obj``. Any prefix joined by ``_ . -`` counts (DB_PASSWORD,
# slack_signing_secret, aws_secret_access_key), but the name must end there: ``max_tokens``
# and ``token_count`` are not secrets. A bare ``key`` is too common (label keys, sort keys).
_SECRET_NAME = (
    r"(?:[A-Za-z0-9]+[_.-])*"
    r"(?:password|passwd|passphrase|pwd|secret|token|api[_-]?key|apikey"
    r"|secret[_-]?key|private[_-]?key|access[_-]?key|secret[_-]?access[_-]?key"
    r"|account[_-]?key|shared[_-]?access[_-]?key|credentials?)"
)
_SECRET_NAME_RE = re.compile(_SECRET_NAME, re.IGNORECASE)

# Query parameters: the names above plus the short ones URLs use for signed links
# (``key``, ``sig``, ``signature``, X-Amz-Signature, X-Goog-Credential, ...).
_PARAM_NAME = (
    r"(?:[A-Za-z0-9]+[_.-])*"
    r"(?:token|key|secret|password|passwd|signature|sig|credential|api[_-]?key|apikey)"
)


def _keep_prefix(match: re.Match[str]) -> str:
    return f"{match.group('keep')}{REDACTED}"


def _assignment(match: re.Match[str]) -> str:
    value = match.group("value")
    # Keep the quotes so JSON and YAML stay well-formed for the model to read.
    quote = value[0] if value[:1] in {'"', "'"} and len(value) >= 2 else ""
    return f"{match.group('keep')}{quote}{REDACTED}{quote}"


def _userinfo(match: re.Match[str]) -> str:
    userinfo = match.group("userinfo")
    # A plain short user name (ssh://git@github.com) is no credential; a password, or a
    # token used as the user name (https://<token>@host), is.
    if ":" not in userinfo and len(userinfo) < _TOKEN_AS_USER:
        return match.group(0)
    return f"{match.group('keep')}{USERINFO}@"


def _authorization(match: re.Match[str]) -> str:
    scheme = match.group("scheme")
    return f"{match.group('keep')}{scheme + ' ' if scheme else ''}{REDACTED}"


# Order matters: multi-line and structural patterns (PEM, URLs) run before the token shapes,
# and the labelled patterns run last so they only see what the specific ones left.
_RULES: list[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]]] = [
    # PEM private keys. A block cut off before its END line (a truncated log excerpt) is
    # removed to the end of the text: the key material is all that follows.
    (
        re.compile(
            r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY( BLOCK)?-----"
            r"(?:.*?-----END [A-Z0-9 ]*PRIVATE KEY( BLOCK)?-----|.*\Z)",
            re.DOTALL,
        ),
        REDACTED,
    ),
    # Credentials in a URL's authority: scheme://user:pass@host. The repetition reaches the
    # last "@" before the path, so a password with an unescaped "@" goes entirely.
    (
        re.compile(
            r"(?P<keep>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/?#\s@]*(?:@[^/?#\s@]*)*)@"
        ),
        _userinfo,
    ),
    # Slack incoming-webhook URLs: the path is the credential.
    (
        re.compile(r"(?P<keep>hooks\.slack\.com/(?:services|workflows|triggers)/)[A-Za-z0-9/_-]+"),
        _keep_prefix,
    ),
    # Slack tokens: bot, user, app-level, legacy, client/cookie and refresh (xoxe.xoxp-...).
    (re.compile(r"\b(?:xox[abcdposre]|xapp)(?:\.xox[a-z])?-[A-Za-z0-9-]{6,}"), REDACTED),
    # OpenAI-style keys (sk-..., sk-proj-..., sk-svcacct-...): 20 characters or more after
    # "sk-", a digit among them, so words such as "sk-learn-compatible" survive.
    (re.compile(r"\bsk-(?=[A-Za-z0-9_-]*[0-9])[A-Za-z0-9_-]{20,}"), REDACTED),
    # Stripe secret and restricted keys (the publishable pk_ ones are public).
    (re.compile(r"\b[sr]k_(?:live|test)_[A-Za-z0-9]{10,}"), REDACTED),
    # Google API keys, GitLab personal tokens, npm tokens.
    (re.compile(r"\bAIza[0-9A-Za-z_-]{35}"), REDACTED),
    (re.compile(r"\bglpat-[A-Za-z0-9_-]{20,}"), REDACTED),
    (re.compile(r"\bnpm_[A-Za-z0-9]{36}\b"), REDACTED),
    # GitHub tokens: classic (ghp_, gho_, ghu_, ghs_, ghr_) and fine-grained (github_pat_).
    (re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,})"), REDACTED),
    # AWS access key ids: long-lived (AKIA) and temporary (ASIA).
    (re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b"), REDACTED),
    # JWTs: base64url header and payload, both JSON objects ("eyJ" is '{"'), then a signature
    # (empty for alg "none"). Requiring "eyJ" keeps versions and hostnames like a.b.c intact.
    (
        re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*"),
        REDACTED,
    ),
    # Secret-bearing query parameters: keep the name, drop the value.
    (
        re.compile(rf"(?P<keep>[?&;]{_PARAM_NAME}=)[^&#\s\"'<>]+", re.IGNORECASE),
        _keep_prefix,
    ),
    # Authorization headers, whatever the scheme (Basic carries a reversible password).
    (
        re.compile(
            r"(?P<keep>\b(?:proxy-)?authorization[\"']?\s*[:=]\s*[\"']?)"
            # Possessive: "Bearer [redacted]" must not be read as a value "Bearer".
            r"(?:(?P<scheme>basic|bearer|token|bot|digest|apikey)\s+)?+"
            r"(?!\[redacted\])[^\s\"',;]+",
            re.IGNORECASE,
        ),
        _authorization,
    ),
    # A bare "Bearer <token>". The token must contain a digit or a token punctuation mark so
    # "bearer instruments" in prose is left alone.
    (
        re.compile(r"\b(?P<keep>[Bb]earer\s+)(?=[A-Za-z]*[0-9._~+/=-])[A-Za-z0-9._~+/-]{6,}=*"),
        _keep_prefix,
    ),
    # Labelled assignments: password=..., "secret": "...", API_KEY: ..., in env files, YAML,
    # JSON, CLI flags (--db-password=...) and log lines. The value is a quoted string or the
    # run of characters up to whitespace or a separator.
    (
        re.compile(
            rf"(?P<keep>(?<![A-Za-z0-9]){_SECRET_NAME}(?![A-Za-z0-9])[\"']?\s*[:=]\s*)"
            r"(?P<value>\"(?:[^\"\\\n]|\\.)*\"|'[^'\n]*'|(?!\[redacted\])[^\s,;&\"'}\]]+)",
            re.IGNORECASE,
        ),
        _assignment,
    ),
    # A secret said in words: "the webhook secret is 9f8e…", "token: …", "password was …". The
    # value must look generated (12+ characters with a digit) so "the key is rotating" stays.
    (
        re.compile(
            r"(?P<keep>\b(?:secret|token|password|passphrase|api key|key)\s+(?:is|was|=|:)\s+"
            r"[\"'`]?)(?=[A-Za-z0-9+/_.-]*[0-9])(?!\[redacted\])[A-Za-z0-9+/_.-]{12,}=*",
            re.IGNORECASE,
        ),
        _keep_prefix,
    ),
]


def redact(text: str) -> str:
    """``text`` with the bot's own secrets and every secret the patterns above recognise
    replaced."""
    for secret in _known:
        if secret in text:
            text = text.replace(secret, REDACTED)
    for pattern, replacement in _RULES:
        text = pattern.sub(replacement, text)
    return text


def is_secret_name(name: str) -> bool:
    """Whether a field called ``name`` holds a secret (``password``, ``SLACK_BOT_TOKEN``, ...)."""
    return _SECRET_NAME_RE.fullmatch(name) is not None


def redact_obj(obj: T) -> T:
    """A copy of ``obj`` with every string redacted, through dicts, lists and tuples.

    Values under a key named like a secret (``{"password": "hunter2"}``) are replaced whatever
    they look like: "hunter2" alone has no shape to recognise. ``None`` and booleans under such
    keys stay, since "no token set" is useful context and says nothing secret.
    """
    return cast(T, _redact_any(obj))


def _redact_any(obj: object) -> object:
    if isinstance(obj, str):
        return redact(obj)
    if isinstance(obj, dict):
        return {
            key: (
                REDACTED
                if isinstance(key, str)
                and is_secret_name(key)
                and value is not None
                and not isinstance(value, bool)
                else _redact_any(value)
            )
            for key, value in obj.items()
        }
    if isinstance(obj, list):
        return [_redact_any(item) for item in obj]
    if isinstance(obj, tuple):
        return tuple(_redact_any(item) for item in obj)
    return obj


def redact_url(url: str | URL) -> str:
    """``url`` without userinfo, query or fragment: safe for logs, errors and Slack."""
    parsed = url if isinstance(url, URL) else URL(url)
    return str(parsed.with_user(None).with_query(None).with_fragment(None))
