"""Failover on a local cluster: three KRaft brokers and two Elasticsearch nodes (infra/local/stack).

Real processes and exact accounting. A broker is SIGKILLed during a paced replay while two workers run
(topics with replication 3 and the brokers' min.insync.replicas=2, the replayer with acks=all); the
elected Elasticsearch master is SIGKILLed during indexing (the index has one replica). Afterwards every
acknowledged event is indexed exactly once (ids are per event, so the document count is exact), no fence
transition is missing from the alerts topic, and the workers recovered without a restart.

The cluster is CPU heavy, so these tests run only when asked: ``make failover`` (or GEOIOT_FAILOVER=1). They
start their own cluster in CLUSTER_STACK_DIR (default <repo>/.stack-cluster, seeded from .stack's downloads)
on their own ports and never touch the single-node stack others use. Figures go to test-output/failover-*.json.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from elasticsearch import AsyncElasticsearch

from conftest import ROOT, STACK, unique_name
from testkit.served_map import get, wait_until_200
from testkit.worker import Worker, expected_alerts, fence_file, generate, read_topic, records, wait_count

BROKERS, ES_NODES = 3, 2
pytestmark = [pytest.mark.failover, pytest.mark.slow, pytest.mark.integration,
              pytest.mark.skipif(os.environ.get("GEOIOT_FAILOVER") != "1",
                                 reason="cluster failover tests: run `make failover` (GEOIOT_FAILOVER=1)")]


class Cluster:
    def __init__(self) -> None:
        self.dir = Path(os.environ.get("CLUSTER_STACK_DIR", ROOT / ".stack-cluster"))
        self.kafka_port = int(os.environ.get("CLUSTER_KAFKA_PORT", "29092"))
        self.es_port = int(os.environ.get("CLUSTER_ES_PORT", "29200"))
        self.env = {**os.environ, "STACK_DIR": str(self.dir), "KAFKA_PORT": str(self.kafka_port),
                    "KAFKA_CONTROLLER_PORT": os.environ.get("CLUSTER_KAFKA_CONTROLLER_PORT", "29192"),
                    "ES_PORT": str(self.es_port),
                    "ES_TRANSPORT_PORT": os.environ.get("CLUSTER_ES_TRANSPORT_PORT", "29300"),
                    # the stack starts Mosquitto too: off the default port, which a running dev stack holds
                    "MQTT_PORT": os.environ.get("CLUSTER_MQTT_PORT", "29883"),
                    "KAFKA_HEAP": "384m", "ES_HEAP": "512m", "ES_HEAP_MIN": "512m", "STACK_TIMEOUT": "600"}
        self.bootstrap = ",".join(f"127.0.0.1:{self.kafka_port + i}" for i in range(BROKERS))
        self.es_url = ",".join(f"http://127.0.0.1:{self.es_port + i}" for i in range(ES_NODES))

    def stack(self, *args: str) -> str:
        result = subprocess.run([str(STACK), *args], env=self.env, capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, f"stack {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
        return result.stdout

    def seed(self) -> None:
        """The downloads of the single-node stack (jars, ES), so a cluster needs no network."""
        shared = ROOT / ".stack"
        for part in ("m2", "es-dist", *(p.name for p in shared.glob("kafka-*"))):
            if (shared / part).is_dir() and not (self.dir / part).exists():
                self.dir.mkdir(parents=True, exist_ok=True)
                shutil.copytree(shared / part, self.dir / part, symlinks=True)

    def up(self, *service: str) -> None:
        self.stack("up", *service, "--brokers", str(BROKERS), "--es-nodes", str(ES_NODES))

    def pid(self, name: str) -> int:
        return int((self.dir / "run" / f"{name}.pid").read_text().strip())

    def kill(self, name: str) -> None:
        os.kill(self.pid(name), signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.kill(self.pid(name), 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    c = Cluster()
    c.seed()
    already = subprocess.run([str(STACK), "status"], env=c.env, capture_output=True).returncode == 0
    c.up()
    yield c
    if not already:
        c.stack("down")


def worker_env(c: Cluster, topic: str, index: str, fences: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", "KAFKA_BOOTSTRAP": c.bootstrap,
           "ES_URL": c.es_url, "IOT_TOPIC": topic, "IOT_APP_ID": f"{topic}-app", "IOT_INDEX": index,
           "IOT_DLQ_TOPIC": f"{topic}-dlq", "IOT_ALERTS_TOPIC": f"{topic}-alerts", "IOT_REPLICATION": "3",
           "IOT_INDEX_REPLICAS": "1", "IOT_INDEX_REFRESH": "1s", "IOT_BULK_WITHIN": "0.2",
           "IOT_GEOFENCES": str(fences)}
    env.update(extra)
    return env


def start_replay(env: dict[str, str], path: Path, rate: int, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "replay", "constant", str(path), "--rate", str(rate),
                             "--json-summary", "-q"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=log.open("w"), text=True)


def replay_summary(proc: subprocess.Popen, timeout: float = 600) -> dict:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"replay exited {proc.returncode}: {out[-2000:]}"
    return json.loads(out.strip().splitlines()[-1])


def events_total(workers: list[Worker]) -> float:
    return sum(w.metrics().get("geoiot_agent_events_total", 0) for w in workers)


def health(port: int) -> tuple[int, dict]:
    status, body = get(f"http://127.0.0.1:{port}/healthz", timeout=5)
    return status, json.loads(body or b"{}")


async def topic_min_isr(bootstrap: str, topic: str) -> tuple[int, str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        [meta] = await admin.describe_topics([topic])
        [configs] = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
        entries = {e[0]: e[1] for e in configs.resources[0][4]}
        return len(meta["partitions"][0]["replicas"]), entries["min.insync.replicas"]
    finally:
        await admin.close()


async def partition_leader(bootstrap: str, topic: str) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        [meta] = await admin.describe_topics([topic])
        return sorted(meta["partitions"], key=lambda p: p["partition"])[0]["leader"]
    finally:
        await admin.close()


class Run:
    """One test's topics (created as the topics app does), worker environment and generated data."""

    def __init__(self, cluster: Cluster, tmp_path: Path, prefix: str, seed: int) -> None:
        self.topic = self.index = unique_name(prefix)
        fences, self.fence_shapes = fence_file(tmp_path)
        self.env = worker_env(cluster, self.topic, self.index, fences)
        subprocess.run([sys.executable, "-m", "geoiot.topics", "--wait", "120"], cwd=ROOT, env=self.env,
                       check=True, capture_output=True, timeout=180)
        self.data = generate(tmp_path, tracks=30, points=60, seed=seed)
        self.recs = records(self.data)

    async def delete_index(self, es: AsyncElasticsearch) -> None:
        await es.options(ignore_status=404).indices.delete(index=f"{self.index}*", expand_wildcards="all")
        await es.options(ignore_status=404).indices.delete_index_template(name=f"{self.index}*")
        await es.close()


def save(output_dir: Path, name: str, figures: dict) -> None:
    (output_dir / f"failover-{name}.json").write_text(json.dumps(figures, indent=2))
    print(json.dumps({"failover": name, **figures}))


async def test_a_broker_killed_during_a_paced_replay_loses_nothing(cluster: Cluster, tmp_path: Path,
                                                                  output_dir: Path) -> None:
    run = Run(cluster, tmp_path, "fo-kafka", seed=41)
    topic, index, env, data, recs, fence_shapes = run.topic, run.index, run.env, run.data, run.recs, run.fence_shapes
    assert await topic_min_isr(cluster.bootstrap, topic) == (3, "2")
    workers = [Worker(env, output_dir / f"{topic}-w{i}.log").start(timeout=300) for i in range(2)]
    pids = [w.proc.pid for w in workers]
    es = AsyncElasticsearch(cluster.es_url.split(","), request_timeout=30)
    try:
        replay = start_replay(env, data, rate=150, log=output_dir / f"{topic}-replay.log")
        await asyncio.sleep(4)
        victim = await partition_leader(cluster.bootstrap, topic)
        killed_at = time.monotonic()
        cluster.kill(f"kafka-{victim}")
        await asyncio.sleep(8)
        restarted_at = time.monotonic()
        cluster.up("kafka")
        summary = replay_summary(replay)
        assert summary["failed"] == 0 and summary["skipped"] == 0 and summary["sent"] == len(recs), summary
        count = await wait_count(es, index, len(recs), timeout=300)
        recovered_at = time.monotonic()
        want = expected_alerts(recs, fence_shapes)
        alerts = [orjson.loads(v) for v in await read_topic(cluster.bootstrap, env["IOT_ALERTS_TOPIC"], len(want),
                                                             timeout=120)]
        got = [(a["track"], a["fence"], a["event"], a["time"]) for a in alerts]
        missing = sorted(set(want) - set(got))
        processed = events_total(workers)
        save(output_dir, "kafka-broker", {
            "killed_broker": victim, "produced_acked": summary["sent"], "indexed": count,
            "lost": len(recs) - count, "duplicated_documents": max(0, count - len(recs)),
            "events_processed": processed, "reprocessed": processed - len(recs),
            "alerts_expected": len(want), "alerts_missing": len(missing), "alerts_duplicated": len(got) - len(set(got)),
            "down_s": round(restarted_at - killed_at, 1), "restart_to_all_indexed_s": round(recovered_at - restarted_at, 1)})
        assert count == len(recs)
        assert not missing, missing[:5]
        for w, pid in zip(workers, pids):
            assert w.proc.poll() is None and w.proc.pid == pid, "a worker exited"
            status, body = health(w.port)
            assert status == 200, body
    finally:
        for w in workers:
            w.stop()
        await run.delete_index(es)


async def test_the_elected_es_master_killed_during_indexing_loses_nothing(cluster: Cluster, tmp_path: Path,
                                                                         output_dir: Path) -> None:
    run = Run(cluster, tmp_path, "fo-es", seed=43)
    topic, index, env, data, recs = run.topic, run.index, run.env, run.data, run.recs
    worker = Worker(env, output_dir / f"{topic}-w.log").start(timeout=300)
    web_port = Worker(env, output_dir / "unused.log").port
    web = subprocess.Popen([sys.executable, "-m", "web"], cwd=ROOT, env={**env, "WEB_PORT": str(web_port)},
                           stdout=(output_dir / f"{topic}-web.log").open("w"), stderr=subprocess.STDOUT)
    es = AsyncElasticsearch(cluster.es_url.split(","), request_timeout=30)
    try:
        wait_until_200(f"http://127.0.0.1:{web_port}/", 120, alive=lambda: web.poll() is None)
        replay = start_replay(env, data, rate=150, log=output_dir / f"{topic}-replay.log")
        await asyncio.sleep(4)
        master = (await es.cat.master(format="json"))[0]["node"]  # local-1 or local-2
        victim = f"es-{master.rsplit('-', 1)[1]}"
        killed_at = time.monotonic()
        cluster.kill(victim)
        degraded, web_answers = [], []
        # A write to the surviving node hangs until the client's 30 s timeout before it counts as a failure, and
        # the worker reports degraded after 30 s of failures: 75 s of outage show both.
        while time.monotonic() - killed_at < 75:
            status, body = health(worker.port)
            if status == 503:
                degraded.append(body.get("problems"))
            began = time.monotonic()
            try:
                code, payload = get(f"http://127.0.0.1:{web_port}/api/extent", timeout=30)
                web_answers.append((code, round(time.monotonic() - began, 2), json.loads(payload)))
            except OSError as exc:
                web_answers.append((0, round(time.monotonic() - began, 2), str(exc)))
            await asyncio.sleep(2)
        restarted_at = time.monotonic()
        cluster.up("es")
        summary = replay_summary(replay)
        assert summary["failed"] == 0 and summary["sent"] == len(recs), summary
        count = await wait_count(es, index, len(recs), timeout=300)
        recovered_at = time.monotonic()
        lag = -1.0
        while time.monotonic() - recovered_at < 120:  # the gauge is refreshed on a timer: wait for it to drain
            lag = sum(v for k, v in worker.metrics().items() if k.startswith("geoiot_agent_consumer_lag"))
            if lag == 0:
                break
            await asyncio.sleep(2)
        drained_at = time.monotonic()
        save(output_dir, "es-master", {
            "killed_node": master, "produced_acked": summary["sent"], "indexed": count, "lost": len(recs) - count,
            "degraded_reports": len(degraded), "first_problem": degraded[0] if degraded else None,
            "web_statuses": sorted({a[0] for a in web_answers}),
            "web_slowest_answer_s": max(a[1] for a in web_answers), "lag_after": lag,
            "down_s": round(restarted_at - killed_at, 1),
            "restart_to_all_indexed_s": round(recovered_at - restarted_at, 1),
            "restart_to_lag_zero_s": round(drained_at - restarted_at, 1)})
        assert count == len(recs) and lag == 0
        assert degraded, "the worker's /healthz never reported the outage"
        assert all(code in (200, 503) for code, _, _ in web_answers), web_answers
        assert all("error" in body for code, _, body in web_answers if code == 503), web_answers
        assert worker.proc.poll() is None and health(worker.port)[0] == 200
    finally:
        worker.stop()
        web.send_signal(signal.SIGTERM)
        web.wait(timeout=30)
        await run.delete_index(es)
