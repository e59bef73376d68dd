"""/api/tracks/{id} over more than one search's worth of points (issue 14, item 5), against the real
Elasticsearch: the server pages with search_after and says whether the answer is the whole window."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator
from typing import Any

import jsonschema
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient
from elasticsearch import AsyncElasticsearch

from geoiot.config import Settings
from geoiot.schema import load_preset
from testkit.observations import indexed, walk
from testkit.web_client import Loaded as Data
from web import openapi, params, where

pytestmark = pytest.mark.integration

PRESET = load_preset("taxi")
T0 = 1_357_084_800_000 - 3_600_000  # the track crosses midnight: two daily indices
POINTS = 2 * where.TRACK_PAGE + 345  # three pages
TRACK = "track-0000"


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def data(stack: Settings, es: AsyncElasticsearch) -> AsyncIterator[Data]:
    settings = dataclasses.replace(stack, iot_index=f"webtracks-{uuid.uuid4().hex[:10]}")
    docs = list(walk(PRESET, POINTS, tracks=1, start_ms=T0, step_ms=1_000, seed=5))
    others = list(walk(PRESET, 40, tracks=2, start_ms=T0, step_ms=1_000, seed=6))
    for d in others:
        d[PRESET.track] = "other-" + d[PRESET.track]
    async with indexed(es, settings, PRESET, docs + others):
        yield Data(docs, settings)


async def get_track(client: TestClient, **query: Any) -> dict[str, Any]:
    resp = await client.get(f"/api/tracks/{TRACK}", params=query)
    body = await resp.json()
    assert resp.status == 200, body
    jsonschema.validate(body, openapi.document()["components"]["schemas"]["Track"])
    return body


async def test_a_track_beyond_one_search_comes_whole_in_time_order(client: TestClient, data: Data) -> None:
    body = await get_track(client)
    props = body["properties"]
    assert props["times"] == [d[PRESET.time] for d in data.docs]  # none skipped, none repeated
    assert body["geometry"]["coordinates"] == [[d[PRESET.lon], d[PRESET.lat]] for d in data.docs]
    assert (props["points"], props["total"], props["pages"]) == (POINTS, POINTS, 3)
    assert props["complete"] is True and props["truncated"] is False


async def test_a_limit_stops_it_and_says_so(client: TestClient, data: Data) -> None:
    limit = where.TRACK_PAGE + 1
    props = (await get_track(client, limit=limit))["properties"]
    assert props["times"] == [d[PRESET.time] for d in data.docs[:limit]]
    assert (props["points"], props["total"], props["pages"]) == (limit, POINTS, 2)
    assert props["complete"] is False and props["truncated"] is True


async def test_a_window_and_a_filter_page_the_same_way(client: TestClient, data: Data) -> None:
    start, end = data.docs[5_000][PRESET.time], data.docs[16_000][PRESET.time]
    body = await get_track(client, start=start, end=end)
    assert body["properties"]["times"] == [d[PRESET.time] for d in data.docs[5_000:16_001]]
    assert body["properties"]["complete"] is True and body["properties"]["pages"] == 2
    fast = sorted(d["speed_mps"] for d in data.docs)[POINTS // 3]
    resp = await client.get(f"/api/tracks/{TRACK}", params=[("where", f"speed_mps:>={fast!r}")])
    props = (await resp.json())["properties"]
    assert props["times"] == [d[PRESET.time] for d in data.docs if d["speed_mps"] >= fast]
    assert props["complete"] is True


async def test_the_bound_is_refused_beyond(client: TestClient) -> None:
    resp = await client.get(f"/api/tracks/{TRACK}", params={"limit": str(params.MAX_TRACK_POINTS + 1)})
    assert resp.status == 400 and "limit" in (await resp.json())["error"]
