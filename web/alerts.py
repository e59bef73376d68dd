"""Recent geofence enter/exit alerts, read from ``IOT_ALERTS_TOPIC`` and kept in a bounded deque.

The consumer runs as a background task of the app. It has no consumer group (every server keeps its own
copy) and starts from the last ``maxlen`` messages of each partition. Kafka being down or the topic not
existing yet never stops the server: the task logs, waits and retries with back-off.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from web.metrics import Metrics

log = logging.getLogger("web.alerts")


class AlertBuffer:
    """The newest ``maxlen`` alerts; each is the message's JSON object plus ``received`` (Kafka timestamp, ms)."""

    def __init__(self, maxlen: int = 1000) -> None:
        self._items: deque[dict[str, Any]] = deque(maxlen=maxlen)
        self.connected = False

    def add(self, alert: dict[str, Any]) -> None:
        self._items.append(alert)

    def recent(self, since: int | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Newest first; ``since`` compares with the alert's event ``time`` (else when it was received)."""
        out: list[dict[str, Any]] = []
        for alert in reversed(self._items):
            when = alert.get("time")
            if not isinstance(when, (int, float)) or isinstance(when, bool):
                when = alert.get("received")
            if since is not None and (when is None or when < since):
                continue
            out.append(alert)
            if len(out) >= limit:
                break
        return out

    def __len__(self) -> int:
        return len(self._items)


def decode(value: bytes | None, timestamp: int) -> dict[str, Any] | None:
    """An alert message as a dict, or None when it is not a JSON object."""
    try:
        alert = json.loads(value or b"")
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(alert, dict):
        return None
    alert["received"] = timestamp
    return alert


async def consume(bootstrap: str, topic: str, buffer: AlertBuffer, metrics: Metrics,
                  retry_max: float = 30.0) -> None:
    """Fill ``buffer`` forever; reconnects with back-off (1 s doubling to ``retry_max``)."""
    delay = 1.0
    while True:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                    auto_offset_reset="earliest", request_timeout_ms=10_000)
        try:
            await consumer.start()
            partitions = await _partitions(consumer, topic)
            if not partitions:
                raise LookupError(f"topic {topic!r} does not exist yet")
            ends = await consumer.end_offsets(partitions)
            begins = await consumer.beginning_offsets(partitions)
            keep = buffer._items.maxlen or 1000
            for tp in partitions:
                consumer.seek(tp, max(begins[tp], ends[tp] - keep))
            buffer.connected = True
            metrics.alerts_up.set(1)
            log.info(json.dumps({"event": "alerts_consumer_started", "topic": topic,
                                 "partitions": len(partitions)}))
            delay = 1.0
            async for msg in consumer:
                alert = decode(msg.value, msg.timestamp)
                if alert is None:
                    metrics.alerts_bad.inc()
                    continue
                buffer.add(alert)
                metrics.alerts.inc()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # Kafka down, topic missing, broker restarted: retry, never crash
            log.warning(json.dumps({"event": "alerts_consumer_retry", "topic": topic, "error": str(exc)[:200],
                                    "retry_in_s": delay}))
        finally:
            buffer.connected = False
            metrics.alerts_up.set(0)
            try:
                await consumer.stop()
            except Exception:
                pass
        await asyncio.sleep(delay)
        delay = min(delay * 2, retry_max)


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    """Subscribe to the topic and return its partitions, or [] when it does not exist (never auto-creating
    it). Without a group, the consumer assigns itself every partition once it has the topic's metadata."""
    if topic not in await consumer.topics():  # a full metadata fetch: does not create topics
        return []
    consumer.subscribe([topic])
    for _ in range(100):
        assigned = consumer.assignment()
        if assigned:
            return sorted(assigned, key=lambda tp: tp.partition)
        await asyncio.sleep(0.1)
    return []
