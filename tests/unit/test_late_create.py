"""Late reports are written create-only (issue 23): bulk lines, the pipeline's op choice, the sink's 409 mapping.

The sink's status mapping runs here against an in-process stand-in of the client's ``bulk`` answer (the rule
is a pure mapping of statuses); the real Elasticsearch behaviour is held by
``tests/integration/test_late_resend.py``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from hypothesis import given, settings, strategies as st

from agents.core.bulk import CREATE, INDEX, LATE_OP, Bulk, meta_line
from agents.core.geofence import Geofences
from agents.core.motion import State
from agents.core.pipeline import Incoming, Pipeline
from agents.store.es_errors import Fate, item_fate
from agents.store.sink import ElasticsearchSink, stored_latest
from geoiot import documents
from geoiot.schema import load_preset

PRESET = load_preset("taxi")
T0 = 1_357_000_000_000
NO_FENCES = Geofences.from_geometries([], [])


def raw(track: str, t: int, lon: float = -73.97, lat: float = 40.76) -> bytes:
    return orjson.dumps({"taxiId": track, "observationTime": t, "longitude": lon, "latitude": lat})


def msgs(values: list[bytes]) -> list[Incoming]:
    return [Incoming(v, None, "src", 0, i) for i, v in enumerate(values)]


def body_ops(bulk: Bulk) -> list[tuple[str, str]]:
    lines = bulk.body().split(b"\n")[:-1]
    return [(op, meta["_id"]) for line in lines[0::2] for op, meta in orjson.loads(line).items()]


def test_late_op_is_create_and_its_meta_line_is_what_orjson_writes():
    assert LATE_OP == CREATE
    assert meta_line("obs", 'a"b', None, CREATE) == orjson.dumps({"create": {"_index": "obs", "_id": 'a"b'}})
    assert meta_line("obs", "a") == b'{"index":{"_index":"obs","_id":"a"}}'


def test_bulk_keeps_each_entry_op_through_add_subset_and_actions():
    one, two = Bulk(), Bulk()
    one.append("obs", "a:1", b'{"x":1}')
    one.append("obs", "a:0", b'{"x":0}', op=CREATE)
    two.append("obs", "b:0", b'{"x":2}', op=CREATE)
    two.append("obs_latest", "b", b'{"x":3}', 5)
    both = one + two
    assert [both.op(i) for i in range(4)] == [INDEX, CREATE, CREATE, INDEX]
    assert body_ops(both) == [("index", "a:1"), ("create", "a:0"), ("create", "b:0"), ("index", "b")]
    part = both.subset([2, 3, 1])
    assert [part.op(i) for i in range(3)] == [CREATE, INDEX, CREATE]
    again = Bulk.from_actions(both.actions())
    assert again.body() == both.body() and again.creates == both.creates
    assert [a["_op_type"] for a in both.actions()] == ["index", "create", "create", "index"]


def test_pipeline_writes_late_reports_create_only_and_never_as_latest():
    """State at T0+5s: an older report and a duplicate of the state's time are late (create, null motion);
    a newer one is an index op and the latest; a second report at that newer time in the batch is late."""
    state = State(T0 + 5000, -73.97, 40.76, ())
    values = [raw("a", T0 + 1000), raw("a", T0 + 5000), raw("a", T0 + 6000, -73.96), raw("a", T0 + 6000, -73.95),
              raw("b", T0)]
    result = Pipeline(PRESET, NO_FENCES, "obs").process(msgs(values), {"a": state}.get)
    assert body_ops(result.observations) == [("create", "a:1357000001000"), ("create", "a:1357000005000"),
                                             ("index", "a:1357000006000"), ("create", "a:1357000006000"),
                                             ("index", "b:1357000000000")]
    docs = [orjson.loads(s) for s in result.observations.sources]
    assert [d[documents.SPEED] is None for d in docs] == [True, True, False, True, True]
    latest = {a["_id"]: a for a in result.latest_bulk.actions()}
    assert sorted(latest) == ["a", "b"] and latest["a"]["version"] == T0 + 6000
    assert latest["a"]["_source"]["longitude"] == -73.96  # the first report at that time: the one stored
    assert result.states["a"][1].t == T0 + 6000


@settings(max_examples=40, deadline=None)
@given(reports=st.lists(st.tuples(st.sampled_from("abc"), st.integers(0, 9)), min_size=1, max_size=25),
       cut=st.integers(0, 25))
def test_resending_reports_already_processed_gives_only_creates_and_nothing_else(reports, cut):
    """After a pass over the reports, re-sending any prefix of them: every observation is a create, no alert,
    no latest position, no state change (the pass's documents are what Elasticsearch keeps)."""
    values = [raw(t, T0 + 1000 * dt, -73.9 + 1e-3 * dt) for t, dt in reports]
    pipeline = Pipeline(PRESET, NO_FENCES, "obs")
    first = pipeline.process(msgs(values), {}.get)
    states = {track: state for track, (_, state) in first.states.items()}
    again = pipeline.process(msgs(values[:cut]), states.get)
    assert all(op == "create" for op, _ in body_ops(again.observations))
    assert not again.alerts and not len(again.latest_bulk) and not again.states


def test_item_fate_keeps_the_stored_document_on_a_create_or_versioned_conflict():
    conflict = {"type": "version_conflict_engine_exception", "reason": "document already exists"}
    assert item_fate(409, conflict, create=True, versioned=False) is Fate.KEPT
    assert item_fate(409, conflict, create=False, versioned=True) is Fate.KEPT
    assert item_fate(409, conflict, create=False, versioned=False) is Fate.REFUSE
    assert item_fate(429, {"type": "es_rejected_execution_exception"}, create=True, versioned=False) is Fate.RETRY
    assert item_fate(400, {"type": "mapper_parsing_exception"}, create=True, versioned=False) is Fate.REFUSE


class _Indices:
    async def exists(self, index: str) -> bool:
        return True


class _AnsweringClient:
    """Answers each bulk request with the statuses given per ``_id`` (201 otherwise) and records the ops."""

    def __init__(self, statuses: dict[str, tuple[int, dict[str, Any] | None]]) -> None:
        self.statuses = statuses
        self.requests: list[list[tuple[str, str]]] = []
        self.indices = _Indices()

    async def bulk(self, operations: bytes, filter_path: Any = None) -> dict[str, Any]:
        lines = operations.split(b"\n")[:-1]
        ops = [next(iter(orjson.loads(line).items())) for line in lines[0::2]]
        self.requests.append([(op, meta["_id"]) for op, meta in ops])
        items = []
        for op, meta in ops:
            status, error = self.statuses.get(meta["_id"], (201, None))
            items.append({op: {"status": status, **({"error": error} if error else {})}})
        return {"errors": any(s >= 300 for s, _ in self.statuses.values()), "items": items}

    async def close(self) -> None:
        return None


def test_sink_counts_a_create_conflict_as_already_stored_never_refused_nor_retried():
    conflict = (409, {"type": "version_conflict_engine_exception", "reason": "document already exists"})
    client = _AnsweringClient({"a:1": conflict, "a": conflict})
    counts = {"dup": 0, "stale": 0, "retry": 0}
    sink = ElasticsearchSink(client, on_duplicate=lambda n: counts.__setitem__("dup", counts["dup"] + n),
                             on_conflict=lambda n: counts.__setitem__("stale", counts["stale"] + n),
                             on_retry=lambda r: counts.__setitem__("retry", counts["retry"] + 1))
    bulk = Bulk()
    bulk.append("obs", "a:1", b'{"x":1}', op=CREATE)
    bulk.append("obs", "a:2", b'{"x":2}')
    bulk.append("obs_latest", "a", b'{"x":2}', 2)
    rejected = asyncio.run(sink.write_bulk(bulk))
    assert rejected == [] and counts == {"dup": 1, "stale": 1, "retry": 0}
    assert client.requests == [[("create", "a:1"), ("index", "a:2")], [("index", "a")]]


def test_sink_refuses_a_plain_index_conflict_as_before():
    client = _AnsweringClient({"a:2": (409, {"type": "version_conflict_engine_exception", "reason": "x"})})
    bulk = Bulk()
    bulk.append("obs", "a:2", b'{"x":2}')
    rejected = asyncio.run(ElasticsearchSink(client).write_bulk(bulk))
    assert [a["_id"] for a, _ in rejected] == ["a:2"]


def test_a_late_create_is_never_the_fallback_latest_position():
    """The fallback of a refused observation's latest position is a stored index op, never a late create
    (a create's _id may hold another document)."""
    obs = Bulk()
    obs.append("obs", "a:3", b'{"x":3}', op=CREATE)
    obs.append("obs", "a:2", b'{"x":2}')
    obs.append("obs", "a:4", b'{"x":4}')
    latest = Bulk()
    latest.append("obs_latest", "a", b'{"x":4}', 4)
    refused = [(obs.action(2), "refused")]
    out = stored_latest(obs, latest, refused)
    assert out.versions == [2] and out.sources == [b'{"x":2}']
