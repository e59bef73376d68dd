"""The fleet view with a user's own layout (issue 14, item 6): the real flight positions of ``../shared/data``
(testkit/presets: FLIGHTS, FLIGHTS_DATA) through the agents' write path, then /api/latest,
/api/aggregate (source=latest too), /api/observations and /api/events against direct computations over
the file's rows, for every field type the preset has. Skipped when the data file is absent."""

from __future__ import annotations

import csv
import dataclasses
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestServer
from elasticsearch import AsyncElasticsearch

from agents.core.geofence import Geofences
from agents.core.pipeline import Incoming, Pipeline
from agents.store.index import drop_index, ensure_index
from agents.store.sink import ElasticsearchSink, es_client
from geoiot.config import DEFAULT_GEOFENCES, Settings
from geoiot.schema import load_preset
from testkit.presets import FLIGHTS, FLIGHTS_DATA
from testkit import live as live_kit
from testkit.sse import Stream, read_until
from web.app import init_app

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def data_file() -> Path | None:
    """FLIGHTS_DATA; from a git worktree, the same file beside the main checkout (``<common dir>/../..``)."""
    if FLIGHTS_DATA.is_file():
        return FLIGHTS_DATA
    try:
        common = subprocess.run(["git", "rev-parse", "--path-format=absolute", "--git-common-dir"], cwd=ROOT,
                                capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    other = Path(common).parent.parent / "shared" / "data" / FLIGHTS_DATA.name if common else None
    return other if other is not None and other.is_file() else None


PATH = data_file()
if PATH is None:
    pytest.skip(f"the flight positions are not there ({FLIGHTS_DATA})", allow_module_level=True)

PRESET = load_preset(str(FLIGHTS))
Row = dict[str, Any]


def rows() -> list[Row]:
    """The file's good rows, typed: 8 columns (22 rows split at a stray comma have 9: bad rows, not data)."""
    out = []
    with open(PATH, newline="") as f:
        for values in csv.reader(line for line in f if not line.startswith("#")):
            if len(values) != len(PRESET.names):
                continue
            r: Row = dict(zip(PRESET.names, values))
            t = datetime.strptime(r["timestamp"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc)
            r.update(timestamp=int(t.timestamp() * 1000), longitude=float(r["longitude"]),
                     latitude=float(r["latitude"]),
                     **{k: int(r[k]) for k in ("altitude", "heading", "speed", "unnamed")})
            out.append(r)
    return out


@dataclasses.dataclass
class Data:
    rows: list[Row]
    newest: dict[str, Row]
    settings: Settings


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def data(stack: Settings, es: AsyncElasticsearch) -> AsyncIterator[Data]:
    name = f"webflights-{uuid.uuid4().hex[:10]}"
    settings = dataclasses.replace(stack, iot_index=name, iot_schema=str(FLIGHTS), web_sse_refresh=0.3,
                                   iot_latest_topic=f"{name}-latest")
    await ensure_index(es, settings, PRESET)
    await live_kit.ensure_topic(settings, 1)
    pipeline = Pipeline(PRESET, Geofences.load(DEFAULT_GEOFENCES), name)
    sink = ElasticsearchSink(es_client(stack.es_hosts), on_conflict=lambda n: None)
    good = rows()
    # the file's text, as a source sends it: strings, parsed by the agents with the preset
    with open(PATH, newline="") as f:
        raw = [dict(zip(PRESET.names, v)) for v in csv.reader(line for line in f if not line.startswith("#"))
               if len(v) == len(PRESET.names)]
    try:
        result = pipeline.process([Incoming(orjson.dumps(r), r["object_id"].encode(), "src", 0, i)
                                   for i, r in enumerate(raw)], lambda track: None)
        assert result.dead == [], result.dead[:3]
        assert await sink.write_bulk(result.bulk()) == []
        await live_kit.publish_once(settings, live_kit.latest_documents(result))
        await es.indices.refresh(index=f"{name}*")
        newest: dict[str, Row] = {}
        for r in good:
            if r["object_id"] not in newest or r["timestamp"] >= newest[r["object_id"]]["timestamp"]:
                newest[r["object_id"]] = r
        yield Data(good, newest, settings)
    finally:
        await sink.stop()
        await drop_index(es, name)
        await live_kit.delete_topic(settings)


@pytest_asyncio.fixture(loop_scope="session")
async def server(data: Data) -> AsyncIterator[TestServer]:
    s = TestServer(init_app(data.settings, consume_alerts=False))
    await s.start_server()
    await live_kit.until_synced(s.app)
    yield s
    await s.close()


async def get(http: aiohttp.ClientSession, server: TestServer, path: str, query: list[tuple[str, str]]) -> Any:
    async with http.get(str(server.make_url(path)), params=query) as r:
        body = await r.json()
        assert r.status == 200, body
        return body


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def cases(data: Data) -> list[tuple[list[str], Callable[[Row], bool]]]:
    ids = sorted(data.newest)
    mid = sorted(r["timestamp"] for r in data.rows)[len(data.rows) // 2]
    return [
        ([f"object_id:{ids[0]}"], lambda r: r["object_id"] == ids[0]),  # string
        ([f"object_id:{ids[1]}|{ids[2]}|{ids[3]}"], lambda r: r["object_id"] in ids[1:4]),
        (["altitude:>=30000"], lambda r: r["altitude"] >= 30000),  # int
        (["speed:300..400"], lambda r: 300 <= r["speed"] <= 400),
        (["heading:90|180"], lambda r: r["heading"] in (90, 180)),
        (["unnamed:<0"], lambda r: r["unnamed"] < 0),
        (["longitude:<-100"], lambda r: r["longitude"] < -100),  # float
        (["latitude:30.5..40"], lambda r: 30.5 <= r["latitude"] <= 40),
        ([f"timestamp:>={iso(mid)}"], lambda r: r["timestamp"] >= mid),  # time, ISO
        ([f"timestamp:..{mid}"], lambda r: r["timestamp"] <= mid),  # time, epoch ms
        (["altitude:>=10000", "speed:>350", "longitude:-120..-80"],
         lambda r: r["altitude"] >= 10000 and r["speed"] > 350 and -120 <= r["longitude"] <= -80),
    ]


async def test_latest_is_the_newest_report_of_each_flight(data: Data, server: TestServer) -> None:
    async with aiohttp.ClientSession() as http:
        body = await get(http, server, "/api/latest", [])
    assert body["total"] == len(data.newest) == 25
    for f in body["features"]:
        r = data.newest[f["id"]]
        assert f["properties"]["time"] == r["timestamp"]
        assert f["geometry"]["coordinates"] == [r["longitude"], r["latitude"]]
        assert f["properties"]["attributes"]["altitude"] == r["altitude"]  # the preset's own fields


async def test_every_field_type_of_the_flight_preset_filters_to_the_direct_count(data: Data,
                                                                                 server: TestServer) -> None:
    async with aiohttp.ClientSession() as http:
        for where, keep in cases(data):
            query = [("where", w) for w in where]
            want = [r for r in data.rows if keep(r)]
            assert 0 < len(want) < len(data.rows), where
            agg = await get(http, server, "/api/aggregate", [("precision", "2"), *query])
            assert agg["total"] == len(want), where
            obs = await get(http, server, "/api/observations", [("limit", "10000"), *query])
            assert obs["total"] == len(want), where
            now = [r for r in data.newest.values() if keep(r)]
            latest = await get(http, server, "/api/latest", query)
            assert {f["id"] for f in latest["features"]} == {r["object_id"] for r in now}, where
            cells = await get(http, server, "/api/aggregate", [("precision", "2"), ("source", "latest"), *query])
            assert cells["total"] == len(now), where


async def test_events_carry_the_flight_view(data: Data, server: TestServer) -> None:
    query = [("where", "altitude:>=20000"), ("bbox", "-125,24,-66,50")]
    async with aiohttp.ClientSession() as http:
        polled = await get(http, server, "/api/latest", query)
        async with http.get(str(server.make_url("/api/events")), params=query) as resp:
            stream = Stream()
            await read_until(resp, stream, lambda s: s.of("latest"), 10)
    first = stream.of("latest")[0].json()
    assert first["full"] is True and first["features"] == polled["features"] and first["total"] == polled["total"]
    assert polled["total"] == sum(r["altitude"] >= 20000 and -125 <= r["longitude"] <= -66
                                  and 24 <= r["latitude"] <= 50 for r in data.newest.values())
