"""The gateway's producer after a batch that Kafka refused for good, against the real broker."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from ingest.producer import AckingProducer
from testkit.ingest import read_messages
from conftest import unique_name

pytestmark = pytest.mark.integration


async def test_a_refused_batch_replaces_the_producer_and_later_positions_still_land(stack) -> None:
    """A batch the broker refuses (too large for the topic) breaks the idempotent producer's sequence
    numbers; the gateway's producer is replaced, the refusal reaches the waiting request, and the
    positions that come after it are acknowledged and in Kafka exactly once."""
    topic = unique_name("ingest-replaced")
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic(topic, 1, 1, topic_configs={"max.message.bytes": "2000"})])
    producer = AckingProducer(stack.kafka_bootstrap, topic, linger_s=0.005, request_timeout_s=30)
    try:
        await producer.start(1, 1)
        before = [producer.append(f"k{i}".encode(), b"before") for i in range(3)]
        await asyncio.wait_for(asyncio.gather(*before), 30)
        refused = producer.append(b"big", b"x" * 3000)  # under the producer's batch size, over the topic's limit
        with pytest.raises(KafkaError):
            await asyncio.wait_for(refused, 30)
        after = [producer.append(f"k{i}".encode(), b"after") for i in range(5)]
        await asyncio.wait_for(asyncio.gather(*after), 60)
        assert producer.resets == 1
        got = await read_messages(stack.kafka_bootstrap, topic, 8, settle=2)
        assert sorted((k, v) for _, k, v in got) == sorted(
            [(f"k{i}".encode(), b"before") for i in range(3)] + [(f"k{i}".encode(), b"after") for i in range(5)])
    finally:
        await producer.stop()
        await admin.delete_topics([topic])
        await admin.close()
