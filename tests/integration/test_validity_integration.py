"""Issue 22, item 9 on the real stack: non-core attributes no document can hold, and a Kafka key that is not
the track id, through a worker into Elasticsearch (exact counts, what is stored, what is dead-lettered)."""

from __future__ import annotations

import orjson
import pytest

from testkit.worker import Worker, all_docs, cleanup_topics, produce_raw, read_topic, wait_count
from test_validity_units import BASE, raw

pytestmark = pytest.mark.integration


async def test_unusual_attributes_are_nulled_and_counted_and_a_foreign_key_is_counted(
        stack, es, kafka_admin, new_topic, agent_env, output_dir):
    """Before: the 1e400 and lone-surrogate events were dead letters and the foreign key went unnoticed."""
    topic = await new_topic("validity", partitions=1)
    env = agent_env(topic)

    def at(i: int, **extra: str) -> bytes:
        return raw(**extra).replace(b'"a"', f'"t{i}"'.encode(), 1).replace(
            str(BASE["observationTime"]).encode(), str(BASE["observationTime"] + i).encode(), 1)

    items = [(b"t0", at(0, tripDistance="1e400")), (b"t1", at(1, vendor_id='"\\ud800"')),
             (b"t2", at(2, passengerCount="2")), (b"someone-else", at(3)), (None, at(4)),
             (b"t5", at(5, taxiId='"\\udc00"'))]
    await produce_raw(stack.kafka_bootstrap, topic, items)
    worker = Worker(env, output_dir / f"{topic}.log").start()
    try:
        indexed = await wait_count(es, env["IOT_INDEX"], 5, timeout=90, settle=2)
        letters = [orjson.loads(v) for v in await read_topic(stack.kafka_bootstrap, env["IOT_DLQ_TOPIC"], 1,
                                                              timeout=30)]
        metrics = worker.metrics()
        docs = {d["_source"]["taxiId"]: d["_source"] for d in await all_docs(es, env["IOT_INDEX"])}
    finally:
        worker.stop()
        await cleanup_topics(kafka_admin, [f"{topic}-"])
    assert indexed == 5 and sorted(docs) == ["t0", "t1", "t2", "t3", "t4"]
    assert docs["t0"]["tripDistance"] is None and docs["t1"]["vendor_id"] is None and docs["t2"]["passengerCount"] == 2
    assert len(letters) == 1 and "not valid Unicode" in letters[0]["reason"] and letters[0]["offset"] == 5
    assert metrics["geoiot_agent_nulled_attributes_total"] == 2
    assert metrics["geoiot_agent_key_mismatch_total"] == 1  # t3 under another key; t4 has none
