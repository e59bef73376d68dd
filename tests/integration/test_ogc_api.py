"""OGC API - Features (web/ogc) against the real Elasticsearch: collections, items with bbox, datetime, limit
and paging, CQL2 filters, and hostile input. Expected answers come from the generated documents, counted here
with plain comparisons, never from the server's code."""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer
from elasticsearch import AsyncElasticsearch

from geoiot.config import Settings
from testkit.ogc_data import PRESET, T0, drop, load, make_docs, newest, settings_for
from testkit.web_client import Loaded as Data
from web.app import init_app

pytestmark = pytest.mark.integration

N = 3_000
ITEMS = "/ogc/collections/observations/items"


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def data(stack: Settings, es: AsyncElasticsearch) -> AsyncIterator[Data]:
    name = f"ogcapi-{uuid.uuid4().hex[:10]}"
    settings = settings_for(stack, name)
    docs = make_docs(n=N)
    try:
        await load(es, settings, docs)
        yield Data(docs, settings)
    finally:
        await drop(es, settings)


async def get(client: TestClient, path: str, status: int = 200, **params: Any) -> Any:
    resp = await client.get(path, params={k.replace("_", "-"): str(v) for k, v in params.items()})
    body = await resp.json(content_type=None)
    assert resp.status == status, body
    return body


async def all_pages(client: TestClient, **params: Any) -> tuple[list[dict[str, Any]], int, int]:
    """Every feature by following next links: (features, numberMatched of the first page, pages)."""
    body = await get(client, ITEMS, **params)
    matched, features, pages = body["numberMatched"], list(body["features"]), 1
    while True:
        nxt = [ln["href"] for ln in body["links"] if ln["rel"] == "next"]
        if not nxt:
            return features, matched, pages
        url = urlsplit(nxt[0])
        resp = await client.get(url.path, params={k: v[0] for k, v in parse_qs(url.query).items()})
        assert resp.status == 200
        body = await resp.json(content_type=None)
        assert body["numberMatched"] == matched
        features += body["features"]
        pages += 1


def ids(docs: list[dict[str, Any]]) -> set[str]:
    return {f"{d[PRESET.track]}:{d[PRESET.time]}" for d in docs}


def in_box(d: dict[str, Any], w: float, s: float, e: float, n: float) -> bool:
    lon, lat = d[PRESET.lon], d[PRESET.lat]
    return (w <= lon <= e if w <= e else lon >= w or lon <= e) and s <= lat <= n


async def test_landing_conformance_and_collections(client: TestClient) -> None:
    landing = await get(client, "/ogc/")
    rels = {ln["rel"] for ln in landing["links"]}
    assert {"self", "service-desc", "conformance", "data"} <= rels
    conf = (await get(client, "/ogc/conformance"))["conformsTo"]
    assert "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/core" in conf
    assert "http://www.opengis.net/spec/cql2/1.0/conf/basic-cql2" in conf
    cols = {c["id"]: c for c in (await get(client, "/ogc/collections"))["collections"]}
    assert set(cols) == {"observations", "latest", "alerts", "geofences"}
    interval = cols["observations"]["extent"]["temporal"]["interval"][0]
    assert interval[0] == "2013-01-01T21:00:00.000Z"
    resp = await client.get("/ogc/", headers={"Accept": "text/html"})
    assert resp.status == 200 and resp.content_type == "text/html"


async def test_every_feature_once_through_next_links(client: TestClient, data: Data) -> None:
    features, matched, pages = await all_pages(client, limit=700)
    assert matched == len(data.docs) and pages == -(-len(data.docs) // 700)
    got = [f["id"] for f in features]
    assert len(got) == len(set(got)) and set(got) == ids(data.docs)


async def test_latest_is_each_tracks_newest(client: TestClient, data: Data) -> None:
    body = await get(client, "/ogc/collections/latest/items", limit=1000)
    want = newest(PRESET, data.docs)
    assert body["numberMatched"] == len(want)
    assert {f["id"]: f["properties"]["observationTime"] for f in body["features"]} == {
        t: f"{_iso(d[PRESET.time])}" for t, d in want.items()}


def _iso(ms: int) -> str:
    from datetime import datetime, timezone
    return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


@pytest.mark.parametrize("box", [(-74.0, 40.65, -73.8, 40.85), (170.0, -10.0, -170.0, 10.0),
                                 (177.0, 65.0, -177.0, 70.0)])
async def test_bbox_also_across_the_antimeridian(client: TestClient, data: Data, box: tuple[float, ...]) -> None:
    features, matched, _ = await all_pages(client, bbox=",".join(map(str, box)), limit=1000)
    want = ids([d for d in data.docs if in_box(d, *box)])
    assert want and matched == len(want) and {f["id"] for f in features} == want


@pytest.mark.parametrize("window", ["instant", "closed", "open-start", "open-end"])
async def test_datetime_instant_interval_and_open_ends(client: TestClient, data: Data, window: str) -> None:
    a, b = data.docs[400][PRESET.time], data.docs[2000][PRESET.time]  # exact report times: bounds are inclusive
    text = {"instant": _iso(a), "closed": f"{_iso(a)}/{_iso(b)}", "open-start": f"../{_iso(b)}",
            "open-end": f"{_iso(a)}/.."}[window]
    low, high = {"instant": (a, a), "closed": (a, b), "open-start": (None, b), "open-end": (a, None)}[window]
    want = ids([d for d in data.docs if (low is None or d[PRESET.time] >= low)
                and (high is None or d[PRESET.time] <= high)])
    features, matched, _ = await all_pages(client, datetime=text, limit=2000)
    assert want and matched == len(want) and {f["id"] for f in features} == want


async def test_one_feature_by_its_document_id(client: TestClient, data: Data) -> None:
    d = data.docs[1234]
    fid = f"{d[PRESET.track]}:{d[PRESET.time]}"
    body = await get(client, f"/ogc/collections/observations/items/{fid}")
    assert body["id"] == fid and body["geometry"]["coordinates"] == [d[PRESET.lon], d[PRESET.lat]]
    await get(client, "/ogc/collections/observations/items/nope:1", 404)
    await get(client, "/ogc/collections/nope/items", 404)


CQL = [
    ("passengerCount = 2", {"op": "=", "args": [{"property": "passengerCount"}, 2]},
     lambda d: d["passengerCount"] == 2),
    ("vendor_id = 'VTS' AND passengerCount > 2",
     {"op": "and", "args": [{"op": "=", "args": [{"property": "vendor_id"}, "VTS"]},
                            {"op": ">", "args": [{"property": "passengerCount"}, 2]}]},
     lambda d: d["vendor_id"] == "VTS" and d["passengerCount"] > 2),
    ("passengerCount IN (0, 4) OR NOT vendor_id LIKE 'C%'",
     {"op": "or", "args": [{"op": "in", "args": [{"property": "passengerCount"}, [0, 4]]},
                           {"op": "not", "args": [{"op": "like", "args": [{"property": "vendor_id"}, "C%"]}]}]},
     lambda d: d["passengerCount"] in (0, 4) or not d["vendor_id"].startswith("C")),
    ("S_INTERSECTS(geometry, BBOX(170, -10, -170, 10))",
     {"op": "s_intersects", "args": [{"property": "geometry"}, {"bbox": [170, -10, -170, 10]}]},
     lambda d: in_box(d, 170, -10, -170, 10)),
    ("S_INTERSECTS(geometry, POLYGON((-74 40.65, -73.8 40.65, -73.8 40.85, -74 40.85, -74 40.65)))",
     {"op": "s_intersects", "args": [{"property": "geometry"}, {"type": "Polygon", "coordinates": [
         [[-74, 40.65], [-74, 40.85], [-73.8, 40.85], [-73.8, 40.65], [-74, 40.65]]]}]},  # clockwise
     lambda d: in_box(d, -74, 40.65, -73.8, 40.85)),
    ("observationTime >= TIMESTAMP('2013-01-01T23:00:00Z') AND speed_mps BETWEEN 1 AND 6",
     {"op": "and", "args": [{"op": ">=", "args": [{"property": "observationTime"},
                                                  {"timestamp": "2013-01-01T23:00:00Z"}]},
                            {"op": "between", "args": [{"property": "speed_mps"}, 1, 6]}]},
     lambda d: d[PRESET.time] >= T0 + 2 * 3_600_000 and 1 <= d["speed_mps"] <= 6),
    ("T_BEFORE(observationTime, TIMESTAMP('2013-01-01T22:00:00Z'))",
     {"op": "t_before", "args": [{"property": "observationTime"}, {"timestamp": "2013-01-01T22:00:00Z"}]},
     lambda d: d[PRESET.time] < T0 + 3_600_000),
]


@pytest.mark.parametrize("text,cql_json,keep", CQL, ids=[c[0][:40] for c in CQL])
async def test_cql2_text_and_json_filters_equal_direct_counts(client: TestClient, data: Data, text: str,
                                                              cql_json: dict[str, Any], keep: Any) -> None:
    want = ids([d for d in data.docs if keep(d)])
    assert want and len(want) < len(data.docs)
    for params in ({"filter": text}, {"filter": json.dumps(cql_json), "filter_lang": "cql2-json"}):
        features, matched, _ = await all_pages(client, limit=5000, **params)
        assert matched == len(want) and {f["id"] for f in features} == want


async def test_queryables_come_from_the_preset(client: TestClient) -> None:
    q = await get(client, "/ogc/collections/observations/queryables")
    assert q["properties"]["passengerCount"]["type"] == "integer"
    assert q["properties"]["observationTime"]["format"] == "date-time"
    assert "geometry" in q["properties"] and "nonsense" not in q["properties"]


HOSTILE = [
    {"filter": "passengerCount = = 2"},
    {"filter": "(" * 1000 + "passengerCount = 2" + ")" * 1000},
    {"filter": "NOT " * 1000 + "passengerCount = 2"},
    {"filter": '{"op":"not","args":[' * 100 + '{"op":"=","args":[{"property":"passengerCount"},1]}' + ']}' * 100,
     "filter_lang": "cql2-json"},
    {"filter": "[" * 1000 + "]" * 1000, "filter_lang": "cql2-json"},
    {"filter": "nosuchproperty = 1"},
    {"filter": "passengerCount = 'two'"},
    {"filter": "vendor_id > 3"},
    {"filter": "observationTime > 5"},
    {"filter": "S_INTERSECTS(geometry, POLYGON((0 0, 1 1, 0 1, 1 0, 0 0)))"},
    {"filter": "S_INTERSECTS(geometry, POINT(200 100))"},
    {"filter": "passengerCount = 1", "filter_lang": "sql"},
    {"filter": "x" * 7_000}, {"filter": "passengerCount = 1 OR " * 300 + "true"},
    {"limit": "0"}, {"limit": "10001"}, {"limit": "99999999999999999999999"}, {"limit": "ten"},
    {"cursor": "abc"}, {"cursor": "eyJhZnRlciI6WzFdfQ.AAAA"}, {"cursor": "." * 3000},
    {"bbox": "NaN,0,1,1"}, {"bbox": "0,0,1"}, {"bbox": "-74,41,-73,40"}, {"bbox": "0,0,1,inf"},
    {"datetime": "yesterday"}, {"datetime": "../.."}, {"datetime": "2013-01-02T00:00:00Z/2013-01-01T00:00:00Z"},
    {"bogus": "1"}, {"f": "xml"}, {"bbox-crs": "EPSG:4326"},
]


@pytest.mark.parametrize("params", HOSTILE, ids=[str(p)[:50] for p in HOSTILE])
async def test_hostile_input_is_a_400_with_a_json_message(client: TestClient, params: dict[str, str]) -> None:
    resp = await client.get(ITEMS, params={k.replace("_", "-"): v for k, v in params.items()})
    body = await resp.json(content_type=None)
    assert resp.status == 400 and isinstance(body["error"], str) and body["error"], body


async def test_a_cursor_is_bound_to_its_query_and_cannot_be_edited(client: TestClient) -> None:
    body = await get(client, ITEMS, limit=5, filter="passengerCount = 1")
    token = parse_qs(urlsplit([ln["href"] for ln in body["links"] if ln["rel"] == "next"][0]).query)["cursor"][0]
    await get(client, ITEMS, limit=5, filter="passengerCount = 1", cursor=token)
    await get(client, ITEMS, 400, limit=5, filter="passengerCount = 2", cursor=token)  # another query
    payload, mac = token.split(".")
    forged = payload[:-2] + ("AA" if payload[-2:] != "AA" else "BB") + "." + mac
    await get(client, ITEMS, 400, limit=5, filter="passengerCount = 1", cursor=forged)


async def test_scans_beyond_the_bound_are_shed_with_503_and_counted(data: Data) -> None:
    from web.app import METRICS
    from web.ogc.keys import SCANS
    settings = dataclasses.replace(data.settings, web_ogc_scans=1, web_es_queue=0)
    app = init_app(settings, consume_alerts=False)
    async with TestClient(TestServer(app)) as c:
        async with app[SCANS].slot():  # a scan in flight: the one slot is taken and no request may wait
            resp = await c.get(ITEMS, params={"limit": "5"})
            body = await resp.json()
            assert resp.status == 503 and resp.headers["Retry-After"] and "busy" in body["error"]
            assert (await c.get("/ogc/collections")).status == 200  # not a scan: not bounded by it
        assert (await c.get(ITEMS, params={"limit": "5"})).status == 200
        shed = app[METRICS].shed.labels("queue_full")._value.get()
        assert shed == 1


async def test_the_openapi_document_is_valid_openapi_30(client: TestClient) -> None:
    from openapi_spec_validator import validate
    doc = await get(client, "/ogc/api")
    assert doc["openapi"].startswith("3.0")
    validate(doc)
    limit = next(p for p in doc["paths"]["/collections/{collectionId}/items"]["get"]["parameters"]
                 if p["name"] == "limit")
    assert limit["schema"] == {"type": "integer", "minimum": 1, "maximum": 10_000, "default": 10}
