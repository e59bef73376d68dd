"""Kafka side of the replay: its topic (through :mod:`geoiot.topics`), and a batching producer that never awaits per message.

Messages are appended straight into aiokafka's per-partition ``BatchBuilder`` (its C record
builder) and handed over a whole batch at a time with ``send_batch``, so the Python cost per message
is one append; batches go out when full or, in paced modes, at the end of each tick. Delivery is
acks=all with idempotence, and only acknowledged messages count as sent.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from geoiot import topics

log = logging.getLogger("replay")

DEFAULT_BATCH_BYTES = 960 * 1024  # just below the broker's default message.max.bytes (1 MiB + 12 B)
DEFAULT_LINGER_MS = 10


class ReplayError(RuntimeError):
    """A failure the user must act on (broker unreachable, topic unusable); the CLI prints it and exits 1."""


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
                 request_timeout_ms: int = 60_000) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.connect_timeout = connect_timeout
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=linger_ms,
            max_batch_size=batch_bytes, max_request_size=batch_bytes + 64 * 1024,
            request_timeout_ms=request_timeout_ms, retry_backoff_ms=200, compression_type=None)
        self._builders: dict[int, object] = {}
        self._full: list[tuple[int, object]] = []
        self._pending: set[asyncio.Future] = set()
        self.delivery = Delivery()
        self.queued = 0
        self.on_ack: Callable[[int, int], None] | None = None

    async def start(self) -> None:
        await _within("producer connect", self.bootstrap, self.connect_timeout, self._producer.start())

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

    async def dispatch(self, all_open: bool = False) -> None:
        """Hand full batches (and, with ``all_open``, every open batch) to the producer's sender."""
        if all_open:
            for partition, builder in self._builders.items():
                if builder.record_count():
                    self._full.append((partition, builder))
            self._builders.clear()
        full, self._full = self._full, []
        for partition, builder in full:
            builder.close()  # closed batches are drained at once instead of lingering
            count = builder.record_count()
            future = await self._producer.send_batch(builder, self.topic, partition=partition)
            self._pending.add(future)
            future.add_done_callback(lambda f, p=partition, n=count: self._done(f, p, n))

    def _done(self, future: asyncio.Future, partition: int, count: int) -> None:
        self._pending.discard(future)
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
        """Send every open batch and wait until all are acknowledged (or failed)."""
        await self.dispatch(all_open=True)
        if self._pending:
            await asyncio.wait(set(self._pending))

    async def stop(self) -> None:
        try:
            await self.flush()
        finally:
            await self._producer.stop()
