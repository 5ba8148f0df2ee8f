"""Slack mrkdwn text: escaping what we did not write, mentions made only from ids, and
clipping to a length Slack counts the way it does.
"""

from __future__ import annotations

import re
from collections.abc import Iterable


def esc(text: str) -> str:
    """Escape user text for mrkdwn: Slack reads <, > and & as markup."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# Characters no message needs and some abuse: bidi embeddings, overrides and isolates (they make
# "gnp.exe" read as "exe.png"), and control characters other than tab and newline.
_UNSHOWN = re.compile("[\u202a-\u202e\u2066-\u2069\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def shown(text: str) -> str:
    """``text`` as it may be shown: lone surrogates (invalid Unicode, which Slack refuses)
    replaced, bidi controls and control characters removed."""
    if text.isascii() and text.isprintable():
        return text
    valid = text.encode("utf-8", "replace").decode("utf-8")
    return _UNSHOWN.sub("", valid)


_USER_ID = re.compile(r"[UW][A-Z0-9]{6,20}")
_GROUP_ID = re.compile(r"S[A-Z0-9]{6,20}")


def mention(who: str) -> str:
    """A Slack user id (U…/W…) or user-group id (S…) as a mention; anything else as written.

    Real ids always contain a digit; requiring one keeps names like "SREOPS" as written.
    """
    who = who.strip()
    has_digit = any(c.isdigit() for c in who)
    if has_digit and _USER_ID.fullmatch(who):
        return f"<@{who}>"
    if has_digit and _GROUP_ID.fullmatch(who):
        return f"<!subteam^{who}>"
    return esc(who)


def mentions(people: Iterable[str]) -> str:
    return ", ".join(mention(p) for p in people if p.strip())


def text_units(text: str) -> int:
    # Slack counts UTF-16 code units (JavaScript string length): an emoji counts as two.
    # Counting the same way keeps emoji-heavy text inside the limit.
    return len(text.encode("utf-16-le", "surrogatepass")) // 2  # a lone surrogate is one unit


def _prefix(text: str, units: int) -> str:
    out = []
    used = 0
    for ch in text:
        size = 2 if ord(ch) > 0xFFFF else 1
        if used + size > units:
            break
        out.append(ch)
        used += size
    return "".join(out)


def clip(text: str, limit: int, more: str = "", *, markup: bool = True) -> str:
    """``text`` cut to ``limit`` UTF-16 units, ending in a truncation note.

    mrkdwn (``markup``) is cut cleanly: between table rows when possible, never inside a
    mention, link or entity, and an open code block is closed again.
    """
    if text_units(text) <= limit:
        return text
    tail = f"… (truncated: {more})" if more else "… (truncated)"
    if text_units(tail) * 3 > limit:
        tail = "…"
    fenced = markup and "```" in text
    budget = max(0, limit - text_units(tail) - (5 if fenced else 1))
    cut = _prefix(text, budget)
    if markup:
        newline = cut.rfind("\n")
        if newline > len(cut) * 0.8:
            cut = cut[:newline]
        opened = cut.rfind("<")
        if opened > cut.rfind(">"):
            cut = cut[:opened]
        amp = cut.rfind("&")
        if amp >= 0 and ";" not in cut[amp:]:
            cut = cut[:amp]
    if fenced and cut.count("```") % 2:
        return f"{cut.rstrip()}\n```\n{tail}"
    if not markup:
        return cut.rstrip() + tail
    return f"{cut.rstrip()} {tail}" if cut.strip() else tail
