"""CQL2 into Elasticsearch two ways, on the same index in the same run: ours (the ``cql2`` parser, then
web.ogc.cql into the API's filter tree and web.where) against pygeofilter's own parser and Elasticsearch
backend (``pygeofilter.backends.elasticsearch.to_filter``):

    .venv/bin/python -m bench.ogc_filter_backends [--docs 100000]

For each filter: whether each side parses it, the count each query finds (equal is the test), and the median
latency of a counting search (size 0, exact total) of each, interleaved, 15 runs per round, 3 rounds.
Needs pygeofilter and elasticsearch-dsl (dev extra).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from typing import Any

from elasticsearch import AsyncElasticsearch

from geoiot import config
from geoiot.documents import field_types
from testkit.ogc_data import PRESET, drop, load, make_docs, settings_for
from web import where
from web.ogc import cql
from web.params import WORLD, BadRequest, Window

FILTERS = [
    "passengerCount > 2 AND vendor_id = 'VTS'",
    "passengerCount IN (1, 2) OR vendor_id LIKE 'V%'",
    "speed_mps BETWEEN 1 AND 6",
    "NOT passengerCount = 2",
    "S_INTERSECTS(geometry, POLYGON((-74 40.7, -73.9 40.7, -73.9 40.8, -74 40.8, -74 40.7)))",
    "S_INTERSECTS(geometry, BBOX(-74, 40.7, -73.9, 40.8))",
    "observationTime >= TIMESTAMP('2013-01-01T23:00:00Z')",
    "T_BEFORE(observationTime, TIMESTAMP('2013-01-01T23:00:00Z'))",
    "nosuchfield = 1",
    "passengerCount = 'two'",
]


def ours(text: str) -> dict[str, Any] | str:
    try:
        tree = cql.parse(text, cql.TEXT, field_types(PRESET))
    except BadRequest as exc:
        return f"400: {str(exc)[:60]}"
    return where.filters(PRESET, WORLD, Window(), None, (tree,))


def theirs(text: str) -> dict[str, Any] | str:
    from pygeofilter.backends.elasticsearch import to_filter
    from pygeofilter.parsers.cql2_text import parse
    try:
        return to_filter(parse(text), version="8.19.0").to_dict()
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:60]}"


async def count(es: AsyncElasticsearch, index: str, query: dict[str, Any]) -> int | str:
    try:
        resp = await es.search(index=index, size=0, track_total_hits=True, query=query)
    except Exception as exc:
        return f"{type(exc).__name__}"
    return resp["hits"]["total"]["value"]


async def median_ms(es: AsyncElasticsearch, index: str, query: dict[str, Any], runs: int = 15) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        await es.search(index=index, size=0, track_total_hits=True, query=query)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=100_000)
    args = parser.parse_args()
    settings = settings_for(config.load(), f"bench-cql-{uuid.uuid4().hex[:8]}")
    es = AsyncElasticsearch(settings.es_hosts, request_timeout=120)
    try:
        await load(es, settings, make_docs(n=args.docs))
        index = settings.iot_index
        print("| filter | ours: count | pygeofilter: count | ours ms | pygeofilter ms |\n|---|---|---|---|---|")
        for text in FILTERS:
            a, b = ours(text), theirs(text)
            ca = a if isinstance(a, str) else await count(es, index, a)
            cb = b if isinstance(b, str) else await count(es, index, b)
            ta = tb = "-"
            if not isinstance(a, str) and not isinstance(b, str) and not isinstance(ca, str) and not isinstance(cb, str):
                ra, rb = [], []
                for _ in range(3):
                    ra.append(await median_ms(es, index, a))
                    rb.append(await median_ms(es, index, b))
                ta, tb = f"{statistics.median(ra):.1f}", f"{statistics.median(rb):.1f}"
            print(f"| `{text}` | {ca} | {cb} | {ta} | {tb} |", flush=True)
    finally:
        await drop(es, settings)
        await es.close()


if __name__ == "__main__":
    asyncio.run(main())
