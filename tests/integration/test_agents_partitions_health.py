"""The worker against the real Kafka and Elasticsearch when the source topic grows and when it cannot make
progress: partitions added under load are consumed (exact counts), ``/healthz`` is 503 while the state is
recovered and while the worker is stalled."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import NewPartitions

from agents.core import state_codec
from agents.core.motion import State
from agents.worker.stream import make_producer
from agents.worker.track_table import changelog_topic
from geoiot import documents, topics
from testkit.worker import ROOT, Worker, all_docs, cleanup_topics, generate, records, wait_count

pytestmark = pytest.mark.integration


def healthz(port: int) -> tuple[int, dict] | None:
    """Status and body of the worker's /healthz; None while nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
    except (OSError, ValueError):
        return None


async def wait_health(worker: Worker, want: str, timeout: float) -> tuple[list[dict], float]:
    """Poll /healthz until one of its problems contains ``want`` (``want=""``: until it is 200); returns
    the bodies seen and the seconds it took."""
    started = time.monotonic()
    seen: list[dict] = []
    while time.monotonic() - started < timeout:
        assert worker.proc.poll() is None, worker.log.read_text()[-3000:]
        answer = healthz(worker.port)
        if answer is not None:
            status, body = answer
            seen.append(body)
            if (not want and status == 200) or (want and status == 503 and any(want in p for p in body["problems"])):
                return seen, time.monotonic() - started
        await asyncio.sleep(0.1)
    raise AssertionError(f"/healthz never showed {want or 'ok'!r} in {timeout}s; last: {seen[-3:]}")


async def end_offsets(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in range(partitions)])
    finally:
        await consumer.stop()
    return {tp.partition: offset for tp, offset in ends.items()}


@pytest.mark.slow
async def test_partitions_added_under_load_are_consumed_within_the_metadata_bound(
        stack, es, kafka_admin, new_topic, agent_env, tmp_path, output_dir):
    """2 -> 4 source partitions while a paced source writes: within IOT_METADATA_MAX_AGE (plus a rebalance)
    the worker holds all four, the changelog has four, and every event of before and after is indexed once."""
    bound = 5.0
    topic = await new_topic("agents-grow", partitions=2)
    env = agent_env(topic, IOT_METADATA_MAX_AGE=str(bound), IOT_BULK_SIZE="200")
    index = env["IOT_INDEX"]
    first = generate(tmp_path, tracks=40, points=500, seed=31)
    second = generate(tmp_path, tracks=40, points=20, seed=32)
    second_recs = [dict(r, taxiId=f"new-{r['taxiId']}") for r in records(second)]
    recs = records(first)
    worker = Worker(env, output_dir / f"{topic}.log").start()
    source = subprocess.Popen([sys.executable, "-m", "replay", "constant", str(first), "--topic", topic,
                               "--rate", "700", "-q"], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while worker.metrics().get('geoiot_agent_indexed_total{sink="elasticsearch"}', 0) < 1000:
            assert time.monotonic() < deadline, "the worker indexed too little"
            await asyncio.sleep(0.2)
        await kafka_admin.create_partitions({topic: NewPartitions(4)})
        added = time.monotonic()
        while True:
            answer = healthz(worker.port)
            if answer is not None and answer[1]["assigned"] == [0, 1, 2, 3]:
                break
            # The bound plus a rebalance on a shared machine; the old worker took minutes (metadata max age).
            assert time.monotonic() - added < bound + 45, f"not all partitions after {bound + 45}s: {answer}"
            await asyncio.sleep(0.2)
        noticed = time.monotonic() - added
        assert source.poll() is None, "the source finished before the partitions were added; the test proves nothing"
        # Events keyed to all four partitions now (a new producer sees them), with the old source still writing.
        await produce(stack.kafka_bootstrap, topic, second_recs)
        assert source.wait(180) == 0, source.stderr.read()
        ends = await end_offsets(stack.kafka_bootstrap, topic, 4)
        assert ends[2] > 0 and ends[3] > 0, ends
        total = len(recs) + len(second_recs)
        assert await wait_count(es, index, total, timeout=240, settle=3) == total
        docs = await all_docs(es, index)
        assert len(docs) == total
        assert {d["_id"] for d in docs} == {documents.doc_id(r["taxiId"], r["observationTime"])
                                            for r in recs + second_recs}
        assert worker.metrics()["geoiot_agent_events_total"] == total
        described = await kafka_admin.describe_topics([changelog_topic(env["IOT_APP_ID"])])
        assert len(described[0]["partitions"]) == 4
        await wait_health(worker, "", 60)
        log = worker.log.read_text()
        assert "KafkaTimeoutError" not in log and "changelog grown" in log
        print(f"partitions noticed after {noticed:.1f}s (IOT_METADATA_MAX_AGE={bound}); {total} of {total} indexed")
    finally:
        if source.poll() is None:
            source.kill()
        worker.stop()
        await cleanup_topics(kafka_admin, [f"{topic}-"])


async def produce(bootstrap: str, topic: str, recs: list[dict]) -> None:
    """Keyed by track, with the default partitioner of a producer started now (it sees every partition)."""
    producer = make_producer(bootstrap)
    await producer.start()
    try:
        futures = [await producer.send(topic, orjson.dumps(r), key=r["taxiId"].encode()) for r in recs]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def fill_changelog(bootstrap: str, topic: str, tracks: int, updates: int) -> int:
    """``updates`` states per track in changelog partition 0, as the worker writes them."""
    producer = make_producer(bootstrap)
    await producer.start()
    written = 0
    try:
        futures = []
        for n in range(updates):
            batch = producer.create_batch()
            for i in range(tracks):
                t = 1_357_000_000_000 + n * 1000
                key, value = state_codec.key(f"t{i}"), state_codec.value(State(t, -73.9, 40.7, ()))
                if batch.append(key=key, value=value, timestamp=None) is None:
                    futures.append(await producer.send_batch(batch, topic, partition=0))
                    batch = producer.create_batch()
                    batch.append(key=key, value=value, timestamp=None)
                written += 1
            futures.append(await producer.send_batch(batch, topic, partition=0))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return written


@pytest.mark.slow
async def test_healthz_is_503_while_the_track_state_is_recovered(stack, kafka_admin, new_topic, agent_env, output_dir):
    """A worker starting on a long changelog answers 503 "recovering" until the state is read, then 200."""
    topic = await new_topic("agents-recov", partitions=1)
    env = agent_env(topic)
    changelog = changelog_topic(env["IOT_APP_ID"])
    # Not compacted during the test (Kafka's default segments), so recovery reads all it was given.
    await topics.ensure(kafka_admin, [topics.TopicSpec(changelog, 1, configs=topics.COMPACTED)])
    worker = Worker(env, output_dir / f"{topic}.log")
    try:
        written = await fill_changelog(stack.kafka_bootstrap, changelog, tracks=20_000, updates=40)
        out = worker.log.open("ab")
        worker.proc = subprocess.Popen(
            [sys.executable, "-m", "faust", "-A", "agents.app", "worker", "-l", "info", "--web-port", str(worker.port)],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        seen, _ = await wait_health(worker, "recovering track state of partitions [0]", 180)
        assert all(b["status"] == "degraded" for b in seen)
        after, _ = await wait_health(worker, "", 300)
        assert after[-1]["status"] == "ok" and after[-1]["assigned"] == [0]
        recovered = [line for line in worker.log.read_text().splitlines() if "state recovered" in line]
        assert recovered and f"records={written} tracks=20000" in recovered[-1], recovered
        print(f"{written} changelog records; {recovered[-1]}")
    finally:
        worker.stop()
        await cleanup_topics(kafka_admin, [f"{topic}-"])


@pytest.mark.slow
async def test_healthz_is_503_while_stalled_and_200_once_the_worker_progresses(
        stack, es, kafka_admin, new_topic, agent_env, output_dir):
    """Events for a daily index whose primary shard cannot be allocated: the bulk request waits, the lag
    stays, nothing is committed; after IOT_STALL_TIMEOUT /healthz says stalled (503). Once the shard may be
    allocated the events are stored, committed, and /healthz is 200 again."""
    topic = await new_topic("agents-stall", partitions=1)
    env = agent_env(topic, IOT_STALL_TIMEOUT="3")
    index = env["IOT_INDEX"]
    worker = Worker(env, output_dir / f"{topic}.log").start()
    when = 1_357_000_000_000
    daily = documents.index_for(index, when)
    nowhere = f"nowhere-{uuid.uuid4().hex[:8]}"
    try:
        await es.indices.create(index=daily, settings={"index.routing.allocation.require._name": nowhere},
                                wait_for_active_shards="0")
        recs = [{"taxiId": f"s{i % 5}", "observationTime": when + i * 1000, "longitude": -73.9, "latitude": 40.7}
                for i in range(50)]
        await produce(stack.kafka_bootstrap, topic, recs)
        seen, took = await wait_health(worker, "stalled: ", 40)
        stalled = next(p for p in seen[-1]["problems"] if p.startswith("stalled: "))
        assert "50 messages behind" in stalled, stalled
        await es.indices.put_settings(index=daily, settings={"index.routing.allocation.require._name": None})
        await wait_health(worker, "", 120)
        assert await wait_count(es, index, len(recs), timeout=60, settle=1) == len(recs)
        assert worker.metrics()["geoiot_agent_dead_lettered_total"] == 0
        print(f"stalled reported after {took:.1f}s: {stalled}")
    finally:
        worker.stop()
        await cleanup_topics(kafka_admin, [f"{topic}-"])
