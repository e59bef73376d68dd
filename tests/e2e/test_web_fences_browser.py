"""Live geofences on the map in headless Debian Chromium (Playwright), with a real worker, web server, Kafka and
Elasticsearch: read-only without a token; with one, a polygon drawn with Leaflet-Geoman becomes a fence, a track
that enters it gives an alert shown on the map, and the fence is deleted from the map."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request

import orjson
import pytest

from testkit.browser import browser_page, skip_unless_browser, snapshot, wait_for
from testkit.served_map import ROOT, web_server
from testkit.worker import Worker, cleanup_topics, produce_raw, wait_count

pytestmark = [pytest.mark.integration, pytest.mark.browser]

skip_unless_browser()
if not (ROOT / "node_modules" / "@geoman-io" / "leaflet-geoman-free" / "dist").is_dir():
    pytest.skip("Leaflet-Geoman is not installed: run `npm ci` at the repository root", allow_module_level=True)

TOKEN = "browser-fences-token-0123456789"
P = (-73.95, 40.75)  # the track's position: the fence is drawn around it
T0 = 1_700_000_000_000


def fences_now(url: str) -> dict[str, dict]:
    with urllib.request.urlopen(url + "/api/geofences", timeout=10) as resp:
        return {f["id"]: f for f in json.load(resp)["features"]}


async def until(check, timeout: float = 30, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.3)


async def test_draw_a_fence_see_its_alert_and_delete_it(stack, es, kafka_admin, new_topic, agent_env, python_env,
                                                       tmp_path, output_dir):
    topic = await new_topic("mapfence", partitions=1)
    env = agent_env(topic)
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{TOKEN} fences\n")
    worker = Worker(env, tmp_path / "worker.log").start()
    web_env = {k: env[k] for k in ("IOT_TOPIC", "IOT_INDEX", "IOT_ALERTS_TOPIC")}
    web_env.update(IOT_TOKENS_FILE=str(tokens), MAP_REFRESH_MS="1000")
    sent = 0

    async def report(n: int) -> None:
        nonlocal sent
        value = orjson.dumps({"taxiId": "cab-9", "observationTime": T0 + n * 1000, "longitude": P[0],
                              "latitude": P[1]})
        await produce_raw(stack.kafka_bootstrap, topic, [(b"cab-9", value)])
        sent += 1
        assert await wait_count(es, env["IOT_INDEX"], sent, timeout=120, settle=0.5) == sent

    try:
        await report(1)  # the track is there before the fence
        with web_server(python_env, web_env, output_dir / "web_fences_browser_server.log") as url:
            async with browser_page(url + f"/#z=13&lat={P[1]}&lon={P[0]}", height=800) as (_, page, errors):
                state = await wait_for(page, "s.fences.ids.length >= 1 && s.refreshes > 0", timeout=20_000)
                # read-only: the seeded fence drawn, no editing toolbar
                assert await page.locator(".leaflet-pm-toolbar").count() == 0
                assert "jfk" in state["fences"]["ids"] and not state["fences"]["editable"]

                await page.click("#fenceBox summary")
                await page.fill("#fenceToken", TOKEN)
                await page.dispatch_event("#fenceToken", "change")
                await page.wait_for_selector(".leaflet-pm-icon-polygon", timeout=10_000)

                async def at(lon: float, lat: float) -> tuple[float, float]:
                    pt = await page.evaluate(f"() => window.geoiotMap.map.latLngToContainerPoint([{lat}, {lon}])")
                    box = await page.locator("#map").bounding_box()
                    return box["x"] + pt["x"], box["y"] + pt["y"]

                page.once("dialog", lambda dialog: asyncio.ensure_future(dialog.accept("drawn-1")))
                await page.click(".leaflet-pm-icon-polygon")
                corners = [(P[0] - 0.01, P[1] - 0.01), (P[0] + 0.01, P[1] - 0.01), (P[0] + 0.01, P[1] + 0.01),
                           (P[0] - 0.01, P[1] + 0.01), (P[0] - 0.01, P[1] - 0.01)]
                for lon, lat in corners:
                    x, y = await at(lon, lat)
                    await page.mouse.move(x, y, steps=5)  # Geoman places a vertex where its hint marker is
                    await page.mouse.click(x, y)
                    await asyncio.sleep(0.2)
                await page.screenshot(path=str(output_dir / "web_fence_drawing.png"))
                status = await page.locator("#fenceStatus").inner_text()
                await until(lambda: "drawn-1" in fences_now(url), what=f"the drawn fence stored ({status}; {errors})")
                drawn = fences_now(url)["drawn-1"]
                assert drawn["geometry"]["type"] == "Polygon" and len(drawn["geometry"]["coordinates"][0]) == 5
                await wait_for(page, "s.fences.ids.includes('drawn-1')", timeout=10_000)
                await page.screenshot(path=str(output_dir / "web_fence_drawn.png"))

                # the worker applies it; the track's next report enters it; the map shows the alert
                await until(lambda: "version=%d" % drawn["version"] in (tmp_path / "worker.log").read_text(),
                            timeout=60, what="the worker applied the fence")
                await report(2)
                await page.wait_for_function(
                    "() => document.querySelector('#alerts').innerText.includes('drawn-1')", timeout=30_000)
                text = await page.locator("#alerts").inner_text()
                assert "cab-9" in text and "drawn-1" in text
                await page.screenshot(path=str(output_dir / "web_fence_alert.png"))

                # delete it from the map
                await page.click(".leaflet-pm-icon-delete")
                x, y = await at(P[0] + 0.005, P[1])
                await page.mouse.move(x, y, steps=5)
                await page.mouse.click(x, y)
                await until(lambda: "drawn-1" not in fences_now(url), what="the fence deleted")
                await wait_for(page, "!s.fences.ids.includes('drawn-1')", timeout=10_000)
                await page.screenshot(path=str(output_dir / "web_fence_deleted.png"))
                assert errors == [] and (await snapshot(page))["fences"]["lastError"] == ""
    finally:
        worker.stop()
        await cleanup_topics(kafka_admin, [f"{topic}-"])
