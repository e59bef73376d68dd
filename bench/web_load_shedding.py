"""Many concurrent map clients against `python -m web`: latency and what each status said, old code vs new.

    .venv/bin/python -m bench.web_load_shedding --baseline /work/main --docs 1000000

Indexes ``--docs`` generated observations (testkit.observations) into ``--index`` once (re-used when
it holds that many). For each client count (20, 100, 500) and each round, starts the server of the baseline checkout
(``--baseline``, e.g. the main branch) and of this one, one after the other (alternating, so both see the
same machine), and sends ``--requests`` aggregations over a city view (zoom 11) with distinct window ends
so no cache answers, from that many concurrent clients (one aiohttp session, one connection per client,
a 30 s client timeout; a client told ``Retry-After`` waits that long before its next request, as HTTP asks).
Reports p50/p95 of every answer and of the 200s, and the answers counted by status
and error ("timeout" when the client gave up).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
from elasticsearch import AsyncElasticsearch

from agents.store.index import drop_index, ensure_index
from geoiot import config
from geoiot.schema import load_preset
from testkit.health import wait_healthy
from testkit.observations import bulk_index, walk
from testkit.processes import free_port

ROOT = Path(__file__).resolve().parent.parent
T0 = 1_356_998_400_000
CITY = "-74.07,40.69,-73.87,40.83"  # about what a 1280x800 map shows at zoom 11 over Manhattan


def pct(values: list[float], q: int) -> float:
    if not values:
        return float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


async def prepare(settings: config.Settings, n: int) -> None:
    es = AsyncElasticsearch(settings.es_hosts, request_timeout=120)
    try:
        preset = load_preset(settings.iot_schema)
        await ensure_index(es, settings, preset, index=settings.iot_index)
        have = (await es.options(ignore_status=404).count(index=settings.iot_index)).body.get("count", 0)
        if have != n:
            await es.options(ignore_status=404).indices.delete(index=f"{settings.iot_index}-*")
            await ensure_index(es, settings, preset, index=settings.iot_index)
            began = time.perf_counter()
            docs = walk(preset, n, tracks=200, start_ms=T0, step_ms=30_000, seed=42)
            await bulk_index(es, settings.iot_index, preset, docs, chunk_size=5_000)
            await es.indices.refresh(index=settings.iot_index)
            print(f"indexed {n} docs in {time.perf_counter() - began:.1f} s", file=sys.stderr)
    finally:
        await es.close()


async def drop(settings: config.Settings) -> None:
    es = AsyncElasticsearch(settings.es_hosts)
    try:
        await drop_index(es, settings.iot_index)
    finally:
        await es.close()


def query(kind: str, i: int) -> dict[str, str]:
    """The ``i``-th request's parameters: the city view at zoom 11, or (``random``) the whole world at a
    random precision 1..12, as a careless client might ask; a distinct window end either way."""
    end = str(T0 + 10**10 + i)
    if kind == "city":
        return {"bbox": CITY, "zoom": "11", "start": str(T0), "end": end}
    return {"precision": str(random.Random(i).randint(1, 12)), "end": end}


async def load(base: str, clients: int, requests: int, offset: int, kind: str) -> dict[str, Any]:
    """``requests`` aggregations from ``clients`` concurrent clients; latencies and outcomes."""
    outcomes: Counter[str] = Counter()
    every: list[float] = []
    ok: list[float] = []
    counter = iter(range(requests))
    timeout = aiohttp.ClientTimeout(total=30)

    async def client(http: aiohttp.ClientSession) -> None:
        for i in counter:
            began = time.perf_counter()
            try:
                async with http.get(f"{base}/api/aggregate", params=query(kind, offset + i)) as r:
                    body = await r.read()
                    status = r.status
                    retry_after = r.headers.get("Retry-After")
            except (asyncio.TimeoutError, aiohttp.ClientError) as exc:
                outcomes[f"client {type(exc).__name__}"] += 1
                every.append((time.perf_counter() - began) * 1000)
                continue
            elapsed = (time.perf_counter() - began) * 1000
            every.append(elapsed)
            if status == 200:
                ok.append(elapsed)
                outcomes["200"] += 1
            else:
                try:
                    error = json.loads(body)["error"].split(":")[0].split(" (")[0]
                except (ValueError, KeyError, TypeError):
                    error = body[:40].decode("latin-1")
                outcomes[f"{status} {error}"] += 1
                if retry_after is not None and retry_after.isdigit():
                    await asyncio.sleep(int(retry_after))  # as HTTP asks of a client; a map refreshes later

    began = time.perf_counter()
    async with aiohttp.ClientSession(headers={"Accept-Encoding": "gzip"}, timeout=timeout,
                                     connector=aiohttp.TCPConnector(limit=clients)) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    wall = time.perf_counter() - began
    return {"p50_ms": round(pct(every, 50), 1), "p95_ms": round(pct(every, 95), 1),
            "ok_p50_ms": round(pct(ok, 50), 1), "ok_p95_ms": round(pct(ok, 95), 1),
            "ok_per_s": round(len(ok) / wall, 1), "outcomes": dict(outcomes.most_common())}


async def run_case(checkout: Path, index: str, clients: int, requests: int, offset: int,
                   kind: str) -> dict[str, Any]:
    port = free_port()
    env = dict(os.environ, IOT_INDEX=index, WEB_PORT=str(port), PYTHONPATH=str(checkout),
               IOT_ALERTS_TOPIC=f"{index}-alerts")
    server = subprocess.Popen([sys.executable, "-m", "web", "--log-level", "ERROR"], cwd=checkout, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            await wait_healthy(http, base, timeout=30)
        await load(base, min(clients, 20), 40, offset - 10**6, "city")  # warm-up
        return await load(base, clients, requests, offset, kind)
    finally:
        server.terminate()
        server.wait(20)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", type=Path, required=True, help="checkout of the code to compare with")
    parser.add_argument("--docs", type=int, default=200_000)
    parser.add_argument("--index", default="bench-web-shed")
    parser.add_argument("--requests", type=int, default=2_000, help="requests per (code, clients) case")
    parser.add_argument("--clients", default="20,100,500")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--query", choices=("city", "random"), default="city",
                        help="city: the zoom-11 view; random: the world at a random precision 1..12")
    parser.add_argument("--drop", action="store_true", help="delete the benchmark index afterwards")
    args = parser.parse_args()
    settings = config.load(iot_index=args.index)
    await prepare(settings, args.docs)
    results: list[dict[str, Any]] = []
    offset = 0
    try:
        for round_ in range(args.rounds):
            for clients in (int(c) for c in args.clients.split(",")):
                codes = [("before", args.baseline.resolve()), ("after", ROOT)]
                for label, checkout in codes if round_ % 2 == 0 else codes[::-1]:
                    offset += 10 * args.requests
                    case = {"code": label, "clients": clients, "round": round_,
                            **await run_case(checkout, args.index, clients, args.requests, offset, args.query)}
                    results.append(case)
                    print(json.dumps(case), file=sys.stderr)
    finally:
        if args.drop:
            await drop(settings)
    print(f"\n{args.docs:,} observations; {args.requests} aggregations ({args.query}) per case; ms\n")
    print("| clients | code | round | p50 / p95 (all) | p50 / p95 (200s) | 200s per s | answers |")
    print("|---|---|---|---|---|---|---|")
    for c in results:
        outcomes = ", ".join(f"{k}: {v}" for k, v in c["outcomes"].items())
        print(f"| {c['clients']} | {c['code']} | {c['round']} | {c['p50_ms']} / {c['p95_ms']} | "
              f"{c['ok_p50_ms']} / {c['ok_p95_ms']} | {c['ok_per_s']} | {outcomes} |")


if __name__ == "__main__":
    asyncio.run(main())
