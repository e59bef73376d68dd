"""The live mirror (web.live) against the real Kafka and Elasticsearch (issue 23, the live layer): the same
reports go through the agents' pipeline core into Elasticsearch (observations and the ``_latest`` index, the
path being retired) and, as the worker publishes them (testkit.live: geoiot.live's encoder, in transactions),
into the live topic. The mirror then answers /api/latest, /api/aggregate?source=latest and /api/events as the
Elasticsearch path does, for a spread of views and where filters; it holds the newest report of each track,
also after older reports are re-sent and when an aborted transaction carried newer ones; a restarted server
and two servers at once hold the same."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer
from elasticsearch import AsyncElasticsearch

from agents.core.geofence import Geofences
from agents.core.pipeline import Incoming, Pipeline
from agents.store.index import drop_index, ensure_index
from agents.store.sink import ElasticsearchSink, es_client
from geoiot import documents, topics
from geoiot.config import DEFAULT_GEOFENCES, Settings
from geoiot.schema import load_preset
from testkit import es_latest
from testkit import live as live_kit
from testkit.observations import on_grid
from testkit.sse import Stream, read_until
from web import params, where
from web.app import init_app
from web.keys import LIVE

pytestmark = pytest.mark.integration

PRESET = load_preset("taxi")
T0 = 1_357_000_000_000
TRACKS = 300
PARTITIONS = 3
Report = dict[str, Any]


def reports() -> list[Report]:
    """Tracks' reports in a shuffled arrival order; event times unique across tracks (no tie in newest-first)."""
    rng = random.Random(23)
    out = []
    for t in range(TRACKS):
        lon, lat = rng.uniform(-74.05, -73.75), rng.uniform(40.60, 40.90)
        for i in range(rng.randrange(1, 8)):
            lon, lat = on_grid(lon + rng.uniform(-0.003, 0.003), lat + rng.uniform(-0.003, 0.003))
            out.append({"taxiId": f"cab-{t:04d}", "observationTime": T0 + 100_000 * i + 37 * t + 1000 * rng.randrange(3),
                        "longitude": lon, "latitude": lat, "passengerCount": rng.randrange(0, 7),
                        "tripDistance": round(rng.uniform(0, 30), 2), "vendor_id": rng.choice(["VTS", "CMT", "DDS"]),
                        "store_and_fwd_flag": rng.choice(["Y", "N"])})
    rng.shuffle(out)
    return out




@dataclasses.dataclass
class Data:
    newest: dict[str, Report]
    settings: Settings


async def write(pipeline: Pipeline, sink: ElasticsearchSink, producer: Any, topic: str, data: list[Report],
                batch: int, *, abort: bool = False) -> None:
    """Each batch as the worker handles it: the bulk into Elasticsearch, then its newest documents published."""
    for start in range(0, len(data), batch):
        chunk = data[start:start + batch]
        result = pipeline.process([Incoming(orjson.dumps(r), r["taxiId"].encode(), "src", 0, i)
                                   for i, r in enumerate(chunk)], lambda track: None)
        assert result.dead == []
        if not abort:
            assert await sink.write_bulk(result.bulk()) == []
        await live_kit.publish(producer, topic, live_kit.latest_documents(result), PARTITIONS, abort=abort)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def data(stack: Settings, es: AsyncElasticsearch) -> AsyncIterator[Data]:
    name = f"weblive-{uuid.uuid4().hex[:10]}"
    settings = dataclasses.replace(stack, iot_index=name, iot_latest_topic=f"{name}-latest")
    await ensure_index(es, settings, PRESET)
    await live_kit.ensure_topic(settings, PARTITIONS)
    pipeline = Pipeline(PRESET, Geofences.load(DEFAULT_GEOFENCES), name)
    sink = ElasticsearchSink(es_client(stack.es_hosts), on_conflict=lambda n: None)
    producer = live_kit.transactional_producer(settings.kafka_bootstrap)
    await producer.start()
    sent = reports()
    try:
        await write(pipeline, sink, producer, settings.latest_topic, sent, 97)
        now = live_kit.newest_reports(sent)
        older = [dict(r, observationTime=r["observationTime"] - 1, longitude=r["longitude"] + 0.05)
                 for r in now.values()]
        # every older report again (not the newest: on equal times the _latest index keeps the first write, the
        # live layer the last read, and a stateless re-run computes other motion), and an older one per track
        again = [r for r in sent[::-1] if now[r["taxiId"]] is not r]
        await write(pipeline, sink, producer, settings.latest_topic, again + older, 500)
        # newer reports in a transaction that aborts: never seen by a read_committed mirror
        ghosts = [dict(r, observationTime=r["observationTime"] + 10**7, longitude=-73.5)
                  for r in list(live_kit.newest_reports(sent).values())[:50]]
        await write(pipeline, sink, producer, settings.latest_topic, ghosts, 500, abort=True)
        await es.indices.refresh(index=f"{name}*")
        yield Data(live_kit.newest_reports(sent), settings)
    finally:
        await producer.stop()
        await sink.stop()
        await drop_index(es, name)
        async with topics.admin_client(stack.kafka_bootstrap) as admin:
            await topics.delete(admin, [settings.latest_topic])


async def ready(client: TestClient, timeout: float = 30.0) -> dict[str, Any]:
    """Until /healthz is 200 (the mirror read the topic to its end found at start)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        resp = await client.get("/healthz")
        body = await resp.json()
        if resp.status == 200:
            return body
        assert loop.time() < deadline, body
        await asyncio.sleep(0.1)


@pytest_asyncio.fixture(loop_scope="session")
async def mirror(data: Data) -> AsyncIterator[TestClient]:
    async with TestClient(TestServer(init_app(data.settings, consume_alerts=False, cache_ttl=0))) as c:
        await ready(c)
        yield c


class Elastic:
    """The answers the _latest index gives (testkit.es_latest), for the same queries as the API's."""

    def __init__(self, es: AsyncElasticsearch, settings: Settings) -> None:
        self.es, self.settings = es, settings

    async def get(self, path: str, query: list[tuple[str, str]]) -> Any:
        from multidict import MultiDict

        fields = documents.field_types(PRESET)
        q = MultiDict(query)
        base = self.settings.iot_index
        if path == "/api/latest":
            return await es_latest.latest(self.es, base, PRESET, params.normal_view(where.latest_params(q, fields)))
        p = where.aggregate_params(q, self.settings.web_max_grid_cells, fields)
        return orjson.loads(await es_latest.aggregate(self.es, base, PRESET, p))


@pytest_asyncio.fixture(loop_scope="session")
async def elastic(data: Data, es: AsyncElasticsearch) -> Elastic:
    return Elastic(es, data.settings)


async def get(client: TestClient | Elastic, path: str, query: list[tuple[str, str]]) -> Any:
    if isinstance(client, Elastic):
        return await client.get(path, query)
    resp = await client.get(path, params=query)
    body = await resp.json()
    assert resp.status == 200, (path, query, body)
    return body


def where_texts(rng: random.Random) -> list[str]:
    pool = [lambda: f"vendor_id:{rng.choice(['VTS', 'CMT', 'VTS|DDS', 'XXX'])}",
            lambda: f"passengerCount:{rng.choice(['>', '>=', '<', '<='])}{rng.randrange(0, 7)}",
            lambda: f"passengerCount:{rng.randrange(0, 3)}..{rng.randrange(3, 7)}",
            lambda: f"passengerCount:{rng.randrange(0, 7)}|{rng.randrange(0, 7)}",
            lambda: f"tripDistance:{rng.choice(['>', '<='])}{rng.uniform(0, 30):.2f}",
            lambda: f"observationTime:>={T0 + rng.randrange(0, 700_000)}",
            lambda: f"observationTime:{T0 + rng.randrange(0, 300_000)}..{T0 + rng.randrange(300_000, 700_000)}",
            lambda: f"store_and_fwd_flag:{rng.choice(['Y', 'N'])}",
            lambda: f"{documents.SPEED}:>={rng.uniform(0, 20):.2f}",
            lambda: f"{documents.GEOFENCES}:{rng.choice(['jfk', 'none'])}"]
    return [rng.choice(pool)() for _ in range(rng.randrange(0, 3))]


def view(rng: random.Random) -> str:
    w, h = rng.choice([0.02, 0.1, 0.4]), rng.choice([0.02, 0.1, 0.4])
    lon, lat = rng.uniform(-74.1, -73.75), rng.uniform(40.55, 40.9)
    return f"{lon:.5f},{lat:.5f},{lon + w:.5f},{min(90, lat + h):.5f}"


async def test_the_mirror_holds_the_newest_report_of_each_track(mirror: TestClient, data: Data) -> None:
    body = await get(mirror, "/api/latest", [("limit", "10000")])
    assert body["total"] == TRACKS
    got = {f["id"]: f for f in body["features"]}
    assert set(got) == set(data.newest)
    for track, r in data.newest.items():  # not the older re-sent ones, not the aborted newer ones
        assert got[track]["properties"]["time"] == r["observationTime"]
        assert got[track]["geometry"]["coordinates"] == [r["longitude"], r["latitude"]]
        assert got[track]["properties"]["attributes"]["vendor_id"] == r["vendor_id"]


async def test_latest_answers_equal_the_elasticsearch_path(mirror: TestClient, elastic: Elastic) -> None:
    rng = random.Random(7)
    checked = 0
    for i in range(120):
        query = [("where", w) for w in where_texts(rng)]
        if i % 4:
            query.append(("bbox", view(rng)))
        query.append(("limit", rng.choice(["5", "50", "1000"])))
        a, b = await get(mirror, "/api/latest", query), await get(elastic, "/api/latest", query)
        assert a == b, query
        checked += a["total"] > 0
    assert checked > 30  # most views held tracks


async def test_aggregate_of_current_tracks_equals_the_elasticsearch_path(mirror: TestClient,
                                                                         elastic: Elastic) -> None:
    rng = random.Random(8)
    for i in range(60):
        query = [("source", "latest"), ("precision", str(rng.randrange(3, 8))),
                 *[("where", w) for w in where_texts(rng)]]
        if i % 3:
            query.append(("bbox", view(rng)))
        if i % 5 == 0:
            query += [("start", str(T0 + 100_000)), ("end", str(T0 + 500_000))]
        a, b = await get(mirror, "/api/aggregate", query), await get(elastic, "/api/aggregate", query)
        cells_a = {f["id"]: f for f in a.pop("features")}
        cells_b = {f["id"]: f for f in b.pop("features")}
        assert a == b and set(cells_a) == set(cells_b), query
        for cell, fa in cells_a.items():
            fb = cells_b[cell]
            assert fa["properties"]["count"] == fb["properties"]["count"], (query, cell)
            assert fa["geometry"] == fb["geometry"]
            assert fa["properties"]["centroid"] == pytest.approx(fb["properties"]["centroid"], abs=1e-6)


async def test_a_restarted_server_and_a_second_server_hold_the_same(mirror: TestClient, data: Data) -> None:
    first = live_kit.snapshot(mirror.server.app[LIVE].table)
    async with TestClient(TestServer(init_app(data.settings, consume_alerts=False))) as second:
        health = await ready(second)
        assert health["live"]["synced"] and health["live"]["tracks"] == TRACKS
        assert live_kit.snapshot(second.server.app[LIVE].table) == first
        assert len(first) == TRACKS
        metrics = await (await second.get("/metrics")).text()
        assert f"geoiot_web_live_tracks {float(TRACKS)}" in metrics and "geoiot_web_live_lag 0.0" in metrics


async def test_a_newer_report_reaches_both_servers_and_a_tombstone_removes(mirror: TestClient, data: Data) -> None:
    producer = live_kit.transactional_producer(data.settings.kafka_bootstrap)
    await producer.start()
    track = sorted(data.newest)[0]
    moved = None
    async with TestClient(TestServer(init_app(data.settings, consume_alerts=False))) as second:
        await ready(second)
        try:
            held = live_kit.snapshot(mirror.server.app[LIVE].table)[track]
            moved = dict(held, observationTime=held["observationTime"] + 10**8,
                         geometry={"lon": -73.9001, "lat": 40.7001})
            await live_kit.publish(producer, data.settings.latest_topic, [(track, moved)], PARTITIONS)
            for c in (mirror, second):
                for _ in range(100):
                    if live_kit.held_time(c.server.app[LIVE].table, track) == moved["observationTime"]:
                        break
                    await asyncio.sleep(0.1)
            assert live_kit.snapshot(mirror.server.app[LIVE].table) == live_kit.snapshot(second.server.app[LIVE].table)
            assert live_kit.held_time(mirror.server.app[LIVE].table, track) == moved["observationTime"]
            await live_kit.publish(producer, data.settings.latest_topic, [(track, None)], PARTITIONS)
            for _ in range(100):
                if track not in mirror.server.app[LIVE].table.rows and track not in second.server.app[LIVE].table.rows:
                    break
                await asyncio.sleep(0.1)
            body = await get(second, "/api/latest", [("limit", "10000")])
            assert track not in {f["id"] for f in body["features"]} and body["total"] == TRACKS - 1
        finally:
            await producer.stop()


async def test_healthz_is_not_ready_before_the_topic_is_read(data: Data) -> None:
    app = init_app(data.settings, consume_alerts=False)
    async with TestClient(TestServer(app)) as c:
        first = await c.get("/healthz")  # the mirror starts loading with the app: the first answer may be either
        body = await first.json()
        assert "live" in body and (first.status == 200) == body["live"]["synced"]
        await ready(c)


async def test_event_views_push_the_mirrors_answers_and_its_changes(mirror: TestClient, data: Data) -> None:
    query = [("bbox", "-74.05,40.6,-73.75,40.9"), ("where", "passengerCount:>=2"), ("limit", "50")]
    polled = await get(mirror, "/api/latest", query)
    producer = live_kit.transactional_producer(data.settings.kafka_bootstrap)
    await producer.start()
    try:
        async with mirror.get("/api/events", params=query) as resp:
            stream = Stream()
            await read_until(resp, stream, lambda s: s.of("latest"), 15)
            first = stream.of("latest")[0].json()
            assert first["full"] and first["total"] == polled["total"] and first["features"] == polled["features"]
            held = live_kit.snapshot(mirror.server.app[LIVE].table)
            track = polled["features"][-1]["id"]
            newer = dict(held[track], observationTime=T0 + 10**9, passengerCount=5)
            await live_kit.publish(producer, data.settings.latest_topic, [(track, newer)], PARTITIONS)
            await read_until(resp, stream, lambda s: any(
                f["id"] == track for e in s.of("latest")[1:] for f in e.json()["features"]), 15)
    finally:
        await producer.stop()
    changed = [f for e in stream.of("latest")[1:] for f in e.json()["features"] if f["id"] == track]
    assert changed[-1]["properties"]["time"] == T0 + 10**9
