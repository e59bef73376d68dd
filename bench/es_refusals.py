"""What the Elasticsearch sink does with a temporary refusal held for a while: events refused for good (dead
letters), bulk requests sent, documents stored once the refusal is lifted.

    .venv/bin/python bench/es_refusals.py [--events 30000] [--hold 26] [--cases write,closed,cluster]

Per case, an index of its own, 15 concurrent writes of 2,000 documents (the worker's batches) started while
the refusal holds (``index.blocks.write``, a closed index, ``cluster.blocks.read_only``), the refusal lifted
after ``--hold`` seconds, then the count. ``cluster`` sets a cluster-wide block (restored in a ``finally``):
run it on a stack of your own (``ES_URL``). To compare with another tree (e.g. an older commit unpacked with
``git archive``), run this file with ``PYTHONPATH=<that tree>``: the sink measured is the one imported.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

from elasticsearch import AsyncElasticsearch

from agents.store.sink import ElasticsearchSink, es_client
from geoiot import config

BATCH = 2000
CASES = {"write": "index.blocks.write", "closed": "closed index", "cluster": "cluster.blocks.read_only"}


async def refuse(es: AsyncElasticsearch, index: str, case: str, on: bool) -> None:
    if case == "write":
        await es.indices.put_settings(index=index, settings={"index.blocks.write": True if on else None})
    elif case == "closed":
        await (es.indices.close if on else es.indices.open)(index=index)
    else:
        await es.cluster.put_settings(persistent={"cluster.blocks.read_only": True if on else None})


async def run_case(es: AsyncElasticsearch, hosts: list[str], case: str, events: int, hold: float) -> dict[str, Any]:
    index = f"bench-refusal-{case}-{int(time.time())}"
    await es.indices.create(index=index, mappings={"properties": {"n": {"type": "integer"}}})
    client = es_client(hosts)
    requests = [0]
    bulk = client.bulk

    async def counted(*args: Any, **kwargs: Any) -> Any:
        requests[0] += 1
        return await bulk(*args, **kwargs)

    client.bulk = counted  # type: ignore[method-assign]
    sink = ElasticsearchSink(client)
    try:
        await sink.write([{"_op_type": "index", "_index": index, "_id": "first", "_source": {"n": 0}}])
        requests[0] = 0
        await refuse(es, index, case, True)
        try:
            writes = asyncio.ensure_future(asyncio.gather(*[
                sink.write([{"_op_type": "index", "_index": index, "_id": str(n), "_source": {"n": n}}
                            for n in range(start, min(events, start + BATCH))])
                for start in range(0, events, BATCH)]))
            await asyncio.wait([writes], timeout=hold)
        finally:
            await refuse(es, index, case, False)
        refused = sum(len(r) for r in await writes)
        await es.indices.refresh(index=index)
        stored = (await es.count(index=index))["count"] - 1
    finally:
        await sink.stop()
        await es.options(ignore_status=404).indices.delete(index=index)
    return {"case": CASES[case], "events": events, "hold_s": hold, "refused_for_good": refused,
            "bulk_requests": requests[0], "stored": stored}


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=30_000)
    ap.add_argument("--hold", type=float, default=26.0)
    ap.add_argument("--cases", default=",".join(CASES))
    args = ap.parse_args()
    hosts = config.load().es_hosts
    es = AsyncElasticsearch(hosts, request_timeout=60)
    try:
        for case in args.cases.split(","):
            print(json.dumps(await run_case(es, hosts, case, args.events, args.hold)), flush=True)
    finally:
        await es.close()


if __name__ == "__main__":
    asyncio.run(main())
