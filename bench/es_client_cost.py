"""CPU a caller spends per search: elasticsearch-py (as the web server uses it) against a bare aiohttp session.

    .venv/bin/python -m bench.es_client_cost --index bench-web [--requests 300 --rounds 3]

The same /api/aggregate query of the city view (bench/web_aggregate_latency.py) sent sequentially both ways,
alternating; prints this process's CPU time and wall time per request. It answers whether the client library
or the HTTP exchange itself is what a request costs the server, apart from Elasticsearch's own work.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import aiohttp
import orjson
from elasticsearch import AsyncElasticsearch
from elasticsearch.serializer import OrjsonSerializer

from bench.web_aggregate_latency import T0, view_bbox
from geoiot import config
from geoiot.schema import load_preset
from web import params, where
from web.search import ES_CONNECTIONS
from web.geo import precision_for_zoom


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", default="bench-web")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    settings = config.load(iot_index=args.index)
    preset = load_preset(settings.iot_schema)
    bbox = params.parse_bbox(",".join(map(str, view_bbox(11))))
    body = where.aggregate_body(preset, params.AggregateParams(bbox, params.Window(T0, None), precision_for_zoom(11), None))
    query_params = {k: body.pop(k) for k in ("filter_path", "ignore_unavailable", "allow_no_indices")}
    es = AsyncElasticsearch(settings.es_hosts, serializer=OrjsonSerializer(), connections_per_node=ES_CONNECTIONS)
    session = aiohttp.ClientSession()
    url = f"{settings.es_hosts[0].rstrip('/')}/{args.index}/_search"
    url_params = {"filter_path": ",".join(query_params["filter_path"]), "ignore_unavailable": "true",
                  "allow_no_indices": "true"}
    data = orjson.dumps(body)

    async def elasticsearch_py() -> dict:
        return (await es.search(index=args.index, **query_params, **body)).body

    async def bare_aiohttp() -> dict:
        async with session.post(url, params=url_params, data=data, headers={"content-type": "application/json"}) as r:
            return orjson.loads(await r.read())

    try:
        assert await elasticsearch_py() == await bare_aiohttp()
        print("| round | client | CPU ms per search | wall ms per search |")
        print("|---|---|---|---|")
        for round_ in range(1, args.rounds + 1):
            for fn in (elasticsearch_py, bare_aiohttp):
                cpu, wall = time.process_time(), time.perf_counter()
                for _ in range(args.requests):
                    await fn()
                n = args.requests
                print(f"| {round_} | {fn.__name__} | {(time.process_time() - cpu) / n * 1e3:.3f} | "
                      f"{(time.perf_counter() - wall) / n * 1e3:.3f} |")
    finally:
        await es.close()
        await session.close()


if __name__ == "__main__":
    asyncio.run(main())
