"""Issue 23: the whole worker's memory per held track, after it consumed a source topic of distinct tracks.

``bench.track_state memory`` fills the worker's ``TrackTable`` in one Python process; this runs the real worker
(``python -m faust -A agents.app worker``: Faust, aiokafka, the Elasticsearch client, the transactional producer,
the live topic, the geofences and the track table) over a source topic and reads its resident memory from
``/proc/<pid>/status`` once it has consumed everything.

Two topics of the same row count, each put into Kafka as ``bench.scale_1m`` does (``replay generate``, then
``replay constant --max-rate``; the files are cached under data/generated/):

* fleet: ``--tracks`` tracks with ``--reports`` reports each (the streaming fleet mode);
* baseline: the same rows over ``scale_1m.BASELINE_TRACKS`` tracks (the trips mode, ``--points``).

For each, one fresh worker (its own app id, index, dead-letter, alerts and live topics; ``IOT_ES_LATEST`` left at
its default) runs until its /metrics count every row as indexed, then, after ``--settle`` seconds, its VmRSS and
VmHWM are read and it is stopped; the Elasticsearch count of its index is checked against the rows. Bytes per held
track = (fleet RSS - baseline RSS) / (fleet tracks - baseline tracks). Also reported: wall time to consume, the
worker's CPU seconds, the tracks it reports holding, the load average (start, peak, end) of each run.

``--keep`` keeps both source topics (their names are in the JSON last line) and ``--fleet-topic`` /
``--baseline-topic`` reuse such topics instead of replaying again; the benchmark's own indices and the worker's
topics are always deleted.

    python -m bench.worker_memory [--tracks 1000000] [--reports 3] [--baseline-first] [--settle 15]
                                  [--keep] [--fleet-topic NAME --baseline-topic NAME]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from agents.store.sink import es_client
from bench.agents_end_to_end import metrics, start_workers, stop_workers
from bench.procstat import cpu_seconds
from bench.scale_1m import BASELINE_TRACKS, DATA, add_data_arguments, generate, make_topic, replay
from geoiot import config, topics
from testkit.processes import vm_bytes

INDEXED = 'geoiot_agent_indexed_total{sink="elasticsearch"}'
TRACKS = "geoiot_agent_tracks"


def load() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


async def topic_rows(bootstrap: str, topic: str) -> tuple[int, int]:
    """(records, partitions) of an existing topic, from its end offsets (a fresh topic starts at offset 0)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        if not partitions:
            await consumer._client.force_metadata_update()  # noqa: SLF001 (aiokafka has no public refresh)
            partitions = consumer.partitions_for_topic(topic) or set()
        if not partitions:
            sys.exit(f"topic {topic} does not exist")
        parts = [TopicPartition(topic, p) for p in sorted(partitions)]
        begins, ends = await consumer.beginning_offsets(parts), await consumer.end_offsets(parts)
        return sum(ends[tp] - begins[tp] for tp in parts), len(parts)
    finally:
        await consumer.stop()


def fill(label: str, path: Path, tracks: int, reports: int | None, points: int | None, args: argparse.Namespace,
         topic: str) -> dict[str, Any]:
    """The data set's file (cached) replayed into a new topic, as bench.scale_1m does."""
    gen = generate(path, tracks, reports, points, args.interval, args.seed, False)
    asyncio.run(make_topic(args.bootstrap, topic, args.partitions))
    sent = replay(path, topic, args.bootstrap)
    print(f"{label}: {gen['rows']:,} rows of {tracks:,} tracks replayed into {topic} in {sent['seconds']:.1f} s",
          flush=True)
    return {"rows": gen["rows"], "replay_s": sent["seconds"]}


async def run_worker(label: str, topic: str, rows: int, tracks: int, run: str, args: argparse.Namespace,
                     logdir: Path) -> dict[str, Any]:
    """One fresh worker over ``topic`` until every row is indexed; its memory after ``args.settle`` seconds."""
    name = f"{run}-{label}"
    env = {k: v for k, v in os.environ.items() if k != "IOT_ES_LATEST"}
    env.update(PYTHONPATH=str(Path(__file__).resolve().parent.parent), IOT_INDEX_REFRESH="1s", IOT_TOPIC=topic,
               IOT_APP_ID=name, IOT_INDEX=name, IOT_DLQ_TOPIC=f"{name}-dlq", IOT_ALERTS_TOPIC=f"{name}-alerts",
               IOT_LATEST_TOPIC=f"{name}-latest", IOT_FENCES_TOPIC=f"{name}-fences",
               TMPDIR=str(logdir))  # the worker's Faust datadir beside its log
    loads = [load()]
    (proc, port), = start_workers(1, env, logdir)
    started = time.monotonic()
    first = done_at = None
    peak_rss = 0
    rss_ready = None  # when /metrics first answers: the process started, at most a batch consumed
    try:
        deadline = started + args.timeout
        while True:
            if proc.poll() is not None:
                sys.exit(f"{label}: the worker exited ({proc.returncode}); see {logdir}")
            if time.monotonic() > deadline:
                sys.exit(f"{label}: not all {rows:,} rows indexed within {args.timeout} s; see {logdir}")
            page = metrics(port)
            done = page.get(INDEXED, 0.0)
            now = time.monotonic()
            rss_now = vm_bytes(proc.pid, "VmRSS")["VmRSS"]
            if page and rss_ready is None:
                rss_ready = rss_now
            peak_rss = max(peak_rss, rss_now)
            loads.append(load())
            if done > 0 and first is None:
                first = now
            if done >= rows:
                done_at = now
                break
            await asyncio.sleep(1.0)
        cpu_consumed = cpu_seconds(proc.pid)
        await asyncio.sleep(args.settle)  # the last batch's commit, the tracks gauge (every 5 s), idle heap
        mem = vm_bytes(proc.pid, "VmRSS", "VmHWM")
        held = metrics(port).get(TRACKS)
        cpu_total = cpu_seconds(proc.pid)
        loads.append(load())
    finally:
        stop_workers([(proc, port)])
    client = es_client(config.load().es_hosts)
    try:
        await client.indices.refresh(index=name)
        count = (await client.count(index=name))["count"]
        # dropped now, so that its merges do not run under the next measurement
        await client.options(ignore_status=404).indices.delete(index=f"{name}*", expand_wildcards="all")
        await client.options(ignore_status=404).indices.delete_index_template(name=f"{name}*")
    finally:
        await client.close()
    if count != rows:
        sys.exit(f"{label}: Elasticsearch holds {count:,} documents of {rows:,}")
    row = {"label": label, "topic": topic, "rows": rows, "tracks": tracks, "tracks_held": held,
           "rss_mb": round(mem["VmRSS"] / 2**20, 1), "hwm_mb": round(mem["VmHWM"] / 2**20, 1),
           "rss_bytes": mem["VmRSS"], "hwm_bytes": mem["VmHWM"], "peak_rss_sampled_mb": round(peak_rss / 2**20, 1),
           "rss_at_first_metrics_mb": round((rss_ready or 0) / 2**20, 1),
           "until_all_indexed_s": round(done_at - started, 1), "consume_s": round(done_at - (first or started), 1),
           "events_per_s": round(rows / max(done_at - (first or started), 1e-9)),
           "cpu_s_until_indexed": round(cpu_consumed, 1), "cpu_s_total": round(cpu_total, 1),
           "cpu_us_per_event": round(cpu_consumed / rows * 1e6, 1), "es_count": count,
           "load_start": loads[0], "load_max": max(loads), "load_end": loads[-1]}
    print(f"{label}: {rows:,} rows of {tracks:,} tracks indexed in {row['until_all_indexed_s']} s "
          f"({row['events_per_s']:,} ev/s), worker CPU {row['cpu_s_until_indexed']} s, holds {held} tracks; "
          f"VmRSS {row['rss_mb']} MB, VmHWM {row['hwm_mb']} MB; load {loads[0]}-{max(loads)}", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_arguments(parser)
    parser.add_argument("--baseline-first", action="store_true", help="run the baseline's worker before the fleet's")
    parser.add_argument("--settle", type=float, default=15.0, help="seconds between the last row indexed and the read")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds a worker may take to index everything")
    parser.add_argument("--keep", action="store_true", help="keep the two source topics")
    parser.add_argument("--fleet-topic", help="an existing fleet topic (from --keep) instead of a new one")
    parser.add_argument("--baseline-topic", help="an existing baseline topic (from --keep) instead of a new one")
    parser.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP", "localhost:9092"))
    args = parser.parse_args()
    rows = args.tracks * args.reports
    points = max(1, rows // BASELINE_TRACKS)
    run = f"bench-wmem-{uuid.uuid4().hex[:6]}"
    logdir = Path(tempfile.mkdtemp(prefix="worker-memory-"))
    print(f"worker logs: {logdir}", file=sys.stderr)
    sets = {"fleet": (args.tracks, args.fleet_topic, DATA / f"fleet-{args.tracks}x{args.reports}-i{args.interval}"
                      f"-seed{args.seed}.csv", args.reports, None),
            "baseline": (BASELINE_TRACKS, args.baseline_topic, DATA / f"trips-{BASELINE_TRACKS}x{points}"
                         f"-seed{args.seed}.csv", None, points)}
    made: list[str] = []
    data: dict[str, dict[str, Any]] = {}
    results: dict[str, dict[str, Any]] = {}
    order = ["baseline", "fleet"] if args.baseline_first else ["fleet", "baseline"]
    try:
        for label, (tracks, topic, path, reports, pts) in sets.items():
            if topic:
                count, _ = asyncio.run(topic_rows(args.bootstrap, topic))
                data[label] = {"topic": topic, "rows": count, "replay_s": None}
            else:
                topic = f"{run}-src-{label}"
                made.append(topic)
                data[label] = {"topic": topic, **fill(label, path, tracks, reports, pts, args, topic)}
        for label in order:
            results[label] = asyncio.run(run_worker(label, data[label]["topic"], data[label]["rows"],
                                                    sets[label][0], run, args, logdir))
            results[label]["replay_s"] = data[label]["replay_s"]
    finally:
        for label in ("fleet", "baseline"):  # each worker's own topics: changelog, live, fences, alerts, dead letters
            asyncio.run(topics.delete_topics(args.bootstrap, prefix=f"{run}-{label}"))
        if made and not args.keep:
            asyncio.run(topics.delete_topics(args.bootstrap, made))
    fleet, base = results["fleet"], results["baseline"]
    added, more = fleet["rss_bytes"] - base["rss_bytes"], fleet["tracks"] - base["tracks"]
    out = {"results": [results[label] for label in order], "order": order, "settle_s": args.settle,
           "rss_added_mb": round(added / 2**20, 1),
           "bytes_per_held_track": round(added / more, 1),
           "hwm_bytes_per_track": round((fleet["hwm_bytes"] - base["hwm_bytes"]) / more, 1),
           "cpu_ratio_fleet_to_baseline": round(fleet["cpu_s_until_indexed"] / base["cpu_s_until_indexed"], 2),
           "kept_topics": {label: data[label]["topic"] for label in data} if args.keep else None}
    print(f"RSS added by {more:,} more held tracks: {out['rss_added_mb']} MB, "
          f"{out['bytes_per_held_track']} bytes per track (VmHWM: {out['hwm_bytes_per_track']})", flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
