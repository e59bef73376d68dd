"""Elasticsearch refusals against the real cluster (issue 22, items 1, 5 and 7): what is retried, what is
dead-lettered, and that the latest positions and the daily indices follow the same rules.

Each error type of :mod:`agents.store.es_errors` is produced on the real cluster and its classification checked;
the sink then waits out each temporary refusal (nothing returned as refused, everything stored once it is
lifted), a worker waits out a write block on its daily index with ``/healthz`` degraded and nothing committed
or dead-lettered, an index deleted meanwhile comes back only within ``IOT_MAX_NEW_INDICES``, and a latest
position is always a stored observation.

Two cases change cluster-wide state (``cluster.blocks.read_only``) and restore it in a ``finally``: run this
file on a stack of your own during development (tests run one after another on one stack in CI).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest

from agents.store.es_errors import ERRORS, Fate, error_type, fate, item_fate, response_error
from agents.store.index import ensure_index
from agents.store.sink import ElasticsearchSink, es_client
from geoiot import config, documents
from geoiot.schema import load_preset
from testkit import actions as es_actions
from testkit.worker import Worker, cleanup_topics, health, read_topic, wait_count
from test_poison_events import daily_indices, event, produce_together

pytestmark = pytest.mark.integration

T0 = 1_357_000_000_000  # 2013-01-01T00:26:40Z
PRESET = load_preset("taxi")
MAPPING = {"properties": {"n": {"type": "integer"}, "k": {"type": "keyword"}}}


def action(index: str, n: int, **extra: Any) -> dict[str, Any]:
    return {"_op_type": "index", "_index": index, "_id": str(n), "_source": {"n": n}, **extra}


async def cluster_read_only(es, on: bool) -> None:
    await es.cluster.put_settings(persistent={"cluster.blocks.read_only": True if on else None})


# --- each error type, produced by the real cluster ---------------------------------------------------------

async def _item(es, ops: list[dict], **params: Any) -> tuple[int, Any]:
    """Status and error of the first refused item of a bulk request, or of the whole request."""
    response = await es.options(ignore_status=[400, 403, 404, 429, 503]).bulk(operations=ops, **params)
    body = response.body
    if response.meta.status >= 300:
        return response.meta.status, response_error(body)
    for item in body["items"]:
        info = next(iter(item.values()))
        if info["status"] >= 300:
            return info["status"], info["error"]
    raise AssertionError(f"nothing refused: {body}")


Case = Callable[[Any, str], Awaitable[tuple[int, Any]]]


async def _write_block(es, index: str, setting: str = "index.blocks.write") -> tuple[int, Any]:
    await es.indices.create(index=index, mappings=MAPPING)
    await es.indices.put_settings(index=index, settings={setting: True})
    try:
        return await _item(es, [{"index": {"_index": index, "_id": "1"}}, {"n": 1}])
    finally:
        await es.indices.put_settings(index=index, settings={setting: None})


async def _read_only_block(es, index: str) -> tuple[int, Any]:
    return await _write_block(es, index, "index.blocks.read_only")


async def _cluster_read_only(es, index: str) -> tuple[int, Any]:
    await es.indices.create(index=index, mappings=MAPPING)
    await cluster_read_only(es, True)
    try:
        return await _item(es, [{"index": {"_index": index, "_id": "1"}}, {"n": 1}])
    finally:
        await cluster_read_only(es, False)


async def _closed(es, index: str) -> tuple[int, Any]:
    await es.indices.create(index=index, mappings=MAPPING)
    await es.indices.close(index=index)
    return await _item(es, [{"index": {"_index": index, "_id": "1"}}, {"n": 1}])


async def _missing(es, index: str) -> tuple[int, Any]:
    settings = config.load({"IOT_INDEX": index})
    await ensure_index(es, settings, PRESET, index)  # the daily template forbids auto-creation
    return await _item(es, [{"index": {"_index": documents.index_for(index, T0), "_id": "1"}}, {"n": 1}])


async def _unassigned(es, index: str) -> tuple[int, Any]:
    await es.indices.create(index=index, mappings=MAPPING, wait_for_active_shards="0",
                            settings={"index.routing.allocation.require._name": "no-such-node"})
    return await _item(es, [{"index": {"_index": index, "_id": "1"}}, {"n": 1}], timeout="1s")


async def _mapping(es, index: str) -> tuple[int, Any]:
    await es.indices.create(index=index, mappings=MAPPING)
    return await _item(es, [{"index": {"_index": index, "_id": "1"}}, {"n": "not a number"}])


async def _strict(es, index: str) -> tuple[int, Any]:
    await es.indices.create(index=index, mappings={"dynamic": "strict", **MAPPING})
    return await _item(es, [{"index": {"_index": index, "_id": "1"}}, {"other": 1}])


async def _empty_id(es, index: str) -> tuple[int, Any]:
    await es.indices.create(index=index, mappings=MAPPING)
    return await _item(es, [{"index": {"_index": index, "_id": ""}}, {"n": 1}])


async def _long_id(es, index: str) -> tuple[int, Any]:
    await es.indices.create(index=index, mappings=MAPPING)
    return await _item(es, [{"index": {"_index": index, "_id": "y" * 600}}, {"n": 1}])


async def _old_version(es, index: str) -> tuple[int, Any]:
    await es.indices.create(index=index, mappings=MAPPING)
    meta = {"_index": index, "_id": "1", "version_type": "external"}
    return await _item(es, [{"index": {**meta, "version": 5}}, {"n": 1}, {"index": {**meta, "version": 4}}, {"n": 1}])


CASES: dict[str, tuple[Case, str, int, Fate]] = {
    "index.blocks.write": (_write_block, "cluster_block_exception", 403, Fate.RETRY),
    "index.blocks.read_only": (_read_only_block, "cluster_block_exception", 403, Fate.RETRY),
    "cluster.blocks.read_only (whole request)": (_cluster_read_only, "cluster_block_exception", 403, Fate.RETRY),
    "closed index": (_closed, "index_closed_exception", 400, Fate.RETRY),
    "missing index, auto-create forbidden": (_missing, "index_not_found_exception", 404, Fate.RETRY),
    "unassigned primary": (_unassigned, "unavailable_shards_exception", 503, Fate.RETRY),
    "mapping": (_mapping, "document_parsing_exception", 400, Fate.REFUSE),
    "strict mapping": (_strict, "strict_dynamic_mapping_exception", 400, Fate.REFUSE),
    "empty _id": (_empty_id, "illegal_argument_exception", 400, Fate.REFUSE),
    "_id over 512 bytes (whole request)": (_long_id, "action_request_validation_exception", 400, Fate.REFUSE),
    "older external version": (_old_version, "version_conflict_engine_exception", 409, Fate.REFUSE),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_each_refusal_of_the_real_cluster_has_its_classification(stack, es, new_index, case):
    make, expected_type, expected_status, expected_fate = CASES[case]
    status, error = await make(es, new_index("refusal"))
    assert (status, error_type(error)) == (expected_status, expected_type), error
    assert ERRORS[expected_type][0] is expected_fate and fate(status, error) is expected_fate


async def test_the_conflicts_that_keep_the_stored_document_on_the_real_cluster(stack, es, new_index):
    """A create of a stored _id (a late report re-sent) and an older external version (a stale latest
    position) are 409 version conflicts the sink keeps as stored; the same conflict on a plain index is not."""
    index = new_index("refusal")
    await es.indices.create(index=index, mappings=MAPPING)
    status, error = await _item(es, [{"index": {"_index": index, "_id": "1"}}, {"n": 1},
                                     {"create": {"_index": index, "_id": "1"}}, {"n": 2}], refresh="true")
    assert (status, error_type(error)) == (409, "version_conflict_engine_exception")
    assert item_fate(status, error, create=True, versioned=False) is Fate.KEPT
    assert item_fate(status, error, create=False, versioned=False) is Fate.REFUSE
    assert (await es.get(index=index, id="1"))["_source"] == {"n": 1}  # the stored document stays
    status, error = await _old_version(es, new_index("refusal"))
    assert item_fate(status, error, create=False, versioned=True) is Fate.KEPT


def test_unknown_types_are_decided_by_their_status():
    assert fate(429, {"type": "something_new"}) is Fate.RETRY and fate(503, None) is Fate.RETRY
    assert fate(None) is Fate.RETRY  # no answer at all (connection refused, timeout)
    assert fate(400, {"type": "something_new"}) is Fate.REFUSE and fate(413, None) is Fate.REFUSE


# --- the sink waits out each temporary refusal ------------------------------------------------------------

class Counting(ElasticsearchSink):
    """The real sink with its retries counted (each failed attempt is one request or one refused retry)."""

    def __init__(self, hosts: list[str], **kwargs: Any) -> None:
        self.retries: list[str] = []
        super().__init__(es_client(hosts), initial_backoff=0.1, max_backoff=1.0, on_retry=self.retries.append,
                         **kwargs)


async def _hold(es, index: str, kind: str, on: bool) -> None:
    if kind == "index.blocks.write":
        await es.indices.put_settings(index=index, settings={"index.blocks.write": True if on else None})
    elif kind == "closed index":
        await (es.indices.close if on else es.indices.open)(index=index)
    elif kind == "cluster.blocks.read_only":
        await cluster_read_only(es, on)
    else:
        raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["index.blocks.write", "closed index", "cluster.blocks.read_only"])
async def test_the_sink_waits_out_a_temporary_refusal_and_stores_everything(stack, es, new_index, kind):
    """Before: 2,000 dead letters for a block or a closed index; a whole-request 403 split into ~4,000 requests."""
    index = new_index("hold")
    await es.indices.create(index=index, mappings=MAPPING)
    sink = Counting(stack.es_hosts)
    await sink.write([action(index, -1)])  # the sink knows the index
    await _hold(es, index, kind, True)
    try:
        task = asyncio.ensure_future(sink.write([action(index, n) for n in range(2000)]))
        await asyncio.sleep(4)
        assert not task.done(), f"the sink gave up on a temporary refusal: {task.result()[:2]}"
        assert sink.failing_since is not None and sink.retries
    finally:
        await _hold(es, index, kind, False)
    try:
        rejected = await asyncio.wait_for(task, 120)
    finally:
        await sink.stop()
    assert rejected == []
    assert len(sink.retries) < 60, f"{len(sink.retries)} attempts: the request was split instead of retried"
    assert sink.failing_since is None
    await es.indices.refresh(index=index)
    assert (await es.count(index=index))["count"] == 2001


# --- item 7: an index deleted meanwhile comes back only through the cap ------------------------------------

async def test_indices_deleted_meanwhile_come_back_only_within_the_new_index_cap(stack, es, new_index):
    """What `python -m agents.store.retention` does to a worker without IOT_RETENTION_DAYS: before, the next bulk
    re-created all 6 deleted days through auto-create (the cap is 2)."""
    base = new_index("recreate")
    await ensure_index(es, config.load({"IOT_INDEX": base}), PRESET, base)
    days = [T0 + d * documents.DAY_MS for d in range(6)]
    doc = {"taxiId": "a", "longitude": -73.9, "latitude": 40.7}

    def actions() -> list[dict[str, Any]]:
        return [{"_op_type": "index", "_index": documents.index_for(base, t), "_id": documents.doc_id("a", t),
                 "_source": {**doc, "observationTime": t}} for t in days]

    sink = Counting(stack.es_hosts, max_new_indices=2)
    try:
        for start in range(0, 6, 2):  # 2 new days per call: all 6 exist, the sink knows them
            assert await sink.write(actions()[start:start + 2]) == []
        await es.indices.delete(index=documents.index_pattern(base))  # retention, or an operator
        rejected = await sink.write(actions())
    finally:
        await sink.stop()
    found = sorted((await es.indices.get(index=documents.index_pattern(base), allow_no_indices=True)).body)
    assert found == [documents.index_for(base, t) for t in days[:2]]  # the earliest days, within the cap
    assert sorted(a["_index"] for a, _ in rejected) == [documents.index_for(base, t) for t in days[2:]]
    assert all("IOT_MAX_NEW_INDICES=2" in reason for _, reason in rejected)


# --- item 5: the latest position of a track is one of its stored observations ------------------------------

@pytest.mark.parametrize("blocked", [False, True], ids=["unblocked", "latest index write-blocked"])
async def test_a_latest_position_is_always_a_stored_observation_and_waits_out_a_block(stack, es, new_index,
                                                                                      blocked):
    """Track a: its newest report is refused (mapping): before, the latest index still showed it; now the
    newest stored one. Track b: its only report is refused: before, it had a latest position; now none.
    Blocked: the latest index is write-blocked for a while: before, the latest writes were counted as
    refused and lost; now they wait."""
    base = new_index("latest")
    await ensure_index(es, config.load({"IOT_INDEX": base}), PRESET, base)
    latest = documents.latest_index(base)

    def obs(track: str, t: int, **bad: Any) -> dict[str, Any]:
        source = {"taxiId": track, "observationTime": t, "longitude": -73.9, "latitude": 40.7, **bad}
        return {"_op_type": "index", "_index": documents.index_for(base, t), "_id": documents.doc_id(track, t),
                "_source": source}

    refused = {"passengerCount": "many"}  # an integer field: document_parsing_exception
    day = documents.DAY_MS  # track d: its newest report needs a second new daily index, over the cap of 1
    observations = [obs("a", T0), obs("a", T0 + 1000, **refused), obs("b", T0, **refused), obs("c", T0 + 5),
                    obs("d", T0 + 2 * day), obs("d", T0 + 3 * day)]
    newest = [es_actions.latest_action(base, "a", T0 + 1000, observations[1]["_source"]),
              es_actions.latest_action(base, "b", T0, observations[2]["_source"]),
              es_actions.latest_action(base, "c", T0 + 5, observations[3]["_source"]),
              es_actions.latest_action(base, "d", T0 + 3 * day, observations[5]["_source"])]
    conflicts: list[int] = []
    sink = Counting(stack.es_hosts, on_conflict=conflicts.append, max_new_indices=1)
    await sink.write([obs("z", T0)])  # indices known, so only the latest index's block is in the way
    await es.indices.put_settings(index=latest, settings={"index.blocks.write": True if blocked else None})
    try:
        task = asyncio.ensure_future(sink.write(observations + newest))
        if blocked:
            await asyncio.sleep(3)
            assert not task.done(), f"a blocked latest write was given up: {task.result()}"
    finally:
        await es.indices.put_settings(index=latest, settings={"index.blocks.write": None})
    try:
        rejected = await asyncio.wait_for(task, 120)
    finally:
        await sink.stop()
    reasons = {a["_id"]: reason for a, reason in rejected}
    assert sorted(reasons) == sorted(documents.doc_id(*r) for r in (("a", T0 + 1000), ("b", T0), ("d", T0 + 3 * day)))
    assert "IOT_MAX_NEW_INDICES=1" in reasons.pop(documents.doc_id("d", T0 + 3 * day))
    assert all("document_parsing_exception" in reason for reason in reasons.values())
    await es.indices.refresh(index=latest)
    hits = (await es.search(index=latest, size=10, version=True))["hits"]["hits"]
    positions = {h["_id"]: (h["_version"], h["_source"]["observationTime"]) for h in hits}
    assert positions == {"a": (T0, T0), "c": (T0 + 5, T0 + 5), "d": (T0 + 2 * day, T0 + 2 * day)}, positions
    assert not conflicts


# --- item 1 in a worker: a write block on the daily index ---------------------------------------------------

async def consumer_group_offset(kafka_admin, group: str, topic: str) -> int:
    offsets = await kafka_admin.list_consumer_group_offsets(group)
    return sum(meta.offset for tp, meta in offsets.items() if tp.topic == topic)


async def test_a_worker_waits_out_a_write_block_with_health_degraded_and_nothing_dead_lettered(
        stack, es, kafka_admin, new_topic, agent_env, output_dir):
    """The issue's 26 s block, held 40 s so the worker's 30 s rule reports it: before, every event of the
    blocked day went to the dead-letter topic with its offset committed."""
    topic = await new_topic("block", partitions=1)
    env = agent_env(topic)
    base, group = env["IOT_INDEX"], env["IOT_APP_ID"]
    daily = documents.index_for(base, T0)
    worker = Worker(env, output_dir / f"{topic}.log").start()
    try:
        await produce_together(stack.kafka_bootstrap, topic, [event(f"t{i % 100}", T0 + i) for i in range(1000)])
        assert await wait_count(es, base, 1000, timeout=120, settle=1) == 1000
        await es.indices.put_settings(index=daily, settings={"index.blocks.write": True})
        try:
            await produce_together(stack.kafka_bootstrap, topic,
                                   [event(f"t{i % 100}", T0 + i) for i in range(1000, 3000)])
            statuses, deadline = [], time.monotonic() + 40
            while time.monotonic() < deadline:
                statuses.append(health(worker)["status"])
                await asyncio.sleep(2)
            dead_during = await read_topic(stack.kafka_bootstrap, env["IOT_DLQ_TOPIC"], 1, timeout=3, settle=0)
            committed_during = await consumer_group_offset(kafka_admin, group, topic)
            retries = worker.metrics().get('geoiot_agent_sink_retries_total{sink="elasticsearch"}', 0)
        finally:
            await es.indices.put_settings(index=daily, settings={"index.blocks.write": None})
        indexed = await wait_count(es, base, 3000, timeout=120, settle=2)
        dead_after = await read_topic(stack.kafka_bootstrap, env["IOT_DLQ_TOPIC"], 1, timeout=3, settle=0)
        committed_after = await consumer_group_offset(kafka_admin, group, topic)
        recovered = health(worker)["status"]
        running = worker.proc.poll() is None
    finally:
        worker.stop()
        await cleanup_topics(kafka_admin, [f"{topic}-"])
    (output_dir / f"{topic}.figures.json").write_bytes(orjson.dumps({
        "dead_letters_during_block": len(dead_during), "dead_letters_after": len(dead_after),
        "committed_during_block": committed_during, "sink_retries": retries, "health": statuses}))
    assert running and indexed == 3000
    assert dead_during == [] and dead_after == []
    assert committed_during <= 1000 and committed_after == 3000
    assert "degraded" in statuses and statuses[0] == "ok" and recovered == "ok"
    assert retries > 0


async def test_retention_against_a_worker_without_it_cannot_make_the_next_batch_bypass_the_cap(
        stack, es, kafka_admin, new_topic, agent_env, output_dir, python_env):
    """`python -m agents.store.retention` deletes the days a worker (without IOT_RETENTION_DAYS) knows; the next batch
    needs those 2 days and 2 new ones, with IOT_MAX_NEW_INDICES=2. Before: all 4 existed afterwards (the bulk
    request re-created the deleted ones itself); now 2 are created and the rest are dead letters."""
    import subprocess
    import sys

    from testkit.worker import ROOT

    topic = await new_topic("retcap", partitions=1)
    env = agent_env(topic, IOT_MAX_NEW_INDICES="2")
    base = env["IOT_INDEX"]
    day = documents.DAY_MS
    worker = Worker(env, output_dir / f"{topic}.log").start()
    try:
        await produce_together(stack.kafka_bootstrap, topic, [event("a", T0), event("a", T0 + day)])
        assert await wait_count(es, base, 2, timeout=90, settle=1) == 2
        result = subprocess.run([sys.executable, "-m", "agents.store.retention", "--index", base, "--retention-days", "1"],
                                cwd=ROOT, env=python_env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0 and documents.index_for(base, T0) in result.stdout, result
        assert await daily_indices(es, base) == []
        await produce_together(stack.kafka_bootstrap, topic, [event("a", T0 + d * day + 1) for d in range(4)])
        letters = [orjson.loads(v) for v in await read_topic(stack.kafka_bootstrap, env["IOT_DLQ_TOPIC"], 2,
                                                              timeout=90)]
        indexed = await wait_count(es, base, 2, timeout=60, settle=2)
        indices = await daily_indices(es, base)
        running = worker.proc.poll() is None
    finally:
        worker.stop()
        await cleanup_topics(kafka_admin, [f"{topic}-"])
    assert running and len(indices) == 2 and indexed == 2
    assert len(letters) == 2 and all("IOT_MAX_NEW_INDICES=2" in letter["reason"] for letter in letters)
