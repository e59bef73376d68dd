"""Issue 23, compact state: the changelog codec (new binary format, old JSON format still read), shared fence
sets, the compact track table, and the late-report rule as a fold (any batching of the same reports gives the
same motion, alerts and states)."""

from __future__ import annotations

import struct
from unittest import mock

import orjson
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from shapely.geometry import box

from agents.core import state_codec
from agents.core.geofence import Geofences
from agents.core.motion import NO_FENCES, State, advance_batch, fence_set
from agents.core.pipeline import Incoming, Pipeline
from agents.worker.track_table import TrackTable
from geoiot.schema import load_preset
from testkit.motion import advance

PRESET = load_preset("taxi")
T0 = 1_357_000_000_000
FENCE_ID = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=40)
STATES = st.builds(State, st.integers(-2**62, 2**62), st.floats(-180, 180), st.floats(-90, 90),
                   st.lists(FENCE_ID, unique=True, max_size=5).map(lambda f: tuple(sorted(f))))


@given(STATES)
def test_a_state_round_trips_through_the_changelog_value_exactly(state):
    value = state_codec.value(state)
    assert value[0] == state_codec.VERSION != ord("{")
    back = state_codec.state(value)
    assert back == state and type(back) is State and back.fences is fence_set(state.fences)
    assert state_codec.from_mapping(orjson.loads(orjson.dumps(state_codec.to_mapping(state)))) == state


def test_the_value_is_small_and_fixed_outside_fences():
    assert len(state_codec.value(State(T0, -73.97, 40.76, ()))) == 27
    assert len(state_codec.value(State(T0, -73.97, 40.76, ("jfk",)))) == 27 + 2 + 3


@given(STATES, st.integers(0, 40))
def test_the_json_format_written_before_decodes_to_the_same_state_without_its_history(state, points):
    hist = [[state.t - k, state.lon, state.lat] for k in range(points, 0, -1)] + [[state.t, state.lon, state.lat]]
    old = orjson.dumps({"t": state.t, "lon": state.lon, "lat": state.lat, "fences": list(state.fences), "hist": hist})
    assert state_codec.state(old) == state


@pytest.mark.parametrize("value", [b"", b"\x02" + b"\0" * 26, b"\x01short", b"{}", b'{"t":"1","lon":0,"lat":0,"fences":[]}',
                                   b"[1,2]", b"{bad", struct.pack("<BqddH", 1, 1, 0.0, 0.0, 2) + b"\x05\x00ab"])
def test_a_value_in_neither_format_is_a_value_error(value):
    with pytest.raises(ValueError):
        state_codec.state(value)


def test_keys_are_json_strings_as_before():
    assert state_codec.key("taxi-7") == b'"taxi-7"' and state_codec.track_of(b'"taxi-7"') == "taxi-7"
    with pytest.raises(ValueError):
        state_codec.track_of(b"7")


def test_fence_sets_are_shared_and_the_table_of_them_is_bounded():
    a = fence_set(["jfk", "midtown"])
    assert fence_set(("jfk", "midtown")) is a and fence_set([]) is NO_FENCES
    moved = advance_batch(["x", "y"], [1, 1], [0.0, 0.0], [0.0, 0.0], [("jfk", "midtown"), ("jfk", "midtown")],
                          {}.get)
    assert moved.states["x"][1].fences is a is moved.states["y"][1].fences
    with mock.patch("agents.core.motion.FENCE_SETS_KEPT", 3):
        for k in range(10):
            assert fence_set((f"f{k}",)) == (f"f{k}",)
        from agents.core import motion
        assert len(motion._fence_sets) <= 3


def test_the_table_holds_one_tuple_per_track_starting_with_the_state():
    table = TrackTable("changelog", lambda: None, clock=lambda: 2.5)
    state = State(T0, 1.0, 2.0, ("jfk",))
    assert table.put(3, "a", state) is None
    row = table.get("a")
    assert type(row) is tuple and row == (*state, 2500, 3) and row[:4] == state
    assert table.put(4, "a", state._replace(t=T0 + 1)) == 3  # moved partition: the old one gets a tombstone
    assert table.partitions == {3, 4} and len(table) == 1
    table.drop([4])
    assert table.get("a") is None and len(table) == 0


# --- the late-report rule as a fold ---------------------------------------------------------------------------

FENCES = Geofences.from_geometries(["a", "b"], [box(0, 0, 1, 1), box(0.5, 0.5, 2, 2)])
REPORT = st.tuples(st.sampled_from("pqr"), st.integers(0, 12).map(lambda k: T0 + 1000 * k),
                   st.sampled_from([-0.5, 0.25, 0.75, 1.5, 3.0]), st.sampled_from([-0.5, 0.25, 0.75, 1.5, 3.0]))


def run(reports: list[tuple[str, int, float, float]], cuts: list[int]) -> tuple[list, list, dict]:
    """The reports through the pipeline in batches cut at ``cuts``, each batch meeting the states the previous
    ones left (as the worker's table and pending states give them); documents, alerts and final states."""
    values = [orjson.dumps({"taxiId": tr, "observationTime": t, "longitude": x, "latitude": y})
              for tr, t, x, y in reports]
    messages = [Incoming(v, None, "src", 0, i) for i, v in enumerate(values)]
    pipe = Pipeline(PRESET, FENCES, "obs")
    states: dict[str, State] = {}
    docs, alerts = [], []
    bounds = sorted({0, *cuts, len(messages)})
    with mock.patch("time.time", return_value=1_764_000_000.0):
        for lo, hi in zip(bounds, bounds[1:]):
            result = pipe.process(messages[lo:hi], states.get)
            docs += [a["_source"] for a in result.observations.actions()]
            alerts += result.alerts
            states.update({track: state for track, (_, state) in result.states.items()})
    return docs, alerts, states


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(REPORT, max_size=40), st.lists(st.integers(0, 40), max_size=6))
def test_any_batching_of_the_same_reports_gives_the_same_motion_alerts_and_states(reports, cuts):
    whole = run(reports, [])
    assert run(reports, cuts) == whole
    assert run(reports, list(range(len(reports)))) == whole  # one report per batch: the fold itself


@settings(max_examples=100, deadline=None)
@given(st.lists(REPORT, min_size=1, max_size=30))
def test_late_reports_have_no_motion_no_transitions_and_leave_the_state(reports):
    """Report by report: a report at or before its track's newest time so far is late."""
    docs, alerts, states = run(reports, [])
    newest: dict[str, int] = {}
    late = 0
    for (track, t, _, _), doc in zip(reports, docs):
        if track in newest and t <= newest[track]:
            late += 1
            assert (doc["distance_m"], doc["speed_mps"], doc["heading_deg"]) == (None, None, None)
        elif track in newest:
            assert doc["distance_m"] is not None and doc["speed_mps"] is not None
        newest[track] = max(t, newest.get(track, t))
    assert {track: s.t for track, s in states.items()} == newest
    state = None
    for track, t, x, y in reports:  # the reference fold agrees on the newest point of each track
        if track == reports[0][0]:
            state, _ = advance(state, t, x, y, tuple(FENCES.containing([x], [y])[0]))
    assert states[reports[0][0]] == state
