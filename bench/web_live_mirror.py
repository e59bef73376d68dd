"""The live mirror at scale: the start (a web server reading the live topic to its end) and its memory per track.

    .venv/bin/python -m bench.web_live_mirror [--tracks 1000000]

Publishes ``--tracks`` latest documents (testkit.large_views.latest_documents: one per track over New York,
the agents' document code, in transactions as the worker publishes) into ``bench-live-<tracks>-latest``
(re-used between runs), then starts ``python -m web`` twice in the same run: on a live topic that does not exist
(the baseline: the server's own RSS and start) and on the filled topic. Reports the time from spawn until
/healthz is 200 (the mirror read the topic to its end), the server's CPU seconds until then (what the start costs
on a machine shared with other work) and the RSS difference per track.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from testkit.processes import proc_stat
from geoiot import config, topics
from geoiot.schema import load_preset
from testkit.large_views import publish_latest

ROOT = Path(__file__).resolve().parent.parent
T0 = 1_356_998_400_000


async def start_server(topic: str, index: str) -> tuple[float, int, float, dict]:
    """Spawn the web server on ``topic``; (seconds to /healthz 200, RSS bytes then, CPU seconds then, the
    healthz body)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, IOT_INDEX=index, IOT_LATEST_TOPIC=topic, WEB_PORT=str(port), PYTHONPATH=str(ROOT),
               IOT_ALERTS_TOPIC=f"{index}-alerts")
    began = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "web", "--log-level", "WARNING"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        async with aiohttp.ClientSession() as http:
            while True:
                try:
                    async with http.get(f"http://127.0.0.1:{port}/healthz") as r:
                        if r.status == 200:
                            body = await r.json()
                            break
                except aiohttp.ClientError:
                    pass
                if time.monotonic() - began > 600:
                    raise TimeoutError("the web server did not become ready")
                await asyncio.sleep(0.05)
        ready = time.monotonic() - began
        cpu = proc_stat(proc.pid)[1]
        await asyncio.sleep(1.0)  # the allocator settles
        return ready, proc_stat(proc.pid)[0], cpu, body
    finally:
        proc.terminate()
        proc.wait(30)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tracks", type=int, default=1_000_000)
    parser.add_argument("--partitions", type=int, default=3)
    args = parser.parse_args()
    settings = config.load(iot_index=f"bench-live-{args.tracks}", iot_latest_topic=f"bench-live-{args.tracks}-latest")
    preset = load_preset(settings.iot_schema)
    async with topics.admin_client(settings.kafka_bootstrap) as admin:
        exists = settings.latest_topic in await admin.list_topics()
    if not exists:
        began = time.monotonic()
        await publish_latest(settings, preset, args.tracks, t0=T0, seed=14, heading=True, partitions=args.partitions)
        print(f"published {args.tracks:,} records in {time.monotonic() - began:.1f} s", file=sys.stderr)
    empty_s, empty_rss, empty_cpu, _ = await start_server(f"bench-live-missing-{os.getpid()}", settings.iot_index)
    full_s, full_rss, full_cpu, body = await start_server(settings.latest_topic, settings.iot_index)
    assert body["live"]["tracks"] == args.tracks, body
    result = {"tracks": args.tracks, "baseline_ready_s": round(empty_s, 2), "ready_s": round(full_s, 2),
              "load_s": round(full_s - empty_s, 2), "baseline_cpu_s": round(empty_cpu, 2),
              "cpu_s": round(full_cpu, 2), "load_cpu_s": round(full_cpu - empty_cpu, 2),
              "load_avg": os.getloadavg()[0], "baseline_rss_mb": round(empty_rss / 2**20, 1),
              "rss_mb": round(full_rss / 2**20, 1),
              "bytes_per_track": round((full_rss - empty_rss) / args.tracks, 1)}
    print(json.dumps(result))


if __name__ == "__main__":
    asyncio.run(main())
