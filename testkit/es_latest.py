"""The answers "now" had before the live mirror (web.live), from Elasticsearch's ``<index>_latest`` index: the
reference the mirror's answers are compared with (tests/integration/test_web_live.py) and the baseline of its
benchmarks. The queries are built by web.where (the filter language's one home), shaped by web.geojson."""

from __future__ import annotations

from typing import Any

from elasticsearch import AsyncElasticsearch

from geoiot.documents import latest_index
from geoiot.schema import Preset
from web import geojson, where
from web.params import AggregateParams, LatestParams, Window


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
