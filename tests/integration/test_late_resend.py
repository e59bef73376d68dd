"""Re-sent and late reports on the real Kafka and Elasticsearch, and the live layer end to end (issue 23).

A data file replayed through a real worker, then replayed again (whole, and its first half): the re-sent reports
are late (the track moved on), written create-only, so every stored document stays byte for byte what the first
pass wrote (its motion kept, not a write more: same ``_seq_no``), no alert is repeated and no live record is
added. A late report never seen before is stored with null motion.

Then the live layer end to end: ``python -m web`` servers mirroring the worker's live topic answer ``/api/latest``
with the newest report of each track in the data, also after older reports are re-sent, from a second server
started later, and from a restarted one."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from geoiot import documents
from testkit import live as live_kit
from testkit.health import wait_healthy
from testkit.processes import stop
from testkit.processes import free_port
from testkit.worker import (ROOT, Worker, cleanup_topics, expected_alerts, fence_file, generate, produce_raw,
                            read_topic, records, replay, wait_count)
from test_agents_transactions import read_records

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WORLD = "-180,-90,180,90"


async def stored(es: Any, index: str) -> dict[str, tuple[int, int, bytes]]:
    """_id -> (_seq_no, _primary_term, _source as Elasticsearch holds it): what a rewrite would change."""
    await es.indices.refresh(index=index)
    resp = await es.search(index=index, size=10_000, seq_no_primary_term=True, query={"match_all": {}})
    hits = resp["hits"]["hits"]
    assert len(hits) < 10_000
    return {h["_id"]: (h["_seq_no"], h["_primary_term"], orjson.dumps(h["_source"])) for h in hits}


def first_half(data: Path, tmp_path: Path) -> Path:
    lines = data.read_bytes().splitlines(keepends=True)
    half = tmp_path / "first-half.csv"
    half.write_bytes(b"".join(lines[: len(lines) // 2]))
    return half


async def wait_consumed(worker: Worker, events: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while worker.metrics().get("geoiot_agent_events_total", 0) < events:
        assert time.monotonic() < deadline, "the re-sent events were not consumed"
        await asyncio.sleep(0.5)


async def wait_metric(worker: Worker, name: str, value: float, timeout: float = 60) -> None:
    """The batches of the consumed events are stored: the counters settle after the bulk answer."""
    deadline = time.monotonic() + timeout
    while worker.metrics().get(name, 0) < value and time.monotonic() < deadline:
        await asyncio.sleep(0.3)


async def test_resent_reports_keep_the_stored_documents_alerts_and_live_records(
        stack, es, kafka_admin, new_topic, agent_env, tmp_path, output_dir):
    topic = await new_topic("late-resend", partitions=3)
    fences_path, fences = fence_file(tmp_path)
    env = agent_env(topic, IOT_GEOFENCES=str(fences_path), IOT_BULK_SIZE="200")
    index, live_topic = env["IOT_INDEX"], f"{topic}-latest"
    data = generate(tmp_path, tracks=20, points=60, seed=31)
    recs = records(data)
    half = first_half(data, tmp_path)
    n_half = len(records(half))
    newest = live_kit.newest_reports(recs)
    want_alerts = expected_alerts(recs, fences)
    assert want_alerts, "the generated set must cross a fence"
    worker = Worker(env, output_dir / f"{topic}.log")
    try:
        replay(data, topic, env)
        worker.start()
        assert await wait_count(es, index, len(recs)) == len(recs)
        before = await stored(es, index)
        assert len(before) == len(recs)
        # every report but each track's first has motion: what a re-sent one must not erase
        assert sum(orjson.loads(s)[documents.SPEED] is None for _, _, s in before.values()) == len(newest)
        alerts_before = await read_topic(stack.kafka_bootstrap, env["IOT_ALERTS_TOPIC"], len(want_alerts),
                                         isolation_level="read_committed")
        assert len(alerts_before) == len(want_alerts)
        live_before = sorted(await read_records(stack.kafka_bootstrap, live_topic, len(newest)))  # partitions interleave
        assert {k.decode() for k, _ in live_before} == set(newest)

        # The whole file again, then its first half: every report late, already stored.
        replay(data, topic, env)
        replay(half, topic, env)
        resent = len(recs) + n_half
        await wait_consumed(worker, len(recs) + resent)
        await wait_metric(worker, "geoiot_agent_already_stored_total", resent)
        metrics = worker.metrics()
        assert metrics["geoiot_agent_already_stored_total"] == resent
        assert metrics["geoiot_agent_dead_lettered_total"] == 0
        assert await stored(es, index) == before  # byte-identical, and not rewritten (same _seq_no)
        alerts_after = await read_topic(stack.kafka_bootstrap, env["IOT_ALERTS_TOPIC"], len(want_alerts),
                                        isolation_level="read_committed")
        assert sorted(alerts_after) == sorted(alerts_before)  # no alert repeated
        assert sorted(await read_records(stack.kafka_bootstrap, live_topic, len(live_before))) == live_before

        # Late reports never seen before (1 ms older than each track's newest): stored, with null motion.
        older = [dict(r, observationTime=r["observationTime"] - 1, longitude=r["longitude"] + 0.01)
                 for r in newest.values()]
        await produce_raw(stack.kafka_bootstrap, topic, [(r["taxiId"].encode(), orjson.dumps(r)) for r in older])
        assert await wait_count(es, index, len(recs) + len(older)) == len(recs) + len(older)
        after = await stored(es, index)
        assert {k: v for k, v in after.items() if k in before} == before
        for r in older:
            doc = orjson.loads(after[documents.doc_id(r["taxiId"], r["observationTime"])][2])
            assert doc[documents.SPEED] is None and doc[documents.DISTANCE] is None and doc[documents.HEADING] is None
            assert doc[documents.GEOMETRY] == {"lat": r["latitude"], "lon": r["longitude"]}
        assert worker.metrics()["geoiot_agent_already_stored_total"] == resent
        assert sorted(await read_records(stack.kafka_bootstrap, live_topic, len(live_before))) == live_before
    finally:
        worker.stop()
        await cleanup_topics(kafka_admin, [f"{topic}-"])


class WebServer:
    """``python -m web`` as a subprocess on its own port."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.env = dict(env, WEB_PORT=str(self.port), WEB_HOST="127.0.0.1")
        self.log = log
        self.proc: subprocess.Popen | None = None
        self.base = f"http://127.0.0.1:{self.port}"

    async def start(self, http: aiohttp.ClientSession) -> "WebServer":
        self.proc = subprocess.Popen([sys.executable, "-m", "web", "--log-level", "WARNING"], cwd=ROOT, env=self.env,
                                     stdout=self.log.open("ab"), stderr=subprocess.STDOUT)
        await wait_healthy(http, self.base, timeout=60)  # ready once the live topic is read to its end
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            stop(self.proc)


async def latest(http: aiohttp.ClientSession, server: WebServer) -> dict[str, Any]:
    async with http.get(f"{server.base}/api/latest", params={"bbox": WORLD, "limit": "10000"}) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


def by_track(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """(total, track -> feature) of an /api/latest answer: features newest first, ties in any order (a
    server's tie order is its mirror's arrival order)."""
    return body["total"], {f["id"]: f for f in body["features"]}


def held(body: dict[str, Any]) -> dict[str, tuple[int, list[float], dict[str, Any]]]:
    """track -> (time, [lon, lat], attributes) of an /api/latest answer."""
    return {f["id"]: (f["properties"]["time"], f["geometry"]["coordinates"], f["properties"]["attributes"])
            for f in body["features"]}


def expected(newest: dict[str, dict]) -> dict[str, tuple[int, list[float], dict[str, Any]]]:
    """What /api/latest must hold: each track's newest report in the data (attributes: its other fields)."""
    core = ("taxiId", "observationTime", "longitude", "latitude")
    return {t: (r["observationTime"], [r["longitude"], r["latitude"]], {k: v for k, v in r.items() if k not in core})
            for t, r in newest.items()}


async def until_holds(http: aiohttp.ClientSession, server: WebServer, want: dict, timeout: float = 60) -> dict:
    """The server's answer once it holds every expected track (the worker publishes batch by batch)."""
    deadline = time.monotonic() + timeout
    while True:
        body = await latest(http, server)
        if set(held(body)) == set(want) or time.monotonic() > deadline:
            return body
        await asyncio.sleep(0.5)


def comparable(held_: dict, want: dict) -> dict:
    """Only the attributes the data has (the answer may carry more, e.g. motion)."""
    return {t: (time_ms, lonlat, {k: attrs.get(k) for k in want[t][2]}) if t in want else (time_ms, lonlat, attrs)
            for t, (time_ms, lonlat, attrs) in held_.items()}


async def test_the_live_layer_end_to_end_worker_to_web_servers(
        stack, es, kafka_admin, new_topic, agent_env, python_env, tmp_path, output_dir):
    topic = await new_topic("late-live", partitions=3)
    env = agent_env(topic, IOT_BULK_SIZE="300")
    index = env["IOT_INDEX"]
    data = generate(tmp_path, tracks=40, points=30, seed=37)
    recs = records(data)
    newest = live_kit.newest_reports(recs)
    want = expected(newest)
    web_env = dict(python_env, IOT_TOPIC=topic, IOT_INDEX=index, IOT_ALERTS_TOPIC=env["IOT_ALERTS_TOPIC"])
    worker = Worker(env, output_dir / f"{topic}.log")
    servers: list[WebServer] = []
    async with aiohttp.ClientSession() as http:
        try:
            worker.start()
            first = WebServer(web_env, output_dir / f"{topic}-web1.log")
            servers.append(first)
            await first.start(http)  # started before the data: it follows the topic
            replay(data, topic, env)
            assert await wait_count(es, index, len(recs)) == len(recs)
            body = await until_holds(http, first, want)
            assert body["total"] == len(newest)
            answer = held(body)
            assert comparable(answer, want) == want
            assert all(f["properties"]["attributes"] for f in body["features"])

            # Older reports re-sent (the first half of the file, then the whole file): nothing changes.
            replay(first_half(data, tmp_path), topic, env)
            replay(data, topic, env)
            await wait_consumed(worker, 2 * len(recs) + len(records(first_half(data, tmp_path))))
            await wait_metric(worker, "geoiot_agent_already_stored_total",
                              len(recs) + len(records(first_half(data, tmp_path))))
            assert by_track(await latest(http, first)) == by_track(body)
            # ... and the store agrees: each newest report's observation has the motion the live layer shows.
            docs = await stored(es, index)
            moving = 0
            for f in body["features"]:
                doc = orjson.loads(docs[documents.doc_id(f["id"], f["properties"]["time"])][2])
                assert f["properties"][documents.SPEED] == doc[documents.SPEED], f["id"]
                assert f["properties"][documents.HEADING] == doc[documents.HEADING], f["id"]
                moving += doc[documents.SPEED] is not None
            assert moving > len(newest) // 2

            # A second server started later, and the first one restarted, answer the same.
            second = WebServer(web_env, output_dir / f"{topic}-web2.log")
            servers.append(second)
            await second.start(http)
            assert by_track(await latest(http, second)) == by_track(body)
            first.stop()
            again = WebServer(web_env, output_dir / f"{topic}-web1b.log")
            servers.append(again)
            await again.start(http)
            assert by_track(await latest(http, again)) == by_track(body)
        finally:
            for server in servers:
                server.stop()
            worker.stop()
            await cleanup_topics(kafka_admin, [f"{topic}-"])
