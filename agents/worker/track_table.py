"""Track state per track id, kept per source partition and backed by a compacted changelog topic.

The changelog ``<IOT_APP_ID>-tracks-changelog`` has as many partitions as the source topic; the
state of a track is written to the partition of the source partition its events came from, so a
worker that is assigned source partition ``p`` recovers exactly the tracks of ``p`` by reading
changelog partition ``p`` to its end before it processes any event of ``p``. This is the contract
of a Faust table (same topic name, same key encoding: JSON), kept here because the agents consume the
source topic with aiokafka directly (see :mod:`agents.worker.stream`). The value is the compact binary
state of :mod:`agents.core.state_codec`; a value in the JSON format written before is still recovered.

In memory a track is one tuple, ``(t, lon, lat, fences, updated_ms, partition)`` (:data:`Row`): the
:class:`agents.core.motion.State` fields first (so the row is what ``get_state`` gives the motion rule), then
when it was last put and the source partition it came from, in one dict keyed by track id. Fence sets are
shared tuples. That is a few hundred bytes per track, dict and key included (docs/BENCHMARKS.md, "Issue 23").

Partitions added to the source topic: the worker that is assigned a source partition the changelog
does not have yet first grows the changelog to match (:func:`geoiot.topics.grow`); the new changelog
partitions are empty. Kafka's default partitioner then sends some tracks to other partitions: such a
track starts without state on the worker that owns its new partition (its first report there has no
motion fields and no exit alert), unless the same worker held its old partition, where the state
follows the track (:meth:`TrackTable.put`) and the old partition gets a tombstone for it; a recovery
that reads both partitions keeps the newer state (by record timestamp), in whichever order it reads them.

Compaction (:data:`geoiot.topics.CHANGELOG_CONFIGS`: 8 MiB or 5 min segments, ratio 0.1): Kafka compacts
only closed segments, and a log only once its dirty share passes ``min.cleanable.dirty.ratio``; with the
broker's settings (segments of 1 GiB, 256 MiB in infra/local; ratio 0.5) a changelog of a few hundred MB
is never compacted and recovery reads every update ever written. Small, time-bounded segments and a low
ratio keep recovery near one record per track (plus at most a segment and a tenth of dirty records per
partition). A changelog created with other values is reported
at worker start and by ``python -m geoiot.topics`` (it still works, recovery reads more);
``python -m geoiot.topics --alter-changelog`` sets them.

Idle tracks (:mod:`agents.core.idle`, IOT_TRACK_IDLE_TIMEOUT): the table remembers when each state was last
put (after a recovery: the changelog record's timestamp); :meth:`TrackTable.get` gives no state for a
track idle longer than the timeout, and :meth:`TrackTable.evict_idle` drops such tracks so that the
caller writes their tombstones to the changelog.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from agents.core import idle, state_codec
from agents.core.motion import State
from geoiot import topics

log = logging.getLogger("agents.worker.track_table")


changelog_topic = topics.changelog_name

# A held track: the State's four fields, then the wall-clock ms of its last put and its source partition.
Row = tuple[int, float, float, tuple[str, ...], int, int]
UPDATED, PARTITION = 4, 5


def changelog_reader(bootstrap: str) -> AIOKafkaConsumer:
    """A group-less consumer for reading changelog partitions from their beginning (not started); it reads only
    committed transactions, so a recovered state is the one committed with the offsets (agents.worker.stream)."""
    return AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None,
                            auto_offset_reset="earliest", isolation_level="read_committed",
                            max_partition_fetch_bytes=8 << 20)


class TrackTable:
    """``track -> row`` for the source partitions this worker holds.

    ``open_reader`` makes a new, not started consumer for each recovery (:func:`changelog_reader`; a fake
    with the same methods in unit tests).
    """

    def __init__(self, topic: str, open_reader: Callable[[], Any], *, idle_timeout: float = 0.0,
                 clock: Callable[[], float] = time.time) -> None:
        """``idle_timeout``: seconds (0: never), see :mod:`agents.core.idle`; ``clock``: wall-clock seconds."""
        self.topic = topic
        self.open_reader = open_reader
        self.idle_timeout = idle_timeout
        self.clock = clock
        self._rows: dict[str, Row] = {}
        self._partitions: set[int] = set()
        self._next_sweep = 0.0

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def partitions(self) -> set[int]:
        return set(self._partitions)

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    def get(self, track: str) -> Row | None:
        """The track's row (its state's fields first); none when it idled longer than the timeout (the report
        starts it afresh)."""
        row = self._rows.get(track)
        if row is None:
            return None
        if self.idle_timeout and idle.expired(row[UPDATED], self._now_ms(), self.idle_timeout):
            return None
        return row

    def put(self, partition: int, track: str, state: State, updated_ms: int | None = None) -> int | None:
        """Store the state; returns the partition the track left when its events moved (partitions added
        to the source topic), whose changelog should get a tombstone for it, else None."""
        old = self._rows.get(track)
        self._rows[track] = (state[0], state[1], state[2], state[3],
                             self._now_ms() if updated_ms is None else updated_ms, partition)
        self._partitions.add(partition)
        if old is not None and old[PARTITION] != partition:  # the producer's partitioner changed: follow the events
            return old[PARTITION]
        return None

    def _remove(self, track: str, partition: int | None = None) -> None:
        """Forget a track; with ``partition``, only if it is still kept there (a tombstone of a partition
        the track left must not remove its state in the partition it moved to)."""
        row = self._rows.get(track)
        if row is not None and (partition is None or row[PARTITION] == partition):
            del self._rows[track]

    def evict_idle(self, keep: Callable[[str], bool] = lambda track: False,
                   every: float | None = None) -> list[tuple[int, str]]:
        """Drop the tracks idle longer than the timeout (unless ``keep(track)``); returns (partition, track).

        The caller writes a tombstone for each to the changelog partition, so recovery does not bring them
        back. Sweeps at most once per ``every`` seconds (default: a tenth of the timeout, at most a minute).
        """
        if not self.idle_timeout:
            return []
        now = self.clock()
        if now < self._next_sweep:
            return []
        self._next_sweep = now + (min(60.0, self.idle_timeout / 10) if every is None else every)
        now_ms = int(now * 1000)
        gone = [(row[PARTITION], track) for track, row in self._rows.items()
                if idle.expired(row[UPDATED], now_ms, self.idle_timeout) and not keep(track)]
        for _, track in gone:
            del self._rows[track]
        if gone:
            log.info("idle tracks evicted count=%d tracks=%d timeout=%gs", len(gone), len(self), self.idle_timeout)
        return gone

    def drop(self, partitions: Iterable[int]) -> None:
        """Forget the tracks of these partitions (revoked)."""
        gone = set(partitions) & self._partitions
        if not gone:
            return
        self._partitions -= gone
        for track in [track for track, row in self._rows.items() if row[PARTITION] in gone]:
            del self._rows[track]

    def _older_than_held(self, track: str, partition: int, updated_ms: int | None) -> bool:
        """Whether a recovered state is older than the one held for the track from another partition: the
        partition the track's events left (partitions added), read after the one they moved to."""
        held = self._rows.get(track)
        return (held is not None and held[PARTITION] != partition and updated_ms is not None
                and updated_ms < held[UPDATED])

    async def recover(self, partitions: Iterable[int]) -> int:
        """Read the changelog partitions from the beginning to their current end; returns records read.

        A record whose key or value cannot be decoded is skipped and counted in the log line (it cannot be
        a state this worker wrote), never the end of the recovery."""
        wanted = sorted(set(partitions) - self._partitions)
        if not wanted:
            return 0
        started = time.perf_counter()
        tps = [TopicPartition(self.topic, p) for p in wanted]
        consumer = self.open_reader()
        await consumer.start()
        read = bad = legacy = 0
        track_of, decode, put = state_codec.track_of, state_codec.state, self.put
        try:
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            ends = await consumer.end_offsets(tps)
            self._partitions.update(wanted)
            todo = {tp for tp in tps if ends[tp] > await consumer.position(tp)}
            while todo:
                batches = await consumer.getmany(*todo, timeout_ms=1000)
                for tp, messages in batches.items():
                    partition, end = tp.partition, ends[tp]
                    for message in messages:
                        if message.offset >= end:
                            break
                        read += 1
                        value = message.value
                        try:
                            track = track_of(message.key)
                            state = None if value is None else decode(value)
                        except (ValueError, TypeError):
                            bad += 1
                            continue
                        if state is None:  # tombstone
                            self._remove(track, partition)
                            continue
                        if value[0] != state_codec.VERSION:
                            legacy += 1
                        # last updated when the state was written (the record's timestamp, ms)
                        stamp = getattr(message, "timestamp", None)
                        updated = stamp if type(stamp) is int and stamp > 0 else None
                        if self._older_than_held(track, partition, updated):
                            continue
                        put(partition, track, state, updated)
                for tp in list(todo):
                    if await consumer.position(tp) >= ends[tp]:
                        todo.discard(tp)
        finally:
            await consumer.stop()
        log.info("state recovered topic=%s partitions=%s records=%d tracks=%d json_records=%d undecodable=%d "
                 "seconds=%.3f", self.topic, wanted, read, len(self), legacy, bad, time.perf_counter() - started)
        return read
