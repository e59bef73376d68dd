"""The answers "now" had before the live mirror (web.live), from Elasticsearch's ``<index>_latest`` index: the
reference the mirror's answers are compared with (tests/integration/test_web_live.py) and the baseline of its
benchmarks. The queries are built by web.where (the filter language's one home), shaped by web.geojson (the
map API's answers) and web.ogc.shape (the OGC API's ``latest`` collection: :func:`ogc_page`, :func:`ogc_feature`,
:func:`ogc_extent`)."""

from __future__ import annotations

from typing import Any

import orjson
from elasticsearch import AsyncElasticsearch

from geoiot.documents import latest_index
from geoiot.schema import Preset
from web import geojson, where
from web.ogc.shape import Shaped, shaper
from web.ogc.views import rfc3339
from web.params import AggregateParams, BBox, Filter, LatestParams, Window


def latest_body(preset: Preset, p: LatestParams) -> dict[str, Any]:
    """The newest ``limit`` current positions in view, for the latest index: one document per track, so the
    hits are tracks and the total counts the tracks in view."""
    return {
        **where.SEARCH_OPTIONS,
        "size": p.limit,
        "track_total_hits": True,
        "query": where.filters(preset, p.bbox, Window(), None, p.where),
        "sort": [{preset.time: {"order": "desc", "unmapped_type": "date"}}],
    }


async def latest(es: AsyncElasticsearch, base: str, preset: Preset, p: LatestParams) -> dict[str, Any]:
    """/api/latest's answer from the latest index of ``base``."""
    resp = (await es.search(index=latest_index(base), **latest_body(preset, p))).body
    features = [f for f in (geojson.latest_feature(preset, dict(hit.get("_source", {})))
                            for hit in resp.get("hits", {}).get("hits", [])) if f is not None]
    return {"type": "FeatureCollection", "total": geojson.total(resp), "features": features}


async def aggregate(es: AsyncElasticsearch, base: str, preset: Preset, p: AggregateParams) -> bytes:
    """/api/aggregate?source=latest's answer from the latest index of ``base``."""
    resp = (await es.search(index=latest_index(base), **where.aggregate_body(preset, p))).body
    return geojson.aggregate_payload(resp, p.precision)


async def ogc_page(es: AsyncElasticsearch, base: str, preset: Preset, bbox: BBox, window: Window,
                   filters: tuple[Filter, ...], limit: int, after: list[Any] | None) -> Shaped:
    """A page of the OGC API's ``latest`` collection as web.ogc read it from the latest index of ``base``:
    web.where.page_body searched with search_after, shaped by web.ogc.shape (the first page counts)."""
    body = where.page_body(preset, bbox, window, filters, limit, after, after is None)
    resp = await es.search(index=latest_index(base), **body)
    return shaper(preset)(orjson.dumps(resp.body))


async def ogc_feature(es: AsyncElasticsearch, base: str, preset: Preset, fid: str) -> dict[str, Any] | None:
    """The ``latest`` collection's feature ``fid`` (a track id) as web.ogc read it from the latest index."""
    resp = await es.search(index=latest_index(base), **where.ids_body(fid))
    found = orjson.loads(shaper(preset)(orjson.dumps(resp.body)).features)
    return found[0] if found else None


async def ogc_extent(es: AsyncElasticsearch, base: str, preset: Preset) -> tuple[list[float] | None,
                                                                             list[str | None]]:
    """The ``latest`` collection's extent (bbox, [first, last time]) as web.ogc read it from the latest index."""
    resp = (await es.search(index=latest_index(base), **where.extent_body(preset, wrap=False))).body
    aggs = resp.get("aggregations", {})
    return geojson.bounds_bbox(aggs), [rfc3339(aggs.get("start", {}).get("value")),
                                       rfc3339(aggs.get("end", {}).get("value"))]
