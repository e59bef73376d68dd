"""The Faust app: source topic -> validate -> geofences -> track state -> alerts -> sinks.

Run: ``faust -A agents.app worker -l info`` (or ``python -m faust ...``); configuration from the
environment through :mod:`geoiot.config`. Several workers share the source partitions through the
Kafka consumer group ``IOT_APP_ID``.

Faust runs the worker: its lifecycle and signals, the web server (``/healthz``, ``/metrics``),
timers, logging and the CLI. The source topic itself is consumed by :class:`agents.consumer.SourceStream`
(aiokafka, batches, offsets committed only after each batch is stored), started here as a Faust
service; that module explains why Faust's per-event stream is not used for it, and the guarantees.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import threading
import time
from typing import Any

import faust
from mode import Service

from agents import metrics as m
from agents.alerts import Webhook
from agents.consumer import SourceStream, Topics
from agents.geofence import Geofences, GeofenceError
from agents.index import ensure_index
from agents.pipeline import Pipeline
from agents.retention import delete_expired
from agents.sink import ElasticsearchSink, Sink, StdoutSink, es_client
from agents.state import changelog_topic
from geoiot import config
from geoiot.malloc import keep_freed_heap
from geoiot.topics import ensure_topics
from geoiot.schema import SchemaError, load_preset
from geoiot.timeparse import EventTimeBounds, zone

log = logging.getLogger("agents")
KNOWN_SINKS = ("elasticsearch", "stdout")


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
os.makedirs(DATADIR, exist_ok=True)  # Faust creates only the last level; nothing is stored there
PARTITIONS = source_partitions(settings)
keep_freed_heap()  # per-batch JSON churn: see geoiot.malloc
check_elasticsearch(settings)

# Faust's own consumer group must differ from IOT_APP_ID, the group of the source stream: a group has
# one assignment protocol, and Faust's is not aiokafka's.
app = faust.App(
    f"{settings.iot_app_id}-faust",
    broker=[f"kafka://{h.strip()}" for h in settings.kafka_bootstrap.split(",") if h.strip()],
    web_port=settings.worker_web_port,
    topic_replication_factor=settings.iot_replication,
    datadir=DATADIR,
    web_in_thread=False,
    broker_session_timeout=10.0,  # a killed worker's replacement must not wait a minute to join Faust's group
    broker_heartbeat_interval=3.0,
)
TOPICS = Topics(source=settings.iot_topic, dlq=settings.iot_dlq_topic, alerts=settings.iot_alerts_topic,
                changelog=changelog_topic(settings.iot_app_id))


async def declare_topics() -> None:
    """Dead-letter and alerts topics as the source has partitions; the changelog compacted, co-partitioned."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        names = list(dict.fromkeys([TOPICS.dlq, TOPICS.alerts]))
        await ensure_topics(admin, names, PARTITIONS, settings.iot_replication)
        [changelog] = await ensure_topics(admin, [TOPICS.changelog], PARTITIONS, settings.iot_replication,
                                          {"cleanup.policy": "compact"})
        found = changelog.partitions
        if found < PARTITIONS:
            _fail(f"changelog topic {TOPICS.changelog!r} has {found} partitions, the source topic {PARTITIONS}; "
                  "delete the changelog (its state is rebuilt from new events) or use a new IOT_APP_ID")
    finally:
        await admin.close()


def make_sinks() -> list[Sink]:
    sinks: list[Sink] = []
    for name in settings.sinks:
        if name == "elasticsearch":
            sinks.append(ElasticsearchSink(
                es_client(settings.es_hosts),
                on_retry=lambda reason: m.SINK_RETRIES.labels("elasticsearch").inc(),
                on_bulk=lambda seconds, n: m.BULK_SECONDS.labels("elasticsearch").observe(seconds),
                setup=lambda client: ensure_index(client, settings, preset),
                max_new_indices=settings.iot_max_new_indices))
        else:
            sinks.append(StdoutSink())
    return sinks


class Runtime:
    """What the worker's health page reports on; filled in by the service once it started."""

    def __init__(self) -> None:
        self.stream: SourceStream | None = None
        self.sinks: list[Sink] = []
        self.started = False


runtime = Runtime()


@app.service
class Observations(Service):
    """Batches of raw position reports from the source topic, stored before their offsets are committed."""

    webhook: Webhook | None = None

    async def on_start(self) -> None:
        await declare_topics()
        sinks = make_sinks()
        for sink in sinks:
            await sink.start()
        if settings.iot_webhook_url:
            self.webhook = Webhook(settings.iot_webhook_url, on_result=lambda outcome: m.WEBHOOK.labels(outcome).inc())
            await self.webhook.start()
        stream = SourceStream(
            bootstrap=settings.kafka_bootstrap, group=settings.iot_app_id, topics=TOPICS,
            pipeline=Pipeline(preset, fences, settings.iot_index, tz, settings.iot_geofence_filter,
                              EventTimeBounds.from_settings(settings)),
            sinks=sinks, bulk_size=settings.iot_bulk_size, bulk_within=settings.iot_bulk_within,
            webhook=self.webhook)
        await stream.start()
        runtime.stream, runtime.sinks, runtime.started = stream, sinks, True
        log.info("agents started topic=%s partitions=%d group=%s index=%s sinks=%s fences=%d filter=%s",
                 settings.iot_topic, PARTITIONS, settings.iot_app_id, settings.iot_index, ",".join(settings.sinks),
                 len(fences), settings.iot_geofence_filter)

    @Service.task
    async def _consume(self) -> None:
        assert runtime.stream is not None
        try:
            await runtime.stream.run()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not runtime.stream.stopping:
                await self.crash(exc)  # nothing of the failed batch was committed: the group re-delivers it

    async def on_stop(self) -> None:
        runtime.started = False
        if runtime.stream is not None:
            await runtime.stream.stop()
        if self.webhook is not None:
            await self.webhook.stop()
        for sink in runtime.sinks:
            await sink.stop()
        log.info("agents stopped committed=%s", runtime.stream.committed if runtime.stream else {})


_lag_partitions: set[str] = set()  # the partitions /metrics reports a lag for


@app.timer(interval=5.0)
async def report_lag() -> None:
    stream = runtime.stream
    if stream is None:
        return
    current = {str(partition): lag for partition, lag in stream.lag().items()}
    for partition, lag in current.items():
        m.LAG.labels(settings.iot_topic, partition).set(lag)
    for gone in _lag_partitions - current.keys():  # moved to another worker: its lag is reported there
        m.LAG.remove(settings.iot_topic, gone)
    _lag_partitions.clear()
    _lag_partitions.update(current)
    m.TRACKS.set(len(stream.table))


@app.timer(interval=3600.0, on_leader=True)
async def apply_retention() -> None:
    """Delete daily indices older than IOT_RETENTION_DAYS (see agents.retention); one worker does it."""
    if settings.iot_retention_days <= 0 or "elasticsearch" not in settings.sinks:
        return
    client = es_client(settings.es_hosts, request_timeout=60)
    try:
        deleted = await delete_expired(client, settings.iot_index, settings.iot_retention_days)
        if deleted:
            log.info("retention deleted=%d indices=%s", len(deleted), ",".join(deleted))
    except Exception as exc:  # the next period tries again
        log.warning("retention failed: %s: %s", type(exc).__name__, exc)
    finally:
        await client.close()


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
            "partitions": PARTITIONS, "assigned": runtime.stream.assigned if runtime.stream else []}
    return self.json(body, status=200 if not problems else 503)
