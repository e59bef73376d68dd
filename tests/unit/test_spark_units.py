"""Unit tests of the Spark job's glue (no Spark, no Kafka, no Elasticsearch).

The job must run the agents' own pipeline with the worker's track state: these tests compare its output
with :class:`agents.core.pipeline.Pipeline` fed by the worker's :class:`agents.worker.track_table.TrackTable`, so a second
implementation (or a state that depends on where a micro-batch starts) would show up as a difference.
The state function runs on :mod:`testkit.group_state`, which calls it the way Spark does.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import orjson
import pytest

pd = pytest.importorskip("pandas", reason="pandas comes with the [spark] extra")

from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from agents.core import idle  # noqa: E402
from agents.core.pipeline import Incoming  # noqa: E402
from agents.core.motion import State  # noqa: E402
from agents.store.sink import StdoutSink  # noqa: E402
from agents.spark.job import (STATE_CONF, BatchCounts, build_parser, checkpoint_dir,  # noqa: E402
                              needs_kafka_v1_source, progress_fields)
from agents.spark.worker import (STATE_COLUMNS, WRITE_COLUMNS, JobContext, Worker, advance_group,  # noqa: E402
                                 dead_letters, group_function, group_key_path, incoming, timeout_duration)
from agents.worker.track_table import TrackTable  # noqa: E402
from geoiot import config, live  # noqa: E402
from geoiot.deadletter import dead_letter  # noqa: E402
from geoiot.documents import INGESTED_AT  # noqa: E402
from testkit.group_state import FakeGroupState, FakeStateStore  # noqa: E402

JFK_INSIDE = (-73.7781, 40.6413)  # the terminal area, inside the shipped JFK fence
MANHATTAN = (-73.9855, 40.7580)


def ctx(**overrides: object) -> JobContext:
    return JobContext.from_settings(config.load({}, **overrides))


def event(track: str, t: str, lon: float, lat: float) -> bytes:
    return orjson.dumps({"taxiId": track, "observationTime": t, "longitude": lon, "latitude": lat,
                         "passengerCount": 1})


def chunk(values: list[bytes | None], first_offset: int = 10) -> pd.DataFrame:
    return pd.DataFrame({"key": [b"k"] * len(values), "value": values, "topic": ["src"] * len(values),
                         "partition": [1] * len(values),
                         "offset": list(range(first_offset, first_offset + len(values)))})


def same(source: dict[str, object]) -> dict[str, object]:
    """A document without the one field that differs between runs (when it was indexed)."""
    return {k: v for k, v in source.items() if k != INGESTED_AT}


def kinds(rows: pd.DataFrame, kind: str) -> list[dict[str, object]]:
    return [orjson.loads(v) for v in rows.loc[rows["kind"] == kind, "value"]]


def worker_run(context: JobContext, values: list[bytes | None], batches: list[int],
               table: TrackTable | None = None) -> tuple[dict[str, dict[str, object]], list[dict[str, object]]]:
    """The Faust worker's way: the pipeline over consecutive batches, states in a TrackTable.

    Returns the documents by id (a later write of an id replaces the earlier) and the alerts in order.
    """
    pipeline = context.pipeline()
    table = table or TrackTable("changelog", lambda: None)
    docs: dict[str, dict[str, object]] = {}
    alerts: list[dict[str, object]] = []
    msgs = incoming(chunk(values))
    for start, stop in zip([0, *batches], [*batches, len(msgs)]):
        result = pipeline.process(msgs[start:stop], table.get)
        for track, (partition, state) in result.states.items():
            table.put(partition, track, state)
        docs.update({a["_id"]: same(a["_source"]) for a in result.observations.actions()})
        alerts += result.alerts
    return docs, alerts


def track_of(value: bytes | None) -> str:
    """The group key as Spark's get_json_object reads it ("" for anything but a JSON object with a track)."""
    try:
        return str(orjson.loads(value or b"").get("taxiId", ""))
    except (orjson.JSONDecodeError, AttributeError):
        return ""


def spark_run(context: JobContext, values: list[bytes | None], batches: list[int], seed: int,
              now_ms: int = 1_000_000) -> tuple[dict[str, dict[str, object]], list[dict[str, object]], FakeStateStore]:
    """The Spark job's way: micro-batches grouped by track, each group's rows shuffled, state in a state store."""
    import random

    rng = random.Random(seed)
    store = FakeStateStore(group_function(context))
    frame = chunk(values)
    frame["track"] = [track_of(v) for v in values]
    docs: dict[str, dict[str, object]] = {}
    alerts: list[dict[str, object]] = []
    for start, stop in zip([0, *batches], [*batches, len(values)]):
        part = frame.iloc[start:stop]
        groups: dict[object, list[pd.DataFrame]] = {}
        for track, rows in part.groupby("track", sort=False):
            rows = rows.drop(columns="track").sample(frac=1.0, random_state=rng.randrange(1 << 30))
            cut = rng.randrange(len(rows) + 1)  # Spark may hand a group over in several Arrow chunks
            groups[track] = [f for f in (rows.iloc[:cut], rows.iloc[cut:]) if len(f)]
        for out in store.batch(groups, now_ms):
            assert list(out.columns) == list(STATE_COLUMNS)
            docs.update({a["_id"]: same(a["_source"]) for a in kinds(out, "doc")})
            alerts += kinds(out, "alert")
    return docs, alerts, store


def test_incoming_keeps_missing_keys_and_values() -> None:
    frame = chunk([None, b"x"])
    frame.loc[0, "key"] = None
    msgs = incoming(frame)
    assert msgs[0] == Incoming(None, None, "src", 1, 10)
    assert msgs[1] == Incoming(b"x", b"k", "src", 1, 11)


def test_dead_letters_use_the_agents_shape_and_original_key() -> None:
    msg = Incoming(b"\xff\x00", b"taxi-7", "src", 2, 99)
    [(key, value)] = dead_letters([(msg, "not JSON: bad")])
    assert key == b"taxi-7"
    assert value == dead_letter(b"\xff\x00", "not JSON: bad", "src", 2, 99, b"taxi-7")
    assert json.loads(value)["original_encoding"] == "base64"


def test_bad_configuration_is_refused_before_spark_starts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from agents.spark.job import main

    bad = tmp_path / "fences.geojson"
    bad.write_text('{"type": "Point"}')
    assert main(["--geofences", str(bad), "--once"]) == 2
    assert "not a GeoJSON FeatureCollection" in capsys.readouterr().err


def test_checkpoint_dir_defaults_under_stack_and_passes_uris(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert checkpoint_dir(config.load({}, iot_app_id="fleet")) == str(tmp_path / ".stack" / "spark-checkpoints" / "fleet")
    assert checkpoint_dir(config.load({"SPARK_CHECKPOINT_DIR": "ck"})) == str(tmp_path / "ck")
    uri = "hdfs://nn:8020/ck/geoiot"
    assert checkpoint_dir(config.load({"SPARK_CHECKPOINT_DIR": uri})) == uri


def test_flags_mirror_settings_and_trigger_modes() -> None:
    args = build_parser().parse_args(["--topic", "t", "--index", "i", "--once", "--max-offsets-per-trigger", "50",
                                      "--spark-checkpoint-dir", "/ck"])
    settings = config.from_args(args, {})
    assert (settings.iot_topic, settings.iot_index, settings.spark_checkpoint_dir) == ("t", "i", "/ck")
    assert args.once and args.max_offsets_per_trigger == 50
    default = build_parser().parse_args([])
    assert not default.once and default.trigger_interval == "1 second" and default.starting_offsets == "earliest"


@pytest.mark.parametrize(("version", "v1"), [
    ("3.5.7", False), ("4.0.1", False), ("4.1.0", True), ("4.1.1", True), ("4.1.2", True), ("4.1.3", False),
    ("4.2.0", False), ("4.1.1.dev0", True), ("unknown", False)])
def test_v1_kafka_source_only_where_the_v2_one_cannot_restart(version: str, v1: bool) -> None:
    # SPARK-55271: the V2 source of 4.1.0-4.1.2 throws on the batch a restarted query redoes.
    assert needs_kafka_v1_source(version) is v1


def progress_json(batch: int, rows: int, state_rows: tuple[int, ...]) -> dict[str, object]:
    """A StreamingQueryProgress as Spark 4.1 serialises it (only the fields the log line reads vary)."""
    state = [{"operatorName": "transformWithStateInPandasExec", "numRowsTotal": n, "numRowsUpdated": n,
              "allUpdatesTimeMs": 1, "numRowsRemoved": 0, "allRemovalsTimeMs": 0, "commitTimeMs": 2,
              "memoryUsedBytes": 100 * n, "numRowsDroppedByWatermark": 0, "numShufflePartitions": 2,
              "numStateStoreInstances": 2, "customMetrics": {}} for n in state_rows]
    source = {"description": "KafkaV2[Subscribe[t]]", "startOffset": '{"t":{"0":0}}',
              "endOffset": '{"t":{"0":%d}}' % rows, "latestOffset": '{"t":{"0":500}}', "numInputRows": rows,
              "inputRowsPerSecond": 10.0, "processedRowsPerSecond": 20.04, "metrics": {}}
    return {"id": "6b1c7d25-1c4f-4a47-8a2b-2f1d0f3f5e11", "runId": "0f6f6f84-7c3e-4d8e-9a7c-54a3b8d2a9e0",
            "name": "q", "timestamp": "2026-12-02T01:00:00.000Z", "batchId": batch, "batchDuration": 1500,
            "durationMs": {"addBatch": 1200, "triggerExecution": 1500}, "stateOperators": state,
            "sources": [source], "sink": {"description": "ForeachBatchSink", "numOutputRows": -1, "metrics": {}},
            "numInputRows": rows, "inputRowsPerSecond": 10.0, "processedRowsPerSecond": 20.04}


def test_progress_line_joins_spark_progress_and_the_batch_counts() -> None:
    listener = pytest.importorskip("pyspark.sql.streaming.listener")
    progress = listener.StreamingQueryProgress.fromJson(progress_json(7, 30, (4, 5)))
    counts = BatchCounts()
    counts.record(7, {"messages": 30, "indexed": 28, "dead": 2, "alerts": 3})
    fields = progress_fields(progress, counts.take(7))
    assert fields["batch"] == 7 and fields["rows_in"] == 30
    assert (fields["indexed"], fields["dead"], fields["alerts"]) == (28, 2, 3)
    assert (fields["state_rows"], fields["state_bytes"], fields["duration_ms"]) == (9, 900, 1500)
    assert fields["end_offsets"] == {"KafkaV2[Subscribe[t]]": {"t": {"0": 30}}}
    assert counts.take(7) == {}, "a batch's counts are logged once"


def test_batch_counts_stay_bounded_when_progress_never_comes() -> None:
    counts = BatchCounts(keep=3)
    for batch in range(10):
        counts.record(batch, {"indexed": batch})
    assert sorted(counts.counts) == [7, 8, 9]


def crossing(track: str, seconds: list[int]) -> list[bytes]:
    """Reports alternating inside and outside the JFK fence (every one a transition but the first)."""
    return [event(track, f"2013-01-01 00:{s // 60:02d}:{s % 60:02d}", *(JFK_INSIDE if i % 2 == 0 else MANHATTAN))
            for i, s in enumerate(seconds)]


def test_state_function_gives_the_workers_documents_alerts_and_latest_positions() -> None:
    context = ctx(iot_index="obs")
    values = crossing("a", [0, 10, 20, 30]) + crossing("b", [0, 5]) + [b"{nope"]
    worker_docs, worker_alerts = worker_run(context, values, [])
    spark_docs, spark_alerts, store = spark_run(context, values, [], seed=1)
    assert spark_docs == worker_docs
    assert spark_alerts == worker_alerts and len(worker_alerts) == 3 + 1  # one per transition, a then b
    assert worker_docs["a:1356998410000"]["distance_m"] > 0 and worker_docs["a:1356998400000"]["distance_m"] is None
    held = {key[0]: orjson.loads(row[0]) for key, (row, _) in store.rows.items()}
    assert set(held) == {"a", "b"} and held["a"]["a"][1]["t"] == 1356998430000  # agents.core.motion' state dict
    assert held["a"]["a"][1].keys() == {"t", "lon", "lat", "fences"}  # agents.core.state_codec.to_mapping


def test_state_function_outputs_dead_letters_latest_and_counts() -> None:
    context = ctx(iot_index="obs", iot_geofence_filter=True)
    state = FakeGroupState(None, 5)
    [rows] = group_function(context)(("a",), iter([chunk([b"", *crossing("a", [0, 10, 20])])]), state)
    assert [json.loads(v)["reason"] for v in rows.loc[rows["kind"] == "dlq", "value"]] == ["empty value"]
    assert [a["_id"] for a in kinds(rows, "doc")] == ["a:1356998400000", "a:1356998420000"]  # filter mode
    [latest] = kinds(rows, "latest")
    assert (latest["_id"], latest["version"], latest["version_type"]) == ("a", 1356998420000, "external")
    stats = rows[rows["kind"] == "stats"].iloc[0]
    assert (stats["messages"], stats["dead"], stats["filtered"], stats["alerts"], stats["ended"]) == (4, 1, 1, 2, 0)
    doc = rows[rows["kind"] == "doc"].iloc[0]
    assert (doc["src"], doc["partition"], doc["offset"], doc["key"]) == ("src", 1, 11, b"k")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_state_function_does_not_depend_on_where_a_micro_batch_starts(data: st.DataObject) -> None:
    """Any cut into micro-batches, any order of the rows inside one: the worker's documents and alerts."""
    seconds = data.draw(st.lists(st.integers(0, 120), min_size=1, max_size=14), label="seconds")  # dups, out of order
    other = data.draw(st.lists(st.integers(0, 120), min_size=0, max_size=6), label="other")
    values = crossing("a", seconds) + crossing("b", other)
    order = data.draw(st.permutations(range(len(values))), label="arrival")
    # Kafka order per track is what both see; interleaving between tracks is free.
    by_track = {"a": iter([v for v in values if b'"a"' in v]), "b": iter([v for v in values if b'"b"' in v])}
    values = [next(by_track["a" if b'"a"' in values[i] else "b"]) for i in order]
    cuts = sorted(set(data.draw(st.lists(st.integers(1, max(1, len(values) - 1)), max_size=5), label="cuts")))
    context = ctx(iot_index="obs")
    expected = worker_run(context, values, [])
    spark_docs, spark_alerts, _ = spark_run(context, values, cuts, seed=data.draw(st.integers(0, 1000)))
    assert spark_docs == expected[0]
    assert spark_alerts == [a for a in expected[1] if a["track"] == "a"] + [a for a in expected[1] if a["track"] == "b"] \
        or sorted(map(orjson.dumps, spark_alerts)) == sorted(map(orjson.dumps, expected[1]))
    for track in ("a", "b"):  # per track, alerts in the same order
        assert [a for a in spark_alerts if a["track"] == track] == [a for a in expected[1] if a["track"] == track]


@pytest.mark.parametrize("late_ms", [0, 1])
def test_idle_boundary_is_the_same_on_spark_and_in_the_worker(late_ms: int) -> None:
    """Exactly IOT_TRACK_IDLE_TIMEOUT after the last update the state holds; one millisecond later it ended."""
    timeout = 30.0
    context = ctx(iot_index="obs", iot_track_idle_timeout=timeout)
    first, second = crossing("a", [0]), [event("a", "2013-01-01 00:00:10", *MANHATTAN)]
    updated = 1_000_000
    now = updated + int(timeout * 1000) + late_ms
    clock = iter([updated / 1000, now / 1000, now / 1000])
    table = TrackTable("changelog", lambda: None, idle_timeout=timeout, clock=lambda: next(clock))
    pipeline = context.pipeline()
    [(track, (partition, state))] = pipeline.process(incoming(chunk(first)), table.get).states.items()
    table.put(partition, track, state)  # at `updated`
    worker = pipeline.process(incoming(chunk(second, 11)), table.get)  # at `now`
    # Spark: the same state row, updated in the batch at `updated`, read by the batch at `now`.
    store = FakeStateStore(group_function(context))
    store.batch({"a": [chunk(first)]}, updated)
    [(_, timeout_at)] = store.rows.values()
    assert timeout_at == idle.ends_at(updated, timeout)
    [rows] = store.batch({"a": [chunk(second, 11)]}, now)
    spark = kinds(rows, "doc")
    assert [same(a["_source"]) for a in spark] == [same(a["_source"]) for a in worker.observations.actions()]
    ended = late_ms > 0
    assert (worker.observations.actions()[0]["_source"]["distance_m"] is None) is ended
    assert [a["event"] for a in worker.alerts] == ([] if ended else ["exit"]) == [a["event"] for a in kinds(rows, "alert")]
    assert rows.loc[rows["kind"] == "stats", "ended"].iloc[0] == int(ended)


def test_spark_times_out_an_idle_group_where_the_worker_evicts_it() -> None:
    timeout = 30.0
    context = ctx(iot_index="obs", iot_track_idle_timeout=timeout)
    store = FakeStateStore(group_function(context))
    store.batch({"a": [chunk(crossing("a", [0]))], "b": [chunk(crossing("b", [0]))]}, 1_000)
    store.batch({"b": [chunk(crossing("b", [10]), 11)]}, 1_000 + 20_000)
    assert store.batch({}, 1_000 + 30_000) == [] and len(store.rows) == 2  # at the boundary: alive
    [rows] = store.batch({}, 1_000 + 30_001)  # a timed out (Spark calls the function with no data)
    assert list(rows["kind"]) == ["stats"] and rows["ended"].iloc[0] == 1
    assert [k for (k,) in store.rows] == ["b"]
    assert timeout_duration({"b": [21_000, {}]}, 21_000, timeout) == 30_000
    assert timeout_duration({"b": [21_000, {}]}, 51_000, timeout) == 1  # Spark refuses 0
    assert timeout_duration({"b": [21_000, {}]}, 21_000, 0) is None

    now = [1.0]
    table = TrackTable("changelog", lambda: None, idle_timeout=timeout, clock=lambda: now[0])
    table.put(0, "a", State(1, 0.0, 0.0, ()))
    now[0] = 21.0
    table.put(1, "b", State(1, 0.0, 0.0, ()))
    table.put(1, "c", State(1, 0.0, 0.0, ()))
    now[0] = 31.0
    assert table.evict_idle() == [] and len(table) == 3  # exactly at the timeout
    now[0] = 31.001
    assert table.evict_idle() == [], "at most one sweep per interval"
    now[0] = 51.002
    assert table.evict_idle(keep=lambda track: track == "c") == [(0, "a"), (1, "b")]
    assert len(table) == 1 and table.get("a") is None and table.get("c") is None  # c: kept but expired


def test_advance_group_drops_only_the_expired_tracks_of_a_group() -> None:
    context = ctx(iot_index="obs")
    pipeline = context.pipeline()
    state = {"t": 1356998400000, "lon": JFK_INSIDE[0], "lat": JFK_INSIDE[1], "fences": ["jfk"],
             "hist": [[1356998400000, *JFK_INSIDE]]}  # as a job before issue 23 held it (read still)
    held = {"a": [0, state], "7": [50_000, dict(state)]}
    msgs = incoming(chunk(crossing("a", [0, 10])))
    result, alive, ended = advance_group(pipeline, msgs, held, 40_000, 30.0)
    assert ended == 1 and set(alive) == {"a", "7"} and alive["a"][0] == 40_000 and alive["7"][0] == 50_000
    assert result.observations.actions()[0]["_source"]["distance_m"] is None  # a started afresh


def test_write_step_indexes_and_passes_dead_letters_and_alerts_on_with_their_topics() -> None:
    stream = io.BytesIO()
    context = ctx(iot_index="obs", iot_dlq_topic="dead", iot_alerts_topic="alarms", iot_latest_topic="now")
    worker = Worker(context, sink=StdoutSink(stream))
    [rows] = group_function(context)(("a",), iter([chunk([b"x", *crossing("a", [0, 10])])]), FakeGroupState(None, 5))
    out = worker.store(rows)
    assert list(out.columns) == list(WRITE_COLUMNS)
    assert list(zip(out["kind"], [None if pd.isna(t) else t for t in out["topic"]])) == \
        [("dlq", "dead"), ("alert", "alarms"), ("live", "now"), ("stats", None)]
    stats = out[out["kind"] == "stats"].iloc[0]
    assert (stats["messages"], stats["indexed"], stats["dead"], stats["alerts"], stats["latest"], stats["live"]) == \
        (3, 2, 1, 1, 1, 1)
    written = [orjson.loads(line) for line in stream.getvalue().splitlines()]
    assert [d["_id"] for d in written] == ["a:1356998400000", "a:1356998410000", "a"]
    # The live record: the track's key, its newest document exactly as stored, on its source partition; the
    # producer chooses the partition of the other messages.
    record = out[out["kind"] == "live"].iloc[0]
    assert record["key"] == live.key("a") and live.track_of(record["key"]) == "a" and record["partition"] == 1
    assert live.document(record["value"], "observationTime") == kinds(rows, "doc")[-1]["_source"]
    assert out.loc[out["kind"] != "live", "partition"].isna().all()


class Refusing(StdoutSink):
    """Elasticsearch refusing some documents for good (a mapping conflict, say): the rest is written."""

    def __init__(self, refused: set[str]) -> None:
        super().__init__(io.BytesIO())
        self.refused = refused

    async def write(self, actions: list[dict[str, object]]) -> list[tuple[dict[str, object], str]]:
        kept = [a for a in actions if a["_id"] not in self.refused]
        await super().write(kept)
        return [(a, "mapper_parsing_exception") for a in actions if a["_id"] in self.refused]


def test_live_records_are_the_newest_stored_documents_of_each_track_on_its_source_partition() -> None:
    context = ctx(iot_index="obs", iot_latest_topic="now")
    values = crossing("a", [0, 10, 20]) + crossing("b", [0, 5])
    frame = chunk(values)
    frame["partition"] = [2, 2, 2, 0, 0]
    rows = pd.concat([next(group_function(context)((t,), iter([frame[[track_of(v) == t for v in values]]]),
                                                   FakeGroupState(None, 5))) for t in ("a", "b")])
    assert {(k, p) for k, p in zip(rows.loc[rows["kind"] == "latest", "key"],
                                   rows.loc[rows["kind"] == "latest", "partition"])} == {(b"a", 2), (b"b", 0)}
    # a's newest report is refused: its live record is its newest stored one, as its latest position is.
    out = Worker(context, sink=Refusing({"a:1356998420000"})).store(rows)
    records = {live.track_of(k): (p, live.document(v, "observationTime"))
               for kind, k, v, p in zip(out["kind"], out["key"], out["value"], out["partition"]) if kind == "live"}
    assert {t: (p, d["observationTime"]) for t, (p, d) in records.items()} == \
        {"a": (2, 1356998410000), "b": (0, 1356998405000)}
    docs = {a["_id"]: a["_source"] for a in kinds(rows, "doc")}
    assert records["a"][1] == docs["a:1356998410000"] and records["b"][1] == docs["b:1356998405000"]


def test_group_key_path_reads_the_track_field() -> None:
    assert group_key_path("taxiId") == "$.taxiId"
    assert group_key_path("icao24_id") == "$.icao24_id"
    assert group_key_path("vehicle id") == "$['vehicle id']"


def test_state_defaults_keep_the_state_store_small_and_batches_with_data() -> None:
    assert STATE_CONF["spark.sql.shuffle.partitions"] == "4"
    assert STATE_CONF["spark.sql.streaming.noDataMicroBatches.enabled"] == "false"


def test_driver_webhook_posts_alerts_with_the_agents_retry_rules() -> None:
    """The driver's webhook is the agents' Webhook: a 503 is retried, a 400 is not, outcomes are counted."""
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from agents.spark.job import DriverWebhook

    received: list[dict[str, object]] = []
    answers = {"a": iter([503, 200]), "b": iter([400])}  # per track: deliveries run concurrently

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            alert = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            received.append(alert)
            self.send_response(next(answers[alert["track"]], 200))
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    hook = DriverWebhook(f"http://127.0.0.1:{server.server_address[1]}/alerts")
    hook.hook.backoff = 0.01
    try:
        hook.submit([{"track": "a", "event": "enter"}, {"track": "b", "event": "exit"}])
        deadline = time.monotonic() + 10
        while sum(hook.outcomes.values()) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        hook.stop()
        server.shutdown()
    assert hook.outcomes == {"sent": 1, "failed": 1}
    # a: 503 then 200; b: 400, not retried (alerts go concurrently, so in any order)
    assert sorted(r["track"] for r in received) == ["a", "a", "b"]
