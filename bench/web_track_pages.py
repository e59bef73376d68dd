"""/api/tracks/{id} over a track longer than one search (search_after paging), in-process against the real
Elasticsearch:

    .venv/bin/python -m bench.web_track_pages

Indexes one taxi track of 20,345 reports with every attribute filled (a temporary index, dropped after),
then times, interleaved, the whole track (3 pages) against its first 10,000 points (1 page: what the
endpoint returned before it paged), and one 10,000-hit page as the server asks for it (position only)
against the same page with the whole _source. Medians of 15 requests, three interleaved rounds.
"""

from __future__ import annotations

import asyncio
import dataclasses
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from elasticsearch import AsyncElasticsearch
from multidict import MultiDict

from geoiot import config
from geoiot.schema import load_preset
from testkit.observations import indexed, walk
from web import where
from web.app import init_app

PRESET = load_preset("taxi")
POINTS = 2 * where.TRACK_PAGE + 345
FILL = {"string": "VTS-0123456789abcdef", "int": 3, "float": 12.345678, "bool": True, "time": 1_357_000_000_000}


async def median_ms(call: Callable[[], Awaitable[Any]], runs: int = 15) -> float:
    await call()  # warm
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        await call()
        times.append(time.perf_counter() - began)
    return statistics.median(times) * 1000


async def interleaved(a: Callable[[], Awaitable[Any]], b: Callable[[], Awaitable[Any]]) -> tuple[float, float]:
    ta, tb = [], []
    for _ in range(3):
        ta.append(await median_ms(a))
        tb.append(await median_ms(b))
    return statistics.median(ta), statistics.median(tb)


async def main() -> None:
    settings = dataclasses.replace(config.load(), iot_index=f"bench-tracks-{uuid.uuid4().hex[:8]}")
    es = AsyncElasticsearch(settings.es_hosts, request_timeout=60)
    docs = list(walk(PRESET, POINTS, tracks=1, start_ms=1_357_000_000_000, step_ms=1_000, seed=5))
    for d in docs:
        for name, kind in PRESET.fields:
            if d[name] is None:
                d[name] = FILL[kind]
    track = docs[0][PRESET.track]
    try:
        async with indexed(es, settings, PRESET, docs):
            async with TestClient(TestServer(init_app(settings, consume_alerts=False))) as client:
                async def get(query: dict[str, str]) -> None:
                    resp = await client.get(f"/api/tracks/{track}", params=query)
                    assert resp.status == 200
                    await resp.read()

                whole, first = await interleaved(lambda: get({}), lambda: get({"limit": str(where.TRACK_PAGE)}))
                print(f"whole track ({POINTS} points, 3 pages): {whole:.1f} ms; first {where.TRACK_PAGE} "
                      f"(1 page): {first:.1f} ms; ratio {whole / first:.2f} for {POINTS / where.TRACK_PAGE:.2f}x "
                      "the points")
            body = where.track_body(PRESET, where.track_params(track, MultiDict()))
            full = {k: v for k, v in body.items() if k != "_source"}
            position, source = await interleaved(lambda: es.search(index=settings.iot_index, **body),
                                                 lambda: es.search(index=settings.iot_index, **full))
            print(f"one {where.TRACK_PAGE}-hit page from Elasticsearch: position only {position:.1f} ms; "
                  f"whole _source {source:.1f} ms; ratio {source / position:.2f}")
    finally:
        await es.close()


if __name__ == "__main__":
    asyncio.run(main())
