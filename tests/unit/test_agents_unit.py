"""Unit and property tests of the agents' pure parts: validation, geofences, tracks, documents, batches."""

from __future__ import annotations

import asyncio
import fnmatch
import math
import os
import time

import numpy as np
import orjson
import pytest
import shapely
from aiohttp import web
from elasticsearch.helpers import expand_action
from hypothesis import given, settings, strategies as st
from shapely.geometry import Point, box, shape

from agents.core.geofence import GeofenceError, Geofences
from agents.core.motion import State, advance_batch, bearing_deg, haversine_m
from agents.core.pipeline import Incoming, Pipeline
from agents.core.transitions import transitions
from agents.core.validate import decode
from agents.webhook import Webhook
from geoiot import documents
from geoiot.config import DEFAULT_GEOFENCES
from geoiot.deadletter import dead_letter, original_bytes
from geoiot.schema import InvalidRecord, coerce, core_values, load_preset, typed_record
from testkit import actions as es_actions
from testkit.actions import serialized_action
from testkit.motion import advance

PRESET = load_preset("taxi")
T0 = 1_357_000_000_000  # epoch ms (small numbers would read as epoch seconds)


def fc(*features):
    return {"type": "FeatureCollection", "features": list(features)}


def poly_feature(fid, geom, in_props=False):
    f = {"type": "Feature", "properties": {}, "geometry": shapely.geometry.mapping(geom)}
    if in_props:
        f["properties"]["id"] = fid
    else:
        f["id"] = fid
    return f


def raw(**fields):
    base = {"taxiId": "7", "observationTime": 1357000000000, "longitude": -73.97, "latitude": 40.76}
    base.update(fields)
    return orjson.dumps({k: v for k, v in base.items() if v is not ...})


# --- validation ---------------------------------------------------------------------------------

def test_decode_valid_coerces_and_nulls_other_attributes():
    obs = decode(PRESET, raw(taxiId=42, passengerCount="3", tripDistance="far"))
    assert obs.track == "42" and obs.record["taxiId"] == "42"
    assert obs.record["passengerCount"] == 3
    assert obs.record["tripDistance"] is None and obs.nulled == ("tripDistance",)


def test_decode_iso_time():
    obs = decode(PRESET, raw(observationTime="2013-01-01T00:00:01Z"))
    assert obs.time_ms == 1356998401000


@pytest.mark.parametrize("value, reason", [
    (b"", "empty value"),
    (None, "empty value"),
    (b"not json", "not JSON"),
    (b"[1, 2]", "not a JSON object"),
    (b'"text"', "not a JSON object"),
    (raw(taxiId=...), "taxiId is missing"),
    (raw(taxiId=True), "taxiId is a bool"),
    (raw(taxiId=""), "taxiId is empty"),
    (raw(observationTime=...), "observationTime is missing"),
    (raw(observationTime="yesterday"), "observationTime"),
    (raw(longitude=181), "longitude"),
    (raw(latitude=-90.5), "latitude"),
    (raw(latitude="north"), "latitude"),
    (raw(longitude=None), "longitude"),
])
def test_decode_invalid_gives_reason(value, reason):
    with pytest.raises(InvalidRecord) as info:
        decode(PRESET, value)
    assert reason in info.value.reason


_ANY_VALUE = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=-2 * 10**12, max_value=2 * 10**12),
    st.floats(allow_nan=True, allow_infinity=True), st.floats(-200, 200), st.text(max_size=4),
    st.sampled_from(["", " 3", "3.0", "1e3", "yes", "2013-01-01T00:00:00Z", " 7 ", math.inf, -math.inf, math.nan,
                     True, 0.5, 3, 1_357_000_000_000, 1_357_000_000, "x"]),
    st.lists(st.integers(), max_size=1))


def _reference_typed_record(preset, record):
    """typed_record as specified: core values decide validity, every other field goes through coerce."""
    core = dict(zip(preset.core, core_values(preset, record)))
    out, nulled = {}, []
    for name, kind in preset.fields:
        if name in core:
            out[name] = core[name]
            continue
        try:
            out[name] = coerce(kind, record.get(name))
        except (ValueError, TypeError, OverflowError):
            out[name], _ = None, nulled.append(name)
    return out, nulled


@settings(max_examples=400, deadline=None)
@given(st.fixed_dictionaries({}, optional={name: _ANY_VALUE for name in PRESET.names}), st.booleans())
def test_typed_record_fast_path_equals_coercion(record, valid_core):
    """The wire-format fast path of typed_record gives exactly what coercing every field gives."""
    if valid_core:  # mostly exercise the other attributes, not only rejections
        record.update({PRESET.track: "7", PRESET.time: T0, PRESET.lon: -73.9, PRESET.lat: 40.7})
    def outcome(fun):
        try:
            out, nulled = fun(PRESET, record)
        except InvalidRecord as exc:
            return "invalid", exc.reason
        return repr(out), [type(v) for v in out.values()], nulled
    assert outcome(typed_record) == outcome(_reference_typed_record)


@given(st.binary(max_size=64))
def test_dead_letter_round_trips_any_bytes(value):
    dead = orjson.loads(dead_letter(value, "why", "src", 2, 99, b"k"))
    assert (dead["reason"], dead["topic"], dead["partition"], dead["offset"], dead["key"]) == ("why", "src", 2, 99, "k")
    assert original_bytes(dead) == value


@pytest.mark.parametrize("value", [os.urandom(1_000_000), b"\x01" * 900_000, b'"' * 1_000_000],
                         ids=["binary", "control-characters", "quotes"])
def test_a_dead_letter_always_fits_in_a_kafka_message(value):
    """Values near the broker's 1 MB limit grow when encoded (base64 4/3, JSON escapes up to 6x); the
    letter is cut instead, says so, and keeps the start of the value exactly."""
    letter = dead_letter(value, "not JSON", "src", 1, 7, b"k")
    assert len(letter) <= 900_000
    dead = orjson.loads(letter)
    assert dead["original_truncated"] is True and dead["original_size"] == len(value)
    assert original_bytes(dead) == value[:600_000]
    assert (dead["topic"], dead["partition"], dead["offset"]) == ("src", 1, 7)


def test_a_small_dead_letter_is_not_truncated():
    dead = orjson.loads(dead_letter(b"x" * 500_000, "not JSON", "src", 0, 1))
    assert "original_truncated" not in dead and original_bytes(dead) == b"x" * 500_000


def test_dead_letter_text_is_readable():
    dead = orjson.loads(dead_letter(b'{"a": 1', "not JSON", "t", 0, 5))
    assert dead["original"] == '{"a": 1' and dead["original_encoding"] == "utf-8"
    assert orjson.loads(dead_letter(b"\xff\xfe", "x", "t", 0, 1))["original_encoding"] == "base64"


# --- geofences -----------------------------------------------------------------------------------

def test_shipped_jfk_fence_loads():
    fences = Geofences.load(DEFAULT_GEOFENCES)
    assert fences.ids == ("jfk",)
    inside = shape(orjson.loads(DEFAULT_GEOFENCES.read_bytes())["features"][0]["geometry"]).representative_point()
    assert fences.containing([inside.x, -73.97], [inside.y, 40.76]) == [("jfk",), ()]


def test_ids_from_properties_sorted_and_boundary_inside():
    fences = Geofences.from_geojson(fc(poly_feature("b", box(0, 0, 2, 2), in_props=True),
                                       poly_feature("a", box(1, 1, 3, 3))))
    lon = [0.5, 1.5, 2.5, 2.0, 5.0, 0.0]
    lat = [0.5, 1.5, 2.5, 1.0, 5.0, 0.0]
    assert fences.containing(lon, lat) == [("b",), ("a", "b"), ("a",), ("a", "b"), (), ("b",)]


def test_multipolygon_and_hole():
    outer = shapely.Polygon([(0, 0), (4, 0), (4, 4), (0, 4)], [[(1, 1), (3, 1), (3, 3), (1, 3)]])
    multi = shapely.MultiPolygon([box(10, 10, 11, 11), box(12, 12, 13, 13)])
    fences = Geofences.from_geojson(fc(poly_feature("ring", outer), poly_feature("m", multi)))
    assert fences.containing([0.5, 2, 10.5, 12.5, 11.5], [0.5, 2, 10.5, 12.5, 11.5]) == [("ring",), (), ("m",), ("m",), ()]


@pytest.mark.parametrize("data, message", [
    ({"type": "Feature"}, "not a GeoJSON FeatureCollection"),
    (fc({"type": "Feature", "properties": {}, "geometry": shapely.geometry.mapping(box(0, 0, 1, 1))}), "has no id"),
    (fc(poly_feature("p", Point(0, 0).buffer(1).exterior)), "not a Polygon"),
    (fc(poly_feature("x", box(0, 0, 1, 1)), poly_feature("x", box(2, 2, 3, 3))), "more than one feature"),
    (fc({"type": "Feature", "id": "bow", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]]}}),
     "not a valid polygon"),
])
def test_bad_geofence_files_are_named(data, message):
    with pytest.raises(GeofenceError, match=message):
        Geofences.from_geojson(data, "fences.geojson")


def test_geofence_file_errors(tmp_path):
    with pytest.raises(GeofenceError, match="cannot read"):
        Geofences.load(tmp_path / "missing.geojson")
    bad = tmp_path / "bad.geojson"
    bad.write_text("{")
    with pytest.raises(GeofenceError, match="not valid JSON"):
        Geofences.load(bad)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.floats(-10, 10), st.floats(-10, 10), st.floats(0.1, 5), st.floats(0.1, 5)), min_size=1, max_size=12),
       st.integers(0, 2**32 - 1))
def test_containing_matches_shapely_per_fence(rects, seed):
    geoms = [box(x, y, x + w, y + h) for x, y, w, h in rects]
    ids = [f"f{i:02d}" for i in range(len(geoms))][::-1]
    fences = Geofences.from_geometries(ids, geoms)
    rng = np.random.default_rng(seed)
    lon = rng.uniform(-12, 17, 300)
    lat = rng.uniform(-12, 17, 300)
    # corners and edges: the boundary counts as inside
    lon = np.r_[lon, [g.bounds[0] for g in geoms]]
    lat = np.r_[lat, [g.bounds[1] for g in geoms]]
    expected = [tuple(sorted(i for i, g in zip(ids, geoms) if g.intersects(Point(x, y)))) for x, y in zip(lon, lat)]
    assert fences.containing(lon, lat) == expected


def test_no_fences_means_no_hits():
    fences = Geofences.from_geojson(fc())
    assert fences.containing([1.0], [2.0]) == [()]


# --- tracks --------------------------------------------------------------------------------------

def test_haversine_and_bearing_known_values():
    assert haversine_m(0, 0, 0, 1) == pytest.approx(111_195, rel=1e-3)
    assert bearing_deg(0, 0, 0, 1) == pytest.approx(0)
    assert bearing_deg(0, 0, 1, 0) == pytest.approx(90)
    assert bearing_deg(0, 0, -1, 0) == pytest.approx(270)


def test_advance_motion_and_transitions():
    s1, m1 = advance(None, 1000, 0.0, 0.0, ())
    assert m1.moved and m1.speed_mps is None and m1.entered == ()
    s2, m2 = advance(s1, 11_000, 0.0, 0.001, ("a", "b"))
    assert m2.distance_m == pytest.approx(111.195, rel=1e-3)
    assert m2.speed_mps == pytest.approx(11.1195, rel=1e-3)
    assert m2.heading_deg == pytest.approx(0)
    assert m2.entered == ("a", "b") and m2.exited == ()
    s3, m3 = advance(s2, 12_000, 0.0, 0.001, ("b", "c"))
    assert m3.entered == ("c",) and m3.exited == ("a",) and m3.heading_deg is None and m3.speed_mps == 0


def test_a_late_report_never_moves_the_track_and_has_no_motion_and_no_transitions():
    """Issue 23's rule: a report not newer than the state (a duplicate time or older) is stored without motion."""
    state, _ = advance(None, 1000, 0.0, 0.0, ())
    state, first = advance(state, 2000, 0.0, 0.001, ("a",))
    assert first.speed_mps is not None and first.entered == ("a",)
    again, dup = advance(state, 2000, 0.0, 0.002, ())
    assert again is state and not dup.moved and dup.entered == () and dup.exited == ()
    assert (dup.distance_m, dup.speed_mps, dup.heading_deg) == (None, None, None)
    old, late = advance(state, 500, 5.0, 5.0, ())
    assert old is state and not late.moved and (late.distance_m, late.speed_mps, late.heading_deg, late.exited) == (
        None, None, None, ())


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 10_000), st.floats(-1, 1), st.floats(-1, 1)), min_size=1, max_size=60))
def test_state_is_the_newest_report_and_nothing_more(reports):
    state = None
    for t, lon, lat in reports:
        state, _ = advance(state, t, lon, lat, ())
    newest = max(t for t, _, _ in reports)
    first_newest = next((lon, lat) for t, lon, lat in reports if t == newest)  # a later equal time is late
    assert state == State(newest, *first_newest, ()) and len(state) == 4


_REPORT = st.tuples(st.sampled_from("abc"), st.integers(0, 40).map(lambda t: t * 500), st.floats(-1, 1), st.floats(-1, 1),
                    st.lists(st.sampled_from("xyz"), unique=True, max_size=2).map(lambda f: tuple(sorted(f))))


@settings(max_examples=150, deadline=None)
@given(st.lists(_REPORT, min_size=1, max_size=50), st.dictionaries(st.sampled_from("abc"), _REPORT, max_size=3))
def test_advance_batch_equals_advance_report_by_report(reports, saved):
    """The vectorised batch path gives what advance() gives one report at a time (also from saved states,
    with older, duplicate and out-of-order reports)."""
    initial = {}
    for track, (_, t, lon, lat, fences) in saved.items():
        initial[track], _ = advance(None, t, lon, lat, fences)
    states = dict(initial)
    expected = []
    changed = {}
    for i, (track, t, lon, lat, fences) in enumerate(reports):
        new, motion = advance(states.get(track), t, lon, lat, fences)
        if new is not states.get(track):
            changed[track] = (i, new)
        states[track] = new
        expected.append(motion)
    got = advance_batch([r[0] for r in reports], [r[1] for r in reports], [r[2] for r in reports],
                        [r[3] for r in reports], [r[4] for r in reports], initial.get)
    for i, motion in enumerate(expected):
        for name in ("distance_m", "speed_mps", "heading_deg"):
            want, have = getattr(motion, name), getattr(got, name)[i]
            assert (want is None) == (have is None), (i, name, want, have)
            if want is not None:
                assert have == pytest.approx(want, rel=1e-9, abs=1e-6), (i, name)
        assert got.transitions.get(i, ((), ())) == (motion.entered, motion.exited), i
    assert got.states.keys() == changed.keys()
    for track, (i, state) in changed.items():
        assert got.states[track][0] == i and got.states[track][1] == state


# --- documents, alerts, batches ------------------------------------------------------------------

def test_document_and_action():
    obs = decode(PRESET, raw())
    _, motion = advance(None, obs.time_ms, obs.lon, obs.lat, ())
    doc = es_actions.build(obs.record, obs.lon, obs.lat, ("jfk",), motion.distance_m, motion.speed_mps,
                          motion.heading_deg, ingested_at=5)
    assert doc["geometry"] == {"lat": 40.76, "lon": -73.97} and doc["geofences"] == ["jfk"]
    assert len(doc["geohash"]) == 12 and doc["geohash"].startswith("dr5ru")
    act = es_actions.action("obs", obs.track, obs.time_ms, doc)
    assert act["_id"] == "7:1357000000000" and act["_index"] == "obs-2013.01.01"


@given(st.integers(min_value=-62_135_596_800_000, max_value=253_402_300_799_999))
def test_daily_index_holds_the_day_of_the_event_time(time_ms):
    # Independent of how the name is formatted: the day the name says contains the event time.
    name = es_actions.action("obs", "t", time_ms, {})["_index"]
    start = documents.index_day_ms("obs", name)
    assert start is not None and start <= time_ms < start + documents.DAY_MS


@pytest.mark.parametrize("time_ms", [-62_135_596_800_001, 253_402_300_800_000])
def test_no_daily_index_outside_the_years_1_to_9999(time_ms):
    with pytest.raises(InvalidRecord, match="no daily index"):
        documents.index_for("obs", time_ms)


def test_index_day_ignores_other_names():
    assert [documents.index_day_ms("obs", n) for n in ("obs", "obs-x", "obsa-2013.01.01", "obs-2013.02.30",
                                                       "obs-2013.01.01-x")] == [None] * 5
    assert documents.index_day_ms("obs", "obs-2013.01.02") == 1_357_084_800_000


def test_doc_id_refuses_what_elasticsearch_refuses():
    assert documents.doc_id("a" * 498, 1_357_000_000_000) == "a" * 498 + ":1357000000000"  # 512 bytes
    with pytest.raises(InvalidRecord, match="exceeds Elasticsearch's 512"):
        documents.doc_id("a" * 499, 1_357_000_000_000)
    with pytest.raises(InvalidRecord):
        documents.doc_id("é" * 250, 1_357_000_000_000)  # 250 characters, 500 bytes + 14


def test_transitions_exits_first():
    alerts = transitions("t", ("b",), ("a",), 5, 1.0, 2.0)
    assert [(a["event"], a["fence"]) for a in alerts] == [("exit", "a"), ("enter", "b")]
    assert alerts[0] == {"track": "t", "fence": "a", "event": "exit", "time": 5, "lon": 1.0, "lat": 2.0}


def _msgs(values):
    return [Incoming(v, b"k", "src", 0, i) for i, v in enumerate(values)]


def test_pipeline_batch_crossing_track_invalid_and_filter():
    fences = Geofences.from_geometries(["zone"], [box(1, 1, 2, 2)])
    path = [(0.5, 0.5), (1.5, 1.5), (1.7, 1.7), (2.5, 2.5)]
    values = [raw(taxiId="x", observationTime=T0 + 1000 * (i + 1), longitude=x, latitude=y) for i, (x, y) in enumerate(path)]
    values.insert(2, b"{bad")
    store: dict = {}
    result = Pipeline(PRESET, fences, "obs").process(_msgs(values), store.get)
    assert result.valid == 4 and [(m.offset, r.split(":")[0]) for m, r in result.dead] == [(2, "not JSON")]
    assert [(a["event"], a["time"]) for a in result.alerts] == [("enter", T0 + 2000), ("exit", T0 + 4000)]
    assert [a["_source"]["geofences"] for a in result.observations.actions()] == [[], ["zone"], ["zone"], []]
    assert result.states["x"][1].t == T0 + 4000
    filtered = Pipeline(PRESET, fences, "obs", filter_inside=True).process(_msgs(values), {}.get)
    assert len(filtered.observations.actions()) == 2 and filtered.filtered == 2 and len(filtered.alerts) == 2


def test_pipeline_redelivery_meeting_the_state_as_of_its_start_gives_the_same_documents_and_alerts():
    """What the transactional commit (states with offsets, issue 23) gives a redelivered batch: the state as of
    the batch's start, hence the same motion, alerts and states."""
    fences = Geofences.from_geometries(["zone"], [box(1, 1, 2, 2)])
    values = [raw(taxiId="x", observationTime=T0 + 1000 * (i + 1), longitude=0.5 + i * 0.5, latitude=0.5 + i * 0.5) for i in range(6)]
    pipe = Pipeline(PRESET, fences, "obs")
    before = pipe.process(_msgs(values[:2]), {}.get)
    start = {track: state for track, (_, state) in before.states.items()}
    strip = lambda acts: [{k: v for k, v in a["_source"].items() if k != "ingested_at"} for a in acts]
    first, again = (pipe.process(_msgs(values[2:]), dict(start).get) for _ in range(2))
    assert strip(again.observations.actions()) == strip(first.observations.actions())
    assert again.alerts == first.alerts and [a["event"] for a in first.alerts] == ["exit"]
    assert again.states == first.states


def test_pipeline_redelivery_after_saved_state_is_late_no_alerts_null_motion():
    """A batch meeting the state it had already saved (states ahead of offsets, no transaction): its reports
    are late, stored again with their fences but without motion, no second alert."""
    fences = Geofences.from_geometries(["zone"], [box(1, 1, 2, 2)])
    values = [raw(taxiId="x", observationTime=T0 + 1000 * (i + 1), longitude=0.5 + i * 0.5, latitude=0.5 + i * 0.5) for i in range(4)]
    pipe = Pipeline(PRESET, fences, "obs")
    first = pipe.process(_msgs(values), {}.get)
    saved = {track: state for track, (_, state) in first.states.items()}
    again = pipe.process(_msgs(values), saved.get)
    assert again.alerts == [] and again.states == {}
    motion = (documents.DISTANCE, documents.SPEED, documents.HEADING)
    strip = lambda acts: [{k: v for k, v in a["_source"].items() if k not in ("ingested_at", *motion)} for a in acts]
    assert strip(again.observations.actions()) == strip(first.observations.actions())
    assert all(a["_source"].get(k) is None for a in again.observations.actions() for k in motion)


def test_pipeline_dead_letters_events_outside_the_event_time_bounds_and_keeps_the_rest():
    values = [raw(taxiId="a"), raw(taxiId="b", observationTime="0001-01-01T00:00:00+01:00"),
              raw(taxiId="c", observationTime="9999-12-31T23:59:59-01:00"),
              raw(taxiId="d", observationTime="0001-01-01T00:00:00Z"),
              raw(taxiId="e", observationTime=int(time.time() * 1000) + 3 * 86_400_000), raw(taxiId="f")]
    result = Pipeline(PRESET, Geofences.from_geometries([], []), "obs").process(_msgs(values), {}.get)
    assert [a["_source"]["taxiId"] for a in result.observations.actions()] == ["a", "f"]
    reasons = {m.offset: r for m, r in result.dead}
    assert sorted(reasons) == [1, 2, 3, 4]
    assert "outside the years 1-9999" in reasons[1] and "outside the years 1-9999" in reasons[2]
    assert "days old" in reasons[3] and "days ahead" in reasons[4]
    assert {a["_index"] for a in result.observations.actions()} == {"obs-2013.01.01"}


def test_pipeline_dead_letters_an_id_elasticsearch_would_refuse():
    values = [raw(taxiId=str(i)) for i in range(3)] + [raw(taxiId="x" * 600)]
    result = Pipeline(PRESET, Geofences.from_geometries([], []), "obs").process(_msgs(values), {}.get)
    assert len(result.observations.actions()) == 3 and [(m.offset, "exceeds Elasticsearch's 512" in r) for m, r in result.dead] == [(3, True)]


class Fussy(Geofences):
    """Fences whose batch computation fails on a longitude of 1.25 (as an unforeseen input would)."""

    def containing(self, lon, lat):
        if any(x == 1.25 for x in lon):
            raise RuntimeError("cannot place it")
        return super().containing(lon, lat)


def test_pipeline_isolates_an_event_whose_annotation_fails():
    fences = Fussy.from_geometries(["zone"], [box(1, 1, 2, 2)])
    values = [raw(taxiId="x", observationTime=T0 + 1000 * i, longitude=lon, latitude=1.5)
              for i, lon in enumerate((0.5, 1.25, 1.5))]
    result = Pipeline(PRESET, fences, "obs").process(_msgs(values), {}.get)
    assert [(m.offset, r) for m, r in result.dead] == [(1, "cannot annotate the event: RuntimeError: cannot place it")]
    assert [a["_source"]["geofences"] for a in result.observations.actions()] == [[], ["zone"]]
    assert [(a["event"], a["time"]) for a in result.alerts] == [("enter", T0 + 2000)]
    assert result.valid == 2 and result.states["x"][1].t == T0 + 2000
    alone = Pipeline(PRESET, fences, "obs").process(_msgs(values[1:2]), {}.get)
    assert [m.offset for m, _ in alone.dead] == [0] and alone.observations.actions() == [] and alone.valid == 0


@settings(max_examples=60, deadline=None)
@given(reports=st.lists(st.tuples(st.sampled_from("abcd"), st.integers(0, 5)), min_size=1, max_size=30))
def test_pipeline_writes_one_latest_per_track_the_newest_report(reports):
    """Any arrival order: one latest action per track, the newest report's document, versioned by its time;
    on equal times the first message (a later one is late, create-only: the index keeps the first)."""
    values = [raw(taxiId=t, observationTime=T0 + 1000 * dt, longitude=-73.9 + i * 1e-4) for i, (t, dt) in enumerate(reports)]
    result = Pipeline(PRESET, Geofences.from_geometries([], []), "obs").process(_msgs(values), {}.get)
    newest: dict[str, tuple[int, int]] = {}  # track -> (time, arrival)
    for i, (t, dt) in enumerate(reports):
        if t not in newest or T0 + 1000 * dt > newest[t][0]:
            newest[t] = (T0 + 1000 * dt, i)
    assert sorted(a["_id"] for a in result.latest_bulk.actions()) == sorted(newest)
    stored: dict[str, dict] = {}  # what the index keeps: an _id's index op, else its first create (a 409 after)
    for a in result.observations.actions():
        if a["_op_type"] == "index" or a["_id"] not in stored:
            stored[a["_id"]] = a["_source"]
    for action in result.latest_bulk.actions():
        time_ms, i = newest[action["_id"]]
        assert action["_index"] == documents.latest_index("obs") == "obs_latest"
        assert not fnmatch.fnmatch(action["_index"], documents.index_pattern("obs"))
        assert action["version"] == time_ms and action["version_type"] == "external"
        assert action["_source"]["longitude"] == pytest.approx(-73.9 + i * 1e-4)
        assert action["_source"] == stored[documents.doc_id(action["_id"], time_ms)]
    assert {(a["_index"], a["_id"]) for a in result.latest_bulk.actions()}.isdisjoint(result.sources)  # never dead-lettered


def test_pipeline_latest_in_filter_mode_is_the_newest_report_inside_a_fence():
    fences = Geofences.from_geometries(["zone"], [box(1, 1, 2, 2)])
    path = [(0.5, 0.5), (1.5, 1.5), (1.7, 1.7), (2.5, 2.5)]
    values = [raw(taxiId="x", observationTime=T0 + 1000 * i, longitude=x, latitude=y) for i, (x, y) in enumerate(path)]
    every = Pipeline(PRESET, fences, "obs").process(_msgs(values), {}.get)
    assert [(a["version"], a["_source"]["geofences"]) for a in every.latest_bulk.actions()] == [(T0 + 3000, [])]
    inside = Pipeline(PRESET, fences, "obs", filter_inside=True).process(_msgs(values), {}.get)
    assert [(a["version"], a["_source"]["geofences"]) for a in inside.latest_bulk.actions()] == [(T0 + 2000, ["zone"])]
    outside = Pipeline(PRESET, fences, "obs", filter_inside=True).process(_msgs(values[3:]), {}.get)
    assert outside.latest_bulk.actions() == [] and outside.observations.actions() == []


def test_pipeline_latest_skips_dead_letters_and_events_before_1970():
    values = [raw(taxiId="x", observationTime=T0, longitude=0.5), raw(taxiId="x", observationTime=T0 + 5000, longitude=1.25),
              raw(taxiId="y", observationTime="1969-12-31T23:00:00Z"), raw(taxiId="x", observationTime=T0 + 1000),
              b"{bad"]
    result = Pipeline(PRESET, Fussy.from_geometries(["zone"], [box(1, 1, 2, 2)]), "obs").process(_msgs(values), {}.get)
    assert sorted(m.offset for m, _ in result.dead) == [1, 4]
    assert len(result.observations.actions()) == 3  # the observation before 1970 is indexed; it cannot be a versioned latest
    assert [(a["_id"], a["version"]) for a in result.latest_bulk.actions()] == [("x", T0 + 1000)]


# --- webhook ---------------------------------------------------------------------------------------

async def test_webhook_retries_then_delivers_and_counts_failures():
    received, calls = [], {"n": 0}

    async def handler(request):
        calls["n"] += 1
        if calls["n"] == 1:
            return web.Response(status=503)
        received.append(await request.json())
        return web.Response(status=204)

    async def refuse(request):
        calls["refused"] = calls.get("refused", 0) + 1
        return web.Response(status=400)

    server = web.Application()
    server.router.add_post("/hook", handler)
    server.router.add_post("/refuse", refuse)
    runner = web.AppRunner(server)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    outcomes: list[str] = []
    ok = Webhook(f"http://127.0.0.1:{port}/hook", backoff=0.01, on_result=outcomes.append)
    bad = Webhook(f"http://127.0.0.1:{port}/refuse", backoff=0.01, on_result=outcomes.append)
    down = Webhook("http://127.0.0.1:9/none", backoff=0.01, retries=1, timeout=1, on_result=outcomes.append)
    try:
        for hook in (ok, bad, down):
            await hook.start()
            hook.submit({"track": "t", "event": "enter"})
        for hook in (ok, bad, down):
            await asyncio.wait_for(hook.queue.join(), 10)
    finally:
        for hook in (ok, bad, down):
            await hook.stop()
        await runner.cleanup()
    assert received == [{"track": "t", "event": "enter"}] and calls["n"] == 2
    assert calls["refused"] == 1  # a 400 is not retried
    assert sorted(outcomes) == ["failed", "failed", "sent"]


async def test_webhook_submit_never_blocks_when_full():
    outcomes: list[str] = []
    hook = Webhook("http://127.0.0.1:9/x", maxsize=1, on_result=outcomes.append)  # not started: nothing drains
    assert hook.submit({"a": 1}) is True
    assert hook.submit({"a": 2}) is False  # the oldest made room: the recent alert is the one kept
    assert outcomes == ["dropped"] and hook.queue.get_nowait()[1] == {"a": 2}


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 60), st.integers(0, 2**32 - 1))
def test_grid_matches_shapely_for_discs_vertices_and_random_points(n, seed):
    rng = np.random.default_rng(seed)
    centres = shapely.points(rng.uniform(-74.05, -73.75, n), rng.uniform(40.58, 40.88, n))
    geoms = list(shapely.buffer(centres, rng.uniform(0.001, 0.01, n), quad_segs=4))
    ids = [f"d{i}" for i in range(n)]
    fences = Geofences.from_geometries(ids, geoms)
    vertices = np.concatenate([shapely.get_coordinates(g) for g in geoms])
    lon = np.r_[rng.uniform(-74.06, -73.74, 2000), vertices[:, 0]]
    lat = np.r_[rng.uniform(40.57, 40.89, 2000), vertices[:, 1]]
    got = fences.containing(lon, lat)
    tree = shapely.STRtree(geoms)
    pi, gi = tree.query(shapely.points(lon, lat), predicate="intersects")
    expected = [[] for _ in lon]
    for p, g in zip(pi, gi):
        expected[p].append(ids[g])
    assert got == [tuple(sorted(e)) for e in expected]


json_values = st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False)
                           | st.text(), lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
                           max_leaves=8)


@given(source=st.dictionaries(st.text(), json_values, max_size=6), index=st.text(min_size=1), doc_id=st.text(min_size=1),
       version=st.none() | st.integers(0, 2**63 - 1))
def test_serialized_action_is_the_helpers_expansion_in_bytes(source, index, doc_id, version):
    action = {"_op_type": "index", "_index": index, "_id": doc_id, "_source": source}
    if version is not None:
        action.update(version=version, version_type="external")
    header, body = serialized_action(action)
    expected_header, expected_body = expand_action(action)
    assert orjson.loads(header) == expected_header and orjson.loads(body) == expected_body
    assert b"\n" not in header + body  # one NDJSON line each
