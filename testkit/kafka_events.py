"""Events written to a source topic as a device would send them (JSON values keyed by their track), and the
messages of a topic read back until they stop coming."""

from __future__ import annotations

import time
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord


async def produce_keyed(bootstrap: str, topic: str, events: list[dict[str, Any]], key: str = "taxiId") -> None:
    """Send ``events`` as JSON, each keyed by its ``key`` field (so a track keeps one partition), acknowledged."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for e in events:
            await producer.send(topic, orjson.dumps(e), key=str(e[key]).encode())
        await producer.flush()
    finally:
        await producer.stop()


async def drain(consumer: AIOKafkaConsumer, expect: int, timeout: float, settle: float) -> list[ConsumerRecord]:
    """The records a started consumer fetches: until ``expect`` arrived and ``settle`` seconds more passed (to
    catch extras: a test of exactly-once must see a duplicate), or ``timeout`` seconds in all."""
    records: list[ConsumerRecord] = []
    deadline = time.monotonic() + timeout
    extra_until = None
    while time.monotonic() < deadline:
        batch = await consumer.getmany(timeout_ms=500)
        for msgs in batch.values():
            records += msgs
        if len(records) >= expect and extra_until is None:
            extra_until = time.monotonic() + settle
        if extra_until is not None and time.monotonic() > extra_until:
            break
    return records
