"""Does trimming Elasticsearch's answer make /api/latest's search cheaper? The search as the server sends it
(testkit.es_latest.latest_body) against the same with ``filter_path`` (only the total and the sources), without the
total, and with derived fields left out of ``_source``, interleaved, on bench.web_latest_latency's index.

    .venv/bin/python -m bench.web_latest_trim [--rounds 40]

Run bench.web_latest_latency first (it writes the 10,000 positions). Medians in ms of one client, the whole
city (1,000 hits); "base again" is the first variant repeated last, the run's own noise.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

from elasticsearch import AsyncElasticsearch
from elasticsearch.serializer import OrjsonSerializer

from geoiot import config, documents
from geoiot.schema import load_preset
from testkit import es_latest
from web import params


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--index", default="bench-latest")
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args()
    settings = config.load(iot_index=args.index)
    preset = load_preset(settings.iot_schema)
    es = AsyncElasticsearch(settings.es_hosts, serializer=OrjsonSerializer(), request_timeout=60)
    index = documents.latest_index(args.index)
    base = es_latest.latest_body(preset, params.LatestParams(params.parse_bbox("-74.2,40.5,-73.6,41"), 1000))
    variants: dict[str, dict[str, Any]] = {
        "base (as the server sends it)": base,
        "filter_path hits.total.value, hits.hits._source": {
            **base, "filter_path": ["hits.total.value", "hits.hits._source"]},
        "track_total_hits false": {**base, "track_total_hits": False},
        "_source without geohash, ingested_at, distance_m": {
            **base, "_source": {"excludes": [documents.GEOHASH, documents.INGESTED_AT, documents.DISTANCE]}},
        "base again": base,
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    try:
        for _ in range(args.rounds):
            for name, body in variants.items():
                began = time.perf_counter()
                await es.search(index=index, **body)
                times[name].append((time.perf_counter() - began) * 1000)
    finally:
        await es.close()
    ref = statistics.median(times["base (as the server sends it)"])
    print("| search | median ms | ratio |\n|---|---|---|")
    for name, values in times.items():
        print(f"| {name} | {statistics.median(values):.1f} | {statistics.median(values) / ref:.2f} |")


if __name__ == "__main__":
    asyncio.run(main())
