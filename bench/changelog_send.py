"""CPU of the worker's changelog writes: one ``send`` per state against one record batch per partition.

Per round, the states of ``--tracks`` tracks (``testkit.motion.advance`` over ``HISTORY`` + 1 reports each,
so every state carries its full history, as in a running worker) are encoded as the worker encodes them and
written to a fresh topic of 3 partitions on the real broker (KAFKA_BOOTSTRAP), acknowledged (acks=all),
once by ``SourceStream._send_all`` (the path before ``core2``) and once by ``SourceStream._send_batches``,
in alternating order. Reports the median process CPU (``time.process_time``: the event loop and aiokafka's
sender run in this process) per record of each, and their ratio.

    .venv/bin/python -m bench.changelog_send [--tracks 500 --rounds 12]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid

import orjson
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from agents.core.motion import HISTORY
from agents.worker.stream import SourceStream, make_producer
from geoiot import config
from testkit.motion import advance


def states(tracks: int) -> list[tuple[str, dict]]:
    out = []
    for i in range(tracks):
        state = None
        for k in range(HISTORY + 1):
            state, _ = advance(state, 1_357_000_000_000 + k * 1000, -73.97 + i * 1e-4 + k * 1e-5,
                               40.76 + k * 1e-5, ("midtown",) if k % 2 else ())
        out.append((f"taxi-{i}", state))
    return out


async def main(tracks: int, rounds: int) -> dict:
    bootstrap = config.load().kafka_bootstrap
    topic = f"bench-changelog-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 3, 1)])
        producer = make_producer(bootstrap)
        await producer.start()
        stream = SourceStream.__new__(SourceStream)  # only its producer is used
        stream.producer = producer
        data = states(tracks)
        partitions = [i % 3 for i in range(tracks)]
        ways = {"send": stream._send_all, "batches": stream._send_batches}
        cpu: dict[str, list[float]] = {name: [] for name in ways}
        try:
            await stream._send_all(topic, [(orjson.dumps(t), orjson.dumps(s)) for t, s in data], partitions)  # warm
            for r in range(rounds):
                for name in (list(ways) if r % 2 == 0 else list(ways)[::-1]):
                    started = time.process_time()
                    changes = [(orjson.dumps(t), orjson.dumps(s)) for t, s in data]
                    await ways[name](topic, changes, partitions)
                    cpu[name].append((time.process_time() - started) / tracks * 1e6)
        finally:
            await producer.stop()
        await admin.delete_topics([topic])
    finally:
        await admin.close()
    median = {name: round(statistics.median(v), 2) for name, v in cpu.items()}
    return {"tracks": tracks, "rounds": rounds, "us_per_record": median,
            "all": {name: [round(x, 2) for x in v] for name, v in cpu.items()},
            "ratio_batches_vs_send": round(median["batches"] / median["send"], 3)}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tracks", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=12)
    args = ap.parse_args()
    print(json.dumps(asyncio.run(main(args.tracks, args.rounds)), indent=2))
