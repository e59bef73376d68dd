"""The map in headless Debian Chromium (Playwright), against `python -m web` and real Elasticsearch.

No tiles (MAP_TILE_URL is empty): the page must work on its plain background. The page's debug snapshot
(``window.geoiotMap.snapshot()``) says what it drew; expected numbers are computed here from the generated documents.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from elasticsearch import AsyncElasticsearch

from agents.store.index import drop_index, ensure_index
from geoiot.config import Settings
from geoiot.schema import load_preset
from testkit.browser import browser_page, settled, skip_unless_browser, wait_for
from testkit.observations import bulk_index, walk
from testkit.processes import free_port

pytestmark = [pytest.mark.integration, pytest.mark.browser]

PRESET = load_preset("taxi")
T0 = 1_357_000_000_000
N = 6_000
ROOT = Path(__file__).resolve().parents[2]

skip_unless_browser()


def count_in(docs: list[dict[str, Any]], bbox: list[float], start: int | None = None, end: int | None = None) -> int:
    w, s, e, n = bbox
    total = 0
    for d in docs:
        lon, lat, t = d[PRESET.lon], d[PRESET.lat], d[PRESET.time]
        in_lon = (w <= lon <= e) if w <= e else (lon >= w or lon <= e)
        if in_lon and s <= lat <= n and (start is None or t >= start) and (end is None or t <= end):
            total += 1
    return total


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def server(stack: Settings, es: AsyncElasticsearch, python_env: dict[str, str],
                 output_dir: Path) -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    name = f"webmap-{uuid.uuid4().hex[:10]}"
    docs = list(walk(PRESET, N, tracks=40, start_ms=T0, step_ms=15_000, seed=3,
                     fence=("zone-a", (-73.95, 40.70, -73.90, 40.75))))
    await ensure_index(es, stack, PRESET, index=name)
    await bulk_index(es, name, PRESET, iter(docs))
    await es.indices.refresh(index=name)
    port = free_port()
    env = dict(python_env, IOT_INDEX=name, WEB_PORT=str(port), WEB_HOST="127.0.0.1", MAP_TILE_URL="",
               MAP_REFRESH_MS="1000", IOT_ALERTS_TOPIC=f"{name}-alerts")
    log = open(output_dir / "web_browser_server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "web"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                with urllib.request.urlopen(url + "/healthz", timeout=1) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                await asyncio.sleep(0.1)
        else:
            pytest.fail("python -m web did not become healthy; see test-output/web_browser_server.log")
        yield url, docs
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
        await drop_index(es, name)


async def test_map_cells_markers_heatmap_and_replay(server: tuple[str, list[dict[str, Any]]],
                                                    output_dir: Path) -> None:
    url, docs = server
    async with browser_page(url + "/#z=11&lat=40.75&lon=-73.90&view=density", height=800) as (browser, page, errors):

        # Above the threshold: cells whose counts add up to everything in view.
        state = await settled(page)
        assert state["error"] is None and state["mode"] == "cells" and state["cells"]["count"] > 10
        expected = count_in(docs, state["bbox"])
        assert expected > 1000
        assert state["cells"]["sum"] == state["total"] == expected
        assert await page.locator(".leaflet-overlay-pane canvas, .leaflet-overlay-pane svg").count() >= 1
        assert await page.locator(".legend").count() == 1
        assert f"{expected:,}" in await page.locator("#total").inner_text()
        await page.screenshot(path=str(output_dir / "web_map_cells.png"))

        # Heatmap toggle.
        await page.check("#heat")
        state = await settled(page)
        assert state["heat"] is True and state["heatPoints"] > 0 and "heat=1" in page.url
        assert await page.locator("canvas.leaflet-heatmap-layer").count() == 1
        await page.uncheck("#heat")
        await settled(page)
        assert await page.locator("canvas.leaflet-heatmap-layer").count() == 0

        # Zoom in: below the threshold, one marker per observation in view.
        here = docs[N // 2]
        await page.evaluate(f"() => window.geoiotMap.map.setView([{here[PRESET.lat]}, {here[PRESET.lon]}], 16)")
        state = await settled(page)
        expected = count_in(docs, state["bbox"])
        assert 0 < expected <= 1000, expected
        assert state["mode"] == "markers" and state["markers"] == expected == state["total"]
        assert "z=16" in page.url
        await page.screenshot(path=str(output_dir / "web_map_markers.png"))

        # Replay: a time window over the extent, then play moves it forward.
        await page.evaluate("() => window.geoiotMap.map.setView([40.75, -73.90], 11)")
        await settled(page)
        await page.check("#replay")
        state = await settled(page)
        assert state["replay"] is True and state["start"] is not None and "mode=replay" in page.url
        assert state["total"] == count_in(docs, state["bbox"], state["start"], state["end"])
        assert state["total"] < len(docs)
        await page.fill("#slider", "500")
        await page.dispatch_event("#slider", "input")
        state = await settled(page)
        assert state["total"] == count_in(docs, state["bbox"], state["start"], state["end"]) > 0
        end_before = state["end"]
        await page.click("#play")
        await wait_for(page, f"s.end > {end_before}", timeout=10_000)
        await page.click("#play")
        state = await settled(page)
        assert state["playing"] is False and state["end"] > end_before
        await page.screenshot(path=str(output_dir / "web_map_replay.png"))

        # The URL restores the view: a new page on the same hash shows the same window.
        page2 = await browser.new_page(viewport={"width": 1280, "height": 800})
        await page2.goto(page.url, wait_until="domcontentloaded")
        state2 = await settled(page2)
        assert (state2["replay"], state2["start"], state2["end"], state2["zoom"]) == \
            (True, state["start"], state["end"], state["zoom"])
        assert errors == []
