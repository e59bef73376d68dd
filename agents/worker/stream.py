"""The agents' stream: source partitions -> batches -> pipeline -> sinks, with offsets committed after storage.

Faust's own stream delivery is not used for the source topic: it hands events over one at a time, and a
restarted worker could lose events fetched during recovery
(``tests/integration/test_agents_integration.py::test_sigkill_and_restart_loses_and_duplicates_nothing``).
So this module consumes the source topic with aiokafka in the consumer group ``IOT_APP_ID`` and
commits offsets itself; it runs as a Faust service inside ``faust -A agents.app worker``. The
consumer, the producer and the changelog reader are passed in (:meth:`SourceStream.connect` makes the
aiokafka ones), so the rules below are also checked in-process (``tests/unit/test_agents_delivery.py``).

Guarantees (effectively once: idempotent documents in Elasticsearch, one Kafka transaction per batch):

* Per batch, in this order: sink writes (Elasticsearch, retried while it is down) awaited -> after the previous
  batch committed, one Kafka transaction holding the batch's dead letters, alerts, track states (changelog),
  live records (IOT_LATEST_TOPIC, :mod:`geoiot.live`) and its consumer offsets (``send_offsets_to_transaction``
  for the group IOT_APP_ID) -> committed. A crash anywhere re-delivers every event of the batches not committed;
  their documents have a deterministic ``_id``, so re-delivery overwrites them with the same bytes; and the
  changelog is read ``read_committed`` (:func:`agents.worker.track_table.changelog_reader`), so a re-delivered
  batch meets the track states as of its start and recomputes the same motion, documents and alerts.
* Readers of the alerts, dead-letter and live topics must set ``isolation_level="read_committed"`` to see each
  alert, dead letter and live record once (a killed worker's aborted transaction leaves its records in the log,
  marked aborted); a ``read_uncommitted`` reader sees at least once, as before. The webhook is called after the
  commit, so never for an alert that was rolled back (a crash right after the commit skips the call, as a crash
  skips any webhook call in flight).
* Transactional id: IOT_TRANSACTIONAL_ID, else ``<IOT_APP_ID>-<host>-<web port>`` (:func:`agents.app.transactional_id`),
  so a worker restarted in the same place fences its predecessor: the broker aborts the old open transaction at
  once and refuses the old producer's writes. Limits: aiokafka's ``send_offsets_to_transaction`` takes only the
  group id (no generation, KIP-447), so a worker that lost its partitions in a rebalance but still runs (a
  zombie, e.g. after a long pause) is not fenced by the new owner; its transaction can still commit offsets and
  states for partitions it no longer owns. Today's guard against that is the rebalance itself: the batches in
  flight are completed before the revoke returns. A worker that died with a transaction open and is not
  restarted under the same id holds back read_committed readers of its partitions (the new owner's recovery reads
  up to the last stable offset and misses nothing committed) until the broker aborts it, after
  :data:`TRANSACTION_TIMEOUT_MS`.
* A failed transaction is aborted and fails the batch like a failed write: the worker stops before any later
  batch commits, and the group re-delivers.
* Latest positions: sinks that keep them (Elasticsearch with IOT_ES_LATEST) get the batch's latest-position
  writes with its observations, and write them once those are stored (a latest position is a stored observation);
  a stale one (409) is counted by the sink, one refused for good is counted and logged but not dead-lettered (the
  observation of the same event is stored or dead-lettered itself). The live topic gets the same rule: a track's
  newest stored document (:func:`agents.store.sink.stored_latest`); an idle-evicted track gets a tombstone there
  as in the changelog.
* Pipelining (the store kept busy): while batches are being written the next one is fetched and processed
  against the states of the batches still in flight, so its Elasticsearch write starts the moment a write slot
  frees: at most ``IOT_BATCHES_IN_FLIGHT`` batches write at once, and a batch's slot frees when its writes end,
  before its transaction (so one batch more may be committing meanwhile). Transactions happen strictly in
  batch order, one open at a time, and a failed batch stops the worker before any later batch commits.
* Rebalance: before partitions are revoked, the batches in flight are completed and committed; before
  newly assigned partitions are consumed, their track states are recovered from the changelog.
* Partitions added to the source topic: the consumer refreshes its metadata at least every
  ``IOT_METADATA_MAX_AGE`` seconds, so the group rebalances within that bound; a worker assigned a
  partition the changelog lacks grows the changelog first (new partitions empty, see :mod:`agents.worker.track_table`),
  so recovery never asks for a changelog partition that does not exist.

Health (:meth:`SourceStream.problems`, served by ``/healthz``): not healthy until the first assignment is
recovered, while a rebalance or a recovery is under way, and when the assigned partitions have a lag but
nothing was committed for ``IOT_STALL_TIMEOUT`` seconds (progress is a commit, or a lag of zero).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition

from agents.core import state_codec
from agents.core.pipeline import BatchResult, Message, Pipeline
from agents.store.sink import Sink, stored_latest
from agents.webhook import Webhook
from agents.worker import metrics as m
from agents.worker.track_table import TrackTable, changelog_reader
from geoiot import live
from geoiot import topics as kafka_topics
from geoiot.config import DEFAULT_BATCHES_IN_FLIGHT
from geoiot.deadletter import dead_letter

log = logging.getLogger("agents")


@dataclass
class StreamTopics:
    source: str
    dlq: str
    alerts: str
    changelog: str
    latest: str | None = None  # the live topic (geoiot.live); None: not written


@dataclass
class Batch:
    seq: int
    messages: list[Message]
    result: BatchResult
    offsets: dict[TopicPartition, int]  # next offset to commit per partition
    started: float


GC_THRESHOLD = (20_000, 10, 10)  # young collections every 20,000 allocations instead of 700


def settle_heap() -> None:
    """After a recovery: move what is alive (modules, clients, the recovered track states) out of the cyclic
    GC's generations and collect the young generation less often. A batch allocates tens of thousands of
    short-lived containers that reference counting frees; the collector's scans of them and of the track
    table cost the worker CPU per event for nothing.
    Frozen objects are still freed by reference counting when dropped (states hold no cycles)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)


# An open transaction of a worker that died holds back read_committed readers of its partitions (the changelog's
# recovery, the live topic's mirrors) until the broker aborts it: at once when the worker restarts with the same
# transactional id, else after this long. A transaction holds only Kafka sends (the Elasticsearch write is before it).
TRANSACTION_TIMEOUT_MS = 20_000


def make_producer(bootstrap: str, transactional_id: str | None = None) -> AIOKafkaProducer:
    """The worker's producer (dead letters, alerts, changelog, live topic, offsets), transactional with a
    ``transactional_id`` (the stream needs one; without, for tools that write a changelog directly); not started."""
    extra: dict[str, Any] = {}
    if transactional_id is not None:
        extra = {"transactional_id": transactional_id, "transaction_timeout_ms": TRANSACTION_TIMEOUT_MS}
    return AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_batch_size=1 << 20,
                            max_request_size=8 << 20, **extra)


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, stream: "SourceStream") -> None:
        self.stream = stream

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self.stream.on_revoked([tp.partition for tp in revoked if tp.topic == self.stream.topics.source])

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        await self.stream.on_assigned([tp.partition for tp in assigned if tp.topic == self.stream.topics.source])


def _write(sink: Sink, result: BatchResult) -> Any:
    """The sink's write of a batch's bulk request (as action dicts for a sink that takes only those)."""
    bulk = result.bulk(sink.keeps_latest)
    write_bulk = getattr(sink, "write_bulk", None)
    return write_bulk(bulk) if write_bulk is not None else sink.write(bulk.actions())


class SourceStream:
    """Consumes the source topic in batches and stores each batch's effects before committing it."""

    def __init__(self, *, consumer: Any, producer: Any, table: TrackTable, topics: StreamTopics, pipeline: Pipeline,
                 sinks: list[Sink], bulk_size: int, bulk_within: float, group: str = "",
                 webhook: Webhook | None = None,
                 batches_in_flight: int = DEFAULT_BATCHES_IN_FLIGHT,
                 grow_changelog: Callable[[int], Awaitable[None]] | None = None, stall_timeout: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """``consumer``/``producer``: not started, with aiokafka's interface (the parts this class calls), so
        the ordering and commit rules can be tested in-process; :meth:`connect` makes the real ones. The producer
        is transactional; ``group``: the consumer group whose offsets its transactions commit.
        ``batches_in_flight``: IOT_BATCHES_IN_FLIGHT, batches writing to the sinks at once (commits stay in order;
        one batch more may be committing).
        ``grow_changelog(n)``: gives the changelog at least ``n`` partitions (before a recovery needs them).
        ``stall_timeout``: IOT_STALL_TIMEOUT, seconds behind without a commit before :meth:`problems` says stalled."""
        self.consumer, self.producer, self.table, self.topics = consumer, producer, table, topics
        self.pipeline, self.sinks, self.webhook = pipeline, sinks, webhook
        self.bulk_size, self.bulk_within, self.group = bulk_size, bulk_within, group
        self.batches_in_flight = batches_in_flight
        self.pending_states: dict[str, tuple[int, Any]] = {}  # track -> (batch seq, state) not yet stored
        self.inflight: deque[asyncio.Task[None]] = deque()  # batches not yet committed, in order
        self.writing: set[asyncio.Future[None]] = set()  # batches whose sink writes are under way
        self.committed: dict[int, int] = {}  # source partition -> next offset committed by this worker
        self.seq = 0
        self._lock = asyncio.Lock()  # held while a fetched batch is being scheduled (rebalance waits for it)
        self._stopping = asyncio.Event()
        # Set once the assigned partitions' states are recovered; cleared while a rebalance is under way.
        # aiokafka may hand out records before on_partitions_assigned returned, so the loop waits for it.
        self._ready = asyncio.Event()
        self.grow_changelog, self.stall_timeout, self.clock = grow_changelog, stall_timeout, clock
        self.assigned_once = False
        self.recovering: tuple[list[int], float] | None = None  # partitions being recovered, since when
        self.rebalancing_since: float | None = None
        self.progress_at = clock()  # last commit, or last time no assigned partition had a lag

    @classmethod
    def connect(cls, *, bootstrap: str, group: str, topics: StreamTopics, bulk_size: int, transactional_id: str,
                idle_timeout: float = 0.0, metadata_max_age: float = 30.0, **kwargs: Any) -> "SourceStream":
        """A stream on aiokafka clients for ``bootstrap``, consuming in the group ``group``; ``transactional_id``:
        the producer's, stable across restarts of this worker (see the module docstring); ``idle_timeout``:
        IOT_TRACK_IDLE_TIMEOUT (:mod:`agents.core.idle`); ``metadata_max_age``: IOT_METADATA_MAX_AGE, seconds."""
        producer = make_producer(bootstrap, transactional_id)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False,
            auto_offset_reset="earliest", max_poll_records=bulk_size, fetch_max_wait_ms=100,
            session_timeout_ms=10_000, heartbeat_interval_ms=3_000,
            metadata_max_age_ms=int(metadata_max_age * 1000),  # how soon added partitions are seen
            max_poll_interval_ms=600_000)  # a long Elasticsearch outage must not evict the worker
        table = TrackTable(topics.changelog, lambda: changelog_reader(bootstrap), idle_timeout=idle_timeout)

        async def grow_changelog(partitions: int) -> None:
            async with kafka_topics.admin_client(bootstrap) as admin:
                for name in filter(None, (topics.changelog, topics.latest)):
                    before, after = await kafka_topics.grow(admin, name, partitions)
                    if after > before:
                        log.warning("%s grown topic=%s partitions=%d->%d (the new partitions start empty)",
                                    "changelog" if name == topics.changelog else "live topic", name, before, after)
            await producer.client.force_metadata_update()  # the producer checks a partition against its metadata

        return cls(consumer=consumer, producer=producer, table=table, topics=topics, bulk_size=bulk_size,
                   group=group, grow_changelog=grow_changelog, **kwargs)

    # --- lifecycle ---

    async def start(self) -> None:
        await self.producer.start()
        self.consumer.subscribe([self.topics.source], listener=_Rebalance(self))
        await self.consumer.start()

    async def stop(self) -> None:
        """Finish the batches in flight (commit them), then leave the group."""
        self._stopping.set()
        try:
            async with self._lock:
                await self._drain()
        finally:
            await self.consumer.stop()
            await self.producer.stop()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    @property
    def assigned(self) -> list[int]:
        return sorted(tp.partition for tp in self.consumer.assignment() if tp.topic == self.topics.source)

    # --- rebalance ---

    async def on_revoked(self, partitions: list[int]) -> None:
        self._ready.clear()
        self.rebalancing_since = self.clock()
        async with self._lock:
            try:
                await self._drain()
            except Exception as exc:  # the batch failed: nothing of it was committed, the next owner redoes it
                log.error("flush before revoke failed: %r", exc)
        log.info("partitions revoked topic=%s partitions=%s", self.topics.source, partitions)

    async def on_assigned(self, partitions: list[int]) -> None:
        self.table.drop(self.table.partitions - set(partitions))
        self.pending_states.clear()
        self.recovering = (sorted(partitions), self.clock())
        try:
            if partitions and self.grow_changelog is not None:
                await self.grow_changelog(max(partitions) + 1)
            await self.table.recover(partitions)
            self.committed = {}
            for p in partitions:
                self.committed[p] = await self.consumer.committed(TopicPartition(self.topics.source, p)) or 0
        finally:
            self.recovering = None
        settle_heap()
        self.assigned_once, self.rebalancing_since, self.progress_at = True, None, self.clock()
        self._ready.set()
        log.info("partitions assigned topic=%s partitions=%s tracks=%d", self.topics.source, partitions,
                 len(self.table))

    async def _drain(self) -> None:
        while self.inflight:
            await self.inflight.popleft()

    # --- the loop ---

    async def run(self) -> None:
        try:
            while not self._stopping.is_set():
                messages = await self._fetch()
                if not self._ready.is_set():
                    await self._ready.wait()
                    # Records fetched before the rebalance: keep those of partitions still ours (a
                    # re-assigned partition may deliver them again: harmless, documents are idempotent).
                    mine = set(self.assigned)
                    messages = [msg for msg in messages if msg.partition in mine]
                if not messages:
                    while self.inflight and self.inflight[0].done():
                        await self.inflight.popleft()
                    continue
                async with self._lock:
                    batch = self.prepare(messages)  # while earlier batches write: ready the moment a write ends
                    while len(self.writing) >= self.batches_in_flight:
                        await asyncio.wait(self.writing, return_when=asyncio.FIRST_COMPLETED)
                    previous = self.inflight[-1] if self.inflight else None
                    written = asyncio.get_running_loop().create_future()
                    self.writing.add(written)
                    written.add_done_callback(self.writing.discard)
                    self.inflight.append(asyncio.ensure_future(self.complete(batch, previous, written)))
                    # a write slot frees when its batch's writes end, before its transaction: one batch more
                    # may be committing meanwhile (failures surface here, in order)
                    while self.inflight and (len(self.inflight) > self.batches_in_flight or self.inflight[0].done()):
                        await self.inflight.popleft()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if self._stopping.is_set():  # the consumer was closed under a pending fetch
                return
            log.exception("source stream failed; stopping the worker so the group re-delivers: %r", exc)
            raise

    async def _fetch(self) -> list[Message]:
        """Up to ``bulk_size`` records: wait at most ``bulk_within`` for the first, then take what is buffered.

        aiokafka's records are the batch's messages as they are (a copy of each cost the worker CPU per event)."""
        out: list[Message] = []
        deadline = time.monotonic() + self.bulk_within
        while len(out) < self.bulk_size and not self._stopping.is_set():
            if out:
                timeout_ms = 0  # take what is already buffered
            else:
                # Whole milliseconds: a zero wait would return at once without yielding to the event loop,
                # and an idle worker polling that way starves its own /healthz and signal handling.
                timeout_ms = int((deadline - time.monotonic()) * 1000)
                if timeout_ms <= 0:
                    break
            batches = await self.consumer.getmany(timeout_ms=timeout_ms, max_records=self.bulk_size - len(out))
            if not batches:
                if out:
                    break
                continue
            for records in batches.values():
                out.extend(records)
        return out

    def get_state(self, track: str) -> Any:
        """The newest state of a track: one computed by a batch still in flight, else the table's."""
        pending = self.pending_states.get(track)
        return pending[1] if pending is not None else self.table.get(track)

    def prepare(self, messages: list[Message]) -> Batch:
        """CPU part of a batch (validate, geofences, motion, documents); no I/O, nothing committed."""
        started = time.perf_counter()
        self.seq += 1
        result = self.pipeline.process(messages, self.get_state)
        for track, (_, state) in result.states.items():
            self.pending_states[track] = (self.seq, state)
        # A partition's records arrive in offset order, so its last one is its highest (one source topic).
        last = {msg.partition: msg.offset for msg in messages}
        source = self.topics.source
        offsets = {TopicPartition(source, p): o + 1 for p, o in last.items()}
        return Batch(self.seq, messages, result, offsets, started)

    async def _send_all(self, topic: str, messages: list[tuple[bytes | None, bytes]],
                        partitions: list[int] | None = None) -> None:
        """Send and wait until Kafka acknowledged every message (an error fails the batch, uncommitted)."""
        if not messages:
            return
        send = self.producer.send
        parts = partitions or [None] * len(messages)
        futures = [await send(topic, value, key=key, partition=p) for (key, value), p in zip(messages, parts)]
        await asyncio.gather(*futures)

    async def _send_batches(self, topic: str, messages: list[tuple[bytes, bytes | None]],
                            partitions: list[int]) -> None:
        """Like :meth:`_send_all` for many messages to known partitions: one record batch per partition
        (aiokafka's ``create_batch``/``send_batch``) instead of one ``send`` per message. Same records (key, value, the producer's timestamp), same acknowledgement rule."""
        if not messages:
            return
        create = getattr(self.producer, "create_batch", None)
        if create is None:  # a producer without record batches (the in-process fakes)
            await self._send_all(topic, messages, partitions)
            return
        by_partition: dict[int, list[tuple[bytes, bytes | None]]] = {}
        for message, partition in zip(messages, partitions):
            by_partition.setdefault(partition, []).append(message)
        futures = []
        for partition, items in by_partition.items():
            batch = create()
            for key, value in items:
                if batch.append(key=key, value=value, timestamp=None) is None:  # full: send it, start the next
                    futures.append(await self.producer.send_batch(batch, topic, partition=partition))
                    batch = create()
                    batch.append(key=key, value=value, timestamp=None)  # a batch's first record always fits
            futures.append(await self.producer.send_batch(batch, topic, partition=partition))
        await asyncio.gather(*futures)

    async def complete(self, batch: Batch, previous: asyncio.Future[None] | None,
                       written: asyncio.Future[None] | None = None) -> None:
        """I/O part of a batch: its sink writes (overlapping the transactions of earlier batches), then, after the
        previous batch committed, one Kafka transaction with its dead letters, alerts, track states, live records
        and offsets. ``written`` is resolved when the writes end (or fail): it frees the batch's write slot."""
        result = batch.result
        dead = [(msg.key, dead_letter(msg.value, reason, msg.topic, msg.partition, msg.offset, msg.key))
                for msg, reason in result.dead]
        alerts = [(a["track"].encode(), orjson.dumps(a)) for a in result.alerts]
        t_write = time.perf_counter()
        try:
            outcomes = await asyncio.gather(*(_write(sink, result) for sink in self.sinks))
        finally:
            if written is not None and not written.done():
                written.set_result(None)
        rejected_total = 0
        refused: list[Any] = []  # observations refused for good by some sink
        sources = result.sources if any(outcomes) else {}
        for sink, rejected in zip(self.sinks, outcomes):
            observations = [(a, r) for a, r in rejected if (a["_index"], a["_id"]) in sources]
            if len(observations) < len(rejected):  # the event's fate is its observation's: no dead letter
                m.LATEST_REFUSED.inc(len(rejected) - len(observations))
                log.warning("%s refused %d latest-position write(s), e.g. %s", sink.name,
                            len(rejected) - len(observations),
                            next(r for a, r in rejected if (a["_index"], a["_id"]) not in sources))
            m.INDEXED.labels(sink.name).inc(len(result.observations) - len(observations))
            rejected_total += len(observations)
            refused += observations
            for action, reason in observations:
                msg = sources[(action["_index"], action["_id"])]
                dead.append((msg.key, dead_letter(msg.value, f"{sink.name}: {reason}", msg.topic,
                                                  msg.partition, msg.offset, msg.key)))

        t_wait = time.perf_counter()
        if previous is not None:
            await previous  # raises if an earlier batch failed: this one is not committed either
        t_state = time.perf_counter()
        changes, partitions = [], []
        for track, (partition, state) in result.states.items():
            left = self.table.put(partition, track, state)
            if left is not None:  # its events moved to another partition: the old one forgets it
                changes.append((orjson.dumps(track), None))
                partitions.append(left)
            pending = self.pending_states.get(track)
            if pending is not None and pending[0] == batch.seq:
                del self.pending_states[track]
            changes.append((orjson.dumps(track), state_codec.value(state)))
            partitions.append(partition)
        newest: list[tuple[bytes, bytes | None]] = []
        newest_partitions: list[int] = []
        if self.topics.latest is not None:
            # A track's newest stored document (a refused observation is never a live record), to the partition of
            # its events. A track whose events moved partition leaves its old record where it was: older, so a
            # mirror keeping the newest (geoiot.live.newer) ignores it; a tombstone there could be read after the
            # new record.
            latest = stored_latest(result.observations, result.latest_bulk, refused)
            states = result.states
            for track, source in zip(latest.ids, latest.sources):
                placed = states.get(track)
                if placed is not None:
                    newest.append((live.key(track), source))
                    newest_partitions.append(placed[0])
        for partition, track in self.table.evict_idle(keep=self.pending_states.__contains__):  # tombstones
            changes.append((orjson.dumps(track), None))
            partitions.append(partition)
            if self.topics.latest is not None:
                newest.append((live.key(track), None))
                newest_partitions.append(partition)
        t_transaction = time.perf_counter()
        await self._transaction(batch.offsets, (self.topics.dlq, dead, None), (self.topics.alerts, alerts, None),
                                (self.topics.changelog, changes, partitions),  # changelog partition = source partition
                                (self.topics.latest, newest, newest_partitions))
        t_commit = time.perf_counter()
        self._committed(batch.offsets)
        for a in result.alerts:  # delivered (committed) once: the webhook hears of it after the commit
            m.ALERTS.labels(a["event"]).inc()
            if self.webhook is not None:
                self.webhook.submit(a)
        n = len(batch.messages)
        m.EVENTS.inc(n)
        m.BATCH_SIZE.observe(n)
        m.INVALID.inc(len(result.dead))
        m.DEAD_LETTERED.inc(len(dead))
        m.NULLED.inc(result.nulled)
        m.KEY_MISMATCH.inc(result.key_mismatch)
        m.FILTERED.inc(result.filtered)
        log.info("batch events=%d indexed=%d invalid=%d filtered=%d rejected=%d alerts=%d tracks=%d seconds=%.3f "
                 "(process=%.3f write=%.3f wait=%.3f state=%.3f transaction=%.3f)",
                 n, len(result.observations) - rejected_total, len(result.dead), result.filtered, rejected_total,
                 len(result.alerts), len(result.states), time.perf_counter() - batch.started,
                 t_write - batch.started, t_wait - t_write, t_state - t_wait, t_transaction - t_state,
                 t_commit - t_transaction)

    async def _transaction(self, offsets: dict[TopicPartition, int],
                           *sends: tuple[str | None, list[tuple[bytes | None, bytes | None]], list[int] | None]) -> None:
        """One Kafka transaction: each ``(topic, messages, partitions or None)`` sent, then the consumer offsets
        (``send_offsets_to_transaction``), then committed. Any error aborts it (when the producer still can) and
        fails the batch: nothing of it is visible to read_committed readers, and the group re-delivers it."""
        producer = self.producer
        await producer.begin_transaction()
        try:
            await asyncio.gather(*(self._send_all(topic, messages) if partitions is None
                                   else self._send_batches(topic, messages, partitions)
                                   for topic, messages, partitions in sends if topic is not None and messages))
            await producer.send_offsets_to_transaction(offsets, self.group)
            await producer.commit_transaction()
        except BaseException as exc:
            try:
                await producer.abort_transaction()
            except Exception as abort_exc:  # a fenced or failed producer cannot abort; the broker will
                log.warning("abort of the failed transaction failed: %r", abort_exc)
            if not isinstance(exc, asyncio.CancelledError):
                log.error("transaction failed, nothing of the batch is committed: %r", exc)
            raise

    def _committed(self, offsets: dict[TopicPartition, int]) -> None:
        for tp, offset in offsets.items():
            self.committed[tp.partition] = offset
        self.progress_at = self.clock()

    def lag(self) -> dict[int, int]:
        """Messages behind the end of each assigned source partition (by committed position)."""
        out: dict[int, int] = {}
        for tp in self.consumer.assignment():
            highwater = self.consumer.highwater(tp)
            if highwater is None:
                continue
            out[tp.partition] = max(0, highwater - self.committed.get(tp.partition, 0))
        return out

    def problems(self) -> list[str]:
        """Why the stream is not making progress now (empty: healthy); see the module docstring."""
        now = self.clock()
        if self.recovering is not None:
            partitions, since = self.recovering
            return [f"recovering track state of partitions {partitions} for {now - since:.0f}s"]
        if not self.assigned_once:
            return ["waiting for partitions from the consumer group"]
        if self.rebalancing_since is not None:
            return [f"rebalancing for {now - self.rebalancing_since:.0f}s"]
        behind = sum(self.lag().values())
        if not behind:
            self.progress_at = now
            return []
        if now - self.progress_at > self.stall_timeout:
            return [f"stalled: {behind} messages behind and nothing committed for {now - self.progress_at:.0f}s"]
        return []
