"""Single events that used to stop or poison the worker (issue 16, rows 1-3), on the real stack.

Each test runs ``faust -A agents.app worker`` against the shared Kafka and Elasticsearch with its own
topics and index, and checks exact counts: what is indexed, what is dead-lettered with which reason,
which daily indices exist, and that the worker is still running.
"""

from __future__ import annotations

from datetime import datetime, timezone

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from geoiot import documents
from testkit.worker import Worker, cleanup_topics, read_topic, wait_count

pytestmark = pytest.mark.integration

T0 = 1_357_000_000_000  # 2013-01-01T00:26:40Z


def event(track: str, time: object) -> dict:
    return {"taxiId": track, "observationTime": time, "longitude": -73.9, "latitude": 40.7}


async def produce_together(bootstrap: str, topic: str, events: list[dict]) -> None:
    """All events in one producer batch, so the worker fetches them as one batch."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=500, max_batch_size=1 << 20)
    await producer.start()
    try:
        futures = [await producer.send(topic, orjson.dumps(e), key=b"k") for e in events]
        await producer.flush()
        for future in futures:
            await future
    finally:
        await producer.stop()


async def daily_indices(es, base: str) -> list[str]:
    found = await es.options(ignore_status=404).indices.get(index=documents.index_pattern(base),
                                                            expand_wildcards="all")
    return sorted(found.body) if found.meta.status == 200 else []


async def run_worker(stack, es, kafka_admin, new_topic, agent_env, output_dir, events, expect_indexed,
                     expect_dead, **env_extra):
    topic = await new_topic("poison", partitions=1)
    env = agent_env(topic, **env_extra)
    await produce_together(stack.kafka_bootstrap, topic, events)
    worker = Worker(env, output_dir / f"{topic}.log").start()
    try:
        indexed = await wait_count(es, env["IOT_INDEX"], expect_indexed, timeout=90, settle=2)
        letters = [orjson.loads(v) for v in await read_topic(stack.kafka_bootstrap, env["IOT_DLQ_TOPIC"],
                                                              expect_dead, timeout=60)]
        running = worker.proc.poll() is None
        indices = await daily_indices(es, env["IOT_INDEX"])
    finally:
        worker.stop()
        await cleanup_topics(kafka_admin, [f"{topic}-"])
    return indexed, letters, running, indices, env["IOT_INDEX"]


async def test_event_times_outside_the_years_or_the_bounds_are_dead_letters_not_a_crash_loop(
        stack, es, kafka_admin, new_topic, agent_env, output_dir):
    """Row 1: the instants in the year 0 / 10000 UTC used to crash the worker on every restart."""
    bad = ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00Z", "9999-12-31T00:00:00Z"]
    events = ([event(f"ok{i}", T0 + i) for i in range(5)] + [event(f"bad{i}", t) for i, t in enumerate(bad)]
              + [event(f"ok{i}", T0 + i) for i in range(5, 10)])
    indexed, letters, running, indices, base = await run_worker(
        stack, es, kafka_admin, new_topic, agent_env, output_dir, events, expect_indexed=10, expect_dead=4)
    assert indexed == 10 and running
    assert indices == [f"{base}-2013.01.01"]  # no index for the years 0, 1, 9999 or 10000
    reasons = {orjson.loads(letter["original"])["observationTime"]: letter["reason"] for letter in letters}
    assert len(letters) == 4 and set(reasons) == set(bad)
    assert "outside the years 1-9999 UTC" in reasons[bad[0]] and "outside the years 1-9999 UTC" in reasons[bad[1]]
    assert "days old" in reasons[bad[2]] and "days ahead" in reasons[bad[3]]


async def test_an_id_elasticsearch_refuses_dead_letters_only_its_event(
        stack, es, kafka_admin, new_topic, agent_env, output_dir):
    """Row 2: 50 valid events and one whose 600-character track id gives an _id over 512 bytes."""
    events = [event(str(i), T0 + i) for i in range(25)] + [event("x" * 600, T0)] + \
             [event(str(i), T0 + i) for i in range(25, 50)]
    indexed, letters, running, _, _ = await run_worker(
        stack, es, kafka_admin, new_topic, agent_env, output_dir, events, expect_indexed=50, expect_dead=1)
    assert indexed == 50 and running
    assert len(letters) == 1 and orjson.loads(letters[0]["original"])["taxiId"] == "x" * 600
    assert "exceeds Elasticsearch's 512" in letters[0]["reason"]


async def test_one_batch_creates_at_most_the_configured_daily_indices(
        stack, es, kafka_admin, new_topic, agent_env, output_dir):
    """Row 3 (scaled down for the shared cluster): 60 events a week apart, IOT_MAX_NEW_INDICES=10."""
    start = int(datetime(2000, 1, 3, 12, tzinfo=timezone.utc).timestamp() * 1000)
    week = 7 * documents.DAY_MS
    events = [event(str(i), start + i * week) for i in range(60)]
    indexed, letters, running, indices, base = await run_worker(
        stack, es, kafka_admin, new_topic, agent_env, output_dir, events, expect_indexed=10, expect_dead=50,
        IOT_MAX_NEW_INDICES="10")
    assert running and indexed == 10
    assert indices == sorted(documents.index_for(base, start + i * week) for i in range(10))  # the earliest days
    assert len(letters) == 50 and all("IOT_MAX_NEW_INDICES=10" in letter["reason"] for letter in letters)
    assert sorted(int(orjson.loads(letter["original"])["taxiId"]) for letter in letters) == list(range(10, 60))


async def test_a_request_refused_as_a_whole_is_split_until_the_refused_document_is_alone(stack, es, new_index):
    """What the pipeline cannot foresee: a bulk request Elasticsearch refuses entirely (here for an _id
    over 512 bytes) costs only the document that causes it."""
    from agents.store.sink import ElasticsearchSink, es_client

    index = new_index("split")
    actions = [{"_op_type": "index", "_index": index, "_id": str(i), "_source": {"n": i}} for i in range(9)]
    actions.insert(6, {"_op_type": "index", "_index": index, "_id": "y" * 600, "_source": {"n": -1}})
    sink = ElasticsearchSink(es_client(stack.es_hosts))
    try:
        rejected = await sink.write(actions)
    finally:
        await sink.stop()
    assert [a["_id"] for a, _ in rejected] == ["y" * 600]
    assert "elasticsearch refused the request: 400" in rejected[0][1]
    await es.indices.refresh(index=index)
    assert (await es.count(index=index))["count"] == 9
