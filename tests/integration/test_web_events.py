"""``GET /api/events`` (issue 14, item 4) against the real Kafka and Elasticsearch, over real HTTP connections:
alerts pushed as they are produced and resumed with Last-Event-ID (a gap said when the ring lost some),
latest positions as the whole view first and then only what changed, a slow client dropping its oldest
events while a fast one keeps up, and N clients on one view costing one search per period in
Elasticsearch's own search statistics."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import jsonschema
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestServer
from aiokafka import AIOKafkaProducer
from elasticsearch import AsyncElasticsearch
from elasticsearch.helpers import async_bulk

from agents.core.transitions import transitions
from agents.store.index import drop_index, ensure_index
from geoiot import documents
from geoiot.config import Settings
from geoiot.schema import load_preset
from testkit.health import wait_healthy
from testkit.observations import document, on_grid
from testkit.sse import Stream, read_until
from testkit import actions as es_actions
from testkit import live as live_kit
from web import openapi
from web.app import init_app
from web.keys import ALERTS, HUB

pytestmark = pytest.mark.integration

PRESET = load_preset("taxi")
T0 = 1_357_000_000_000
TRACKS = 30
VIEW = (-74.0, 40.70, -73.90, 40.80)


def position(i: int) -> tuple[float, float]:
    """Track i's first position: even tracks inside VIEW, odd ones east of it."""
    lon = -73.99 + (i % 10) * 0.008 if i % 2 == 0 else -73.85 + (i % 10) * 0.004
    return on_grid(lon, 40.71 + (i // 10) * 0.03)


async def write_latest(es: AsyncElasticsearch, settings: Settings, docs: list[dict[str, Any]]) -> None:
    """Into the live topic (what the server answers from) and the _latest index (what the test counts with)."""
    base = settings.iot_index
    actions = [es_actions.latest_action(base, d[PRESET.track], d[PRESET.time], d) for d in docs]
    await async_bulk(es, actions, refresh=True)
    await live_kit.publish_once(settings, [(d[PRESET.track], d) for d in docs])


def doc(track: int, time_ms: int, lon: float, lat: float) -> dict[str, Any]:
    return document(PRESET, f"cab-{track:03d}", time_ms, lon, lat, [], speed=float(track))


def inside(lon: float, lat: float) -> bool:
    return VIEW[0] <= lon <= VIEW[2] and VIEW[1] <= lat <= VIEW[3]


@dataclasses.dataclass
class Data:
    settings: Settings
    docs: dict[str, dict[str, Any]]


@pytest_asyncio.fixture(loop_scope="session")
async def data(stack: Settings, es: AsyncElasticsearch, new_topic: Any) -> AsyncIterator[Data]:
    name = f"webevents-{uuid.uuid4().hex[:10]}"
    topic = await new_topic("alerts", partitions=1)
    settings = dataclasses.replace(stack, iot_index=name, iot_alerts_topic=topic, web_sse_refresh=0.3,
                                   web_sse_ping=0.5, iot_latest_topic=f"{name}-latest")
    await ensure_index(es, settings, PRESET)
    await live_kit.ensure_topic(settings, 1)
    docs = [doc(i, T0 + i * 1000, *position(i)) for i in range(TRACKS)]
    try:
        await write_latest(es, settings, docs)
        yield Data(settings, {d[PRESET.track]: d for d in docs})
    finally:
        await drop_index(es, name)
        await live_kit.delete_topic(settings)


@pytest_asyncio.fixture(loop_scope="session")
async def producer(stack: Settings) -> AsyncIterator[AIOKafkaProducer]:
    p = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, linger_ms=0)
    await p.start()
    yield p
    await p.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_read=30)) as s:
        yield s


async def serve(settings: Settings, **kwargs: Any) -> TestServer:
    server = TestServer(init_app(settings, **kwargs))
    await server.start_server()
    if kwargs.get("mirror", True):
        await live_kit.until_synced(server.app)
    return server


async def wait_consumer(server: TestServer) -> None:
    for _ in range(200):
        if server.app[ALERTS].connected:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the alerts consumer did not connect")


def alert(i: int, **extra: Any) -> dict[str, Any]:
    [a] = transitions(f"cab-{i:03d}", ("jfk",) if i % 2 == 0 else (), ("jfk",) if i % 2 else (), T0 + i, -73.78,
                      40.64)
    return {**a, **extra}


async def produce(producer: AIOKafkaProducer, topic: str, alerts: list[dict[str, Any]]) -> list[bytes]:
    sent = [json.dumps(a, separators=(",", ":")).encode() for a in alerts]
    for value in sent:
        await producer.send(topic, value)
    await producer.flush()
    return sent


def schema(name: str) -> dict[str, Any]:
    doc = openapi.document()
    return {**doc["components"]["schemas"][name], "components": doc["components"]}


def bbox(box: tuple[float, ...]) -> str:
    return ",".join(map(str, box))


async def test_alerts_are_pushed_as_produced_and_resume_after_last_event_id(
        data: Data, producer: AIOKafkaProducer, http: aiohttp.ClientSession) -> None:
    server = await serve(data.settings)
    try:
        await wait_consumer(server)
        url = str(server.make_url("/api/events"))
        async with http.get(url, params={"bbox": bbox(VIEW)}) as resp:
            assert resp.status == 200 and resp.content_type == "text/event-stream"
            stream = Stream()
            await read_until(resp, stream, lambda s: s.of("latest"), 10)  # subscribed
            sent = await produce(producer, data.settings.iot_alerts_topic, [alert(i) for i in range(5)])
            await read_until(resp, stream, lambda s: len(s.of("alert")) == 5, 10)
            assert stream.retry == 3000
            pushed = stream.of("alert")
            assert [e.data.encode() for e in pushed] == sent  # exactly as on the topic
            ids = [e.id for e in pushed]
            assert all(ids) and len(set(ids)) == 5
            await read_until(resp, stream, lambda s: "ping" in s.comments, 5)  # keep-alive comments
        # 3 more while disconnected; resume after the 2nd one: the 3rd..8th, in order, nothing twice
        sent += await produce(producer, data.settings.iot_alerts_topic, [alert(i) for i in range(5, 8)])
        await asyncio.sleep(0.5)
        async with http.get(url, params={"bbox": bbox(VIEW)}, headers={"Last-Event-ID": ids[1]}) as resp:
            stream = Stream()
            await read_until(resp, stream, lambda s: len(s.of("alert")) == 6, 10)
            assert [e.data.encode() for e in stream.of("alert")] == sent[2:]
            assert stream.of("gap") == []
        # a new stream (the view changed) carries the token in the query instead
        async with http.get(url, params={"last_event_id": stream.last_id or ""}) as resp:
            stream2 = Stream()
            sent += await produce(producer, data.settings.iot_alerts_topic, [alert(8)])
            await read_until(resp, stream2, lambda s: len(s.of("alert")) == 1, 10)
            assert stream2.of("alert")[0].data.encode() == sent[8] and stream2.of("gap") == []
    finally:
        await server.close()


async def test_a_token_older_than_the_ring_gets_a_gap_then_what_is_kept(
        data: Data, producer: AIOKafkaProducer, http: aiohttp.ClientSession) -> None:
    sent = await produce(producer, data.settings.iot_alerts_topic, [alert(i) for i in range(10)])
    server = await serve(dataclasses.replace(data.settings, web_sse_ring=4))
    try:
        await wait_consumer(server)
        url = str(server.make_url("/api/events"))
        for _ in range(100):
            async with http.get(str(server.make_url("/api/alerts"))) as r:
                if len((await r.json())["alerts"]) == 4:
                    break
            await asyncio.sleep(0.1)
        async with http.get(url, headers={"Last-Event-ID": "0:2"}) as resp:  # after the 3rd alert
            stream = Stream()
            await read_until(resp, stream, lambda s: len(s.of("alert")) == 4, 10)
            assert stream.events[0].event == "gap" and stream.events[0].json()["after"] == "0:2"
            jsonschema.validate(stream.events[0].json(), schema("LatestGap"))
            assert stream.events[0].json()["kept"] == 4
            assert [e.data.encode() for e in stream.of("alert")] == sent[6:]
        async with http.get(url, headers={"Last-Event-ID": "0:6"}) as resp:  # kept: no gap
            stream = Stream()
            await read_until(resp, stream, lambda s: len(s.of("alert")) == 3, 10)
            assert stream.of("gap") == [] and [e.data.encode() for e in stream.of("alert")] == sent[7:]
    finally:
        await server.close()


async def test_latest_is_the_whole_view_first_then_only_what_changed(
        data: Data, es: AsyncElasticsearch, http: aiohttp.ClientSession) -> None:
    server = await serve(data.settings, consume_alerts=False)
    base = data.settings.iot_index
    try:
        url = str(server.make_url("/api/events"))
        async with http.get(url, params={"bbox": bbox(VIEW), "where": "speed_mps:>=4"}) as resp:
            stream = Stream()
            await read_until(resp, stream, lambda s: s.of("latest"), 10)
            first = stream.of("latest")[0].json()
            want = {t for t, d in data.docs.items()
                    if inside(d[PRESET.lon], d[PRESET.lat]) and d[documents.SPEED] >= 4}
            direct = await es.count(index=documents.latest_index(base), query={"bool": {"filter": [
                {"geo_bounding_box": {documents.GEOMETRY: {"top_left": {"lat": VIEW[3], "lon": VIEW[0]},
                                                           "bottom_right": {"lat": VIEW[1], "lon": VIEW[2]}}}},
                {"range": {documents.SPEED: {"gte": 4}}}]}})
            jsonschema.validate(first, schema("LatestChanges"))
            assert first["full"] is True and first["removed"] == []
            assert {f["id"] for f in first["features"]} == want and first["total"] == direct["count"] == len(want)
            # cab-006 leaves the view, cab-007 enters it, cab-008 reports an older position (never seen)
            gone, came = data.docs["cab-006"], data.docs["cab-007"]
            await write_latest(es, data.settings, [doc(6, gone[PRESET.time] + 10, *on_grid(-73.5, 40.75)),
                                                   doc(7, came[PRESET.time] + 10, *on_grid(-73.95, 40.75))])
            await es.options(ignore_status=409).index(
                index=documents.latest_index(base), id="cab-008", version=T0, version_type="external",
                document=doc(8, T0, *on_grid(-73.5, 40.75)), refresh=True)
            await live_kit.publish_once(data.settings, [("cab-008", doc(8, T0, *on_grid(-73.5, 40.75)))])
            await read_until(resp, stream, lambda s: len(s.of("latest")) >= 2, 10)
            second = stream.of("latest")[1].json()
            jsonschema.validate(second, schema("LatestChanges"))
            assert second["full"] is False and second["removed"] == ["cab-006"]
            assert [f["id"] for f in second["features"]] == ["cab-007"]
            assert second["features"][0]["geometry"]["coordinates"] == list(on_grid(-73.95, 40.75))
            assert second["total"] == len(want)
            # nothing changes: no more latest events, only keep-alives
            await asyncio.sleep(1.0)
            await read_until(resp, stream, lambda s: len(s.comments) >= 1, 5)
            assert len(stream.of("latest")) == 2
            # and the same features as /api/latest gives for the view
            async with http.get(str(server.make_url("/api/latest")),
                                params={"bbox": bbox(VIEW), "where": "speed_mps:>=4"}) as r:
                polled = await r.json()
            merged = {f["id"]: f for f in first["features"]}
            merged.pop("cab-006")
            merged.update({f["id"]: f for f in second["features"]})
            assert {f["id"]: f for f in polled["features"]} == merged
    finally:
        await server.close()


async def test_n_clients_on_one_view_cost_one_search_per_period(
        data: Data, es: AsyncElasticsearch, http: aiohttp.ClientSession) -> None:
    index = documents.latest_index(data.settings.iot_index)

    async def queries() -> int:
        stats = await es.indices.stats(index=index, metric="search")
        return int(stats["indices"][index]["primaries"]["search"]["query_total"])

    server = await serve(dataclasses.replace(data.settings, web_sse_refresh=0.5), consume_alerts=False)
    try:
        url = str(server.make_url("/api/events"))
        views = [{"bbox": bbox(VIEW)}, {"bbox": bbox(VIEW), "where": "speed_mps:>=4"}]
        # the same view written differently (filter order, repeated filter) is the same view
        same = [{"bbox": bbox(VIEW)}, {"where": ["speed_mps:>=4", "speed_mps:>=4"], "bbox": bbox(VIEW)}]
        before = await queries()
        responses = [await http.get(url, params=views[i % 2] if i < 20 else same[i % 2]) for i in range(24)]
        streams = [Stream() for _ in responses]
        await asyncio.gather(*(read_until(r, s, lambda s: s.of("latest"), 10) for r, s in zip(responses, streams)))
        hub = server.app[HUB]
        assert hub.clients == 24 and len(hub.views) == 2
        searched = hub.counters.searches
        await asyncio.sleep(3.0)
        periods = 3.0 / 0.5
        during = hub.counters.searches - searched
        # at most one search per view per period (a loaded machine may make periods late, never early)
        assert 2 <= during <= 2 * (periods + 1), during
        await es.indices.refresh(index=index)
        assert await queries() - before == 0  # the views read the live mirror (web.live): Elasticsearch saw none
        metrics = (await (await http.get(str(server.make_url("/metrics")))).text())
        assert "geoiot_web_sse_clients 24.0" in metrics and "geoiot_web_sse_views 2.0" in metrics
        assert f"geoiot_web_sse_searches_total {float(hub.counters.searches)}" in metrics
        for r in responses:
            r.close()
        for _ in range(50):
            if hub.clients == 0:
                break
            await asyncio.sleep(0.1)
        assert hub.clients == 0
        await asyncio.sleep(1.2)
        assert len(hub.views) == 0  # a view ends one period after its last client left
    finally:
        await server.close()


async def test_a_slow_client_drops_its_oldest_while_a_fast_one_keeps_up(
        data: Data, producer: AIOKafkaProducer, http: aiohttp.ClientSession) -> None:
    server = await serve(dataclasses.replace(data.settings, web_sse_queue=40), consume_alerts=True)
    try:
        await wait_consumer(server)
        hub = server.app[HUB]
        # the slow client: a raw socket with a tiny receive buffer that reads nothing after the headers
        slow = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
        slow.connect((server.host, server.port))
        # asyncio stops reading the socket once 2 x limit bytes wait in the reader: then nothing is read
        reader, writer = await asyncio.open_connection(sock=slow, limit=1024)
        writer.write(b"GET /api/events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
        assert (await reader.readexactly(12)) == b"HTTP/1.1 200"
        async with http.get(str(server.make_url("/api/events"))) as resp:
            fast = Stream()
            while hub.clients < 2:
                await asyncio.sleep(0.05)
            padding = "x" * 16_000
            sent: list[bytes] = []
            for burst in range(20):  # bursts the fast client's queue holds; the slow one's fills and drops
                sent += await produce(producer, data.settings.iot_alerts_topic,
                                      [alert(burst * 20 + i, note=padding) for i in range(20)])
                await read_until(resp, fast, lambda s: len(s.of("alert")) == len(sent), 30)
            assert [e.data.encode() for e in fast.of("alert")] == sent  # all, in order
        dropped = hub.counters.dropped["alert"]
        assert dropped > 0
        metrics = await (await http.get(str(server.make_url("/metrics")))).text()
        assert f'geoiot_web_sse_dropped_total{{kind="alert"}} {float(dropped)}' in metrics
        # the slow client now reads: what it gets ends with the newest alert, its oldest missing ones gone
        buffer = bytearray()
        try:
            while sent[-1] not in buffer[-2 * len(sent[-1]):]:
                chunk = await asyncio.wait_for(reader.read(1 << 16), 5)
                if not chunk:
                    break
                buffer += chunk
        except TimeoutError:
            pass
        writer.close()
        received = bytes(buffer)
        assert sent[-1] in received
        got = sum(value in received for value in sent)
        assert got == len(sent) - dropped
    finally:
        await server.close()


@pytest.mark.parametrize("query, headers, word", [
    ({"where": "nosuch:1"}, {}, "nosuch"), ({"where": "speed_mps:fast"}, {}, "speed_mps"),
    ({"bbox": "1,2,3"}, {}, "bbox"), ({"limit": "0"}, {}, "limit"), ({"start": "0"}, {}, "start"),
    ({}, {"Last-Event-ID": "yesterday"}, "Last-Event-ID"), ({"last_event_id": "0:1,0:2"}, {}, "twice"),
])
async def test_a_bad_query_is_a_400_before_any_stream(data: Data, http: aiohttp.ClientSession,
                                                      query: dict[str, str], headers: dict[str, str],
                                                      word: str) -> None:
    server = await serve(data.settings, consume_alerts=False)
    try:
        async with http.get(str(server.make_url("/api/events")), params=query, headers=headers) as resp:
            assert resp.status == 400 and resp.content_type == "application/json"
            assert word in (await resp.json())["error"]
        assert server.app[HUB].clients == 0
    finally:
        await server.close()


async def test_beyond_max_clients_or_views_is_503_busy(data: Data, http: aiohttp.ClientSession) -> None:
    server = await serve(dataclasses.replace(data.settings, web_sse_max_clients=3, web_sse_max_views=2),
                         consume_alerts=False)
    try:
        url = str(server.make_url("/api/events"))
        open_ = [await http.get(url, params={"limit": str(n)}) for n in (1, 2)]
        async with http.get(url, params={"limit": "3"}) as resp:  # a third view
            assert resp.status == 503 and "Retry-After" in resp.headers
            assert "WEB_SSE_MAX_VIEWS" in (await resp.json())["error"]
        open_.append(await http.get(url, params={"limit": "2"}))  # a view watched already: welcome
        assert open_[-1].status == 200
        async with http.get(url, params={"limit": "1"}) as resp:
            assert resp.status == 503 and "Retry-After" in resp.headers
            assert "WEB_SSE_MAX_CLIENTS" in (await resp.json())["error"]
        for r in open_:
            r.close()
    finally:
        await server.close()



async def test_sigterm_ends_open_streams_at_once(data: Data, python_env: dict[str, str],
                                                 http: aiohttp.ClientSession) -> None:
    """``python -m web`` with streams open stops within seconds (not aiohttp's 60 s graceful wait), exit 0."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(python_env, IOT_INDEX=data.settings.iot_index, WEB_PORT=str(port), WEB_HOST="127.0.0.1",
               IOT_ALERTS_TOPIC=data.settings.iot_alerts_topic)
    proc = subprocess.Popen([sys.executable, "-m", "web", "--log-level", "WARNING"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        await wait_healthy(http, base, timeout=30)
        responses = [await http.get(f"{base}/api/events") for _ in range(3)]
        for r in responses:
            await read_until(r, Stream(), lambda s: s.of("latest"), 10)
        began = time.monotonic()
        proc.terminate()
        code = await asyncio.get_running_loop().run_in_executor(None, proc.wait, 20)
        assert code == 0 and time.monotonic() - began < 10
        for r in responses:
            assert (await r.content.read()) is not None  # the streams were ended by the server
            r.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
