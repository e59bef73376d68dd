"""Constant mode holds the requested rate: achieved/requested over a 30 s run, measured on the broker.

Runs ``python -m replay constant FILE --rate R --limit R*S --json-summary`` into a fresh topic, then reads
every message back and uses the Kafka record timestamps (set by the producer at send time) to compute the
achieved rate over the whole run and per one-second window. The requested rate is the baseline: the
figures are ratios to it. A replay that sleeps per message, or drifts, shows up as a ratio below 1.

    .venv/bin/python -m bench.replay_rate_accuracy [--rate 2000] [--seconds 30] [--bootstrap localhost:9092]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import subprocess
import sys
import uuid
from pathlib import Path

from aiokafka import AIOKafkaConsumer

from geoiot import topics
from replay.generate import write_csv

ROOT = Path(__file__).resolve().parent.parent


async def read_timestamps(bootstrap: str, topic: str, expected: int) -> list[int]:
    # Without a group id, a subscribed consumer is assigned every partition of the topic.
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        stamps: list[int] = []
        while len(stamps) < expected:
            batch = await consumer.getmany(timeout_ms=5000, max_records=10000)
            if not batch:
                break
            stamps += [r.timestamp for records in batch.values() for r in records]
        return sorted(stamps)
    finally:
        await consumer.stop()


async def drop_topic(bootstrap: str, topic: str) -> None:
    await topics.delete_topics(bootstrap, [topic])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=2000.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--bootstrap", default="localhost:9092")
    args = parser.parse_args()

    events = int(args.rate * args.seconds)
    data = ROOT / "data" / "generated" / f"rate-bench-{events}.csv"
    if not data.exists():
        write_csv(data, 500, max(1, events // 500 + 1), seed=3)
    topic = f"bench-rate-{uuid.uuid4().hex[:8]}"
    run = subprocess.run([sys.executable, "-m", "replay", "constant", str(data), "--rate", str(args.rate),
                          "--limit", str(events), "--bootstrap", args.bootstrap, "--topic", topic,
                          "--json-summary", "--quiet"], capture_output=True, text=True, cwd=ROOT)
    if run.returncode != 0:
        sys.exit(f"replay failed ({run.returncode}): {run.stderr[-2000:]}")
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    stamps = asyncio.run(read_timestamps(args.bootstrap, topic, summary["sent"]))
    asyncio.run(drop_topic(args.bootstrap, topic))

    span = (stamps[-1] - stamps[0]) / 1000
    per_second = collections.Counter((s - stamps[0]) // 1000 for s in stamps)
    full = [per_second[k] for k in sorted(per_second)[:-1]]  # the last window is partial
    print(f"requested {args.rate:.0f} ev/s for {args.seconds:.0f} s: sent {summary['sent']}, read back {len(stamps)}")
    print(f"replay's own summary: achieved {summary.get('achieved_rate', summary['events_per_s']):.1f} ev/s")
    print(f"broker timestamps: {(len(stamps) - 1) / span:.1f} ev/s over {span:.2f} s "
          f"= {(len(stamps) - 1) / span / args.rate:.4f} of requested")
    print(f"one-second windows: min {min(full)} max {max(full)} "
          f"({min(full) / args.rate:.3f}-{max(full) / args.rate:.3f} of requested)")


if __name__ == "__main__":
    main()
