"""The local stack really is Kafka and Elasticsearch: round-trip messages and a geo + time query."""

from __future__ import annotations

import asyncio
import random

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from elasticsearch.helpers import async_bulk

pytestmark = pytest.mark.integration


async def test_kafka_returns_exactly_what_was_produced(stack, new_topic) -> None:
    topic = await new_topic("stack", partitions=3)
    sent = {f"key-{i % 37}:{i}".encode() for i in range(1000)}
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        futures = [await producer.send(topic, value=v, key=v.split(b":")[0]) for v in sorted(sent)]
        metadata = await asyncio.gather(*futures)
    finally:
        await producer.stop()
    assert {m.partition for m in metadata} == {0, 1, 2}

    consumer = AIOKafkaConsumer(bootstrap_servers=stack.kafka_bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(3)])
        received: list[bytes] = []
        while len(received) < len(sent):
            batch = await consumer.getmany(timeout_ms=2000)
            assert batch, f"consumer stalled after {len(received)} of {len(sent)} messages"
            received += [record.value for records in batch.values() for record in records]
        assert not await consumer.getmany(timeout_ms=500), "more messages than were produced"
    finally:
        await consumer.stop()
    assert len(received) == len(sent) and set(received) == sent


async def test_geo_bounding_box_and_time_range_select_exactly(es, new_index) -> None:
    index = new_index("stack")
    await es.indices.create(index=index, mappings={"properties": {
        "geometry": {"type": "geo_point"}, "time": {"type": "date", "format": "epoch_millis"}}})
    rng = random.Random(7)
    docs = [{"_id": str(i), "geometry": {"lon": rng.uniform(-74.3, -73.6), "lat": rng.uniform(40.5, 41.0)},
             "time": 1_356_998_400_000 + rng.randrange(0, 3_600_000)} for i in range(2000)]
    ok, errors = await async_bulk(es, ({"_index": index, **d} for d in docs), refresh="wait_for")
    assert ok == len(docs) and not errors

    box = {"west": -74.0, "east": -73.9, "south": 40.6, "north": 40.8}
    start, end = 1_356_998_400_000 + 600_000, 1_356_998_400_000 + 1_800_000
    expected = {d["_id"] for d in docs
                if box["west"] <= d["geometry"]["lon"] <= box["east"] and box["south"] <= d["geometry"]["lat"] <= box["north"]
                and start <= d["time"] <= end}
    assert expected, "the fixture should select something"
    response = await es.search(index=index, size=len(docs), source=False, query={"bool": {"filter": [
        {"geo_bounding_box": {"geometry": {"top_left": {"lat": box["north"], "lon": box["west"]},
                                           "bottom_right": {"lat": box["south"], "lon": box["east"]}}}},
        {"range": {"time": {"gte": start, "lte": end}}},
    ]}})
    assert {hit["_id"] for hit in response["hits"]["hits"]} == expected
