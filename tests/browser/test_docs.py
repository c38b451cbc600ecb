"""`/docs` renders with no Internet: Swagger UI's files come from calbroker itself, not a CDN.

Chromium may reach only the loopback server: every other request is refused and recorded, so
the test fails both when the page stays blank and when it merely tried to fetch something.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest
from playwright.async_api import BrowserContext, Page, Route, expect

from tests.browser.conftest import ARTIFACTS, ServedApp

pytestmark = pytest.mark.browser


@pytest.fixture
async def offline(chromium: BrowserContext) -> AsyncIterator[tuple[Page, list[str]]]:
    """A tab whose network is loopback only; yields it and the URLs it was refused."""
    refused: list[str] = []

    async def loopback_only(route: Route) -> None:
        if urlsplit(route.request.url).hostname in ("127.0.0.1", "localhost"):
            await route.continue_()
        else:
            refused.append(route.request.url)
            await route.abort("internetdisconnected")

    await chromium.route("**/*", loopback_only)
    page = await chromium.new_page()
    try:
        yield page, refused
    finally:
        await page.close()
        await chromium.unroute("**/*", loopback_only)


async def test_the_docs_render_offline(served: ServedApp, offline: tuple[Page, list[str]]) -> None:
    page, refused = offline
    await page.goto(f"{served.url}/docs")
    await expect(page.locator(".swagger-ui .info .title")).to_contain_text("calbroker")
    await expect(page.locator(".opblock-summary-path", has_text="/v1/free_busy")).to_be_visible()
    await page.screenshot(path=str(ARTIFACTS / "docs-offline.png"))
    assert refused == []
