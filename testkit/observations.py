"""Generated observations built by the agents' own document code (:mod:`geoiot.documents`), for the web
tests and benchmarks.

Coordinates are put on Elasticsearch's geo_point grid (odd multiples of 180/2**32 and 360/2**32 degrees),
so the stored point is exactly the generated one and never sits on a geohash cell edge: per-cell counts
computed here with python-geohash then equal Elasticsearch's exactly.
"""

from __future__ import annotations

import math
import random
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

from elasticsearch import AsyncElasticsearch
from elasticsearch.helpers import async_streaming_bulk

from agents.store.index import drop_index, ensure_index
from geoiot.config import Settings
from geoiot.schema import Preset
from testkit import actions as es_actions

LAT_STEP = 180.0 / 2**32
LON_STEP = 360.0 / 2**32
NYC = (-74.05, 40.60, -73.75, 40.90)


def on_grid(lon: float, lat: float) -> tuple[float, float]:
    """The nearest point Elasticsearch stores exactly, off every geohash cell edge."""
    k_lon = math.floor(lon / LON_STEP) | 1
    k_lat = math.floor(lat / LAT_STEP) | 1
    return k_lon * LON_STEP, k_lat * LAT_STEP


def document(preset: Preset, track: str, time_ms: int, lon: float, lat: float, fences: list[str],
             speed: float = 0.0, heading: float = 0.0, distance: float = 0.0) -> dict[str, Any]:
    """One observation as the agents index it (:func:`geoiot.documents.build`); ingested at its event time."""
    record: dict[str, Any] = {name: None for name in preset.names}
    record.update({preset.track: track, preset.time: time_ms, preset.lon: lon, preset.lat: lat})
    return es_actions.build(record, lon, lat, sorted(fences), distance, speed, heading, ingested_at=time_ms)


def walk(preset: Preset, n: int, *, tracks: int = 50, start_ms: int = 1_356_998_400_000, step_ms: int = 5_000,
         area: tuple[float, float, float, float] = NYC, seed: int = 1,
         fence: tuple[str, tuple[float, float, float, float]] | None = None) -> Iterator[dict[str, Any]]:
    """``n`` observations of ``tracks`` random walks inside ``area``, in time order; ``fence`` is an
    (id, box) whose points get that fence id in ``geofences``."""
    rng = random.Random(seed)
    w, s, e, nth = area
    pos = [(rng.uniform(w, e), rng.uniform(s, nth)) for _ in range(tracks)]
    for i in range(n):
        t = i % tracks
        lon0, lat0 = pos[t]
        lon = min(max(lon0 + rng.gauss(0, 0.002), w), e)
        lat = min(max(lat0 + rng.gauss(0, 0.002), s), nth)
        lon, lat = on_grid(lon, lat)
        pos[t] = (lon, lat)
        dx = (lon - lon0) * 111_320 * math.cos(math.radians(lat))
        dy = (lat - lat0) * 110_540
        dist = math.hypot(dx, dy)
        fences = []
        if fence and fence[1][0] <= lon <= fence[1][2] and fence[1][1] <= lat <= fence[1][3]:
            fences = [fence[0]]
        yield document(preset, f"track-{t:04d}", start_ms + (i // tracks) * step_ms, lon, lat, fences,
                       dist / (step_ms / 1000), math.degrees(math.atan2(dx, dy)) % 360, dist)


async def bulk_index(es: AsyncElasticsearch, base: str, preset: Preset, docs: Iterator[dict[str, Any]],
                     chunk_size: int = 5_000) -> int:
    """Index documents into the daily indices of ``base`` with the agents' bulk actions; returns the count.

    Each daily index is created before its first document, as the agents' sink does (the template forbids
    auto-creation, agents/store/index.py)."""
    created: set[str] = set()

    async def actions() -> AsyncIterator[dict[str, Any]]:
        for doc in docs:
            action = es_actions.action(base, doc[preset.track], doc[preset.time], doc)
            if action["_index"] not in created:
                await es.options(ignore_status=400).indices.create(index=action["_index"])
                created.add(action["_index"])
            yield action

    count = 0
    async for ok, item in async_streaming_bulk(es, actions(), chunk_size=chunk_size, max_retries=5,
                                               raise_on_error=True):
        count += ok
    return count


@asynccontextmanager
async def indexed(es: AsyncElasticsearch, settings: Settings, preset: Preset,
                  docs: list[dict[str, Any]]) -> AsyncIterator[None]:
    """``docs`` in the daily indices of ``settings.iot_index`` (created with the agents' template, refreshed),
    deleted with their template on exit."""
    name = settings.iot_index
    await ensure_index(es, settings, preset, index=name)
    try:
        assert await bulk_index(es, name, preset, iter(docs)) == len(docs)
        await es.indices.refresh(index=f"{name}*")
        yield
    finally:
        await drop_index(es, name)
