"""End-to-end benchmark of the agents: Kafka -> Faust workers -> Elasticsearch acknowledged.

Three measurements in one run, on the same generated events (``python -m replay generate``):

1. ceiling: the very documents the agents would write (built by ``agents.core.pipeline.Pipeline`` from the
   same Kafka values) bulk-indexed straight into Elasticsearch with the agents' own client and sink
   (``agents.store.sink.ElasticsearchSink``, batches of IOT_BULK_SIZE), with 1 and 2 batches in flight;
2. pipeline: the events already in a 3-partition topic, consumed by 1 and then 2 fresh worker
   processes (``python -m faust -A agents.app worker``); rate = events / (time of last indexed - time
   of first indexed), read from the workers' /metrics every 0.25 s; then checks the exact ES count;
3. latency: one worker, ``python -m replay constant --rate R --retime now`` (event time = send time),
   a poller searching the last 5 s of 10 sample tracks every 0.1 s; latency = first time a document is
   searchable - its event time (resolution 0.1 s), with the index's refresh interval at 1 s; a sample
   document never seen inside the window counts as infinite (``missed``).

    .venv/bin/python -m bench.agents_end_to_end --events 1000000 [--latency-rate 5000 --latency-seconds 20]

``--tree DIR`` runs the workers from another checkout (e.g. an older commit unpacked with ``git archive``)
while the ceiling stays this tree's, so two trees are compared against the same yardstick in alternating
runs; ``--pyspy DIR`` records each 1-worker run's worker with py-spy (raw stacks, for
``bench/pyspy_stages.py``). ``cpu_us_per_event`` is CPU time per event of each process group (ES, workers,
Kafka) over the measured window.

Needs the local stack; creates and deletes its own topics and indices.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import orjson

from agents.core.geofence import Geofences
from agents.core.pipeline import Incoming, Pipeline
from agents.store.index import drop_index, ensure_index
from agents.store.sink import ElasticsearchSink, es_client
from geoiot import config, topics
from geoiot.malloc import keep_freed_heap
from geoiot.schema import load_preset, parse_row
from bench.procstat import cpu_seconds, service_pids
from testkit.processes import free_port

ROOT = Path(__file__).resolve().parent.parent
TREE = ROOT  # where the workers run from (--tree)
PYSPY: Path | None = None

PY = sys.executable


class CpuMeter:
    """Cores used by each named process group between ``start()`` and ``stop()``: why a rate is what it is."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = groups

    def _sample(self) -> dict[str, float]:
        return {name: sum(cpu_seconds(pid) for pid in pids) for name, pids in self.groups.items()}

    def start(self) -> None:
        self.t0, self.c0 = time.perf_counter(), self._sample()

    def stop(self) -> dict[str, float]:
        elapsed, c1 = time.perf_counter() - self.t0, self._sample()
        return {name: round((c1[name] - self.c0[name]) / elapsed, 2) for name in c1}


CPU: dict[str, dict[str, float]] = {}


def metrics(port: int) -> dict[str, float]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    return {name: float(value) for name, _, value in (l.rpartition(" ") for l in text.splitlines())
            if name.startswith("geoiot_agent_")}


def start_workers(n: int, env: dict[str, str], logdir: Path) -> list[tuple[subprocess.Popen, int]]:
    workers = []
    for i in range(n):
        port = free_port()
        log = (logdir / f"{env['IOT_APP_ID']}-{i}.log").open("wb")
        proc = subprocess.Popen([PY, "-m", "faust", "-A", "agents.app", "worker", "-l", os.environ.get("BENCH_LOG", "warn"),
                                 "--web-port", str(port)], cwd=TREE, env=dict(env, PYTHONPATH=str(TREE)),
                                stdout=log, stderr=subprocess.STDOUT)
        workers.append((proc, port))
    return workers


def stop_workers(workers: list[tuple[subprocess.Popen, int]]) -> None:
    for proc, _ in workers:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc, _ in workers:
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


def indexed(workers) -> float:
    return sum(metrics(port).get('geoiot_agent_indexed_total{sink="elasticsearch"}', 0.0) for _, port in workers)


async def create_topic(bootstrap: str, name: str, partitions: int) -> None:
    await topics.ensure_topic(bootstrap, topics.TopicSpec(name, partitions))


async def delete_topics(bootstrap: str, prefix: str) -> None:
    await topics.delete_topics(bootstrap, prefix=prefix)


async def ceiling(settings, values: list[bytes], index: str, concurrency: int) -> float:
    preset = load_preset(settings.iot_schema)
    pipe = Pipeline(preset, Geofences.load(settings.iot_geofences), index)
    client = es_client(settings.es_hosts)
    sink = ElasticsearchSink(client)
    await ensure_index(client, settings, preset, index)
    size = settings.iot_bulk_size
    batches = []
    for i in range(0, len(values), size):  # request bodies built up front: only the store is timed
        chunk = [Incoming(v, None, "t", 0, i + j) for j, v in enumerate(values[i:i + size])]
        batches.append(pipe.process(chunk, lambda track: None).bulk(latest=False))
    queue = list(reversed(batches))

    async def run() -> None:
        while queue:
            await sink.write_bulk(queue.pop())

    meter = CpuMeter({**{k: [v] for k, v in service_pids().items()}, "bench": [os.getpid()]})
    meter.start()
    t0 = time.perf_counter()
    await asyncio.gather(*(run() for _ in range(concurrency)))
    elapsed = time.perf_counter() - t0
    CPU[f"ceiling_c{concurrency}"] = meter.stop()
    await client.indices.refresh(index=index)
    count = (await client.count(index=index))["count"]
    await drop_index(client, index)
    await client.close()
    assert count == len(values), f"ceiling indexed {count} of {len(values)}"
    return len(values) / elapsed


async def pipeline_rate(settings, env: dict[str, str], workers_n: int, n: int, logdir: Path) -> tuple[float, int]:
    workers = start_workers(workers_n, env, logdir)
    meter = CpuMeter({**{k: [v] for k, v in service_pids().items()}, "workers": [p.pid for p, _ in workers]})
    spy = None
    if PYSPY is not None and workers_n == 1:
        PYSPY.mkdir(parents=True, exist_ok=True)
        spy = subprocess.Popen([str(Path(PY).parent / "py-spy"), "record", "--nonblocking", "--pid", str(workers[0][0].pid), "-r", "100",
                                "-f", "raw", "-o", str(PYSPY / f"{env['IOT_APP_ID']}.txt")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = last = None
    try:
        deadline = time.monotonic() + 60 + n / 500
        while time.monotonic() < deadline:
            done = indexed(workers)
            now = time.monotonic()
            if done > 0 and first is None:
                first = now
                meter.start()
            if done >= n:
                last = now
                CPU[f"pipeline_w{workers_n}"] = meter.stop()
                break
            if any(p.poll() is not None for p, _ in workers):
                raise SystemExit(f"a worker died; see {logdir}")
            await asyncio.sleep(0.25)
    finally:
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            try:
                spy.wait(30)
            except subprocess.TimeoutExpired:
                spy.kill()
        stop_workers(workers)
    client = es_client(settings.es_hosts)
    await client.indices.refresh(index=env["IOT_INDEX"])
    count = (await client.count(index=env["IOT_INDEX"]))["count"]
    # dropped now, so that its merges do not run under the next measurement
    await client.options(ignore_status=404).indices.delete(index=f"{env['IOT_INDEX']}*", expand_wildcards="all")
    await client.close()
    if first is None or last is None:
        raise SystemExit(f"pipeline with {workers_n} worker(s) did not finish; indexed {count}")
    return n / max(last - first, 1e-9), count


LATENCY_WINDOW_S = 5


async def latency(settings, env: dict[str, str], data: Path, rate: int, seconds: int, logdir: Path) -> dict:
    """Produce -> searchable for every document of a sample of tracks.

    The poller asks only for the sample's documents of the last ``LATENCY_WINDOW_S`` seconds, so that its
    own searches take little from Elasticsearch; a document it never saw inside that window (latency above
    the window) counts as an infinite latency, so it can only raise the percentiles, never hide.
    """
    workers = start_workers(1, env, logdir)
    port = workers[0][1]
    client = es_client(settings.es_hosts)
    seen: dict[str, float] = {}
    event_time: dict[str, int] = {}
    sample = [str(i) for i in range(0, 500, 50)]
    try:
        while not metrics(port):
            await asyncio.sleep(0.2)
        await asyncio.sleep(3)  # partitions assigned
        replay = subprocess.Popen([PY, "-m", "replay", "constant", str(data), "--topic", env["IOT_TOPIC"],
                                   "--rate", str(rate), "--retime", "now", "--limit", str(rate * seconds), "-q"],
                                  cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        end = time.monotonic() + seconds + LATENCY_WINDOW_S + 2
        while time.monotonic() < end:
            now_ms = time.time() * 1000
            try:
                resp = await client.search(index=env["IOT_INDEX"], size=10000, source=False,
                                           docvalue_fields=[{"field": "observationTime", "format": "epoch_millis"}],
                                           query={"bool": {"filter": [
                                               {"terms": {"taxiId": sample}},
                                               {"range": {"observationTime": {"gte": int(now_ms - LATENCY_WINDOW_S * 1000)}}}]}})
                for hit in resp["hits"]["hits"]:
                    if hit["_id"] not in seen:
                        seen[hit["_id"]] = now_ms
                        event_time[hit["_id"]] = int(float(hit["fields"]["observationTime"][0]))
            except Exception:
                pass
            await asyncio.sleep(0.1)
        replay.wait(30)
        await client.indices.refresh(index=env["IOT_INDEX"])
        indexed_sample = (await client.count(index=env["IOT_INDEX"], query={"terms": {"taxiId": sample}}))["count"]
    finally:
        stop_workers(workers)
        await client.close()
    missed = max(0, indexed_sample - len(seen))
    lat = np.array([(seen[k] - event_time[k]) / 1000 for k in seen] + [np.inf] * missed)
    return {"samples": int(lat.size), "missed": missed, "window_s": LATENCY_WINDOW_S,
            "p50_s": float(np.percentile(lat, 50)) if lat.size else None,
            "p99_s": float(np.percentile(lat, 99)) if lat.size else None, "max_s": float(lat.max()) if lat.size else None}


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--tracks", type=int, default=500)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--latency-rate", type=int, default=5000)
    ap.add_argument("--latency-seconds", type=int, default=20)
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument("--only-latency", action="store_true", help="skip the ceiling and throughput runs")
    ap.add_argument("--tree", type=Path, default=ROOT, help="checkout the workers run from")
    ap.add_argument("--pyspy", type=Path, default=None, help="record the 1-worker run with py-spy into this directory")
    args = ap.parse_args()
    global TREE, PYSPY
    TREE, PYSPY = args.tree.resolve(), args.pyspy
    settings = config.load()
    keep_freed_heap()  # as the workers do: the ceiling runs the same sink code in this process
    run = f"bench-{uuid.uuid4().hex[:6]}"
    tmp = Path(tempfile.mkdtemp(prefix="agents-bench-"))
    print(f"logs and data: {tmp}", file=sys.stderr)
    data = tmp / "events.csv"
    points = max(1, args.events // args.tracks)
    subprocess.run([PY, "-m", "replay", "generate", "--tracks", str(args.tracks), "--points", str(points),
                    "--seed", "7", "--out", str(data)], cwd=ROOT, check=True, capture_output=True)
    preset = load_preset(settings.iot_schema)
    with data.open(newline="") as f:
        values = [orjson.dumps(parse_row(preset, row)[0]) for row in csv.reader(f)]
    n = len(values)
    results: dict = {"events": n, "bulk_size": settings.iot_bulk_size, "bulk_within": settings.iot_bulk_within}
    base_env = dict(os.environ, PYTHONPATH=str(ROOT), IOT_INDEX_REFRESH="1s")
    try:
        topic = f"{run}-src"
        await create_topic(settings.kafka_bootstrap, topic, 3)
        t0 = time.perf_counter()
        subprocess.run([PY, "-m", "replay", "constant", str(data), "--topic", topic, "--max-rate", "-q"],
                       cwd=ROOT, env=base_env, check=True, capture_output=True)
        results["produce_ev_per_s"] = n / (time.perf_counter() - t0)
        for c in () if args.only_latency else (1, 2):
            results[f"ceiling_c{c}_ev_per_s"] = await ceiling(settings, values, f"{run}-ceil{c}", c)
        for w in [] if args.only_latency else [int(x) for x in args.workers.split(",")]:
            env = dict(base_env, IOT_TOPIC=topic, IOT_APP_ID=f"{run}-w{w}", IOT_INDEX=f"{run}-w{w}",
                       IOT_DLQ_TOPIC=f"{run}-w{w}-dlq", IOT_ALERTS_TOPIC=f"{run}-w{w}-alerts")
            rate, count = await pipeline_rate(settings, env, w, n, tmp)
            results[f"pipeline_w{w}_ev_per_s"] = rate
            results[f"pipeline_w{w}_es_count"] = count
        if not args.skip_latency:
            ltopic = f"{run}-lat"
            await create_topic(settings.kafka_bootstrap, ltopic, 3)
            env = dict(base_env, IOT_TOPIC=ltopic, IOT_APP_ID=f"{run}-lat", IOT_INDEX=f"{run}-lat",
                       IOT_DLQ_TOPIC=f"{run}-lat-dlq", IOT_ALERTS_TOPIC=f"{run}-lat-alerts")
            results["latency"] = await latency(settings, env, data, args.latency_rate, args.latency_seconds, tmp)
    finally:
        await delete_topics(settings.kafka_bootstrap, run)
        client = es_client(settings.es_hosts)
        await client.options(ignore_status=404).indices.delete(index=f"{run}*", expand_wildcards="all")
        await client.options(ignore_status=404).indices.delete_index_template(name=f"{run}*")
        await client.close()
    results["cores_used"] = CPU
    results["tree"] = str(TREE)
    rates = {f"ceiling_c{c}": results.get(f"ceiling_c{c}_ev_per_s") for c in (1, 2)}
    rates.update({f"pipeline_w{w}": results.get(f"pipeline_w{w}_ev_per_s") for w in (1, 2)})
    results["cpu_us_per_event"] = {run: {group: round(cores / rates[run] * 1e6, 1) for group, cores in used.items()}
                                   for run, used in CPU.items() if rates.get(run)}
    if not args.only_latency:
        best = max(results["ceiling_c1_ev_per_s"], results["ceiling_c2_ev_per_s"])
        for w in [int(x) for x in args.workers.split(",")]:
            results[f"ratio_w{w}_vs_best_ceiling"] = results[f"pipeline_w{w}_ev_per_s"] / best
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
