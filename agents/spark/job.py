"""The agents' analytics on Spark Structured Streaming: IOT_TOPIC -> validate/geofence/document -> IOT_INDEX.

Run it with ``spark-submit`` (the Kafka connector jars come from ``infra/local/stack spark-jars``, so
nothing is downloaded at job start)::

    spark-submit --master 'local[2]' --driver-memory 1g \\
        --jars "$(infra/local/stack spark-jars)" agents/spark/job.py [--once] [flags]

Every micro-batch groups the Kafka rows by track and runs :mod:`agents.spark.worker`'s state function
(``applyInPandasWithState``): each track's rows, in Kafka order, go through the same
:class:`agents.core.pipeline.Pipeline` as the Faust agents with ``get_state`` fed from Spark's state store
(the agents' track state, checkpointed with the offsets), so speed, heading, distance, geofences,
alerts and latest positions are the worker's. ``foreachBatch`` then bulk-indexes observations and
latest positions on the executors (``mapInPandas``, the agents' sink, the same deterministic ``_id``s
and external versions) and, once they are stored, writes dead letters (IOT_DLQ_TOPIC), alerts
(IOT_ALERTS_TOPIC) and each track's newest stored document to the live layer (IOT_LATEST_TOPIC,
:mod:`geoiot.live`: the worker's records, on the track's source partition; created at start like the
worker's, :func:`geoiot.topics.latest_spec`) with Spark's Kafka sink, and POSTs the alerts to
IOT_WEBHOOK_URL from the driver (:class:`DriverWebhook`), all before Spark commits the batch: at least
once. Offsets and states live in the checkpoint (SPARK_CHECKPOINT_DIR): a restarted job resumes after the
last committed batch and redoes at most the one in flight, whose documents overwrite themselves (same
ids), whose live records are sent again (readers keep each track's newest) and whose alerts may repeat (on Spark
4.1.0-4.1.2 through the V1 Kafka source, see KAFKA_V1_CONF). Track states end after
IOT_TRACK_IDLE_TIMEOUT (:mod:`agents.core.idle`, Spark's ``ProcessingTimeTimeout``). One ``progress`` line
per micro-batch comes from Spark's StreamingQueryProgress; Spark's Prometheus endpoints are on
(PROMETHEUS_CONF). A checkpoint of the job before it kept track state cannot be reused (the query
gained a stateful operator): start it with a new SPARK_CHECKPOINT_DIR.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from geoiot import config
from geoiot.schema import load_preset

log = logging.getLogger("agents.spark.job")

ENVS = config.envs("spark")


def emit(event: str, **fields: Any) -> None:
    """One structured log line per meaningful event (stdout, JSON)."""
    print(json.dumps({"ts": round(time.time(), 3), "component": "spark_job", "event": event, **fields}), flush=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spark-submit agents/spark/job.py",
        description="Run the agents' analytics (validation, geofences, track state, alerts, indexing) as a Spark "
                    "Structured Streaming job.")
    config.add_flags(parser, ENVS)
    parser.add_argument("--once", action="store_true",
                        help="process everything available now (trigger availableNow), then exit")
    parser.add_argument("--trigger-interval", default="1 second",
                        help="processing-time trigger of the continuous mode (default '1 second')")
    parser.add_argument("--max-offsets-per-trigger", type=int, default=None,
                        help="cap on Kafka records per micro-batch (default: no cap)")
    parser.add_argument("--starting-offsets", default="earliest", choices=("earliest", "latest"),
                        help="where a job without a checkpoint starts reading (default earliest)")
    return parser


# SPARK-55271 (apache/spark#55236): the Kafka connector's V2 source of Spark 4.1.0-4.1.2 throws
# "Cannot invoke IterableOps.map ... Option.get() is null" when it reports progress for a batch it did
# not plan itself, i.e. the in-flight batch a restarted query redoes from offsets/N after a crash. That
# NPE kills every restart after a crash mid-batch. The V1 Kafka source (same options, same checkpoint
# layout and offsets) has no such code path; 4.1.3 and 4.2.0 fix the V2 one.
KAFKA_V1_CONF = ("spark.sql.streaming.disabledV2MicroBatchReaders", "org.apache.spark.sql.kafka010.KafkaSourceProvider")
KAFKA_V2_METRICS_NPE = ((4, 1, 0), (4, 1, 3))  # affected Spark versions: [first, fixed)


# Spark's own Prometheus endpoints on the driver's UI port (spark.ui.port, default 4040): /metrics/prometheus
# (driver metrics, with the streaming query's gauges from spark.sql.streaming.metricsEnabled) and
# /metrics/executors/prometheus. Defaults only: a --conf of spark-submit wins.
PROMETHEUS_CONF = {
    "spark.ui.prometheus.enabled": "true",
    "spark.metrics.conf.*.sink.prometheusServlet.class": "org.apache.spark.metrics.sink.PrometheusServlet",
    "spark.metrics.conf.*.sink.prometheusServlet.path": "/metrics/prometheus",
    "spark.metrics.appStatusSource.enabled": "true",
    "spark.sql.streaming.metricsEnabled": "true",
}


# The state store's partitions: Spark's default of 200 shuffle partitions means 200 state store instances
# (and tasks) per micro-batch; a few per core serve (fixed in the checkpoint at the first run). No micro-batch
# without data: the processing-time timeout of the track state would otherwise run one every trigger
# interval (and an availableNow run would never end); idle groups are removed by the next batch with data,
# as the worker evicts idle tracks when it stores a batch. Defaults only: a --conf of spark-submit wins.
STATE_CONF = {"spark.sql.shuffle.partitions": "4", "spark.sql.streaming.noDataMicroBatches.enabled": "false"}


def needs_kafka_v1_source(spark_version: str) -> bool:
    """Whether this Spark's Kafka V2 source fails restarts after a crash mid-batch (SPARK-55271)."""
    parts = re.match(r"(\d+)\.(\d+)\.(\d+)", spark_version)
    if parts is None:
        return False
    first, fixed = KAFKA_V2_METRICS_NPE
    return first <= tuple(int(n) for n in parts.groups()) < fixed


def use_restartable_kafka_source(spark: Any) -> str:
    """Select the V1 Kafka source on Spark versions whose V2 one cannot restart (unless set by the user).

    Returns which source the job reads with, for the start log line.
    """
    key, value = KAFKA_V1_CONF
    chosen = spark.conf.get(key, "")
    if not chosen and needs_kafka_v1_source(spark.version):
        spark.conf.set(key, value)
        chosen = value
    return "v1" if "KafkaSourceProvider" in chosen else "v2"


def checkpoint_dir(settings: config.Settings) -> str:
    """SPARK_CHECKPOINT_DIR, or .stack/spark-checkpoints/<IOT_APP_ID> under the working directory.

    A URI (hdfs://, s3a://, file://) is passed through for clusters; a local path is made absolute.
    """
    raw = settings.spark_checkpoint_dir or str(Path(".stack") / "spark-checkpoints" / settings.iot_app_id)
    if "://" in raw:
        return raw
    return str(Path(raw).expanduser().resolve())


def ensure_live_topic(settings: config.Settings) -> Any:  # -> geoiot.topics.TopicResult
    """Create the live layer's topic (IOT_LATEST_TOPIC) when missing, with as many partitions as the source
    topic (IOT_PARTITIONS while that does not exist yet): each track's records go to its source partition.

    ``TopicsError`` when Kafka cannot be reached or an existing live topic has fewer partitions than the source
    (its records could not be written); other differences (not compacted) are returned as problems."""
    from geoiot import topics

    async def run() -> Any:
        async with topics.admin_client(settings.kafka_bootstrap) as admin:
            found = await topics.describe(admin, [settings.iot_topic])
            source = found[settings.iot_topic].partitions if settings.iot_topic in found else settings.iot_partitions
            [result] = await topics.ensure(admin, [topics.latest_spec(settings, source)])
            if result.partitions < source:
                raise topics.TopicsError(f"live topic IOT_LATEST_TOPIC={result.name!r} has {result.partitions} "
                                         f"partitions, fewer than the source topic's {source}")
            return result

    return asyncio.run(run())


def ensure_template(settings: config.Settings) -> None:
    """Create/update the index template with the agents' function before the first write."""
    from agents.store.index import ensure_index
    from agents.store.sink import es_client

    async def run() -> None:
        client = es_client(settings.es_hosts)
        try:
            await ensure_index(client, settings, load_preset(settings.iot_schema))
        finally:
            await client.close()

    asyncio.run(run())


class BatchCounts:
    """The foreachBatch counts of the last few batches, until their progress line takes them (bounded)."""

    def __init__(self, keep: int = 64) -> None:
        self.keep = keep
        self.counts: dict[int, dict[str, Any]] = {}

    def record(self, batch_id: int, counts: dict[str, Any]) -> None:
        self.counts[batch_id] = counts
        while len(self.counts) > self.keep:
            del self.counts[min(self.counts)]

    def take(self, batch_id: int) -> dict[str, Any]:
        return self.counts.pop(batch_id, {})


def progress_fields(progress: Any, counts: dict[str, Any]) -> dict[str, Any]:
    """The fields of the per-batch progress line, from Spark's ``StreamingQueryProgress`` and our counts.

    Rows in, state rows and durations are Spark's own figures; indexed, dead letters (and any other count
    the batch function recorded, e.g. alerts) are the job's.
    """
    state = progress.stateOperators or []
    return {"batch": progress.batchId, "rows_in": progress.numInputRows,
            **{k: v for k, v in counts.items() if k != "messages"},
            "state_rows": sum(op.numRowsTotal for op in state),
            "state_bytes": sum(op.memoryUsedBytes for op in state),
            "duration_ms": (progress.durationMs or {}).get("triggerExecution"),
            "durations_ms": dict(progress.durationMs or {}),
            "rows_per_s": round(progress.processedRowsPerSecond or 0.0, 1),
            "end_offsets": {s.description: parsed(s.endOffset) for s in progress.sources}}


def parsed(offset: Any) -> Any:
    """A source's offset as the JSON it is (Kafka: {topic: {partition: offset}}), else as given."""
    try:
        return json.loads(offset) if isinstance(offset, str) else offset
    except ValueError:
        return offset


def progress_logger(counts: BatchCounts) -> Any:  # -> pyspark StreamingQueryListener
    """A listener that emits one ``progress`` line per micro-batch (Spark calls it on the driver)."""
    from pyspark.sql.streaming import StreamingQueryListener

    class ProgressLogger(StreamingQueryListener):
        def onQueryStarted(self, event: Any) -> None:
            pass

        def onQueryProgress(self, event: Any) -> None:
            progress = event.progress
            emit("progress", **progress_fields(progress, counts.take(progress.batchId)))

        def onQueryIdle(self, event: Any) -> None:
            pass

        def onQueryTerminated(self, event: Any) -> None:
            pass

    return ProgressLogger()


class DriverWebhook:
    """The agents' :class:`agents.webhook.Webhook` (same queue, concurrency, breaker and drop rule, from the same
    IOT_WEBHOOK_* settings when given) on an event loop of its own thread."""

    def __init__(self, url: str, settings: Any = None) -> None:
        import threading

        from agents.webhook import Webhook

        self.outcomes: dict[str, int] = {}
        self.loop = asyncio.new_event_loop()
        self.hook = (Webhook(url, on_result=self._count) if settings is None
                     else Webhook.from_settings(settings, on_result=self._count))
        self.thread = threading.Thread(target=self.loop.run_forever, name="webhook", daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.hook.start(), self.loop).result(30)

    def _count(self, outcome: str) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1

    def submit(self, alerts: list[dict[str, Any]]) -> None:
        """Queue the alerts (never blocks; a full queue drops and counts, as in the worker)."""
        for alert in alerts:
            self.loop.call_soon_threadsafe(self.hook.submit, alert)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.hook.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def batch_writer(settings: config.Settings, counts: BatchCounts | None = None,
                 webhook: DriverWebhook | None = None,
                 fences: Any = None):  # -> Callable[[DataFrame, int], None]
    """The ``foreachBatch`` function over the state function's rows: index on executors, then dead letters,
    alerts and live records to Kafka (and the webhook), before Spark commits the batch (so at least once), and
    one log line;
    ``fences`` (:class:`agents.spark.fences.DriverFences`) keeps the fences unchanged while the batch runs."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    from agents.spark.worker import WRITE_COUNTS, WRITE_SCHEMA, JobContext, write_function

    function = write_function(JobContext.from_settings(settings))

    def write(batch: Any, batch_id: int) -> None:
        started = time.perf_counter()
        if fences is not None:
            fences.hold()  # the state function runs below: one set of fences for the whole batch
        out = batch.mapInPandas(function, WRITE_SCHEMA).persist(StorageLevel.MEMORY_AND_DISK)
        try:
            stats = out.where(F.col("kind") == "stats").agg(
                *(F.coalesce(F.sum(c), F.lit(0)).alias(c) for c in WRITE_COUNTS)).first().asDict()
            if stats["dead"] or stats["alerts"] or stats["live"]:  # after every Elasticsearch write of the batch
                (out.where(F.col("kind").isin("dlq", "alert", "live")).select("topic", "key", "value", "partition")
                 .write.format("kafka").option("kafka.bootstrap.servers", settings.kafka_bootstrap).save())
            if webhook is not None and stats["alerts"]:
                webhook.submit([json.loads(r.value) for r in out.where(F.col("kind") == "alert").select("value")
                                .collect()])
        finally:
            out.unpersist()
            if fences is not None:
                fences.release()  # changes read meanwhile: in force from the next batch on
        emit("batch", batch=batch_id, seconds=round(time.perf_counter() - started, 3), **stats)
        if counts is not None:
            counts.record(batch_id, stats)

    return write


def tracks(spark: Any, settings: config.Settings, source: Any) -> Any:
    """Kafka rows -> per-track state function (applyInPandasWithState) -> its rows, see :mod:`agents.spark.worker`."""
    from pyspark.sql import functions as F
    from pyspark.sql.streaming.state import GroupStateTimeout

    from agents.spark.fences import snapshot_path
    from agents.spark.worker import STATE_OUTPUT_SCHEMA, STATE_SCHEMA, JobContext, group_function, group_key_path

    preset = load_preset(settings.iot_schema)
    track = F.coalesce(F.trim(F.get_json_object(F.col("value").cast("string"), group_key_path(preset.track))),
                       F.lit(""))
    rows = source.select("key", "value", "topic", "partition", "offset", track.alias("track"))
    # Always the processing-time timeout, so IOT_TRACK_IDLE_TIMEOUT can change (0 included) on one checkpoint.
    return rows.groupBy("track").applyInPandasWithState(
        group_function(JobContext.from_settings(settings, snapshot_path(checkpoint_dir(settings)))),
        STATE_OUTPUT_SCHEMA, STATE_SCHEMA, "update",
        GroupStateTimeout.ProcessingTimeTimeout)


def start(spark: Any, settings: config.Settings, args: argparse.Namespace,
          webhook: DriverWebhook | None = None, fences: Any = None) -> Any:
    """Start the streaming query (Kafka source -> track state -> foreachBatch), with its per-batch progress line."""
    counts = BatchCounts()
    spark.streams.addListener(progress_logger(counts))
    reader = (spark.readStream.format("kafka")
              .option("kafka.bootstrap.servers", settings.kafka_bootstrap)
              .option("subscribe", settings.iot_topic)
              .option("startingOffsets", args.starting_offsets)
              .option("failOnDataLoss", "false"))
    if args.max_offsets_per_trigger:
        reader = reader.option("maxOffsetsPerTrigger", str(args.max_offsets_per_trigger))
    writer = (tracks(spark, settings, reader.load()).writeStream
              .queryName(f"{settings.iot_app_id}-spark")
              .outputMode("update")
              .option("checkpointLocation", checkpoint_dir(settings))
              .foreachBatch(batch_writer(settings, counts, webhook, fences)))
    writer = writer.trigger(availableNow=True) if args.once else writer.trigger(processingTime=args.trigger_interval)
    return writer.start()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = config.from_args(args, component="spark")
        load_preset(settings.iot_schema)
        from agents.spark.worker import JobContext
        JobContext.from_settings(settings).pipeline()  # bad preset/geofences/time zone: fail before Spark starts
    except ValueError as exc:
        print(f"spark_job: {exc}", file=sys.stderr)
        return 2
    from pyspark import SparkConf
    from pyspark.sql import SparkSession

    ensure_template(settings)
    from geoiot.topics import TopicsError
    try:
        made = ensure_live_topic(settings)
    except TopicsError as exc:
        print(f"spark_job: {exc}", file=sys.stderr)
        return 2
    emit(f"topic_{made.status}", topic=made.name, partitions=made.partitions, problems=list(made.problems))
    level = os.environ.get("SPARK_LOG_LEVEL", "WARN")
    conf = SparkConf()
    for key, value in {**PROMETHEUS_CONF, **STATE_CONF}.items():
        conf.setIfMissing(key, value)
    spark = (SparkSession.builder.appName(f"{settings.iot_app_id}-spark").config(conf=conf)
             .config("spark.log.level", level).getOrCreate())
    spark.sparkContext.setLogLevel(level)
    kafka_source = use_restartable_kafka_source(spark)
    emit("start", topic=settings.iot_topic, index=settings.iot_index, dlq=settings.iot_dlq_topic,
         checkpoint=checkpoint_dir(settings), once=args.once, master=spark.sparkContext.master,
         spark=spark.version, kafka_source=kafka_source, ui=spark.sparkContext.uiWebUrl)
    webhook = DriverWebhook(settings.iot_webhook_url, settings) if settings.iot_webhook_url else None
    from agents.spark.fences import DriverFences, snapshot_path
    fences = DriverFences(settings, snapshot_path(checkpoint_dir(settings)))
    fences.start()  # the whole fence topic, before the first micro-batch
    query = start(spark, settings, args, webhook, fences)
    try:
        query.awaitTermination()
    except KeyboardInterrupt:
        query.stop()
    finally:
        if webhook is not None:
            webhook.stop()
        fences.stop()
    last = query.lastProgress or {}
    emit("stop", last_batch=last.get("batchId"), webhook=webhook.outcomes if webhook else None)
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
