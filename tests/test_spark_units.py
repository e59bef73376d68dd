"""Unit tests of the Spark job's glue (no Spark, no Kafka, no Elasticsearch).

The job must run the agents' own pipeline: these tests compare its output with
:class:`agents.pipeline.Pipeline` directly, so a second implementation would show up as a difference.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import orjson
import pytest

pd = pytest.importorskip("pandas", reason="pandas comes with the [spark] extra")

from agents.pipeline import Incoming  # noqa: E402
from agents.sink import StdoutSink  # noqa: E402
from agents.spark_job import (BatchCounts, build_parser, checkpoint_dir, needs_kafka_v1_source,  # noqa: E402
                              progress_fields)
from agents.spark_worker import (OUTPUT_COLUMNS, JobContext, Worker, annotate, dead_letters,  # noqa: E402
                                 incoming)
from agents.validate import dead_letter  # noqa: E402
from geoiot import config  # noqa: E402
from geoiot.documents import INGESTED_AT, MOTION_FIELDS  # noqa: E402

JFK_INSIDE = (-73.7781, 40.6413)  # the terminal area, inside the shipped JFK fence
MANHATTAN = (-73.9855, 40.7580)


def ctx(**overrides: object) -> JobContext:
    return JobContext.from_settings(config.load({}, **overrides))


def event(track: str, t: str, lon: float, lat: float) -> bytes:
    return orjson.dumps({"taxiId": track, "observationTime": t, "longitude": lon, "latitude": lat,
                         "passengerCount": 1})


def chunk(values: list[bytes | None]) -> pd.DataFrame:
    return pd.DataFrame({"key": [b"k"] * len(values), "value": values, "topic": ["src"] * len(values),
                         "partition": [1] * len(values), "offset": list(range(10, 10 + len(values)))})


def test_annotate_is_the_agents_pipeline_without_track_fields() -> None:
    context = ctx(iot_index="obs")
    msgs = incoming(chunk([event("a", "2013-01-01 00:00:00", *JFK_INSIDE),
                           event("a", "2013-01-01 00:00:05", *MANHATTAN),
                           b"{nope"]))
    spark = annotate(context.pipeline(), msgs)
    faust = context.pipeline().process(msgs, lambda track: None)
    assert [a["_id"] for a in spark.actions] == [a["_id"] for a in faust.actions] == ["a:1356998400000",
                                                                                       "a:1356998405000"]
    assert [a["_index"] for a in spark.actions] == ["obs-2013.01.01"] * 2
    assert [a["_source"]["geofences"] for a in spark.actions] == [["jfk"], []]
    # The second report moved the track inside the batch: the agents compute its motion, Spark must not.
    assert faust.actions[1]["_source"]["distance_m"] > 0
    for action in spark.actions:
        assert all(action["_source"][name] is None for name in MOTION_FIELDS)
    for s, f in zip(spark.actions, faust.actions):
        same = {k for k in f["_source"] if k not in MOTION_FIELDS and k != INGESTED_AT}
        assert {k: s["_source"][k] for k in same} == {k: f["_source"][k] for k in same}
    assert [(m.offset, reason) for m, reason in spark.dead] == [(12, faust.dead[0][1])]


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


def test_worker_outputs_dead_letters_and_counts() -> None:
    stream = io.BytesIO()
    worker = Worker(ctx(iot_geofence_filter=True), sink=StdoutSink(stream))
    out = worker.process(chunk([event("a", "2013-01-01 00:00:00", *JFK_INSIDE),
                                event("b", "2013-01-01 00:00:00", *MANHATTAN),
                                orjson.dumps({"taxiId": "c"}), b""]))
    assert list(out.columns) == list(OUTPUT_COLUMNS)
    dlq = out[out["kind"] == "dlq"]
    assert [json.loads(v)["reason"] for v in dlq["value"]] == ["observationTime is missing", "empty value"]
    stats = out[out["kind"] == "stats"].iloc[0]
    assert (stats["messages"], stats["indexed"], stats["dead"], stats["filtered"]) == (4, 1, 2, 1)
    written = [orjson.loads(line) for line in stream.getvalue().splitlines()]
    assert [d["_id"] for d in written] == ["a:1356998400000"]


def test_worker_dead_letters_what_the_agents_dead_letter_and_indexes_the_rest() -> None:
    """Same per-event rules as the Faust agents: event-time bounds and ids Elasticsearch would refuse."""
    stream = io.BytesIO()
    worker = Worker(ctx(iot_max_event_age_days=36525.0), sink=StdoutSink(stream))
    out = worker.process(chunk([event("a", "2013-01-01 00:00:00", *MANHATTAN),
                                event("b", "0001-01-01T00:00:00+01:00", *MANHATTAN),
                                event("c", "0001-01-01T00:00:00Z", *MANHATTAN),
                                event("x" * 600, "2013-01-01 00:00:00", *MANHATTAN),
                                event("d", "2013-01-01 00:00:00", *MANHATTAN)]))
    reasons = [json.loads(v)["reason"] for v in out[out["kind"] == "dlq"]["value"]]
    assert len(reasons) == 3 and "outside the years 1-9999 UTC" in reasons[0]
    assert "days old" in reasons[1] and "exceeds Elasticsearch's 512" in reasons[2]
    written = [orjson.loads(line) for line in stream.getvalue().splitlines()]
    assert [d["_id"] for d in written] == ["a:1356998400000", "d:1356998400000"]


def test_bad_configuration_is_refused_before_spark_starts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from agents.spark_job import main

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
