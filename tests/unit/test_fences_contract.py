"""The fence record contract (geoiot.fences): validation names each problem, records round-trip, the fence set
follows puts and tombstones, and the seeding plan is idempotent and never deletes."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, strategies as st

from geoiot import fences
from geoiot.config import DEFAULT_GEOFENCES

SQUARE = [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [0.0, 0.0]]


def feature(coords=None, kind="Polygon", **extra):
    return {"type": "Feature", "properties": {"name": "n"},
            "geometry": {"type": kind, "coordinates": coords if coords is not None else [SQUARE]}, **extra}


def big_ring(n: int) -> list[list[float]]:
    ring = [[0.001 * k, 0.0] for k in range(n - 2)] + [[0.0, 1.0]]
    return ring + [ring[0]]


@pytest.mark.parametrize("body, words", [
    (feature([[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]]), "Self-intersection"),
    (feature([[[0, 0], [1, 0], [1, 1], [0, 1]]]), "not closed"),
    (feature([[[0, 0], [200, 0], [200, 1], [0, 1], [0, 0]]]), "longitude 200 is outside -180..180"),
    (feature([[[0, 0], [1, 0], [1, 95], [0, 1], [0, 0]]]), "latitude 95 is outside -90..90"),
    (feature([big_ring(fences.MAX_VERTICES + 1)]), f"more than {fences.MAX_VERTICES} vertices"),
    (feature([0, 0], "Point"), "is a Point, not a Polygon or MultiPolygon"),
    ({"type": "FeatureCollection", "features": []}, "not a FeatureCollection (send one fence per request)"),
    (feature([]), "non-empty list of linear rings"),
    (feature([], "MultiPolygon"), "non-empty list of polygons"),
    (feature([[[0, 0], [1, 0], [0, 0]]]), "at least 4 positions"),
    (feature([[[0, 0], ["a", 0], [1, 1], [0, 0]]]), "a position is [longitude, latitude]"),
    ({**feature(), "properties": [1]}, "properties must be an object"),
    ({**feature(), "id": "other"}, "differs from the fence id"),
    ([1, 2], "a GeoJSON Feature object"),
    ({"type": "Feature", "geometry": None}, "is a null"),
])
def test_each_malformed_fence_is_refused_naming_the_problem(body, words):
    with pytest.raises(fences.FenceError) as err:
        fences.check_feature("zone-1", body)
    assert words in str(err.value)


@pytest.mark.parametrize("fid", ["", "-lead", "a b", "x" * 129, "é", "__seed__", "a/b"])
def test_fence_ids_follow_the_rules(fid):
    with pytest.raises(fences.FenceError, match="fence id"):
        fences.check_feature(fid, feature())


def test_a_valid_fence_is_stored_as_a_feature_with_its_id():
    multi = feature([[SQUARE], [[[2, 2], [3, 2], [3, 3], [2, 2]]]], "MultiPolygon", id="z.1")
    stored = fences.check_feature("z.1", multi)
    assert stored == {"type": "Feature", "id": "z.1", "geometry": multi["geometry"], "properties": {"name": "n"}}
    assert fences.check_feature("z", {**feature(), "properties": None})["properties"] == {}
    key, value = fences.encode(stored)
    assert key == b"z.1" and fences.decode(key, value) == ("z.1", stored)
    assert fences.decode(b"z.1", None) == ("z.1", None)


@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.booleans()), max_size=30))
def test_the_fence_set_is_the_last_record_of_each_key(ops):
    fs = fences.FenceSet()
    last: dict[str, int | None] = {}
    for offset, (fid, put) in enumerate(ops):
        value = fences.encode(fences.check_feature(fid, feature()))[1] if put else None
        assert fs.apply(fid.encode(), value, offset, 1000 + offset) == fid
        last[fid] = offset if put else None
    assert {f: fs.fences[f].version for f in fs} == {f: o for f, o in last.items() if o is not None}
    assert fs.removed == {f: max(o for o, (g, p) in enumerate(ops) if g == f and not p)
                          for f, o in last.items() if o is None}
    collection = fs.collection()
    assert [f["id"] for f in collection["features"]] == sorted(fs.fences)
    assert all(f["version"] == fs.fences[f["id"]].version and f["updated"] == 1000 + f["version"]
               for f in collection["features"])
    assert collection["version"] == len(ops) - 1


def test_a_record_that_is_not_a_fence_is_refused_and_the_seed_marker_is_not_a_fence():
    fs = fences.FenceSet()
    with pytest.raises(fences.FenceError, match="not JSON"):
        fs.apply(b"a", b"{", 0, 0)
    with pytest.raises(fences.FenceError, match="Point"):
        fs.apply(b"a", json.dumps(feature([0, 0], "Point")).encode(), 1, 0)
    assert fs.apply(fences.SEED_KEY, b"abc", 2, 0) is None and fs.seeded == "abc" and not len(fs)


def test_seeding_writes_what_differs_once_and_never_deletes():
    raw = DEFAULT_GEOFENCES.read_bytes()
    file_fences = fences.features_of_file(json.loads(raw), "jfk")
    digest = fences.file_digest(raw)
    fs = fences.FenceSet()
    plan = fences.seed_plan(fs, file_fences, digest)
    assert [k for k, _ in plan] == [f["id"].encode() for f in file_fences] + [fences.SEED_KEY]
    for offset, (key, value) in enumerate(plan):
        fs.apply(key, value, offset, 0)
    assert fences.seed_plan(fs, file_fences, digest) == []  # the same file again: nothing
    # an API-added fence and an API-deleted file fence stay as they are when the same file is seeded again
    fs.apply(b"api", fences.encode(fences.check_feature("api", feature()))[1], 10, 0)
    fs.apply(file_fences[0]["id"].encode(), None, 11, 0)
    assert fences.seed_plan(fs, file_fences, digest) == []
    # a changed file writes what differs from the fences in force, and deletes nothing
    changed = [{**file_fences[0], "properties": {"name": "renamed"}}]
    plan = fences.seed_plan(fs, changed, "other")
    assert [k for k, _ in plan] == [file_fences[0]["id"].encode(), fences.SEED_KEY]
    assert all(v is not None for _, v in plan)


def test_a_geofences_file_with_a_bad_fence_names_it():
    bad = {"type": "FeatureCollection", "features": [{**feature([[[0, 0], [1, 0], [1, 1], [0, 1]]]), "id": "x"}]}
    with pytest.raises(fences.FenceError, match="f.json: feature 'x': .* not closed"):
        fences.features_of_file(bad, "f.json")
    with pytest.raises(fences.FenceError, match="no id"):
        fences.features_of_file({"type": "FeatureCollection", "features": [feature()]}, "f.json")


def test_a_snapshot_gives_the_same_fence_set():
    fs = fences.FenceSet()
    fs.apply(b"a", fences.encode(fences.check_feature("a", feature()))[1], 0, 100)
    fs.apply(b"b", fences.encode(fences.check_feature("b", feature(kind="MultiPolygon", coords=[[SQUARE]])))[1], 1, 200)
    fs.apply(b"a", None, 2, 300)
    again = fences.FenceSet.from_snapshot(fs.snapshot())
    assert (again.fences, again.removed, again.version) == (fs.fences, fs.removed, 2)
