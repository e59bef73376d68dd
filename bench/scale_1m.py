"""Issue 23's scale data: a fleet of 1,000,000 tracks with a few reports each, generated and put into Kafka.

Runs ``python -m replay generate --reports`` (the streaming fleet mode) and ``python -m replay constant --max-rate``
into a fresh topic, each as a subprocess whose wall time, CPU and peak RSS are read from ``wait4``, then
reads the topic back to count its source bytes (keys + values, what a worker or a mirror reads). The
baseline of the same run is the trips mode (``--points``) with the same row count over 1,000 tracks: the
ratios say what the million distinct tracks cost the generator and the replay.

The fleet file is cached under data/generated/ (git-ignored; ``--regenerate`` times the generator again) and
its topic is kept with ``--keep`` for the measurements that start from it (worker memory, recovery, the web
mirror's start at 1M tracks): the last line is JSON with the topic name, its partitions and sizes.

    python -m bench.scale_1m [--tracks 1000000] [--reports 3] [--interval 60] [--partitions 3]
                             [--topic NAME] [--keep] [--no-baseline] [--regenerate] [--bootstrap localhost:9092]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from geoiot import topics

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data" / "generated"
BASELINE_TRACKS = 1000


TIME = Path("/usr/bin/time")  # GNU time: the child's own peak RSS (wait4's would start from this process's, the
# high-water mark of a forked child being its parent's until exec)


def measured(cmd: list[str]) -> dict[str, Any]:
    """Run ``cmd``; its wall seconds, CPU seconds, peak RSS (GNU time's, else wait4's) and last stdout line."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err, \
            tempfile.NamedTemporaryFile("w+") as usage_file:
        wrapped = [str(TIME), "-o", usage_file.name, "-f", "%M %U %S", *cmd] if TIME.exists() else cmd
        started = time.monotonic()
        proc = subprocess.Popen(wrapped, cwd=ROOT, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)  # reaps it
        wall = time.monotonic() - started
        proc.returncode = code = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
        timed = usage_file.read().split() if TIME.exists() else []
    if code != 0:
        sys.exit(f"{' '.join(cmd)} failed ({code}):\n{stdout[-2000:]}\n{stderr[-2000:]}")
    if len(timed) >= 3:
        rss_kb, cpu = int(timed[-3]), float(timed[-2]) + float(timed[-1])
    else:
        rss_kb, cpu = usage.ru_maxrss, usage.ru_utime + usage.ru_stime
    lines = stdout.strip().splitlines()
    return {"seconds": round(wall, 2), "cpu_s": round(cpu, 2), "peak_rss_mb": round(rss_kb / 1024, 1),
            "last": lines[-1] if lines else ""}


def generate(path: Path, tracks: int, reports: int | None, points: int | None, interval: int, seed: int,
             regenerate: bool) -> dict[str, Any]:
    """Write the file unless cached; its rows and bytes, and the generator's costs when it ran."""
    shape = ["--reports", str(reports), "--interval", str(interval)] if reports else ["--points", str(points)]
    ran: dict[str, Any] = {"cached": True}
    if regenerate or not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".part")
        ran = measured([sys.executable, "-m", "replay", "generate", "--tracks", str(tracks), *shape,
                        "--seed", str(seed), "--out", str(tmp)])
        ran.pop("last")
        tmp.replace(path)
        ran["cached"] = False
    rows = sum(1 for _ in path.open("rb"))
    if not ran["cached"]:
        ran["rows_per_s"] = round(rows / ran["seconds"])
    return {"file": str(path), "rows": rows, "file_bytes": path.stat().st_size, **ran}


def replay(path: Path, topic: str, bootstrap: str) -> dict[str, Any]:
    run = measured([sys.executable, "-m", "replay", "constant", str(path), "--max-rate", "--json-summary", "--quiet",
                    "--topic", topic, "--bootstrap", bootstrap])
    summary = json.loads(run.pop("last"))
    return {**run, "sent": summary["sent"], "skipped": summary["skipped"], "events_per_s": summary["events_per_s"],
            "partitions": summary["partitions"]}


async def source_bytes(bootstrap: str, topic: str, partitions: int) -> dict[str, Any]:
    """Keys + values of every record of ``topic`` (what a consumer of it reads), and the time to read them."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None,
                                auto_offset_reset="earliest", max_partition_fetch_bytes=8 << 20,
                                fetch_max_bytes=64 << 20)
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        ends = await consumer.end_offsets(parts)
        started = time.monotonic()
        records = keys = values = 0
        remaining = {tp for tp, end in ends.items() if end > 0}
        while remaining:
            for tp, batch in (await consumer.getmany(timeout_ms=1000, max_records=50_000)).items():
                records += len(batch)
                keys += sum(len(r.key or b"") for r in batch)
                values += sum(len(r.value or b"") for r in batch)
                if batch[-1].offset + 1 >= ends[tp]:
                    remaining.discard(tp)
        seconds = time.monotonic() - started
        return {"records": records, "key_bytes": keys, "value_bytes": values, "source_bytes": keys + values,
                "bytes_per_event": round((keys + values) / records, 1) if records else 0.0,
                "read_seconds": round(seconds, 2)}
    finally:
        await consumer.stop()


async def make_topic(bootstrap: str, name: str, partitions: int) -> None:
    result = await topics.ensure_topic(bootstrap, topics.TopicSpec(name, partitions))
    if result.status != "created":
        sys.exit(f"topic {name} exists already: give --topic a new name")


def one(label: str, path: Path, tracks: int, reports: int | None, points: int | None, args: argparse.Namespace,
        topic: str) -> dict[str, Any]:
    gen = generate(path, tracks, reports, points, args.interval, args.seed, args.regenerate)
    asyncio.run(make_topic(args.bootstrap, topic, args.partitions))
    sent = replay(path, topic, args.bootstrap)
    counted = asyncio.run(source_bytes(args.bootstrap, topic, args.partitions))
    row = {"label": label, "topic": topic, "tracks": tracks, "generate": gen, "replay": sent, "kafka": counted}
    made = ("cached file" if gen["cached"] else
            f"{gen['seconds']:.1f} s ({gen['rows_per_s']:,} rows/s, peak RSS {gen['peak_rss_mb']:.0f} MB)")
    print(f"{label}: {gen['rows']:,} rows of {tracks:,} tracks, {gen['file_bytes'] / 1e6:,.0f} MB file, generated in "
          f"{made}; replayed in {sent['seconds']:.1f} s ({sent['events_per_s']:,.0f} ev/s, peak RSS "
          f"{sent['peak_rss_mb']:.0f} MB); {counted['records']:,} records, {counted['source_bytes'] / 1e6:,.0f} MB "
          f"source bytes ({counted['bytes_per_event']} B/event), read back in {counted['read_seconds']:.1f} s",
          flush=True)
    return row


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """The scale data set's flags, shared by the benchmarks that start from it (bench.worker_memory)."""
    parser.add_argument("--tracks", type=int, default=1_000_000)
    parser.add_argument("--reports", type=int, default=3, help="reports per track (default 3)")
    parser.add_argument("--interval", type=int, default=60, help="seconds between a track's reports (default 60)")
    parser.add_argument("--seed", type=int, default=23)
    parser.add_argument("--partitions", type=int, default=3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_arguments(parser)
    parser.add_argument("--topic", help="the fleet's topic (default: a new bench-scale-<random> name)")
    parser.add_argument("--keep", action="store_true", help="keep the fleet's topic (the baseline's is deleted)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the trips-mode baseline")
    parser.add_argument("--baseline-first", action="store_true", help="run the baseline before the fleet")
    parser.add_argument("--regenerate", action="store_true", help="generate the files again (times the generator)")
    parser.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP", "localhost:9092"))
    args = parser.parse_args()
    rows = args.tracks * args.reports
    run = uuid.uuid4().hex[:8]
    fleet_topic = args.topic or f"bench-scale-{run}"
    fleet_file = DATA / f"fleet-{args.tracks}x{args.reports}-i{args.interval}-seed{args.seed}.csv"
    results: dict[str, dict[str, Any]] = {}
    base_topic = f"bench-scale-base-{run}"

    def fleet() -> None:
        results["fleet"] = one("fleet", fleet_file, args.tracks, args.reports, None, args, fleet_topic)

    def baseline() -> None:
        points = max(1, rows // BASELINE_TRACKS)
        try:
            results["baseline"] = one("trips (baseline)", DATA / f"trips-{BASELINE_TRACKS}x{points}-seed{args.seed}.csv",
                                      BASELINE_TRACKS, None, points, args, base_topic)
        finally:
            asyncio.run(topics.delete_topics(args.bootstrap, [base_topic]))

    steps = [fleet] if args.no_baseline else [baseline, fleet] if args.baseline_first else [fleet, baseline]
    try:
        for step in steps:
            step()
    finally:
        if not args.keep:
            asyncio.run(topics.delete_topics(args.bootstrap, [fleet_topic]))
    out: dict[str, Any] = {"results": list(results.values()), "order": [s.__name__ for s in steps],
                           "kept_topic": fleet_topic if args.keep else None, "partitions": args.partitions}
    if len(results) == 2:
        fleet, base = results["fleet"], results["baseline"]
        ratio = lambda a, b: round(a / b, 2) if b else None  # noqa: E731
        out["ratios_fleet_to_baseline"] = {
            "replay_events_per_s": ratio(fleet["replay"]["events_per_s"], base["replay"]["events_per_s"]),
            "replay_peak_rss": ratio(fleet["replay"]["peak_rss_mb"], base["replay"]["peak_rss_mb"]),
            "bytes_per_event": ratio(fleet["kafka"]["bytes_per_event"], base["kafka"]["bytes_per_event"]),
        }
        if not fleet["generate"]["cached"] and not base["generate"]["cached"]:
            out["ratios_fleet_to_baseline"].update(
                generate_rows_per_s=ratio(fleet["generate"]["rows_per_s"], base["generate"]["rows_per_s"]),
                generate_peak_rss=ratio(fleet["generate"]["peak_rss_mb"], base["generate"]["peak_rss_mb"]))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
