"""Sustained events/s of the Spark job against the Faust agents, on the same generated events, same run.

    .venv/bin/python -m bench.spark_vs_faust --tracks 1000 --points 1000   # 1,000,000 events
    SPARK_PYTHON=<venv with pyspark 3.5.x>/bin/python .venv/bin/python -m bench.spark_vs_faust ...  # other line

Steps: ``python -m replay generate`` -> ``python -m replay constant --max-rate`` into a fresh topic
(once); then, one after the other so they do not share the 2 cores, a Faust worker into index A and
the Spark job (``--once``, availableNow, capped batches) into index B, both with the full analytics
(per-track state: speed, heading, distance; geofence alerts; latest positions). Each path's rate is
measured on Elasticsearch from its first indexed document to its last (start-up excluded), by polling
the alias count; the CPU each used in that window is read from /proc for the whole process tree (Faust's
one process; spark-submit's JVM and its Python workers) and for Elasticsearch and Kafka. At the end both
indices' documents with motion and both alerts topics are counted (the same analytics must give the same
numbers). Topics and indices are deleted at the end. Needs the local stack (infra/local/stack up).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from elasticsearch import Elasticsearch

from agents.spark import launch as spark_launch
from bench.procstat import cpu_seconds, service_pids
from geoiot import config, topics
from geoiot.documents import DISTANCE, latest_index
from testkit.processes import free_port

ROOT = Path(__file__).resolve().parent.parent


def tree_cpu(root: int) -> float:
    """CPU seconds of a process and all its descendants (live ones, plus the children they reaped)."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(stat.parent.name)
        parents[pid] = int(fields[1])
        times[pid] = sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")  # utime stime cutime cstime
    total = 0.0
    for pid, cpu in times.items():
        p = pid
        while p > 1 and p != root:
            p = parents.get(p, 0)
        if p == root:
            total += cpu
    return total


def cpu_now(proc: subprocess.Popen[bytes]) -> dict[str, float]:
    return {"path": tree_cpu(proc.pid), **{name: cpu_seconds(pid) for name, pid in service_pids().items()}}


def measure(es: Elasticsearch, index: str, expect: int, proc: subprocess.Popen[bytes], timeout: float) -> dict:
    """Poll the alias count; rate between the first sample that saw documents and the one that saw all, and
    the CPU seconds (cores) the path, Elasticsearch and Kafka used in between."""
    first: tuple[float, int] | None = None
    cpu_first: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    count = 0
    while time.monotonic() < deadline:
        try:
            count = es.count(index=index)["count"] if es.indices.exists_alias(name=index) else 0
        except Exception:
            count = 0
        now = time.monotonic()
        if count and first is None:
            first = (now, count)
            cpu_first = cpu_now(proc)
        if count >= expect:
            cpu_last = cpu_now(proc)
            break
        if proc.poll() is not None and proc.returncode != 0:
            raise SystemExit(f"process exited with {proc.returncode} at {count} documents")
        time.sleep(0.25)
    else:
        raise SystemExit(f"{index}: {count}/{expect} documents after {timeout}s")
    assert first is not None
    seconds = now - first[0]
    cpu = {name: round(cpu_last[name] - cpu_first.get(name, 0.0), 1) for name in cpu_last}
    return {"documents": count, "seconds": round(seconds, 2), "events_per_s": round((count - first[1]) / seconds, 1),
            "cpu_seconds": cpu, "cores": {name: round(c / seconds, 2) for name, c in cpu.items()},
            "load_average": os.getloadavg()}


def analytics(es: Elasticsearch, index: str, bootstrap: str, alerts_topic: str) -> dict:
    """What the full analytics produced: documents with motion, latest positions, alerts in the topic."""
    es.indices.refresh(index=f"{index},{latest_index(index)}")
    with_motion = es.count(index=index, query={"exists": {"field": DISTANCE}})["count"]
    latest = es.count(index=latest_index(index))["count"]
    return {"documents_with_motion": with_motion, "latest_positions": latest,
            "alerts": alerts_count(bootstrap, alerts_topic)}


def alerts_count(bootstrap: str, topic: str) -> int:
    """Messages in a topic (sum of its partitions' end offsets; the topic is fresh), 0 when it does not exist."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    async def count() -> int:
        async with topics.admin_client(bootstrap) as admin:
            found = await topics.describe(admin, [topic])
        if topic not in found:
            return 0
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
        await consumer.start()
        try:
            parts = [TopicPartition(topic, p) for p in range(found[topic].partitions)]
            consumer.assign(parts)
            return sum((await consumer.end_offsets(parts)).values())
        finally:
            try:
                await consumer.stop()
            except asyncio.CancelledError:  # aiokafka's coordinator task on a quick stop; the count is read
                pass

    return asyncio.run(count())


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracks", type=int, default=1000)
    parser.add_argument("--points", type=int, default=1000)
    parser.add_argument("--max-offsets-per-trigger", type=int, default=100_000)
    parser.add_argument("--jfk-share", type=float, default=0.1,
                        help="share of tracks driving through the JFK fence (enter/exit alerts)")
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--keep", action="store_true", help="keep topic and indices")
    args = parser.parse_args()
    settings = config.load()
    events = args.tracks * args.points
    tag = uuid.uuid4().hex[:8]
    topic, index_f, index_s = f"bench-spark-{tag}", f"bench-spark-faust-{tag}", f"bench-spark-spark-{tag}"
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", KAFKA_BOOTSTRAP=settings.kafka_bootstrap,
               ES_URL=settings.es_url, IOT_TOPIC=topic, IOT_DLQ_TOPIC=f"{topic}-dlq")
    alerts_f, alerts_s = f"{topic}-alerts-faust", f"{topic}-alerts-spark"
    es = Elasticsearch(settings.es_hosts, request_timeout=30)
    work = Path(tempfile.mkdtemp(prefix="bench-spark-"))
    logs = ROOT / "test-output"
    logs.mkdir(exist_ok=True)
    result: dict = {"events": events, "topic_partitions": settings.iot_partitions, "bulk_size": settings.iot_bulk_size}
    try:
        data = work / "events.csv"
        subprocess.run([sys.executable, "-m", "replay", "generate", "--tracks", str(args.tracks), "--points",
                        str(args.points), "--seed", "1", "--jfk-share", str(args.jfk_share), "--out", str(data)],
                       env=env, check=True)
        started = time.monotonic()
        subprocess.run([sys.executable, "-m", "replay", "constant", "--max-rate", "--quiet", "--topic", topic, str(data)],
                       env=env, check=True, stdout=subprocess.DEVNULL)
        result["produce_seconds"] = round(time.monotonic() - started, 1)

        with open(logs / "bench-spark-faust.log", "wb") as out:
            faust = subprocess.Popen([sys.executable, "-m", "faust", "-A", "agents.app", "worker", "-l", "warn"],
                                     cwd=ROOT, env=dict(env, IOT_INDEX=index_f, IOT_APP_ID=f"bench-faust-{tag}",
                                                        IOT_ALERTS_TOPIC=alerts_f,
                                                        WORKER_WEB_PORT=str(free_port())),
                                     stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            result["faust"] = measure(es, index_f, events, faust, args.timeout)
        finally:
            stop(faust)
        print(json.dumps({"faust": result["faust"]}), flush=True)

        conf = {"spark.sql.execution.arrow.maxRecordsPerBatch": "10000", "spark.ui.enabled": "false"}
        job = ["--once", "--max-offsets-per-trigger", str(args.max_offsets_per_trigger)]
        result["spark_settings"] = {"master": os.environ.get("SPARK_MASTER", "local[2]"),
                                    "driver_memory": os.environ.get("SPARK_DRIVER_MEMORY", "1g"),
                                    "trigger": "availableNow", "maxOffsetsPerTrigger": args.max_offsets_per_trigger,
                                    **conf}
        spark_env = spark_launch.environment(dict(env, IOT_INDEX=index_s, IOT_APP_ID=f"bench-spark-{tag}",
                                                  IOT_ALERTS_TOPIC=alerts_s,
                                                  SPARK_CHECKPOINT_DIR=str(work / "checkpoint")))
        with open(logs / "bench-spark-spark.log", "wb") as out:
            spark = subprocess.Popen(spark_launch.command(job, spark_launch.connector_jars(), conf=conf), cwd=ROOT,
                                     env=spark_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            result["spark"] = measure(es, index_s, events, spark, args.timeout)
        finally:
            spark.wait(120) if spark.poll() is None else None
            stop(spark)
        result["faust"]["analytics"] = analytics(es, index_f, settings.kafka_bootstrap, alerts_f)
        result["spark"]["analytics"] = analytics(es, index_s, settings.kafka_bootstrap, alerts_s)
        result["spark"]["version"] = spark_launch.spark_version()
        result["ratio_spark_over_faust"] = round(result["spark"]["events_per_s"] / result["faust"]["events_per_s"], 3)
        print(json.dumps(result, indent=2))
        return 0
    finally:
        if not args.keep:
            es.options(ignore_status=404).indices.delete(index=f"{index_f}*,{index_s}*", expand_wildcards="all")
            for name in (latest_index(index_f), latest_index(index_s)):
                es.options(ignore_status=404).indices.delete_index_template(name=name)
            es.options(ignore_status=404).indices.delete_index_template(name=index_f)
            es.options(ignore_status=404).indices.delete_index_template(name=index_s)
            asyncio.run(topics.delete_topics(settings.kafka_bootstrap, [
                topic, f"{topic}-dlq", alerts_f, alerts_s, f"bench-faust-{tag}-tracks-changelog"]))
        es.close()


if __name__ == "__main__":
    sys.exit(main())
