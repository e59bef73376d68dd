"""``GET /api/latest`` (issue 14, item 1) against the real Elasticsearch, filled through the agents' own write
path (pipeline + Elasticsearch sink): current positions equal the newest report of each track in the data,
also after older reports were re-sent, and bbox, where and limit select what a direct computation says."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import geohash
import jsonschema
import orjson
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer
from elasticsearch import AsyncElasticsearch

from agents.core.geofence import Geofences
from agents.core.pipeline import Incoming, Pipeline
from agents.store.index import drop_index, ensure_index
from agents.store.sink import ElasticsearchSink, es_client
from geoiot import documents
from geoiot.config import DEFAULT_GEOFENCES, Settings
from geoiot.schema import load_preset
from testkit import live as live_kit
from web import openapi
from web.app import init_app

pytestmark = pytest.mark.integration

PRESET = load_preset("taxi")
T0 = 1_357_000_000_000
TRACKS = 40
Report = dict[str, Any]


def reports() -> list[Report]:
    """Every track's reports, in a shuffled arrival order (so a batch often holds an older report after a newer)."""
    rng = random.Random(141)
    out = []
    for t in range(TRACKS):
        lon, lat = rng.uniform(-74.0, -73.8), rng.uniform(40.6, 40.85)
        for i in range(rng.randrange(1, 12)):
            lon, lat = lon + rng.uniform(-0.002, 0.002), lat + rng.uniform(-0.002, 0.002)
            out.append({"taxiId": f"cab-{t:03d}", "observationTime": T0 + 5_000 * i + rng.randrange(0, 3) * 1000,
                        "longitude": round(lon, 6), "latitude": round(lat, 6), "passengerCount": rng.randrange(1, 6),
                        "vendor_id": rng.choice(["VTS", "CMT"])})
    rng.shuffle(out)
    return out




@dataclasses.dataclass
class Data:
    newest: dict[str, Report]
    settings: Settings


async def write(pipeline: Pipeline, sink: ElasticsearchSink, settings: Settings, data: list[Report],
                batch: int) -> None:
    """Each batch as the worker handles it: into Elasticsearch, then its newest documents into the live topic."""
    for start in range(0, len(data), batch):
        chunk = data[start:start + batch]
        result = pipeline.process([Incoming(orjson.dumps(r), r["taxiId"].encode(), "src", 0, i)
                                   for i, r in enumerate(chunk)], lambda track: None)
        assert result.dead == [] and await sink.write_bulk(result.bulk()) == []
        await live_kit.publish_once(settings, live_kit.latest_documents(result))


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def data(stack: Settings, es: AsyncElasticsearch) -> AsyncIterator[Data]:
    name = f"weblatest-{uuid.uuid4().hex[:10]}"
    settings = dataclasses.replace(stack, iot_index=name, iot_latest_topic=f"{name}-latest")
    await ensure_index(es, settings, PRESET)
    await live_kit.ensure_topic(settings, 1)
    pipeline = Pipeline(PRESET, Geofences.load(DEFAULT_GEOFENCES), name)
    conflicts: list[int] = []
    sink = ElasticsearchSink(es_client(stack.es_hosts), on_conflict=conflicts.append)
    sent = reports()
    try:
        await write(pipeline, sink, settings, sent, 37)
        assert sum(conflicts) > 0  # the shuffled order had older reports after newer ones in later batches
        older = [dict(r, observationTime=r["observationTime"] - 1, longitude=r["longitude"] + 0.05)
                 for r in live_kit.newest_reports(sent).values()]
        await write(pipeline, sink, settings, sent[::-1] + older, 500)  # everything again, and an older report per track
        await es.indices.refresh(index=f"{name}*")
        yield Data(live_kit.newest_reports(sent), settings)
    finally:
        await sink.stop()
        await drop_index(es, name)
        await live_kit.delete_topic(settings)


@pytest_asyncio.fixture(loop_scope="session")
async def client(data: Data) -> AsyncIterator[TestClient]:
    async with TestClient(TestServer(init_app(data.settings, consume_alerts=False))) as c:
        await live_kit.until_synced(c.server.app)
        yield c


async def latest(client: TestClient, query: list[tuple[str, str]], status: int = 200) -> Any:
    resp = await client.get("/api/latest", params=query)
    body = await resp.json()
    assert resp.status == status, body
    return body


def schema() -> dict[str, Any]:
    doc = openapi.document()
    return {**doc["components"]["schemas"]["LatestCollection"], "components": doc["components"]}


async def test_latest_positions_are_the_newest_report_of_each_track(client: TestClient, data: Data) -> None:
    body = await latest(client, [])
    jsonschema.validate(body, schema())
    assert body["total"] == len(data.newest) == TRACKS
    got = {f["id"]: f for f in body["features"]}
    assert set(got) == set(data.newest)
    for track, r in data.newest.items():
        f = got[track]
        assert f["geometry"]["coordinates"] == [r["longitude"], r["latitude"]]
        p = f["properties"]
        assert p["track"] == track and p["time"] == r["observationTime"]
        assert p["attributes"]["passengerCount"] == r["passengerCount"]
        assert p["attributes"]["vendor_id"] == r["vendor_id"]
        assert p[documents.GEOFENCES] == [] and documents.SPEED in p and documents.HEADING in p
    times = [f["properties"]["time"] for f in body["features"]]
    assert times == sorted(times, reverse=True)  # newest first


async def test_bbox_where_and_limit_select_the_tracks_a_direct_computation_selects(client: TestClient,
                                                                                    data: Data) -> None:
    box = (-73.95, 40.65, -73.85, 40.80)

    def inside(r: Report) -> bool:
        return box[0] <= r["longitude"] <= box[2] and box[1] <= r["latitude"] <= box[3]

    cases = [
        ([("bbox", ",".join(map(str, box)))], inside),
        ([("where", "vendor_id:VTS")], lambda r: r["vendor_id"] == "VTS"),
        ([("where", "passengerCount:>=3"), ("where", "vendor_id:CMT")],
         lambda r: r["passengerCount"] >= 3 and r["vendor_id"] == "CMT"),
        ([("bbox", ",".join(map(str, box))), ("where", "passengerCount:1|2")],
         lambda r: inside(r) and r["passengerCount"] in (1, 2)),
    ]
    for query, keep in cases:
        body = await latest(client, query)
        want = {t for t, r in data.newest.items() if keep(r)}
        assert want, query  # every case selects something (and not everything, for the filters)
        assert {f["id"] for f in body["features"]} == want and body["total"] == len(want), query
    body = await latest(client, [("limit", "5")])
    newest_five = sorted(data.newest.values(), key=lambda r: r["observationTime"], reverse=True)[:5]
    assert len(body["features"]) == 5 and body["total"] == TRACKS
    assert [f["properties"]["time"] for f in body["features"]] == [r["observationTime"] for r in newest_five]


@pytest.mark.parametrize("query, word", [
    ([("where", "nosuch:1")], "nosuch"), ([("where", "passengerCount:many")], "passengerCount"),
    ([("limit", "0")], "limit"), ([("bbox", "1,2,3")], "bbox"), ([("start", "0")], "start"),
    ([("limit", "1"), ("limit", "2")], "limit"),
])
async def test_a_bad_query_is_a_400_naming_the_problem(client: TestClient, query: list[tuple[str, str]],
                                                       word: str) -> None:
    body = await latest(client, query, 400)
    assert word in body["error"]


@pytest.mark.parametrize("where", [[], ["vendor_id:VTS"], ["passengerCount:>=3", "vendor_id:CMT"]])
async def test_aggregate_source_latest_counts_current_tracks_per_cell(client: TestClient, data: Data,
                                                                     es: AsyncElasticsearch,
                                                                     where: list[str]) -> None:
    keep = {(): lambda r: True, ("vendor_id:VTS",): lambda r: r["vendor_id"] == "VTS",
            ("passengerCount:>=3", "vendor_id:CMT"): lambda r: r["passengerCount"] >= 3 and r["vendor_id"] == "CMT"}
    want = [r for r in data.newest.values() if keep[tuple(where)](r)]
    assert want
    query = [("source", "latest"), ("precision", "4"), ("bbox", "-74.2,40.5,-73.6,40.95"),
             *(("where", w) for w in where)]
    resp = await client.get("/api/aggregate", params=query)
    body = await resp.json()
    assert resp.status == 200, body
    cells = {f["properties"]["geohash"]: f["properties"]["count"] for f in body["features"]}
    assert cells == Counter(geohash.encode(r["latitude"], r["longitude"], 4) for r in want)
    assert body["total"] == len(want) and not body["truncated"]
    # a direct count of the latest index says the same
    direct = await es.count(index=documents.latest_index(data.settings.iot_index), query={"bool": {"filter": [
        {"term": {"vendor_id": w.split(":")[1]}} if w.startswith("vendor_id") else
        {"range": {"passengerCount": {"gte": 3}}} for w in where]}})
    assert direct["count"] == len(want)
    # the observations are many more: source=observations (the default) still counts every report
    obs = await (await client.get("/api/aggregate", params=[("precision", "4"), *(("where", w) for w in where)])).json()
    assert obs["total"] > body["total"]


async def test_aggregate_source_is_validated(client: TestClient) -> None:
    body = await latest_like(client, "/api/aggregate", [("source", "newest")], 400)
    assert "source" in body["error"] and "latest" in body["error"]


async def latest_like(client: TestClient, path: str, query: list[tuple[str, str]], status: int) -> Any:
    resp = await client.get(path, params=query)
    assert resp.status == status
    return await resp.json()


async def test_identical_latest_requests_within_a_second_share_one_computation(client: TestClient,
                                                                              data: Data) -> None:
    from web.keys import LIVE, METRICS

    def computed() -> float:
        return sum(s.value for s in client.app[METRICS].latest_cache.collect()[0].samples
                   if s.name.endswith("_total") and s.labels["result"] == "miss")

    await asyncio.sleep(1.1)  # nothing cached from the other tests
    query = [("where", "vendor_id:VTS"), ("where", "passengerCount:>=2")]
    before = computed()
    answers = await asyncio.gather(*(latest(client, query if i % 2 else query[::-1]) for i in range(10)))
    assert all(a == answers[0] for a in answers) and computed() - before == 1  # filter order: the same view
    # a track moves: a cached answer cannot see it, one a second later must
    table = client.app[LIVE].table
    track, r = next((t, r) for t, r in data.newest.items() if r["vendor_id"] == "VTS" and r["passengerCount"] >= 2)
    held = live_kit.snapshot(table)[track]
    await live_kit.publish_once(data.settings, [(track, dict(held, passengerCount=1))])
    try:
        while live_kit.snapshot(table)[track]["passengerCount"] != 1:
            await asyncio.sleep(0.05)
        assert track in {f["id"] for f in (await latest(client, query))["features"]}
        await asyncio.sleep(1.1)
        assert track not in {f["id"] for f in (await latest(client, query))["features"]}
        assert computed() - before == 2
    finally:
        await live_kit.publish_once(data.settings, [(track, held)])
