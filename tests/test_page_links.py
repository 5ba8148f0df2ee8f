"""Signed release page links: a link opens its one release until it expires, and nothing else."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest
from pydantic import SecretStr

from bot.page_links import LINK_TTL_S, LinkCheck, PageLinks, check_link, signature
from bot.redact import redact

pytestmark = pytest.mark.timeout(10)

SECRET = "page-secret-0123456789abcdef"
NOW = 1_800_000_000.0
LINKS = PageLinks(SECRET, "https://ship.example")


def parts(url: str) -> tuple[str, str, str]:
    """(path, exp, sig) of a link."""
    split = urlsplit(url)
    query = parse_qs(split.query)
    return split.path, query["exp"][0], query["mac"][0]


def test_a_link_opens_its_release_until_it_expires() -> None:
    url = LINKS.url("checkout", "4a128b186430", int(NOW) + 60)
    path, exp, sig = parts(url)

    assert url.startswith("https://ship.example/releases/checkout/4a128b186430?")
    assert path == "/releases/checkout/4a128b186430"
    assert check_link(SECRET, "checkout", "4a128b186430", exp, sig, now=NOW) is LinkCheck.VALID
    assert check_link(SECRET, "checkout", "4a128b186430", exp, sig, now=NOW + 61) is (
        LinkCheck.EXPIRED
    )


def test_a_posted_link_lasts_a_week_from_the_release_s_last_change() -> None:
    _, exp, _ = parts(LINKS.url_for("checkout", "r1", NOW))

    assert int(exp) == int(NOW) + LINK_TTL_S
    # The same record renders the same link: an unchanged status message stays unchanged.
    assert LINKS.url_for("checkout", "r1", NOW) == LINKS.url_for("checkout", "r1", NOW)


@pytest.mark.parametrize(
    ("service", "release_id", "exp_delta", "sig_edit"),
    [
        ("checkout", "other-release", 0, None),  # another release of the same service
        ("payments", "r1", 0, None),  # the same id under another service
        ("checkout", "r1", 3600, None),  # the expiry pushed later
        ("checkout", "r1", 0, "flip"),  # one hex digit changed
        ("checkout", "r1", 0, "short"),  # cut short
        ("checkout", "r1", 0, "é"),  # not even ASCII
    ],
)
def test_a_tampered_or_foreign_link_is_invalid(
    service: str, release_id: str, exp_delta: int, sig_edit: str | None
) -> None:
    _, exp, sig = parts(LINKS.url("checkout", "r1", int(NOW) + 60))
    if sig_edit == "flip":
        sig = ("0" if sig[0] != "0" else "1") + sig[1:]
    elif sig_edit == "short":
        sig = sig[:-2]
    elif sig_edit is not None:
        sig = sig_edit + sig[1:]
    exp = str(int(exp) + exp_delta)

    assert check_link(SECRET, service, release_id, exp, sig, now=NOW) is LinkCheck.INVALID


def test_an_expired_link_with_a_forged_signature_is_invalid_not_expired() -> None:
    # "Expired" tells the visitor the link was real once: only said of links we signed.
    assert check_link(SECRET, "checkout", "r1", str(int(NOW) - 10), "ab" * 32, now=NOW) is (
        LinkCheck.INVALID
    )


@pytest.mark.parametrize("exp", ["", "-5", "1e9", "12345678901234567890", " ", "٣"])
def test_a_malformed_expiry_is_invalid(exp: str) -> None:
    sig = signature(SECRET, "checkout", "r1", 10)
    assert check_link(SECRET, "checkout", "r1", exp, sig, now=NOW) is LinkCheck.INVALID


def test_another_key_or_no_key_opens_nothing() -> None:
    _, exp, sig = parts(LINKS.url("checkout", "r1", int(NOW) + 60))

    assert check_link("another-secret-entirely", "checkout", "r1", exp, sig, now=NOW) is (
        LinkCheck.INVALID
    )
    empty_sig = signature("", "checkout", "r1", int(exp))
    assert check_link("", "checkout", "r1", exp, empty_sig, now=NOW) is LinkCheck.INVALID


def test_links_are_offered_only_with_both_the_key_and_the_public_url() -> None:
    assert not PageLinks.from_settings(None, "https://ship.example")
    assert not PageLinks.from_settings(SecretStr(SECRET), None)
    assert PageLinks.from_settings(None, "https://ship.example").url_for("c", "r", NOW) == ""
    both = PageLinks.from_settings(SecretStr(SECRET), "https://ship.example/")
    assert both
    assert both.url_for("c", "r", NOW).startswith("https://ship.example/releases/c/r?exp=")


def test_odd_characters_in_the_path_are_quoted() -> None:
    url = LINKS.url("a/b?c", "r 1", int(NOW))
    assert urlsplit(url).path == "/releases/a%2Fb%3Fc/r%201"


def test_a_link_survives_the_redaction_every_chat_message_goes_through() -> None:
    url = LINKS.url_for("checkout", "4a128b186430", NOW)
    assert redact(f"📄 <{url.replace('&', '&amp;')}|Release page>") == (
        f"📄 <{url.replace('&', '&amp;')}|Release page>"
    )
