"""Recovery of the track-state changelog: records read and seconds, with Kafka's default compaction settings
against ``geoiot.topics.CHANGELOG_CONFIGS``, on the real broker (KAFKA_BOOTSTRAP).

Two changelogs of ``--partitions`` partitions are created, one with only ``cleanup.policy=compact`` (what the
worker created before) and one with the worker's configs; each gets ``--updates`` states of each of
``--tracks`` tracks (the worker's encoding, the history growing with each update, partition by track), written
round by round as a running worker writes them. After ``--settle`` seconds (the broker's log cleaner runs
meanwhile) each is recovered ``--rounds`` times, alternating, by the worker's own ``TrackTable.recover``.
Reports per configuration the median seconds and the records read per track, and the ratios.

    .venv/bin/python -m bench.changelog_recovery [--tracks 200000 --updates 10 --partitions 3 --settle 120]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid
import zlib

import orjson

from agents.worker.stream import make_producer
from agents.worker.track_table import TrackTable, changelog_reader
from geoiot import config, topics
from testkit.motion import advance

CONFIGS = {"before": dict(topics.COMPACTED), "after": dict(topics.CHANGELOG_CONFIGS)}


def state_values(updates: int) -> list[bytes]:
    """A track's states after 1, 2, ... ``updates`` reports, as the worker writes them (the history grows)."""
    state, out = None, []
    for k in range(updates):
        state, _ = advance(state, 1_357_000_000_000 + k * 1000, -73.97 + k * 1e-5, 40.76 + k * 1e-5,
                           ("midtown",) if k % 2 else ())
        out.append(orjson.dumps(state))
    return out


async def fill(bootstrap: str, topic: str, tracks: int, updates: int, partitions: int) -> float:
    """Write every track's state ``updates`` times; returns the seconds it took."""
    values = state_values(updates)
    keys = [orjson.dumps(f"taxi-{i}") for i in range(tracks)]
    parts = [zlib.crc32(k) % partitions for k in keys]
    producer = make_producer(bootstrap)
    await producer.start()
    started = time.perf_counter()
    try:
        for value in values:
            futures = []
            batches = {p: producer.create_batch() for p in range(partitions)}
            for key, p in zip(keys, parts):
                if batches[p].append(key=key, value=value, timestamp=None) is None:
                    futures.append(await producer.send_batch(batches[p], topic, partition=p))
                    batches[p] = producer.create_batch()
                    batches[p].append(key=key, value=value, timestamp=None)
            for p, batch in batches.items():
                futures.append(await producer.send_batch(batch, topic, partition=p))
            await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return time.perf_counter() - started


async def recover(bootstrap: str, topic: str, partitions: int) -> tuple[float, int, int]:
    table = TrackTable(topic, lambda: changelog_reader(bootstrap))
    started = time.perf_counter()
    read = await table.recover(range(partitions))
    return time.perf_counter() - started, read, len(table)


async def main(tracks: int, updates: int, partitions: int, settle: float, rounds: int) -> dict:
    bootstrap = config.load().kafka_bootstrap
    prefix = f"bench-changelog-recovery-{uuid.uuid4().hex[:8]}"
    names = {name: f"{prefix}-{name}" for name in CONFIGS}
    out: dict = {"tracks": tracks, "updates": tracks * updates, "partitions": partitions, "settle_s": settle,
                 "configs": CONFIGS}
    try:
        async with topics.admin_client(bootstrap) as admin:
            await topics.ensure(admin, [topics.TopicSpec(names[n], partitions, configs=c) for n, c in CONFIGS.items()])
        for name in CONFIGS:
            out[f"{name}_fill_s"] = round(await fill(bootstrap, names[name], tracks, updates, partitions), 1)
        await asyncio.sleep(settle)
        seconds: dict[str, list[float]] = {n: [] for n in CONFIGS}
        for r in range(rounds):
            for name in (list(CONFIGS) if r % 2 == 0 else list(CONFIGS)[::-1]):
                took, read, found = await recover(bootstrap, names[name], partitions)
                assert found == tracks, (name, found)
                seconds[name].append(took)
                out[f"{name}_records"] = read
        for name in CONFIGS:
            out[f"{name}_recovery_s"] = round(statistics.median(seconds[name]), 2)
            out[f"{name}_records_per_track"] = round(out[f"{name}_records"] / tracks, 2)
        out["records_ratio"] = round(out["before_records"] / out["after_records"], 2)
        out["seconds_ratio"] = round(out["before_recovery_s"] / out["after_recovery_s"], 2)
    finally:
        await topics.delete_topics(bootstrap, list(names.values()))
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.changelog_recovery", description=__doc__.splitlines()[0])
    parser.add_argument("--tracks", type=int, default=200_000)
    parser.add_argument("--updates", type=int, default=10, help="states written per track")
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--settle", type=float, default=120.0, help="seconds for the log cleaner before recovery")
    parser.add_argument("--rounds", type=int, default=3, help="recoveries per configuration, alternating")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.tracks, args.updates, args.partitions, args.settle, args.rounds))))
