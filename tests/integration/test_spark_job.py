"""The Spark job against real Kafka, Elasticsearch and a local Spark: same documents, latest positions, dead
letters and alerts as the Faust agents, also when the job is killed mid-stream and restarted.

One generated input (``python -m replay generate`` with tracks crossing the JFK fence, produced with
``python -m replay constant --max-rate``, then re-sent duplicates, out-of-order reports and a few invalid raw
messages) goes through the Faust worker into one index and through the Spark job into another. The Spark
job is capped at a few records per micro-batch, SIGKILLed while a batch is in flight (planned in
``offsets/N``, not yet in ``commits/N``: the crash window Spark's write-ahead log is for), and restarted from
its checkpoint (offsets and the track states), which must redo exactly that batch. The worker's run is the
uninterrupted one: every field both write must be equal (only ``ingested_at`` differs), and every alert the
worker sent must be in the Spark job's alerts topic (a duplicate of the redone batch is allowed). The live
layer (:mod:`geoiot.live`) the Spark job feeds, read as a mirror reads it (newest event time per track),
must hold the worker's newest document of every track (its ``_latest`` index), each on the track's source
partition, whatever the kill made the job send twice.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import random
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from conftest import ROOT, unique_name

pytest.importorskip("pyspark", reason="pyspark is not installed (pip install -e '.[spark]')")

from agents.spark import launch as spark_launch  # noqa: E402
from geoiot import live, topics  # noqa: E402
from geoiot.documents import INGESTED_AT, latest_index  # noqa: E402
from geoiot.schema import load_preset  # noqa: E402
from testkit.processes import free_port

pytestmark = [pytest.mark.spark, pytest.mark.integration, pytest.mark.slow]

TRACKS, POINTS = 6, 50  # 300 valid reports, 3 partitions
INVALID = [b"not json", b"[1, 2]", json.dumps({"taxiId": "x", "longitude": 1, "latitude": 2}).encode(),
           json.dumps({"taxiId": "y", "observationTime": "2013-01-01 00:00:00", "longitude": 200,
                       "latitude": 40}).encode()]
BATCH_CAP = 100  # records per micro-batch: the input takes several batches, so a kill lands mid-stream
NOT_COMPARED = {INGESTED_AT}
DUPLICATES, LATE = 12, 12  # re-sent reports, and reports re-sent later with an earlier time (out of order)
MANHATTAN, JFK = (-73.9855, 40.7580), (-73.7781, 40.6413)  # outside and inside the shipped JFK fence
RETURN_TRIP = [MANHATTAN, JFK]  # out of the fence and back in: every track


@pytest.fixture(scope="module")
def jars() -> str:
    return spark_launch.connector_jars()


def run(cmd: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{cmd} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


async def produce_input(settings: Any, topic: str, tmp: Path, env: dict[str, str]) -> None:
    data = tmp / "input.csv"
    run([sys.executable, "-m", "replay", "generate", "--tracks", str(TRACKS), "--points", str(POINTS),
         "--seed", "2", "--jfk-share", "0.5", "--out", str(data)], env)
    run([sys.executable, "-m", "replay", "constant", "--max-rate", "--topic", topic, "--quiet", str(data)], env)
    sent = await read_records(settings, topic, TRACKS * POINTS)
    rng = random.Random(7)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await producer.start()
    try:
        for partition, key, value in rng.sample(sent, DUPLICATES):  # duplicates, to the track's partition
            await producer.send_and_wait(topic, value, key=key, partition=partition)
        for partition, key, value in rng.sample(sent, LATE):  # an earlier time, sent after the later ones
            event = json.loads(value)
            t = event["observationTime"]  # epoch ms as replay sends it, or a time text
            event["observationTime"] = (t - 500 if isinstance(t, int) else (datetime.fromisoformat(t)
                                        - timedelta(milliseconds=500)).isoformat(sep=" ", timespec="milliseconds"))
            event["longitude"] += 0.0001
            await producer.send_and_wait(topic, json.dumps(event).encode(), key=key, partition=partition)
        last: dict[bytes, tuple[int, dict[str, Any]]] = {}
        for partition, key, value in sent:
            event = json.loads(value)
            if key not in last or event["observationTime"] > last[key][1]["observationTime"]:
                last[key] = (partition, event)
        for key, (partition, event) in sorted(last.items()):  # out of the fence and back: exits and enters
            for minutes, (lon, lat) in enumerate(RETURN_TRIP, 1):
                trip = dict(event, observationTime=event["observationTime"] + minutes * 60_000, longitude=lon,
                            latitude=lat)
                await producer.send_and_wait(topic, json.dumps(trip).encode(), key=key, partition=partition)
        for n, raw in enumerate(INVALID):
            await producer.send_and_wait(topic, raw, key=b"bad", partition=n % 3)
    finally:
        await producer.stop()


async def read_records(settings: Any, topic: str, expect: int, timeout: float = 30) -> list[tuple[int, bytes, bytes]]:
    """(partition, key, value) of the first ``expect`` messages of ``topic``."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False, group_id=None)
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or {0, 1, 2}]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        out: list[tuple[int, bytes, bytes]] = []
        deadline = time.monotonic() + timeout
        while len(out) < expect and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            out += [(tp.partition, r.key, r.value) for tp, records in batch.items() for r in records]
        return out
    finally:
        await consumer.stop()


async def read_topic(settings: Any, topic: str, expect: int, timeout: float = 30) -> list[dict[str, Any]]:
    """Every message of ``topic`` (at least ``expect`` of them, waiting up to ``timeout``), as JSON."""
    return [json.loads(value) for _, _, value in await read_records(settings, topic, expect, timeout)]


async def all_docs(es: Any, index: str) -> dict[str, tuple[str, dict[str, Any]]]:
    await es.indices.refresh(index=index)
    assert (await es.count(index=index))["count"] <= 10_000
    resp = await es.search(index=index, size=10_000, query={"match_all": {}})
    return {h["_id"]: (h["_index"], h["_source"]) for h in resp["hits"]["hits"]}


async def wait_count(es: Any, index: str, expect: int, proc: subprocess.Popen[bytes], log: Path,
                     timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    count = -1
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the Faust worker exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        if await es.indices.exists_alias(name=index):
            await es.indices.refresh(index=index)
            count = (await es.count(index=index))["count"]
            if count >= expect:
                return
        await asyncio.sleep(0.5)
    pytest.fail(f"{index} has {count} documents after {timeout}s, expected {expect}:\n{log.read_text()[-4000:]}")


def spark_env(python_env: dict[str, str], settings: Any, topic: str, index: str, dlq: str, alerts: str,
              ck: Path) -> dict[str, str]:
    env = spark_launch.environment(python_env)
    env.update(KAFKA_BOOTSTRAP=settings.kafka_bootstrap, ES_URL=settings.es_url, IOT_TOPIC=topic, IOT_INDEX=index,
               IOT_DLQ_TOPIC=dlq, IOT_ALERTS_TOPIC=alerts, SPARK_CHECKPOINT_DIR=str(ck),
               IOT_APP_ID=unique_name("spark"), IOT_LATEST_TOPIC=unique_name("spark-live"))
    return env


async def read_all(settings: Any, topic: str, partitions: int, timeout: float = 30) -> list[tuple[int, bytes, bytes]]:
    """(partition, key, value) of every message of ``topic`` now, in each partition's order."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False, group_id=None)
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        ends = await consumer.end_offsets(parts)
        out: list[tuple[int, bytes, bytes]] = []
        deadline = time.monotonic() + timeout
        behind = {tp for tp, end in ends.items() if end > 0}
        while behind:
            assert time.monotonic() < deadline, f"{topic}: not read to its end in {timeout}s"
            batch = await consumer.getmany(timeout_ms=500)
            out += [(tp.partition, r.key, r.value) for tp, records in batch.items() for r in records]
            behind = {tp for tp in behind if tp not in batch or batch[tp][-1].offset + 1 < ends[tp]}
        return out
    finally:
        await consumer.stop()


async def mirror(settings: Any, topic: str, partitions: int) -> dict[str, tuple[int, dict[str, Any]]]:
    """track -> (partition, document) of the live topic read as a mirror reads it: the newest event time wins."""
    time_field = load_preset(settings.iot_schema).time
    held: dict[str, tuple[int, dict[str, Any]]] = {}
    for partition, key, value in await read_all(settings, topic, partitions):
        doc = live.document(value, time_field)
        seen = held.get(live.track_of(key))
        if live.newer(doc[time_field], None if seen is None else seen[1][time_field]):
            held[live.track_of(key)] = (partition, doc)
    return held


def batch_ids(folder: Path) -> list[int]:
    """The batch ids of one checkpoint log folder (offsets/ or commits/); temp files are not batches."""
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.is_dir() else []


def in_flight(ck: Path) -> int | None:
    """The batch planned but not committed, once at least one batch is committed (else None)."""
    planned, committed = batch_ids(ck / "offsets"), batch_ids(ck / "commits")
    if committed and planned and planned[-1] > committed[-1]:
        return planned[-1]
    return None


def dump_checkpoint(ck: Path) -> str:
    """Every file of a checkpoint with its size and text, for the person reading a failure."""
    out = []
    for path in sorted(p for p in ck.rglob("*") if p.is_file()):
        text = path.read_bytes()[:2000].decode("utf-8", "replace")
        out.append(f"== {path.relative_to(ck)} ({path.stat().st_size} bytes)\n{text}")
    return "\n".join(out)


async def kill_in_flight(spark: subprocess.Popen[bytes], ck: Path, log: Path, timeout: float = 180) -> int:
    """SIGKILL the job's process group while a batch is in flight; returns that batch's id.

    The group is frozen (SIGSTOP) first and the checkpoint read again, so the kill lands in the
    window for certain: if the commit won the race, the job is resumed and the next batch waited for.
    """
    deadline = time.monotonic() + timeout
    while True:
        assert spark.poll() is None, f"the Spark job exited before a batch was in flight:\n{log.read_text()[-4000:]}"
        assert time.monotonic() < deadline, f"no batch in flight after {timeout}s:\n{log.read_text()[-4000:]}"
        if in_flight(ck) is not None:
            os.killpg(spark.pid, signal.SIGSTOP)
            batch = in_flight(ck)
            if batch is not None:
                os.killpg(spark.pid, signal.SIGKILL)
                spark.wait(30)
                return batch
            os.killpg(spark.pid, signal.SIGCONT)
        await asyncio.sleep(0.05)


def batches(log: Path, event: str = "batch") -> list[dict[str, Any]]:
    lines = [line for line in log.read_text().splitlines() if line.startswith("{") and '"spark_job"' in line]
    return [e for e in map(json.loads, lines) if e["event"] == event]


async def test_spark_matches_faust_and_resumes_exactly_after_a_kill(
        stack: Any, es: Any, kafka_admin: Any, new_topic: Any, new_index: Any, python_env: dict[str, str],
        output_dir: Path, tmp_path: Path, jars: str) -> None:
    settings = stack
    source = await new_topic("spark-src", partitions=3)
    dlq_faust, dlq_spark = await new_topic("spark-dlq-f"), await new_topic("spark-dlq-s")
    alerts_faust, alerts_spark = await new_topic("spark-alerts-f"), await new_topic("spark-alerts-s")
    index_faust, index_spark = new_index("spark-faust"), new_index("spark-spark")
    await produce_input(settings, source, tmp_path, python_env)
    valid = TRACKS * POINTS + LATE + TRACKS * len(RETURN_TRIP)  # documents: duplicates overwrite themselves

    # The Faust path, in the background while Spark runs.
    faust_log = output_dir / "spark-test-faust.log"
    faust_env = dict(python_env, KAFKA_BOOTSTRAP=settings.kafka_bootstrap, ES_URL=settings.es_url,
                     IOT_TOPIC=source, IOT_INDEX=index_faust, IOT_DLQ_TOPIC=dlq_faust, IOT_ALERTS_TOPIC=alerts_faust,
                     IOT_APP_ID=unique_name("faust"), WORKER_WEB_PORT=str(free_port()),
                     IOT_ES_LATEST="true")  # the latest positions in Elasticsearch, compared with Spark's
    with open(faust_log, "wb") as out:
        faust = subprocess.Popen([sys.executable, "-m", "faust", "-A", "agents.app", "worker", "-l", "info"],
                                 cwd=ROOT, env=faust_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        ck = tmp_path / "checkpoint"
        env = spark_env(python_env, settings, source, index_spark, dlq_spark, alerts_spark, ck)
        job = ["--once", "--max-offsets-per-trigger", str(BATCH_CAP)]
        first_log, second_log = output_dir / "spark-test-run1.log", output_dir / "spark-test-run2.log"

        # Run 1: killed (SIGKILL, no clean shutdown) while a batch after the first is in flight.
        with open(first_log, "wb") as out:
            spark = subprocess.Popen(spark_launch.command(job, jars), cwd=ROOT, env=env, stdout=out,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        try:
            killed_in = await kill_in_flight(spark, ck, first_log)
        finally:
            if spark.poll() is None:
                os.killpg(spark.pid, signal.SIGKILL)
                spark.wait(30)
        (output_dir / "spark-test-checkpoint-at-kill.txt").write_text(dump_checkpoint(ck))
        done = batches(first_log)
        assert done and done[0]["batch"] == 0
        indexed_before = (await es.count(index=index_spark))["count"]
        assert 0 < indexed_before < valid

        # Run 2: resumes from the checkpoint: redoes the batch in flight (no earlier one) and finishes.
        with open(second_log, "wb") as out:
            result = subprocess.run(spark_launch.command(job, jars), cwd=ROOT, env=env, stdout=out,
                                    stderr=subprocess.STDOUT, timeout=300)
        assert result.returncode == 0, second_log.read_text()[-4000:]
        resumed = batches(second_log)
        assert resumed and resumed[0]["batch"] == killed_in, "the restarted job did not redo the batch in flight"
        # One progress line (Spark's StreamingQueryProgress) per micro-batch, with the batch's own counts.
        progress = {p["batch"]: p for p in batches(second_log, "progress")}
        assert {b["batch"]: (b["messages"], b["indexed"]) for b in resumed} == \
               {n: (p["rows_in"], p["indexed"]) for n, p in progress.items()}
        assert sum(b["messages"] for b in done + resumed) >= valid + DUPLICATES + len(INVALID)
        assert max(p["state_rows"] for p in progress.values()) == TRACKS, "one state per track, from the checkpoint"
        assert sum(p["alerts"] for p in progress.values()) >= 0 and all("duration_ms" in p for p in progress.values())

        await es.indices.refresh(index=index_spark)
        assert (await es.count(index=index_spark))["count"] == valid  # exact: nothing lost, nothing doubled

        await wait_count(es, index_faust, valid, faust, faust_log)
    finally:
        os.killpg(faust.pid, signal.SIGTERM)
        try:
            faust.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(faust.pid, signal.SIGKILL)
        try:  # the worker's own changelog topic
            await kafka_admin.delete_topics([f"{faust_env['IOT_APP_ID']}-tracks-changelog"])
        except Exception:
            pass

    # Same documents for every field both paths compute.
    spark_docs, faust_docs = await all_docs(es, index_spark), await all_docs(es, index_faust)
    assert len(spark_docs) == valid and spark_docs.keys() == faust_docs.keys()
    assert any(src["geofences"] for _, src in spark_docs.values()), "the input must cross a geofence"
    for doc_id, (s_index, s_doc) in spark_docs.items():
        f_index, f_doc = faust_docs[doc_id]
        assert s_index.removeprefix(index_spark) == f_index.removeprefix(index_faust)
        assert {k: v for k, v in s_doc.items() if k not in NOT_COMPARED} == \
               {k: v for k, v in f_doc.items() if k not in NOT_COMPARED}, doc_id
    # Motion from the track's state, also across the restart: every report after a track's first has it.
    assert sum(src["distance_m"] is not None for _, src in spark_docs.values()) >= TRACKS * (POINTS - 1)
    assert any(src["speed_mps"] for _, src in spark_docs.values())

    # Same latest position per track (external versions: the out-of-order and re-sent reports only conflict).
    spark_latest, faust_latest = (await all_docs(es, latest_index(index_spark)),
                                  await all_docs(es, latest_index(index_faust)))
    assert len(spark_latest) == TRACKS and spark_latest.keys() == faust_latest.keys()
    for doc_id, (_, s_doc) in spark_latest.items():
        f_doc = faust_latest[doc_id][1]
        assert {k: v for k, v in s_doc.items() if k not in NOT_COMPARED} == \
               {k: v for k, v in f_doc.items() if k not in NOT_COMPARED}, doc_id

    # The live layer: the worker's newest document of every track, on the partition of the track's events.
    live_topic = env["IOT_LATEST_TOPIC"]
    try:
        [made] = (await topics.describe(kafka_admin, [live_topic], ["cleanup.policy"])).values()
        assert (made.partitions, made.configs["cleanup.policy"]) == (3, "compact"), "created with latest_spec"
        held = await mirror(settings, live_topic, made.partitions)
    finally:
        await topics.delete(kafka_admin, [live_topic])
    sources = {key.decode(): partition for partition, key, _ in await read_records(settings, source, TRACKS * POINTS)
               if key != b"bad"}  # replay keys a report by its track
    assert {t: p for t, (p, _) in held.items()} == sources and len(sources) == TRACKS
    def compared(docs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        return {t: {k: v for k, v in doc.items() if k not in NOT_COMPARED} for t, doc in docs.items()}

    assert compared({t: doc for t, (_, doc) in held.items()}) == \
           compared({t: doc for t, (_, doc) in faust_latest.items()}) == \
           compared({t: doc for t, (_, doc) in spark_latest.items()})

    # Same alerts: every transition the uninterrupted worker saw is in the Spark job's topic, nothing else.
    def transitions(msgs: list[dict[str, Any]]) -> set[tuple[Any, ...]]:
        return {(m["track"], m["fence"], m["event"], m["time"], m["lon"], m["lat"]) for m in msgs}

    faust_alerts = await read_topic(settings, alerts_faust, 1)
    assert faust_alerts and {m["event"] for m in faust_alerts} == {"enter", "exit"}, "the input must cross fences"
    spark_alerts = await read_topic(settings, alerts_spark, len(faust_alerts))
    assert transitions(spark_alerts) == transitions(faust_alerts)
    assert len(transitions(faust_alerts)) == len(faust_alerts), "the worker sent each transition once"

    # Same dead letters (the Spark job may repeat the killed batch's: at least once, nothing lost).
    def letters(msgs: list[dict[str, Any]]) -> set[tuple[Any, ...]]:
        return {(m["reason"], m["partition"], m["offset"], m["original"], m["key"]) for m in msgs}

    faust_dead = letters(await read_topic(settings, dlq_faust, len(INVALID)))
    spark_dead = letters(await read_topic(settings, dlq_spark, len(INVALID)))
    assert len(faust_dead) == len(INVALID)
    assert spark_dead == faust_dead


async def test_idle_tracks_end_alike_on_spark_and_in_the_worker(
        stack: Any, es: Any, kafka_admin: Any, new_topic: Any, new_index: Any, python_env: dict[str, str],
        output_dir: Path, tmp_path: Path, jars: str) -> None:
    """IOT_TRACK_IDLE_TIMEOUT: tracks silent for longer than it start afresh on both paths (no motion, no exit)."""
    settings, timeout, tracks = stack, 4, 3
    source = await new_topic("idle-src", partitions=3)
    dlq_f, dlq_s = await new_topic("idle-dlq-f"), await new_topic("idle-dlq-s")
    alerts_f, alerts_s = await new_topic("idle-alerts-f"), await new_topic("idle-alerts-s")
    index_f, index_s = new_index("idle-faust"), new_index("idle-spark")
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await producer.start()

    async def send(seconds: list[int], lon: float, lat: float) -> None:
        for n in range(tracks):
            for s in seconds:
                event = {"taxiId": f"idle{n}", "observationTime": 1_356_998_400_000 + s * 1000,
                         "longitude": lon + s * 1e-5, "latitude": lat, "passengerCount": 1}
                await producer.send_and_wait(source, json.dumps(event).encode(), key=f"idle{n}".encode(), partition=n)

    faust_log = output_dir / "spark-idle-faust.log"
    faust_env = dict(python_env, KAFKA_BOOTSTRAP=settings.kafka_bootstrap, ES_URL=settings.es_url, IOT_TOPIC=source,
                     IOT_INDEX=index_f, IOT_DLQ_TOPIC=dlq_f, IOT_ALERTS_TOPIC=alerts_f, IOT_APP_ID=unique_name("idle"),
                     WORKER_WEB_PORT=str(free_port()), IOT_TRACK_IDLE_TIMEOUT=str(timeout))
    env = spark_env(python_env, settings, source, index_s, dlq_s, alerts_s, tmp_path / "checkpoint")
    env["IOT_TRACK_IDLE_TIMEOUT"] = str(timeout)
    logs = [output_dir / "spark-idle-run1.log", output_dir / "spark-idle-run2.log"]
    with open(faust_log, "wb") as out:
        faust = subprocess.Popen([sys.executable, "-m", "faust", "-A", "agents.app", "worker", "-l", "info"],
                                 cwd=ROOT, env=faust_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        await send([0, 1, 2, 3], *JFK)  # inside the fence
        for part, expect in enumerate((4 * tracks, 5 * tracks)):
            if part == 1:
                await asyncio.sleep(timeout + 2)  # both stored part 0 before: every track is idle now
                await send([10], *MANHATTAN)  # outside: an exit, had the state survived
            await wait_count(es, index_f, expect, faust, faust_log)
            with open(logs[part], "wb") as out:
                result = subprocess.run(spark_launch.command(["--once"], jars), cwd=ROOT, env=env, stdout=out,
                                        stderr=subprocess.STDOUT, timeout=300)
            assert result.returncode == 0, logs[part].read_text()[-4000:]
    finally:
        await producer.stop()
        os.killpg(faust.pid, signal.SIGTERM)
        try:
            faust.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(faust.pid, signal.SIGKILL)
        try:
            await kafka_admin.delete_topics([f"{faust_env['IOT_APP_ID']}-tracks-changelog"])
        except Exception:
            pass
        await topics.delete(kafka_admin, [env["IOT_LATEST_TOPIC"]])
    spark_docs, faust_docs = await all_docs(es, index_s), await all_docs(es, index_f)
    assert len(spark_docs) == 5 * tracks and spark_docs.keys() == faust_docs.keys()
    for doc_id, (_, s_doc) in spark_docs.items():
        assert {k: v for k, v in s_doc.items() if k != INGESTED_AT} == \
               {k: v for k, v in faust_docs[doc_id][1].items() if k != INGESTED_AT}, doc_id
    after = [src for doc_id, (_, src) in spark_docs.items() if doc_id.endswith(":1356998410000")]
    assert len(after) == tracks and all(src["distance_m"] is None for src in after), "idle tracks start afresh"
    # The first report of a track has no transitions, so had a state survived the pause, its exit would be here.
    alerts = {(m["track"], m["event"]) for m in await read_topic(settings, alerts_f, 1, timeout=3)}
    assert alerts == {(m["track"], m["event"]) for m in await read_topic(settings, alerts_s, 1, timeout=3)} == set()
    assert sum(p["ended"] for p in batches(logs[1], "progress")) == tracks
