"""The map's now mode in headless Debian Chromium (Playwright), against `python -m web` and real Elasticsearch.

The data goes through the agents' own write path (pipeline + Elasticsearch sink: observations and the latest
index; each batch's newest documents to a live topic the web server mirrors, as the worker publishes them), for
the taxi preset and for a user's own preset (the real flight positions of
``testkit/presets.FLIGHTS_DATA``). Every expected number comes from Elasticsearch directly: the
latest documents, direct counts of filters, a track's reports in the trail's window. Screenshots go to
test-output/.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import random
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest
import pytest_asyncio
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from elasticsearch import AsyncElasticsearch

from agents.core.geofence import Geofences
from agents.core.pipeline import Incoming, Pipeline
from agents.store.index import drop_index, ensure_index
from agents.store.sink import ElasticsearchSink, es_client
from geoiot import documents, topics
from geoiot.config import DEFAULT_GEOFENCES, Settings
from geoiot.schema import InvalidRecord, Preset, load_preset, parse_row
from testkit import live
from testkit.browser import browser_page, settled, skip_unless_browser, snapshot, wait_for
from testkit.presets import FLIGHTS, FLIGHTS_DATA
from testkit.served_map import get, web_server

pytestmark = [pytest.mark.integration, pytest.mark.browser]

TAXI = load_preset("taxi")
T0 = 1_357_000_000_000
TRACKS, ROUNDS, STEP_MS = 30, 40, 15_000
STOPPED = 5  # tracks 0..4 stop reporting after round STOP_ROUND: stale at the end
STOP_ROUND = 10
JFK = (-73.7843, 40.6447)  # the centre of the default geofence
Report = dict[str, Any]

skip_unless_browser()


# --- data ---------------------------------------------------------------------------------------------

def taxi_reports() -> list[Report]:
    """Tracks moving at their own speed along a wandering heading, in time order; the first STOPPED tracks
    stop early, the last three stay near JFK (inside the default geofence)."""
    rng = random.Random(1404)
    pos, course, speed, vendor = [], [], [], []
    for t in range(TRACKS):
        if t >= TRACKS - 3:
            pos.append((JFK[0] + rng.uniform(-0.002, 0.002), JFK[1] + rng.uniform(-0.002, 0.002)))
            speed.append(0.5)
        else:
            pos.append((rng.uniform(-74.00, -73.85), rng.uniform(40.65, 40.85)))
            speed.append(rng.uniform(1.0, 25.0))
        course.append(rng.uniform(0, 360))
        vendor.append(rng.choice(["VTS", "CMT"]))
    out = []
    for r in range(ROUNDS):
        for t in range(TRACKS):
            if t < STOPPED and r >= STOP_ROUND:
                continue
            course[t] = (course[t] + rng.gauss(0, 20)) % 360
            step = speed[t] * STEP_MS / 1000
            lon, lat = pos[t]
            lat += step * math.cos(math.radians(course[t])) / 110_540
            lon += step * math.sin(math.radians(course[t])) / (111_320 * math.cos(math.radians(lat)))
            pos[t] = (lon, lat)
            out.append({"taxiId": f"cab-{t:03d}", "observationTime": T0 + r * STEP_MS, "longitude": round(lon, 6),
                        "latitude": round(lat, 6), "passengerCount": rng.randrange(1, 6), "vendor_id": vendor[t],
                        "rate_code": rng.choice([1, 2, 5])})
    return out


def flight_reports() -> tuple[list[Report], int]:
    """The flight file's rows as typed records (the preset's parse), and how many rows are bad."""
    preset = load_preset(str(FLIGHTS))
    out, bad = [], 0
    with open(FLIGHTS_DATA, newline="") as f:
        for row in csv.reader(f):
            if not row or row[0].startswith("#"):
                continue
            try:
                record, nulled = parse_row(preset, row)
            except InvalidRecord:
                bad += 1
                continue
            out.append(record)
    out.sort(key=lambda r: r[preset.time])
    return out, bad


def live_settings(stack: Settings, index: str) -> Settings:
    """The settings of a test's own live topic (geoiot.live), named after its index."""
    return dataclasses.replace(stack, iot_latest_topic=f"{index}-latest")


async def write_reports(stack: Settings, preset: Preset, index: str, reports: list[Report],
                        batch: int = 500) -> None:
    """Through the agents' pipeline and Elasticsearch sink, in arrival order, keeping each track's state; each
    batch's newest documents also to the index's live topic, as the worker publishes them (the map's now mode
    reads the web server's mirror of it)."""
    pipeline = Pipeline(preset, Geofences.load(DEFAULT_GEOFENCES), index)
    sink = ElasticsearchSink(es_client(stack.es_hosts))
    states: dict[str, Any] = {}
    newest: list[tuple[str, dict[str, Any]]] = []
    try:
        for start in range(0, len(reports), batch):
            chunk = reports[start:start + batch]
            result = pipeline.process([Incoming(orjson.dumps(r), str(r[preset.track]).encode(), "src", 0, i)
                                       for i, r in enumerate(chunk)], states.get)
            assert result.dead == []
            states.update({track: state for track, (_, state) in result.states.items()})
            assert await sink.write_bulk(result.bulk()) == []
            newest.extend(live.latest_documents(result))
    finally:
        await sink.stop()
    await live.publish_once(live_settings(stack, index), newest)


async def latest_docs(es: AsyncElasticsearch, index: str, query: dict[str, Any] | None = None) -> dict[str, Any]:
    """The latest index's documents straight from Elasticsearch (track -> source)."""
    resp = await es.search(index=documents.latest_index(index), size=10_000, query=query or {"match_all": {}})
    return {hit["_id"]: hit["_source"] for hit in resp.body["hits"]["hits"]}


@dataclasses.dataclass
class Served:
    url: str
    index: str
    preset: Preset
    reports: list[Report]


@asynccontextmanager
async def served(stack: Settings, es: AsyncElasticsearch, python_env: dict[str, str], output_dir: Path,
                 preset: Preset, schema: str, reports: list[Report], env: dict[str, str] | None = None,
                 name: str | None = None) -> AsyncIterator[Served]:
    name = name or f"webnow-{uuid.uuid4().hex[:10]}"
    # refreshed by the tests only: a new report shows in the latest and the observation indices at once
    settings = dataclasses.replace(stack, iot_index=name, iot_schema=schema, iot_index_refresh="-1")
    await ensure_index(es, settings, preset)
    try:
        await live.ensure_topic(live_settings(stack, name), partitions=1)
        await write_reports(stack, preset, name, reports)
        await es.indices.refresh(index=f"{name}*")
        full = {"IOT_INDEX": name, "IOT_SCHEMA": schema, "MAP_REFRESH_MS": "1000",
                "IOT_ALERTS_TOPIC": f"{name}-alerts", "IOT_LATEST_TOPIC": live_settings(stack, name).latest_topic,
                **(env or {})}
        with web_server(python_env, full, output_dir / f"web_now_{preset.name}_server.log") as url:
            yield Served(url, name, preset, reports)
    finally:
        await drop_index(es, name)
        await live.delete_topic(live_settings(stack, name))


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def taxi(stack: Settings, es: AsyncElasticsearch, python_env: dict[str, str],
               output_dir: Path) -> AsyncIterator[Served]:
    async with served(stack, es, python_env, output_dir, TAXI, "taxi", taxi_reports()) as s:
        yield s


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def flights(stack: Settings, es: AsyncElasticsearch, python_env: dict[str, str],
                  output_dir: Path) -> AsyncIterator[Served]:
    if not FLIGHTS_DATA.exists():
        pytest.skip(f"{FLIGHTS_DATA} is absent (the shared sample data beside the checkout)")
    reports, bad = flight_reports()
    assert bad == 22 and len(reports) > 6000  # the file's README: 22 rows split at a stray comma
    preset = load_preset(str(FLIGHTS))
    async with served(stack, es, python_env, output_dir, preset, str(FLIGHTS), reports) as s:
        yield s


# --- the page -----------------------------------------------------------------------------------------

# The drawn arrows: track, rotation (from the computed CSS transform), fill, stale, the position the page says
# it drew (its snapshot), and where the icon's centre is against where Leaflet puts that position.
ARROWS = """() => { const drawn = new Map(window.geoiotMap.snapshot().arrows.map((a) => [a.track, a]));
  return [...document.querySelectorAll('.track-icon svg.track-arrow')].map((svg) => {
  const t = getComputedStyle(svg).transform, m = new DOMMatrixReadOnly(t === 'none' ? undefined : t);
  const coords = drawn.get(svg.dataset.track).coordinates;
  const map = window.geoiotMap.map, box = svg.getBoundingClientRect();
  const mbox = map.getContainer().getBoundingClientRect();
  const p = map.latLngToContainerPoint([coords[1], coords[0]]);
  return {track: svg.dataset.track, angle: Math.atan2(m.b, m.a) * 180 / Math.PI,
          fill: svg.firstElementChild.getAttribute('fill'), stale: svg.parentElement.classList.contains('stale'),
          coords, dx: box.left + box.width / 2 - mbox.left - p.x, dy: box.top + box.height / 2 - mbox.top - p.y};
}); }"""

# The legend as shown: (colour, label) per row.
LEGEND = """() => [...document.querySelectorAll('.legend i')].map((i) =>
  [i.getAttribute('style').replace(/^background:\\s*/, ''), i.nextSibling ? i.nextSibling.textContent : ''])"""


async def legend(page: Any) -> list[tuple[str, str]]:
    return [tuple(row) for row in await page.evaluate(LEGEND)]


def legend_speed_color(rows: list[tuple[str, str]], speed: float | None) -> str:
    """The colour the speed legend ("0–2", ..., "200+", m/s) shows for ``speed`` (none: standing still)."""
    v = speed or 0
    for color, label in rows:
        low, _, high = label.partition("–")
        low = float(low.rstrip("+"))
        if low <= v and (not high or v < float(high)):
            return color
    raise AssertionError(f"the legend {rows} has no class for {v} m/s")


def in_bbox(source: dict[str, Any], bbox: list[float]) -> bool:
    g = source[documents.GEOMETRY]
    lon, lat = (g["lon"], g["lat"]) if isinstance(g, dict) else (g[0], g[1])
    return bbox[0] <= lon <= bbox[2] and bbox[1] <= lat <= bbox[3]


async def check_arrows(page: Any, latest: dict[str, Any], preset: Preset) -> list[dict[str, Any]]:
    """Every track of ``latest`` drawn once, at its position, rotated to its heading, in the legend's colour of
    its speed."""
    arrows = await page.evaluate(ARROWS)
    rows = await legend(page)
    assert len(rows) == 8 and rows[0][1] == "0–2" and rows[-1][1].endswith("+"), rows
    assert sorted(a["track"] for a in arrows) == sorted(latest)
    headed = 0
    for a in arrows:
        doc = latest[a["track"]]
        assert a["coords"] == [doc[preset.lon], doc[preset.lat]]
        assert abs(a["dx"]) < 1.5 and abs(a["dy"]) < 1.5, a  # drawn where the position is
        heading = doc.get(documents.HEADING)
        assert a["fill"] == legend_speed_color(rows, doc.get(documents.SPEED)), (a, doc.get(documents.SPEED))
        if heading is None:
            assert a["angle"] == 0
            continue
        headed += 1
        diff = (a["angle"] - heading) % 360
        assert min(diff, 360 - diff) < 0.01, (a, heading)
    assert headed >= len(latest) * 0.8
    return arrows


# --- tests: taxi --------------------------------------------------------------------------------------

async def test_now_mode_draws_each_track_along_its_heading_faded_when_stale(taxi: Served, es: AsyncElasticsearch,
                                                                            output_dir: Path) -> None:
    latest = await latest_docs(es, taxi.index)
    assert len(latest) == TRACKS
    async with browser_page(taxi.url + "/") as (_, page, errors):
        await wait_for(page, "s.mode === 'now' && s.markers > 0")
        state = await settled(page)
        assert state["error"] is None and "view=now" in page.url and "mode=live" in page.url
        in_view = {t: d for t, d in latest.items() if in_bbox(d, state["bbox"])}
        assert len(in_view) == TRACKS  # the first view fits the data's extent
        assert state["markers"] == state["total"] == TRACKS
        arrows = await check_arrows(page, in_view, taxi.preset)

        # stale: no report for staleMs (default /api/config staleMs) before the newest report
        clock = max(d[TAXI.time] for d in latest.values())
        assert state["clock"] == clock and state["staleMs"] == 300_000
        stale = {t for t, d in latest.items() if clock - d[TAXI.time] > 300_000}
        assert stale == {f"cab-{t:03d}" for t in range(STOPPED)}
        assert {a["track"] for a in arrows if a["stale"]} == stale
        assert state["staleCount"] == STOPPED and f"{STOPPED} stale" in await page.locator("#total").inner_text()
        assert await page.evaluate("() => getComputedStyle(document.querySelector('.track-icon.stale')).opacity") \
            == "0.35"
        await page.screenshot(path=str(output_dir / "web_now_markers.png"))

        # a longer stale time (the panel's control, kept in the URL) un-fades them
        await page.fill("#staleMin", "60")
        await page.dispatch_event("#staleMin", "change")
        assert "stale=60" in page.url
        assert [a for a in await page.evaluate(ARROWS) if a["stale"]] == []

        # by fence: the tracks inside the JFK fence in one colour, the others grey
        await page.select_option("#colorBy", "fence")
        arrows = await page.evaluate(ARROWS)
        inside = {t for t, d in latest.items() if d.get(documents.GEOFENCES)}
        fences = {f for d in latest.values() for f in d.get(documents.GEOFENCES) or []}
        assert len(inside) == 3 and len(fences) == 1
        shown = {label: color for color, label in await legend(page)}
        assert set(shown) == fences | {"none"} and len(set(shown.values())) == 2, shown
        [fence] = fences
        assert {a["track"] for a in arrows if a["fill"] == shown[fence]} == inside
        assert {a["fill"] for a in arrows if a["track"] not in inside} == {shown["none"]} == {"#8c8c8c"}
        assert "color=fence" in page.url
        assert errors == []


async def test_a_filter_from_the_panel_selects_what_elasticsearch_counts(taxi: Served, es: AsyncElasticsearch,
                                                                         output_dir: Path) -> None:
    query = {"bool": {"filter": [{"term": {"vendor_id": "VTS"}}, {"range": {"passengerCount": {"gte": 3}}}]}}
    expected = await latest_docs(es, taxi.index, query)
    direct = (await es.count(index=documents.latest_index(taxi.index), query=query)).body["count"]
    assert 0 < direct == len(expected) < TRACKS
    async with browser_page(taxi.url + "/") as (browser, page, errors):
        await wait_for(page, "s.mode === 'now' && s.markers > 0")
        # the panel offers the preset's fields with their types
        options = await page.locator("#filterField option").all_inner_texts()
        assert "vendor_id (string)" in options and "passengerCount (int)" in options and "speed_mps (float)" in options
        await page.select_option("#filterField", "vendor_id")
        await page.click("#addFilter")
        await page.fill(".filter-row[data-field=vendor_id] .f-values", "VTS")
        await page.select_option("#filterField", "passengerCount")
        await page.click("#addFilter")
        await page.fill(".filter-row[data-field=passengerCount] .f-min", "3")
        await page.click("#applyFilters")
        state = await settled(page)
        assert state["where"] == ["vendor_id:VTS", "passengerCount:>=3"] and state["error"] is None
        assert state["markers"] == state["total"] == direct
        await check_arrows(page, expected, taxi.preset)
        assert "where=vendor_id%3AVTS" in page.url and "where=passengerCount%3A%3E%3D3" in page.url
        assert f"{direct} tracks in view" in await page.locator("#total").inner_text()
        await page.screenshot(path=str(output_dir / "web_now_filtered.png"))

        # the URL carries the filters: a new page on it shows the same tracks, with the panel filled in
        page2 = await browser.new_page(viewport={"width": 1280, "height": 860})
        await page2.goto(page.url, wait_until="domcontentloaded")
        state2 = await wait_for(page2, "s.mode === 'now' && s.refreshes > 0")
        assert state2["where"] == state["where"] and state2["markers"] == direct
        assert await page2.input_value(".filter-row[data-field=vendor_id] .f-values") == "VTS"
        assert await page2.input_value(".filter-row[data-field=passengerCount] .f-min") == "3"

        # a bad value is the server's 400, shown in the panel, naming the field
        await page2.fill(".filter-row[data-field=passengerCount] .f-min", "three")
        await page2.click("#applyFilters")
        await page2.wait_for_function("() => document.querySelector('#filterError').textContent !== ''")
        assert "passengerCount" in await page2.locator("#filterError").inner_text()

        # the density view takes the same filters: its total is Elasticsearch's count of the observations
        obs_direct = (await es.count(index=taxi.index, query=query)).body["count"]
        await page.select_option("#viewMode", "density")
        state = await settled(page)
        assert state["mode"] in ("cells", "markers") and state["total"] == obs_direct > direct
        await page.select_option("#viewMode", "now")
        await settled(page)

        # cleared: every track again
        await page.click("#clearFilters")
        state = await settled(page)
        assert state["where"] == [] and state["markers"] == TRACKS and "where=" not in page.url

        # ranges on a float and on a time field (a datetime-local input, UTC)
        latest = await latest_docs(es, taxi.index)
        clock = max(d[TAXI.time] for d in latest.values())
        since = clock - 120_000
        query = {"bool": {"filter": [{"range": {documents.SPEED: {"gte": 5.0, "lte": 20.0}}},
                                     {"range": {TAXI.time: {"gte": since}}}]}}
        direct = (await es.count(index=documents.latest_index(taxi.index), query=query)).body["count"]
        assert 0 < direct < TRACKS - STOPPED
        for field in (documents.SPEED, TAXI.time):
            await page.select_option("#filterField", field)
            await page.click("#addFilter")
        await page.fill(f".filter-row[data-field={documents.SPEED}] .f-min", "5")
        await page.fill(f".filter-row[data-field={documents.SPEED}] .f-max", "20")
        iso = datetime.fromtimestamp(since / 1000, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
        await page.fill(f".filter-row[data-field={TAXI.time}] .f-min", iso)
        await page.click("#applyFilters")
        state = await settled(page)
        assert state["where"] == [f"{documents.SPEED}:5..20", f"{TAXI.time}:>={iso}"]
        assert state["markers"] == state["total"] == direct
        await check_arrows(page, await latest_docs(es, taxi.index, query), taxi.preset)

        # expressions the inputs cannot show (a strict bound, a float equality) come back from the URL as typed
        page3 = await browser.new_page(viewport={"width": 1280, "height": 860})
        await page3.goto(taxi.url + "/#view=now&where=speed_mps%3A%3E5&where=rate_code%3A1%7C2",
                         wait_until="domcontentloaded")
        await wait_for(page3, "s.mode === 'now' && s.refreshes > 0")
        assert await page3.input_value(".filter-row[data-field=speed_mps] .f-raw") == ">5"
        assert await page3.input_value(".filter-row[data-field=rate_code] .f-values") == "1|2"
        query = {"bool": {"filter": [{"range": {documents.SPEED: {"gt": 5}}}, {"terms": {"rate_code": [1, 2]}}]}}
        direct = (await es.count(index=documents.latest_index(taxi.index), query=query)).body["count"]
        state3 = await snapshot(page3)
        assert state3["where"] == ["speed_mps:>5", "rate_code:1|2"] and state3["markers"] == direct > 0
        await page3.click("#applyFilters")  # applied again unchanged: the same
        state3 = await settled(page3)
        assert state3["where"] == ["speed_mps:>5", "rate_code:1|2"] and state3["markers"] == direct
        assert errors == []


def metres(a: tuple[float, float], b: tuple[float, float]) -> float:
    (lon1, lat1), (lon2, lat2) = a, b
    r = math.pi / 180
    x = (math.sin((lat2 - lat1) * r / 2) ** 2
         + math.cos(lat1 * r) * math.cos(lat2 * r) * math.sin((lon2 - lon1) * r / 2) ** 2)
    return 2 * 6371008.8 * math.asin(min(1.0, math.sqrt(x)))


async def check_trail(page: Any, es: AsyncElasticsearch, served: Served, track: str, minutes: float,
                      fields: list[str], where: list[dict[str, Any]] = ()) -> dict[str, Any]:
    """Click the track's arrow: its popup lists ``fields`` and its trail is the track's reports of the last
    ``minutes`` that pass ``where`` (straight from Elasticsearch), one segment per pair, coloured by the
    pair's speed."""
    preset = served.preset
    await page.locator(f'.track-icon:has(svg[data-track="{track}"])').dispatch_event("click")
    await page.wait_for_selector(".leaflet-popup-content table")
    shown = await page.locator(".leaflet-popup-content tr").evaluate_all("(rows) => rows.map((r) => r.dataset.field)")
    assert set(fields) <= set(shown), (fields, shown)
    trail = (await wait_for(page, f"s.trail && s.trail.track === {orjson.dumps(track).decode()} && !s.trail.loading"))[
        "trail"]
    end = (await latest_docs(es, served.index))[track][preset.time]
    start = end - round(minutes * 60_000)
    resp = await es.search(index=served.index, size=10_000, sort=[{preset.time: "asc"}],
                           query={"bool": {"filter": [{"term": {preset.track: track}},
                                                      {"range": {preset.time: {"gte": start, "lte": end}}},
                                                      *where]}})
    hits = [h["_source"] for h in resp.body["hits"]["hits"]]
    assert len(hits) >= 3
    assert (trail["start"], trail["end"], trail["points"], trail["segments"]) == (start, end, len(hits), len(hits) - 1)
    speeds = [metres((a[preset.lon], a[preset.lat]), (b[preset.lon], b[preset.lat]))
              / ((b[preset.time] - a[preset.time]) / 1000) for a, b in zip(hits, hits[1:])]
    rows = await legend(page)
    colors = [legend_speed_color(rows, v) for v in speeds]
    assert trail["colors"] == colors
    assert [round(v, 6) for v in trail["speeds"]] == [round(v, 6) for v in speeds]
    drawn = await page.locator("path.trail-segment").evaluate_all("(ps) => ps.map((p) => p.getAttribute('stroke'))")
    assert drawn == colors
    assert len(set(colors)) >= 1
    return trail


async def test_a_clicked_track_shows_its_popup_and_draws_its_trail(taxi: Served, es: AsyncElasticsearch,
                                                                   output_dir: Path) -> None:
    async with browser_page(taxi.url + "/#z=12&lat=40.75&lon=-73.93&trail=5") as (_, page, errors):
        await wait_for(page, "s.mode === 'now' && s.markers > 0")
        state = await settled(page)
        latest = await latest_docs(es, taxi.index)
        fast = max((t for t, d in latest.items() if in_bbox(d, state["bbox"]) and t >= f"cab-{STOPPED:03d}"),
                   key=lambda t: latest[t].get(documents.SPEED) or 0)
        await check_trail(page, es, taxi, fast, 5, list(TAXI.names) + [documents.SPEED, documents.HEADING])
        text = await page.locator(".leaflet-popup-content").inner_text()
        assert fast in text and str(latest[fast]["passengerCount"]) in text and latest[fast]["vendor_id"] in text
        await page.screenshot(path=str(output_dir / "web_now_trail.png"))
        # a click on the map clears it
        await page.mouse.click(200, 780)
        await wait_for(page, "s.trail === null")
        assert await page.locator("path.trail-segment").count() == 0
        assert errors == []


async def test_zoomed_out_the_now_mode_counts_current_tracks_per_cell(taxi: Served, python_env: dict[str, str],
                                                                    es: AsyncElasticsearch, output_dir: Path) -> None:
    latest = await latest_docs(es, taxi.index)
    env = {"IOT_INDEX": taxi.index, "MAP_REFRESH_MS": "1000", "MAP_MARKER_THRESHOLD": "10",
           "IOT_ALERTS_TOPIC": f"{taxi.index}-alerts", "IOT_LATEST_TOPIC": f"{taxi.index}-latest"}
    with web_server(python_env, env, output_dir / "web_now_cells_server.log") as url:
        status, body = get(url + "/api/aggregate?source=latest&zoom=11")
        if status == 400 and b"source" in body:  # the API side of issue 14 item 1 (branch webapi) lacks it yet
            pytest.skip(f"this server has no /api/aggregate?source=latest: {body[:120]!r}")
        assert status == 200, body[:300]
        async with browser_page(url + "/#z=11&lat=40.75&lon=-73.90") as (_, page, errors):
            await wait_for(page, "s.mode === 'now-cells'")
            state = await settled(page)
            in_view = [t for t, d in latest.items() if in_bbox(d, state["bbox"])]
            assert len(in_view) > 10
            cells = state["cells"]
            assert cells["sum"] == state["total"] == len(in_view) and cells["count"] > 1
            assert "tracks per cell" in await page.locator(".legend").inner_text()
            assert await page.locator(".track-icon").count() == 0
            await page.screenshot(path=str(output_dir / "web_now_cells.png"))
            # closer in, at most the threshold: arrows again
            doc = latest[f"cab-{TRACKS - 1:03d}"]  # at JFK, with two others
            await page.evaluate(f"() => window.geoiotMap.map.setView([{doc[TAXI.lat]}, {doc[TAXI.lon]}], 15)")
            state = await settled(page)
            in_view = [t for t, d in latest.items() if in_bbox(d, state["bbox"])]
            assert 0 < len(in_view) <= 10 and state["mode"] == "now" and state["markers"] == len(in_view)
            assert errors == []


async def move_and_see(page: Any, es: AsyncElasticsearch, stack: Settings, index: str, doc: dict[str, Any],
                       by: tuple[float, float], passengers: int, timeout: float) -> Report:
    """Write a newer report of ``doc``'s track, moved ``by`` (lon, lat) degrees; its arrow must be drawn there."""
    track = doc[TAXI.track]
    moved = {TAXI.track: track, TAXI.time: doc[TAXI.time] + STEP_MS, TAXI.lon: round(doc[TAXI.lon] + by[0], 6),
             TAXI.lat: round(doc[TAXI.lat] + by[1], 6), "passengerCount": passengers, "vendor_id": doc["vendor_id"]}
    await write_reports(stack, TAXI, index, [moved])
    await es.indices.refresh(index=f"{index}*")
    await wait_for(page, f"s.arrows.some((a) => a.track === '{track}' && a.time === {moved[TAXI.time]})",
                   timeout=timeout)
    arrows = {a["track"]: a for a in await page.evaluate(ARROWS)}
    assert arrows[track]["coords"] == [moved[TAXI.lon], moved[TAXI.lat]]
    assert abs(arrows[track]["dx"]) < 1.5 and abs(arrows[track]["dy"]) < 1.5
    return moved


async def test_polling_keeps_the_markers_current_when_the_event_stream_fails(taxi: Served, es: AsyncElasticsearch,
                                                                             stack: Settings) -> None:
    async with browser_page("about:blank") as (_, page, errors):
        await page.route("**/api/events**", lambda route: route.fulfill(status=503, body="down"))
        await page.goto(taxi.url + "/", wait_until="domcontentloaded")
        polls = (await wait_for(page, "s.mode === 'now' && s.stream.state === 'failed'"))["polls"]
        assert polls >= 1
        assert "polling" in await page.locator("#connection").inner_text()
        # a newer report of one track: the next poll moves its arrow, and its open trail follows it
        latest = await latest_docs(es, taxi.index)
        track = f"cab-{TRACKS - 4:03d}"
        doc = latest[track]
        await page.locator(f'.track-icon:has(svg[data-track="{track}"])').dispatch_event("click")
        before = (await wait_for(page, "s.trail && s.trail.points > 0"))["trail"]
        assert before["end"] == doc[TAXI.time] and before["points"] == ROUNDS  # all within the last 15 min
        moved = await move_and_see(page, es, stack, taxi.index, doc, (0.001, 0.001), 1, timeout=15_000)
        assert (await snapshot(page))["polls"] > polls
        after = (await wait_for(page, f"s.trail.end === {moved[TAXI.time]} && !s.trail.loading"))["trail"]
        assert after["points"] == ROUNDS + 1 and after["segments"] == ROUNDS
        assert await page.locator("path.trail-segment").count() == ROUNDS
        assert errors == []


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def taxi_pushed(stack: Settings, es: AsyncElasticsearch, kafka_admin: AIOKafkaAdminClient,
                      python_env: dict[str, str], output_dir: Path) -> AsyncIterator[Served]:
    """The taxi data on a server whose page never polls within a test (MAP_REFRESH_MS one hour), whose event
    views refresh twice a second, with an existing alerts topic."""
    name = f"webpush-{uuid.uuid4().hex[:10]}"
    [created] = await topics.ensure(kafka_admin, [topics.TopicSpec(f"{name}-alerts", 1)])
    assert created.status == "created", created
    try:
        async with served(stack, es, python_env, output_dir, TAXI, "taxi", taxi_reports(), name=name,
                          env={"MAP_REFRESH_MS": "3600000", "WEB_SSE_REFRESH": "0.5"}) as s:
            yield s
    finally:
        await topics.delete(kafka_admin, [f"{name}-alerts"])


async def test_pushed_alerts_and_positions_reach_the_page_without_a_poll(taxi_pushed: Served, es: AsyncElasticsearch,
                                                                          stack: Settings, output_dir: Path) -> None:
    served = taxi_pushed
    async with browser_page("about:blank") as (_, page, errors):
        requests: list[str] = []
        page.on("request", lambda r: requests.append(r.url))
        await page.goto(served.url + "/", wait_until="domcontentloaded")
        await wait_for(page, "s.stream.state === 'open' && s.stream.first && s.mode === 'now' && "
                       f"s.markers === {TRACKS}", timeout=20_000)
        assert "live (pushed)" in await page.locator("#connection").inner_text()
        await page.wait_for_timeout(1500)  # the first refresh and its alerts poll are over
        mark = len(requests)

        # an alert on the topic the server reads: in the panel, from the stream
        alert = {"track": "cab-007", "fence": "jfk", "event": "enter", "time": T0 + ROUNDS * STEP_MS,
                 "lon": JFK[0], "lat": JFK[1]}
        producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(f"{served.index}-alerts", orjson.dumps(alert), key=b"cab-007")
        finally:
            await producer.stop()
        item = page.locator('#alerts li[data-via="sse"]', has_text="cab-007")
        await item.wait_for(timeout=20_000)
        assert "enter jfk: cab-007" in await item.inner_text()

        # a newer report of one track: its arrow moves, pushed
        latest = await latest_docs(es, served.index)
        track = f"cab-{TRACKS - 5:03d}"
        doc = latest[track]
        await move_and_see(page, es, stack, served.index, doc, (-0.002, 0.001), 2, timeout=20_000)

        api = [u for u in requests[mark:] if "/api/" in u]
        assert api == [], api  # neither came from a poll
        state = await snapshot(page)
        assert state["polls"] <= 1 and state["stream"]["pushes"] >= 2 and state["stream"]["alerts"] >= 1
        await page.screenshot(path=str(output_dir / "web_now_pushed.png"))

        # a filter goes into the stream's subscription too, which resumes after the last event seen
        query = {"term": {"vendor_id": "VTS"}}
        direct = (await es.count(index=documents.latest_index(served.index), query=query)).body["count"]
        mark = len(requests)
        await page.select_option("#filterField", "vendor_id")
        await page.click("#addFilter")
        await page.fill(".filter-row[data-field=vendor_id] .f-values", "VTS")
        await page.click("#applyFilters")
        await wait_for(page, f"s.stream.state === 'open' && s.stream.first && s.markers === {direct}", timeout=20_000)
        streams = [u for u in requests[mark:] if "/api/events?" in u]
        assert len(streams) == 1 and "where=vendor_id%3AVTS" in streams[0] and "last_event_id=" in streams[0]
        assert sorted(a["track"] for a in await page.evaluate(ARROWS)) == \
            sorted(await latest_docs(es, served.index, query))
        assert errors == []


# --- tests: a user's own preset (flights) -------------------------------------------------------------

async def test_flights_preset_markers_popups_filters_and_trails(flights: Served, es: AsyncElasticsearch,
                                                                output_dir: Path) -> None:
    preset = flights.preset
    latest = await latest_docs(es, flights.index)
    assert len(latest) == len({r[preset.track] for r in flights.reports}) == 25
    async with browser_page(flights.url + "/") as (_, page, errors):
        await wait_for(page, "s.mode === 'now' && s.markers > 0")
        state = await settled(page)
        assert state["error"] is None and state["markers"] == 25
        await check_arrows(page, latest, preset)
        options = await page.locator("#filterField option").all_inner_texts()
        for name in ("object_id (string)", "altitude (int)", "heading (int)", "speed (int)", "timestamp (time)"):
            assert name in options
        assert not any(o.startswith("vendor_id") for o in options)
        await page.screenshot(path=str(output_dir / "web_now_flights.png"))

        # the filter panel on the flight's own field: altitude at least its median
        altitudes = sorted(d["altitude"] for d in latest.values())
        cut = altitudes[len(altitudes) // 2]
        query = {"range": {"altitude": {"gte": cut}}}
        direct = (await es.count(index=documents.latest_index(flights.index), query=query)).body["count"]
        assert 0 < direct < 25
        await page.select_option("#filterField", "altitude")
        await page.click("#addFilter")
        await page.fill(".filter-row[data-field=altitude] .f-min", str(cut))
        await page.click("#applyFilters")
        state = await settled(page)
        assert state["where"] == [f"altitude:>={cut}"] and state["markers"] == state["total"] == direct
        await check_arrows(page, await latest_docs(es, flights.index, query), preset)

        # popup with the flight's fields and values, and its trail
        flying = max((t for t, d in latest.items() if d["altitude"] >= cut), key=lambda t: latest[t]["altitude"])
        await page.fill("#trailMin", "30")
        await page.dispatch_event("#trailMin", "change")
        assert "trail=30" in page.url
        await check_trail(page, es, flights, flying, 30, list(preset.names), [query])
        cells = dict(await page.locator(".leaflet-popup-content tr").evaluate_all(
            "(rows) => rows.map((r) => [r.dataset.field, r.lastElementChild.textContent])"))
        doc = latest[flying]
        for name in ("altitude", "heading", "speed", "unnamed"):
            assert cells[name] == str(doc[name]), (name, cells)
        assert cells["object_id"] == flying
        await page.screenshot(path=str(output_dir / "web_now_flights_trail.png"))
        assert errors == []
