"""Every Elasticsearch request body the API sends, built from validated parameters only.

Nothing from the HTTP request is forwarded: field names come from the schema preset and the document
model (:mod:`geoiot.documents`), values from the
dataclasses of ``web.params``. Each function returns the keyword arguments of ``AsyncElasticsearch.search``.
"""

from __future__ import annotations

from typing import Any

from geoiot.documents import GEOFENCES, GEOMETRY
from geoiot.schema import Preset
from web.params import WORLD, AggregateParams, BBox, ObservationParams, TrackParams, Window

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


def filters(preset: Preset, bbox: BBox, window: Window, fence: str | None) -> dict[str, Any]:
    clauses = [c for c in (bbox_filter(bbox), time_filter(preset, window)) if c is not None]
    if fence is not None:
        clauses.append({"term": {FENCE_FIELD: fence}})
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
        "query": filters(preset, p.bbox, p.window, p.fence),
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
        "query": filters(preset, p.bbox, p.window, p.fence),
        "sort": [{preset.time: {"order": "desc", "unmapped_type": "date"}}],
    }


def track_body(preset: Preset, p: TrackParams) -> dict[str, Any]:
    """One track's reports in time order (the first ``limit`` of the window)."""
    clauses: list[dict[str, Any]] = [{"term": {preset.track: p.track}}]
    window = time_filter(preset, p.window)
    if window is not None:
        clauses.append(window)
    return {
        **SEARCH_OPTIONS,
        "size": p.limit,
        "track_total_hits": True,
        "query": {"bool": {"filter": clauses}},
        "sort": [{preset.time: {"order": "asc", "unmapped_type": "date"}}],
    }


def extent_body(preset: Preset) -> dict[str, Any]:
    """First and last time, count and bounding box of everything indexed."""
    return {
        **SEARCH_OPTIONS,
        "size": 0,
        "track_total_hits": True,
        "query": {"match_all": {}},
        "aggs": {
            "start": {"min": {"field": preset.time}},
            "end": {"max": {"field": preset.time}},
            "bounds": {"geo_bounds": {"field": GEO_FIELD, "wrap_longitude": True}},
        },
    }
