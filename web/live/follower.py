"""The mirror's reader of the live topic (geoiot.live): every partition from its beginning, ``read_committed``
(a worker's batch is seen only once its transaction committed), up to the end offsets found at start
(:attr:`LiveFollower.synced` then turns true: the web server's /healthz is ready from there), then following
it. Modelled on geoiot.fence_topic.FenceFollower. A record that is not of the contract is counted and skipped.
A topic that does not exist yet is an empty live layer: the follower is synced and looks for it again."""

from __future__ import annotations

import asyncio
import json
import logging
import time

from aiokafka import AIOKafkaConsumer, TopicPartition

from geoiot.malloc import release_freed_heap
from web.live.table import LiveTable, apply_records

log = logging.getLogger("web.live")

# Seconds to wait for the topic's metadata at start before taking it as not created yet (empty).
TOPIC_WAIT = 5.0
RETRY = 1.0
FETCH_BYTES = 32 << 20
PARTITION_FETCH_BYTES = 8 << 20
MAX_RECORDS = 5_000  # a fetch applied at once (web.live.table.LiveTable.apply_batch)


class LiveFollower:
    """Fills ``table`` from ``topic`` and keeps it current."""

    def __init__(self, bootstrap: str, topic: str, table: LiveTable) -> None:
        self.bootstrap, self.topic, self.table = bootstrap, topic, table
        self.synced = False
        self.records = 0  # records read (documents and tombstones, applied or not)
        self.skipped = 0
        self.started_at = 0.0
        self.load_seconds: float | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._parts: list[TopicPartition] = []
        self._task: asyncio.Task[None] | None = None

    @property
    def lag(self) -> int:
        """Records committed to the topic and not read yet (as of the last fetch)."""
        consumer = self._consumer
        if consumer is None:
            return 0
        out = 0
        for tp in self._parts:
            end = consumer.last_stable_offset(tp)
            try:  # the position without awaiting (aiokafka's position() is a coroutine)
                state = consumer._subscription.subscription.assignment.state_value(tp)  # noqa: SLF001
                position = state.position if state is not None and state.has_valid_position else None
            except AttributeError:
                position = None
            if end is not None and position is not None:
                out += max(0, end - position)
        return out

    def start(self) -> None:
        """Begin loading in the background (:attr:`synced` says when the start's end was reached)."""
        self.started_at = time.monotonic()
        self._task = asyncio.create_task(self._run(), name="live-follower")

    async def _run(self) -> None:
        while True:
            try:
                await self._load_and_follow()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Kafka away at start: try again; what was read stays
                log.warning(json.dumps({"event": "live_follow_failed", "topic": self.topic,
                                        "error": f"{type(exc).__name__}: {str(exc)[:200]}"}))
                await self._close_consumer()
                await asyncio.sleep(RETRY)

    async def _load_and_follow(self) -> None:
        consumer = self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False,
            auto_offset_reset="earliest", isolation_level="read_committed", fetch_max_bytes=FETCH_BYTES,
            max_partition_fetch_bytes=PARTITION_FETCH_BYTES)
        await consumer.start()
        parts = await self._partitions(consumer, TOPIC_WAIT)
        while not parts:
            if not self.synced:
                self._mark_synced("live_topic_missing")
            await asyncio.sleep(TOPIC_WAIT)
            parts = await self._partitions(consumer, TOPIC_WAIT)
        self._parts = parts
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        if not self.synced:
            ends = await consumer.end_offsets(parts)
            while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
                await self._poll(consumer)
            release_freed_heap()  # the load's fetches and documents: a burst the server will not repeat
            self._mark_synced("live_loaded")
        while True:
            await self._poll(consumer)

    def _mark_synced(self, event: str) -> None:
        self.synced = True
        self.load_seconds = time.monotonic() - self.started_at
        log.info(json.dumps({"event": event, "topic": self.topic, "tracks": len(self.table),
                             "records": self.records, "skipped": self.skipped,
                             "seconds": round(self.load_seconds, 3)}))

    async def _partitions(self, consumer: AIOKafkaConsumer, wait: float) -> list[TopicPartition]:
        """The topic's partitions; [] when the cluster does not have it (or not within ``wait`` s)."""
        if self.topic not in await consumer.topics():  # a fresh metadata request
            return []
        deadline = time.monotonic() + wait
        while True:
            found = consumer.partitions_for_topic(self.topic)
            if found:
                return [TopicPartition(self.topic, p) for p in sorted(found)]
            if time.monotonic() > deadline:
                return []
            await consumer._client.force_metadata_update()  # noqa: SLF001 (aiokafka has no public refresh)
            await asyncio.sleep(0.2)

    async def _poll(self, consumer: AIOKafkaConsumer) -> None:
        batches = await consumer.getmany(timeout_ms=500, max_records=MAX_RECORDS)
        time_field = self.table.preset.time
        for records in batches.values():
            self.records += len(records)
            _, skipped = apply_records(self.table, ((r.key, r.value) for r in records), time_field)
            if skipped:
                self.skipped += skipped
                log.warning(json.dumps({"event": "live_records_skipped", "topic": self.topic, "count": skipped}))

    async def _close_consumer(self) -> None:
        if self._consumer is not None:
            try:
                await self._consumer.stop()
            finally:
                self._consumer = None

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        await self._close_consumer()
