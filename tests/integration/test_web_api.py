"""The web API against the real Elasticsearch, over a known generated data set.

Expected answers are computed here from the generated documents with python-geohash and plain
comparisons, never from the server's code.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import json
import os
import socket
import subprocess
import sys
import uuid
import zlib
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import geohash
import jsonschema
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer
from aiokafka import AIOKafkaProducer
from elasticsearch import AsyncElasticsearch

from agents.store.index import drop_index, ensure_index
from geoiot import documents
from geoiot.config import Settings
from testkit.health import wait_healthy
from geoiot.schema import load_preset
from testkit.observations import bulk_index, document, on_grid, walk
from testkit.web_client import Loaded as Data, web_client
from web import openapi
from web.app import METRICS, init_app
from web.geo import precision_for_zoom

pytestmark = pytest.mark.integration

PRESET = load_preset("taxi")
T0 = 1_357_084_800_000 - 3 * 3_600_000  # 2013-01-01T21:00Z: the walk crosses midnight, so two daily indices
N = 3_000
FENCE_BOX = (-73.90, 40.70, -73.85, 40.75)
VIEW = (-74.0, 40.65, -73.8, 40.85)  # the tests' bbox, inside the generated area
DATELINE = [(179.5, 1.0), (179.9, -2.0), (-179.7, 0.5), (-179.2, 3.0), (178.0, 0.0), (-178.0, 0.0)]


def in_box(lon: float, lat: float, box: tuple[float, float, float, float]) -> bool:
    w, s, e, n = box
    in_lon = (w <= lon <= e) if w <= e else (lon >= w or lon <= e)
    return in_lon and s <= lat <= n


def make_docs() -> list[dict[str, Any]]:
    docs = list(walk(PRESET, N, tracks=30, start_ms=T0, step_ms=10_000, seed=7, fence=("zone-a", FENCE_BOX)))
    # The box edges must not coincide with a point up to Elasticsearch's encoding (~1e-7 degree).
    for d in docs:
        for edge in VIEW:
            assert abs(d[PRESET.lon] - edge) > 1e-6 and abs(d[PRESET.lat] - edge) > 1e-6
    for i, (lon, lat) in enumerate(DATELINE):
        lon, lat = on_grid(lon, lat)
        docs.append(document(PRESET, f"pacific-{i}", T0 + i * 1000, lon, lat, []))
    return docs


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def data(stack: Settings, es: AsyncElasticsearch) -> AsyncIterator[Data]:
    name = f"webtest-{uuid.uuid4().hex[:10]}"
    settings = dataclasses.replace(stack, iot_index=name)
    docs = make_docs()
    await ensure_index(es, settings, PRESET, index=name)
    assert await bulk_index(es, name, PRESET, iter(docs)) == len(docs)
    await es.indices.refresh(index=name)
    yield Data(docs, settings)
    await drop_index(es, name)


async def get_json(client: TestClient, path: str, status: int = 200, **query: Any) -> Any:
    resp = await client.get(path, params=query)
    body = await resp.json()
    assert resp.status == status, body
    assert resp.content_type == "application/json"
    return body


def expected_cells(docs: list[dict[str, Any]], box: tuple[float, float, float, float], precision: int,
                   start: int | None = None, end: int | None = None, fence: str | None = None) -> Counter[str]:
    cells: Counter[str] = Counter()
    for d in docs:
        t = d[PRESET.time]
        if not in_box(d[PRESET.lon], d[PRESET.lat], box):
            continue
        if (start is not None and t < start) or (end is not None and t > end):
            continue
        if fence is not None and fence not in d[documents.GEOFENCES]:
            continue
        cells[geohash.encode(d[PRESET.lat], d[PRESET.lon], precision)] += 1
    return cells


def schema(name: str) -> dict[str, Any]:
    return openapi.document()["components"]["schemas"][name]


@pytest.mark.parametrize("precision", [3, 5, 6, 7])
async def test_cell_counts_equal_direct_counts_and_polygons_are_the_cells(client: TestClient, data: Data,
                                                                          precision: int) -> None:
    start, end = data.docs[300][PRESET.time], data.docs[2400][PRESET.time]  # exact document times: inclusive
    body = await get_json(client, "/api/aggregate", bbox=",".join(map(str, VIEW)), precision=precision,
                          start=start, end=end)
    jsonschema.validate(body, schema("CellCollection"))
    expected = expected_cells(data.docs, VIEW, precision, start, end)
    got = {f["properties"]["geohash"]: f["properties"]["count"] for f in body["features"]}
    assert got == dict(expected)
    assert body["total"] == sum(expected.values()) and body["truncated"] is False
    for f in body["features"]:
        b = geohash.bbox(f["properties"]["geohash"])
        ring = f["geometry"]["coordinates"][0]
        assert ring == [[b["w"], b["s"]], [b["e"], b["s"]], [b["e"], b["n"]], [b["w"], b["n"]], [b["w"], b["s"]]]
        lon, lat = f["properties"]["centroid"]
        assert b["w"] <= lon <= b["e"] and b["s"] <= lat <= b["n"]


async def test_zoom_maps_to_the_documented_precision_and_iso_times_work(client: TestClient, data: Data) -> None:
    body = await get_json(client, "/api/aggregate", zoom=11, bbox=",".join(map(str, VIEW)),
                          start="2013-01-01T21:00:00Z", end="2013-01-02T01:00:00+00:00")
    assert body["precision"] == precision_for_zoom(11)
    expected = expected_cells(data.docs, VIEW, body["precision"], T0, T0 + 4 * 3_600_000)
    assert {f["id"]: f["properties"]["count"] for f in body["features"]} == dict(expected)


async def test_fence_filter(client: TestClient, data: Data) -> None:
    body = await get_json(client, "/api/aggregate", precision=6, fence="zone-a", bbox=",".join(map(str, VIEW)))
    expected = expected_cells(data.docs, VIEW, 6, fence="zone-a")
    assert sum(expected.values()) > 20
    assert {f["id"]: f["properties"]["count"] for f in body["features"]} == dict(expected)


async def test_bbox_crossing_the_antimeridian(client: TestClient, data: Data) -> None:
    box = (179.0, -5.0, -179.0, 5.0)
    body = await get_json(client, "/api/aggregate", bbox="179,-5,-179,5", precision=4)
    expected = expected_cells(data.docs, box, 4)
    assert sum(expected.values()) == 4  # two each side; +-178 stay outside
    assert {f["id"]: f["properties"]["count"] for f in body["features"]} == dict(expected)
    obs = await get_json(client, "/api/observations", bbox="179,-5,-179,5")
    assert sorted(f["properties"][PRESET.track] for f in obs["features"]) == [f"pacific-{i}" for i in range(4)]


async def test_observations_newest_first_with_properties(client: TestClient, data: Data) -> None:
    body = await get_json(client, "/api/observations", bbox=",".join(map(str, VIEW)), limit=50)
    jsonschema.validate(body, schema("PointCollection"))
    inside = [d for d in data.docs if in_box(d[PRESET.lon], d[PRESET.lat], VIEW)]
    assert body["total"] == len(inside) and len(body["features"]) == 50
    times = [f["properties"][PRESET.time] for f in body["features"]]
    assert times == sorted(times, reverse=True) and times[0] == max(d[PRESET.time] for d in inside)
    by_id = {documents.doc_id(d[PRESET.track], d[PRESET.time]): d for d in inside}
    for f in body["features"]:
        doc = by_id[f["id"]]
        assert f["geometry"]["coordinates"] == [doc[PRESET.lon], doc[PRESET.lat]]
        assert f["properties"][documents.SPEED] == doc[documents.SPEED] and f["properties"][documents.GEOFENCES] == doc[documents.GEOFENCES]


async def test_track_is_a_time_ordered_linestring(client: TestClient, data: Data) -> None:
    docs = [d for d in data.docs if d[PRESET.track] == "track-0003"]
    start, end = docs[10][PRESET.time], docs[40][PRESET.time]
    body = await get_json(client, "/api/tracks/track-0003", start=start, end=end)
    jsonschema.validate(body, schema("Track"))
    want = docs[10:41]
    assert body["geometry"] == {"type": "LineString", "coordinates": [[d[PRESET.lon], d[PRESET.lat]] for d in want]}
    assert body["properties"]["times"] == [d[PRESET.time] for d in want]
    assert (await get_json(client, "/api/tracks/nobody", 404))["error"]


async def test_extent_covers_everything(client: TestClient, data: Data) -> None:
    body = await get_json(client, "/api/extent")
    jsonschema.validate(body, schema("Extent"))
    times = [d[PRESET.time] for d in data.docs]
    assert (body["start"], body["end"], body["count"]) == (min(times), max(times), len(data.docs))
    w, s, e, n = body["bbox"]
    assert w > e  # the Pacific points make the tightest box cross the antimeridian
    assert all(in_box(d[PRESET.lon], d[PRESET.lat], (w - 1e-6, s - 1e-6, e + 1e-6, n + 1e-6)) for d in data.docs)


BAD = [
    ("/api/aggregate", {"bbox": "1,2,3"}), ("/api/aggregate", {"bbox": "0,50,1,40"}),
    ("/api/aggregate", {"bbox": "-200,0,0,1"}), ("/api/aggregate", {"bbox": "0,-95,1,1"}),
    ("/api/aggregate", {"precision": "0"}), ("/api/aggregate", {"precision": "13"}),
    ("/api/aggregate", {"zoom": "-1"}), ("/api/aggregate", {"start": "5000000000000", "end": "4000000000000"}),
    ("/api/aggregate", {"start": "not-a-time"}), ("/api/aggregate", {"q": "*"}),
    ("/api/aggregate", {"index": "_all"}), ("/api/observations", {"limit": "10001"}),
    ("/api/observations", {"limit": "0"}), ("/api/observations", {"size": "5"}),
    ("/api/tracks/x", {"end": "2013-01-01", "start": "2013-01-02"}), ("/api/tracks/x", {"bbox": "0,0,1,1"}),
    ("/api/alerts", {"since": "soon"}), ("/api/extent", {"index": "x"}),
]


@pytest.mark.parametrize("path, query", BAD)
async def test_bad_input_is_400_json(client: TestClient, path: str, query: dict[str, str]) -> None:
    body = await get_json(client, path, 400, **query)
    assert isinstance(body["error"], str) and body["error"]


async def test_no_data_yet_answers_empty(stack: Settings) -> None:
    settings = dataclasses.replace(stack, iot_index=f"webempty-{uuid.uuid4().hex[:8]}")
    async with web_client(settings) as c:
        assert await get_json(c, "/api/extent") == {"start": None, "end": None, "count": 0, "bbox": None}
        assert (await get_json(c, "/api/aggregate", zoom=3))["features"] == []
        assert (await get_json(c, "/api/observations"))["features"] == []


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_elasticsearch_unreachable_is_503_json_and_validation_comes_first(stack: Settings) -> None:
    settings = dataclasses.replace(stack, es_url=f"http://127.0.0.1:{closed_port()}")
    async with web_client(settings) as c:
        for path in ("/api/extent", "/api/aggregate", "/api/observations", "/api/tracks/a", "/healthz"):
            resp = await c.get(path)
            assert resp.status == 503 and resp.content_type == "application/json"
            body = await resp.json()
            assert "Traceback" not in json.dumps(body)
        # bad input never reaches Elasticsearch: it is refused before any query is built
        for path, query in BAD:
            assert (await c.get(path, params=query)).status == 400


async def test_healthz_metrics_openapi_and_static(client: TestClient) -> None:
    assert (await get_json(client, "/healthz"))["elasticsearch"] is True
    doc = await get_json(client, "/api/openapi.json")
    assert doc == json.loads(json.dumps(openapi.document()))
    await client.get("/api/aggregate", params={"precision": "9"})
    text = await (await client.get("/metrics")).text()
    assert 'geoiot_web_requests_total{method="GET",route="/api/aggregate",status="200"}' in text
    assert "geoiot_web_es_query_duration_seconds_count" in text
    assert (await client.get("/")).status == 200
    assert (await client.get("/vendor/leaflet/leaflet.js")).status == 200
    fences = await get_json(client, "/api/geofences")
    assert fences["type"] == "FeatureCollection" and fences["features"][0]["id"] == "jfk"
    cfg = await get_json(client, "/api/config")
    assert cfg["markerThreshold"] == 1000 and cfg["schema"]["time"] == PRESET.time
    assert cfg["staleMs"] == 300_000  # MAP_STALE_MS


async def test_responses_are_gzipped_when_accepted(client: TestClient) -> None:
    resp = await client.get("/api/aggregate", params={"precision": "7"}, headers={"Accept-Encoding": "gzip"},
                            auto_decompress=False)
    assert resp.headers["Content-Encoding"] == "gzip"
    raw = await resp.read()
    plain = gzip.decompress(raw)
    assert json.loads(plain)["type"] == "FeatureCollection" and len(raw) < len(plain) / 3
    assert resp.headers["Vary"] == "Accept-Encoding"
    assert float(resp.headers["Server-Timing"].removeprefix("app;dur=")) > 0
    resp = await client.get("/api/aggregate", params={"precision": "7"}, headers={"Accept-Encoding": "deflate"},
                            auto_decompress=False)
    assert resp.headers["Content-Encoding"] == "deflate" and zlib.decompress(await resp.read()) == plain
    resp = await client.get("/api/aggregate", params={"precision": "7"}, headers={"Accept-Encoding": "identity"},
                            auto_decompress=False)
    assert "Content-Encoding" not in resp.headers


async def test_identical_aggregations_within_a_second_are_answered_from_cache(client: TestClient, data: Data,
                                                                              es: AsyncElasticsearch) -> None:
    metrics = client.app[METRICS]
    queries = lambda: metrics.es_latency.labels("aggregate")._sum and sum(  # noqa: E731
        s.value for s in metrics.es_latency.collect()[0].samples
        if s.name.endswith("_count") and s.labels["query"] == "aggregate")
    q = {"precision": "4", "fence": "zone-a"}
    before = queries()
    first = await get_json(client, "/api/aggregate", **q)
    # a new document inside the fence: a cached answer cannot see it, a fresh one must
    doc = document(PRESET, "late", T0, *on_grid(-73.87, 40.72), ["zone-a"])
    await es.index(index=f"{data.settings.iot_index}-2013.01.01", id="late", document=doc, refresh=True)
    try:
        answers = await asyncio.gather(*(get_json(client, "/api/aggregate", **q) for _ in range(10)))
        assert all(a == first for a in answers)
        assert queries() - before == 1
        await asyncio.sleep(1.2)
        fresh = await get_json(client, "/api/aggregate", **q)
        assert fresh["total"] == first["total"] + 1 and queries() - before == 2
    finally:
        await es.delete(index=f"{data.settings.iot_index}-2013.01.01", id="late", refresh=True)


async def test_alerts_from_kafka_newest_first(stack: Settings, new_topic: Any) -> None:
    topic = await new_topic("alerts", partitions=1)
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"not json")  # counted, skipped, the consumer goes on
        for i in range(3):
            alert = {"track": f"t{i}", "fence": "jfk", "event": "enter" if i % 2 == 0 else "exit",
                     "time": T0 + i * 1000, "lon": -73.78, "lat": 40.64}
            await producer.send_and_wait(topic, json.dumps(alert).encode())
    finally:
        await producer.stop()
    settings = dataclasses.replace(stack, iot_alerts_topic=topic)
    async with TestClient(TestServer(init_app(settings))) as c:
        for _ in range(100):
            body = await get_json(c, "/api/alerts")
            if len(body["alerts"]) == 3:
                break
            await asyncio.sleep(0.1)
        jsonschema.validate(body, schema("Alerts"))
        assert body["connected"] is True
        assert [a["track"] for a in body["alerts"]] == ["t2", "t1", "t0"]
        assert [a["track"] for a in (await get_json(c, "/api/alerts", since=T0 + 1000))["alerts"]] == ["t2", "t1"]
        assert c.app[METRICS].alerts_bad._value.get() == 1


async def test_workers_share_one_port_and_stop_together(data: Data, python_env: dict[str, str],
                                                        output_dir: Path) -> None:
    port = closed_port()
    env = dict(python_env, IOT_INDEX=data.settings.iot_index, WEB_PORT=str(port), WEB_HOST="127.0.0.1",
               IOT_ALERTS_TOPIC=f"{data.settings.iot_index}-alerts")
    log_path = output_dir / "web_workers.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "web", "--workers", "2"], env=env, stdout=log,
                                stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
            await wait_healthy(http, url)
            totals = set()
            for _ in range(10):  # a new connection each time: the kernel spreads them over the workers
                async with http.get(url + "/api/aggregate", params={"precision": "3"}) as r:
                    assert r.status == 200
                    totals.add((await r.json())["total"])
            assert totals == {len(data.docs)}
    finally:
        proc.terminate()
        assert proc.wait(15) == 0
    pids = {json.loads(line.split(" web ", 1)[1])["pid"] for line in log_path.read_text().splitlines()
            if '"listening"' in line}
    assert len(pids) == 2 and proc.pid not in pids
    for pid in pids:  # SIGTERM to the parent stopped (and reaped) every worker
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
