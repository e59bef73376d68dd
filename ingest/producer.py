"""Kafka side of the gateway: one idempotent producer (acks=all) whose batches are shared by all requests,
and a future per batch that a request awaits before it answers.

Records are appended straight into aiokafka's per-partition ``BatchBuilder`` (as replay does); a batch
goes out when full or after ``linger`` (so concurrent single-position requests share a batch, a group
commit). Each partition has its own chain of hand-overs, keeping order within it while a slow partition
never holds the others back. :meth:`stalled_for` tells how long the oldest batch has been waiting for
Kafka: the gateway sheds new work while Kafka does not answer instead of queueing it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from dataclasses import dataclass, field

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from geoiot import topics
from geoiot.logs import QuietLog
from geoiot.partitioning import kafka_partition

log = logging.getLogger("ingest")

DEFAULT_BATCH_BYTES = 960 * 1024  # below the broker's default message.max.bytes, as replay's
REQUEST_OVERHEAD = 64 * 1024
TRACK_CACHE = 65536  # tracks whose partition is remembered (least recently used forgotten first)


class TooLargeForKafka(ValueError):
    """A single message larger than a batch."""


@dataclass
class _Batch:
    builder: object
    done: asyncio.Future
    opened: float
    records: int = 0
    handed: list[asyncio.Future] = field(default_factory=list)


class AckingProducer:
    """Append records, get back the future of the batch each joined; it resolves once Kafka acknowledged it."""

    def __init__(self, bootstrap: str, topic: str, *, linger_s: float = 0.005,
                 batch_bytes: int = DEFAULT_BATCH_BYTES, request_timeout_s: float = 30.0) -> None:
        self.bootstrap, self.topic, self.linger_s = bootstrap, topic, linger_s
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=0,
            max_batch_size=batch_bytes, max_request_size=batch_bytes + REQUEST_OVERHEAD,
            request_timeout_ms=int(request_timeout_s * 1000), retry_backoff_ms=200, compression_type=None)
        self.partitions = 0
        self._open: dict[int, _Batch] = {}
        self._tail: dict[int, asyncio.Task] = {}  # the last hand-over of each partition
        self._waiting: dict[int, float] = {}  # id(batch) -> when it was closed, until acknowledged or failed
        self._flusher: asyncio.TimerHandle | None = None
        self._outage = QuietLog(log, 10.0)
        self.acked = 0
        self.failed = 0

    async def start(self, partitions: int, replication: int, timeout: float = 30.0) -> None:
        result = await topics.ensure_topic(self.bootstrap, topics.TopicSpec(self.topic, partitions, replication),
                                           timeout)
        self.partitions = result.partitions
        for problem in result.problems:
            log.warning("%s; producing into its %d partitions", problem, result.partitions)
        await asyncio.wait_for(self._producer.start(), timeout)
        self._partition_of = functools.lru_cache(maxsize=TRACK_CACHE)(
            functools.partial(_partition, partitions=self.partitions))

    def append(self, key: bytes, value: bytes) -> asyncio.Future:
        """Queue one message; the returned future is its batch's (shared with other messages)."""
        partition = self._partition_of(key)
        batch = self._open.get(partition)
        if batch is None:
            batch = self._open[partition] = self._new_batch()
        if batch.builder.append(key=key, value=value, timestamp=None) is None:
            self._close(partition)
            batch = self._open[partition] = self._new_batch()
            if batch.builder.append(key=key, value=value, timestamp=None) is None:
                del self._open[partition]
                raise TooLargeForKafka(f"a message of {len(key) + len(value)} bytes does not fit in a Kafka batch")
        batch.records += 1
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().call_later(self.linger_s, self._flush_open)
        return batch.done

    def _new_batch(self) -> _Batch:
        loop = asyncio.get_running_loop()
        return _Batch(self._producer.create_batch(), loop.create_future(), loop.time())

    def _flush_open(self) -> None:
        self._flusher = None
        for partition in list(self._open):
            self._close(partition)

    def _close(self, partition: int) -> None:
        batch = self._open.pop(partition)
        batch.builder.close()
        self._waiting[id(batch)] = asyncio.get_running_loop().time()
        previous = self._tail.get(partition)
        task = asyncio.ensure_future(self._hand_over(previous, partition, batch))
        self._tail[partition] = task
        task.add_done_callback(lambda t, p=partition: self._tail.pop(p, None) if self._tail.get(p) is t else None)

    async def _hand_over(self, previous: asyncio.Task | None, partition: int, batch: _Batch) -> None:
        if previous is not None:
            await asyncio.gather(previous, return_exceptions=True)  # order within the partition
        try:
            acked = await self._producer.send_batch(batch.builder, self.topic, partition=partition)
            await acked
        except (KafkaError, OSError) as exc:
            self.failed += batch.records
            self._outage.warning("produce", "Kafka at %s did not take a batch of %d: %s", self.bootstrap,
                                 batch.records, exc or type(exc).__name__)
            if not batch.done.done():
                batch.done.set_exception(exc)
                batch.done.exception()  # retrieved here: a request may have stopped waiting for it
        else:
            self.acked += batch.records
            if not batch.done.done():
                batch.done.set_result(None)
        finally:
            self._waiting.pop(id(batch), None)

    def stalled_for(self) -> float:
        """Seconds the oldest batch handed over has waited for Kafka (0 when none waits)."""
        if not self._waiting:
            return 0.0
        return asyncio.get_running_loop().time() - min(self._waiting.values())

    async def stop(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
        self._flush_open()
        tails = list(self._tail.values())
        if tails:
            await asyncio.wait(tails, timeout=10.0)
        await self._producer.stop()
        self._outage.flush()


def _partition(key: bytes, partitions: int) -> int:
    return kafka_partition(key, partitions)
