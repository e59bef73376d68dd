"""Recent geofence enter/exit alerts, read from ``IOT_ALERTS_TOPIC`` and kept in a bounded deque.

The consumer runs as a background task of the app. It has no consumer group (every server keeps its own
copy) and starts from the last ``maxlen`` messages of each partition (WEB_SSE_RING), after what it already
holds when it reconnects. Each alert keeps its partition and offset: /api/events resumes a stream from them
(``Last-Event-ID`` is the offsets read so far), so a token means the same on every server and after a
restart. Kafka being down or the topic not existing yet never stops the server: the task logs, waits and retries with back-off.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from web.metrics import Metrics
from web.params import BadRequest

log = logging.getLogger("web.alerts")


Cursor = dict[int, int]  # partition -> offset


@dataclass(frozen=True)
class Entry:
    """One alert of the ring: the alert (plus ``received``), its JSON text as on the topic, where it was on the
    topic, ``live`` (read after the consumer caught up, not from the backlog of its start) and ``cursor``,
    the resume token after it (format_cursor)."""

    alert: dict[str, Any]
    data: str
    partition: int
    offset: int
    live: bool
    cursor: str


Listener = Callable[[Entry], None]


def format_cursor(positions: Cursor) -> str:
    """A resume token: ``partition:offset`` of the last alert read on each partition, comma-separated. It names
    Kafka positions, so it means the same on every server reading the topic and after a restart."""
    return ",".join(f"{p}:{o}" for p, o in sorted(positions.items()))


# The resume token's shape (format_cursor), published in the OpenAPI document.
CURSOR_PATTERN = r"^[0-9]{1,6}:[0-9]{1,19}(,[0-9]{1,6}:[0-9]{1,19}){0,1023}$"
_CURSOR = re.compile(CURSOR_PATTERN.removeprefix("^").removesuffix("$"))


def parse_cursor(text: str, name: str) -> tuple[tuple[int, int], ...]:
    """A resume token as sorted (partition, offset) pairs, each partition once."""
    if not _CURSOR.fullmatch(text):
        raise BadRequest(f"{name} {text[:40]!r} is not a resume token of this server (partition:offset, "
                         "comma-separated)")
    pairs = [tuple(int(x) for x in part.split(":")) for part in text.split(",")]
    cursor = dict(pairs)
    if len(cursor) != len(pairs):
        raise BadRequest(f"{name} {text[:40]!r} names a partition twice")
    return tuple(sorted(cursor.items()))


class AlertBuffer:
    """The newest ``maxlen`` alerts (the ring), in the order they were read, with what is needed to resume a
    stream after a reconnect (``after``) and to tell when the ring no longer holds what was missed (``lost``)."""

    def __init__(self, maxlen: int = 1000) -> None:
        self.maxlen = maxlen
        self._items: deque[Entry] = deque(maxlen=maxlen)
        self._positions: Cursor = {}  # highest offset read (or skipped) per partition
        self._lost: Cursor = {}  # highest offset not in the ring per partition (evicted, or never read)
        self._live_from: Cursor = {}  # the first offset read after the consumer caught up
        self.listeners: set[Listener] = set()
        self.connected = False

    @property
    def cursor(self) -> str:
        """The token after everything read so far ("" before anything)."""
        return format_cursor(self._positions)

    def positions(self) -> Cursor:
        return dict(self._positions)

    def start_partition(self, partition: int, start: int, end: int) -> int:
        """The consumer's position on ``partition`` whose messages span up to ``end`` (exclusive): the offset
        to read from (after what the ring holds already, and no more than ``maxlen`` back). What lies before it
        and is not in the ring is recorded as lost; at the first start, messages before ``end`` are the
        backlog, not live."""
        begin = max(start, end - self.maxlen, self._positions.get(partition, -1) + 1)
        if begin - 1 > self._positions.get(partition, -1):
            self._positions[partition] = begin - 1
            self._lost[partition] = max(self._lost.get(partition, -1), begin - 1)
        self._live_from.setdefault(partition, end)  # a reconnect's catch-up is news to the streams: live
        return begin

    def add(self, alert: dict[str, Any], partition: int = 0, offset: int | None = None,
            data: str | None = None) -> Entry | None:
        """Keep ``alert`` (read at ``offset`` of ``partition``; the next one when None) and tell the listeners;
        None when that offset was read already (never kept twice)."""
        if offset is None:
            offset = self._positions.get(partition, -1) + 1
        if offset <= self._positions.get(partition, -1):
            return None
        self._positions[partition] = offset
        entry = self._entry(alert, partition, offset, data)
        if len(self._items) == self._items.maxlen:
            old = self._items[0]
            self._lost[old.partition] = max(self._lost.get(old.partition, -1), old.offset)
        self._items.append(entry)
        for listener in list(self.listeners):
            listener(entry)
        return entry

    def _entry(self, alert: dict[str, Any], partition: int, offset: int, data: str | None) -> Entry:
        if data is None:
            data = json.dumps({k: v for k, v in alert.items() if k != "received"}, separators=(",", ":"))
        return Entry(alert, data, partition, offset, offset >= self._live_from.get(partition, 0), self.cursor)

    def after(self, cursor: Cursor) -> tuple[list[Entry], bool]:
        """The alerts of the ring read after ``cursor``, oldest first, and whether some alerts after it are no
        longer in the ring (evicted, or before what this server read): a gap the client should be told of."""
        entries = [e for e in self._items if e.offset > cursor.get(e.partition, -1)]
        gap = any(lost > cursor.get(p, -1) for p, lost in self._lost.items())
        return entries, gap

    def recent(self, since: int | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Newest first; ``since`` compares with the alert's event ``time`` (else when it was received)."""
        out: list[dict[str, Any]] = []
        for entry in reversed(self._items):
            alert = entry.alert
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


def text(value: bytes, alert: dict[str, Any]) -> str:
    """The message's JSON as it was on the topic when it is one line of UTF-8 (the worker writes it so),
    else the same object re-serialised on one line (an SSE data field is line-based)."""
    try:
        raw = value.decode("utf-8").strip()
    except UnicodeDecodeError:
        raw = ""
    if raw and "\n" not in raw and "\r" not in raw:
        return raw
    return json.dumps({k: v for k, v in alert.items() if k != "received"}, separators=(",", ":"))


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
            for tp in partitions:
                consumer.seek(tp, buffer.start_partition(tp.partition, begins[tp], ends[tp]))
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
                buffer.add(alert, msg.partition, msg.offset, text(msg.value or b"", alert))
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
