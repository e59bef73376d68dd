"""Max-rate replay vs Kafka's own producer benchmark, same broker, same run.

Generates (once, cached under data/generated/, git-ignored) a 1,000,000-row taxi file, then runs
``python -m replay constant FILE --max-rate --json-summary`` into a fresh topic and Kafka's
``org.apache.kafka.tools.ProducerPerformance`` (the class behind kafka-producer-perf-test) with the
same record count, a record size equal to our average key+value size, acks=all and idempotence, twice:
with the producer defaults (what ``kafka-producer-perf-test`` does out of the box) and with the same
batch size and linger as the replay's producer. Prints events/s of all three and the ratios. The order
of the runs rotates from round to round so none always gets the warmer broker.

    .venv/bin/python -m bench.replay_vs_kafka_perf [--rows 1000000] [--rounds 1] [--bootstrap localhost:9092]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import re
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import orjson

from geoiot import topics as kafka_topics
from geoiot.schema import load_preset
from replay.generate import write_csv
from replay.reader import Rejected, read_records

ROOT = Path(__file__).resolve().parent.parent

STACK_DIR = Path(os.environ.get("STACK_DIR", ROOT / ".stack"))
BATCH_BYTES = 960 * 1024
LINGER_MS = 10


def kafka_libs() -> Path:
    found = sorted(STACK_DIR.glob("kafka-*/libs"))
    if not found:
        sys.exit(f"no Kafka jars under {STACK_DIR}/kafka-*/libs: run infra/local/stack up first")
    return found[-1]


def data_file(rows: int) -> Path:
    tracks = 1000
    points = max(1, rows // tracks)
    path = ROOT / "data" / "generated" / f"bench-{tracks}x{points}-seed42.csv"
    if not path.exists():
        print(f"generating {path} ...", file=sys.stderr)
        write_csv(path, tracks, points, seed=42)
    return path


def record_size(path: Path, sample: int = 20_000) -> int:
    preset = load_preset("taxi")
    sizes = [len(orjson.dumps(r)) + len(r[preset.track].encode())
             for _, r in itertools.islice(read_records(path, preset), sample) if not isinstance(r, Rejected)]
    return round(sum(sizes) / len(sizes))


async def topics(bootstrap: str, names: list[str], create: bool) -> None:
    async with kafka_topics.admin_client(bootstrap) as admin:
        if create:
            await kafka_topics.ensure(admin, [kafka_topics.TopicSpec(n, 3) for n in names])
        else:
            await kafka_topics.delete(admin, names)


def run_replay(path: Path, topic: str, bootstrap: str, rows: int, workers: int = 1) -> dict:
    limit = ["--limit", str(rows)] if workers == 1 else []  # --workers reads the whole (rows-long) file
    cmd = [sys.executable, "-m", "replay", "constant", str(path), "--max-rate", "--json-summary", "--quiet",
           "--topic", topic, "--bootstrap", bootstrap, "--workers", str(workers), *limit,
           "--linger-ms", str(LINGER_MS), "--batch-bytes", str(BATCH_BYTES)]
    started = time.monotonic()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    wall = time.monotonic() - started
    if done.returncode != 0:
        sys.exit(f"replay failed ({done.returncode}): {done.stderr}")
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    summary["wall_seconds"] = round(wall, 2)
    return summary


def run_kafka_perf(topic: str, bootstrap: str, rows: int, size: int, tuned: bool) -> dict:
    props = [f"bootstrap.servers={bootstrap}", "acks=all", "enable.idempotence=true", "compression.type=none"]
    if tuned:
        props += [f"batch.size={BATCH_BYTES}", f"linger.ms={LINGER_MS}"]
    cmd = ["java", "-Xmx512m", "-cp", f"{kafka_libs()}/*", "org.apache.kafka.tools.ProducerPerformance",
           "--topic", topic, "--num-records", str(rows), "--record-size", str(size), "--throughput", "-1",
           "--producer-props", *props]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    final = [line for line in done.stdout.splitlines() if "records sent" in line and "50th" in line]
    if done.returncode != 0 or not final:
        sys.exit(f"ProducerPerformance failed ({done.returncode}): {done.stdout[-2000:]} {done.stderr[-2000:]}")
    match = re.search(r"([\d.]+) records/sec", final[-1])
    assert match
    return {"events_per_s": float(match.group(1)), "line": final[-1].strip()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=1, help="alternate replay and Kafka this many times")
    parser.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP", "localhost:9092"))
    args = parser.parse_args()
    path = data_file(args.rows)
    size = record_size(path)
    results = []
    for round_no in range(args.rounds):
        names = {k: f"bench-{k}-{uuid.uuid4().hex[:8]}" for k in ("replay", "replay2", "kdefault", "ktuned")}
        asyncio.run(topics(args.bootstrap, list(names.values()), create=True))
        runs = {
            "replay": lambda: run_replay(path, names["replay"], args.bootstrap, args.rows),
            "replay2": lambda: run_replay(path, names["replay2"], args.bootstrap, args.rows, workers=2),
            "kdefault": lambda: run_kafka_perf(names["kdefault"], args.bootstrap, args.rows, size, tuned=False),
            "ktuned": lambda: run_kafka_perf(names["ktuned"], args.bootstrap, args.rows, size, tuned=True),
        }
        order = list(runs)[round_no % 4:] + list(runs)[: round_no % 4]
        try:
            got = {k: runs[k]() for k in order}
        finally:
            asyncio.run(topics(args.bootstrap, list(names.values()), create=False))
        ours = got["replay"]["events_per_s"]
        two = got["replay2"]["events_per_s"]
        assert got["replay"]["sent"] == got["replay2"]["sent"] == args.rows
        row = {"round": round_no + 1, "order": order, "rows": args.rows, "record_bytes": size,
               "replay": ours, "replay_workers2": two, "replay_sent": got["replay"]["sent"],
               "kafka_default": got["kdefault"]["events_per_s"], "kafka_tuned": got["ktuned"]["events_per_s"],
               "ratio_default": round(ours / got["kdefault"]["events_per_s"], 2),
               "ratio_tuned": round(ours / got["ktuned"]["events_per_s"], 2),
               "ratio2_default": round(two / got["kdefault"]["events_per_s"], 2),
               "ratio2_tuned": round(two / got["ktuned"]["events_per_s"], 2)}
        results.append(row)
        print(f"round {row['round']} ({' > '.join(order)}): replay {ours:,.0f} ev/s, with 2 workers {two:,.0f} ev/s "
              f"({row['replay_sent']:,} sent; ratios {row['ratio2_default']:.2f} / {row['ratio2_tuned']:.2f}); "
              f"ProducerPerformance defaults {row['kafka_default']:,.0f} ev/s (ratio {row['ratio_default']:.2f}), "
              f"same batching {row['kafka_tuned']:,.0f} ev/s (ratio {row['ratio_tuned']:.2f}); "
              f"record {size} B, acks=all, idempotent", flush=True)

    def median(key: str) -> float:
        return round(statistics.median(r[key] for r in results), 2)

    print(json.dumps({"results": results, **{f"median_{k}": median(k) for k in
                      ("ratio_default", "ratio_tuned", "ratio2_default", "ratio2_tuned")}}))


if __name__ == "__main__":
    main()
