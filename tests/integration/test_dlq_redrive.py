"""``python -m replay dlq`` against the real Kafka and Elasticsearch (issue 22, item 10).

Events a worker dead-letters for a temporary condition (times further ahead than its
IOT_MAX_EVENT_AHEAD_DAYS=1) sit in the dead-letter topic beside events that are invalid for good (a
latitude of 200). A dry run says exactly what would be re-sent and what skipped; then a worker with a
wider bound takes over, the redrive re-sends the selected letters' original keys and values to their
source partitions, and Elasticsearch holds exactly every event once. A second redrive changes nothing.
A letter truncated for its size is completed from the source topic while the source still holds it.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections import Counter

import orjson
import pytest
from aiokafka import AIOKafkaConsumer

from geoiot import documents
from testkit.kafka_events import produce_keyed
from testkit.worker import ROOT, Worker, all_docs, cleanup_topics, produce_raw, read_topic, wait_count

pytestmark = pytest.mark.integration

T0 = 1_357_000_000_000  # 2013-01-01T00:26:40Z
DAY_MS = documents.DAY_MS


def event(track: str, time_ms: int, lat: float = 40.7) -> dict:
    return {"taxiId": track, "observationTime": time_ms, "longitude": -73.9, "latitude": lat}


def redrive(env: dict[str, str], *args: str) -> dict:
    result = subprocess.run([sys.executable, "-m", "replay", "dlq", "--json-summary", "-q", *args], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, f"redrive failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return json.loads(result.stdout.strip().splitlines()[-1])


async def source_records(bootstrap: str, topic: str, expect: int) -> list:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False, group_id=None)
    await consumer.start()
    out: list = []
    try:
        deadline = time.monotonic() + 60
        while len(out) < expect and time.monotonic() < deadline:
            for msgs in (await consumer.getmany(timeout_ms=500)).values():
                out += msgs
    finally:
        await consumer.stop()
    return out


async def until_committed(kafka_admin, group: str, total: int, timeout: float = 60) -> None:
    """Wait until the worker's group committed ``total`` offsets (so the next worker starts after them)."""
    deadline = time.monotonic() + timeout
    committed = -1
    while time.monotonic() < deadline:
        offsets = await kafka_admin.list_consumer_group_offsets(group)
        committed = sum(meta.offset for meta in offsets.values() if meta.offset > 0)
        if committed >= total:
            return
        await asyncio.sleep(0.3)
    raise AssertionError(f"group {group} committed {committed} of {total} offsets")


async def test_dead_letters_of_a_temporary_condition_are_redriven_once_it_is_gone(
        stack, es, kafka_admin, new_topic, agent_env, output_dir):
    topic = await new_topic("redrive", partitions=3)
    env = agent_env(topic, IOT_MAX_EVENT_AHEAD_DAYS="1")
    ahead = (int(time.time() * 1000) // 1000) * 1000 + 3 * DAY_MS  # three days ahead: refused with a 1-day bound
    ok = [event(f"ok{i}", T0 + i * 1000) for i in range(20)]
    future = [event(f"fut{i}", ahead + i * 1000) for i in range(30)]
    bad = [event(f"bad{i}", T0 + i, lat=200.0) for i in range(5)]
    await produce_keyed(stack.kafka_bootstrap, topic, ok + future + bad)
    dlq = env["IOT_DLQ_TOPIC"]
    worker = Worker(env, output_dir / f"{topic}.log").start()
    try:
        assert await wait_count(es, env["IOT_INDEX"], 20, timeout=90, settle=2) == 20
        letters = [orjson.loads(v) for v in await read_topic(stack.kafka_bootstrap, dlq, 35, timeout=60)]
        await until_committed(kafka_admin, env["IOT_APP_ID"], 55)
    finally:
        worker.stop()
    assert len(letters) == 35
    assert sum("days ahead" in letter["reason"] for letter in letters) == 30
    per_partition = Counter(letter["partition"] for letter in letters if "days ahead" in letter["reason"])

    # A dry run: exact counts, nothing sent.
    dry = redrive(env, "--reason", "days ahead", "--dry-run")
    assert (dry["read"], dry["selected"], dry["resent"], dry["failed"], dry["skipped"]) == (35, 30, 0, 0, 5)
    assert dry["skip_reasons"] == {"reason": 5} and dry["dry_run"] is True
    assert dry["selected_by_topic"] == {topic: {str(p): n for p, n in sorted(per_partition.items())}}
    assert len(await source_records(stack.kafka_bootstrap, topic, 55)) == 55  # nothing was added
    one = min(per_partition)
    by_partition = redrive(env, "--reason", "days ahead", "--partition", str(one), "--dry-run")
    assert by_partition["selected"] == per_partition[one]
    in_one = sum(letter["partition"] == one for letter in letters)  # kinds are checked topic, partition, reason, time
    assert by_partition["skip_reasons"] == {k: n for k, n in (("partition", 35 - in_one),
                                                                ("reason", in_one - per_partition[one])) if n}
    before = redrive(env, "--until", "2000-01-01T00:00:00Z", "--dry-run")
    assert (before["selected"], before["skip_reasons"]) == (0, {"time": 35})

    # The condition is gone: a worker with a wider bound takes over the same group and partitions.
    wider = dict(env, IOT_MAX_EVENT_AHEAD_DAYS="10")
    worker = Worker(wider, output_dir / f"{topic}-wider.log").start()
    try:
        summary = redrive(env, "--reason", "days ahead", "--rate", "20")
        assert (summary["read"], summary["selected"], summary["resent"], summary["failed"]) == (35, 30, 30, 0)
        assert summary["skip_reasons"] == {"reason": 5}
        assert summary["resent_by_topic"] == {topic: {str(p): n for p, n in sorted(per_partition.items())}}
        assert await wait_count(es, env["IOT_INDEX"], 50, timeout=90, settle=3) == 50

        again = redrive(env, "--reason", "days ahead", "--rate", "50")
        assert (again["read"], again["resent"], again["skipped"]) == (35, 30, 5)
        records = await source_records(stack.kafka_bootstrap, topic, 115)
        assert len(records) == 115  # 55 produced + 30 + 30 re-sent
        assert await wait_count(es, env["IOT_INDEX"], 50, timeout=60, settle=5) == 50
        assert len(await read_topic(stack.kafka_bootstrap, dlq, 35, timeout=30, settle=3)) == 35  # none again
        assert worker.metrics()["geoiot_agent_events_total"] == 60
    finally:
        worker.stop()
        await cleanup_topics(kafka_admin, [f"{topic}-"])

    docs = await all_docs(es, env["IOT_INDEX"])
    ids = [d["_id"] for d in docs]
    assert len(ids) == len(set(ids)) == 50  # no duplicates
    assert sorted(ids) == sorted(documents.doc_id(e["taxiId"], e["observationTime"]) for e in ok + future)
    # The re-sent messages are the originals: the same key and value bytes, on the same partition, three times.
    for e in future:
        copies = [(r.value, r.partition) for r in records if r.key == e["taxiId"].encode()]
        assert len(copies) == 3 and len(set(copies)) == 1 and orjson.loads(copies[0][0]) == e
    # At --rate 20 the first redrive's 30 letters left over at least 1.3 s (15 ticks of 0.1 s; a lower
    # bound set by the pacing's sleeps, whatever the machine's speed).
    second = {}
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        if r.key.startswith(b"fut"):
            second[r.key] = second.get(r.key, []) + [r.timestamp]
    stamps = sorted(times[1] for times in second.values())
    assert stamps[-1] - stamps[0] >= 1000


async def test_a_truncated_letter_is_redriven_whole_from_the_source_while_the_source_holds_it(
        stack, es, kafka_admin, new_topic, agent_env, output_dir):
    """A value over 900 kB (an event padded with 950 kB of blanks) is dead-lettered with only its start; the
    redrive takes the whole value from the source topic at the letter's offset, and once that offset is
    deleted from the source, skips the letter as ``truncated``."""
    from aiokafka import TopicPartition
    from aiokafka.admin import RecordsToDelete

    topic = await new_topic("redrive-big", partitions=1)
    env = agent_env(topic, IOT_MAX_EVENT_AHEAD_DAYS="1")
    ahead = (int(time.time() * 1000) // 1000) * 1000 + 3 * DAY_MS
    big = orjson.dumps(event("big", ahead))[:-1] + b" " * 950_000 + b"}"
    small = orjson.dumps(event("small", ahead))
    await produce_raw(stack.kafka_bootstrap, topic, [(b"big", big), (b"small", small)])
    worker = Worker(env, output_dir / f"{topic}.log").start()
    try:
        letters = [orjson.loads(v) for v in await read_topic(stack.kafka_bootstrap, env["IOT_DLQ_TOPIC"], 2, timeout=60)]
        await until_committed(kafka_admin, env["IOT_APP_ID"], 2)
    finally:
        worker.stop()
    assert sorted(bool(letter.get("original_truncated")) for letter in letters) == [False, True]
    worker = Worker(dict(env, IOT_MAX_EVENT_AHEAD_DAYS="10"), output_dir / f"{topic}-wider.log").start()
    try:
        summary = redrive(env, "--reason", "days ahead")
        assert (summary["read"], summary["resent"], summary["skipped"]) == (2, 2, 0)
        assert await wait_count(es, env["IOT_INDEX"], 2, timeout=90, settle=2) == 2
        records = await source_records(stack.kafka_bootstrap, topic, 4)
        assert [(r.key, r.value) for r in records[2:]] == [(b"big", big), (b"small", small)]  # the exact bytes

        await kafka_admin.delete_records({TopicPartition(topic, 0): RecordsToDelete(before_offset=1)})
        gone = redrive(env, "--reason", "days ahead", "--dry-run")
        assert (gone["selected"], gone["skip_reasons"]) == (1, {"truncated": 1})
    finally:
        worker.stop()
        await cleanup_topics(kafka_admin, [f"{topic}-"])
