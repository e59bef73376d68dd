"""The OGC ``latest`` collection's queries on the mirror (web.live.ogc_items): paging in (time, track) order after
a (time, track) pair returns every matching track once, in the order a direct sort gives, whatever the page
size and however many tracks share a time; spatial shapes select the points a per-point reading of the shape
selects, its boundary included, anywhere in a filter tree; items by id and the extent honour the cutoff; and
the documents are shaped as web.ogc.shape shapes Elasticsearch's hits."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
from hypothesis import given, settings as hsettings, strategies as st
from shapely.geometry import Point, shape

from geoiot.schema import load_preset
from testkit import live
from testkit.observations import document, on_grid
from web.live import ogc_items
from web.live.table import LiveTable
from web.ogc.shape import document_shaper, shaper
from web.params import WORLD, AllOf, AnyOf, InShape, Negation, OneOf, Window, parse_bbox

PRESET = load_preset("taxi")
T0 = 1_357_000_000_000
NAMES = ["cab", "Cab", "z", "é", "Ω", "a-b", "a_b", "0"]


def table_of(rows: list[tuple[str, int, float, float]]) -> LiveTable:
    table = LiveTable(PRESET, capacity=4)
    for track, t, lon, lat in rows:
        live.apply(table, track, document(PRESET, track, t, *on_grid(lon, lat), []))
    return table


tracks = st.lists(st.tuples(st.sampled_from(NAMES), st.integers(0, 999), st.integers(0, 5),
                            st.floats(-74.1, -73.7), st.floats(40.5, 40.9)), max_size=60,
                  unique_by=lambda r: (r[0], r[1]))


@hsettings(max_examples=200, deadline=None)
@given(rows=tracks, limit=st.integers(1, 12))
def test_keyset_pages_give_every_track_once_in_time_then_track_order(rows: list[Any], limit: int) -> None:
    table = table_of([(f"{name}-{i}", T0 + t, lon, lat) for name, i, t, lon, lat in rows])
    want = sorted((T0 + t, f"{name}-{i}") for name, i, t, _, _ in rows)
    every = ogc_items.matching(table, WORLD, Window(), ())
    got, after = [], None
    while True:
        page = ogc_items.page(table, every, limit, after)
        got += [(int(table.time[r]), table.tracks[r]) for r in page.tolist()]
        if len(page) < limit:
            break
        after = ogc_items.sort_values(table, int(page[-1]))
    assert got == want


ring = st.lists(st.tuples(st.floats(-74.1, -73.7), st.floats(40.5, 40.9)), min_size=3, max_size=6)


@hsettings(max_examples=100, deadline=None)
@given(points=st.lists(st.tuples(st.floats(-74.1, -73.7), st.floats(40.5, 40.9)), min_size=1, max_size=40),
       hull=ring)
def test_a_shape_selects_the_points_it_intersects_anywhere_in_the_tree(points: list[Any], hull: list[Any]) -> None:
    table = table_of([(f"t{i}", T0 + i, lon, lat) for i, (lon, lat) in enumerate(points)])
    geom = shape({"type": "MultiPoint", "coordinates": hull}).convex_hull.buffer(0.01)
    mapping = geom.__geo_interface__
    area = InShape((mapping["type"], orjson.dumps(mapping["coordinates"]).decode()))
    rows = ogc_items.matching(table, WORLD, Window(), ())
    inside = {table.tracks[r] for r in rows.tolist() if geom.intersects(Point(table.lon[r], table.lat[r]))}
    every = {table.tracks[r] for r in rows.tolist()}
    for f, want in [(area, inside), (Negation(area), every - inside),
                    (AllOf((AnyOf((area, OneOf(PRESET.track, "string", ("none",)))),)), inside)]:
        got = ogc_items.matching(table, WORLD, Window(), (f,))
        assert {table.tracks[r] for r in got.tolist()} == want


def test_a_shape_includes_its_boundary() -> None:
    table = table_of([("edge", T0, -73.9, 40.7)])
    lon, lat = float(table.lon[0]), float(table.lat[0])
    square = [[[lon, lat], [lon + 0.1, lat], [lon + 0.1, lat + 0.1], [lon, lat + 0.1], [lon, lat]]]
    f = InShape(("Polygon", orjson.dumps(square).decode()))
    assert len(ogc_items.matching(table, WORLD, Window(), (f,))) == 1


def test_bbox_window_and_cutoff_select_and_the_extent_follows_the_cutoff() -> None:
    table = table_of([("a", T0, -73.9, 40.7), ("b", T0 + 10, -73.8, 40.8), ("c", T0 + 20, 179.9, 0.1)])
    names = lambda rows: sorted(table.tracks[r] for r in rows.tolist())  # noqa: E731
    assert names(ogc_items.matching(table, parse_bbox("170,-10,-170,10"), Window(), ())) == ["c"]
    assert names(ogc_items.matching(table, WORLD, Window(T0 + 10, T0 + 20), ())) == ["b", "c"]
    assert names(ogc_items.matching(table, WORLD, Window(), (), cutoff=T0 + 5)) == ["b", "c"]
    assert ogc_items.row_of(table, "a") is not None and ogc_items.row_of(table, "a", cutoff=T0 + 5) is None
    assert ogc_items.row_of(table, "nope") is None
    bbox, (start, end) = ogc_items.extent(table, cutoff=T0 + 5)
    assert start == T0 + 10 and end == T0 + 20 and bbox is not None and bbox[0] == float(table.lon[1])
    assert ogc_items.extent(LiveTable(PRESET)) == (None, (None, None))


def test_documents_are_shaped_as_the_hits_of_elasticsearch() -> None:
    d = document(PRESET, "cab-1", T0, *on_grid(-73.9, 40.7), ["jfk"], speed=2.0)
    source = {k: v for k, v in d.items() if k != "geometry"}
    hits = orjson.dumps({"hits": {"total": {"value": 1}, "hits": [{"_id": "cab-1", "_source": source,
                                                                    "sort": [T0, "cab-1"]}]}})
    features, count = document_shaper(PRESET)([("cab-1", d), ("nowhere", {PRESET.time: T0})])
    assert count == 1 and orjson.loads(features) == orjson.loads(shaper(PRESET)(hits).features)
    table = table_of([("cab-1", T0, -73.9, 40.7)])
    again, _ = document_shaper(PRESET)([("cab-1", table.documents(np.array([0]))[0])])
    assert orjson.loads(again)[0]["geometry"] == orjson.loads(features)[0]["geometry"]
