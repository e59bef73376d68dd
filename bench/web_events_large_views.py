"""Many distinct /api/events views near limit=10000 on a large latest index: the web server's RSS and CPU,
and the latency of a small /api/latest, for the server of a baseline git ref (main) and of this tree, in the
same run on the same index.

    .venv/bin/python -m bench.web_events_large_views [--tracks 50000] [--views 20] [--seconds 20] [--skip-baseline]

Writes ``--tracks`` latest positions over New York (re-used when the index holds that many), then for each
source tree starts ``python -m web`` (settings at their defaults), measures a small /api/latest (a distinct
~1 km box each time, so a search and not the answer cache) while idle, opens ``--views`` streams on distinct
views of the whole city with limit=10000 (each read and discarded by the client), and for ``--seconds``
samples the server's RSS, its CPU (utime+stime from /proc) and the small request's latency; then closes the
streams, waits until the server watches no view (geoiot_web_sse_views) and reads the RSS 5 s later. The baseline tree is ``git archive <ref>`` in a temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from elasticsearch import AsyncElasticsearch

from geoiot import config
from testkit.health import wait_healthy
from testkit.large_views import ensure_latest
from testkit.processes import proc_stat, stop

ROOT = Path(__file__).resolve().parent.parent
T0 = 1_357_000_000_000


def ms(values: list[float]) -> str:
    if not values:
        return "-"
    p95 = statistics.quantiles(values, n=20)[18] if len(values) > 1 else values[0]
    return f"{statistics.median(values) * 1000:.0f} / {p95 * 1000:.0f}"


async def measure(tree: Path, index: str, args: argparse.Namespace) -> dict[str, Any]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=str(tree), IOT_INDEX=index, WEB_PORT=str(port), WEB_HOST="127.0.0.1",
               IOT_ALERTS_TOPIC=f"{index}-alerts")
    proc = subprocess.Popen([sys.executable, "-m", "web", "--log-level", "WARNING"], cwd=tree, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    k = [0]
    refused: dict[int, int] = {}

    async def small(http: aiohttp.ClientSession) -> float:
        """Its latency, whatever the answer (a 503 busy is counted in ``refused``)."""
        k[0] += 1
        lon = -74.0 + (k[0] % 500) * 1e-4
        began = time.monotonic()
        async with http.get(f"{base}/api/latest?bbox={lon:.5f},40.7,{lon + 0.01:.5f},40.71&limit=10") as r:
            await r.read()
            if r.status != 200:
                refused[r.status] = refused.get(r.status, 0) + 1
        return time.monotonic() - began

    async def views(http: aiohttp.ClientSession) -> float:
        async with http.get(f"{base}/metrics") as r:
            text = await r.text()
        return next(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                    if line.startswith("geoiot_web_sse_views "))

    async def drain(r: aiohttp.ClientResponse) -> None:
        try:
            while await r.content.readany():
                pass
        except (aiohttp.ClientError, asyncio.CancelledError):
            pass

    out: dict[str, Any] = {}
    timeout = aiohttp.ClientTimeout(total=None, sock_read=120)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as http:
            await wait_healthy(http, base, timeout=60)
            idle = [await small(http) for _ in range(20)]
            rss0, cpu0 = proc_stat(proc.pid)
            t0 = time.monotonic()
            streams = [await http.get(f"{base}/api/events?bbox=-74.05,40.6,{-73.75 + i * 1e-5:.5f},40.9&limit=10000")
                       for i in range(args.views)]
            accepted = [r for r in streams if r.status == 200]
            readers = [asyncio.create_task(drain(r)) for r in accepted]
            loaded, peak = [], rss0
            while time.monotonic() - t0 < args.seconds:
                loaded.append(await small(http))
                peak = max(peak, proc_stat(proc.pid)[0])
                await asyncio.sleep(0.25)
            rss1, cpu1 = proc_stat(proc.pid)
            cpu = (cpu1 - cpu0) / (time.monotonic() - t0)
            for r in streams:
                r.close()
            for task in readers:
                task.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
            left = time.monotonic()
            while time.monotonic() - left < 60 and await views(http) > 0:
                await asyncio.sleep(0.2)
            ended = time.monotonic() - left
            await asyncio.sleep(5)
            rss2, _ = proc_stat(proc.pid)
            out = {"streams accepted / refused": f"{len(accepted)} / {len(streams) - len(accepted)}",
                   "small /api/latest idle ms (p50 / p95)": ms(idle),
                   "small /api/latest under load ms (p50 / p95)": ms(loaded),
                   "small /api/latest not 200 under load": str(refused or 0),
                   "server CPU under load (cores)": f"{cpu:.2f}",
                   "views ended after clients left s": f"{ended:.1f}",
                   "RSS MiB: idle / peak / 5 s after the views ended": f"{rss0 >> 20} / {peak >> 20} / {rss2 >> 20}"}
    finally:
        stop(proc, 30)
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tracks", type=int, default=50_000)
    parser.add_argument("--views", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--index", default="bench-sse-views")
    parser.add_argument("--baseline-ref", default="main")
    parser.add_argument("--skip-baseline", action="store_true", help="only this tree (e.g. to try WEB_SSE_* settings)")
    args = parser.parse_args()
    settings = config.load(iot_index=args.index)
    es = AsyncElasticsearch(settings.es_hosts, request_timeout=120)
    try:
        count = await ensure_latest(es, settings, args.tracks, t0=T0, seed=4)
        print(f"{count} latest positions in {args.index}", flush=True)
    finally:
        await es.close()
    archive = b"" if args.skip_baseline else subprocess.run(["git", "archive", args.baseline_ref], cwd=ROOT, check=True,
                                                            capture_output=True).stdout
    results = {}
    if not args.skip_baseline:
        with tempfile.TemporaryDirectory(prefix="sse-baseline-") as tmp:
            tarfile.open(fileobj=io.BytesIO(archive)).extractall(tmp, filter="data")
            results[f"before ({args.baseline_ref})"] = await measure(Path(tmp), args.index, args)
    results["after (this tree)"] = await measure(ROOT, args.index, args)
    print(f"{args.views} views of limit=10000 over {args.tracks} tracks, {args.seconds:g} s")
    print("| | " + " | ".join(results) + " |")
    print("|---|" + "---|" * len(results))
    for key in next(iter(results.values())):
        print(f"| {key} | " + " | ".join(r.get(key, "-") for r in results.values()) + " |")


if __name__ == "__main__":
    asyncio.run(main())
