"""Issue 23's delivery guarantee on the real Kafka and Elasticsearch: a worker's batch (dead letters, alerts,
track states, live records, offsets) is one Kafka transaction after its Elasticsearch write, so a worker killed
anywhere in its batch cycle and restarted gives what an uninterrupted worker gives: the same documents (motion
fields included), the same alerts exactly once for read_committed readers, and a live topic holding each track's
newest document.

The kills land at random times, many of them, with small batches (so a good share of them land inside a
transaction: a batch's transaction is most of its cycle once Elasticsearch answered); no hook in the worker."""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections import Counter

import orjson
import pytest

from geoiot import documents, live
from testkit import live as live_kit
from testkit.worker import (Worker, all_docs, cleanup_topics, expected_alerts, fence_file, generate, live_count,
                            read_topic, records, replay, wait_count)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

KILLS = 6


def sources(docs: list[dict]) -> dict[str, dict]:
    """_id -> _source without the ingest time (the one field two runs differ in)."""
    return {d["_id"]: {k: v for k, v in d["_source"].items() if k != documents.INGESTED_AT} for d in docs}


def alert_keys(values: list[bytes]) -> Counter:
    return Counter((a["track"], a["fence"], a["event"], a["time"]) for a in map(orjson.loads, values))


def live_layer(values: list[tuple[bytes, bytes | None]]) -> dict[str, dict]:
    """What a reader of the live topic keeps (geoiot.live): per track the newest document; a tombstone removes."""
    held: dict[str, dict] = {}
    for key, value in values:
        track = live.track_of(key)
        if value is None:
            held.pop(track, None)
            continue
        doc = live.document(value, "observationTime")
        seen = held.get(track)
        if live.newer(doc["observationTime"], seen["observationTime"] if seen else None):
            held[track] = doc
    return held


async def read_records(bootstrap: str, topic: str, expect: int) -> list[tuple[bytes, bytes | None]]:
    from aiokafka import AIOKafkaConsumer
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False, group_id=None, isolation_level="read_committed")
    await consumer.start()
    out: list[tuple[bytes, bytes | None]] = []
    try:
        deadline, quiet_since = time.monotonic() + 60, None
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            got = [(m.key, m.value) for msgs in batch.values() for m in msgs]
            out += got
            if len(out) >= expect and not got:
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since > 2:
                    break
    finally:
        await consumer.stop()
    return out


async def test_a_worker_killed_anywhere_in_its_batch_cycle_gives_what_an_uninterrupted_worker_gives(
        stack, es, kafka_admin, new_topic, new_index, agent_env, tmp_path, output_dir):
    topic = await new_topic("agents-txn", partitions=3)
    killed_env = agent_env(topic, IOT_BULK_SIZE="100", IOT_LATEST_TOPIC=f"{topic}-killed-latest")
    whole_env = agent_env(topic, IOT_APP_ID=f"{topic}-whole", IOT_INDEX=new_index("whole"),
                          IOT_DLQ_TOPIC=f"{topic}-whole-dlq", IOT_ALERTS_TOPIC=f"{topic}-whole-alerts",
                          IOT_LATEST_TOPIC=f"{topic}-whole-latest")
    data = generate(tmp_path, tracks=60, points=400, seed=11)
    recs = records(data)
    assert replay(data, topic, killed_env)["sent"] == len(recs)
    log = output_dir / f"{topic}.log"
    rng = random.Random(23)
    whole = Worker(whole_env, output_dir / f"{topic}-whole.log").start()
    worker = Worker(killed_env, log)
    kills = 0
    try:
        for _ in range(KILLS):
            worker.start()
            await asyncio.sleep(rng.uniform(0.05, 1.5))
            if await live_count(es, killed_env["IOT_INDEX"]) >= len(recs):
                break
            worker.stop(signal.SIGKILL)
            kills += 1
            worker = Worker(killed_env, log, port=worker.port)  # the same worker again: same transactional id
        else:  # the last one killed: its successor finishes (a break leaves the running one, started once)
            worker.start()
        assert kills >= 2, "the worker finished before it was killed twice; the test would prove little"
        index, whole_index = killed_env["IOT_INDEX"], whole_env["IOT_INDEX"]
        assert await wait_count(es, index, len(recs), settle=4) == len(recs)
        assert await wait_count(es, whole_index, len(recs), settle=1) == len(recs)
        killed_docs, whole_docs = sources(await all_docs(es, index)), sources(await all_docs(es, whole_index))
        assert len(killed_docs) == len(recs)
        assert killed_docs == whole_docs  # the same motion fields: every redelivered batch met its starting state

        # Alerts, read_committed: exactly those of the uninterrupted run, each once.
        want = expected_alerts(recs, fence_file(tmp_path)[1][:1])
        killed_alerts = alert_keys(await read_topic(stack.kafka_bootstrap, killed_env["IOT_ALERTS_TOPIC"], len(want),
                                                    isolation_level="read_committed"))
        whole_alerts = alert_keys(await read_topic(stack.kafka_bootstrap, whole_env["IOT_ALERTS_TOPIC"], len(want),
                                                   isolation_level="read_committed"))
        assert killed_alerts == whole_alerts
        assert max(killed_alerts.values()) == 1
        assert want and set(want) <= set(killed_alerts)

        # The live topic, read_committed: each track's newest document, the one Elasticsearch holds for it.
        newest = live_kit.newest_reports(recs)
        held = live_layer(await read_records(stack.kafka_bootstrap, killed_env["IOT_LATEST_TOPIC"], len(newest)))
        assert set(held) == set(newest)
        for track, r in newest.items():
            doc_id = documents.doc_id(track, r["observationTime"])
            assert {k: v for k, v in held[track].items() if k != documents.INGESTED_AT} == killed_docs[doc_id], track
    finally:
        worker.stop()
        whole.stop()
        await cleanup_topics(kafka_admin, [f"{topic}-"])
