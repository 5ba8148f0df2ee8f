"""How the process logs: one JSON object a line, tied to its request and release, secrets out.

Every line carries the correlation fields known where it was written: ``request_id`` (an HTTP
request, a slash command, a click), ``release_id`` and ``service`` (the release a controller
round, a traffic change or a diagnosis is about). They come from ``log_context``, a
``contextvars`` scope, so code far from the handler (the store, the actuator) needs no ids
passed down, and an asyncio task sees the fields of the task that created it but never those
of its siblings::

    with log_context(request_id=rid):
        with log_context(release_id=release.id, service=release.service):
            log.info("advanced")   # {"msg": "advanced", "request_id": ..., "release_id": ...}

Before a line is written, the secrets this process was configured with (every ``SecretStr`` of
Settings) and anything that looks like a credential (``bot.redact``) are replaced, in the
message, in ``extra=`` fields and in tracebacks: a log collector is one more place a token
must never reach.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from types import MappingProxyType
from typing import TextIO

from pydantic import SecretStr

from bot.config import Settings
from bot.redact import REDACTED, is_secret_name, redact

# The fields every reader looks for first, in this order, right after the message.
CORRELATION = ("request_id", "release_id", "service")

# Commands whose log is a file next to the data (the terminal is the chat); they log text.
FILE_LOGGING_COMMANDS = frozenset({"console", "demo"})
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# A configured secret shorter than this is not matched literally: it would erase ordinary
# words from every line (and is too weak to be worth hiding anyway).
MIN_SECRET_LENGTH = 8

# What a caller's X-Request-Id may be for us to log it and send it back: short, and nothing
# that could split a log line or a header.
_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")

# Attributes every LogRecord has; the rest are extra= fields and correlation fields.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
}

_FIELDS: ContextVar[Mapping[str, str]] = ContextVar(
    "shipwatch_log_fields", default=MappingProxyType({})
)

# Marks the handler configure_logging installed, so a second call replaces only that one.
_OURS = "_shipwatch_handler"


# --- correlation ------------------------------------------------------------------------------


@contextmanager
def log_context(**fields: object) -> Iterator[Mapping[str, str]]:
    """Add ``fields`` to every log line written inside the block (and in tasks started there).

    Nested blocks merge, the inner value winning; a field given as None or "" keeps the outer
    value, so callers can pass what they may not know yet. Yields the merged fields.
    """
    clash = _STANDARD.intersection(fields)
    if clash:
        raise ValueError(f"log context fields shadow LogRecord attributes: {sorted(clash)}")
    merged = dict(_FIELDS.get())
    merged.update({k: str(v) for k, v in fields.items() if v is not None and v != ""})
    view = MappingProxyType(merged)
    token = _FIELDS.set(view)
    try:
        yield view
    finally:
        _FIELDS.reset(token)


def current_context() -> Mapping[str, str]:
    """The correlation fields in effect here."""
    return _FIELDS.get()


def new_request_id() -> str:
    return uuid.uuid4().hex[:16]


def request_id_from(header: str | None) -> str:
    """The caller's request id when it is safe to log and echo, a new one otherwise."""
    if header and _REQUEST_ID.fullmatch(header):
        return header
    return new_request_id()


class ContextFilter(logging.Filter):
    """Stamps the correlation fields in effect onto each record (an ``extra=`` field wins)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _FIELDS.get().items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


# --- secrets ----------------------------------------------------------------------------------


def settings_secrets(settings: Settings) -> list[str]:
    """Every secret value in ``settings``: each SecretStr, and each token inside a list of
    ``name:token[:...]`` entries (SHIPWATCH_API_TOKENS), which can show up alone."""
    found: list[str] = []
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if not isinstance(value, SecretStr):
            continue
        raw = value.get_secret_value()
        found.append(raw)
        for entry in raw.split(","):
            parts = entry.split(":")
            if len(parts) >= 2:
                found.append(parts[1].strip())
    return [s for s in found if len(s) >= MIN_SECRET_LENGTH]


class SecretFilter(logging.Filter):
    """Replaces secrets in a record's message, ``extra=`` fields, traceback and stack.

    The record is changed in place (its arguments are merged into the message), so every
    handler after this one sees the redacted text too.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        # Longest first: a token that contains another must go whole.
        values = sorted({s for s in secrets if len(s) >= MIN_SECRET_LENGTH}, key=len, reverse=True)
        self._known = re.compile("|".join(map(re.escape, values))) if values else None

    def scrub(self, text: str) -> str:
        if self._known is not None:
            text = self._known.sub(REDACTED, text)
        return redact(text)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            # A broken format string must not turn a log call into a crash of the caller.
            message = f"{record.msg!s} (log arguments did not fit: {record.args!r})"
        record.msg, record.args = self.scrub(message), None
        for key, value in list(vars(record).items()):
            if key not in _STANDARD:
                setattr(record, key, self._scrub_field(key, value))
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = self.scrub(record.stack_info)
        return True

    def _scrub_field(self, key: str, value: object) -> object:
        if is_secret_name(key) and value is not None and not isinstance(value, bool):
            return REDACTED
        if isinstance(value, str):
            return self.scrub(value)
        if isinstance(value, Mapping):
            return {str(k): self._scrub_field(str(k), v) for k, v in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return [self._scrub_field("", v) for v in value]
        return value


# --- formats ----------------------------------------------------------------------------------


def _iso_ms(created: float) -> str:
    return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ts, level, logger, msg, the correlation fields, extras, exc."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": _iso_ms(record.created),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        extras = {k: v for k, v in vars(record).items() if k not in _STANDARD}
        for key in CORRELATION:
            if key in extras:
                out[key] = extras.pop(key)
        for key, value in extras.items():
            out.setdefault(key, value)  # ts, level, logger, msg keep their meaning
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = record.stack_info
        # ensure_ascii keeps a line one line whatever it holds (U+2028 included).
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    """The classic line, with the correlation fields in brackets at the end when known."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        ids = " ".join(f"{k}={getattr(record, k)}" for k in CORRELATION if getattr(record, k, ""))
        return f"{line} [{ids}]" if ids else line


# --- setup ------------------------------------------------------------------------------------


def log_format(settings: Settings, command: str) -> str:
    """SHIPWATCH_LOG_FORMAT, or the command's default: json for `serve`, text otherwise."""
    if settings.log_format is not None:
        return settings.log_format
    return "json" if command == "serve" else "text"


def build_handler(stream: TextIO, fmt: str, secrets: Iterable[str] = ()) -> logging.Handler:
    """A handler writing ``fmt`` lines to ``stream``, with correlation fields and redaction."""
    handler = logging.StreamHandler(stream)
    _dress(handler, fmt, secrets)
    return handler


def _dress(handler: logging.Handler, fmt: str, secrets: Iterable[str]) -> None:
    # Context first, so the fields it adds are redacted like everything else.
    handler.addFilter(ContextFilter())
    handler.addFilter(SecretFilter(secrets))
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())


def configure_logging(
    settings: Settings, command: str, *, stream: TextIO | None = None
) -> logging.Handler:
    """Send the process's logs where ``command`` wants them, in the configured format.

    `console` and `demo` write to ``<data dir>/console.log`` (the terminal is the chat);
    every other command to stderr. ``stream`` overrides the destination. Calling it again
    replaces the handler it installed before and leaves other handlers alone.
    """
    fmt = log_format(settings, command)
    handler: logging.Handler
    if stream is not None:
        handler = logging.StreamHandler(stream)
    elif command in FILE_LOGGING_COMMANDS:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(settings.data_dir / "console.log", encoding="utf-8")
    else:
        handler = logging.StreamHandler(sys.stderr)
    _dress(handler, fmt, settings_secrets(settings))
    setattr(handler, _OURS, True)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _OURS, False)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    return handler
