"""The ingest gateway's pure core: bodies, decompression, MQTT messages and the OsmAnd protocol."""

from __future__ import annotations

import gzip
import json
import time
import zlib

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geoiot.convert import FastConverter
from geoiot.schema import load_preset
from geoiot.timeparse import EventTimeBounds
from ingest import osmand
from ingest.parse import (REJECT_KINDS, BadEncoding, Reject, TooLarge, convert, decompress, mqtt_record,
                          outside_prefix, split_body, topic_track)

TAXI = load_preset("taxi")
NOW_MS = int(time.time() * 1000)


def position(track: str = "t1", ms: int = NOW_MS, lon: float = -73.9, lat: float = 40.7) -> dict:
    return {"taxiId": track, "observationTime": ms, "longitude": lon, "latitude": lat}


def rows(body: bytes, converter: FastConverter | None = None) -> list:
    converter = converter or FastConverter(TAXI, bounds=EventTimeBounds())
    return [convert(converter, row, value) for row, value in split_body(body)]


def test_object_array_and_ndjson_give_the_same_records() -> None:
    items = [position("a"), position("b", lon=1.5)]
    ndjson = b"\n".join(orjson.dumps(i) for i in items) + b"\n"
    assert rows(orjson.dumps(items)) == rows(ndjson) == [dict(i, **{k: None for k in TAXI.names if k not in i})
                                                          for i in items]
    assert rows(orjson.dumps(items[0])) == rows(ndjson)[:1]
    pretty = json.dumps(items[0], indent=2).encode()
    assert rows(pretty) == rows(ndjson)[:1]


def test_each_bad_row_is_rejected_with_its_reason_and_row() -> None:
    body = b"\n".join([orjson.dumps(position("ok")), b"not json", b"[1, 2]", orjson.dumps(position(lat=91.0)),
                       orjson.dumps(position(ms=NOW_MS + 30 * 86_400_000)),
                       b'{"taxiId": "t", "observationTime": 1, "longitude": NaN, "latitude": 1}',
                       orjson.dumps({"taxiId": ["x"], "observationTime": NOW_MS, "longitude": 1, "latitude": 1})])
    out = rows(body)
    assert isinstance(out[0], dict) and out[0]["taxiId"] == "ok"
    rejects = out[1:]
    assert all(isinstance(r, Reject) for r in rejects)
    assert [r.row for r in rejects] == [1, 2, 3, 4, 5, 6]
    assert [r.kind for r in rejects] == ["json", "not_object", "invalid", "event_time", "json", "invalid"]
    assert "latitude" in rejects[2].reason and "days ahead" in rejects[3].reason
    assert all(r.kind in REJECT_KINDS for r in rejects)


def test_deep_nesting_is_a_reject_not_a_crash() -> None:
    deep = b"[" * 5000 + b"]" * 5000
    [reject] = rows(deep)
    assert isinstance(reject, Reject) and reject.kind == "json"
    nested = orjson.dumps(position())[:-1] + b', "passengerCount": ' + b"[" * 500 + b"]" * 500 + b"}"
    [record] = rows(nested)
    assert record["passengerCount"] is None  # an attribute that is not its type becomes null, as in replay


def test_decompression_is_bounded() -> None:
    data = orjson.dumps(position()) * 10
    assert decompress(gzip.compress(data), "gzip", len(data)) == data
    assert decompress(zlib.compress(data), "deflate", len(data)) == data
    assert decompress(data, "", len(data)) == data
    bomb = gzip.compress(b"\0" * 20_000_000)
    assert len(bomb) < 100_000
    with pytest.raises(TooLarge):
        decompress(bomb, "gzip", 1_000_000)
    with pytest.raises(TooLarge):
        decompress(data, "identity", len(data) - 1)
    with pytest.raises(BadEncoding):
        decompress(gzip.compress(data)[:-12], "gzip", len(data))
    with pytest.raises(BadEncoding):
        decompress(b"plain", "gzip", 100)
    with pytest.raises(BadEncoding):
        decompress(data, "br", len(data))


def test_a_token_prefix_limits_the_tracks() -> None:
    assert outside_prefix(TAXI, position("fleet-a-1"), "fleet-a-") is None
    assert "fleet-a-" in outside_prefix(TAXI, position("fleet-b-1"), "fleet-a-")


def test_mqtt_messages() -> None:
    converter = FastConverter(TAXI)
    filter_ = "devices/+/position"
    payload = {k: v for k, v in position().items() if k != "taxiId"}
    record = mqtt_record(TAXI, converter, filter_, "devices/car7/position", orjson.dumps(payload), False)
    assert isinstance(record, dict) and record["taxiId"] == "car7"
    same = mqtt_record(TAXI, converter, filter_, "devices/car7/position", orjson.dumps(position("car7")), False)
    assert same == record
    kinds = {
        "track_mismatch": mqtt_record(TAXI, converter, filter_, "devices/car7/position",
                                      orjson.dumps(position("car8")), False),
        "no_track": mqtt_record(TAXI, converter, filter_, "devices//position", orjson.dumps(payload), False),
        "json": mqtt_record(TAXI, converter, filter_, "devices/c/position", b"\xff\xfe", False),
        "not_object": mqtt_record(TAXI, converter, filter_, "devices/c/position", b"42", False),
        "retained": mqtt_record(TAXI, converter, filter_, "devices/c/position", orjson.dumps(payload), True),
    }
    assert {k: v.kind for k, v in kinds.items()} == {k: k for k in kinds}
    from_payload = mqtt_record(TAXI, converter, "fleet/#", "fleet/x", orjson.dumps(position("p1")), False)
    assert from_payload["taxiId"] == "p1"
    missing = mqtt_record(TAXI, converter, "fleet/#", "fleet/x", orjson.dumps(payload), False)
    assert isinstance(missing, Reject) and "taxiId" in missing.reason


def test_osmand_parameters_and_traccar_json() -> None:
    preset = osmand.preset()
    converter = FastConverter(preset)
    seconds = NOW_MS // 1000
    params = {"id": "phone1", "timestamp": str(seconds), "lat": "40.7", "lon": "-73.9", "speed": "3.5",
              "bearing": "90", "altitude": "12", "accuracy": "5", "batt": "55", "unknown": "x"}
    record = convert(converter, 0, osmand.from_params(params))
    assert record == {"id": "phone1", "timestamp": seconds * 1000, "lat": 40.7, "lon": -73.9, "speed": 3.5,
                      "bearing": 90.0, "altitude": 12.0, "accuracy": 5.0, "batt": 55.0}
    older = {k: v for k, v in params.items() if k != "id"} | {"deviceid": "phone1"}
    assert convert(converter, 0, osmand.from_params(older)) == record
    traccar = {"device_id": "phone1", "location": {
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds)), "is_moving": True,
        "coords": {"latitude": 40.7, "longitude": -73.9, "speed": 3.5, "heading": 90, "altitude": 12, "accuracy": 5},
        "battery": {"level": 0.55, "is_charging": False}}}
    from_json = convert(converter, 0, osmand.from_traccar_json(traccar))
    assert from_json == dict(record, batt=pytest.approx(55.0))
    bad = convert(converter, 0, osmand.from_traccar_json({"device_id": "x", "location": "nowhere"}))
    assert isinstance(bad, Reject)
    projected = osmand.project(record, preset, TAXI)
    assert projected == {"taxiId": "phone1", "observationTime": seconds * 1000, "latitude": 40.7, "longitude": -73.9}
    assert osmand.project(record, preset, preset) == record


@given(st.binary(max_size=2000))
@settings(max_examples=300, deadline=None)
def test_any_body_gives_records_or_rejects(body: bytes) -> None:
    for out in rows(body):
        assert isinstance(out, (dict, Reject))
        if isinstance(out, Reject):
            assert out.kind in REJECT_KINDS and out.reason


json_values = st.recursive(st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers(-(2**63), 2**63 - 1)
                           | st.text(),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
                           max_leaves=10)


@given(st.lists(st.dictionaries(st.sampled_from(TAXI.names + ("other",)), json_values, max_size=6), max_size=8))
@settings(max_examples=200, deadline=None)
def test_array_and_ndjson_agree_on_any_objects(objects: list[dict]) -> None:
    as_array = rows(orjson.dumps(objects))
    as_ndjson = rows(b"\n".join(orjson.dumps(o) for o in objects))
    assert len(as_array) == len(as_ndjson) == len(objects)
    for a, b in zip(as_array, as_ndjson):
        assert type(a) is type(b)
        assert a == b if isinstance(a, dict) else (a.row, a.reason) == (b.row, b.reason)
        if isinstance(a, dict):
            key = a[TAXI.track]
            assert isinstance(key, str) and key.strip() == key and key
            assert -180 <= a[TAXI.lon] <= 180 and -90 <= a[TAXI.lat] <= 90


@given(st.lists(st.text(alphabet="abc+#", min_size=0, max_size=4), min_size=1, max_size=4),
       st.lists(st.text(alphabet="xyz", min_size=0, max_size=4), min_size=1, max_size=5))
def test_topic_track_is_the_level_of_the_first_plus(filter_levels: list[str], topic_levels: list[str]) -> None:
    filter_, topic = "/".join(filter_levels), "/".join(topic_levels)
    track = topic_track(filter_, topic)
    if "+" not in filter_levels:
        assert track is None
    elif track is not None:
        assert track == topic_levels[filter_levels.index("+")] and track
