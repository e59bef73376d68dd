"""Unit tests of the replay package: reading and typing rows, partitioners, pacing, the generator."""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import math
from datetime import datetime, timedelta, timezone
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings, strategies as st
from shapely.geometry import Point, shape

from geoiot.config import DEFAULT_GEOFENCES
from geoiot.logs import QuietLog
from geoiot.schema import InvalidRecord, load_preset, parse_row, typed_record
from geoiot.timeparse import parse_time
from replay.cli import build_parser, main
from replay.generate import MAX_SPEED, make_tracks, write_csv
from replay.pacing import Timestamps, batch_interval, constant_schedule, rate_from_batches
from geoiot.partitioning import BalancedPartitioner, HashPartitioner, kafka_partition, make_partitioner
from geoiot.convert import FastConverter
from replay.reader import DamagedFile, Rejected, open_text, read_records
from replay.summary import reason_kind

TAXI = load_preset("taxi")
SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "taxi-route.csv"
GOOD = ("0,2013-01-01 00:00:01,-73.968073,40.765454,1,1,6.21,1,A020A87D917A0AFB526A1F01597INEEJ,"
        "034AA953F43243D2CDC8535DB0JI4VN4,VTS,2,,2013-01-01 00:00:00,2013-01-01 00:15:00,-73.98028135299683,"
        "40.76534770942323,-73.9798789669999,40.752608546")


def _write(path: Path, text: str, gz: bool = False) -> Path:
    if gz:
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


# --- reading ------------------------------------------------------------------------------------

def test_headerless_row_is_typed_like_the_shared_core(tmp_path: Path) -> None:
    [(line, record)] = list(read_records(_write(tmp_path / "a.csv", GOOD + "\n"), TAXI))
    assert line == 1
    assert record == parse_row(TAXI, GOOD.split(","))[0]
    assert record["taxiId"] == "0" and record["observationTime"] == parse_time("2013-01-01T00:00:01Z")
    assert record["store_and_fwd_flag"] is None and record["rate_code"] == 2
    assert list(record) == list(TAXI.names)


@pytest.mark.skipif(not SHARED.exists(), reason="shared sample data not present")
def test_original_sample_file_reads_without_rejects() -> None:
    rows = list(read_records(SHARED, TAXI))
    assert len(rows) == sum(1 for line in SHARED.read_text().splitlines() if line.strip())
    assert not [r for _, r in rows if isinstance(r, Rejected)]


def test_header_csv_jsonl_and_gzip_give_the_same_records(tmp_path: Path) -> None:
    plain = [r for _, r in read_records(_write(tmp_path / "a.csv", GOOD + "\n"), TAXI)]
    reordered = list(reversed(TAXI.names))
    values = dict(zip(TAXI.names, GOOD.split(",")))
    header = ",".join(reordered) + "\n" + ",".join(values[n] for n in reordered) + "\n"
    with_header = [r for _, r in read_records(_write(tmp_path / "h.csv.gz", header, gz=True), TAXI)]
    obj = dict(values, longitude=-73.968073, latitude=40.765454, passengerCount=1, observationTime=1356998401)
    jsonl = [r for _, r in read_records(_write(tmp_path / "j.jsonl", json.dumps(obj) + "\n\n"), TAXI)]
    sniffed = [r for _, r in read_records(_write(tmp_path / "noext", json.dumps(obj) + "\n", gz=True), TAXI)]
    assert plain == with_header == jsonl == sniffed
    assert len(plain) == 1


def test_bad_rows_are_rejected_with_line_numbers_and_reasons(tmp_path: Path) -> None:
    cols = GOOD.split(",")

    def row(**changes: str) -> str:
        values = list(cols)
        for name, value in changes.items():
            values[TAXI.names.index(name)] = value
        return ",".join(values)

    lines = [GOOD, ",".join(cols[:5]), row(observationTime="yesterday"), row(longitude="east"),
             row(longitude="-181"), row(latitude="90.5"), row(taxiId=" "), "", GOOD]
    out = list(read_records(_write(tmp_path / "bad.csv", "\n".join(lines) + "\n"), TAXI))
    rejected = [r for _, r in out if isinstance(r, Rejected)]
    assert [r.line_no for r in rejected] == [2, 3, 4, 5, 6, 7]
    kinds = [reason_kind(r.reason, TAXI.core) for r in rejected]
    assert kinds == ["columns", "time", "longitude", "longitude", "latitude", "track"]
    assert [line for line, r in out if not isinstance(r, Rejected)] == [1, 9]
    assert rejected[0].raw == lines[1]


def test_invalid_json_lines_are_rejected(tmp_path: Path) -> None:
    out = list(read_records(_write(tmp_path / "x.jsonl", '{"taxiId": "1"\n[1, 2]\n'), TAXI))
    assert [reason_kind(r.reason, TAXI.core) for _, r in out] == ["json", "json"]


BOM = "\ufeff"


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_a_byte_order_mark_is_dropped_in_every_layout(tmp_path: Path, gz: bool) -> None:
    """Issue 16 row 6: a BOM made a phantom track "\ufeff0", hid the header, and broke the first JSON line."""
    values = dict(zip(TAXI.names, GOOD.split(",")))
    header = ",".join(TAXI.names) + "\n" + GOOD + "\n"
    obj = dict(values, longitude=-73.968073, latitude=40.765454)
    for name, text in [("headerless.csv", GOOD + "\n" + GOOD + "\n"), ("header.csv", header),
                       ("lines.jsonl", json.dumps(obj) + "\n" + json.dumps(obj) + "\n")]:
        without = list(read_records(_write(tmp_path / f"no-{name}", text, gz), TAXI))
        with_bom = list(read_records(_write(tmp_path / f"bom-{name}", BOM + text, gz), TAXI))
        assert with_bom == without, name
        assert not [r for _, r in with_bom if isinstance(r, Rejected)], name
        assert all(r["taxiId"] == "0" for _, r in with_bom), name


def _damaged_copies(tmp_path: Path) -> tuple[list[str], bytes]:
    lines = [",".join([str(i % 7)] + GOOD.split(",")[1:]) for i in range(3000)]
    return lines, gzip.compress(("\n".join(lines) + "\n").encode())


def test_a_truncated_gzip_yields_every_complete_line_then_says_where_it_ends(tmp_path: Path) -> None:
    """Issue 16 row 7: a truncated .gz raised EOFError mid-file (the replay died without a summary)."""
    lines, data = _damaged_copies(tmp_path)
    path = tmp_path / "cut.csv.gz"
    path.write_bytes(data[: len(data) * 2 // 3])
    out: list[tuple[int, object]] = []
    with pytest.raises(DamagedFile) as damaged:
        for item in read_records(path, TAXI):
            out.append(item)
    good = [(n, r) for n, r in out if not isinstance(r, Rejected)]
    rejected = [r for _, r in out if isinstance(r, Rejected)]
    assert 0 < len(good) < len(lines) and damaged.value.lines == len(good)
    intact = list(read_records(_write(tmp_path / "all.csv", "\n".join(lines) + "\n"), TAXI))
    assert good == intact[: len(good)]  # exactly the file's prefix, in order
    [partial] = rejected  # the line the file ends inside: rejected, never sent half
    assert partial.line_no == len(good) + 1 and partial.kind == "incomplete"
    assert lines[len(good)].startswith(partial.raw) and partial.raw != lines[len(good)]
    assert "EOFError" in str(damaged.value) and f"after line {len(good)}" in str(damaged.value)


def test_corrupt_gzip_data_is_a_damaged_file_not_a_zlib_error(tmp_path: Path) -> None:
    _, data = _damaged_copies(tmp_path)
    broken = bytearray(data)
    for i in range(len(data) // 2, len(data) // 2 + 64):
        broken[i] ^= 0x5A
    path = tmp_path / "bad.csv.gz"
    path.write_bytes(bytes(broken))
    with pytest.raises(DamagedFile) as damaged:  # whichever way the damage shows (bad data, CRC, early end)
        list(read_records(path, TAXI))
    assert str(path) in str(damaged.value)
    (tmp_path / "notgz.csv.gz").write_bytes(b"\x1f\x8b" + b"garbage" * 10)
    with pytest.raises(DamagedFile, match="after line 0"):
        list(read_records(tmp_path / "notgz.csv.gz", TAXI))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n\ufeff"), max_size=40)
                | st.just("x" * 200_000), max_size=30), st.booleans(), st.booleans())
def test_guarded_stream_reads_exactly_what_the_text_layer_would(lines: list[str], final_newline: bool,
                                                                gz: bool) -> None:
    """The damage guard holds bytes back to a line end: for an intact file it must change nothing."""
    text = "\n".join(lines) + ("\n" if final_newline and lines else "")
    raw = text.encode()
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "f"
        path.write_bytes(gzip.compress(raw) if gz else raw)
        with open_text(path) as stream:
            assert stream.read() == text


def test_quiet_log_logs_once_per_period_with_a_count(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    quiet = QuietLog(logging.getLogger("quiet-test"), 10.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="quiet-test"):
        logged = []
        for second in range(25):  # an error every 0.1 s for 25 s
            for tenth in range(10):
                now[0] = second + tenth / 10
                logged.append(quiet.warning("down", "broker %s down", "b1"))
        quiet.warning("other", "another kind is not held back by the first")
        quiet.flush()
    messages = [r.getMessage() for r in caplog.records]
    assert sum(logged) == 3  # at 0 s, 10 s and 20 s
    assert messages[0] == "broker b1 down"
    assert messages[1] == "broker b1 down (99 more like this in the last 10s)"
    assert messages[2] == "broker b1 down (99 more like this in the last 10s)"
    assert messages[3] == "another kind is not held back by the first"
    assert messages[4] == "down: 49 more like this were not logged"
    assert len(messages) == 5


_cell = st.one_of(st.sampled_from(["", " ", "1", "3.0", "nan", "inf", "-0", "1e3", "1E100", "9" * 25, "1e30", "x",
                                    "2013-01-01 00:00:00",
                                    "1356998400", "-73.9", "181", "91", "  7 ", "1_0", "true"]),
                  st.text(max_size=6))


@settings(max_examples=400, deadline=None)
@given(st.lists(_cell, min_size=19, max_size=19), st.sets(st.integers(0, 18), max_size=4))
def test_fast_converter_agrees_with_the_shared_core(cells: list[str], keep: set[int]) -> None:
    values = GOOD.split(",")
    for i, cell in enumerate(cells):
        if i not in keep:  # keep a few original cells so valid rows are common
            values[i] = cell if i >= 4 else values[i]
    if 0 not in keep:
        values[0] = cells[0]
    converter = FastConverter(TAXI)
    try:
        expected = parse_row(TAXI, values)[0]
        for name, value in expected.items():  # beyond 64 bits: null attribute, rejected event time
            if isinstance(value, int) and not -(2**63) <= value < 2**63:
                if name == TAXI.time:
                    with pytest.raises(InvalidRecord, match="out of range"):
                        converter.convert_strings(values)
                    return
                expected[name] = None
    except InvalidRecord as exc:
        with pytest.raises(InvalidRecord) as got:
            converter.convert_strings(values)
        assert got.value.reason == exc.reason
    else:
        assert orjson.dumps(converter.convert_strings(values)) == orjson.dumps(expected)


@settings(max_examples=300, deadline=None)
@given(st.datetimes(min_value=datetime(1974, 1, 1), max_value=datetime(2200, 1, 1)))
def test_time_notations_agree(moment: datetime) -> None:
    moment = moment.replace(microsecond=moment.microsecond // 1000 * 1000, tzinfo=timezone.utc)
    ms = (moment - datetime(1970, 1, 1, tzinfo=timezone.utc)) // timedelta(milliseconds=1)
    assert parse_time(moment.strftime("%Y-%m-%d %H:%M:%S")) == ms - ms % 1000
    assert parse_time(moment.isoformat()) == ms
    assert parse_time(str(ms)) == ms
    assert parse_time(str(ms // 1000)) == ms - ms % 1000


@settings(max_examples=200, deadline=None)
@given(st.fixed_dictionaries({"taxiId": st.text(min_size=1, max_size=5), "observationTime": st.integers(0, 4_000_000_000),
                              "longitude": st.floats(-200, 200), "latitude": st.floats(-100, 100)}))
def test_json_records_agree_with_typed_record(obj: dict) -> None:
    converter = FastConverter(TAXI)
    try:
        expected = typed_record(TAXI, obj)[0]
    except InvalidRecord as exc:
        with pytest.raises(InvalidRecord, match=None) as got:
            converter.convert(obj)
        assert got.value.reason == exc.reason
        assert not (-180 <= obj["longitude"] <= 180 and -90 <= obj["latitude"] <= 90 and obj["taxiId"].strip())
    else:
        assert converter.convert(obj) == expected


# --- partitioners -------------------------------------------------------------------------------

def test_hash_partitioner_matches_kafka_reference_values() -> None:
    # Values from the Java client's Utils.murmur2 (org.apache.kafka.common.utils.UtilsTest#testMurmur2).
    from aiokafka.partitioner import murmur2

    def signed(h: int) -> int:  # aiokafka returns the unsigned 32-bit value of Java's int
        return h - (1 << 32) if h >= 1 << 31 else h

    expected = {b"21": -973932308, b"foobar": -790332482, b"a-little-bit-long-string": -985981536,
                b"a-little-bit-longer-string": -1486304829, b"abc": 479470107}
    for key, java in expected.items():
        assert signed(murmur2(key)) == java
        assert kafka_partition(key, 7) == (java & 0x7FFFFFFF) % 7


def test_each_track_keeps_one_partition() -> None:
    for partitioner in (HashPartitioner(4), BalancedPartitioner(4)):
        seen: dict[bytes, int] = {}
        for i in range(2000):
            key = str(i % 37).encode()
            assert seen.setdefault(key, partitioner(key)) == seen[key]


@pytest.mark.parametrize("tracks,partitions", [(30, 3), (100, 7), (1000, 12)])
def test_balanced_partitioner_stays_within_ten_percent(tracks: int, partitions: int) -> None:
    balanced = BalancedPartitioner(partitions)
    for _ in range(20):
        for t in range(tracks):
            balanced(f"taxi-{t}".encode())
    mean = sum(balanced.load) / partitions
    assert max(abs(n - mean) for n in balanced.load) <= 0.1 * mean


def test_unknown_partitioner_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="hash, balanced"):
        make_partitioner("random", 3)


# --- pacing -------------------------------------------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(st.floats(0.5, 100_000), st.floats(0.001, 2.0), st.integers(1, 500))
def test_constant_schedule_is_exact_over_time(rate: float, interval: float, batches: int) -> None:
    schedule = constant_schedule(rate, interval)
    total = 0
    for k in range(batches):
        offset, count = next(schedule)
        assert math.isclose(offset, k * interval, abs_tol=1e-9)
        assert count >= 0
        total += count
    assert abs(total - rate * batches * interval) <= 1


def test_rate_from_batches_and_default_interval() -> None:
    assert rate_from_batches(100, 1000) == 100.0
    assert rate_from_batches(5, 20) == 250.0
    assert batch_interval(1000) == 0.1 and batch_interval(2) == 0.5
    with pytest.raises(ValueError):
        rate_from_batches(0, 1000)


def test_timestamp_deadlines_by_interval_and_speedup() -> None:
    fixed = Timestamps(interval_s=3.0)
    assert [fixed.deadline(t) for t in (0, 10, 5000)] == [0.0, 3.0, 6.0]
    fast = Timestamps(speedup=10)
    assert [fast.deadline(t) for t in (1_000_000, 1_001_000, 1_011_000, 1_005_000)] == [0.0, 0.1, 1.1, 1.1]
    with pytest.raises(ValueError):
        Timestamps()
    with pytest.raises(ValueError):
        Timestamps(speedup=0)


# --- generator ----------------------------------------------------------------------------------

def test_generator_is_byte_identical_for_a_seed(tmp_path: Path) -> None:
    digest = [hashlib.sha256(Path(write_csv(tmp_path / f"{n}.csv.gz", 7, 40, seed=11) and tmp_path / f"{n}.csv.gz").read_bytes()).hexdigest()
              for n in ("a", "b")]
    assert digest[0] == digest[1]
    write_csv(tmp_path / "c.csv", 7, 40, seed=12)
    write_csv(tmp_path / "d.csv", 7, 40, seed=11)
    assert (tmp_path / "c.csv").read_bytes() != (tmp_path / "d.csv").read_bytes()
    assert gzip.decompress((tmp_path / "a.csv.gz").read_bytes()) == (tmp_path / "d.csv").read_bytes()


def test_generated_rows_are_valid_time_ordered_and_plausible(tmp_path: Path) -> None:
    path = tmp_path / "g.csv"
    assert write_csv(path, 12, 60, seed=5) == 720
    records = [r for _, r in read_records(path, TAXI)]
    assert all(not isinstance(r, Rejected) for r in records)
    times = [r["observationTime"] for r in records]
    assert times == sorted(times)
    by_track: dict[str, list[dict]] = {}
    for r in records:
        by_track.setdefault(r["taxiId"], []).append(r)
    assert len(by_track) == 12 and all(len(v) == 60 for v in by_track.values())
    for points in by_track.values():
        for a, b in zip(points, points[1:]):
            assert b["observationTime"] - a["observationTime"] == 1000
            dx = (b["longitude"] - a["longitude"]) * 111_320 * math.cos(math.radians(a["latitude"]))
            dy = (b["latitude"] - a["latitude"]) * 111_320
            assert math.hypot(dx, dy) <= MAX_SPEED * 1.05  # metres per second
        assert -74.05 <= points[0]["longitude"] <= -73.75 and 40.58 <= points[0]["latitude"] <= 40.88


def test_some_generated_tracks_cross_the_jfk_fence() -> None:
    fence = shape(json.loads(DEFAULT_GEOFENCES.read_text())["features"][0]["geometry"])
    entered = exited = 0
    for track in make_tracks(40, 400, seed=2):
        inside = [fence.contains(Point(x, y)) for x, y in zip(track.lons, track.lats)]
        entered += any(not a and b for a, b in zip(inside, inside[1:]))
        exited += any(a and not b for a, b in zip(inside, inside[1:]))
    assert entered >= 2 and exited >= 2


def test_generate_cli_and_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli.csv"
    assert main(["generate", "--tracks", "3", "--points", "4", "--seed", "1", "--out", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 12
    with pytest.raises(SystemExit) as exc:
        main(["generate", "--tracks", "3", "--out", str(out), "--bbox", "1,2,3"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["constant", "f.csv", "--rate", "-5"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main(["constant", str(out), "--schema", "nope"])
    assert exc.value.code == 2
    assert "unknown schema preset" in capsys.readouterr().err


def test_replay_and_the_agents_refuse_the_same_event_times_with_the_same_reason(tmp_path: Path) -> None:
    from agents.core.geofence import Geofences
    from agents.core.pipeline import Incoming, Pipeline
    from geoiot.timeparse import EventTimeBounds
    from replay.reader import read_records

    preset = load_preset("taxi")
    times = ["2013-01-01T00:00:00Z", "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00",
             "0001-01-01T00:00:00Z", "2999-01-01T00:00:00Z"]
    lines = [json.dumps({"taxiId": str(i), "observationTime": t, "longitude": 1.0, "latitude": 1.0})
             for i, t in enumerate(times)]
    path = tmp_path / "times.jsonl"
    path.write_text("\n".join(lines) + "\n")
    bounds = EventTimeBounds(max_age_days=36525, max_ahead_days=1)
    replayed = [getattr(item, "reason", None) for _, item in read_records(path, preset, bounds=bounds)]
    messages = [Incoming(line.encode(), None, "t", 0, i) for i, line in enumerate(lines)]
    result = Pipeline(preset, Geofences.from_geometries([], []), "obs", bounds=bounds).process(messages, {}.get)
    dead = dict.fromkeys(range(len(times)))
    dead.update({m.offset: reason for m, reason in result.dead})
    assert replayed[0] is None and all(replayed[1:])
    assert replayed == list(dead.values())
    # Without bounds (e.g. --retime now rewrites the times), only the years 1-9999 UTC rule remains.
    unbounded = [getattr(item, "reason", None) for _, item in read_records(path, preset)]
    assert [r is None for r in unbounded] == [True, False, False, True, True]
