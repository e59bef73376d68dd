"""The real worker for integration tests: ``python -m faust -A agents.app worker`` as a subprocess
(:class:`Worker`), the data it is fed (generated files, replayed or produced raw), and what its tests read
back and compare (topics, Elasticsearch documents, the alerts shapely expects). One home for the tests of
the worker, the Spark parity, the gateway and failover; fixtures that build a worker's environment are in
tests/conftest.py (``agent_env``)."""

from __future__ import annotations

import asyncio
import csv
import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import defaultdict
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from shapely.geometry import Point, box, mapping, shape

from geoiot.config import DEFAULT_GEOFENCES
from geoiot.schema import load_preset, parse_row
from testkit.kafka_events import drain
from testkit.processes import free_port

ROOT = Path(__file__).resolve().parents[1]
PRESET = load_preset("taxi")


class Worker:
    """``python -m faust -A agents.app worker`` as a subprocess, with its own log file."""

    def __init__(self, env: dict[str, str], log: Path, port: int | None = None) -> None:
        """``port``: its web port (default: a free one); the same port restarts the same worker (its default
        Kafka transactional id includes the port)."""
        self.env, self.log, self.port = env, log, port or free_port()
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 90) -> "Worker":
        out = self.log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "faust", "-A", "agents.app", "worker", "-l", "info", "--web-port", str(self.port)],
            cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=1) as resp:
                    if resp.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"worker not healthy after {timeout}s:\n{self.log.read_text()[-3000:]}")

    def metrics(self) -> dict[str, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("geoiot_agent_"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def generate(tmp_path: Path, tracks: int, points: int, seed: int) -> Path:
    path = tmp_path / f"tracks-{seed}.csv"
    subprocess.run([sys.executable, "-m", "replay", "generate", "--tracks", str(tracks), "--points", str(points),
                    "--seed", str(seed), "--jfk-share", "0.5", "--out", str(path)], cwd=ROOT, check=True,
                   capture_output=True)
    return path


def replay(path: Path, topic: str, env: dict[str, str]) -> dict:
    result = subprocess.run([sys.executable, "-m", "replay", "constant", str(path), "--topic", topic, "--max-rate",
                             "--json-summary", "-q"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, f"replay failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    return summary


def records(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return [parse_row(PRESET, row)[0] for row in csv.reader(f)]


def fence_file(tmp_path: Path) -> tuple[Path, list[tuple[str, object]]]:
    """The shipped JFK fence, a box over its western half (id in properties) and a far-away fence."""
    jfk = shape(json.loads(DEFAULT_GEOFENCES.read_text())["features"][0]["geometry"])
    minx, miny, maxx, maxy = jfk.bounds
    west = box(minx - 0.002, miny - 0.002, (minx + maxx) / 2, maxy + 0.002)
    far = box(10, 10, 11, 11)
    fences = [("jfk", jfk), ("a-west", west), ("zz-far", far)]
    features = [{"type": "Feature", "id": "jfk", "properties": {}, "geometry": mapping(jfk)},
                {"type": "Feature", "properties": {"id": "a-west"}, "geometry": mapping(west)},
                {"type": "Feature", "id": "zz-far", "properties": {}, "geometry": mapping(far)}]
    path = tmp_path / "fences.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path, fences


def expected_fences(rec: dict, fences) -> list[str]:
    """The ids of the fences a report (of the taxi preset) lies in, sorted, by shapely directly."""
    p = Point(rec[PRESET.lon], rec[PRESET.lat])
    return sorted(fid for fid, geom in fences if geom.intersects(p))


def expected_alerts(recs: list[dict], fences) -> list[tuple]:
    """(track, fence, event, time) of every transition between a track's consecutive reports, sorted."""
    track_field, time_field = PRESET.track, PRESET.time
    by_track: dict[str, list[dict]] = defaultdict(list)
    for r in recs:
        by_track[r[track_field]].append(r)
    out = []
    for track, rs in by_track.items():
        rs.sort(key=lambda r: r[time_field])
        prev = None
        for r in rs:
            now = set(expected_fences(r, fences))
            if prev is not None:
                out += [(track, f, "exit", r[time_field]) for f in prev - now]
                out += [(track, f, "enter", r[time_field]) for f in now - prev]
            prev = now
    return sorted(out)


async def read_topic(bootstrap: str, topic: str, expect: int, timeout: float = 30, settle: float = 2.0,
                     isolation_level: str = "read_uncommitted") -> list[bytes]:
    """Every value of a topic: waits for ``expect`` values, then ``settle`` seconds more to catch extras."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False, group_id=None, isolation_level=isolation_level)
    await consumer.start()
    try:
        return [r.value for r in await drain(consumer, expect, timeout, settle)]
    finally:
        await consumer.stop()


async def wait_count(es, index: str, expect: int, timeout: float = 120, settle: float = 3.0) -> int:
    """Poll the alias until the count reaches ``expect`` and stays there for ``settle`` seconds."""
    deadline = time.monotonic() + timeout
    count, stable_since = -1, None
    while time.monotonic() < deadline:
        try:
            await es.indices.refresh(index=index)
            count = (await es.count(index=index))["count"]
        except Exception:
            count = -1
        if count >= expect:
            stable_since = stable_since or time.monotonic()
            if time.monotonic() - stable_since >= settle:
                return count
        await asyncio.sleep(0.5)
    return count


async def all_docs(es, index: str) -> list[dict]:
    docs = []
    resp = await es.search(index=index, size=5000, scroll="1m", sort=["_doc"])
    while resp["hits"]["hits"]:
        docs += resp["hits"]["hits"]
        resp = await es.scroll(scroll_id=resp["_scroll_id"], scroll="1m")
    await es.clear_scroll(scroll_id=resp["_scroll_id"])
    return docs


async def cleanup_topics(kafka_admin, prefixes: list[str]) -> None:
    names = [t for t in await kafka_admin.list_topics() if any(t.startswith(p) for p in prefixes)]
    if names:
        try:
            await kafka_admin.delete_topics(names)
        except Exception:
            pass


async def produce_raw(bootstrap: str, topic: str, items: list[tuple[bytes | None, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for key, value in items:
            await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()


def transitions_seen(values: list[bytes]) -> set[tuple]:
    return {(a["track"], a["fence"], a["event"], a["time"]) for a in map(orjson.loads, values)}


async def live_count(es, index: str) -> int:
    try:
        await es.indices.refresh(index=index)
        return (await es.count(index=index))["count"]
    except Exception:
        return 0


def health(worker: "Worker") -> dict:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{worker.port}/healthz", timeout=2) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return json.loads(exc.read())
