"""Pure parts of the OGC API (web/ogc): CQL2 into the API's filter tree, the Elasticsearch query it becomes,
signed cursors, datetime intervals and content negotiation. No services."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from geoiot.documents import field_types
from geoiot.schema import load_preset
from web import where
from web.ogc import cql
from web.ogc import cursor as cursors
from web.ogc.params import negotiate, parse_datetime
from web.params import AllOf, AnyOf, BadRequest, InBox, IsNull, Like, Negation, OneOf, Range

FIELDS = field_types(load_preset("taxi"))
T = 1_356_998_400_000  # 2013-01-01T00:00:00Z


def text(s: str):
    return cql.parse(s, cql.TEXT, FIELDS)


def as_json(doc: object):
    return cql.parse(json.dumps(doc), cql.JSON, FIELDS)


def test_basic_cql2_in_text_and_json_is_one_tree() -> None:
    tree = text("passengerCount > 2 AND (vendor_id = 'VTS' OR vendor_id IS NULL) AND NOT medallion LIKE 'a_%'")
    assert tree == AllOf((Range("passengerCount", "int", low=2, include_low=False),
                          AnyOf((OneOf("vendor_id", "string", ("VTS",)), IsNull("vendor_id"))),
                          Negation(Like("medallion", "a_%"))))
    assert as_json({"op": "and", "args": [
        {"op": ">", "args": [{"property": "passengerCount"}, 2]},
        {"op": "or", "args": [{"op": "=", "args": [{"property": "vendor_id"}, "VTS"]},
                              {"op": "isNull", "args": [{"property": "vendor_id"}]}]},
        {"op": "not", "args": [{"op": "like", "args": [{"property": "medallion"}, "a_%"]}]}]}) == tree


def test_mirrored_comparison_and_times() -> None:
    assert text("2 < passengerCount") == Range("passengerCount", "int", low=2, include_low=False)
    assert text("observationTime >= TIMESTAMP('2013-01-01T00:00:00Z')") == Range("observationTime", "time", low=T)
    # a DATE is its whole UTC day
    assert text("observationTime = DATE('2013-01-01')") == Range("observationTime", "time", T, T + 86_400_000 - 1)
    assert text("T_BEFORE(observationTime, TIMESTAMP('2013-01-01T00:00:00Z'))") == Range(
        "observationTime", "time", high=T, include_high=False)


def test_spatial_operators_on_the_position() -> None:
    assert text("S_INTERSECTS(geometry, BBOX(170, -10, -170, 10))").bbox.crosses_antimeridian  # type: ignore[union-attr]
    assert isinstance(text("S_DISJOINT(geometry, BBOX(0, 0, 1, 1))"), Negation)
    clockwise = as_json({"op": "s_intersects", "args": [{"property": "geometry"}, {
        "type": "Polygon", "coordinates": [[[0, 0], [0, 1], [1, 1], [1, 0], [0, 0]]]}]})
    query = where.attribute_filter(clockwise)["geo_shape"]["geometry"]
    ring = query["shape"]["coordinates"][0]
    area2 = sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(ring, ring[1:]))
    assert area2 > 0  # sent counter-clockwise: Elasticsearch would read a clockwise ring as crossing the antimeridian


@pytest.mark.parametrize("bad", [
    "passengerCount = = 1", "nosuch = 1", "passengerCount = 'x'", "passengerCount = 1.5", "vendor_id > 1",
    "observationTime > 5", "observationTime > '2013-01-01'", "S_CONTAINS(geometry, POINT(0 0))",
    "S_INTERSECTS(geometry, POINT(181 0))", "S_INTERSECTS(passengerCount, POINT(1 1))",
    "passengerCount = passengerCount", "CASEI(vendor_id) = 'a'", "A_CONTAINS(geofences, ('a'))",
    "(" * 40 + "passengerCount = 1" + ")" * 40, "NOT " * 100 + "passengerCount = 1",
    "passengerCount BETWEEN 5 AND 1", "",
])
def test_what_is_refused_is_a_bad_request(bad: str) -> None:
    with pytest.raises(BadRequest):
        text(bad)


def test_json_depth_is_bounded_before_parsing() -> None:
    deep = '{"op":"not","args":[' * 200 + '{"op":"=","args":[{"property":"passengerCount"},1]}' + "]}" * 200
    with pytest.raises(BadRequest, match="nests deeper"):
        cql.parse(deep, cql.JSON, FIELDS)
    with pytest.raises(BadRequest):
        cql.parse("[" * 5000 + "]" * 5000, cql.JSON, FIELDS)


@given(st.text(max_size=200))
def test_any_text_is_a_filter_or_a_bad_request(s: str) -> None:
    try:
        tree = text(s)
    except BadRequest:
        return
    where.attribute_filter(tree)  # whatever parses becomes a query without error


def test_like_patterns_become_wildcards() -> None:
    assert where.attribute_filter(Like("a", r"x%y_z\%*?")) == {"wildcard": {"a": {"value": r"x*y?z%\*\?"}}}


def test_in_box_across_the_antimeridian_is_the_api_bbox_query() -> None:
    box = text("S_INTERSECTS(geometry, BBOX(170, -10, -170, 10))")
    assert isinstance(box, InBox) and where.attribute_filter(box) == where.bbox_filter(box.bbox)


KEY = b"k" * 32


@given(st.one_of(st.none(), st.lists(st.one_of(st.integers(-(2**63), 2**63 - 1), st.text(max_size=30)), max_size=3)),
       st.integers(0, 10**9), st.integers(0, 10**9))
def test_cursors_round_trip_and_edits_are_refused(after: list | None, offset: int, matched: int) -> None:
    scope = cursors.query_scope("observations", ["q"])
    token = cursors.encode(KEY, scope, cursors.Cursor(after, offset, matched))
    assert cursors.decode(KEY, scope, token) == cursors.Cursor(after, offset, matched)
    with pytest.raises(BadRequest):
        cursors.decode(KEY, cursors.query_scope("observations", ["other"]), token)
    with pytest.raises(BadRequest):
        cursors.decode(b"x" * 32, scope, token)
    body, mac = token.split(".")
    with pytest.raises(BadRequest):
        cursors.decode(KEY, scope, ("A" if body[0] != "A" else "B") + body[1:] + "." + mac)


@pytest.mark.parametrize("value,window", [
    ("2013-01-01T00:00:00Z", (T, T)),
    ("2013-01-01", (T, T + 86_400_000 - 1)),
    ("2013-01-01T00:00:00Z/2013-01-02T00:00:00Z", (T, T + 86_400_000)),
    ("../2013-01-01T00:00:00Z", (None, T)),
    ("2013-01-01T00:00:00Z/..", (T, None)),
    ("2013-01-01T00:00:00Z/", (T, None)),
])
def test_datetime_instants_intervals_and_open_ends(value: str, window: tuple) -> None:
    w = parse_datetime(value)
    assert (w.start, w.end) == window


@pytest.mark.parametrize("bad", ["../..", "/", "a/b/c", "2013-01-02/2013-01-01", "tomorrow", "2013-13-01"])
def test_bad_datetimes(bad: str) -> None:
    with pytest.raises(BadRequest):
        parse_datetime(bad)


def test_format_negotiation() -> None:
    assert negotiate(None, "text/html,application/xhtml+xml") == "html"
    assert negotiate(None, "application/geo+json, application/json") == "json"
    assert negotiate(None, None) == "json" and negotiate("html", "application/json") == "html"
    with pytest.raises(BadRequest):
        negotiate("xml", None)


@given(st.integers(-62_135_596_800_000, 253_402_300_799_999))
def test_rfc3339_equals_datetime_formatting(ms: int) -> None:
    from datetime import datetime, timedelta, timezone

    from web.ogc.views import rfc3339
    when = datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(milliseconds=ms)
    assert rfc3339(ms) == when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


async def test_prefetched_pages_are_bounded_and_a_failure_is_a_miss() -> None:
    import asyncio

    from web.ogc.prefetch import Prefetched

    async def value(v: int) -> int:
        await asyncio.sleep(0.01)
        return v

    async def fail() -> int:
        raise RuntimeError("search failed")

    pages: Prefetched[int] = Prefetched(2)
    pages.start("a", value(1))
    pages.start("b", value(2))
    pages.start("c", fail())  # the oldest ("a") is dropped
    assert await pages.take("a") is None
    assert await pages.take("b") == 2 and await pages.take("b") is None  # taken once
    assert await pages.take("c") is None
    pages.start("d", value(4))
    pages.close()
    assert await pages.take("d") is None


@given(st.text(max_size=40), st.integers(0, 253_402_300_799_999), st.one_of(st.none(), st.integers(0, 2**40)))
def test_shaped_features_are_the_documents_with_times_as_rfc3339(vendor: str, t: int, pickup: int | None) -> None:
    import orjson

    from geoiot.documents import GEOMETRY
    from testkit.observations import document
    from web.ogc.shape import shaper
    from web.ogc.views import rfc3339

    preset = load_preset("taxi")
    doc = document(preset, "t-1", t, -73.9, 40.7, ["f"])
    doc["vendor_id"] = vendor + '","observationTime":5'  # a string that looks like a time member
    doc["pickup_datetime"] = pickup
    source = {k: v for k, v in doc.items() if k != GEOMETRY}  # what the search returns (_source excludes)
    body = orjson.dumps({"hits": {"total": {"value": 1}, "hits": [
        {"_index": "i", "_id": f"t-1:{t}", "_score": None, "_source": source, "sort": [t, "t-1"]}]}})
    shaped = shaper(preset)(body)
    times = [n for n, k in FIELDS.items() if k == "time"]
    want = {k: (rfc3339(v) if k in times and isinstance(v, int) else v) for k, v in source.items()}
    assert orjson.loads(shaped.features) == [{"type": "Feature", "id": f"t-1:{t}", "properties": want,
                                              "geometry": {"type": "Point", "coordinates": [-73.9, 40.7]}}]
    assert (shaped.count, shaped.returned, shaped.after, shaped.total) == (1, 1, [t, "t-1"], 1)
