"""Sustained events/s of the Spark job against the Faust agents, on the same generated events, same run.

    .venv/bin/python -m bench.spark_vs_faust --tracks 1000 --points 1000   # 1,000,000 events

Steps: ``python -m replay generate`` -> ``python -m replay constant --max-rate`` into a fresh topic
(once); then, one after the other so they do not share the 2 cores, a Faust worker into index A and
the Spark job (``--once``, availableNow, capped batches) into index B. Each path's rate is measured
on Elasticsearch from its first indexed document to its last (start-up excluded), by polling the
alias count. Topics and indices are deleted at the end. Needs the local stack (infra/local/stack up).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from elasticsearch import Elasticsearch

from agents import spark_launch
from geoiot import config, topics

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(es: Elasticsearch, index: str, expect: int, proc: subprocess.Popen[bytes], timeout: float) -> dict:
    """Poll the alias count; rate between the first sample that saw documents and the one that saw all."""
    first: tuple[float, int] | None = None
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
        if count >= expect:
            break
        if proc.poll() is not None and proc.returncode != 0:
            raise SystemExit(f"process exited with {proc.returncode} at {count} documents")
        time.sleep(0.25)
    else:
        raise SystemExit(f"{index}: {count}/{expect} documents after {timeout}s")
    assert first is not None
    seconds = now - first[0]
    return {"documents": count, "seconds": round(seconds, 2), "events_per_s": round((count - first[1]) / seconds, 1)}


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
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--keep", action="store_true", help="keep topic and indices")
    args = parser.parse_args()
    settings = config.load()
    events = args.tracks * args.points
    tag = uuid.uuid4().hex[:8]
    topic, index_f, index_s = f"bench-spark-{tag}", f"bench-spark-faust-{tag}", f"bench-spark-spark-{tag}"
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", KAFKA_BOOTSTRAP=settings.kafka_bootstrap,
               ES_URL=settings.es_url, IOT_TOPIC=topic, IOT_DLQ_TOPIC=f"{topic}-dlq", IOT_ALERTS_TOPIC=f"{topic}-alerts")
    es = Elasticsearch(settings.es_hosts, request_timeout=30)
    work = Path(tempfile.mkdtemp(prefix="bench-spark-"))
    logs = ROOT / "test-output"
    logs.mkdir(exist_ok=True)
    result: dict = {"events": events, "topic_partitions": settings.iot_partitions, "bulk_size": settings.iot_bulk_size}
    try:
        data = work / "events.csv"
        subprocess.run([sys.executable, "-m", "replay", "generate", "--tracks", str(args.tracks), "--points",
                        str(args.points), "--seed", "1", "--out", str(data)], env=env, check=True)
        started = time.monotonic()
        subprocess.run([sys.executable, "-m", "replay", "constant", "--max-rate", "--quiet", "--topic", topic, str(data)],
                       env=env, check=True, stdout=subprocess.DEVNULL)
        result["produce_seconds"] = round(time.monotonic() - started, 1)

        with open(logs / "bench-spark-faust.log", "wb") as out:
            faust = subprocess.Popen([sys.executable, "-m", "faust", "-A", "agents.app", "worker", "-l", "warn"],
                                     cwd=ROOT, env=dict(env, IOT_INDEX=index_f, IOT_APP_ID=f"bench-faust-{tag}",
                                                        WORKER_WEB_PORT=str(free_port())),
                                     stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            result["faust"] = measure(es, index_f, events, faust, args.timeout)
        finally:
            stop(faust)

        conf = {"spark.sql.execution.arrow.maxRecordsPerBatch": "10000", "spark.ui.enabled": "false"}
        job = ["--once", "--max-offsets-per-trigger", str(args.max_offsets_per_trigger)]
        result["spark_settings"] = {"master": os.environ.get("SPARK_MASTER", "local[2]"),
                                    "driver_memory": os.environ.get("SPARK_DRIVER_MEMORY", "1g"),
                                    "trigger": "availableNow", "maxOffsetsPerTrigger": args.max_offsets_per_trigger,
                                    **conf}
        spark_env = spark_launch.environment(dict(env, IOT_INDEX=index_s, IOT_APP_ID=f"bench-spark-{tag}",
                                                  SPARK_CHECKPOINT_DIR=str(work / "checkpoint")))
        with open(logs / "bench-spark-spark.log", "wb") as out:
            spark = subprocess.Popen(spark_launch.command(job, spark_launch.connector_jars(), conf=conf), cwd=ROOT,
                                     env=spark_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            result["spark"] = measure(es, index_s, events, spark, args.timeout)
        finally:
            spark.wait(120) if spark.poll() is None else None
            stop(spark)
        result["ratio_spark_over_faust"] = round(result["spark"]["events_per_s"] / result["faust"]["events_per_s"], 3)
        print(json.dumps(result, indent=2))
        return 0
    finally:
        if not args.keep:
            es.options(ignore_status=404).indices.delete(index=f"{index_f}*,{index_s}*", expand_wildcards="all")
            es.options(ignore_status=404).indices.delete_index_template(name=index_f)
            es.options(ignore_status=404).indices.delete_index_template(name=index_s)
            asyncio.run(topics.delete_topics(settings.kafka_bootstrap, [
                topic, f"{topic}-dlq", f"{topic}-alerts", f"bench-faust-{tag}-tracks-changelog"]))
        es.close()


if __name__ == "__main__":
    sys.exit(main())
