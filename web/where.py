"""The ``where`` language end to end: the ``field:expression`` text a client sends, the endpoints' parameters
that carry it, and every Elasticsearch request body the API sends, built from those validated values only.

Nothing from the HTTP request is forwarded: field names come from the schema preset and the document model
(:mod:`geoiot.documents`), values from the dataclasses of ``web.params``. Each ``*_body`` function returns
the keyword arguments of ``AsyncElasticsearch.search``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from geoiot.documents import GEOFENCES, GEOMETRY
from geoiot.schema import Preset
from web.alerts import parse_cursor
from web.params import (NO_FIELDS, OBSERVATIONS_SOURCE, SOURCES, WORLD, AggregateParams, AllOf, AnyOf,
                        BadRequest, BBox, EventParams, Filter, FilterValue, InBox, InShape, IsNull, LatestParams, Like,
                        Negation, ObservationParams, OneOf, Query, Range, TrackParams, Window, bounded_precision,
                        normal_view, parse_bbox, parse_limit, parse_precision, parse_time_param, parse_token,
                        parse_window, single, MAX_TRACK_POINTS)

# Attribute filters: ``where=field:expression``, repeated for several (combined with AND). The field is
# everything before the first colon; the expression is checked against the field's type by parse_filter.
# Published in the OpenAPI document: what violates it is refused before any other check.
MAX_FILTERS = 16
MAX_FILTER_VALUES = 64
MAX_STRING_VALUE = 256  # keyword fields ignore longer values (geoiot.documents), so none could match
WHERE_PATTERN = r"^[^:\x00-\x1f\x7f]{1,128}:[^\x00-\x1f\x7f]{1,1024}$"
_WHERE = re.compile(WHERE_PATTERN.removeprefix("^").removesuffix("$"))
_COMPARISON = re.compile(r"(>=|<=|>|<)(.*)", re.DOTALL)
_INT = re.compile(r"[+-]?[0-9]{1,19}")
_FLOAT = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]{1,3})?")
RANGE_TYPES = ("int", "float", "time")


def _filter_value(kind: str, text: str, name: str) -> FilterValue:
    """One value of a filter on field ``name`` of type ``kind``, or a 400 naming the field and the type."""
    if text == "":
        raise BadRequest(f"where {name}: empty value")
    if kind == "string":
        if len(text) > MAX_STRING_VALUE:
            raise BadRequest(f"where {name}: a value longer than {MAX_STRING_VALUE} characters never matches")
        return text
    if kind == "int":
        if not _INT.fullmatch(text) or not -(2**63) <= int(text) < 2**63:
            raise BadRequest(f"where {name}: {text[:40]!r} is not an integer (int field, 64 bits)")
        return int(text)
    if kind == "float":
        if not _FLOAT.fullmatch(text) or not math.isfinite(float(text)):
            raise BadRequest(f"where {name}: {text[:40]!r} is not a finite number (float field)")
        return float(text)
    if kind == "bool":
        if text not in ("true", "false"):
            raise BadRequest(f"where {name}: {text[:40]!r} is not true or false (bool field)")
        return text == "true"
    if kind == "time":
        value = parse_time_param(text, f"where {name} (time field)")
        assert value is not None
        return value
    raise BadRequest(f"where {name}: fields of type {kind!r} cannot be filtered")


def parse_filter(text: str, fields: Mapping[str, str]) -> Filter:
    """One ``field:expression`` against ``fields`` (name -> preset type, geoiot.documents.field_types)."""
    if not _WHERE.fullmatch(text):
        raise BadRequest(f"where {text[:60]!r} is not field:expression (a field name, a colon, then 1..1024 "
                         "characters, no control characters)")
    name, _, expr = text.partition(":")
    kind = fields.get(name)
    if kind is None:
        raise BadRequest(f"where: unknown field {name[:60]!r}; filterable: {', '.join(sorted(fields)) or 'none'}")
    comparison = _COMPARISON.fullmatch(expr)
    if kind in RANGE_TYPES and (comparison or ".." in expr):
        if comparison:
            op, operand = comparison.groups()
            value = _filter_value(kind, operand, name)
            inclusive = op.endswith("=")
            return (Range(name, kind, low=value, include_low=inclusive) if op[0] == ">"
                    else Range(name, kind, high=value, include_high=inclusive))
        low_text, _, high_text = expr.partition("..")
        if not low_text and not high_text:
            raise BadRequest(f"where {name}: a range needs at least one bound (low..high, low.. or ..high)")
        low = _filter_value(kind, low_text, name) if low_text else None
        high = _filter_value(kind, high_text, name) if high_text else None
        if low is not None and high is not None and low > high:  # type: ignore[operator]
            raise BadRequest(f"where {name}: range {expr[:60]!r} is inverted (low > high)")
        return Range(name, kind, low, high)  # type: ignore[arg-type]
    if comparison:
        raise BadRequest(f"where {name}: ranges apply to {', '.join(RANGE_TYPES)} fields; {name!r} is a {kind} "
                         "(use field:value or field:a|b)")
    parts = expr.split("|")
    if len(parts) > MAX_FILTER_VALUES:
        raise BadRequest(f"where {name}: {len(parts)} values; at most {MAX_FILTER_VALUES}")
    return OneOf(name, kind, tuple(dict.fromkeys(_filter_value(kind, part, name) for part in parts)))


def parse_where(texts: Sequence[str], fields: Mapping[str, str]) -> tuple[Filter, ...]:
    """Every ``where`` parameter, all to hold at once (AND)."""
    if len(texts) > MAX_FILTERS:
        raise BadRequest(f"where is given {len(texts)} times; at most {MAX_FILTERS}")
    return tuple(parse_filter(text, fields) for text in texts)


def aggregate_params(query: Query, max_cells: int, fields: Mapping[str, str] = NO_FIELDS) -> AggregateParams:
    """``max_cells``: the most geohash cells one aggregation may cover (WEB_MAX_GRID_CELLS); ``fields``: what
    ``where`` may filter (geoiot.documents.field_types of the preset)."""
    q = single(query, {"bbox", "precision", "zoom", "start", "end", "fence", "source"}, {"where"})
    bbox = parse_bbox(q.get("bbox"))
    precision = bounded_precision(bbox, parse_precision(q.get("precision"), q.get("zoom")), max_cells)
    source = q.get("source", OBSERVATIONS_SOURCE)
    if source not in SOURCES:
        raise BadRequest(f"source {source[:40]!r} must be one of {', '.join(SOURCES)}")
    return AggregateParams(bbox, parse_window(q.get("start"), q.get("end")), precision,
                           parse_token(q.get("fence"), "fence"), parse_where(query.getall("where", []), fields),
                           source)


def observation_params(query: Query, fields: Mapping[str, str] = NO_FIELDS) -> ObservationParams:
    q = single(query, {"bbox", "start", "end", "limit", "fence"}, {"where"})
    return ObservationParams(parse_bbox(q.get("bbox")), parse_window(q.get("start"), q.get("end")),
                             parse_limit(q.get("limit")), parse_token(q.get("fence"), "fence"),
                             parse_where(query.getall("where", []), fields))


def track_params(track: str, query: Query, fields: Mapping[str, str] = NO_FIELDS) -> TrackParams:
    q = single(query, {"start", "end", "limit"}, {"where"})
    token = parse_token(track, "track id")
    assert token is not None
    return TrackParams(token, parse_window(q.get("start"), q.get("end")),
                       parse_limit(q.get("limit"), MAX_TRACK_POINTS, MAX_TRACK_POINTS),
                       parse_where(query.getall("where", []), fields))


def latest_params(query: Query, fields: Mapping[str, str] = NO_FIELDS) -> LatestParams:
    q = single(query, {"bbox", "limit"}, {"where"})
    return LatestParams(parse_bbox(q.get("bbox")), parse_limit(q.get("limit")),
                        parse_where(query.getall("where", []), fields))


def event_params(query: Query, last_event_id: str | None, fields: Mapping[str, str] = NO_FIELDS) -> EventParams:
    """/api/events: the /api/latest parameters, and the resume token from the ``Last-Event-ID`` header (which
    a browser's EventSource sends when it reconnects) or else from ``last_event_id`` (for a new stream, e.g.
    after the view changed, that must not miss the alerts in between)."""
    q = single(query, {"bbox", "limit", "last_event_id"}, {"where"})
    view = normal_view(LatestParams(parse_bbox(q.get("bbox")), parse_limit(q.get("limit")),
                                    parse_where(query.getall("where", []), fields)))
    if last_event_id is not None and last_event_id.strip() != "":
        return EventParams(view, parse_cursor(last_event_id.strip(), "Last-Event-ID"))
    token = q.get("last_event_id", "")
    return EventParams(view, parse_cursor(token, "last_event_id") if token else None)



GEO_FIELD = GEOMETRY
FENCE_FIELD = GEOFENCES
# geohash_grid returns at most this many cells (the most populated first); the map's zoom table keeps a
# view to a few hundred cells, and Elasticsearch's search.max_buckets (65,536) is far above it.
MAX_CELLS = 10_000
# Searching the alias before any data exists must give an empty answer, not index_not_found.
SEARCH_OPTIONS: dict[str, Any] = {"ignore_unavailable": True, "allow_no_indices": True}
# Only what /api/aggregate reads: Elasticsearch then sends (and the client parses) about half the bytes.
AGGREGATE_FILTER_PATH = ["hits.total.value", "aggregations.cells.buckets.key",
                         "aggregations.cells.buckets.doc_count", "aggregations.cells.buckets.centroid.location"]


def bbox_filter(bbox: BBox) -> dict[str, Any] | None:
    """geo_bounding_box on the point; Lucene splits a box whose left > right at the antimeridian."""
    if bbox == WORLD:
        return None
    return {"geo_bounding_box": {GEO_FIELD: {
        "top_left": {"lat": bbox.max_lat, "lon": bbox.min_lon},
        "bottom_right": {"lat": bbox.min_lat, "lon": bbox.max_lon},
    }}}


def time_filter(preset: Preset, window: Window) -> dict[str, Any] | None:
    bounds: dict[str, Any] = {}
    if window.start is not None:
        bounds["gte"] = window.start
    if window.end is not None:
        bounds["lte"] = window.end
    if not bounds:
        return None
    return {"range": {preset.time: {**bounds, "format": "epoch_millis"}}}


def _like(pattern: str) -> str:
    """A CQL2 LIKE pattern as an Elasticsearch wildcard: % -> *, _ -> ?, the rest literal."""
    out, escaped = [], False
    for c in pattern:
        if escaped:
            out.append("\\" + c if c in "*?\\" else c)
            escaped = False
        elif c == "\\":
            escaped = True
        elif c == "%":
            out.append("*")
        elif c == "_":
            out.append("?")
        else:
            out.append("\\" + c if c in "*?" else c)
    return "".join(out)


def attribute_filter(f: Filter) -> dict[str, Any]:
    """One validated filter as an Elasticsearch query: ``where`` filters (OneOf, Range) as a term, terms or
    range query on their field (a field name of the preset or the document model: parse_filter checked it
    against geoiot.documents.field_types); CQL2's tree (web.ogc.cql) as bool queries around them."""
    if isinstance(f, AllOf):
        return {"bool": {"filter": [attribute_filter(p) for p in f.parts]}}
    if isinstance(f, AnyOf):
        return {"bool": {"should": [attribute_filter(p) for p in f.parts], "minimum_should_match": 1}}
    if isinstance(f, Negation):
        return {"bool": {"must_not": [attribute_filter(f.part)]}}
    if isinstance(f, IsNull):
        return {"bool": {"must_not": [{"exists": {"field": f.field}}]}}
    if isinstance(f, Like):
        return {"wildcard": {f.field: {"value": _like(f.pattern)}}}
    if isinstance(f, InBox):
        return bbox_filter(f.bbox) or {"exists": {"field": GEO_FIELD}}
    if isinstance(f, InShape):
        kind, coordinates = f.geometry
        return {"geo_shape": {GEO_FIELD: {"shape": {"type": kind, "coordinates": orjson.loads(coordinates)},
                                          "relation": "intersects"}}}
    if isinstance(f, OneOf):
        if f.kind == "time":  # a date field's exact instants, read as epoch ms whatever its own format
            return {"bool": {"should": [{"range": {f.field: {"gte": v, "lte": v, "format": "epoch_millis"}}}
                                        for v in f.values], "minimum_should_match": 1}}
        if len(f.values) == 1:
            return {"term": {f.field: f.values[0]}}
        return {"terms": {f.field: list(f.values)}}
    bounds: dict[str, Any] = {}
    if f.low is not None:
        bounds["gte" if f.include_low else "gt"] = f.low
    if f.high is not None:
        bounds["lte" if f.include_high else "lt"] = f.high
    if f.kind == "time":
        bounds["format"] = "epoch_millis"
    return {"range": {f.field: bounds}}


def filters(preset: Preset, bbox: BBox, window: Window, fence: str | None,
            where: tuple[Filter, ...] = ()) -> dict[str, Any]:
    clauses = [c for c in (bbox_filter(bbox), time_filter(preset, window)) if c is not None]
    if fence is not None:
        clauses.append({"term": {FENCE_FIELD: fence}})
    clauses.extend(attribute_filter(f) for f in where)
    return {"bool": {"filter": clauses}} if clauses else {"match_all": {}}


def aggregate_body(preset: Preset, p: AggregateParams) -> dict[str, Any]:
    """Cells of the points in view with their counts and centroids.

    The query already restricts the points to the box, so every returned cell holds only in-view points;
    the grid's own ``bounds`` option would add nothing for geo_point fields and cannot express a box
    crossing the antimeridian, so it is not used.
    """
    return {
        **SEARCH_OPTIONS,
        "filter_path": AGGREGATE_FILTER_PATH,
        "size": 0,
        "track_total_hits": True,  # the total in view and whether MAX_CELLS truncated the grid
        "query": filters(preset, p.bbox, p.window, p.fence, p.where),
        "aggs": {"cells": {
            "geohash_grid": {"field": GEO_FIELD, "precision": p.precision, "size": MAX_CELLS},
            "aggs": {"centroid": {"geo_centroid": {"field": GEO_FIELD}}},
        }},
    }


def observations_body(preset: Preset, p: ObservationParams) -> dict[str, Any]:
    """The newest ``limit`` observations in view."""
    return {
        **SEARCH_OPTIONS,
        "size": p.limit,
        "track_total_hits": True,
        "query": filters(preset, p.bbox, p.window, p.fence, p.where),
        "sort": [{preset.time: {"order": "desc", "unmapped_type": "date"}}],
    }


# Elasticsearch's index.max_result_window: the most hits one search may return.
TRACK_PAGE = 10_000


def track_body(preset: Preset, p: TrackParams, size: int = TRACK_PAGE, after: int | None = None) -> dict[str, Any]:
    """One page of a track's reports in time order: the first ``size`` of the window after time ``after``.

    The time alone is a complete sort key: a track has one document per time (``_id`` is track:time,
    geoiot.documents), so paging with search_after on it neither skips nor repeats a report. Only the
    first page counts the window's total. Only the position is read.
    """
    clauses: list[dict[str, Any]] = [{"term": {preset.track: p.track}}]
    window = time_filter(preset, p.window)
    if window is not None:
        clauses.append(window)
    clauses.extend(attribute_filter(f) for f in p.where)
    body: dict[str, Any] = {
        **SEARCH_OPTIONS,
        "size": size,
        "track_total_hits": after is None,
        "_source": [GEO_FIELD, preset.lon, preset.lat],
        "query": {"bool": {"filter": clauses}},
        "sort": [{preset.time: {"order": "asc", "unmapped_type": "date"}}],
    }
    if after is not None:
        body["search_after"] = [after]
    return body


def extent_body(preset: Preset, wrap: bool = True) -> dict[str, Any]:
    """First and last time, count and bounding box of everything indexed; ``wrap``: the box may cross the
    antimeridian (the tightest box), else it spans the longitudes between (what every client reads right)."""
    return {
        **SEARCH_OPTIONS,
        "size": 0,
        "track_total_hits": True,
        "query": {"match_all": {}},
        "aggs": {
            "start": {"min": {"field": preset.time}},
            "end": {"max": {"field": preset.time}},
            "bounds": {"geo_bounds": {"field": GEO_FIELD, "wrap_longitude": wrap}},
        },
    }


def page_body(preset: Preset, bbox: BBox, window: Window, where: tuple[Filter, ...], size: int,
              after: list[Any] | None, count: bool) -> dict[str, Any]:
    """One page of a scan in (time, track) order, the next after ``after`` (search_after, no deep ``from``):
    a track has one document per time (``_id`` is track:time), and the latest index one per track, so the
    pair is a complete sort key that neither skips nor repeats a document. ``count``: count every match
    (the first page; later pages carry the count in their cursor)."""
    body: dict[str, Any] = {
        **SEARCH_OPTIONS,
        "size": size,
        "track_total_hits": count,
        "_source": {"excludes": [GEO_FIELD]},  # the position is the preset's lon/lat (web.ogc.shape)
        "query": filters(preset, bbox, window, None, where),
        "sort": [{preset.time: {"order": "asc", "unmapped_type": "date"}},
                 {preset.track: {"order": "asc", "unmapped_type": "keyword"}}],
    }
    if after is not None:
        body["search_after"] = after
    return body


def ids_body(feature_id: str) -> dict[str, Any]:
    """The document whose ``_id`` is ``feature_id`` (on the alias: whichever daily index holds it)."""
    return {**SEARCH_OPTIONS, "size": 1, "_source": {"excludes": [GEO_FIELD]}, "query": {"ids": {"values": [feature_id]}}}
