"""The Faust app: source topic -> validate -> geofences -> track state -> alerts -> sinks.

Run: ``faust -A agents.app worker -l info`` (or ``python -m faust ...``); configuration from the
environment through :mod:`geoiot.config`.

Guarantees (at least once, idempotent writes, so effectively once in Elasticsearch):

* The agent iterates ``stream.noack().noack_take(...)``: Faust never acks on its own, and each
  event of a batch is acked explicitly only after the batch's dead letters and alerts were
  delivered to Kafka and every sink wrote its documents. Faust commits only the contiguous
  acknowledged offsets, so a crash at any point re-delivers every event whose effects were not all
  stored. (``take()``/``take_events()`` would ack in a ``finally`` block, i.e. even when the body
  raised or was cancelled mid-flush.) Documents have a deterministic ``_id``, so re-delivery
  overwrites.
* Order per batch: dead letters, alerts and sink writes (retried while Elasticsearch is down) sent
  and awaited -> track states written to the changelog and awaited -> events acked. So a committed
  offset always has its state change in the changelog. The reverse can happen (the changelog is
  written, the worker dies before the offset commit): the restarted worker then sees its re-delivered
  events as "not newer" than the recovered state. Those events produce no alert a second time, which
  loses nothing because their alerts were delivered before the state was written; their motion fields
  are recomputed from the state's short history (:mod:`agents.tracks`), so the overwritten documents
  stay the same. A crash before the state write re-emits the batch's alerts: duplicates, never
  missing transitions.
* Pipelining: while a batch is being stored, the next one is consumed and processed (against the
  states of the batches still in flight) and its writes start; at most ``FLUSHES_IN_FLIGHT`` batches
  are in flight. The state write and the acks of a batch wait for the previous batch to complete, so
  they happen in batch order, and a failed batch keeps every later batch from acking.
* The state table is keyed by track id and written to the changelog partition of the event's own
  source partition (one producer send per changed track and batch), so it is co-partitioned with the source
  topic whatever the producer's partitioner was, and a worker that takes over a partition recovers
  exactly the tracks of that partition.
* Processing guarantee ``at_least_once`` (exactly-once mode is avoided), ``stream_wait_empty=False``
  and a short broker heartbeat to keep rebalances from stalling on buffered events.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import faust
import orjson

from agents import metrics as m
from agents.alerts import Webhook
from agents.geofence import Geofences, GeofenceError
from agents.index import ensure_index
from agents.pipeline import BatchResult, Incoming, Pipeline
from agents.sink import ElasticsearchSink, Sink, StdoutSink, es_client
from agents.validate import dead_letter
from geoiot import config
from geoiot.schema import SchemaError, load_preset
from geoiot.timeparse import zone

log = logging.getLogger("agents")
KNOWN_SINKS = ("elasticsearch", "stdout")
FLUSHES_IN_FLIGHT = 2  # batches being stored at once (pipelining); acks stay in order


def _fail(message: str) -> None:
    raise SystemExit(f"agents: {message}")


def _in_thread(fun: Any) -> Any:
    """Run a coroutine function to completion in its own thread and loop (the CLI's loop is not ours yet)."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = asyncio.run(fun())
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=run, name="agents-preflight")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box.get("value")


def source_partitions(settings: config.Settings, timeout: float = 20.0) -> int:
    """Partition count of the source topic; a clear SystemExit when Kafka or the topic is missing."""
    from aiokafka.admin import AIOKafkaAdminClient

    async def lookup() -> int | None:
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, request_timeout_ms=int(timeout * 1000))
        await asyncio.wait_for(admin.start(), timeout)
        try:
            described = await asyncio.wait_for(admin.describe_topics([settings.iot_topic]), timeout)
        finally:
            await admin.close()
        topic = described[0] if described else {}
        if topic.get("error_code", 0) != 0 or not topic.get("partitions"):
            return None
        return len(topic["partitions"])

    try:
        count = _in_thread(lookup)
    except Exception as exc:
        _fail(f"cannot reach Kafka at KAFKA_BOOTSTRAP={settings.kafka_bootstrap}: {type(exc).__name__}: {exc}")
    if count is None:
        _fail(f"source topic IOT_TOPIC={settings.iot_topic!r} does not exist on {settings.kafka_bootstrap}; "
              "create it first (python -m replay creates it, or kafka-topics --create)")
    return count


def check_elasticsearch(settings: config.Settings) -> None:
    if "elasticsearch" not in settings.sinks:
        return
    from elasticsearch import Elasticsearch

    client = Elasticsearch(settings.es_hosts, request_timeout=10)
    try:
        client.cluster.health()  # GET / is absent from the integ-test distribution
    except Exception as exc:
        _fail(f"cannot reach Elasticsearch at ES_URL={settings.es_url}: {type(exc).__name__}: {exc}")
    finally:
        client.close()


# --- configuration and pre-flight checks (at import: `faust -A agents.app` fails fast and clearly) ---

settings = config.load()
unknown = [s for s in settings.sinks if s not in KNOWN_SINKS]
if unknown or not settings.sinks:
    _fail(f"IOT_SINKS={settings.iot_sinks!r}: use one or more of {', '.join(KNOWN_SINKS)}")
try:
    preset = load_preset(settings.iot_schema)
    fences = Geofences.load(settings.iot_geofences)
    tz = zone(settings.iot_timezone)
except (SchemaError, GeofenceError, ValueError) as exc:
    _fail(str(exc))
DATADIR = os.path.join(tempfile.gettempdir(), "geoiot-faust", settings.iot_app_id)
os.makedirs(DATADIR, exist_ok=True)  # Faust creates only the last level; the memory store keeps nothing there
PARTITIONS = source_partitions(settings)
check_elasticsearch(settings)

app = faust.App(
    settings.iot_app_id,
    broker=[f"kafka://{h.strip()}" for h in settings.kafka_bootstrap.split(",") if h.strip()],
    value_serializer="raw",
    key_serializer="raw",
    web_port=settings.worker_web_port,
    topic_partitions=PARTITIONS,
    topic_replication_factor=settings.iot_replication,
    topic_allow_declare=True,
    processing_guarantee="at_least_once",
    store="memory://",
    datadir=DATADIR,
    stream_wait_empty=False,
    stream_buffer_maxsize=max(4096, 4 * settings.iot_bulk_size),
    broker_max_poll_records=max(500, settings.iot_bulk_size),
    broker_heartbeat_interval=3.0,
    broker_commit_interval=1.0,
    consumer_auto_offset_reset="earliest",
    web_in_thread=False,
)

source = app.topic(settings.iot_topic, key_serializer="raw", value_serializer="raw", partitions=PARTITIONS)
dlq_topic = app.topic(settings.iot_dlq_topic, key_serializer="raw", value_serializer="raw")
alerts_topic = app.topic(settings.iot_alerts_topic, key_serializer="raw", value_serializer="raw")
tracks = app.Table("tracks", default=None, partitions=PARTITIONS,
                   schema=faust.Schema(key_serializer="json", value_serializer="json"))


@dataclass
class Batch:
    seq: int
    events: list[Any]
    result: BatchResult
    started: float


class Runtime:
    """Per-worker resources created inside the worker's event loop, and the batch handler."""

    def __init__(self) -> None:
        self.pipeline = Pipeline(preset, fences, settings.iot_index, tz, settings.iot_geofence_filter)
        self.sinks: list[Sink] = []
        self.webhook: Webhook | None = None
        self.started = False
        self.next_offset: dict[tuple[str, int], int] = {}
        self.pending_states: dict[str, tuple[int, Any]] = {}  # track -> (batch seq, state) not yet stored
        self.seq = 0
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        async with self._lock:
            if self.started:
                return
            await dlq_topic.maybe_declare()
            await alerts_topic.maybe_declare()
            sinks: list[Sink] = []
            for name in settings.sinks:
                if name == "elasticsearch":
                    sinks.append(ElasticsearchSink(
                        es_client(settings.es_hosts),
                        on_retry=lambda reason: m.SINK_RETRIES.labels("elasticsearch").inc(),
                        on_bulk=lambda seconds, n: m.BULK_SECONDS.labels("elasticsearch").observe(seconds),
                        setup=lambda client: ensure_index(client, settings, preset)))
                else:
                    sinks.append(StdoutSink())
            for sink in sinks:
                await sink.start()
            self.sinks = sinks
            if settings.iot_webhook_url:
                self.webhook = Webhook(settings.iot_webhook_url,
                                       on_result=lambda outcome: m.WEBHOOK.labels(outcome).inc())
                await self.webhook.start()
            self.started = True
            log.info("agents started topic=%s partitions=%d index=%s sinks=%s fences=%d filter=%s",
                     settings.iot_topic, PARTITIONS, settings.iot_index, ",".join(settings.sinks),
                     len(fences), settings.iot_geofence_filter)

    async def stop(self) -> None:
        if self.webhook is not None:
            await self.webhook.stop()
        for sink in self.sinks:
            await sink.stop()
        self.started = False

    async def _send_all(self, topic: str, messages: list[tuple[bytes | None, bytes]],
                        partitions: list[int] | None = None) -> None:
        """Send and wait until Kafka acknowledged every message (an error crashes the batch unacked)."""
        if not messages:
            return
        send = app.producer.send
        if partitions is None:
            futures = [await send(topic, key, value, None, None, None) for key, value in messages]
        else:
            futures = [await send(topic, key, value, partition, None, None)
                       for (key, value), partition in zip(messages, partitions)]
        await asyncio.gather(*futures)

    def get_state(self, track: str) -> Any:
        """The newest state of a track: one computed by a batch still being flushed, else the table's."""
        pending = self.pending_states.get(track)
        return pending[1] if pending is not None else tracks.data.get(track)

    def prepare(self, events: list[Any]) -> Batch:
        """CPU part of a batch (validate, geofences, motion, documents); no I/O, nothing acked."""
        started = time.perf_counter()
        self.seq += 1
        msgs = [Incoming(e.message.value, e.message.key, e.message.topic, e.message.partition, e.message.offset)
                for e in events]
        result = self.pipeline.process(msgs, self.get_state)
        for track, (_, state) in result.states.items():
            self.pending_states[track] = (self.seq, state)
        return Batch(self.seq, events, result, started)

    async def complete(self, batch: Batch, stream: Any, previous: asyncio.Future[None] | None) -> None:
        """I/O part of a batch; acks its events only after everything is stored, and after the previous batch.

        Dead letters, alerts and sink writes run concurrently with each other and with the previous
        batch's; the track states (changelog) and the acks follow in batch order, each only after the
        previous batch completed, so a failed batch stops every later one from acking.
        """
        result, events = batch.result, batch.events
        dead = [(msg.key, dead_letter(msg.value, reason, msg.topic, msg.partition, msg.offset, msg.key))
                for msg, reason in result.dead]
        alerts = [(a["track"].encode(), orjson.dumps(a)) for a in result.alerts]
        t_write = time.perf_counter()
        outcomes = await asyncio.gather(self._send_all(settings.iot_dlq_topic, dead),
                                        self._send_all(settings.iot_alerts_topic, alerts),
                                        *(sink.write(result.actions) for sink in self.sinks))
        for a in result.alerts:
            m.ALERTS.labels(a["event"]).inc()
            if self.webhook is not None:
                self.webhook.submit(a)

        rejected_total = 0
        late: list[tuple[bytes | None, bytes]] = []
        for sink, rejected in zip(self.sinks, outcomes[2:]):
            m.INDEXED.labels(sink.name).inc(len(result.actions) - len(rejected))
            rejected_total += len(rejected)
            for action, reason in rejected:
                msg = result.sources[(action["_index"], action["_id"])]
                late.append((msg.key, dead_letter(msg.value, f"{sink.name}: {reason}", msg.topic,
                                                  msg.partition, msg.offset, msg.key)))
        await self._send_all(settings.iot_dlq_topic, late)

        t_wait = time.perf_counter()
        if previous is not None:
            await previous  # raises if an earlier batch failed: this one is not acked either
        store = tracks.data
        changes = []
        partitions = []
        for track, (partition, state) in result.states.items():
            store[track] = state
            pending = self.pending_states.get(track)
            if pending is not None and pending[0] == batch.seq:
                del self.pending_states[track]
            changes.append((orjson.dumps(track), orjson.dumps(state)))
            partitions.append(partition)
        # The changelog partition is the event's source partition (co-partitioned table).
        t_state = time.perf_counter()
        await self._send_all(self.changelog, changes, partitions)
        t_ack = time.perf_counter()
        ack = stream.ack
        next_offset = self.next_offset
        for event in events:
            await ack(event)
        for event in events:
            message = event.message
            tp = (message.topic, message.partition)
            if message.offset + 1 > next_offset.get(tp, 0):
                next_offset[tp] = message.offset + 1
        n = len(events)
        m.EVENTS.inc(n)
        m.BATCH_SIZE.observe(n)
        m.INVALID.inc(len(dead))
        m.DEAD_LETTERED.inc(len(dead) + len(late))
        m.NULLED.inc(result.nulled)
        m.FILTERED.inc(result.filtered)
        log.info("batch events=%d indexed=%d invalid=%d filtered=%d rejected=%d alerts=%d tracks=%d seconds=%.3f "
                 "(process=%.3f write=%.3f wait=%.3f state=%.3f)",
                 n, len(result.actions) - rejected_total, len(dead), result.filtered, rejected_total,
                 len(result.alerts), len(result.states), time.perf_counter() - batch.started,
                 t_write - batch.started, t_wait - t_write, t_state - t_wait, t_ack - t_state)

    @property
    def changelog(self) -> str:
        return tracks.changelog_topic.get_topic_name()


runtime = Runtime()


@app.agent(source)
async def observations(stream: faust.StreamT) -> None:
    """Batches of raw position reports; each event acked only after its batch is fully stored.

    Up to ``FLUSHES_IN_FLIGHT`` batches are being stored at once while the next one is consumed and
    processed; they complete (state, acks) strictly in order.
    """
    await runtime.start()
    runtime.pending_states.clear()
    manual = stream.noack()
    inflight: deque[asyncio.Task[None]] = deque()
    try:
        async for events in manual.noack_take(settings.iot_bulk_size, within=settings.iot_bulk_within):
            batch = runtime.prepare(list(events))
            previous = inflight[-1] if inflight else None
            inflight.append(asyncio.ensure_future(runtime.complete(batch, manual, previous)))
            while inflight and (len(inflight) >= FLUSHES_IN_FLIGHT or inflight[0].done()):
                await inflight.popleft()
        while inflight:
            await inflight.popleft()
    finally:
        for task in inflight:
            task.cancel()


@app.timer(interval=5.0)
async def report_lag() -> None:
    consumer = app.consumer
    for tp in consumer.assignment():
        if tp.topic != settings.iot_topic:
            continue
        try:
            highwater = consumer.highwater(tp)
        except Exception:
            continue
        if highwater is None:
            continue
        position = runtime.next_offset.get((tp.topic, tp.partition))
        if position is None:
            committed = consumer._committed_offset.get(tp) if hasattr(consumer, "_committed_offset") else None
            position = committed or 0
        m.LAG.labels(tp.topic, str(tp.partition)).set(max(0, highwater - position))
    m.TRACKS.set(len(tracks.data))


@app.page("/metrics")
async def metrics_page(self: Any, request: Any) -> Any:
    body, content_type = m.exposition()
    return self.bytes(body, content_type=content_type)


@app.page("/healthz")
async def healthz(self: Any, request: Any) -> Any:
    problems = []
    if not runtime.started:
        problems.append("starting")
    for sink in runtime.sinks:
        failing = getattr(sink, "failing_since", None)
        if failing is not None and time.monotonic() - failing > 30:
            problems.append(f"{sink.name} failing for {time.monotonic() - failing:.0f}s")
    body = {"status": "ok" if not problems else "degraded", "problems": problems, "topic": settings.iot_topic,
            "partitions": PARTITIONS, "assigned": sorted(tp.partition for tp in app.consumer.assignment()
                                                          if tp.topic == settings.iot_topic)}
    return self.json(body, status=200 if not problems else 503)


@app.on_before_shutdown.connect
async def _shutdown(app: faust.App, **kwargs: Any) -> None:  # pragma: no cover - process exit
    await runtime.stop()
