"""The API's answers from the mirror (web.live.table): /api/latest and the /api/events views (:func:`latest`),
/api/aggregate?source=latest (:func:`aggregate`). Shaped by web.geojson, the one home of the answers' shape,
so they are the answers the Elasticsearch ``_latest`` index gave."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from geoiot.geohash_batch import encode_many
from web import geojson
from web.live.filters import newest_first, newest_in_view, select
from web.live.table import FEATURE_CACHE, LiveTable
from web.params import AggregateParams, LatestParams

# as web.where.MAX_CELLS (the Elasticsearch grid's size): the most populated cells first
MAX_CELLS = 10_000


def newest_rows(table: LiveTable, p: LatestParams, cutoff: int | None = None) -> tuple[int, np.ndarray]:
    """The tracks in view passing the filters (total), and the rows of the newest ``limit``, newest first
    (web.live.filters.newest_first). A view with no ``where`` filter is counted from the grid and read from
    the newest-first order where that is cheaper (newest_in_view), else every row in view is checked."""
    if not p.where:
        fast = newest_in_view(table, p.bbox, p.limit, cutoff)
        if fast is not None:
            return fast
    rows = select(table, p.bbox, p.where, cutoff=cutoff)
    return len(rows), newest_first(table, rows, p.limit)


def latest(table: LiveTable, p: LatestParams, cutoff: int | None = None) -> tuple[int, list[dict[str, Any]]]:
    """The tracks in view passing the filters (total) and the current positions of the newest ``limit``."""
    total, rows = newest_rows(table, p, cutoff)
    preset = table.preset
    features = [f for f in (geojson.latest_feature(preset, doc) for doc in table.documents(rows)) if f is not None]
    return total, features


def latest_payload(table: LiveTable, p: LatestParams, cutoff: int | None = None) -> bytes:
    """/api/latest's answer as JSON: :func:`latest` serialised, each feature's JSON kept per row until the row
    changes (table.feature_json), so a view's answer is mostly a join of kept bytes; and the joined answer kept
    until the table changes (table.answers), for views that select the same rows (the same city on screens of
    other sizes): they get the same bytes object, which the compression memo (web.compression) then knows."""
    total, rows = newest_rows(table, p, cutoff)
    key = (total, rows.tobytes())
    joined = table.answers.get(table.version, key)
    if joined is not None:
        return joined
    joined = _join_features(table, total, rows)
    table.answers.put(table.version, key, joined)
    return joined


def _join_features(table: LiveTable, total: int, rows: np.ndarray) -> bytes:
    """The FeatureCollection of ``rows`` in one join (one copy of the answer): each kept feature carries its
    trailing comma, and the last one's is cut."""
    kept = table.feature_json
    order = rows.tolist()
    missing = [r for r in order if r not in kept]
    if missing:
        if len(kept) + len(missing) > FEATURE_CACHE:
            kept.clear()
        preset = table.preset
        for row, doc in zip(missing, table.documents(missing)):
            feature = geojson.latest_feature(preset, doc)
            kept[row] = b"" if feature is None else orjson.dumps(feature) + b","
    chunks = [kept[r] for r in order]
    chunks.insert(0, b'{"type":"FeatureCollection","total":%d,"features":[' % total)
    for i in range(len(chunks) - 1, 0, -1):
        if chunks[i]:
            chunks[i] = chunks[i][:-1]
            break
    chunks.append(b"]}")
    return b"".join(chunks)


def aggregate(table: LiveTable, p: AggregateParams, cutoff: int | None = None) -> bytes:
    """Geohash cells of the current positions in view: count and centroid per cell, as Elasticsearch's
    geohash_grid + geo_centroid answer them (most populated first, at most MAX_CELLS cells)."""
    rows = select(table, p.bbox, p.where, start=p.window.start, end=p.window.end, fence=p.fence, cutoff=cutoff)
    buckets: list[dict[str, Any]] = []
    if len(rows):
        lon, lat = table.lon[rows], table.lat[rows]
        cells = np.asarray(encode_many(lat, lon, p.precision))
        keys, inverse, counts = np.unique(cells, return_inverse=True, return_counts=True)
        sum_lon = np.bincount(inverse, weights=lon, minlength=len(keys))
        sum_lat = np.bincount(inverse, weights=lat, minlength=len(keys))
        order = np.lexsort((keys, -counts))[:MAX_CELLS]
        for i in order.tolist():
            n = int(counts[i])
            buckets.append({"key": str(keys[i]), "doc_count": n,
                            "centroid": {"location": {"lat": float(sum_lat[i] / n), "lon": float(sum_lon[i] / n)}}})
    resp = {"hits": {"total": {"value": int(len(rows))}}, "aggregations": {"cells": {"buckets": buckets}}}
    return geojson.aggregate_payload(resp, p.precision)
