"""The README's reference tables cover every setting and policy field, with their defaults.

The tables are written by hand (they explain, a generated list would not); these tests catch a
field added to the code without a row, or a default changed without its row.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from bot.config import Settings
from bot.release import policy
from bot.release.digest import DigestSettings
from bot.release.durations import parse_duration
from bot.release.retention import Retention
from bot.release.rules import Trend, VsPreviousStep

README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")


def _section(title: str) -> str:
    match = re.search(rf"(?ms)^## {re.escape(title)}\n(.*?)(?=^## )", README)
    assert match, f"README has no `## {title}` section"
    return match.group(1)


def _rows(section: str) -> dict[str, str]:
    """Table rows by every backticked name in their first cell (`a`, `b` share a row)."""
    rows: dict[str, str] = {}
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        first = line.split(" | ")[0]
        for name in re.findall(r"`([^`]+)`", first):
            rows[name] = line
    return rows


def _readme_default(value: object) -> str | None:
    """How a simple default is written in the tables; None when it is written in words."""
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float) and value.is_integer():
        return f"`{int(value)}`"
    if isinstance(value, int | float):
        return f"`{value}`"
    if isinstance(value, str) and value:
        return f"`{value}`"
    return None


def test_every_environment_variable_has_a_row_with_its_default() -> None:
    rows = _rows(_section("Environment reference"))
    missing = []
    wrong = []
    for field in Settings.model_fields.values():
        alias = field.alias
        assert alias is not None
        if alias not in rows:
            missing.append(alias)
            continue
        expected = _readme_default(field.default)
        default_cell = rows[alias].split(" | ")[1]
        if expected is not None and expected not in default_cell:
            wrong.append(f"{alias}: default {expected}, the README says {default_cell}")
    assert not missing, f"add rows to README's Environment reference for {missing}"
    assert not wrong, wrong


# (the bold title over the table, the prefix of the names in it, the model it documents)
MODELS: list[tuple[str, str, type[BaseModel]]] = [
    ("Service", "", policy.ServicePolicy),
    ("Metric", "", policy.Metric),
    ("Step", "", policy.Step),
    ("Hook", "", policy.Hook),
    ("Hook", "load.", policy.LoadHook),
    ("Hook", "webhook.", policy.WebhookHook),
    ("vs_previous_step", "", VsPreviousStep),
    ("Trend", "", Trend),
    ("Score", "", policy.ScoreSettings),
    ("Traffic", "", policy.TrafficSettings),
    ("Tickets", "webhook.", policy.WebhookTickets),
    ("Tickets", "github.", policy.GitHubTickets),
    ("Paging", "", policy.PagingSettings),
    ("Paging", "pagerduty.", policy.PagerDutyPaging),
    ("Paging", "opsgenie.", policy.OpsgeniePaging),
    ("Watch", "", policy.WatchSettings),
    ("Digest", "", DigestSettings),
    ("Retention", "", Retention),
]


def _table(section: str, title: str) -> str:
    match = re.search(rf"(?ms)^\*\*{title}\*\*.*?\n(.*?)(?=^\*\*|\Z)", section)
    assert match, f"README's Policy reference has no **{title}** table"
    return match.group(1)

SECONDS_WRITTEN_AS_DURATIONS = {
    # Durations are written the way a policy file would (15m, not 900).
    900.0: "15m",
    30.0: "30s",
    60.0: "1m",
    3600.0: "1h",
    300.0: "5m",
    10.0: "10s",
    5.0: "5s",
    15.0: "15s",
    120.0: "2m",
    86400.0: "24h",
    7200.0: "2h",
    7 * 86400.0: "7d",
    14 * 86400.0: "14d",
    30 * 86400.0: "30d",
    400 * 86400.0: "400d",
}


def _is_duration(metadata: list[object]) -> bool:
    return any(getattr(m, "func", None) is parse_duration for m in metadata)


@pytest.mark.parametrize(
    ("title", "prefix", "model"), MODELS, ids=[m.__name__ for _, _, m in MODELS]
)
def test_every_policy_field_has_a_row_with_its_default(
    title: str, prefix: str, model: type[BaseModel]
) -> None:
    rows = _rows(_table(_section("Policy reference"), title))
    # A field the file spells differently (`for`, a Python keyword) has a row under its alias.
    names = {name: field.alias or name for name, field in model.model_fields.items()}
    missing = [prefix + n for n in names.values() if prefix + n not in rows]
    assert not missing, f"add rows to README's Policy reference for {missing}"
    wrong = []
    for name, field in model.model_fields.items():
        if field.default_factory is not None or field.is_required():
            continue
        default = field.default
        if _is_duration(field.metadata):
            expected = f"`{SECONDS_WRITTEN_AS_DURATIONS[default]}`"
        elif name == "requests_query":
            expected = None  # shortened in the table; the full query is in the example above
        else:
            expected = _readme_default(getattr(default, "value", default))
        cell = rows[prefix + names[name]].split(" | ")[1]
        if expected is not None and expected not in cell:
            wrong.append(f"{prefix}{name}: default {expected}, the README says {cell}")
    assert not wrong, wrong


def test_the_picture_the_readme_shows_exists() -> None:
    pictures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", README)
    assert pictures, "the README shows the status message"
    root = Path(__file__).resolve().parent.parent
    assert all((root / p).is_file() for p in pictures), pictures
