"""The geofence API (web/fences.py) on a real web app against the real Kafka: the list from the fence topic
(seeded from IOT_GEOFENCES), writes with a bearer token answered once Kafka acknowledged them, and every
refused write (no token, a wrong one, each malformed fence) leaving the topic untouched."""

from __future__ import annotations

import dataclasses
import json
import socket
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer
from aiokafka import AIOKafkaConsumer, TopicPartition

from geoiot import topics
from geoiot.config import DEFAULT_GEOFENCES
from geoiot.fences import MAX_VERTICES
from testkit.sse import Stream, read_until
from web.app import init_app
from conftest import unique_name

pytestmark = pytest.mark.integration

TOKEN = "fences-token-0123456789abcdef"
INGEST = "ingest-token-0123456789abcdef"
SQUARE = [[-73.9, 40.7], [-73.8, 40.7], [-73.8, 40.8], [-73.9, 40.8], [-73.9, 40.7]]
FILE_IDS = sorted(f["id"] for f in json.loads(DEFAULT_GEOFENCES.read_text())["features"])


def feature(coords, kind="Polygon", **properties):
    return {"type": "Feature", "properties": properties, "geometry": {"type": kind, "coordinates": coords}}


@pytest_asyncio.fixture(loop_scope="session")
async def fence_app(stack, kafka_admin, tmp_path) -> AsyncIterator[tuple[TestClient, object]]:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# fence editors\n{TOKEN} fences\n{INGEST} ingest cab-\n")
    settings = dataclasses.replace(stack, iot_topic=unique_name("webfences"), iot_tokens_file=str(tokens))
    try:
        async with TestClient(TestServer(init_app(settings, consume_alerts=False))) as client:
            yield client, settings
    finally:
        await topics.delete(kafka_admin, [settings.fences_topic])


async def end_offset(settings) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap)
    await consumer.start()
    try:
        tp = TopicPartition(settings.fences_topic, 0)
        return (await consumer.end_offsets([tp]))[tp]
    finally:
        await consumer.stop()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_the_list_comes_from_the_seeded_topic_with_versions(fence_app):
    client, settings = fence_app
    resp = await client.get("/api/geofences")
    body = await resp.json()
    assert resp.status == 200 and body["synced"] is True and body["type"] == "FeatureCollection"
    assert [f["id"] for f in body["features"]] == FILE_IDS
    assert sorted(f["version"] for f in body["features"]) == list(range(len(FILE_IDS)))
    assert all(f["updated"] > 1_600_000_000_000 for f in body["features"])
    one = await (await client.get(f"/api/geofences/{FILE_IDS[0]}")).json()
    assert one == next(f for f in body["features"] if f["id"] == FILE_IDS[0])
    missing = await client.get("/api/geofences/nope")
    assert missing.status == 404 and "nope" in (await missing.json())["error"]
    bad = await client.get("/api/geofences/a%20b")
    assert bad.status == 400 and "fence id" in (await bad.json())["error"]


def huge_ring(n: int) -> str:
    """A Polygon of ``n`` vertices as JSON text (built as text: a million positions)."""
    inner = ",".join(f"[{-73.9 + k * 1e-7:.7f},40.7]" for k in range(n - 2))
    return ('{"type":"Feature","properties":{},"geometry":{"type":"Polygon","coordinates":[[' + inner
            + ',[-73.9,40.8],[-73.9,40.7]]]}}')


MALFORMED = [
    (feature([[[-73.9, 40.7], [-73.8, 40.8], [-73.8, 40.7], [-73.9, 40.8], [-73.9, 40.7]]]), "Self-intersection"),
    (feature([SQUARE[:-1]]), "is not closed"),
    (feature([[[200, 40.7], [-73.8, 40.7], [-73.8, 40.8], [200, 40.7]]]), "longitude 200 is outside -180..180"),
    (huge_ring(1_000_000), f"at most {MAX_VERTICES} vertices"),
    (huge_ring(MAX_VERTICES + 10), f"more than {MAX_VERTICES} vertices"),
    (feature([-73.9, 40.7], "Point"), "is a Point, not a Polygon or MultiPolygon"),
    ({"type": "FeatureCollection", "features": []}, "not a FeatureCollection"),
    (feature([]), "non-empty list of linear rings"),
    ("{not json", "not JSON"),
]


async def test_refused_writes_name_the_problem_and_reach_nothing(fence_app):
    client, settings = fence_app
    before = await end_offset(settings)
    ok = json.dumps(feature([SQUARE], name="ok"))
    for headers, status, words in [({}, 401, "bearer token is required"),
                                   ({"Authorization": "Basic abc"}, 401, "must be 'Bearer <token>'"),
                                   (bearer("wrong-token-0123456789"), 403, "not valid"),
                                   (bearer(INGEST), 403, "needs 'fences'")]:
        for resp in [await client.put("/api/geofences/zone", data=ok, headers=headers),
                     await client.delete(f"/api/geofences/{FILE_IDS[0]}", headers=headers)]:
            assert resp.status == status and resp.content_type == "application/json"
            assert words in (await resp.json())["error"]
    for body, words in MALFORMED:
        data = body if isinstance(body, str) else json.dumps(body)
        resp = await client.put("/api/geofences/zone", data=data, headers=bearer(TOKEN))
        assert resp.status == 400 and resp.content_type == "application/json", (words, await resp.text())
        assert words in (await resp.json())["error"]
    resp = await client.put("/api/geofences/bad%20id", data=ok, headers=bearer(TOKEN))
    assert resp.status == 400 and "fence id" in (await resp.json())["error"]
    resp = await client.delete("/api/geofences/nope", headers=bearer(TOKEN))
    assert resp.status == 404
    assert await end_offset(settings) == before
    assert [f["id"] for f in (await (await client.get("/api/geofences")).json())["features"]] == FILE_IDS


async def test_put_change_and_delete_answer_after_kafka_and_show_at_once(fence_app):
    client, settings = fence_app
    before = await end_offset(settings)
    resp = await client.put("/api/geofences/zone-1", json=feature([SQUARE], name="first"), headers=bearer(TOKEN))
    created = await resp.json()
    assert resp.status == 200, created
    assert created["id"] == "zone-1" and created["version"] == before and created["properties"] == {"name": "first"}
    assert await end_offset(settings) == before + 1  # acknowledged before the answer
    assert await (await client.get("/api/geofences/zone-1")).json() == created  # the mirror shows it already

    moved = [[[x + 0.05, y] for x, y in SQUARE]]
    changed = await (await client.put("/api/geofences/zone-1", json=feature(moved, name="moved"),
                                      headers=bearer(TOKEN))).json()
    assert changed["version"] == before + 1 and changed["geometry"]["coordinates"] == moved
    listed = await (await client.get("/api/geofences")).json()
    assert listed["version"] == before + 1 and changed in listed["features"]

    resp = await client.delete("/api/geofences/zone-1", headers=bearer(TOKEN))
    assert resp.status == 200 and (await resp.json())["version"] == before + 2
    assert (await client.get("/api/geofences/zone-1")).status == 404
    assert [f["id"] for f in (await (await client.get("/api/geofences")).json())["features"]] == FILE_IDS


async def test_without_kafka_the_server_starts_at_once_and_writes_answer_503(stack, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{TOKEN} fences\n")
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{s.getsockname()[1]}"
    settings = dataclasses.replace(stack, kafka_bootstrap=closed, iot_topic=unique_name("nokafka"),
                                   iot_tokens_file=str(tokens))
    began = time.monotonic()
    async with TestClient(TestServer(init_app(settings, consume_alerts=False))) as client:
        assert time.monotonic() - began < 10  # not the whole STARTUP_WAIT
        body = await (await client.get("/api/geofences")).json()
        assert body["synced"] is False and body["features"] == []
        resp = await client.put("/api/geofences/zone", json=feature([SQUARE]), headers=bearer(TOKEN))
        assert resp.status == 503 and "not reachable" in (await resp.json())["error"]
        assert resp.headers["Retry-After"] == "5"


async def test_open_event_streams_are_told_that_fences_changed(fence_app):
    client, settings = fence_app
    async with client.get("/api/events", params={"bbox": "-74,40,-73,41"}) as resp:
        assert resp.status == 200
        stream = Stream()
        await read_until(resp, stream, lambda s: s.of("latest"), 30)  # subscribed
        put = await client.put("/api/geofences/pushed", json=feature([SQUARE]), headers=bearer(TOKEN))
        version = (await put.json())["version"]
        await read_until(resp, stream, lambda s: s.of("fences"), 30)
        assert stream.of("fences")[0].json() == {"version": version, "ids": ["pushed"]}
