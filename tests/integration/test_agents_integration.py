"""The agents against the real Kafka and Elasticsearch: a real worker subprocess, generated data
produced with the replay tool, exact counts, geofences, alerts, dead letters and crash/outage recovery."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from geoiot import config, documents, topics
from geoiot.config import DEFAULT_GEOFENCES
from geoiot.deadletter import original_bytes
from geoiot.schema import load_preset
from testkit import live as live_kit
from testkit.worker import (Worker, all_docs, cleanup_topics, expected_alerts, expected_fences, fence_file, generate,
                            health, live_count, produce_raw, read_topic, records, replay, transitions_seen, wait_count)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PRESET = load_preset("taxi")


BAD_VALUES = [b"", b"not json", b"[1,2,3]", b'{"taxiId": "x"}',
              orjson.dumps({"taxiId": "b1", "observationTime": 1357000000000, "longitude": 200, "latitude": 40.6}),
              orjson.dumps({"taxiId": "b2", "observationTime": "soon", "longitude": -73.9, "latitude": 40.6}),
              b"\xff\xfe\x00binary"]


async def test_pipeline_counts_fences_alerts_dlq_resend_and_state_recovery(
        stack, es, kafka_admin, new_topic, agent_env, tmp_path, output_dir):
    topic = await new_topic("agents-e2e", partitions=3)
    fences_path, fences = fence_file(tmp_path)
    env = agent_env(topic, IOT_GEOFENCES=str(fences_path))
    index = env["IOT_INDEX"]
    data = generate(tmp_path, tracks=20, points=60, seed=11)
    recs = records(data)
    worker = Worker(env, output_dir / f"{topic}.log")
    try:
        summary = replay(data, topic, env)
        assert summary["sent"] == len(recs) == 1200
        await produce_raw(stack.kafka_bootstrap, topic, [(b"bad", v) for v in BAD_VALUES])
        worker.start()

        # exact count, no duplicates, exact geofences (shapely directly), motion fields
        assert await wait_count(es, index, len(recs)) == len(recs)
        docs = {d["_id"]: d["_source"] for d in await all_docs(es, index)}
        assert set(docs) == {documents.doc_id(r['taxiId'], r['observationTime']) for r in recs}
        for r in recs:
            doc = docs[documents.doc_id(r['taxiId'], r['observationTime'])]
            assert doc[documents.GEOFENCES] == expected_fences(r, fences), r
            assert doc[documents.GEOMETRY] == {"lat": r["latitude"], "lon": r["longitude"]}
            assert doc["passengerCount"] == r["passengerCount"] and len(doc[documents.GEOHASH]) == 12
        tracks = {r["taxiId"] for r in recs}
        assert sum(1 for d in docs.values() if d[documents.SPEED] is None) == len(tracks)  # first report of each
        assert any(d[documents.GEOFENCES] == ["a-west", "jfk"] for d in docs.values())  # overlapping fences, sorted

        # dead letters: every bad message, with its reason and original bytes
        dead = [orjson.loads(v) for v in await read_topic(stack.kafka_bootstrap, env["IOT_DLQ_TOPIC"], len(BAD_VALUES))]
        assert len(dead) == len(BAD_VALUES)
        assert len(docs) + len(dead) == summary["sent"] + len(BAD_VALUES)
        assert all(d["reason"] and d["topic"] == topic and d["offset"] >= 0 for d in dead)
        assert {d["reason"].split(":")[0] for d in dead} >= {"empty value", "not JSON"}

        # alerts: exactly the transitions shapely sees between consecutive reports
        want = expected_alerts(recs, fences)
        assert want, "the generated set must cross a fence"
        alerts = [orjson.loads(v) for v in await read_topic(stack.kafka_bootstrap, env["IOT_ALERTS_TOPIC"], len(want))]
        assert sorted((a["track"], a["fence"], a["event"], a["time"]) for a in alerts) == want

        metrics = worker.metrics()
        assert metrics["geoiot_agent_dead_lettered_total"] == len(BAD_VALUES)
        assert metrics['geoiot_agent_indexed_total{sink="elasticsearch"}'] == len(recs)
        assert metrics["geoiot_agent_events_total"] == len(recs) + len(BAD_VALUES)

        # re-sending the same events changes no count (idempotent ids) nor any document (late: create-only)
        replay(data, topic, env)
        deadline = time.monotonic() + 60
        while worker.metrics()["geoiot_agent_events_total"] < 2 * len(recs) + len(BAD_VALUES):
            assert time.monotonic() < deadline, "the re-sent events were not consumed"
            await asyncio.sleep(0.5)
        assert await wait_count(es, index, len(recs)) == len(recs)
        alerts_after = await read_topic(stack.kafka_bootstrap, env["IOT_ALERTS_TOPIC"], len(want))
        assert len(alerts_after) == len(want)  # the re-sent reports are not newer: no new transitions

        # graceful restart: the track state comes back from the changelog
        worker.stop()
        last = {}
        for r in recs:
            if r["observationTime"] > last.get(r["taxiId"], {}).get("observationTime", 0):
                last[r["taxiId"]] = r
        later = [dict(r, observationTime=r["observationTime"] + 10_000, longitude=r["longitude"] + 0.001)
                 for r in last.values()]
        await produce_raw(stack.kafka_bootstrap, topic, [(r["taxiId"].encode(), orjson.dumps(r)) for r in later])
        worker = Worker(env, output_dir / f"{topic}.log").start()
        assert await wait_count(es, index, len(recs) + len(later)) == len(recs) + len(later)
        resp = await es.search(index=index, size=len(later),
                               query={"terms": {"_id": [documents.doc_id(r['taxiId'], r['observationTime']) for r in later]}})
        hits = [h["_source"] for h in resp["hits"]["hits"]]
        assert len(hits) == len(later)
        for h in hits:
            assert h[documents.SPEED] == pytest.approx(h[documents.DISTANCE] / 10.0) and h[documents.DISTANCE] > 50
    finally:
        worker.stop()
        await cleanup_topics(kafka_admin, [f"{topic}-"])


@pytest.mark.slow
async def test_sigkill_and_restart_loses_and_duplicates_nothing(stack, es, kafka_admin, new_topic, agent_env,
                                                                tmp_path, output_dir):
    topic = await new_topic("agents-kill", partitions=3)
    # small batches so the kill surely lands mid-stream
    env = agent_env(topic, IOT_BULK_SIZE="100")
    index = env["IOT_INDEX"]
    data = generate(tmp_path, tracks=40, points=300, seed=5)
    recs = records(data)
    assert replay(data, topic, env)["sent"] == len(recs)
    log = output_dir / f"{topic}.log"
    worker = Worker(env, log).start()
    try:
        deadline = time.monotonic() + 120
        while (seen := await live_count(es, index)) < len(recs) // 5:
            assert time.monotonic() < deadline, "the first worker indexed too little"
            await asyncio.sleep(0.2)
        worker.stop(signal.SIGKILL)
        assert seen < len(recs), "the worker finished before it was killed; the test would prove nothing"
        worker = Worker(env, log).start()
        assert await wait_count(es, index, len(recs), settle=4) == len(recs)
        docs = await all_docs(es, index)
        assert len(docs) == len(recs)
        assert {d["_id"] for d in docs} == {documents.doc_id(r['taxiId'], r['observationTime']) for r in recs}
        # Duplicates nothing: the documents are idempotent (_id track:time), so count the index operations. The
        # restarted worker resumes at the committed offsets: only the batches stored but not yet committed at the
        # kill are indexed again (a few per partition), never what was committed (`seen` documents or more).
        stats = await es.indices.stats(index=f"{index}-*", metric="indexing")
        indexed = stats["_all"]["primaries"]["indexing"]["index_total"]
        uncommitted = (int(env.get("IOT_BATCHES_IN_FLIGHT", config.DEFAULT_BATCHES_IN_FLIGHT)) + 2) * 100 * 3
        assert uncommitted < seen, "the bound would not tell a resume from a restart at the beginning"
        assert len(recs) <= indexed <= len(recs) + uncommitted, (indexed, seen)
        # alerts are at least once: every transition is there (duplicates allowed after the kill)
        _, fences = fence_file(tmp_path)
        want = set(expected_alerts(recs, fences[:1]))
        got = transitions_seen(await read_topic(stack.kafka_bootstrap, env["IOT_ALERTS_TOPIC"], len(want)))
        assert want and want <= got
    finally:
        worker.stop()
        await cleanup_topics(kafka_admin, [f"{topic}-"])


@pytest.mark.slow
async def test_rebalance_moves_partitions_and_their_track_state(stack, es, kafka_admin, new_topic, agent_env,
                                                                tmp_path, output_dir):
    """While events keep arriving, a second worker joins, then the first leaves: every event is indexed
    once, and each partition's track state follows it (only the first report of a track lacks motion)."""
    topic = await new_topic("agents-rebal", partitions=3)
    env = agent_env(topic, IOT_BULK_SIZE="200")
    index = env["IOT_INDEX"]
    data = generate(tmp_path, tracks=30, points=600, seed=8)
    recs = records(data)
    log = output_dir / f"{topic}.log"
    first = Worker(env, log).start()
    second = None
    # paced, so that the stream is still flowing while the group rebalances twice
    source = subprocess.Popen([sys.executable, "-m", "replay", "constant", str(data), "--topic", topic,
                               "--rate", "800", "-q"], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while await live_count(es, index) < 800:
            assert time.monotonic() < deadline, "the first worker indexed too little"
            await asyncio.sleep(0.2)
        second = Worker(env, log).start()
        while True:  # both workers hold partitions: the group really rebalanced
            a, b = health(first)["assigned"], health(second)["assigned"]
            if a and b:
                break
            assert time.monotonic() < deadline, f"no rebalance: first={a} second={b}"
            await asyncio.sleep(0.2)
        assert sorted(a + b) == [0, 1, 2]
        while True:  # the first worker reports a lag only for the partitions it still holds
            lagged = {int(k.split('partition="')[1].split('"')[0]) for k in first.metrics()
                      if k.startswith("geoiot_agent_consumer_lag{")}
            if lagged == set(health(first)["assigned"]):
                break
            assert time.monotonic() < deadline, f"lag reported for {lagged}, assigned {health(first)['assigned']}"
            await asyncio.sleep(0.5)
        first.stop()  # graceful: the batches in flight are committed before the partitions move
        assert source.poll() is None, "the source finished before the rebalances; the test would prove nothing"
        assert source.wait(120) == 0, source.stderr.read()
        assert await wait_count(es, index, len(recs), settle=3) == len(recs)
        assert sorted(health(second)["assigned"]) == [0, 1, 2]
        docs = await all_docs(es, index)
        assert len(docs) == len(recs)
        assert {d["_id"] for d in docs} == {documents.doc_id(r['taxiId'], r['observationTime']) for r in recs}
        without_motion = sorted(d["_source"]["taxiId"] for d in docs if d["_source"][documents.SPEED] is None)
        assert without_motion == sorted({r["taxiId"] for r in recs})
    finally:
        if source.poll() is None:
            source.kill()
        first.stop()
        if second is not None:
            second.stop()
        await cleanup_topics(kafka_admin, [f"{topic}-"])


def stack_cmd(*args: str) -> None:
    result = subprocess.run([str(ROOT / "infra" / "local" / "stack"), *args], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
async def test_elasticsearch_outage_loses_nothing(stack, es, kafka_admin, new_topic, agent_env, tmp_path, output_dir):
    topic = await new_topic("agents-esdown", partitions=3)
    env = agent_env(topic)
    index = env["IOT_INDEX"]
    first = generate(tmp_path, tracks=10, points=50, seed=21)
    second = generate(tmp_path, tracks=10, points=50, seed=22)
    second_recs = [dict(r, taxiId=f"late-{r['taxiId']}") for r in records(second)]
    worker = Worker(env, output_dir / f"{topic}.log")
    try:
        n1 = replay(first, topic, env)["sent"]
        worker.start()
        assert await wait_count(es, index, n1, settle=1) == n1
        stack_cmd("down", "es")
        try:
            await produce_raw(stack.kafka_bootstrap, topic,
                              [(r["taxiId"].encode(), orjson.dumps(r)) for r in second_recs])
            deadline = time.monotonic() + 60
            while worker.metrics().get('geoiot_agent_sink_retries_total{sink="elasticsearch"}', 0) < 2:
                assert time.monotonic() < deadline, "the sink never noticed Elasticsearch was down"
                await asyncio.sleep(0.5)
            assert worker.metrics()['geoiot_agent_indexed_total{sink="elasticsearch"}'] == n1
        finally:
            stack_cmd("up", "es")
        await es.cluster.health(index=index, wait_for_status="yellow", timeout="60s")
        total = n1 + len(second_recs)
        assert await wait_count(es, index, total, timeout=180) == total
        assert worker.metrics()["geoiot_agent_dead_lettered_total"] == 0
    finally:
        worker.stop()
        await cleanup_topics(kafka_admin, [f"{topic}-"])


async def test_sink_reports_documents_elasticsearch_refuses_and_stores_the_rest(stack, es, new_index):
    """A document the mapping refuses comes back with its reason (for the dead-letter topic); the
    others are stored, and the trimmed bulk response still names each refused document."""
    from agents.store.sink import ElasticsearchSink, es_client

    index = new_index("sink")
    await es.indices.create(index=index, mappings={"properties": {"n": {"type": "integer"}}})
    actions = [{"_op_type": "index", "_index": index, "_id": str(i), "_source": {"n": i}} for i in range(5)]
    actions.insert(2, {"_op_type": "index", "_index": index, "_id": "bad", "_source": {"n": "not a number"}})
    sink = ElasticsearchSink(es_client(stack.es_hosts))
    try:
        rejected = await sink.write(actions)
    finally:
        await sink.stop()
    assert [a["_id"] for a, _ in rejected] == ["bad"]
    assert "elasticsearch refused the document: 400" in rejected[0][1] and "parsing" in rejected[0][1]
    await es.indices.refresh(index=index)
    assert (await es.count(index=index))["count"] == 5


async def test_an_event_too_large_to_dead_letter_whole_does_not_stall_its_partition(stack, es, kafka_admin, new_topic,
                                                                                    agent_env, tmp_path, output_dir):
    """800 kB of binary is base64-encoded in its dead letter (1.07 MB: more than the broker takes); the
    letter is cut instead, the events after it are indexed, and the worker keeps running."""
    topic = await new_topic("agents-big", partitions=1)
    env = agent_env(topic)
    big = bytes(range(256)) * 3125  # 800,000 bytes, not UTF-8
    good = [{"taxiId": str(i), "observationTime": 1357000000000 + i, "longitude": -73.9, "latitude": 40.7}
            for i in range(10)]
    await produce_raw(stack.kafka_bootstrap, topic,
                      [(b"big", big)] + [(r["taxiId"].encode(), orjson.dumps(r)) for r in good])
    worker = Worker(env, output_dir / f"{topic}.log").start()
    try:
        assert await wait_count(es, env["IOT_INDEX"], len(good), timeout=60, settle=1) == len(good)
        [letter] = [orjson.loads(v) for v in await read_topic(stack.kafka_bootstrap, env["IOT_DLQ_TOPIC"], 1)]
        assert letter["original_truncated"] is True and letter["original_size"] == len(big)
        assert original_bytes(letter) == big[:600_000] and (letter["partition"], letter["offset"]) == (0, 0)
        assert worker.proc.poll() is None
    finally:
        worker.stop()
        await cleanup_topics(kafka_admin, [f"{topic}-"])


async def changelog_config(kafka_admin, topic: str) -> dict[str, str]:
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    [response] = await kafka_admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    [resource] = response.resources
    return {entry[0]: entry[1] for entry in resource[4]}


async def test_the_changelog_is_compacted_grown_to_the_source_partitions_and_its_configs_checked(
        stack, kafka_admin, new_topic, agent_env, output_dir):
    """The worker creates the track-state changelog with geoiot.topics' CHANGELOG_CONFIGS and the source's partitions;
    a changelog with fewer partitions is grown, one with other compaction settings is named per setting (and
    accepted), and one without compaction is refused (one line, non-zero exit)."""
    topic = await new_topic("agents-log", partitions=3)
    env = agent_env(topic)
    worker = Worker(env, output_dir / f"{topic}.log").start()
    worker.stop()
    try:
        changelog = f"{env['IOT_APP_ID']}-tracks-changelog"
        config = await changelog_config(kafka_admin, changelog)
        assert {k: config[k] for k in topics.CHANGELOG_CONFIGS} == topics.CHANGELOG_CONFIGS
        described = await kafka_admin.describe_topics([changelog])
        assert len(described[0]["partitions"]) == 3

        small = f"{topic}-small"
        await topics.ensure(kafka_admin, [topics.TopicSpec(f"{small}-tracks-changelog", 1, configs=topics.COMPACTED),
                                          topics.TopicSpec(f"{topic}-kept-tracks-changelog", 3)])
        log = output_dir / f"{small}.log"
        Worker(agent_env(topic, IOT_APP_ID=small), log).start(timeout=60).stop()
        described = await kafka_admin.describe_topics([f"{small}-tracks-changelog"])
        assert len(described[0]["partitions"]) == 3
        text = log.read_text()
        assert "changelog grown" in text and "partitions=1->3" in text
        for key in set(topics.CHANGELOG_CONFIGS) - {"cleanup.policy"}:
            assert f"topic_differs topic '{small}-tracks-changelog' has {key}=" in text, key
        problem = "has cleanup.policy=delete, not compact"
        app_id = f"{topic}-kept"
        with pytest.raises(AssertionError, match=problem) as failed:
            Worker(agent_env(topic, IOT_APP_ID=app_id), output_dir / f"{app_id}.log").start(timeout=60)
        assert "worker exited with 1" in str(failed.value)
        assert [line for line in str(failed.value).splitlines() if line.startswith("agents: ")] == [
            next(line for line in str(failed.value).splitlines() if problem in line)]
    finally:
        await cleanup_topics(kafka_admin, [f"{topic}-"])


async def latest_docs(es, base: str) -> dict[str, tuple[int, dict]]:
    """The latest index: track -> (its document's version, its source)."""
    index = documents.latest_index(base)
    await es.indices.refresh(index=index)
    resp = await es.search(index=index, size=10_000, version=True)
    return {h["_id"]: (h["_version"], h["_source"]) for h in resp["hits"]["hits"]}


def assert_latest_is(latest: dict[str, tuple[int, dict]], newest: dict[str, dict]) -> None:
    assert set(latest) == set(newest)
    for track, r in newest.items():
        version, source = latest[track]
        assert version == r["observationTime"] == source["observationTime"], track
        assert source[documents.GEOMETRY] == {"lat": r["latitude"], "lon": r["longitude"]}, track
        assert {k: source[k] for k in r} == r, track


async def test_latest_positions_through_pipeline_and_sink_older_reports_only_conflict(stack, es, new_index, tmp_path):
    """The latest index holds each track's newest report; re-sent and older reports are late (no latest
    write; their observations create-only: the re-sent ones already stored, counted, the older ones indexed);
    a stale latest write (a pipeline without the state) is a version conflict, counted, never refused."""
    import dataclasses

    from agents.core.geofence import Geofences
    from agents.store.index import ensure_index
    from agents.core.pipeline import Incoming, Pipeline
    from agents.store.sink import ElasticsearchSink, es_client

    base = new_index("latest")
    await ensure_index(es, dataclasses.replace(stack, iot_index=base), PRESET)
    recs = records(generate(tmp_path, tracks=12, points=25, seed=21))
    newest = live_kit.newest_reports(recs)
    pipeline = Pipeline(PRESET, Geofences.load(DEFAULT_GEOFENCES), base)
    conflicts: list[int] = []
    duplicates: list[int] = []
    sink = ElasticsearchSink(es_client(stack.es_hosts), on_conflict=conflicts.append, on_duplicate=duplicates.append)
    states: dict = {}

    async def send(batch: list[dict], late: bool = False, keep_state: bool = True) -> None:
        messages = [Incoming(orjson.dumps(r), r["taxiId"].encode(), "src", 0, i) for i, r in enumerate(batch)]
        result = pipeline.process(messages, states.get if keep_state else {}.get)
        assert result.dead == []
        assert len(result.latest_bulk.actions()) == (0 if late else len({r["taxiId"] for r in batch}))
        if keep_state:
            states.update({t: s for t, (_, s) in result.states.items()})
        assert await sink.write_bulk(result.bulk()) == []

    try:
        for start in range(0, len(recs), 70):  # batches cutting tracks anywhere
            await send(recs[start:start + 70])
        assert sum(conflicts) == 0
        await es.indices.refresh(index=base)
        assert (await es.count(index=base))["count"] == len(recs)  # the alias does not hold the latest index
        assert_latest_is(await latest_docs(es, base), newest)

        await send(list(reversed(recs)), late=True)  # every report again: late, already stored
        assert duplicates == [len(recs)] and conflicts == []
        older = [dict(r, observationTime=r["observationTime"] - 1, longitude=r["longitude"] + 0.01)
                 for r in newest.values()]  # older than the newest, and new observations
        await send(older, late=True)
        assert duplicates == [len(recs)] and conflicts == []
        await send(older, keep_state=False)  # without the state they are latest writes: one stale one per track
        assert conflicts == [len(newest)] and duplicates == [len(recs)]
        await es.indices.refresh(index=base)
        assert (await es.count(index=base))["count"] == len(recs) + len(older)
        assert_latest_is(await latest_docs(es, base), newest)

        newer = [dict(r, observationTime=r["observationTime"] + 1000, latitude=r["latitude"] + 0.001)
                 for r in list(newest.values())[:5]]
        await send(newer)
        assert conflicts == [len(newest)]
        assert_latest_is(await latest_docs(es, base), {**newest, **live_kit.newest_reports(newer)})
    finally:
        await sink.stop()


async def test_worker_keeps_the_newest_report_per_track_across_resends(stack, es, kafka_admin, new_topic, agent_env,
                                                                       tmp_path, output_dir):
    topic = await new_topic("agents-latest", partitions=3)
    env = agent_env(topic, IOT_ES_LATEST="true")
    base = env["IOT_INDEX"]
    data = generate(tmp_path, tracks=15, points=40, seed=23)
    recs = records(data)
    newest = live_kit.newest_reports(recs)
    worker = Worker(env, output_dir / f"{topic}.log")
    try:
        replay(data, topic, env)
        worker.start()
        assert await wait_count(es, base, len(recs)) == len(recs)
        assert_latest_is(await latest_docs(es, base), newest)
        assert worker.metrics().get("geoiot_agent_latest_stale_total", 0) == 0

        # the same reports again and one older report per track: late, no latest write; the re-sent ones are
        # already stored (counted), the older ones new observations
        replay(data, topic, env)
        older = [dict(r, observationTime=r["observationTime"] - 1) for r in newest.values()]
        await produce_raw(stack.kafka_bootstrap, topic, [(r["taxiId"].encode(), orjson.dumps(r)) for r in older])
        deadline = time.monotonic() + 90
        while worker.metrics()["geoiot_agent_events_total"] < 2 * len(recs) + len(older):
            assert time.monotonic() < deadline, "the re-sent events were not consumed"
            await asyncio.sleep(0.5)
        assert await wait_count(es, base, len(recs) + len(older)) == len(recs) + len(older)
        assert_latest_is(await latest_docs(es, base), newest)
        metrics = worker.metrics()
        assert metrics["geoiot_agent_latest_stale_total"] == 0  # late reports are never latest writes
        assert metrics["geoiot_agent_already_stored_total"] == len(recs)
        assert metrics["geoiot_agent_latest_refused_total"] == 0
        assert metrics["geoiot_agent_dead_lettered_total"] == 0
        assert metrics['geoiot_agent_indexed_total{sink="elasticsearch"}'] == 2 * len(recs) + len(older)
        assert await read_topic(stack.kafka_bootstrap, env["IOT_DLQ_TOPIC"], 0, timeout=3) == []
    finally:
        worker.stop()
        await cleanup_topics(kafka_admin, [f"{topic}-"])
