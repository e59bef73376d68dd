"""Issue 23, compact track state: memory per held track, changelog bytes per event wire byte, recovery time.

Three measurements; each runs against whichever tree ``PYTHONPATH`` points at (this one, or a ``git archive`` of
an older commit for the same-run baseline), so the same file measures before and after:

* ``memory``: ``--tracks`` tracks, each advanced by ``--reports`` reports (``testkit.motion.advance``, every other
  report in a fence) and put into the worker's ``TrackTable``; the resident memory (RSS) the table added,
  per track, key and dicts included.
* ``changelog``: taxi events of ``--tracks`` tracks (``replay.generate``), cut so that every batch holds one
  report of each track (the fleet case: each batch touches distinct tracks), through the worker's
  ``Pipeline``; for the last ``--measured`` batches, the bytes of the changelog record batches the worker
  writes (its states, encoded as the worker encodes them) against the bytes of the events' own record batches
  (key: the track id, value: the event), both in Kafka's record-batch format (aiokafka's ``BatchBuilder`` with
  the worker producer's settings, one batch per partition and batch: the bytes the broker appends).
* ``recovery``: a changelog of ``--tracks`` tracks (one record per track, 3 partitions, the worker's compaction
  configs) on the real broker (KAFKA_BOOTSTRAP) in each of ``--formats`` (``compact``: this tree's
  ``agents.core.state_codec``; ``json``: the JSON states with a 32-point history written before issue 23),
  recovered ``--rounds`` times, alternating, by ``TrackTable.recover``; median seconds, and the RSS the
  first recovery of each added, per track.

    .venv/bin/python -m bench.track_state memory --tracks 100000 --reports 40
    .venv/bin/python -m bench.track_state changelog --tracks 20000 --rounds 40 --measured 8
    .venv/bin/python -m bench.track_state recovery --tracks 1000000 --formats compact --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import gc
import io
import json
import os
import statistics
import time
import uuid
import zlib

import orjson

from agents.core.geofence import Geofences
from agents.core.pipeline import Incoming, Pipeline
from agents.worker.stream import make_producer
from agents.worker.track_table import TrackTable, changelog_reader
from geoiot import config, topics
from geoiot.schema import load_preset, parse_row
from replay.generate import iter_lines, make_tracks
from testkit.motion import advance

T0 = 1_357_000_000_000
PARTITIONS = 3
PAGE = os.sysconf("SC_PAGE_SIZE")

try:  # the tree under test writes compact states; before issue 23 the worker wrote orjson.dumps(state)
    from agents.core.state_codec import value as encode_state
    ENCODING = "compact"
except ImportError:
    encode_state = orjson.dumps
    ENCODING = "json"


def rss() -> int:
    gc.collect()
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def memory(tracks: int, reports: int) -> dict:
    table = TrackTable("bench", lambda: None)
    fences = [(), ("midtown",)]
    before = rss()
    for i in range(tracks):
        state = None
        lon = -73.97 + i * 1e-6
        for k in range(reports):
            state, _ = advance(state, T0 + k * 1000, lon + k * 1e-5, 40.76 + k * 1e-5, fences[k % 2])
        table.put(i % PARTITIONS, f"taxi-{i:07d}", state)
    added = rss() - before
    assert len(table) == tracks
    return {"tree_encoding": ENCODING, "tracks": tracks, "reports": reports, "rss_added_mb": round(added / 2**20, 1),
            "bytes_per_track": round(added / tracks)}


def fleet_events(preset, tracks: int, rounds: int) -> list[bytes]:
    """``rounds`` reports of each of ``tracks`` taxis, round after round (time-major, then track order)."""
    text = "".join(iter_lines(make_tracks(tracks, rounds, 7), rounds))
    return [orjson.dumps(parse_row(preset, row)[0]) for row in csv.reader(io.StringIO(text))]


def batch_bytes(create, records: list[tuple[bytes, bytes | None, int]]) -> int:
    """Bytes of the record batches the producer would send for these (key, value, partition) records."""
    total = 0
    by_partition: dict[int, list[tuple[bytes, bytes | None]]] = {}
    for key, value, partition in records:
        by_partition.setdefault(partition, []).append((key, value))
    for items in by_partition.values():
        batch = create()
        for key, value in items:
            if batch.append(key=key, value=value, timestamp=None) is None:
                total += batch.size()
                batch = create()
                batch.append(key=key, value=value, timestamp=None)
        total += batch.size()
    return total


async def changelog(tracks: int, rounds: int, measured: int) -> dict:
    settings = config.load()
    preset = load_preset(settings.iot_schema)
    pipe = Pipeline(preset, Geofences.load(settings.iot_geofences), "bench")
    values = fleet_events(preset, tracks, rounds)
    producer = make_producer(settings.kafka_bootstrap)  # not started: only its record batches are built
    states: dict = {}
    event_bytes = changelog_bytes = events = writes = value_bytes = 0
    for r in range(rounds):
        chunk = values[r * tracks:(r + 1) * tracks]
        keys = [orjson.loads(v)[preset.track] for v in chunk]
        parts = [zlib.crc32(str(k).encode()) % PARTITIONS for k in keys]
        msgs = [Incoming(v, str(k).encode(), "src", p, r) for v, k, p in zip(chunk, keys, parts)]
        result = pipe.process(msgs, states.get)
        changes = []
        for track, (partition, state) in result.states.items():
            states[track] = state
            changes.append((orjson.dumps(track), encode_state(state), partition))
        if r >= rounds - measured:
            events += len(msgs)
            writes += len(changes)
            value_bytes += sum(len(v) for _, v, _ in changes)
            event_bytes += batch_bytes(producer.create_batch, [(m.key, m.value, m.partition) for m in msgs])
            changelog_bytes += batch_bytes(producer.create_batch, changes)
    await producer.stop()
    return {"tree_encoding": ENCODING, "tracks": tracks, "rounds": rounds, "measured_batches": measured,
            "events": events, "changelog_writes": writes, "state_value_bytes": round(value_bytes / writes, 1),
            "event_record_bytes": round(event_bytes / events, 1),
            "changelog_record_bytes_per_write": round(changelog_bytes / writes, 1),
            "changelog_bytes_per_event_byte": round(changelog_bytes / event_bytes, 3)}


def json_value(i: int) -> bytes:
    """A state as the worker wrote it before issue 23: JSON with a full 32-point history."""
    hist = [[T0 + k * 1000, -73.97 + i * 1e-6 + k * 1e-5, 40.76 + k * 1e-5] for k in range(32)]
    return orjson.dumps({"t": hist[-1][0], "lon": hist[-1][1], "lat": hist[-1][2], "fences": ["midtown"],
                         "hist": hist})


def compact_value(i: int) -> bytes:
    from agents.core.motion import State
    from agents.core.state_codec import value
    return value(State(T0 + 31_000, -73.97 + i * 1e-6 + 31e-5, 40.76 + 31e-5, ("midtown",)))


async def fill(bootstrap: str, topic: str, tracks: int, make_value) -> float:
    producer = make_producer(bootstrap)
    await producer.start()
    started = time.perf_counter()
    try:
        futures = []
        batches = {p: producer.create_batch() for p in range(PARTITIONS)}
        for i in range(tracks):
            key = orjson.dumps(f"taxi-{i:07d}")
            p = zlib.crc32(key) % PARTITIONS
            value = make_value(i)
            if batches[p].append(key=key, value=value, timestamp=None) is None:
                futures.append(await producer.send_batch(batches[p], topic, partition=p))
                batches[p] = producer.create_batch()
                batches[p].append(key=key, value=value, timestamp=None)
            if len(futures) > 64:
                await asyncio.gather(*futures)
                futures = []
        for p, batch in batches.items():
            futures.append(await producer.send_batch(batch, topic, partition=p))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return time.perf_counter() - started


async def recovery(tracks: int, formats: list[str], rounds: int) -> dict:
    bootstrap = config.load().kafka_bootstrap
    makers = {"compact": compact_value, "json": json_value}
    names = {f: f"bench-state-recovery-{uuid.uuid4().hex[:8]}-{f}" for f in formats}
    out: dict = {"tree_encoding": ENCODING, "tracks": tracks, "partitions": PARTITIONS}
    try:
        async with topics.admin_client(bootstrap) as admin:
            await topics.ensure(admin, [topics.TopicSpec(n, PARTITIONS, configs=dict(topics.CHANGELOG_CONFIGS))
                                        for n in names.values()])
        for f in formats:
            out[f"{f}_fill_s"] = round(await fill(bootstrap, names[f], tracks, makers[f]), 1)
        seconds: dict[str, list[float]] = {f: [] for f in formats}
        for r in range(rounds):
            for f in (formats if r % 2 == 0 else formats[::-1]):
                table = TrackTable(names[f], lambda: changelog_reader(bootstrap))
                before = rss()
                started = time.perf_counter()
                read = await table.recover(range(PARTITIONS))
                seconds[f].append(time.perf_counter() - started)
                assert len(table) == tracks and read == tracks, (f, len(table), read)
                if f"{f}_rss_bytes_per_track" not in out:
                    out[f"{f}_rss_bytes_per_track"] = round((rss() - before) / tracks)
                del table
        for f in formats:
            out[f"{f}_recovery_s"] = round(statistics.median(seconds[f]), 2)
            out[f"{f}_all_s"] = [round(s, 2) for s in seconds[f]]
    finally:
        await topics.delete_topics(bootstrap, list(names.values()))
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(prog="python -m bench.track_state", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    m = sub.add_parser("memory")
    m.add_argument("--tracks", type=int, default=100_000)
    m.add_argument("--reports", type=int, default=40)
    c = sub.add_parser("changelog")
    c.add_argument("--tracks", type=int, default=20_000)
    c.add_argument("--rounds", type=int, default=40)
    c.add_argument("--measured", type=int, default=8)
    r = sub.add_parser("recovery")
    r.add_argument("--tracks", type=int, default=1_000_000)
    r.add_argument("--formats", default="compact", help="comma-separated: compact, json")
    r.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if args.what == "memory":
        result = memory(args.tracks, args.reports)
    elif args.what == "changelog":
        result = asyncio.run(changelog(args.tracks, args.rounds, args.measured))
    else:
        result = asyncio.run(recovery(args.tracks, args.formats.split(","), args.rounds))
    print(json.dumps(result))
