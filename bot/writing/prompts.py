"""Render the LLM prompts kept as Jinja2 templates in the ``prompts`` package.

One environment, built once: StrictUndefined so a prompt missing a piece of evidence fails
loudly instead of silently telling the model "nothing here", and no autoescaping because the
output is plain text for a model, not HTML.

Every ``{{ value }}`` passes through :func:`_finalize`, which defangs our data delimiters
(``<<<NAME`` … ``NAME>>>``). Thread messages, release notes and reasons are written by people;
without this a message containing ``THREAD>>>`` could close its block early and pose as our
own instructions. Doing it in ``finalize`` means no template can forget to.
"""

from __future__ import annotations

import functools
import re
from typing import Any

import jinja2

from bot.errors import ShipwatchError

PACKAGE = "prompts"
SUFFIX = ".j2"

# The delimiter runs we use around data; a run of three or more angle brackets in data becomes
# look-alike guillemets, which reads the same to a person and cannot open or close a block.
_OPEN = re.compile(r"<{3,}")
_CLOSE = re.compile(r">{3,}")
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


class PromptError(ShipwatchError):
    """A prompt could not be rendered."""


class UnknownPromptError(PromptError, LookupError):
    """No template has that name; the message lists the ones that exist."""


class PromptContextError(PromptError, jinja2.UndefinedError):
    """The template needs a variable the caller did not pass (StrictUndefined caught it)."""


def _neutralize(text: str) -> str:
    text = _OPEN.sub(lambda m: "‹" * len(m.group()), text)
    return _CLOSE.sub(lambda m: "›" * len(m.group()), text)


def _finalize(value: Any) -> str:
    # str() on a StrictUndefined raises, so a missing variable still fails here.
    return "n/a" if value is None else _neutralize(str(value))


def _clip(value: Any, limit: int = 2000) -> str:
    """At most ``limit`` characters, saying so when cut: bounds what a chat user can paste
    into a prompt and keeps the request within the model's budget."""
    text = str(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit].rstrip()} … [cut: {len(text) - limit} more characters]"


@functools.cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader(PACKAGE, ""),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
        finalize=_finalize,
    )
    env.filters["clip"] = _clip
    return env


def available() -> list[str]:
    """Names of the templates that can be rendered (without the ``.j2`` suffix)."""
    return sorted(
        name.removesuffix(SUFFIX)
        for name in environment().list_templates(extensions=[SUFFIX.lstrip(".")])
    )


def render(name: str, **context: Any) -> str:
    """Render ``prompts/<name>.j2`` (the suffix may be given or not) with ``context``.

    Raises UnknownPromptError for a name with no template and PromptContextError when the
    template uses a variable that was not passed.
    """
    base = name.removesuffix(SUFFIX)
    # Names are ours, never user input, but a path here would read outside the package.
    if not _NAME.fullmatch(base) or ".." in base:
        raise UnknownPromptError(f"invalid prompt name {name!r}: use names like 'diagnosis.user'")
    try:
        template = environment().get_template(base + SUFFIX)
    except jinja2.TemplateNotFound as exc:
        known = ", ".join(available()) or "(none)"
        raise UnknownPromptError(
            f"unknown prompt {base!r}: no {base}{SUFFIX} in the {PACKAGE} package (known: {known})"
        ) from exc
    try:
        text = template.render(**context)
    except jinja2.UndefinedError as exc:
        raise PromptContextError(f"prompt {base!r}: {exc.message}") from exc
    return text.strip()


def render_pair(name: str, **context: Any) -> tuple[str, str]:
    """(system, user) from ``<name>.system.j2`` and ``<name>.user.j2``."""
    return render(f"{name}.system", **context), render(f"{name}.user", **context)
