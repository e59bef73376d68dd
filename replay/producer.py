"""Kafka side of the replay: its topic (through :mod:`geoiot.topics`), and a batching producer that never awaits per message.

Messages are appended straight into aiokafka's per-partition ``BatchBuilder`` (its C record
builder) and handed over a whole batch at a time with ``send_batch``, so the Python cost per message
is one append; batches go out when full or, in paced modes, at the end of each tick. Delivery is
acks=all with idempotence, and only acknowledged messages count as sent.

Through a broker outage aiokafka retries an idempotent batch for ever; here a batch not acknowledged
within ``delivery_timeout`` (Kafka's ``delivery.timeout.ms``) ends the run instead: every message still
queued is counted failed, and the caller gets a summary rather than a hang or a KafkaTimeoutError.
A message over the producer's request size is refused before it joins a batch (``too_large``), so it
cannot make its neighbours fail.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, KafkaTimeoutError, UnknownTopicOrPartitionError
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from geoiot import topics
from geoiot.logs import QuietLog

log = logging.getLogger("replay")

DEFAULT_BATCH_BYTES = 960 * 1024  # just below the broker's default message.max.bytes (1 MiB + 12 B)
DEFAULT_LINGER_MS = 10
DEFAULT_DELIVERY_TIMEOUT_S = 120.0  # Kafka's own delivery.timeout.ms default
REQUEST_OVERHEAD = 64 * 1024  # max request size = batch size + this (one batch per partition per request)
RECORD_MARGIN = 160  # batch header + record overhead + varints: above (key + value) minus this, measure exactly
OUTAGE_LOG_PERIOD_S = 10.0


class ReplayError(RuntimeError):
    """A failure the user must act on (broker unreachable, topic unusable); the CLI prints it and exits 1."""


def oversize_reason(size: int, limit: int) -> str:
    """Why a row was skipped as too large (counted under the skip kind "size")."""
    return f"message of {size} bytes is over the producer's maximum request size of {limit} bytes"


async def _within(what: str, bootstrap: str, timeout: float, coro: Awaitable) -> object:
    try:
        return await asyncio.wait_for(coro, timeout)
    except asyncio.TimeoutError:
        raise ReplayError(f"Kafka at {bootstrap} did not answer within {timeout:g}s ({what})") from None
    except KafkaError as exc:
        raise ReplayError(f"cannot reach Kafka at {bootstrap} ({what}): {exc}") from None
    except OSError as exc:
        raise ReplayError(f"cannot reach Kafka at {bootstrap} ({what}): {exc.strerror or exc}") from None


async def ensure_topic(bootstrap: str, topic: str, partitions: int, replication: int, timeout: float = 10.0) -> int:
    """The replay's topic through :mod:`geoiot.topics` (created as asked when missing); its partition count.

    An existing topic with fewer partitions than asked is used as it is, with a warning.
    """
    try:
        result = await topics.ensure_topic(bootstrap, topics.TopicSpec(topic, partitions, replication), timeout)
    except topics.TopicsError as exc:
        raise ReplayError(str(exc)) from None
    if result.status == "created":
        log.info("created topic %s partitions=%d replication=%d", topic, partitions, replication)
    for problem in result.problems:
        log.warning("%s; replaying into its %d partitions", problem, result.partitions)
    return result.partitions


@dataclass
class Delivery:
    """Acknowledged messages per partition, and the first delivery failure if any."""

    acked: dict[int, int] = field(default_factory=dict)
    failed: int = 0
    error: BaseException | None = None

    @property
    def sent(self) -> int:
        return sum(self.acked.values())


class BatchingProducer:
    """Per-partition batches into one idempotent aiokafka producer."""

    def __init__(self, bootstrap: str, topic: str, *, linger_ms: int = DEFAULT_LINGER_MS,
                 batch_bytes: int = DEFAULT_BATCH_BYTES, connect_timeout: float = 10.0,
                 delivery_timeout: float = DEFAULT_DELIVERY_TIMEOUT_S) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.connect_timeout = connect_timeout
        self.delivery_timeout = delivery_timeout
        self.max_request_size = batch_bytes + REQUEST_OVERHEAD
        self.max_payload = self.max_request_size - RECORD_MARGIN  # key + value up to this always fit
        # aiokafka's request timeout is also its batch time-to-live (a batch without a leader that long
        # fails) and its wait for a queue slot: the delivery timeout is the one that means all three.
        request_timeout_ms = int(max(1.0, delivery_timeout) * 1000)
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=linger_ms,
            max_batch_size=batch_bytes, max_request_size=self.max_request_size,
            request_timeout_ms=request_timeout_ms, retry_backoff_ms=200, compression_type=None)
        self._builders: dict[int, object] = {}
        self._full: list[tuple[int, object]] = []
        self._pending: dict[asyncio.Future, tuple[float, int]] = {}  # batch future -> (handed over at, messages)
        self.delivery = Delivery()
        self.queued = 0
        self.gave_up = False
        self.on_ack: Callable[[int, int], None] | None = None
        self._outage = QuietLog(log, OUTAGE_LOG_PERIOD_S)

    async def start(self) -> None:
        await _within("producer connect", self.bootstrap, self.connect_timeout, self._producer.start())

    def too_large(self, key: bytes, value: bytes) -> int | None:
        """The encoded size of a message that no request could carry (None when it fits); callers skip
        it while ``len(key) + len(value) <= max_payload``, so this runs only for the rare big row."""
        size = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, [])
        return size if size > self.max_request_size else None

    def append(self, partition: int, key: bytes, value: bytes) -> None:
        """Add one message to its partition's open batch (no I/O; ``await dispatch()`` hands full batches over)."""
        builder = self._builders.get(partition)
        if builder is None:
            builder = self._builders[partition] = self._producer.create_batch()
        if builder.append(key=key, value=value, timestamp=None) is None:
            self._full.append((partition, builder))
            builder = self._builders[partition] = self._producer.create_batch()
            if builder.append(key=key, value=value, timestamp=None) is None:
                raise ReplayError(f"a message of {len(value)} bytes does not fit in a batch")
        self.queued += 1

    def _deadline(self, loop: asyncio.AbstractEventLoop) -> float:
        """The oldest unacknowledged batch's deadline (or a fresh one): past it, the run gives up."""
        oldest = min((handed for handed, _ in self._pending.values()), default=loop.time())
        return oldest + self.delivery_timeout

    async def dispatch(self, all_open: bool = False) -> None:
        """Hand full batches (and, with ``all_open``, every open batch) to the producer's sender.

        Raises ReplayError once Kafka acknowledged nothing for ``delivery_timeout``; every message not
        acknowledged by then is counted failed."""
        if self.gave_up:
            raise self.delivery.error if isinstance(self.delivery.error, ReplayError) else ReplayError("gave up")
        if all_open:
            for partition, builder in self._builders.items():
                if builder.record_count():
                    self._full.append((partition, builder))
            self._builders.clear()
        while self._full:
            partition, builder = self._full[0]
            builder.close()  # closed batches are drained at once instead of lingering
            future = await self._hand_over(builder, partition)
            self._full.pop(0)
            count = builder.record_count()
            self._pending[future] = (asyncio.get_running_loop().time(), count)
            future.add_done_callback(lambda f, p=partition, n=count: self._done(f, p, n))

    async def _hand_over(self, builder: object, partition: int) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        started = loop.time()
        while True:
            deadline = self._deadline(loop)
            task = asyncio.ensure_future(self._producer.send_batch(builder, self.topic, partition=partition))
            while not task.done():
                wait = deadline - loop.time()
                if wait <= 0:
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
                    self._give_up()
                    raise self.delivery.error  # type: ignore[misc]
                await asyncio.wait({task}, timeout=min(wait, OUTAGE_LOG_PERIOD_S))
                if not task.done():
                    self._waiting(loop.time() - started)
            try:
                return task.result()
            except (KafkaTimeoutError, UnknownTopicOrPartitionError):
                continue  # no queue slot / no metadata within aiokafka's request timeout: until our deadline

    def _waiting(self, seconds: float) -> None:
        unacked = self.queued - self.delivery.sent - self.delivery.failed
        self._outage.warning("kafka-wait", "Kafka at %s has not taken a batch for %.0fs (%d messages not "
                             "acknowledged); retrying until --delivery-timeout %gs", self.bootstrap, seconds,
                             unacked, self.delivery_timeout)

    def _give_up(self) -> None:
        """Count every message not acknowledged as failed and stop the producer from retrying them."""
        if self.gave_up:
            return
        self.gave_up = True
        before = self.delivery.failed
        open_batches = [b for _, b in self._full] + list(self._builders.values())
        self.delivery.failed += sum(b.record_count() for b in open_batches)
        self.delivery.failed += sum(count for _, count in self._pending.values())
        self.delivery.error = ReplayError(
            f"Kafka at {self.bootstrap} acknowledged no batch for {self.delivery_timeout:g}s (--delivery-timeout): "
            f"stopped, {self.delivery.failed - before} messages not acknowledged")
        self._full.clear()
        self._builders.clear()
        self._pending.clear()  # a late acknowledgement no longer counts (_done ignores it)

    def _done(self, future: asyncio.Future, partition: int, count: int) -> None:
        if self._pending.pop(future, None) is None:  # given up on (and counted failed) already
            if not future.cancelled():
                future.exception()
            return
        if future.cancelled():
            self.delivery.failed += count
            return
        exc = future.exception()
        if exc is not None:
            self.delivery.failed += count
            if self.delivery.error is None:
                self.delivery.error = exc
            return
        self.delivery.acked[partition] = self.delivery.acked.get(partition, 0) + count
        if self.on_ack is not None:
            self.on_ack(partition, count)

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    async def flush(self) -> None:
        """Send every open batch and wait until all are acknowledged, failed, or past the delivery deadline."""
        await self.dispatch(all_open=True)
        loop = asyncio.get_running_loop()
        started = loop.time()
        while self._pending:
            wait = self._deadline(loop) - loop.time()
            if wait <= 0:
                self._give_up()
                break
            await asyncio.wait(set(self._pending), timeout=min(wait, OUTAGE_LOG_PERIOD_S))
            if self._pending and loop.time() - started >= OUTAGE_LOG_PERIOD_S:
                self._waiting(loop.time() - started)

    async def stop(self) -> None:
        try:
            if not self.gave_up:
                await self.flush()
        except ReplayError:
            if not self.gave_up:
                raise  # a give-up is already counted and reported in the delivery
        finally:
            if self.gave_up:
                await self._abandon()
            else:
                await self._producer.stop()
        self._outage.flush()

    async def _abandon(self) -> None:
        """Close without flushing: aiokafka's stop() waits for every queued batch, which an idempotent
        producer retries for ever. Its own stop() minus that wait (it has no public way to give up)."""
        producer = self._producer
        producer._closed = True  # noqa: SLF001
        if producer._sender is not None:  # noqa: SLF001
            await producer._sender.close()  # noqa: SLF001 - cancels the sender task
        await producer.client.close()
