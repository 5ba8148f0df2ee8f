"""What a version may be: a tag or a build id, never markup or PromQL."""

from __future__ import annotations

import pytest

from bot.errors import UserError
from bot.release.plan import checked_version


@pytest.mark.parametrize(
    "version",
    [
        "v2.4.1",
        "2024.12.06-rc1",
        "1.2.3+build.5",
        "sha-0a1b2c3",
        "app/web:v2",
        "v2@sha256",
        "v" * 128,
    ],
)
def test_tags_and_build_ids_are_versions(version: str) -> None:
    assert checked_version(f"  {version} ") == version


@pytest.mark.parametrize(
    "version",
    [
        "",
        " ",
        "v" * 129,
        "-v2",
        "v2 beta",
        "<!channel>",
        'v2"} or up{job="x',
        "v2\\n",  # a backslash
        "v2\u202egnp",  # a bidi override
        "v2\x00",
        "v2&amp;",
    ],
)
def test_anything_else_is_refused_naming_what_a_version_may_hold(version: str) -> None:
    with pytest.raises(UserError, match="is not a version") as info:
        checked_version(version)
    assert "letters, digits and . _ - + : / @ ~" in info.value.hint
    assert len(str(info.value.args[0])) < 80  # a 10,000-character version is not echoed whole
