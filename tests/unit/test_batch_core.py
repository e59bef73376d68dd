"""The batch core gives what the row-wise code it replaced gave (``testkit/rowwise.py``, frozen).

Hypothesis properties over batches mixing valid, invalid, out-of-order, duplicate and far-apart reports,
values of every preset field type (wire values, nulls, coercible and uncoercible ones), and points on,
inside and outside polygon and MultiPolygon fences: same documents, ids, indices, dead letters (same
reasons, same order), alerts, states, latest positions and counts, with and without saved track states,
in both geofence modes, and when the batch annotation fails and is redone event by event.
"""

from __future__ import annotations

import json
from unittest import mock

import orjson
from hypothesis import HealthCheck, given, settings, strategies as st
from shapely.geometry import MultiPolygon, box

from agents.core import codec
from agents.core.bulk import Bulk
from agents.core.geofence import Geofences
from agents.core.pipeline import Incoming, Pipeline
from geoiot import documents
from geoiot.schema import load_preset, preset_from_mapping
from geoiot.timeparse import EventTimeBounds
from testkit.rowwise import RowwisePipeline
from testkit import actions as es_actions
from testkit.actions import serialized_action

TAXI = load_preset("taxi")
# Every field type, the core fields not first, names that need JSON escaping.
EVERY = preset_from_mapping({"name": "every", "track": "id", "time": "t", "lon": "x", "lat": "y", "fields": {
    "n": "int", "id": "string", "t": "time", "x": "float", "y": "float", "f": "float", "b": "bool",
    "s": "string", "when": "time", "é ü": "string"}}, "every")
T0 = 1_357_000_000_000
NOW = 1_764_000_000.0  # a fixed "now" (2025-11-24), so ingested_at and the event-time bounds agree

FENCES = Geofences.from_geometries(
    ["a", "b", "m"], [box(0, 0, 1, 1), box(0.5, 0.5, 2, 2), MultiPolygon([box(3, 3, 4, 4), box(5, 5, 6, 6)])])


class Fussy(Geofences):
    """Fences whose batch computation fails on a longitude of 1.25 (as an unforeseen input would)."""

    def containing(self, lon, lat):
        if any(x == 1.25 for x in lon):
            raise RuntimeError("cannot place it")
        return super().containing(lon, lat)


FUSSY = Fussy.from_geometries(list(FENCES.ids), list(FENCES.geometries))

# Coordinates: inside, on edges and corners, in the MultiPolygon's parts and between them, far apart.
coord = st.one_of(st.sampled_from([0.0, 0.5, 1.0, 1.25, 2.0, 3.0, 3.5, 4.0, 4.5, 5.0, 6.0, -0.0]),
                  st.floats(-1, 7, allow_nan=False), st.sampled_from([179.999, -179.999, 89.9, -89.9]))
lon_value = st.one_of(coord, coord.map(str), st.sampled_from([180.0, -180.0, 181.0, 3, "x", None, True, [1]]))
lat_value = st.one_of(coord, st.sampled_from([90.0, -90.0, 91.0, 2, "2.5", None, False]))
time_value = st.one_of(
    st.integers(0, 8).map(lambda k: T0 + 1000 * k),
    st.integers(0, 8).map(lambda k: (T0 + 1000 * k) // 1000),  # epoch seconds
    st.sampled_from(["2013-01-01 00:00:05", "2013-01-01T00:00:03Z", "0001-01-01T00:00:00Z", "9999-12-31T23:59:59-01:00",
                     "soon", "", None, True, 1.5e12, -5, 253402300800000, int(NOW * 1000) + 3 * 86_400_000,
                     "1969-12-31T23:00:00Z"]))
track_value = st.one_of(st.sampled_from(["a", "b", "c", "é", " a", "a ", "", " ", "x" * 600, 'q"\\']),
                        st.sampled_from([7, 0, True, None, 1.5, ["a"]]))
any_scalar = st.one_of(st.none(), st.booleans(), st.integers(-2**64, 2**64), st.floats(allow_nan=False, allow_infinity=False),
                       st.text(max_size=4), st.sampled_from(["", "3", "3.0", "true", "no", "2013-01-01", "1e3", " 4 "]),
                       st.just([1, 2]), st.just({"k": 1}))
MISSING = object()


def wire_value(kind: str):
    wire = {"string": st.text(min_size=1, max_size=6), "int": st.integers(-2**63, 2**63 - 1),
            "float": st.floats(-1e6, 1e6, allow_nan=False), "bool": st.booleans(),
            "time": st.integers(100_000_000_000, 253402300799999)}[kind]
    return st.one_of(wire, wire, wire, wire, st.none(), st.just(MISSING))


def other_value(kind: str):
    return st.one_of(wire_value(kind), any_scalar)


@st.composite
def record(draw, preset):
    """A JSON object of a report: half of them in the wire format (values of their type or null), the others
    with any value anywhere; a core field is odd one time in four."""
    roles = {preset.track: track_value, preset.time: time_value, preset.lon: lon_value, preset.lat: lat_value}
    usual = {preset.track: st.sampled_from(["a", "b", "c", "d"]),
             preset.time: st.integers(0, 8).map(lambda k: T0 + 1000 * k), preset.lon: coord, preset.lat: coord}
    clean = draw(st.booleans())
    out = {}
    for name, kind in preset.fields:
        if name in roles:
            value = draw(roles[name] if draw(st.integers(0, 3)) == 0 else usual[name])
        else:
            value = draw(wire_value(kind) if clean else other_value(kind))
        if value is not MISSING:
            out[name] = value
    if draw(st.integers(0, 15)) == 0:
        out[draw(st.sampled_from(["extra", documents.GEOMETRY, documents.GEOHASH]))] = draw(any_scalar)
    if draw(st.integers(0, 15)) == 0:
        items = list(out.items())
        draw(st.randoms()).shuffle(items)
        out = dict(items)
    return out


def dumps(obj, indent=False):
    """JSON bytes of a generated record; the standard library's for integers orjson cannot write (over 64 bits)."""
    try:
        return orjson.dumps(obj, option=orjson.OPT_INDENT_2 if indent else None)
    except TypeError:
        return json.dumps(obj, indent=2 if indent else None).encode()


def value(preset):
    return st.one_of(record(preset).map(dumps), record(preset).map(dumps), record(preset).map(dumps),
                     record(preset).map(lambda r: dumps(r, indent=True)),
                     st.sampled_from([None, b"", b"{bad", b"[1,2]", b'"s"', b"null", b"3", b"\xff\xfe", b'{"a":1e400}',
                                      b'{"taxiId":"a","taxiId":"b"}']),
                     st.binary(max_size=20))


def messages(values):
    return [Incoming(v, b"k", "src", i % 3, 100 + i) for i, v in enumerate(values)]


def as_json(actions):
    return [orjson.loads(orjson.dumps(a)) for a in actions]


def body_lines(meta_source_pairs):
    return [orjson.loads(line) for pair in meta_source_pairs for line in pair]


def assert_same(new, old):
    assert [(m.offset, r) for m, r in new.dead] == [(m.offset, r) for m, r in old.dead]
    assert as_json(new.observations.actions()) == as_json(old.actions)
    assert as_json(new.latest_bulk.actions()) == as_json(old.latest)
    assert new.alerts == old.alerts
    assert new.states == old.states
    assert (new.valid, new.filtered, new.nulled) == (old.valid, old.filtered, old.nulled)
    assert new.sources == old.sources
    # The bulk body is the helper's two lines per action, as JSON values.
    body = new.bulk().body()
    assert (body == b"" or body.endswith(b"\n")) and body.count(b"\n") == 2 * (len(old.actions) + len(old.latest))
    assert [orjson.loads(line) for line in body.splitlines()] == body_lines(
        map(serialized_action, old.actions + old.latest))
    assert new.bulk(latest=False).body() == b"".join(new.observations.lines)


def run_both(preset, fences, values, saved, filter_inside=False, bounds=EventTimeBounds()):
    with mock.patch("time.time", return_value=NOW):
        old = RowwisePipeline(preset, fences, "obs", filter_inside=filter_inside, bounds=bounds).process(
            messages(values), dict(saved).get)
        new = Pipeline(preset, fences, "obs", filter_inside=filter_inside, bounds=bounds).process(
            messages(values), dict(saved).get)
    return new, old


def saved_states(preset, fences, values):
    """States a previous batch of the same events left (as the worker would have them)."""
    with mock.patch("time.time", return_value=NOW):
        first = RowwisePipeline(preset, fences, "obs").process(messages(values), {}.get)
    return {track: state for track, (_, state) in first.states.items()}


SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(values=st.lists(value(TAXI), max_size=40), filter_inside=st.booleans(), resend=st.booleans())
def test_batch_core_equals_the_row_wise_code_taxi(values, filter_inside, resend):
    saved = saved_states(TAXI, FENCES, values[: len(values) // 2]) if resend else {}
    assert_same(*run_both(TAXI, FENCES, values, saved, filter_inside))


@SETTINGS
@given(values=st.lists(value(EVERY), max_size=40), filter_inside=st.booleans(), resend=st.booleans())
def test_batch_core_equals_the_row_wise_code_every_field_type(values, filter_inside, resend):
    saved = saved_states(EVERY, FENCES, values[::2]) if resend else {}
    assert_same(*run_both(EVERY, FENCES, values, saved, filter_inside))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values=st.lists(value(TAXI), max_size=25), filter_inside=st.booleans())
def test_batch_core_equals_the_row_wise_code_when_annotation_fails(values, filter_inside):
    assert_same(*run_both(TAXI, FUSSY, values, {}, filter_inside))


@settings(max_examples=50, deadline=None)
@given(values=st.lists(value(EVERY), max_size=20), age=st.sampled_from([1.0, 4000.0, 36525.0]),
       ahead=st.sampled_from([0.0, 1.0, 1e6]))
def test_batch_core_applies_the_event_time_bounds_as_the_row_wise_code(values, age, ahead):
    class Custom(EventTimeBounds):  # a subclass is asked event by event
        pass

    for bounds in (EventTimeBounds(age, ahead), Custom(age, ahead)):
        assert_same(*run_both(EVERY, FENCES, values, {}, bounds=bounds))


def test_wire_format_reports_take_the_compiled_path_and_others_the_exact_one():
    """Not a tautology check of speed: the fast path must be taken for replay's values, or the core is slow."""
    good = orjson.dumps({"taxiId": "a", "observationTime": T0, "longitude": 0.5, "latitude": 0.5, "passengerCount": 1})
    decoder = codec.document_decoder(TAXI)
    doc = decoder.decode(good)
    assert (doc.c_track, doc.c_time, doc.c_lon, doc.c_lat, doc.f4, doc.f5) == ("a", T0, 0.5, 0.5, 1, None)
    with_blank = orjson.dumps({"taxiId": "a", "observationTime": T0, "longitude": 0.5, "latitude": 0.5, "medallion": ""})
    import msgspec
    try:
        decoder.decode(with_blank)
        raise AssertionError("an empty string must take the exact path (it becomes null)")
    except msgspec.ValidationError:
        pass
    assert codec.document_type(preset_from_mapping({"name": "g", "track": "id", "time": "t", "lon": "x", "lat": "y",
                                                        "fields": {"id": "string", "t": "time", "x": "float", "y": "float",
                                                                   "geohash": "string"}}, "g")) is None


def test_bulk_entries_are_the_helpers_lines_and_round_trip_to_actions():
    actions = [es_actions.action("obs", 'q"\\', T0, {"a": 1, "é": [1.5, None]}),
               es_actions.latest_action("obs", "t", T0 + 1, {"b": True})]
    bulk = Bulk.from_actions(actions)
    assert bulk.lines == [meta + b"\n" + source + b"\n" for meta, source in map(serialized_action, actions)]
    assert bulk.actions() == actions and bulk.versions == [None, T0 + 1]
    assert bulk.subset([1]).actions() == actions[1:] and (bulk.subset([0]) + bulk.subset([1])).lines == bulk.lines


def test_presets_the_struct_cannot_name_still_get_their_documents():
    for odd in ("geohash", 'quo"te', "back\\slash", "tab\t"):
        preset = preset_from_mapping({"name": "g", "track": "id", "time": "t", "lon": "x", "lat": "y",
                                      "fields": {"id": "string", "t": "time", "x": "float", "y": "float", odd: "string"}}, "g")
        assert codec.document_type(preset) is None
        values = [orjson.dumps({"id": "a", "t": T0 + i, "x": 0.5, "y": 0.5, odd: "mine"}) for i in range(3)]
        new, old = run_both(preset, FENCES, values, {})
        assert_same(new, old)
        assert len(new.observations.actions()) == 3


def taxi_value(track, time_ms, lon, lat):
    return orjson.dumps({"taxiId": track, "observationTime": time_ms, "longitude": lon, "latitude": lat,
                         "passengerCount": 1, "tripTimeInSecs": 3, "tripDistance": 0.5, "observationIx": 1,
                         "medallion": "M", "hack_license": "H", "vendor_id": "VTS", "rate_code": 1,
                         "store_and_fwd_flag": None, "pickup_datetime": T0, "dropoff_datetime": T0 + 5,
                         "pickup_longitude": lon, "pickup_latitude": lat, "dropoff_longitude": lon,
                         "dropoff_latitude": lat})


@SETTINGS
@given(reports=st.lists(st.tuples(st.sampled_from("aaaaabcdef"), st.integers(1, 3), coord, coord.filter(lambda y: abs(y) <= 90)),
                        max_size=120) | st.lists(st.tuples(st.just("a"), st.integers(1, 3), coord, coord.filter(lambda y: abs(y) <= 90)),
                                 min_size=33, max_size=40),
       saved=st.lists(st.tuples(st.sampled_from("aabcxyz"), coord, coord.filter(lambda y: abs(y) <= 90)), max_size=50),
       filter_inside=st.booleans())
def test_batch_core_in_time_order_equals_the_row_wise_code(reports, saved, filter_inside):
    """The usual batch (each track's reports in time order, newer than its saved state; histories longer
    than HISTORY): the row-wise result."""
    clock: dict[str, int] = {}
    values = []
    for track, step, lon, lat in reports:
        clock[track] = clock.get(track, T0) + 1000 * step
        values.append(taxi_value(track, clock[track], lon, lat))
    before = [taxi_value(track, T0 - 1000 * (len(saved) - i), lon, lat) for i, (track, lon, lat) in enumerate(saved)]
    states = saved_states(TAXI, FENCES, before)
    new, old = run_both(TAXI, FENCES, values, states, filter_inside)
    assert_same(new, old)
    assert new.dead == [] and len(new.states) == len(clock)
