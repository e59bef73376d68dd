"""The OGC API's ``latest`` collection from the live mirror (web.live.ogc_items, issue 23) against the real Kafka
and Elasticsearch: the same reports go through the agents' pipeline core into Elasticsearch (its ``_latest``
index, the path retired) and, as the worker publishes them (testkit.live), into the live topic. For a spread of
queries drawn by hypothesis (bbox, also across the antimeridian; datetime; limit; CQL2 text and JSON filters,
spatial shapes included), every page reached through the next links, its numberMatched and numberReturned, the
single items and the extent equal what the Elasticsearch path gives (testkit.es_latest: web.where.page_body on
the latest index, shaped by web.ogc.shape). Track ids and times are chosen so pages cut through equal times."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import cql2
import orjson
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer
from elasticsearch import AsyncElasticsearch
from hypothesis import HealthCheck, event, given, settings, strategies as st
from multidict import MultiDict

from agents.core.geofence import Geofences
from agents.core.pipeline import Incoming, Pipeline
from agents.store.index import drop_index, ensure_index
from agents.store.sink import ElasticsearchSink, es_client
from geoiot import documents
from geoiot.config import DEFAULT_GEOFENCES, Settings
from geoiot.schema import load_preset
from testkit import es_latest
from testkit import live as live_kit
from testkit.observations import on_grid
from web.app import init_app
from web.ogc.params import items_params
from web.ogc.views import rfc3339

pytestmark = pytest.mark.integration

PRESET = load_preset("taxi")
T0 = 1_357_000_000_000
STEP = 60_000
TRACKS = 240
PARTITIONS = 3
ITEMS = "/ogc/collections/latest/items"
# names whose code-point order differs from a case-folded or locale order, and non-ASCII ones
NAMES = ["cab", "Cab", "CAB", "z", "é", "ÿ", "Ω", "a-b", "a_b", "a.b", "0"]
Report = dict[str, Any]


def track_name(i: int) -> str:
    return f"{NAMES[i % len(NAMES)]}-{i:03d}"


def reports() -> list[Report]:
    """Tracks in New York and across the antimeridian, their times on a coarse grid (many tracks share their
    newest time, so pages end inside runs of equal times and the track id breaks the tie)."""
    rng = random.Random(2323)
    out = []
    for t in range(TRACKS):
        pacific = t % 8 == 0
        lon, lat = ((rng.uniform(178.5, 181.5), rng.uniform(-2, 2)) if pacific
                    else (rng.uniform(-74.05, -73.75), rng.uniform(40.60, 40.90)))
        times = sorted(rng.sample(range(12), rng.randrange(1, 5)))
        for k in times:
            lon, lat = lon + rng.uniform(-0.01, 0.01), lat + rng.uniform(-0.01, 0.01)
            lon = lon - 360 if lon > 180 else lon
            lon, lat = on_grid(lon, lat)
            out.append({"taxiId": track_name(t), "observationTime": T0 + STEP * k, "longitude": lon, "latitude": lat,
                        "passengerCount": rng.randrange(0, 7), "tripDistance": round(rng.uniform(0, 30), 2),
                        "vendor_id": rng.choice(["VTS", "CMT", "DDS"]), "store_and_fwd_flag": rng.choice(["Y", "N"])})
    rng.shuffle(out)
    return out




async def write(pipeline: Pipeline, sink: ElasticsearchSink, producer: Any, topic: str, data: list[Report],
                batch: int) -> None:
    """Each batch as the worker handles it: the bulk into Elasticsearch, then its newest documents published."""
    for start in range(0, len(data), batch):
        chunk = data[start:start + batch]
        result = pipeline.process([Incoming(orjson.dumps(r), r["taxiId"].encode(), "src", 0, i)
                                   for i, r in enumerate(chunk)], lambda track: None)
        assert result.dead == []
        assert await sink.write_bulk(result.bulk()) == []
        await live_kit.publish(producer, topic, live_kit.latest_documents(result), PARTITIONS)


@dataclasses.dataclass
class Data:
    newest: dict[str, Report]
    settings: Settings


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def data(stack: Settings, es: AsyncElasticsearch) -> AsyncIterator[Data]:
    name = f"ogclive-{uuid.uuid4().hex[:10]}"
    s = dataclasses.replace(stack, iot_index=name, iot_latest_topic=f"{name}-latest")
    await ensure_index(es, s, PRESET)
    await live_kit.ensure_topic(s, PARTITIONS)
    pipeline = Pipeline(PRESET, Geofences.load(DEFAULT_GEOFENCES), name)
    sink = ElasticsearchSink(es_client(stack.es_hosts), on_conflict=lambda n: None)
    producer = live_kit.transactional_producer(s.kafka_bootstrap)
    await producer.start()
    sent = reports()
    try:
        await write(pipeline, sink, producer, s.latest_topic, sent, 61)
        now = live_kit.newest_reports(sent)
        # the older reports again (on equal times the _latest index keeps the first write, the live layer the
        # last read: the newest is not re-sent), in other batches
        await write(pipeline, sink, producer, s.latest_topic, [r for r in sent[::-1] if now[r["taxiId"]] is not r],
                    200)
        await es.indices.refresh(index=f"{name}*")
        yield Data(now, s)
    finally:
        await producer.stop()
        await sink.stop()
        await drop_index(es, name)
        await live_kit.delete_topic(s)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def mirror(data: Data) -> AsyncIterator[TestClient]:
    async with TestClient(TestServer(init_app(data.settings, consume_alerts=False, cache_ttl=0))) as c:
        await live_kit.until_synced(c.server.app)
        yield c


async def api_pages(client: TestClient, query: dict[str, str]) -> list[dict[str, Any]]:
    """Every page of the items the mirror answers, by following the next links."""
    resp = await client.get(ITEMS, params=query)
    pages = []
    while True:
        body = await resp.json(content_type=None)
        assert resp.status == 200, (query, body)
        pages.append(body)
        nxt = [ln["href"] for ln in body["links"] if ln["rel"] == "next"]
        if not nxt:
            return pages
        assert len(pages) < 500
        url = urlsplit(nxt[0])
        resp = await client.get(url.path, params={k: v[0] for k, v in parse_qs(url.query).items()})


async def es_pages(es: AsyncElasticsearch, base: str, query: dict[str, str]) -> list[dict[str, Any]]:
    """The same pages from the ``_latest`` index, paged as web.ogc.routes paged it (offset, matched, after)."""
    p = items_params(MultiDict(query), None, dict(documents.field_types(PRESET)))
    pages, after, offset, matched = [], None, 0, 0
    while True:
        page = await es_latest.ogc_page(es, base, PRESET, p.bbox, p.window, p.where, p.limit, after)
        if after is None:
            matched = page.total
        pages.append({"features": orjson.loads(page.features), "numberMatched": matched,
                      "numberReturned": page.count})
        if not (page.returned and offset + page.returned < matched):
            return pages
        after, offset = page.after, offset + page.returned


def comparable(pages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"numberMatched": p["numberMatched"], "numberReturned": p["numberReturned"],
             "features": p["features"]} for p in pages]


# --- the queries hypothesis draws ------------------------------------------------------------------------

def _iso(ms: int) -> str:
    return rfc3339(ms) or ""


coord = st.floats(-74.08, -73.72).map(lambda v: round(v, 4) + 0.00005)  # vertices off the points' grid
lat = st.floats(40.57, 40.93).map(lambda v: round(v, 4) + 0.00005)
times = st.integers(0, 12).map(lambda k: T0 + STEP * k)


@st.composite
def polygons(draw: st.DrawFn) -> str:
    """A simple polygon (a star around a centre: never self-intersecting) in WKT."""
    cx, cy = draw(coord), draw(lat)
    n = draw(st.integers(3, 7))
    radii = draw(st.lists(st.floats(0.01, 0.15), min_size=n, max_size=n))
    import math
    ring = [(round(cx + r * math.cos(2 * math.pi * i / n), 5) + 0.000003,
             round(cy + r * math.sin(2 * math.pi * i / n), 5) + 0.000003) for i, r in enumerate(radii)]
    ring.append(ring[0])
    return "POLYGON((" + ", ".join(f"{x} {y}" for x, y in ring) + "))"


def leaf() -> st.SearchStrategy[str]:
    return st.one_of(
        st.builds(lambda op, v: f"passengerCount {op} {v}", st.sampled_from(["=", "<>", "<", "<=", ">", ">="]),
                  st.integers(0, 6)),
        st.builds(lambda vs: f"vendor_id IN ({', '.join(repr(v) for v in vs)})",
                  st.lists(st.sampled_from(["VTS", "CMT", "DDS", "XX"]), min_size=1, max_size=3)),
        st.sampled_from(["vendor_id LIKE 'C%'", "taxiId LIKE 'cab%'", "taxiId LIKE '_-0%'", "taxiId = 'z-003'",
                         f"{documents.GEOFENCES} = 'jfk'", "store_and_fwd_flag = 'Y'", "tripDistance IS NULL",
                         "NOT (vendor_id = 'VTS')"]),
        st.builds(lambda a, b: f"tripDistance BETWEEN {min(a, b)} AND {max(a, b)}", st.floats(0, 30).map(
            lambda v: round(v, 2)), st.floats(0, 30).map(lambda v: round(v, 2))),
        st.builds(lambda op, t: f"observationTime {op} TIMESTAMP('{_iso(t)}')",
                  st.sampled_from(["=", "<", "<=", ">", ">="]), times),
        st.builds(lambda op, t: f"{op}(observationTime, TIMESTAMP('{_iso(t)}'))",
                  st.sampled_from(["T_BEFORE", "T_AFTER", "T_EQUALS", "T_INTERSECTS"]), times),
        st.builds(lambda v: f"{documents.SPEED} >= {v}", st.floats(0, 30).map(lambda v: round(v, 2))),
        st.builds(lambda op, g: f"{op}(geometry, {g})", st.sampled_from(["S_INTERSECTS", "S_WITHIN", "S_DISJOINT"]),
                  polygons()),
        st.builds(lambda w, s, dw, dh: f"S_INTERSECTS(geometry, BBOX({w}, {s}, {round(w + dw, 5)}, "
                                       f"{round(s + dh, 5)}))", coord, lat, st.floats(0.01, 0.3), st.floats(0.01, 0.3)),
        st.just("S_INTERSECTS(geometry, BBOX(179, -3, -179, 3))"),
        st.just("S_INTERSECTS(geometry, POINT(179.9 0))"),
    )


filters = st.recursive(leaf(), lambda inner: st.one_of(
    st.builds(lambda a, b: f"({a}) AND ({b})", inner, inner),
    st.builds(lambda a, b: f"({a}) OR ({b})", inner, inner),
    st.builds(lambda a: f"NOT ({a})", inner)), max_leaves=4)

bboxes = st.one_of(
    st.none(), st.just("170,-10,-170,10"), st.just("-180,-90,180,90"),
    st.builds(lambda w, s, dw, dh: f"{w},{s},{round(w + dw, 5)},{round(s + dh, 5)}", coord, lat,
              st.floats(0.02, 0.4), st.floats(0.02, 0.4)))


@st.composite
def datetimes(draw: st.DrawFn) -> str | None:
    kind = draw(st.sampled_from(["none", "instant", "closed", "open-start", "open-end"]))
    a, b = sorted((draw(times), draw(times)))
    return {"none": None, "instant": _iso(a), "closed": f"{_iso(a)}/{_iso(b)}", "open-start": f"../{_iso(b)}",
            "open-end": f"{_iso(a)}/.."}[kind]


@st.composite
def queries(draw: st.DrawFn) -> dict[str, str]:
    q: dict[str, str] = {"limit": str(draw(st.sampled_from([1, 3, 7, 25, 100, 1000])))}
    bbox, window = draw(bboxes), draw(datetimes())
    if bbox:
        q["bbox"] = bbox
    if window:
        q["datetime"] = window
    text = draw(st.one_of(st.none(), filters))
    if text is not None:
        if draw(st.booleans()):
            q["filter"] = text
        else:
            q["filter"], q["filter-lang"] = json.dumps(cql2.Expr(text).to_json()), "cql2-json"
    return q


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(query=queries())
async def test_every_page_equals_the_latest_index(mirror: TestClient, es: AsyncElasticsearch, data: Data,
                                                  query: dict[str, str]) -> None:
    want = await es_pages(es, data.settings.iot_index, query)
    event("no match" if not want[0]["numberMatched"] else "several pages" if len(want) > 1 else "one page")
    got = await api_pages(mirror, query)
    assert comparable(got) == want, query


async def test_the_spread_covers_paging_ties_shapes_and_the_antimeridian(mirror: TestClient, es: AsyncElasticsearch,
                                                                       data: Data) -> None:
    """Fixed queries that must select something (hypothesis may draw many empty answers)."""
    cases = [{"limit": "7"}, {"limit": "1"}, {"limit": "13", "bbox": "170,-10,-170,10"},
             {"limit": "5", "datetime": f"{_iso(T0 + 3 * STEP)}/{_iso(T0 + 9 * STEP)}"},
             {"limit": "9", "filter": "S_INTERSECTS(geometry, POLYGON((-74 40.65, -73.8 40.65, -73.8 40.85, "
                                      "-74 40.85, -74 40.65)))"},
             {"limit": "4", "filter": "S_DISJOINT(geometry, POLYGON((-74 40.65, -73.8 40.65, -73.9 40.85, "
                                      "-74 40.65)))"},
             {"limit": "6", "filter": "taxiId LIKE 'é%' OR passengerCount >= 5"}]
    for query in cases:
        want = await es_pages(es, data.settings.iot_index, query)
        got = await api_pages(mirror, query)
        assert want[0]["numberMatched"] > 0 and comparable(got) == want, query
    # a page boundary inside a run of equal times: the tie is broken by the track id, as the keyword sort did
    pages = await api_pages(mirror, {"limit": "7"})
    flat = [f for p in pages for f in p["features"]]
    assert len(flat) == len(data.newest) and len({f["id"] for f in flat}) == len(flat)
    ends = [(p["features"][-1]["properties"]["observationTime"], nxt["features"][0]["properties"]["observationTime"])
            for p, nxt in zip(pages, pages[1:])]
    assert any(a == b for a, b in ends)


async def test_single_items_and_the_extent_equal_the_latest_index(mirror: TestClient, es: AsyncElasticsearch,
                                                                 data: Data) -> None:
    base = data.settings.iot_index
    for track in sorted(data.newest)[::17] + ["no-such-track"]:
        want = await es_latest.ogc_feature(es, base, PRESET, track)
        resp = await mirror.get(f"{ITEMS}/{track}")
        body = await resp.json(content_type=None)
        if want is None:
            assert resp.status == 404
            continue
        assert resp.status == 200
        body.pop("links")
        assert body == want
    bbox, interval = await es_latest.ogc_extent(es, base, PRESET)
    doc = await (await mirror.get("/ogc/collections/latest")).json()
    assert doc["extent"]["spatial"]["bbox"][0] == pytest.approx(bbox, abs=1e-7)
    assert doc["extent"]["temporal"]["interval"][0] == interval


async def test_the_latest_collection_reads_the_live_topic_not_the_latest_index(stack: Settings) -> None:
    """Tracks only on the live topic (no Elasticsearch index at all) are the collection's features."""
    name = f"ogclive-only-{uuid.uuid4().hex[:10]}"
    s = dataclasses.replace(stack, iot_index=name, iot_latest_topic=f"{name}-latest")
    docs = {f"t{i}": {"taxiId": f"t{i}", "observationTime": T0 + i, "longitude": -73.9 + i / 100, "latitude": 40.7,
                      documents.GEOMETRY: {"lon": -73.9 + i / 100, "lat": 40.7}} for i in range(3)}
    await live_kit.ensure_topic(s, 1)
    try:
        await live_kit.publish_once(s, docs.items())
        async with TestClient(TestServer(init_app(s, consume_alerts=False, cache_ttl=0))) as c:
            await live_kit.until_synced(c.server.app)
            body = await (await c.get(ITEMS, params={"limit": "2"})).json(content_type=None)
            assert body["numberMatched"] == 3 and [f["id"] for f in body["features"]] == ["t0", "t1"]
            one = await (await c.get(f"{ITEMS}/t2")).json(content_type=None)
            assert one["geometry"]["coordinates"] == [docs["t2"]["longitude"], 40.7]
            doc = await (await c.get("/ogc/collections/latest")).json()
            assert doc["extent"]["temporal"]["interval"][0] == [_iso(T0), _iso(T0 + 2)]
            await asyncio.sleep(0)
    finally:
        await live_kit.delete_topic(s)


async def test_while_the_mirror_loads_items_are_503_and_the_collections_answer(stack: Settings) -> None:
    """A server whose Kafka does not answer never loads its mirror: the latest items and items/{id} are 503
    busy (as /api/latest), the collections page still lists latest."""
    s = dataclasses.replace(stack, kafka_bootstrap="127.0.0.1:1", iot_index=f"ogclive-none-{uuid.uuid4().hex[:8]}")
    async with TestClient(TestServer(init_app(s, consume_alerts=False, cache_ttl=0))) as c:
        for path in (ITEMS, f"{ITEMS}/t1"):
            resp = await c.get(path)
            body = await resp.json(content_type=None)
            assert resp.status == 503 and "loading" in body["error"], body
        resp = await c.get("/ogc/collections")
        assert resp.status == 200
        assert "latest" in {col["id"] for col in (await resp.json())["collections"]}
