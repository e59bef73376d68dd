"""Paging the OGC API's ``observations`` items of one large window against a direct search_after scan of the
same query, in the same run, against the real Elasticsearch:

    .venv/bin/python -m bench.ogc_paging [--docs 1000000] [--limit 10000] [--rounds 2]

Indexes ``--docs`` taxi reports with every attribute filled (a temporary index, dropped after), starts
``python -m web`` on it, then alternates: (a) the direct scan, AsyncElasticsearch searches of
``web.where.page_body`` (the server's own query for that window) with search_after, each page's hits parsed;
(b) a client that pages ``/ogc/collections/observations/items?bbox&datetime&limit`` by its next links and
parses each page's GeoJSON. Prints features/s of each and their ratio (goal >= 0.7).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from elasticsearch import AsyncElasticsearch
from elasticsearch.serializer import OrjsonSerializer

from geoiot import config
from testkit.observations import NYC, indexed, walk
from testkit.ogc_data import PRESET
from testkit.served_map import web_server
from web import where
from web.ogc.views import rfc3339
from web.params import BBox, Window

FILL = {"string": "VTS-0123456789abcdef", "int": 3, "float": 12.345678, "bool": True, "time": 1_357_000_000_000}
T0 = 1_357_000_000_000
ROOT = Path(__file__).resolve().parent.parent


def documents(n: int) -> list[dict[str, Any]]:
    docs = list(walk(PRESET, n, tracks=500, start_ms=T0, step_ms=1_000, seed=3))
    for d in docs:
        for name, kind in PRESET.fields:
            if d[name] is None:
                d[name] = FILL[kind]
    return docs


async def direct_scan(es: AsyncElasticsearch, index: str, bbox: BBox, window: Window, size: int) -> int:
    after, count = None, 0
    while True:
        body = where.page_body(PRESET, bbox, window, (), size, after, after is None)
        resp = await es.search(index=index, **body)
        hits = resp["hits"]["hits"]
        count += len(hits)
        if len(hits) < size:
            return count
        after = hits[-1]["sort"]


async def api_scan(session: aiohttp.ClientSession, url: str, params: dict[str, str]) -> int:
    count, next_url, query = 0, f"{url}/ogc/collections/observations/items", params
    while next_url:
        async with session.get(next_url, params=query) as resp:
            assert resp.status == 200, await resp.text()
            page = orjson.loads(await resp.read())
        count += page["numberReturned"]
        next_url = next((ln["href"] for ln in page["links"] if ln["rel"] == "next"), None)
        query = None
    return count


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=1_000_000)
    parser.add_argument("--limit", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    settings = dataclasses.replace(config.load(), iot_index=f"bench-ogc-{uuid.uuid4().hex[:8]}")
    es = AsyncElasticsearch(settings.es_hosts, request_timeout=120, serializer=OrjsonSerializer())
    began = time.perf_counter()
    docs = documents(args.docs)
    bbox, window = BBox(*NYC), Window(T0, docs[-1][PRESET.time])
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    try:
        async with indexed(es, settings, PRESET, docs):
            del docs
            print(f"indexed {args.docs:,} reports in {time.perf_counter() - began:.0f} s", flush=True)
            with web_server(env, {"IOT_INDEX": settings.iot_index}, Path("/tmp") / f"{settings.iot_index}.log",
                            timeout=60) as url:
                params = {"bbox": ",".join(map(str, NYC)), "limit": str(args.limit),
                          "datetime": f"{rfc3339(window.start)}/{rfc3339(window.end)}"}
                rates: dict[str, list[float]] = {"direct": [], "api": []}
                async with aiohttp.ClientSession(auto_decompress=True) as session:
                    for r in range(args.rounds):
                        for name in ("direct", "api"):
                            t = time.perf_counter()
                            n = (await direct_scan(es, settings.iot_index, bbox, window, args.limit) if name == "direct"
                                 else await api_scan(session, url, params))
                            elapsed = time.perf_counter() - t
                            assert n == args.docs, (name, n)
                            rates[name].append(n / elapsed)
                            print(f"round {r + 1} {name}: {n:,} features in {elapsed:.1f} s = {n / elapsed:,.0f} "
                                  f"features/s (load {os.getloadavg()[0]:.1f})", flush=True)
                d, a = statistics.median(rates["direct"]), statistics.median(rates["api"])
                print(f"median: direct search_after {d:,.0f} features/s, OGC API {a:,.0f} features/s, "
                      f"ratio {a / d:.2f} (goal >= 0.7)")
    finally:
        await es.close()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
