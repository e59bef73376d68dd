"""Kafka side of the gateway: one idempotent producer (acks=all) whose batches are shared by all requests,
and a future per batch that a request awaits before it answers.

Records are appended straight into aiokafka's per-partition ``BatchBuilder`` (as replay does); a batch
goes out after ``linger`` (so concurrent single-position requests share a batch, a group commit), one batch
in flight per partition: while one is, the next keeps filling and leaves the moment it is acknowledged, as
with Kafka's own producer; order within a partition is kept and a slow partition holds no other back.
:meth:`stalled_for` tells how long the oldest batch has been waiting for Kafka: the gateway sheds new work
while Kafka does not answer instead of queueing it. A batch that failed for good leaves the idempotent
producer's sequence numbers broken, so the producer is replaced by a new one.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections import deque
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from geoiot import topics
from geoiot.logs import QuietLog
from geoiot.partitioning import kafka_partition

log = logging.getLogger("ingest")

DEFAULT_BATCH_BYTES = 960 * 1024  # below the broker's default message.max.bytes, as replay's
REQUEST_OVERHEAD = 64 * 1024
RECORD_MARGIN = 160  # batch header and record overhead
TRACK_CACHE = 65536  # tracks whose partition is remembered (least recently used forgotten first)


class ProducerReplaced(RuntimeError):
    """A batch in flight on a producer that was replaced: it may or may not be in Kafka."""


class TooLargeForKafka(ValueError):
    """A single message larger than a batch."""


@dataclass
class _Batch:
    builder: object
    done: asyncio.Future
    opened: float
    records: int = 0


class AckingProducer:
    """Append records, get back the future of the batch each joined; it resolves once Kafka acknowledged it."""

    def __init__(self, bootstrap: str, topic: str, *, linger_s: float = 0.005,
                 batch_bytes: int = DEFAULT_BATCH_BYTES, request_timeout_s: float = 300.0) -> None:
        self.bootstrap, self.topic, self.linger_s = bootstrap, topic, linger_s
        self._settings = dict(
            bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=0,
            max_batch_size=batch_bytes, max_request_size=batch_bytes + REQUEST_OVERHEAD,
            request_timeout_ms=int(request_timeout_s * 1000), retry_backoff_ms=200, compression_type=None)
        self._producer = AIOKafkaProducer(**self._settings)
        self.max_message = batch_bytes - RECORD_MARGIN  # key + value up to this always fit in a batch
        self._generation: asyncio.Future | None = None  # fails when the producer is replaced
        self.resets = 0
        self._started = asyncio.Event()
        self.partitions = 0
        self._open: dict[int, _Batch] = {}  # filling, per partition
        self._queued: dict[int, deque[_Batch]] = {}  # closed (full), waiting for the partition's turn
        self._busy: set[int] = set()  # partitions with a batch in flight
        self._tasks: set[asyncio.Task] = set()
        self._closing = False
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
        self._generation = asyncio.get_running_loop().create_future()
        self._started.set()
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
            self._send_next(partition)
        batch.records += 1
        if self._flusher is None and partition not in self._busy:
            self._flusher = asyncio.get_running_loop().call_later(self.linger_s, self._flush_open)
        return batch.done

    def _new_batch(self) -> _Batch:
        loop = asyncio.get_running_loop()
        return _Batch(self._producer.create_batch(), loop.create_future(), loop.time())

    def _flush_open(self) -> None:
        """Linger over: send the open batch of every partition that has none in flight (the others' go
        out as soon as theirs is acknowledged, meanwhile growing, as Kafka's own producer does)."""
        self._flusher = None
        for partition in list(self._open):
            self._send_next(partition)

    def _close(self, partition: int) -> None:
        batch = self._open.pop(partition)
        batch.builder.close()
        self._queued.setdefault(partition, deque()).append(batch)

    def _send_next(self, partition: int) -> None:
        """Hand the partition's next batch to Kafka unless one is in flight: one at a time keeps the order."""
        if partition in self._busy:
            return
        queue = self._queued.get(partition)
        if not queue:
            if partition not in self._open:
                return
            self._close(partition)
            queue = self._queued[partition]
        batch = queue.popleft()
        self._busy.add(partition)
        self._waiting[id(batch)] = asyncio.get_running_loop().time()
        task = asyncio.ensure_future(self._hand_over(partition, batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _hand_over(self, partition: int, batch: _Batch) -> None:
        generation = self._generation
        assert generation is not None
        try:
            await self._unless_replaced(asyncio.ensure_future(self._started.wait()), generation)
            sending = asyncio.ensure_future(self._producer.send_batch(batch.builder, self.topic, partition=partition))
            acked = await self._unless_replaced(sending, generation)
            await self._unless_replaced(acked, generation)
        except (KafkaError, OSError, ProducerReplaced) as exc:
            self.failed += batch.records
            self._outage.warning("produce", "Kafka at %s did not take a batch of %d: %s", self.bootstrap,
                                 batch.records, exc or type(exc).__name__)
            if isinstance(exc, KafkaError) and not generation.done():
                # a batch that failed took sequence numbers the broker never saw: every later batch of this
                # idempotent producer would be refused (OutOfOrderSequenceNumber), so start a new one
                asyncio.ensure_future(self._replace(generation, exc))
            if not batch.done.done():
                batch.done.set_exception(exc)
                batch.done.exception()  # retrieved here: a request may have stopped waiting for it
        else:
            self.acked += batch.records
            if not batch.done.done():
                batch.done.set_result(None)
        finally:
            self._waiting.pop(id(batch), None)
            self._busy.discard(partition)
            if not self._closing:
                self._send_next(partition)

    @staticmethod
    async def _unless_replaced(future: asyncio.Future, generation: asyncio.Future) -> object:
        await asyncio.wait({future, generation}, return_when=asyncio.FIRST_COMPLETED)
        if future.done():
            return future.result()
        future.cancel()
        raise ProducerReplaced("the producer was replaced after a failed batch")

    async def _replace(self, generation: asyncio.Future, cause: BaseException) -> None:
        """A new idempotent producer (new producer id, sequences from 0) in place of one that lost a batch;
        batches still in flight on the old one fail (their requests get 503, MQTT messages are produced again)."""
        if generation.done():
            return
        generation.set_result(None)
        self._started.clear()
        old = self._producer
        self._producer = AIOKafkaProducer(**self._settings)
        self._generation = asyncio.get_running_loop().create_future()
        self.resets += 1
        log.warning(json.dumps({"event": "producer_replaced", "cause": str(cause) or type(cause).__name__}))
        try:
            old._closed = True  # noqa: SLF001 - aiokafka's stop() would wait for batches it retries for ever
            if old._sender is not None:  # noqa: SLF001
                await old._sender.close()  # noqa: SLF001
            await old.client.close()
        except Exception as exc:  # noqa: BLE001 - the old producer is gone either way
            log.debug("closing the replaced producer: %s", exc)
        while not self._closing:
            try:
                await asyncio.wait_for(self._producer.start(), 30)
                self._started.set()
                break
            except (KafkaError, OSError, asyncio.TimeoutError) as exc:
                self._outage.warning("restart", "cannot start a new producer at %s: %s", self.bootstrap, exc)
                await asyncio.sleep(1)

    def stalled_for(self) -> float:
        """Seconds the oldest batch handed over has waited for Kafka (0 when none waits)."""
        if not self._waiting:
            return 0.0
        return asyncio.get_running_loop().time() - min(self._waiting.values())

    async def stop(self) -> None:
        """Send what is queued (waiting up to 10 s for Kafka), then close."""
        if self._flusher is not None:
            self._flusher.cancel()
        deadline = asyncio.get_running_loop().time() + 10.0
        while (self._open or any(self._queued.values()) or self._tasks) and \
                asyncio.get_running_loop().time() < deadline:
            self._flush_open()
            await asyncio.sleep(0.01)
        self._closing = True
        await self._producer.stop()
        self._outage.flush()


def _partition(key: bytes, partitions: int) -> int:
    return kafka_partition(key, partitions)
