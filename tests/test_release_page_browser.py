"""The release page in a real browser: Debian's chromium, headless, driven by Playwright, against
the app `serve` runs on a real Redis, with the release driven by the product (slash commands and
the controller). The page must render the release, follow it without a reload, and fit a phone.
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis.asyncio as aioredis
from playwright.async_api import Browser, ConsoleMessage, Page, async_playwright, expect

from bot.page_links import PageLinks
from bot.release.policy import parse_policy
from bot.release.rollout import Release
from tests.support.procs import require_binary
from tests.support.slack_rig import ALICE, POLICY, SlackRig, running_rig, wait_until

pytestmark = pytest.mark.timeout(90)

SECRET = "browser-page-secret-0123456789ab"
PUBLIC = "https://ship.example"
# Holds long enough that only the test moves the release, while the controller judges a round
# every 100 ms (so the canary-vs-control table has numbers).
HOLDING = parse_policy(POLICY.replace("hold: 300ms", "hold: 1h"), "release page in a browser")
PHONE = {"width": 375, "height": 812}
WAIT_MS = 10_000


@pytest.fixture
async def chromium() -> AsyncIterator[Browser]:
    """Debian's chromium (no browser download is possible: Playwright drives the system one)."""
    executable = require_binary("chromium")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=executable,
            headless=True,
            # Root in a container has no user namespace for the sandbox; /dev/shm is small.
            args=["--no-sandbox", "--disable-dev-shm-usage"],
        )
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture
async def rig(redis_url: str, redis_client: aioredis.Redis) -> AsyncIterator[SlackRig]:
    settings = {"SHIPWATCH_PAGE_SECRET": SECRET, "SHIPWATCH_PUBLIC_URL": PUBLIC}
    async with running_rig(redis_url, policy=HOLDING, extra_settings=settings) as rig:
        yield rig


async def judged_release(rig: SlackRig) -> Release:
    """checkout v2 started from Slack and judged for a few rounds, still at its first step."""
    delivery = await rig.command("/deploy", "checkout v2 --stable v1", ALICE)
    assert delivery.status == 200
    await rig.reply(delivery)
    rig.start_controller()

    async def judged() -> bool:
        return bool((await rig.release("checkout")).last_checks)

    await wait_until(judged, "a judged round")
    return await rig.release("checkout")


def page_url(rig: SlackRig, release: Release) -> str:
    """The signed link, as the status message posts it, on the test server."""
    posted = urlsplit(PageLinks(SECRET, PUBLIC).url_for("checkout", release.id, release.updated_at))
    return rig.url(f"{posted.path}?{posted.query}")


async def open_page(browser: Browser, url: str, **context: object) -> tuple[Page, list[str]]:
    """The page loaded, and the console's errors (a CSP violation lands there)."""
    page = await (await browser.new_context(**context)).new_page()  # type: ignore[arg-type]
    errors: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        # A browser asks for /favicon.ico by itself; the page has none, and needs none.
        if message.type == "error" and not message.location["url"].endswith("/favicon.ico"):
            errors.append(f"{message.text} at {message.location['url']}")

    page.on("console", on_console)
    response = await page.goto(url)
    assert response is not None and response.status == 200
    return page, errors


async def test_the_page_renders_the_release(rig: SlackRig, chromium: Browser) -> None:
    release = await judged_release(rig)
    page, errors = await open_page(chromium, page_url(rig, release))

    await expect(page.locator("h1")).to_contain_text("checkout")
    await expect(page.locator("#weight")).to_have_text("1%")
    await expect(page.locator("#ladder li")).to_have_count(4)
    await expect(page.locator("#ladder li.current")).to_contain_text("1%")
    await expect(page.locator("#checks")).to_be_visible()
    await expect(page.locator("#checks")).to_contain_text("error_rate")
    await expect(page.locator("#timeline")).to_be_visible()
    await expect(page.locator("#timeline")).to_contain_text("started the release")
    await expect(page.locator("svg.chart")).to_be_visible()
    # The inline style applied (the CSP let its nonce through): the ladder is a flex row.
    display = await page.locator("#ladder").evaluate("e => getComputedStyle(e).display")
    assert display == "flex"
    assert not errors, "\n".join(errors)


async def test_the_page_follows_the_release_without_a_reload(
    rig: SlackRig, chromium: Browser
) -> None:
    release = await judged_release(rig)
    page, errors = await open_page(chromium, page_url(rig, release))
    await expect(page.locator("html.live")).to_have_count(1)  # the script runs
    await page.evaluate("window.sameDocument = true")

    advanced = await rig.command("/advance", "checkout", ALICE)
    assert advanced.status == 200

    await expect(page.locator("#weight")).to_have_text("10%", timeout=WAIT_MS)
    await expect(page.locator("#ladder li.current")).to_contain_text("10%")
    await expect(page.locator("#timeline")).to_contain_text("advanced")
    assert await page.evaluate("window.sameDocument === true")  # no reload happened

    rollback = await rig.command("/rollback", "checkout seen enough", ALICE)
    assert rollback.status == 200
    await expect(page.locator("#release")).to_have_attribute(
        "data-state", "rolled_back", timeout=WAIT_MS
    )
    await expect(page.locator(".why")).to_contain_text("seen enough")
    assert await page.evaluate("window.sameDocument === true")
    assert not errors, "\n".join(errors)


def png_size(png: bytes) -> tuple[int, int]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    return width, height


# Elements whose right edge passes the viewport, outside the boxes that scroll by design.
OVERFLOWING = """() => {
  const width = window.innerWidth;
  return [...document.querySelectorAll("body *")]
    .filter(e => !e.closest(".scroll"))
    .filter(e => e.getBoundingClientRect().right > width + 0.5)
    .map(e => e.tagName + (e.id ? "#" + e.id : "") + "." + e.className);
}"""


async def test_nothing_overflows_a_phone(rig: SlackRig, chromium: Browser, tmp_path: Path) -> None:
    release = await judged_release(rig)
    # Long words and a long version are the usual culprits on a narrow screen.
    await rig.command("/advance", "checkout", ALICE)
    page, errors = await open_page(
        chromium, page_url(rig, release), viewport=PHONE, device_scale_factor=1
    )
    await expect(page.locator("#checks")).to_be_visible()

    scroll_width = await page.evaluate("document.documentElement.scrollWidth")
    inner_width = await page.evaluate("window.innerWidth")
    assert scroll_width <= inner_width == PHONE["width"]
    assert await page.evaluate(OVERFLOWING) == []
    # A full-page screenshot is as wide as what can be scrolled to: the phone's width.
    shot = await page.screenshot(full_page=True, path=str(tmp_path / "phone.png"))
    width, height = png_size(shot)
    assert width == PHONE["width"]
    assert height >= PHONE["height"] // 2
    # The wide table scrolls inside its own box rather than the page.
    box = page.locator("#checks").locator("xpath=..")
    assert await box.evaluate("e => e.clientWidth <= window.innerWidth")
    assert not errors, "\n".join(errors)
