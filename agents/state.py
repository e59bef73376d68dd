"""Track state per track id, kept per source partition and backed by a compacted changelog topic.

The changelog ``<IOT_APP_ID>-tracks-changelog`` has as many partitions as the source topic; the
state of a track is written to the partition of the source partition its events came from, so a
worker that is assigned source partition ``p`` recovers exactly the tracks of ``p`` by reading
changelog partition ``p`` to its end before it processes any event of ``p``. This is the contract
of a Faust table (same topic name, same key and value encoding: JSON), kept here because the
agents consume the source topic with aiokafka directly (see :mod:`agents.consumer`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from agents.tracks import State

log = logging.getLogger("agents.state")


def changelog_topic(app_id: str) -> str:
    return f"{app_id}-tracks-changelog"


def changelog_reader(bootstrap: str) -> AIOKafkaConsumer:
    """A group-less consumer for reading changelog partitions from their beginning (not started)."""
    return AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None,
                            auto_offset_reset="earliest", max_partition_fetch_bytes=8 << 20)


class TrackTable:
    """``track -> state`` for the source partitions this worker holds.

    ``open_reader`` makes a new, not started consumer for each recovery (:func:`changelog_reader`; a fake
    with the same methods in unit tests).
    """

    def __init__(self, topic: str, open_reader: Callable[[], Any]) -> None:
        self.topic = topic
        self.open_reader = open_reader
        self._by_partition: dict[int, dict[str, State]] = {}
        self._partition_of: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._partition_of)

    @property
    def partitions(self) -> set[int]:
        return set(self._by_partition)

    def get(self, track: str) -> State | None:
        partition = self._partition_of.get(track)
        return None if partition is None else self._by_partition[partition].get(track)

    def put(self, partition: int, track: str, state: State) -> None:
        old = self._partition_of.get(track)
        if old is not None and old != partition:  # the producer's partitioner changed: follow the events
            self._by_partition.get(old, {}).pop(track, None)
        self._by_partition.setdefault(partition, {})[track] = state
        self._partition_of[track] = partition

    def drop(self, partitions: Iterable[int]) -> None:
        for partition in partitions:
            for track in self._by_partition.pop(partition, {}):
                if self._partition_of.get(track) == partition:
                    del self._partition_of[track]

    async def recover(self, partitions: Iterable[int]) -> int:
        """Read the changelog partitions from the beginning to their current end; returns records read."""
        wanted = sorted(set(partitions) - self.partitions)
        if not wanted:
            return 0
        started = time.perf_counter()
        tps = [TopicPartition(self.topic, p) for p in wanted]
        consumer = self.open_reader()
        await consumer.start()
        read = 0
        try:
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            ends = await consumer.end_offsets(tps)
            for tp in tps:
                self._by_partition.setdefault(tp.partition, {})
            todo = {tp for tp in tps if ends[tp] > await consumer.position(tp)}
            while todo:
                batches = await consumer.getmany(*todo, timeout_ms=1000)
                for tp, messages in batches.items():
                    for message in messages:
                        if message.offset >= ends[tp]:
                            break
                        read += 1
                        track = orjson.loads(message.key)
                        if message.value is None:  # tombstone
                            self._by_partition[tp.partition].pop(track, None)
                            self._partition_of.pop(track, None)
                        else:
                            self.put(tp.partition, track, orjson.loads(message.value))
                for tp in list(todo):
                    if await consumer.position(tp) >= ends[tp]:
                        todo.discard(tp)
        finally:
            await consumer.stop()
        log.info("state recovered topic=%s partitions=%s records=%d tracks=%d seconds=%.3f",
                 self.topic, wanted, read, len(self), time.perf_counter() - started)
        return read
