"""What the browser tests launch (Debian's Chromium through Playwright) and when they cannot run."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from testkit.served_map import ROOT

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@asynccontextmanager
async def browser_page(url: str, height: int = 860) -> AsyncIterator[tuple[Any, Any, list[str]]]:
    """Chromium with one 1280-pixel-wide page at ``url``: (browser, page, the page's uncaught errors); closed after."""
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": height})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.goto(url, wait_until="domcontentloaded")
            yield browser, page, errors
        finally:
            await browser.close()


def skip_unless_browser() -> None:
    """Skip the calling test module when Chromium or the vendored Leaflet is missing (says which)."""
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium)", allow_module_level=True)
    if not (ROOT / "node_modules" / "leaflet" / "dist" / "leaflet.js").exists():
        pytest.skip("Leaflet is not installed: run `npm ci` at the repository root", allow_module_level=True)


# The page's one debug view of what it shows (static/main.js: window.geoiotMap.snapshot()).
SNAPSHOT = "() => window.geoiotMap.snapshot()"


def when(condition: str) -> str:
    """A page function that is true once the map is up and ``condition`` (JavaScript on its snapshot ``s``) holds."""
    return f"() => {{ const s = window.geoiotMap && window.geoiotMap.snapshot(); return !!s && !!({condition}); }}"


async def snapshot(page: Any) -> dict[str, Any]:
    return await page.evaluate(SNAPSHOT)


async def wait_for(page: Any, condition: str, timeout: float = 15_000) -> dict[str, Any]:
    """The snapshot once ``condition`` holds of it (see ``when``)."""
    await page.wait_for_function(when(condition), timeout=timeout)
    return await snapshot(page)


async def settled(page: Any) -> dict[str, Any]:
    """The snapshot after the next refresh that completes."""
    before = (await wait_for(page, "true"))["refreshes"]
    return await wait_for(page, f"s.refreshes > {before} && !s.loading")
