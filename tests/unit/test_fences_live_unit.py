"""The alert semantics of live fences on the pure pipeline (the worker and the Spark job share it), and the index
the worker builds from the fence topic's records (agents.core.fence_shapes.Shapes)."""

from __future__ import annotations

import numpy as np
import orjson
from hypothesis import given, settings, strategies as st
from shapely.geometry import box, mapping

from agents.core.fence_shapes import MAX_IN_PLACE, Shapes, updated
from agents.core.geofence import Geofences
from agents.core.pipeline import Incoming, Pipeline
from geoiot import fences
from geoiot.schema import load_preset

PRESET = load_preset("taxi")
T0 = 1_357_000_000_000


def report(n: int, lon: float, lat: float, track: str = "cab") -> Incoming:
    value = orjson.dumps({"taxiId": track, "observationTime": T0 + 1000 * n, "longitude": lon, "latitude": lat})
    return Incoming(value, track.encode(), "src", 0, n)


class Topic:
    """Records applied to a fence set like the follower applies them (offsets as versions)."""

    def __init__(self) -> None:
        self.fs = fences.FenceSet()
        self.offset = 0
        self.shapes = Shapes()

    def put(self, fid: str, geom) -> None:
        self.fs.apply(*fences.encode(fences.check_feature(fid, {"type": "Feature", "geometry": orjson.loads(orjson.dumps(mapping(geom)))})),
                      self.offset, T0)
        self.offset += 1

    def delete(self, fid: str) -> None:
        self.fs.apply(fid.encode(), None, self.offset, T0)
        self.offset += 1

    def index(self):
        return self.shapes.index(dict(self.fs.fences), dict(self.fs.removed))


def test_created_changed_and_deleted_fences_give_the_documented_alerts_at_the_next_report():
    topic = Topic()
    topic.put("other", box(10, 10, 11, 11))
    pipeline = Pipeline(PRESET, topic.index(), "obs")
    states: dict = {}

    def batch(*msgs):
        result = pipeline.process(list(msgs), states.get)
        states.update({t: s for t, (_, s) in result.states.items()})
        return result

    first = batch(report(1, 0.5, 0.5))
    assert first.alerts == [] and first.observations.actions()[0]["_source"]["geofences"] == []
    # a fence created around the track: enter at its next report, with the fence's version
    topic.put("zone", box(0, 0, 1, 1))
    pipeline.fences = topic.index()
    second = batch(report(2, 0.5, 0.5))
    assert [(a["event"], a["fence"], a["version"], a["removed"]) for a in second.alerts] == [("enter", "zone", 1, False)]
    assert second.observations.actions()[0]["_source"]["geofences"] == ["zone"]
    # the shape changes so the track is outside: exit at the next report, the new version
    topic.put("zone", box(5, 5, 6, 6))
    pipeline.fences = topic.index()
    third = batch(report(3, 0.5, 0.5))
    assert [(a["event"], a["fence"], a["version"], a["removed"]) for a in third.alerts] == [("exit", "zone", 2, False)]
    # changed back around it: enter; then deleted while inside: exit saying removed, the tombstone's version
    topic.put("zone", box(0, 0, 2, 2))
    pipeline.fences = topic.index()
    assert [a["event"] for a in batch(report(4, 0.5, 0.5)).alerts] == ["enter"]
    topic.delete("zone")
    pipeline.fences = topic.index()
    fifth = batch(report(5, 0.5, 0.5), report(6, 0.6, 0.6))
    assert [(a["event"], a["fence"], a["version"], a["removed"], a["time"]) for a in fifth.alerts] == [
        ("exit", "zone", 4, True, T0 + 5000)]
    assert [a["_source"]["geofences"] for a in fifth.observations.actions()] == [[], []]


def test_file_fences_have_no_version_and_an_unchanged_fence_keeps_its_shape():
    plain = Geofences.from_geometries(["z"], [box(0, 0, 1, 1)])
    assert plain.describe({"fence": "z", "event": "exit"}) == {"fence": "z", "event": "exit", "version": None,
                                                                "removed": False}
    topic = Topic()
    topic.put("a", box(0, 0, 1, 1))
    topic.put("b", box(2, 2, 3, 3))
    one = topic.index()
    topic.put("b", box(4, 4, 5, 5))
    two = topic.index()
    assert one.containing([0.5, 2.5, 4.5], [0.5, 2.5, 4.5]) == [("a",), ("b",), ()]
    assert two.containing([0.5, 2.5, 4.5], [0.5, 2.5, 4.5]) == [("a",), (), ("b",)]
    assert one.geometries[0] is not two.geometries[0]  # each index has geometries of its own
    assert two.versions == {"a": 0, "b": 2} and topic.index().ids == ("a", "b")
    topic.delete("a")
    assert topic.index().ids == ("b",) and topic.index().removed == {"a": 3}


@given(st.lists(st.tuples(st.floats(0, 9), st.floats(0, 9), st.floats(0.1, 2)), min_size=2, max_size=12),
       st.integers(0, 11), st.floats(-3, 12), st.floats(-3, 12))
@settings(max_examples=40, deadline=None)
def test_a_rebuild_that_keeps_cells_equals_an_index_from_scratch(boxes, which, x, y):
    topic = Topic()
    for k, (x0, y0, size) in enumerate(boxes):
        topic.put(f"f{k}", box(x0, y0, x0 + size, y0 + size))
    first = topic.index()
    which %= len(boxes)
    topic.put(f"f{which}", box(x, y, x + 0.7, y + 0.4))  # moved, maybe out of the frame (then a new one)
    kept = topic.index()
    scratch = Shapes().index(dict(topic.fs.fences), dict(topic.fs.removed))
    if first.frame.suits(len(boxes), scratch.bounds):
        assert kept.frame is first.frame  # only the moved fence was placed again
    rng = np.random.default_rng(len(boxes))
    lon, lat = rng.uniform(-3, 13, 2000), rng.uniform(-3, 13, 2000)
    assert kept.containing(lon, lat) == scratch.containing(lon, lat)
    placed = Geofences.from_geometries(kept.ids, list(kept.geometries), kept.frame)  # every fence placed anew
    assert placed.frame is kept.frame
    assert [(f.tolist(), e.tolist()) for f, e in kept.cells] == [(f.tolist(), e.tolist()) for f, e in placed.cells]


@given(st.lists(st.tuples(st.floats(0, 9), st.floats(0, 9), st.floats(0.1, 2)), min_size=2, max_size=12),
       st.lists(st.tuples(st.integers(0, 14), st.tuples(st.floats(0, 9), st.floats(0, 9)) | st.none()), min_size=1, max_size=20))
@settings(max_examples=40, deadline=None)
def test_changes_merged_in_place_equal_a_rebuild(boxes, changes):
    topic = Topic()
    for k, (x0, y0, size) in enumerate(boxes):
        topic.put(f"f{k:02d}", box(x0, y0, x0 + size, y0 + size))
    current = topic.index()
    for k, moved in changes:  # moved, added or deleted
        if moved is None:
            if f"f{k:02d}" in topic.fs.fences:
                topic.delete(f"f{k:02d}")
        else:
            topic.put(f"f{k:02d}", box(moved[0], moved[1], moved[0] + 0.7, moved[1] + 0.4))
    snapshot = dict(topic.fs.fences), dict(topic.fs.removed)
    merged = updated(current, *snapshot, {f"f{k:02d}" for k, _ in changes})
    rebuilt = Shapes().index(*snapshot)
    touched = len({k for k, _ in changes})
    if merged is None:  # too many changes, the frame no longer suits, or nothing left: the worker rebuilds
        assert touched > MAX_IN_PLACE or not snapshot[0] or not current.frame.suits(len(rebuilt), rebuilt.bounds)
        return
    assert merged.ids == rebuilt.ids and merged.versions == rebuilt.versions and merged.removed == rebuilt.removed
    rng = np.random.default_rng(len(changes))
    lon, lat = rng.uniform(-3, 13, 3000), rng.uniform(-3, 13, 3000)
    assert merged.containing(lon, lat) == rebuilt.containing(lon, lat)
    assert merged.describe({"fence": "f00"}) == rebuilt.describe({"fence": "f00"})
    assert updated(merged, *snapshot, ()).ids == merged.ids and updated(None, *snapshot, ()) is None
