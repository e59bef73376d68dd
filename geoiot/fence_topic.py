"""The fence topic on Kafka: its spec, a follower that mirrors it, the writes and the seeding from a file.

:class:`FenceFollower` is the one reader of the topic for every runtime (workers, the web server): it reads
every partition from the beginning up to the end offsets it found at start (:meth:`FenceFollower.start`
returns only then, so a worker recovers the fences before it consumes an event), then follows it, and
calls ``on_change`` with the ids changed after each fetch. A record that is not a valid fence is logged
and skipped, never the follower's end. The record contract is :mod:`geoiot.fences`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from geoiot import fences, topics
from geoiot.config import Settings

log = logging.getLogger("geoiot.fences")

START_TIMEOUT = 30.0


def make_producer(bootstrap: str) -> AIOKafkaProducer:
    """A producer for fence writes: acknowledged by every in-sync replica, idempotent; not started."""
    return AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True,
                            max_request_size=fences.MAX_BODY_BYTES + (1 << 20))


async def write(producer: AIOKafkaProducer, topic: str, key: bytes, value: bytes | None) -> tuple[int, int]:
    """Send one record and wait until Kafka acknowledged it; (offset = the fence's version, timestamp ms)."""
    meta = await producer.send_and_wait(topic, value, key=key, partition=0)
    return meta.offset, meta.timestamp


class FenceFollower:
    """Mirrors the fence topic into :attr:`fences` (a :class:`geoiot.fences.FenceSet`)."""

    def __init__(self, bootstrap: str, topic: str,
                 on_change: Callable[[fences.FenceSet, list[str]], Any] | None = None) -> None:
        self.bootstrap, self.topic = bootstrap, topic
        self.on_change = on_change
        self.fences = fences.FenceSet()
        self.position = 0  # next offset of partition 0 to read (the fence topic has one: topics.fence_spec)
        self.skipped = 0
        self.synced = False  # the topic was read to the end found at start
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._advanced = asyncio.Condition()

    async def start(self, timeout: float = START_TIMEOUT) -> None:
        """Read the whole topic (every partition) to its current end, then follow it in the background."""
        consumer = self._consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None,
                                                     enable_auto_commit=False, auto_offset_reset="earliest")
        await consumer.start()
        try:
            parts = await asyncio.wait_for(self._partitions(consumer), timeout)
            consumer.assign(parts)
            await consumer.seek_to_beginning(*parts)
            ends = await consumer.end_offsets(parts)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
                if loop.time() > deadline:
                    raise TimeoutError(f"fence topic {self.topic!r} not read to its end within {timeout:g}s")
                await self._poll(consumer, notify=False)
        except BaseException:
            await consumer.stop()
            self._consumer = None
            raise
        self.synced = True
        log.info(json.dumps({"event": "fences_loaded", "topic": self.topic, "fences": len(self.fences),
                             "version": self.fences.version, "skipped": self.skipped}))
        self._task = asyncio.create_task(self._follow(consumer), name="fence-follower")

    async def _partitions(self, consumer: AIOKafkaConsumer) -> list[TopicPartition]:
        while True:
            found = consumer.partitions_for_topic(self.topic)
            if found:
                return [TopicPartition(self.topic, p) for p in sorted(found)]
            await consumer._client.force_metadata_update()  # noqa: SLF001 (aiokafka has no public refresh)
            await asyncio.sleep(0.2)

    async def _poll(self, consumer: AIOKafkaConsumer, notify: bool = True) -> None:
        batches = await consumer.getmany(timeout_ms=500)
        changed: list[str] = []
        for tp, records in batches.items():
            for record in records:
                try:
                    fid = self.fences.apply(record.key, record.value, record.offset, record.timestamp)
                except fences.FenceError as exc:
                    self.skipped += 1
                    log.warning(json.dumps({"event": "fence_record_skipped", "topic": self.topic,
                                            "offset": record.offset, "reason": str(exc)[:300]}))
                    continue
                if fid is not None:
                    changed.append(fid)
            if tp.partition == 0 and records:
                self.position = records[-1].offset + 1
        if batches:
            async with self._advanced:
                self._advanced.notify_all()
        if changed and notify and self.on_change is not None:
            outcome = self.on_change(self.fences, changed)
            if asyncio.iscoroutine(outcome):
                await outcome

    async def _follow(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            try:
                await self._poll(consumer)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a broken callback or a Kafka hiccup: logged, the follower goes on
                log.warning(json.dumps({"event": "fence_follow_failed", "error": f"{type(exc).__name__}: {exc}"}))
                await asyncio.sleep(1.0)

    async def wait_for(self, offset: int, timeout: float) -> bool:
        """Until the record at ``offset`` was applied (a writer's own change, read back); False on timeout."""
        async def reached() -> None:
            async with self._advanced:
                await self._advanced.wait_for(lambda: self.position > offset)
        try:
            await asyncio.wait_for(reached(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None


async def ensure(settings: Settings, timeout: float = topics.DEFAULT_TIMEOUT) -> topics.TopicResult:
    """Create the fence topic when missing (its differences from the spec are in the result's problems)."""
    return await topics.ensure_topic(settings.kafka_bootstrap, topics.fence_spec(settings), timeout)


async def seed(settings: Settings, path: str | Path, timeout: float = START_TIMEOUT) -> int:
    """Seed the fence topic from a geofences file (see :func:`geoiot.fences.seed_plan`); the fences written.

    A :class:`geoiot.fences.FenceError` when the file is unusable (nothing is written then)."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise fences.FenceError(f"cannot read geofences {path}: {exc.strerror}") from None
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise fences.FenceError(f"{path}: not valid JSON: {exc}") from None
    features = fences.features_of_file(data, str(path))
    follower = FenceFollower(settings.kafka_bootstrap, settings.fences_topic)
    await follower.start(timeout)
    await follower.stop()
    plan = fences.seed_plan(follower.fences, features, fences.file_digest(raw))
    if plan:
        producer = make_producer(settings.kafka_bootstrap)
        await producer.start()
        try:
            for key, value in plan:
                await write(producer, settings.fences_topic, key, value)
        finally:
            await producer.stop()
    written = max(0, len(plan) - 1)
    log.info(json.dumps({"event": "fences_seeded", "topic": settings.fences_topic, "file": str(path),
                         "written": written, "unchanged": not plan}))
    return written


async def prepare(settings: Settings) -> tuple[str, ...]:
    """What a runtime does before it follows the fences: create the topic when missing, seed it from
    IOT_GEOFENCES. Returns how an existing topic differs from its spec (for the caller to log); a
    :class:`geoiot.fences.FenceError` for an unusable file, a :class:`geoiot.topics.TopicsError` for Kafka."""
    result = await ensure(settings)
    await seed(settings, settings.iot_geofences)
    return result.problems
