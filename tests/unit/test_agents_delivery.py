"""The delivery rules of agents.worker.stream.SourceStream and agents.worker.track_table.TrackTable, in-process.

The stream takes its consumer and producer from outside, so these tests drive it with small fakes of
the part of aiokafka's interface it calls, and check its own rules: per batch, sinks and dead letters
before the changelog before the commit; commits in batch order; nothing committed after a failed
batch; a refused commit is not fatal; recovery reads the changelog to its end. They do not claim to
test Kafka: tests/integration/test_agents_integration.py does that (SIGKILL, rebalance, outages) on the real broker.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError

from agents.core import state_codec
from agents.core.geofence import Geofences
from agents.core.motion import State
from agents.core.pipeline import Pipeline
from agents.worker.stream import SourceStream, StreamTopics
from agents.worker.track_table import TrackTable
from geoiot.config import DEFAULT_GEOFENCES
from geoiot.schema import load_preset

key = state_codec.key
TOPICS = StreamTopics(source="src", dlq="dlq", alerts="alerts", changelog="app-tracks-changelog", latest="live")
PRESET = load_preset("taxi")


@dataclass
class Record:
    """The part of aiokafka's ``ConsumerRecord`` the stream reads."""

    key: bytes | None
    value: bytes | None
    offset: int
    topic: str = TOPICS.source
    partition: int = 0
    timestamp: int | None = None  # ms, as the broker stamps a record


def position(track: str, n: int) -> bytes:
    return orjson.dumps({"taxiId": track, "observationTime": 1_357_000_000_000 + n * 1000,
                         "longitude": -73.97 + n * 1e-4, "latitude": 40.76})


class FakeConsumer:
    """Serves each prepared batch from ``getmany`` followed by an empty fetch (so each is a batch of the
    stream), then nothing; records commits in order."""

    def __init__(self, log: list[Any], batches: list[dict[int, list[Record]]], partitions: tuple[int, ...] = (0,),
                 refuse_commits: bool = False) -> None:
        self.log, self.batches, self.partitions = log, list(batches), partitions
        self.refuse_commits = refuse_commits
        self.listener: Any = None
        self.timeouts: list[int] = []
        self._between = False

    def subscribe(self, topics: list[str], listener: Any) -> None:
        self.listener = listener

    async def start(self) -> None:
        await self.listener.on_partitions_assigned([TopicPartition(TOPICS.source, p) for p in self.partitions])

    async def stop(self) -> None:
        self.log.append(("consumer_stopped",))

    def assignment(self) -> set[TopicPartition]:
        return {TopicPartition(TOPICS.source, p) for p in self.partitions}

    async def committed(self, tp: TopicPartition) -> int | None:
        return None

    def highwater(self, tp: TopicPartition) -> int | None:
        return None

    async def getmany(self, timeout_ms: int = 0, max_records: int | None = None) -> dict[TopicPartition, list[Record]]:
        self.timeouts.append(timeout_ms)
        self._between = not self._between
        if self.batches and self._between:
            served = self.batches.pop(0)
            assert all(r.partition == p for p, records in served.items() for r in records), "a record's partition"
            return {TopicPartition(TOPICS.source, p): records for p, records in served.items()}
        await asyncio.sleep(timeout_ms / 1000)
        return {}

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        if self.refuse_commits:
            raise CommitFailedError("rebalanced")
        self.log.append(("commit", {tp.partition: o for tp, o in offsets.items()}))


class FakeProducer:
    """A transactional producer: acknowledges every send; ``hold[topic]`` (an Event) delays the acknowledgements
    of that topic; logs ``("begin",)``, ``("commit", offsets)`` (the offsets sent to the transaction, for the
    group) and ``("abort",)``; ``fail_commit`` holds the numbers of the transactions whose commit fails; a
    transaction gate (``hold["commit"]``) delays commits."""

    def __init__(self, log: list[Any], fail_commit: set[int] = frozenset()) -> None:
        self.log = log
        self.sent: dict[str, list[tuple[bytes | None, bytes, int | None]]] = defaultdict(list)
        self.hold: dict[str, asyncio.Event] = {}
        self.fail_commit = fail_commit
        self.open = False
        self.transactions = 0
        self.offsets: dict[int, int] | None = None
        self.groups: list[str] = []

    async def begin_transaction(self) -> None:
        assert not self.open, "one transaction at a time"
        self.open, self.offsets = True, None
        self.transactions += 1
        self.log.append(("begin",))

    async def send_offsets_to_transaction(self, offsets: dict[TopicPartition, int], group_id: str) -> None:
        assert self.open
        self.offsets = {tp.partition: o for tp, o in offsets.items()}
        self.groups.append(group_id)

    async def commit_transaction(self) -> None:
        assert self.open and self.offsets is not None, "offsets are part of every transaction"
        if "commit" in self.hold:
            await self.hold["commit"].wait()
        if self.transactions in self.fail_commit:
            raise RuntimeError(f"transaction {self.transactions} failed")
        self.open = False
        self.log.append(("commit", self.offsets))

    async def abort_transaction(self) -> None:
        self.open = False
        self.log.append(("abort",))

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def send(self, topic: str, value: bytes, key: bytes | None = None, partition: int | None = None) -> Any:
        assert self.open, "every record is sent in a transaction"
        self.sent[topic].append((key, value, partition))

        async def ack() -> None:
            if topic in self.hold:
                await self.hold[topic].wait()
            self.log.append((topic, len(self.sent[topic])))

        return asyncio.ensure_future(ack())


class FakeRecordBatch:
    """aiokafka's BatchBuilder as the stream uses it: ``append`` gives None once ``limit`` records are in."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.records: list[tuple[bytes, bytes | None, Any]] = []

    def append(self, *, key: bytes, value: bytes | None, timestamp: Any) -> Any:
        if len(self.records) >= self.limit:
            return None
        self.records.append((key, value, timestamp))
        return object()


class BatchingProducer(FakeProducer):
    """A FakeProducer that also takes record batches (``create_batch``/``send_batch``), as aiokafka's does;
    each acknowledged batch is logged as ``(topic, partition, records)``."""

    def __init__(self, log: list[Any], limit: int = 2) -> None:
        super().__init__(log)
        self.limit = limit
        self.batches: list[tuple[str, int, int]] = []

    def create_batch(self) -> FakeRecordBatch:
        return FakeRecordBatch(self.limit)

    async def send_batch(self, batch: FakeRecordBatch, topic: str, *, partition: int) -> Any:
        assert self.open, "every record is sent in a transaction"
        for key, value, timestamp in batch.records:
            assert timestamp is None  # the producer's clock, as send() would stamp it (idle recovery reads it)
            self.sent[topic].append((key, value, partition))
        self.batches.append((topic, partition, len(batch.records)))

        async def ack() -> None:
            if topic in self.hold:
                await self.hold[topic].wait()
            self.log.append((topic, partition, len(batch.records)))

        return asyncio.ensure_future(ack())


class FakeSink:
    """Stores actions; fails the write of the batches whose number is in ``fail``; ``gates`` hold writes."""

    name = "fake"
    keeps_latest = False

    def __init__(self, log: list[Any], fail: set[int] = frozenset(), gates: dict[int, asyncio.Event] | None = None):
        self.log, self.fail, self.gates = log, fail, gates or {}
        self.writes = 0
        self.stored: list[dict[str, Any]] = []

    async def write(self, actions: list[dict[str, Any]]) -> list[Any]:
        self.writes += 1
        n = self.writes
        if n in self.gates:
            await self.gates[n].wait()
        if n in self.fail:
            raise RuntimeError(f"write {n} failed")
        self.stored.extend(actions)
        self.log.append(("sink", n, len(actions)))
        return []


class FakeReader:
    """A changelog consumer for TrackTable.recover: serves ``records[p]`` then reports its end."""

    def __init__(self, records: dict[int, list[Record]]) -> None:
        self.records = records
        self.positions: dict[TopicPartition, int] = {}
        self.stopped = False

    async def start(self) -> None: ...

    async def stop(self) -> None:
        self.stopped = True

    def assign(self, tps: list[TopicPartition]) -> None:
        self.positions = {tp: 0 for tp in tps}

    async def seek_to_beginning(self, *tps: TopicPartition) -> None:
        for tp in tps:
            self.positions[tp] = 0

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: len(self.records.get(tp.partition, [])) for tp in tps}

    async def position(self, tp: TopicPartition) -> int:
        return self.positions[tp]

    async def getmany(self, *tps: TopicPartition, timeout_ms: int = 0) -> dict[TopicPartition, list[Record]]:
        out = {}
        order = list(self.records)
        for tp in sorted(tps, key=lambda tp: order.index(tp.partition) if tp.partition in order else len(order)):
            pending = self.records.get(tp.partition, [])[self.positions[tp]:]
            if pending:
                out[tp] = pending[:2]  # a few at a time, as a fetch would
                self.positions[tp] += len(out[tp])
        return out


def stream(consumer: FakeConsumer, producer: FakeProducer, sinks: list[FakeSink], reader: FakeReader | None = None,
           bulk_within: float = 0.01) -> SourceStream:
    table = TrackTable(TOPICS.changelog, lambda: reader or FakeReader({}))
    return SourceStream(consumer=consumer, producer=producer, table=table, topics=TOPICS,
                        pipeline=Pipeline(PRESET, Geofences.load(DEFAULT_GEOFENCES), "obs"),
                        sinks=sinks, bulk_size=100, bulk_within=bulk_within, group="app")


async def run_until(s: SourceStream, done: Any, timeout: float = 10.0) -> None:
    """Run the stream until ``done()`` holds, then stop it (which drains and commits what is in flight)."""
    await s.start()
    task = asyncio.ensure_future(s.run())
    try:
        async with asyncio.timeout(timeout):
            while not done() and not task.done():
                await asyncio.sleep(0.005)
    finally:
        await s.stop()
        await asyncio.gather(task, return_exceptions=True)
    if task.done() and task.exception() is not None:
        raise task.exception()


def batch(offset: int, *tracks: str) -> dict[int, list[Record]]:
    return {0: [Record(t.encode(), position(t, offset + i), offset + i) for i, t in enumerate(tracks)]}


async def test_sink_writes_then_changelog_then_commit_for_every_batch() -> None:
    log: list[Any] = []
    consumer = FakeConsumer(log, [batch(0, "a", "b"), batch(2, "a", "c", "d")])
    producer, sink = FakeProducer(log), FakeSink(log)
    s = stream(consumer, producer, [sink])
    await run_until(s, lambda: sum(1 for e in log if e[0] == "commit") == 2)
    # State writes (one per track) and commits strictly alternate by batch: a batch's states are
    # written after the previous batch committed, and it commits after its states were acknowledged.
    steps = [e[0] for e in log if e[0] in (TOPICS.changelog, "commit")]
    assert steps == [TOPICS.changelog] * 2 + ["commit"] + [TOPICS.changelog] * 3 + ["commit"]
    # Each batch was stored in the sink before its first state write (the next batch may be stored earlier:
    # pipelining).
    changelog_at = [i for i, e in enumerate(log) if e[0] == TOPICS.changelog]
    assert log.index(("sink", 1, 2)) < changelog_at[0] and log.index(("sink", 2, 3)) < changelog_at[2]
    assert [e[1] for e in log if e[0] == "commit"] == [{0: 2}, {0: 5}]
    assert s.committed == {0: 5}
    assert len(sink.stored) == 5
    # Changelog records go to the source partition of their events, keyed by the track.
    assert {orjson.loads(k) for k, _, p in producer.sent[TOPICS.changelog] if p == 0} == {"a", "b", "c", "d"}


async def test_commits_stay_in_batch_order_when_a_later_batch_is_stored_first() -> None:
    log: list[Any] = []
    first_write = asyncio.Event()
    consumer = FakeConsumer(log, [batch(0, "a"), batch(1, "b")])
    sink = FakeSink(log, gates={1: first_write})
    s = stream(consumer, FakeProducer(log), [sink])

    async def release_when_second_stored() -> None:
        while not any(e[:2] == ("sink", 2) for e in log):
            await asyncio.sleep(0.005)
        assert not any(e[0] == "commit" for e in log)  # batch 2 stored, but it waits for batch 1
        first_write.set()

    releaser = asyncio.ensure_future(release_when_second_stored())
    await run_until(s, lambda: sum(1 for e in log if e[0] == "commit") == 2)
    await releaser
    assert [e[1] for e in log if e[0] == "commit"] == [{0: 1}, {0: 2}]
    assert log.index(("sink", 2, 1)) < log.index(("sink", 1, 1))


async def test_a_failed_batch_commits_neither_itself_nor_any_later_batch() -> None:
    log: list[Any] = []
    consumer = FakeConsumer(log, [batch(0, "a"), batch(1, "b"), batch(2, "c")])
    s = stream(consumer, FakeProducer(log), [FakeSink(log, fail={1})])
    with pytest.raises(RuntimeError, match="write 1 failed"):
        await run_until(s, lambda: False, timeout=5.0)
    assert not [e for e in log if e[0] == "commit"]
    assert s.committed == {0: 0}
    assert not [e for e in log if e[0] == TOPICS.changelog]  # states are written only for stored batches


async def test_a_failed_transaction_is_aborted_and_commits_neither_its_batch_nor_any_later_one() -> None:
    log: list[Any] = []
    consumer = FakeConsumer(log, [batch(0, "a"), batch(1, "b"), batch(2, "c")])
    producer = FakeProducer(log, fail_commit={1})
    s = stream(consumer, producer, [FakeSink(log)])
    with pytest.raises(RuntimeError, match="transaction 1 failed"):
        await run_until(s, lambda: False, timeout=5.0)
    assert ("abort",) in log and not [e for e in log if e[0] == "commit"]
    assert producer.transactions == 1  # the later batches did not begin one
    assert s.committed == {0: 0}


async def test_an_idle_stream_waits_for_records_instead_of_spinning() -> None:
    log: list[Any] = []
    consumer = FakeConsumer(log, [])
    s = stream(consumer, FakeProducer(log), [FakeSink(log)], bulk_within=0.05)
    await s.start()
    task = asyncio.ensure_future(s.run())
    await asyncio.sleep(0.3)
    await s.stop()
    await asyncio.gather(task, return_exceptions=True)
    assert consumer.timeouts and all(t > 0 for t in consumer.timeouts[:-1])


async def test_recovery_reads_the_changelog_to_its_end_and_applies_tombstones() -> None:
    state = State(1, 0.0, 0.0, ("f",))
    value = state_codec.value(state)
    reader = FakeReader({0: [Record(key("a"), value, 0),
                             Record(key("b"), value, 1),
                             Record(key("a"), None, 2),
                             Record(key("c"), value, 3)],
                         1: [Record(key("d"), value, 0)]})
    table = TrackTable(TOPICS.changelog, lambda: reader)
    assert await table.recover([0, 1]) == 5
    assert reader.stopped
    assert table.get("a") is None and table.get("b")[:4] == state and table.get("d")[:4] == state
    assert len(table) == 3 and table.partitions == {0, 1}
    assert await table.recover([0]) == 0  # partitions already held are not read again
    table.drop([0])
    assert table.get("b") is None and table.get("d")[:4] == state


async def test_recovery_reads_the_json_format_written_before_and_skips_what_it_cannot_decode() -> None:
    """Upgrading a running worker: the changelog's old JSON states (with their history) recover to the same
    states as the new format; an undecodable record is skipped, not the end of the recovery."""
    hist = [[t, -73.9 + t * 1e-9, 40.7] for t in range(1, 33)]
    old = {"t": 32, "lon": -73.9 + 32e-9, "lat": 40.7, "fences": ["jfk", "midtown"], "hist": hist}
    want = State(32, -73.9 + 32e-9, 40.7, ("jfk", "midtown"))
    reader = FakeReader({0: [Record(key("a"), orjson.dumps(old), 0), Record(key("b"), b"\x07junk", 1),
                             Record(key("c"), state_codec.value(want), 2), Record(b"not json", state_codec.value(want), 3)]})
    table = TrackTable(TOPICS.changelog, lambda: reader)
    assert await table.recover([0]) == 4
    assert table.get("a")[:4] == want == table.get("c")[:4] and len(table) == 2
    assert table.get("a")[3] is table.get("c")[3]  # one shared fence set


class RefusingLatestSink(FakeSink):
    """Keeps latest positions and refuses for good the latest write of track ``a`` and the observation at offset 1."""

    name = "refusing"
    keeps_latest = True

    async def write(self, actions: list[dict[str, Any]]) -> list[Any]:
        await super().write(actions)
        return [(a, "elasticsearch refused the document: 400 mapper_parsing_exception: no")
                for a in actions if (a["_index"] == "obs_latest" and a["_id"] == "a") or a["_id"].endswith(":1357000001000")]


async def test_latest_writes_go_only_to_sinks_keeping_them_and_their_refusal_is_no_dead_letter() -> None:
    from agents.worker import metrics as m

    log: list[Any] = []
    consumer = FakeConsumer(log, [batch(0, "a", "b", "a")])
    producer, plain, keeping = FakeProducer(log), FakeSink(log), RefusingLatestSink(log)
    refused_before = m.LATEST_REFUSED._value.get()
    indexed_before = m.INDEXED.labels("refusing")._value.get()
    s = stream(consumer, producer, [plain, keeping])
    await run_until(s, lambda: any(e[0] == "commit" for e in log))
    assert [a["_index"] for a in plain.stored] == ["obs-2013.01.01"] * 3
    latest = [a for a in keeping.stored if a["_index"] == "obs_latest"]
    assert sorted((a["_id"], a["version"]) for a in latest) == [("a", 1_357_000_002_000), ("b", 1_357_000_001_000)]
    # only the refused observation (offset 1, track b) is a dead letter; the refused latest write is counted
    assert [orjson.loads(v)["offset"] for _, v, _ in producer.sent[TOPICS.dlq]] == [1]
    assert m.LATEST_REFUSED._value.get() - refused_before == 1
    assert m.INDEXED.labels("refusing")._value.get() - indexed_before == 2
    assert s.committed == {0: 3}
    # the live topic holds only stored documents: b's only observation was refused, so b has no live record
    assert [(k, orjson.loads(v)["observationTime"]) for k, v, _ in producer.sent[TOPICS.latest]] == [
        (b"a", 1_357_000_002_000)]


async def test_changelog_record_batches_go_per_partition_and_the_commit_waits_for_all_of_them() -> None:
    log: list[Any] = []
    records = {0: [Record(t.encode(), position(t, i), i) for i, t in enumerate("abc")],
               1: [Record(t.encode(), position(t, i), i, partition=1) for i, t in enumerate("de")]}
    consumer = FakeConsumer(log, [records], partitions=(0, 1))
    producer, sink = BatchingProducer(log, limit=2), FakeSink(log)
    producer.hold[TOPICS.changelog] = held = asyncio.Event()
    s = stream(consumer, producer, [sink])
    await s.start()
    task = asyncio.ensure_future(s.run())
    try:
        async with asyncio.timeout(10):
            while len(producer.batches) < 3:
                await asyncio.sleep(0.005)
            await asyncio.sleep(0.05)
            assert not [e for e in log if e[0] == "commit"]  # states sent, not acknowledged: nothing committed
            held.set()
            while not [e for e in log if e[0] == "commit"]:
                await asyncio.sleep(0.005)
    finally:
        await s.stop()
        await asyncio.gather(task, return_exceptions=True)
    # Partition 0's three states in two batches (the first full at two), partition 1's two in one.
    assert sorted(b for b in producer.batches if b[0] == TOPICS.changelog) == [
        (TOPICS.changelog, 0, 1), (TOPICS.changelog, 0, 2), (TOPICS.changelog, 1, 2)]
    assert {(orjson.loads(k), p) for k, _, p in producer.sent[TOPICS.changelog]} == {
        ("a", 0), ("b", 0), ("c", 0), ("d", 1), ("e", 1)}
    for k, value, _ in producer.sent[TOPICS.changelog]:  # the same compact state a per-record send wrote
        assert state_codec.state(value) == s.table.get(orjson.loads(k))[:4]
    sink_at = log.index(("sink", 1, 5))
    acked = [i for i, e in enumerate(log) if e[0] == TOPICS.changelog]
    commit_at = next(i for i, e in enumerate(log) if e[0] == "commit")
    assert sink_at < min(acked) and max(acked) < commit_at
    assert log[commit_at][1] == {0: 3, 1: 2}


async def test_a_track_whose_events_move_partition_leaves_a_tombstone_that_recovery_applies_to_that_partition_only(
        ) -> None:
    """Partitions added to the source topic move a track's events: its state follows on this worker, its old
    changelog partition gets a tombstone, and recovering both partitions keeps the newer state whatever the
    order in which the two partitions are read."""
    log: list[Any] = []
    moved = {1: [Record(b"a", position("a", 1), 0, partition=1)]}
    consumer = FakeConsumer(log, [batch(0, "a"), moved], partitions=(0, 1))
    producer = FakeProducer(log)
    s = stream(consumer, producer, [FakeSink(log)])
    await run_until(s, lambda: sum(1 for e in log if e[0] == "commit") == 2)
    sent = [(orjson.loads(k), v is None, p) for k, v, p in producer.sent[TOPICS.changelog]]
    assert sent == [("a", False, 0), ("a", True, 0), ("a", False, 1)]
    assert s.table.get("a")[0] == orjson.loads(position("a", 1))["observationTime"]
    old, new = State(1, 0.0, 0.0, ()), State(2, 0.0, 0.0, ())
    stamp = 1_700_000_000_000
    for first in (0, 1):  # which partition a fetch hands over first
        # Partition 1 is read before partition 0's tombstone (two records per fetch and partition).
        records = {0: [Record(key("a"), state_codec.value(old), 0, timestamp=stamp),
                       Record(key("b"), state_codec.value(old), 1, timestamp=stamp),
                       Record(key("a"), None, 2, timestamp=stamp + 5)],
                   1: [Record(key("a"), state_codec.value(new), 0, timestamp=stamp + 5)]}
        reader = FakeReader(dict(sorted(records.items(), key=lambda item: item[0] != first)))
        table = TrackTable(TOPICS.changelog, lambda: reader)
        await table.recover([0, 1])
        assert table.get("a")[:4] == new and table.get("b")[:4] == old, first


class LaggingConsumer(FakeConsumer):
    """A consumer whose partitions end at offset 10."""

    def highwater(self, tp: TopicPartition) -> int | None:
        return 10


class GatedReader(FakeReader):
    """A changelog reader whose recovery waits for ``gate``."""

    def __init__(self, log: list[Any], gate: asyncio.Event) -> None:
        super().__init__({})
        self.log, self.gate = log, gate

    async def start(self) -> None:
        self.log.append(("reader_started",))
        await self.gate.wait()


async def test_problems_say_recovering_then_stalled_while_behind_without_commits_and_clear_with_progress() -> None:
    """The health rule of SourceStream.problems, on a fake clock: waiting for the group, recovering (after the
    changelog was grown to the assigned partitions), stalled once behind without a commit for longer than the
    stall timeout, and healthy again when nothing is behind."""
    log: list[Any] = []
    now = [100.0]
    gate = asyncio.Event()
    consumer = LaggingConsumer(log, [], partitions=(0, 2))
    table = TrackTable(TOPICS.changelog, lambda: GatedReader(log, gate))

    async def grow(partitions: int) -> None:
        log.append(("grow", partitions))

    s = SourceStream(consumer=consumer, producer=FakeProducer(log), table=table, topics=TOPICS,
                     pipeline=Pipeline(PRESET, Geofences.load(DEFAULT_GEOFENCES), "obs"), sinks=[FakeSink(log)],
                     bulk_size=100, bulk_within=0.01, grow_changelog=grow, stall_timeout=30.0, clock=lambda: now[0])
    assert s.problems() == ["waiting for partitions from the consumer group"]
    starting = asyncio.ensure_future(s.start())
    while ("reader_started",) not in log:
        await asyncio.sleep(0.005)
    now[0] += 7
    assert s.problems() == ["recovering track state of partitions [0, 2] for 7s"]
    assert log.index(("grow", 3)) < log.index(("reader_started",))  # the changelog partition exists first
    gate.set()
    await starting
    assert s.problems() == []  # behind by 20, but the assignment just now is progress
    now[0] += 31
    assert s.problems() == ["stalled: 20 messages behind and nothing committed for 31s"]
    consumer.highwater = lambda tp: None  # nothing known to be behind: no stall
    assert s.problems() == []
    consumer.highwater = lambda tp: 10
    now[0] += 29
    assert s.problems() == []  # the lag of zero above counted as progress
    await s.on_revoked([0, 2])
    now[0] += 4
    assert s.problems() == ["rebalancing for 4s"]
    await s.stop()


def between(log: list[Any], n: int) -> list[Any]:
    """The log entries of the ``n``-th transaction (1-based), from its begin to its commit."""
    begins = [i for i, e in enumerate(log) if e == ("begin",)]
    start = begins[n - 1]
    end = next(i for i, e in enumerate(log) if i > start and e[0] in ("commit", "abort"))
    return log[start:end + 1]


async def test_one_transaction_per_batch_holds_its_dead_letters_states_live_records_and_offsets(caplog: Any) -> None:
    """Everything a batch publishes, and its offsets for the group, is acknowledged inside one transaction,
    which begins only after the batch was stored; the live records are each track's newest document, keyed by
    the track (geoiot.live), at the partition of its events."""
    caplog.set_level("INFO", logger="agents")
    log: list[Any] = []
    records = {0: [Record(b"a", position("a", 0), 0), Record(b"x", b"not json", 1), Record(b"a", position("a", 2), 2)],
               1: [Record(b"b", position("b", 1), 0, partition=1)]}
    consumer = FakeConsumer(log, [records], partitions=(0, 1))
    producer, sink = FakeProducer(log), FakeSink(log)
    s = stream(consumer, producer, [sink])
    await run_until(s, lambda: any(e[0] == "commit" for e in log))
    inside = between(log, 1)
    assert log.index(("sink", 1, 3)) < log.index(("begin",))
    assert {e[0] for e in inside[1:-1]} == {TOPICS.dlq, TOPICS.changelog, TOPICS.latest}
    assert inside[-1] == ("commit", {0: 3, 1: 1}) and producer.groups == ["app"]
    live = {(live_track(k), p): orjson.loads(v) for k, v, p in producer.sent[TOPICS.latest]}
    assert set(live) == {("a", 0), ("b", 1)}
    assert live[("a", 0)]["observationTime"] == orjson.loads(position("a", 2))["observationTime"]
    stored = {a["_id"]: a["_source"] for a in sink.stored}
    assert live[("b", 1)] == stored[f"b:{orjson.loads(position('b', 1))['observationTime']}"]
    [line] = [r.getMessage() for r in caplog.records if r.msg.startswith("batch events=")]  # its stages, formatted
    assert line.startswith("batch events=4 indexed=3 invalid=1") and "transaction=" in line


def live_track(key: bytes) -> str:
    from geoiot import live
    return live.track_of(key)


async def test_the_next_batch_is_stored_while_the_previous_transaction_is_still_open() -> None:
    """The store is kept busy: batch 2's sink write does not wait for batch 1's transaction; batch 2's
    transaction begins only after batch 1's committed."""
    log: list[Any] = []
    consumer = FakeConsumer(log, [batch(0, "a"), batch(1, "b")])
    producer = FakeProducer(log)
    producer.hold["commit"] = release = asyncio.Event()
    s = stream(consumer, producer, [FakeSink(log)])

    async def release_when_second_stored() -> None:
        while not any(e[:2] == ("sink", 2) for e in log):
            await asyncio.sleep(0.005)
        assert producer.open and log.count(("begin",)) == 1 and not [e for e in log if e[0] == "commit"]
        release.set()

    releaser = asyncio.ensure_future(release_when_second_stored())
    await run_until(s, lambda: sum(1 for e in log if e[0] == "commit") == 2)
    await releaser
    assert [e for e in log if e[0] in ("begin", "commit")] == [("begin",), ("commit", {0: 1}), ("begin",),
                                                               ("commit", {0: 2})]


async def test_a_write_slot_frees_when_its_writes_end_so_the_next_batch_writes_while_one_commits() -> None:
    """With two batches in flight, batch 3 writes while batch 1's transaction is still open (batch 1 no longer
    writes, batch 2 has written and waits for batch 1's commit); the commits stay in order."""
    log: list[Any] = []
    consumer = FakeConsumer(log, [batch(0, "a"), batch(1, "b"), batch(2, "c")])
    producer = FakeProducer(log)
    producer.hold["commit"] = release = asyncio.Event()
    s = stream(consumer, producer, [FakeSink(log)])

    seen: list[bool] = []

    async def release_when_third_stored() -> None:
        try:
            async with asyncio.timeout(3):
                while not any(e[:2] == ("sink", 3) for e in log):
                    await asyncio.sleep(0.005)
            seen.append(producer.open and log.count(("begin",)) == 1 and not [e for e in log if e[0] == "commit"])
        except TimeoutError:
            seen.append(False)
        release.set()  # in any case, so the stream can drain

    releaser = asyncio.ensure_future(release_when_third_stored())
    await run_until(s, lambda: sum(1 for e in log if e[0] == "commit") == 3)
    await releaser
    assert seen == [True]  # batch 3 was written while batch 1's transaction was open
    assert [e[1] for e in log if e[0] == "commit"] == [{0: 1}, {0: 2}, {0: 3}]


async def test_no_more_batches_write_at_once_than_the_setting() -> None:
    """Batch 3, fetched and processed while batches 1 and 2 write, starts its write only when one of them ends."""
    log: list[Any] = []
    consumer = FakeConsumer(log, [batch(0, "a"), batch(1, "b"), batch(2, "c")])
    first, second = asyncio.Event(), asyncio.Event()
    sink = FakeSink(log, gates={1: first, 2: second})
    s = stream(consumer, FakeProducer(log), [sink])

    async def check_then_release() -> None:
        try:
            async with asyncio.timeout(3):
                while consumer.batches or sink.writes < 2:  # batch 3 fetched, both writes under way
                    await asyncio.sleep(0.005)
            await asyncio.sleep(0.05)
            assert sink.writes == 2 and s.seq == 3  # batch 3 is processed, its write waits for a slot
            second.set()
            async with asyncio.timeout(3):
                while sink.writes < 3:
                    await asyncio.sleep(0.005)
            assert not [e for e in log if e[0] == "commit"]  # batch 1 still writing: nothing commits before it
        finally:
            first.set()
            second.set()

    checker = asyncio.ensure_future(check_then_release())
    await run_until(s, lambda: sum(1 for e in log if e[0] == "commit") == 3)
    await checker
    assert [e[1] for e in log if e[0] == "commit"] == [{0: 1}, {0: 2}, {0: 3}]


async def test_an_idle_evicted_track_gets_a_tombstone_in_the_changelog_and_the_live_topic() -> None:
    log: list[Any] = []
    now = [1_000_000.0]
    consumer = FakeConsumer(log, [batch(0, "a"), {1: [Record(b"b", position("b", 1), 0, partition=1)]}],
                            partitions=(0, 1))

    class AgingProducer(FakeProducer):
        async def commit_transaction(self) -> None:
            await super().commit_transaction()
            now[0] += 120  # track a idles past the timeout before batch 2's transaction

    producer = AgingProducer(log)
    table = TrackTable(TOPICS.changelog, lambda: FakeReader({}), idle_timeout=60, clock=lambda: now[0])

    s = SourceStream(consumer=consumer, producer=producer, table=table, topics=TOPICS,
                     pipeline=Pipeline(PRESET, Geofences.load(DEFAULT_GEOFENCES), "obs"), sinks=[FakeSink(log)],
                     bulk_size=100, bulk_within=0.01, group="app")
    await run_until(s, lambda: sum(1 for e in log if e[0] == "commit") == 2)
    live = [(live_track(k), v is None, p) for k, v, p in producer.sent[TOPICS.latest]]
    assert live == [("a", False, 0), ("b", False, 1), ("a", True, 0)]
    assert (orjson.dumps("a"), None, 0) in producer.sent[TOPICS.changelog]
