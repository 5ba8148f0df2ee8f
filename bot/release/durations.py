"""Human durations ("90s", "15m", "1h30m") to seconds and back, and Prometheus range strings."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BeforeValidator

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str | float | int) -> float:
    """Seconds from "15m", "1h30m", "45s", "250ms" or a bare number of seconds.

    Raises ValueError with the accepted forms when the text is not a duration.
    """
    if isinstance(text, bool):
        raise ValueError("a duration is a number of seconds or text like 30s, 15m, 1h30m")
    if isinstance(text, int | float):
        if text < 0:
            raise ValueError("a duration cannot be negative")
        return float(text)
    raw = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", raw):
        return float(raw)
    pos = 0
    total = 0.0
    for match in _PART.finditer(raw):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(raw) or not raw:
        raise ValueError(f"`{text}` is not a duration: use forms like 30s, 15m, 1h30m, 250ms")
    return total


def format_duration(seconds: float) -> str:
    """Compact human form: 0s, 45s, 15m, 1h30m, 2d3h."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms" if seconds > 0 else "0s"
    whole = round(seconds)
    out = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if whole >= size:
            out.append(f"{whole // size}{unit}")
            whole %= size
    return "".join(out[:2])


def prometheus_range(seconds: float) -> str:
    """A Prometheus range selector duration; never below 1s."""
    whole = max(1, round(seconds))
    return f"{whole}s"


# A duration field of a policy model: "15m" or a number of seconds in the file, seconds in code.
Seconds = Annotated[float, BeforeValidator(parse_duration)]
