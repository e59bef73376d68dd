"""The Faust app: source topic -> validate -> geofences -> track state -> alerts -> sinks.

Run: ``faust -A agents.app worker -l info`` (or ``python -m faust ...``); configuration from the
environment through :mod:`geoiot.config`. Several workers share the source partitions through the
Kafka consumer group ``IOT_APP_ID``.

Faust runs the worker: its lifecycle and signals, the web server (``/healthz``, ``/metrics``),
timers, logging and the CLI. The source topic itself is consumed by :class:`agents.worker.stream.SourceStream`
(aiokafka, batches, offsets committed only after each batch is stored), started here as a Faust
service; that module explains why Faust's per-event stream is not used for it, and the guarantees.

Importing this module only builds the ``app`` object that ``faust -A`` looks for: no network I/O, no
directory, no process setting. Faust reads the configuration when it finalizes the app
(:func:`configure`); the ``worker`` command then runs :class:`Worker`, whose pre-flight
(:func:`preflight`: settings, preset, fences, Kafka, the source topic, the other topics, Elasticsearch
and its index template) ends with one line naming the problem and exit code 1 before anything starts.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import tzinfo
from pathlib import Path
from typing import Any, NoReturn

import faust
from mode import Service

from agents.core.geofence import Geofences, GeofenceError
from agents.core.pipeline import Pipeline
from agents.store.index import IndexSetupError, ensure_index
from agents.store.retention import delete_expired, trim_latest
from agents.store.sink import ElasticsearchSink, Sink, StdoutSink, es_client
from agents.webhook import Webhook
from agents.worker import metrics as m
from agents.worker.fence_follower import LiveFences
from agents.worker.stream import SourceStream, StreamTopics
from agents.worker.track_table import changelog_topic
from geoiot import config, fence_topic, fences, topics
from geoiot.logs import WORKER_LOGGERS, quiet_repeats
from geoiot.malloc import keep_freed_heap
from geoiot.schema import Preset, SchemaError, load_preset
from geoiot.timeparse import EventTimeBounds, zone

log = logging.getLogger("agents")
PREFLIGHT_TIMEOUT = 20.0


class PreflightError(Exception):
    """The worker cannot start; the message says why in one line."""


@dataclass
class WorkerContext:
    """Everything the worker needs, resolved and checked once at start."""

    settings: config.Settings
    preset: Preset
    fences: Geofences
    tz: tzinfo
    topics: StreamTopics
    partitions: int = 0  # of the source topic, known once Kafka answered

    @property
    def datadir(self) -> Path:
        # Faust creates only the last level; nothing is stored there.
        return Path(tempfile.gettempdir()) / "geoiot-faust" / self.settings.iot_app_id


def load_context(environ: Mapping[str, str] | None = None) -> WorkerContext:
    """Settings, preset, fences and time zone; no network. A :class:`PreflightError` when one is wrong."""
    try:
        settings = config.load(environ, component="agents")
        preset = load_preset(settings.iot_schema)
        fences = Geofences.load(settings.iot_geofences)
        tz = zone(settings.iot_timezone)
    except (SchemaError, GeofenceError, ValueError) as exc:
        raise PreflightError(str(exc)) from None
    return WorkerContext(settings, preset, fences, tz, StreamTopics(
        source=settings.iot_topic, dlq=settings.iot_dlq_topic, alerts=settings.iot_alerts_topic,
        changelog=changelog_topic(settings.iot_app_id), latest=settings.latest_topic))


async def check_topics(ctx: WorkerContext) -> None:
    """The source topic must exist; dead-letter, alerts, the compacted changelog and the compacted live topic
    (:func:`geoiot.topics.latest_spec`) are created like it, the two compacted ones grown with it.

    A changelog with fewer partitions than the source (partitions added while no worker ran) is grown
    (:mod:`agents.worker.track_table`); one that is not compacted is refused; other configs that differ from
    :data:`geoiot.topics.CHANGELOG_CONFIGS` are reported (recovery reads more) but accepted."""
    s = ctx.settings
    try:
        async with topics.admin_client(s.kafka_bootstrap, timeout=PREFLIGHT_TIMEOUT) as admin:
            found = await topics.describe(admin, [ctx.topics.source], timeout=PREFLIGHT_TIMEOUT)
            if ctx.topics.source not in found:
                raise PreflightError(
                    f"source topic IOT_TOPIC={ctx.topics.source!r} does not exist on {s.kafka_bootstrap}; create it "
                    "first (python -m geoiot.topics or python -m replay creates it)")
            ctx.partitions = found[ctx.topics.source].partitions
            outputs = [topics.TopicSpec(n, ctx.partitions, s.iot_replication)
                       for n in dict.fromkeys([ctx.topics.dlq, ctx.topics.alerts])]
            name, wanted = ctx.topics.changelog, topics.CHANGELOG_CONFIGS
            changelog = topics.TopicSpec(name, ctx.partitions, s.iot_replication, wanted)
            latest = topics.latest_spec(s, ctx.partitions)
            *made, live_state, state = await topics.ensure(admin, [*outputs, latest, changelog], PREFLIGHT_TIMEOUT)
            if live_state.partitions < ctx.partitions:
                before, after = await topics.grow(admin, latest.name, ctx.partitions, PREFLIGHT_TIMEOUT)
                log.warning("live topic grown topic=%s partitions=%d->%d", latest.name, before, after)
            found = await topics.describe(admin, [name], topics.CHANGELOG_REQUIRED, PREFLIGHT_TIMEOUT)
            required = topics.differences(
                topics.TopicSpec(name, 0, configs={k: wanted[k] for k in topics.CHANGELOG_REQUIRED}), found[name])
            if required:
                raise PreflightError(
                    f"{'; '.join(required)}: the changelog must be compacted; delete it (its state is rebuilt "
                    "from new events) or use a new IOT_APP_ID")
            if state.partitions < ctx.partitions:
                before, after = await topics.grow(admin, changelog.name, ctx.partitions, PREFLIGHT_TIMEOUT)
                log.warning("changelog grown topic=%s partitions=%d->%d (the new partitions start empty)",
                            changelog.name, before, after)
    except topics.TopicsError as exc:
        raise PreflightError(str(exc)) from None
    for result in made:
        for problem in result.problems:
            log.warning("%s", problem)
    for problem in live_state.problems:
        if "fewer than" not in problem:  # grown above
            log.warning("topic_differs %s", problem)
    for problem in state.problems:
        if "fewer than" not in problem:  # grown above
            log.warning("topic_differs %s (recovery reads more records; python -m geoiot.topics "
                        "--alter-changelog sets it)", problem)


async def check_elasticsearch(ctx: WorkerContext) -> None:
    """Elasticsearch answers and takes the index template (a conflicting template is named)."""
    s = ctx.settings
    if "elasticsearch" not in s.sinks:
        return
    client = es_client(s.es_hosts, request_timeout=10)
    try:
        try:
            await client.cluster.health()  # GET / is absent from the integ-test distribution
        except Exception as exc:
            raise PreflightError(f"cannot reach Elasticsearch at ES_URL={s.es_url}: {type(exc).__name__}: {exc}") from None
        try:
            await ensure_index(client, s, ctx.preset)
        except IndexSetupError as exc:
            raise PreflightError(str(exc)) from None
    finally:
        await client.close()


async def check_fences(ctx: WorkerContext) -> None:
    """The live geofences' topic exists (created like the others) and holds the fences of IOT_GEOFENCES."""
    try:
        for problem in await fence_topic.prepare(ctx.settings):
            log.warning("%s", problem)
    except (fences.FenceError, topics.TopicsError) as exc:
        raise PreflightError(str(exc)) from None


async def preflight(ctx: WorkerContext) -> None:
    """The checks that need the network, then the process settings; at worker start, before Faust starts."""
    await check_topics(ctx)
    await check_fences(ctx)
    await check_elasticsearch(ctx)
    os.makedirs(ctx.datadir, exist_ok=True)
    keep_freed_heap()  # per-batch JSON churn: see geoiot.malloc
    quiet_repeats(WORKER_LOGGERS)  # a Kafka outage must not log a line per reconnect attempt


class Runtime:
    """What the worker's services and health page share; filled in at start."""

    def __init__(self) -> None:
        self.context: WorkerContext | None = None
        self.stream: SourceStream | None = None
        self.sinks: list[Sink] = []
        self.started = False

    @property
    def ctx(self) -> WorkerContext:
        if self.context is None:
            self.context = load_context()
        return self.context


runtime = Runtime()


def _fail(message: str) -> NoReturn:
    print(f"agents: {message}", file=sys.stderr, flush=True)
    raise SystemExit(1)


class Worker(faust.Worker):
    """Faust's worker, with the pre-flight run before it starts anything and without the terminal spinner."""

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        """No spinner: at ``-l warn`` or above Faust's spins on every log record, so it sets the root logger to
        DEBUG, and every library's debug call then builds a record that the handlers drop (aiokafka makes one
        per message sent). The root logger keeps the level asked for."""
        self.spinner = None
        super().on_setup_root_logger(logger, level)

    def execute_from_commandline(self) -> NoReturn:
        try:
            self.loop.run_until_complete(preflight(runtime.ctx))
        except PreflightError as exc:
            _fail(str(exc))
        super().execute_from_commandline()


# Faust's own consumer group must differ from IOT_APP_ID, the group of the source stream: a group has
# one assignment protocol, and Faust's is not aiokafka's. Its real id and the other options are set in
# configure(), when Faust reads the configuration; env_prefix keeps Faust from taking our WEB_PORT,
# WEB_HOST or TIMEZONE variables, meant for other components, as its own.
app = faust.App("geoiot-faust", autodiscover=False, env_prefix="FAUST_", Worker=Worker, web_in_thread=False,
                broker_session_timeout=10.0,  # a killed worker's replacement must not wait a minute to join
                broker_heartbeat_interval=3.0)


@app.on_configured.connect
def configure(sender: Any, conf: Any, **kwargs: Any) -> None:
    """Faust's settings from ours (a bad setting ends the command with one line)."""
    try:
        ctx = runtime.ctx
    except PreflightError as exc:
        _fail(str(exc))
    s = ctx.settings
    conf.id = f"{s.iot_app_id}-faust"
    conf.broker = [f"kafka://{h.strip()}" for h in s.kafka_bootstrap.split(",") if h.strip()]
    conf.web_port = s.worker_web_port
    conf.topic_replication_factor = s.iot_replication
    conf.datadir = str(ctx.datadir)


def transactional_id(s: config.Settings) -> str:
    """IOT_TRANSACTIONAL_ID, else ``<IOT_APP_ID>-<host>-<web port>``: the same for a worker restarted in the same
    place (so its new producer fences the old one and aborts its open transaction at once), distinct for workers
    of one host (each has its own web port; the port the ``--web-port`` flag gave, read once Faust applied it)."""
    return s.iot_transactional_id or f"{s.iot_app_id}-{socket.gethostname()}-{app.conf.web_port}"


def make_sinks(ctx: WorkerContext) -> list[Sink]:
    sinks: list[Sink] = []
    for name in ctx.settings.sinks:
        if name == "elasticsearch":
            sinks.append(ElasticsearchSink(
                es_client(ctx.settings.es_hosts),
                on_retry=lambda reason: m.SINK_RETRIES.labels("elasticsearch").inc(),
                on_bulk=lambda seconds, n: m.BULK_SECONDS.labels("elasticsearch").observe(seconds),
                on_conflict=m.LATEST_STALE.inc,
                on_duplicate=m.ALREADY_STORED.inc,
                setup=lambda client: ensure_index(client, ctx.settings, ctx.preset),
                max_new_indices=ctx.settings.iot_max_new_indices, keeps_latest=ctx.settings.iot_es_latest))
        else:
            sinks.append(StdoutSink())
    return sinks


@app.service
class Observations(Service):
    """Batches of raw position reports from the source topic, stored before their offsets are committed."""

    webhook: Webhook | None = None
    live_fences: LiveFences | None = None

    async def on_start(self) -> None:
        ctx = runtime.ctx
        s = ctx.settings
        if not ctx.partitions:  # started without the worker's pre-flight (not through `faust worker`)
            await preflight(ctx)
        sinks = make_sinks(ctx)
        for sink in sinks:
            await sink.start()
        if s.iot_webhook_url:
            self.webhook = Webhook.from_settings(s, on_result=lambda outcome: m.WEBHOOK.labels(outcome).inc(),
                                                 on_circuit=lambda is_open: m.WEBHOOK_CIRCUIT.set(int(is_open)))
            await self.webhook.start()
        pipeline = Pipeline(ctx.preset, ctx.fences, s.iot_index, ctx.tz, s.iot_geofence_filter,
                            EventTimeBounds.from_settings(s))

        def in_force(index: Geofences) -> None:  # on the loop, between two batches (agents.worker.fence_follower)
            pipeline.fences = ctx.fences = index

        def applied(index: Geofences, seconds: float) -> None:
            m.FENCES.set(len(index))
            m.FENCE_BUILD.observe(seconds)

        self.live_fences = LiveFences(s.kafka_bootstrap, s.fences_topic, in_force, applied)
        await self.live_fences.start()  # the whole fence topic, before any event
        stream = SourceStream.connect(
            bootstrap=s.kafka_bootstrap, group=s.iot_app_id, topics=ctx.topics, transactional_id=transactional_id(s),
            pipeline=pipeline,
            sinks=sinks, bulk_size=s.iot_bulk_size, bulk_within=s.iot_bulk_within, webhook=self.webhook,
            idle_timeout=s.iot_track_idle_timeout, batches_in_flight=s.iot_batches_in_flight,
            metadata_max_age=s.iot_metadata_max_age, stall_timeout=s.iot_stall_timeout)
        await stream.start()
        runtime.stream, runtime.sinks, runtime.started = stream, sinks, True
        log.info("agents started topic=%s partitions=%d group=%s index=%s sinks=%s fences=%d filter=%s",
                 s.iot_topic, ctx.partitions, s.iot_app_id, s.iot_index, ",".join(s.sinks),
                 len(ctx.fences), s.iot_geofence_filter)

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
        if self.live_fences is not None:
            await self.live_fences.stop()
        for sink in runtime.sinks:
            await sink.stop()
        log.info("agents stopped committed=%s", runtime.stream.committed if runtime.stream else {})


_lag_partitions: set[str] = set()  # the partitions /metrics reports a lag for


@app.timer(interval=5.0)
async def report_lag() -> None:
    stream = runtime.stream
    if stream is None:
        return
    source = runtime.ctx.topics.source
    current = {str(partition): lag for partition, lag in stream.lag().items()}
    for partition, lag in current.items():
        m.LAG.labels(source, partition).set(lag)
    for gone in _lag_partitions - current.keys():  # moved to another worker: its lag is reported there
        m.LAG.remove(source, gone)
    _lag_partitions.clear()
    _lag_partitions.update(current)
    m.TRACKS.set(len(stream.table))
    stream.problems()  # notes a lag of zero as progress, so that a burst after idling is not a stall


@app.timer(interval=3600.0, on_leader=True)
async def apply_retention() -> None:
    """Delete daily indices older than IOT_RETENTION_DAYS (see agents.store.retention); one worker does it."""
    s = runtime.ctx.settings
    if s.iot_retention_days <= 0 or "elasticsearch" not in s.sinks:
        return
    client = es_client(s.es_hosts, request_timeout=60)
    try:
        deleted = await delete_expired(client, s.iot_index, s.iot_retention_days)
        if deleted:
            log.info("retention deleted=%d indices=%s", len(deleted), ",".join(deleted))
        trimmed = await trim_latest(client, s.iot_index, runtime.ctx.preset.time, s.iot_retention_days)
        if trimmed:
            log.info("retention deleted=%d latest positions", trimmed)
    except Exception as exc:  # the next period tries again
        log.warning("retention failed: %s: %s", type(exc).__name__, exc)
    finally:
        await client.close()


async def metrics_page(self: Any, request: Any) -> Any:
    body, content_type = m.exposition()
    return self.bytes(body, content_type=content_type)


async def healthz(self: Any, request: Any) -> Any:
    problems = []
    if not runtime.started:
        problems.append("starting")
    elif runtime.stream is not None:
        problems.extend(runtime.stream.problems())
    for sink in runtime.sinks:
        failing = getattr(sink, "failing_since", None)
        if failing is not None and time.monotonic() - failing > 30:
            problems.append(f"{sink.name} failing for {time.monotonic() - failing:.0f}s")
    ctx = runtime.ctx
    body = {"status": "ok" if not problems else "degraded", "problems": problems, "topic": ctx.topics.source,
            "partitions": ctx.partitions, "assigned": runtime.stream.assigned if runtime.stream else []}
    return self.json(body, status=200 if not problems else 503)


@app.on_after_configured.connect
def add_pages(sender: Any, **kwargs: Any) -> None:
    """The worker's pages; registered once configured, because ``app.page`` reads the configuration."""
    app.page("/metrics")(metrics_page)
    app.page("/healthz")(healthz)
