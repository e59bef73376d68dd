"""Events written to a source topic as a device would send them: JSON values keyed by their track."""

from __future__ import annotations

from typing import Any

import orjson
from aiokafka import AIOKafkaProducer


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
