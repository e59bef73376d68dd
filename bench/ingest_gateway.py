"""The ingest gateway's throughput against same-run baselines: ``python -m replay`` for HTTP batches and
``mosquitto_sub`` for MQTT; and single-position requests as phones send them.

* ``batches``: the same JSON Lines file (generated once, taxi preset) through ``python -m replay constant
  --max-rate`` and as NDJSON bodies of 1,000 positions to ``POST /v1/positions`` (4 requests in flight);
  positions per CPU-second of the replay process and of the gateway process (per core), and their ratio.
* ``single``: one position per request from 200 concurrent clients of ``hey``: as fast as they can (the rate
  reached and the gateway's CPU); then ``--rate`` requests/s in all, twice, for the acknowledgement latency
  (p50, p99): ``paced``, vegeta sending one request every 1/rate s on up to 200 connections (devices that
  report independently), and ``bursts``, ``hey -q`` whose 200 clients tick together, so every 1/10 s all 200
  requests arrive in the same millisecond (the worst case: every phone synchronised). Baselines at the same
  rate in the same run: the same clients on ``GET /healthz`` (HTTP and the machine without Kafka), a plain
  aiokafka producer (Kafka's own acknowledgement) and the gateway's producer without HTTP.
  ``make bench-tools`` installs both load generators (Debian's hey; vegeta into .tools/bin).
* ``mqtt``: ``--messages`` QoS 1 messages queued in a persistent session, then received by ``mosquitto_sub``
  (the baseline) and by the gateway (PUBACK after Kafka): messages/s and per CPU-second, and the ratio.

    .venv/bin/python -m bench.ingest_gateway batches|single|mqtt [--rows N] [--bootstrap HOST:PORT]

Needs the local stack (Kafka; Mosquitto on MQTT_PORT for ``mqtt``). Topics it creates are deleted after.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import aiohttp
import orjson

from bench.procstat import cpu_seconds
from geoiot import topics as kafka_topics
from geoiot.schema import load_preset
from replay.generate import write_csv
from replay.reader import Rejected, read_records
from testkit.ingest import GatewayProcess, ensure_mosquitto, mqtt_port

ROOT = Path(__file__).resolve().parent.parent
TAXI = load_preset("taxi")


def jsonl_file(rows: int) -> Path:
    """A JSON Lines file of ``rows`` taxi positions (from the replay's generator), cached under data/generated/."""
    tracks = 1000
    points = max(1, rows // tracks)
    path = ROOT / "data" / "generated" / f"bench-ingest-{tracks}x{points}.jsonl"
    if not path.exists():
        csv = path.with_suffix(".csv")
        write_csv(csv, tracks, points, seed=42)
        with open(path, "wb") as out:
            for _, record in read_records(csv, TAXI):
                if not isinstance(record, Rejected):
                    out.write(orjson.dumps({k: v for k, v in record.items() if v is not None}) + b"\n")
        csv.unlink()
    return path


async def topic(bootstrap: str, name: str, create: bool) -> None:
    async with kafka_topics.admin_client(bootstrap) as admin:
        if create:
            await kafka_topics.ensure(admin, [kafka_topics.TopicSpec(name, 3)])
        else:
            await kafka_topics.delete(admin, [name])


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def replay_run(path: Path, name: str, bootstrap: str, limit: int) -> tuple[dict, float, float]:
    """(summary, wall seconds, CPU seconds) of one max-rate replay."""
    before, started = children_cpu(), time.monotonic()
    done = subprocess.run([sys.executable, "-m", "replay", "constant", str(path), "--max-rate", "--json-summary",
                           "--quiet", "--topic", name, "--bootstrap", bootstrap, "--limit", str(limit)],
                          cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"replay failed: {done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1]), time.monotonic() - started, children_cpu() - before


def gateway(bootstrap: str, name: str, log: Path, **env: str) -> GatewayProcess:
    return GatewayProcess({"KAFKA_BOOTSTRAP": bootstrap, "IOT_TOPIC": name, "INGEST_INSECURE": "true",
                           "IOT_TOKENS_FILE": "", "MQTT_URL": "", **env}, log).start()


async def bench_batches(args: argparse.Namespace) -> dict:
    path = jsonl_file(args.rows)
    lines = path.read_bytes().splitlines()[: args.rows]
    name = f"bench-ingest-{uuid.uuid4().hex[:8]}"
    await topic(args.bootstrap, name, True)
    gw = None
    try:
        _, _, startup_cpu = replay_run(path, name, args.bootstrap, 1)  # imports and connecting, not per position
        summary, wall, cpu = replay_run(path, name, args.bootstrap, len(lines))
        replay = {"positions": summary["sent"], "wall_s": round(wall, 2), "cpu_s": round(cpu - startup_cpu, 2)}
        gw = gateway(args.bootstrap, name, ROOT / "test-output" / f"{name}.log")
        bodies = [b"\n".join(lines[i:i + 1000]) for i in range(0, len(lines), 1000)]
        queue = iter(bodies)
        accepted = 0

        async def sender(session: aiohttp.ClientSession) -> None:
            nonlocal accepted
            for body in queue:
                async with session.post(gw.url + "/v1/positions", data=body) as r:
                    answer = await r.json()
                    assert r.status == 202, answer
                    accepted += answer["accepted"]

        assert gw.proc is not None
        async with aiohttp.ClientSession() as session:
            # one body first, not counted: the gateway's first request and Kafka batch (as the replay's 1-row run)
            async with session.post(gw.url + "/v1/positions", data=bodies[0]) as r:
                assert r.status == 202, await r.text()
            cpu0, started = cpu_seconds(gw.proc.pid), time.monotonic()
            await asyncio.gather(*(sender(session) for _ in range(4)))
            wall_g, cpu_g = time.monotonic() - started, cpu_seconds(gw.proc.pid) - cpu0
        http = {"positions": accepted, "wall_s": round(wall_g, 2), "cpu_s": round(cpu_g, 2)}
        replay["per_cpu_s"] = round(replay["positions"] / replay["cpu_s"])
        http["per_cpu_s"] = round(accepted / cpu_g)
        replay["rate"] = round(replay["positions"] / wall)
        http["rate"] = round(accepted / wall_g)
        return {"bench": "batches", "rows": len(lines), "replay": replay, "gateway": http,
                "ratio_per_core": round(http["per_cpu_s"] / replay["per_cpu_s"], 2),
                "ratio_wall": round(http["rate"] / replay["rate"], 2), "loadavg": os.getloadavg()[0]}
    finally:
        if gw is not None:
            gw.stop()
        await topic(args.bootstrap, name, False)


def hey(url: str, body: Path | None, clients: int, seconds: float,
        per_client_rate: float | None) -> list[tuple[float, int]]:
    """(latency s, status) of every request ``hey`` (Debian's, Go) made: a load generator that is not the
    bottleneck, as one Python client was. A POST of ``body``, or a GET without one."""
    rate = ["-q", str(per_client_rate)] if per_client_rate else []
    post = ["-m", "POST", "-D", str(body), "-T", "application/json"] if body is not None else []
    done = subprocess.run(["hey", "-z", f"{seconds}s", "-c", str(clients), *rate, *post, "-o", "csv", url],
                          capture_output=True, text=True, check=True)
    out = []
    for line in done.stdout.splitlines()[1:]:
        fields = line.split(",")
        if len(fields) >= 7 and fields[6].isdigit():
            out.append((float(fields[0]), int(fields[6])))
    return out


VEGETA = ROOT / ".tools" / "bin" / "vegeta"


def vegeta(url: str, body: Path | None, clients: int, seconds: float, rate: float) -> dict:
    """Open loop at a constant rate: vegeta sends request i at i/rate s on whichever of its ``clients``
    connections is free, so arrivals are spread as independent devices spread them. Its JSON report:
    latencies in ns, status codes."""
    if not VEGETA.exists():
        sys.exit("vegeta is missing: run make bench-tools")
    target = {"method": "POST" if body is not None else "GET", "url": url}
    if body is not None:
        target |= {"body": base64.b64encode(body.read_bytes()).decode(), "header": {"Content-Type": ["application/json"]}}
    attack = subprocess.run([str(VEGETA), "attack", "-format=json", f"-rate={rate:g}/s", f"-duration={seconds:g}s",
                             f"-workers={clients}", f"-max-workers={clients}"],
                            input=json.dumps(target).encode() + b"\n", capture_output=True, check=False)
    if attack.returncode != 0:
        sys.exit(f"vegeta attack failed: {attack.stderr.decode()}")
    report = subprocess.run([str(VEGETA), "report", "-type=json"], input=attack.stdout, capture_output=True, check=True)
    return json.loads(report.stdout)


async def produce_only(bootstrap: str, name: str, value: bytes, rate: float, seconds: float, acking: bool,
                       linger_ms: int) -> dict:
    """The Kafka side alone at the same rate and key, open loop, latency from send to acknowledgement: a plain
    aiokafka producer (acks=all, idempotence, one ``send`` per position: Kafka's own acknowledgement) or the
    gateway's ``AckingProducer`` (its linger and one batch in flight per partition), without HTTP."""
    from aiokafka import AIOKafkaProducer

    from ingest.producer import AckingProducer

    latencies: list[float] = []
    futures: list[asyncio.Future] = []
    if acking:
        producer = AckingProducer(bootstrap, name, linger_s=linger_ms / 1000)
        await producer.start(3, 1)
    else:
        plain = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=0)
        await plain.start()
    try:
        total, started = int(rate * seconds), time.monotonic()
        sent = 0
        while sent < total:
            due = min(total, int((time.monotonic() - started) * rate) + 1)
            for _ in range(due - sent):
                t = time.monotonic()
                future = producer.append(b"phone-1", value) if acking else await plain.send(name, value, key=b"phone-1")
                future.add_done_callback(lambda _f, t=t: latencies.append(time.monotonic() - t))
                futures.append(future)
            sent = due
            await asyncio.sleep(0.001)
        await asyncio.gather(*futures)
    finally:
        await (producer.stop() if acking else plain.stop())
    q = statistics.quantiles(latencies, n=100)
    return {"what": "AckingProducer (the gateway's, no HTTP)" if acking else "aiokafka send, acks=all",
            "rate": round(len(latencies) / (time.monotonic() - started)), "p50_ms": round(q[49] * 1000, 1),
            "p99_ms": round(q[98] * 1000, 1)}


async def bench_single(args: argparse.Namespace) -> dict:
    name = f"bench-ingest-{uuid.uuid4().hex[:8]}"
    await topic(args.bootstrap, name, True)
    gw = gateway(args.bootstrap, name, ROOT / "test-output" / f"{name}.log", INGEST_LINGER_MS=str(args.linger_ms))
    assert gw.proc is not None
    body = ROOT / "test-output" / f"{name}.json"
    body.write_bytes(orjson.dumps({"taxiId": "phone-1", "observationTime": int(time.time() * 1000),
                                   "longitude": -73.9, "latitude": 40.7}))
    url = gw.url + "/v1/positions"
    try:
        result = {"bench": "single", "loadavg": os.getloadavg()[0]}
        for phase, per_client in (("closed_loop", None), ("bursts", args.rate / args.clients)):
            cpu0, started = cpu_seconds(gw.proc.pid), time.monotonic()
            answers = await asyncio.to_thread(hey, url, body, args.clients, args.seconds, per_client)
            wall, cpu = time.monotonic() - started, cpu_seconds(gw.proc.pid) - cpu0
            ok = [lat for lat, status in answers if status == 202]
            q = statistics.quantiles(ok, n=100)
            result[phase] = {"clients": args.clients, "rate_asked": per_client and args.rate,
                             "requests": len(answers), "accepted": len(ok), "rate": round(len(ok) / wall),
                             "gateway_cpu_share": round(cpu / wall, 2), "per_cpu_s": round(len(ok) / cpu),
                             "p50_ms": round(q[49] * 1000, 1), "p99_ms": round(q[98] * 1000, 1),
                             "statuses": dict(sorted(Counter(s for _, s in answers).items()))}
        cpu0, started = cpu_seconds(gw.proc.pid), time.monotonic()
        paced = await asyncio.to_thread(vegeta, url, body, args.clients, args.seconds, args.rate)
        wall, cpu = time.monotonic() - started, cpu_seconds(gw.proc.pid) - cpu0
        result["paced"] = {"clients": args.clients, "rate_asked": args.rate, "requests": paced["requests"],
                           "rate": round(paced["throughput"]), "gateway_cpu_share": round(cpu / wall, 2),
                           "p50_ms": round(paced["latencies"]["50th"] / 1e6, 1),
                           "p99_ms": round(paced["latencies"]["99th"] / 1e6, 1), "statuses": paced["status_codes"]}
        # the same clients and rates on GET /healthz of the same gateway: HTTP and the machine, no Kafka
        answers = await asyncio.to_thread(hey, gw.url + "/healthz", None, args.clients, args.seconds,
                                          args.rate / args.clients)
        q = statistics.quantiles([lat for lat, status in answers if status == 200], n=100)
        result["http_only_bursts"] = {"what": "GET /healthz, same hey clients and rate", "rate": round(
            len(answers) / args.seconds), "p50_ms": round(q[49] * 1000, 1), "p99_ms": round(q[98] * 1000, 1)}
        paced = await asyncio.to_thread(vegeta, gw.url + "/healthz", None, args.clients, args.seconds, args.rate)
        result["http_only_paced"] = {"what": "GET /healthz, same vegeta clients and rate",
                                     "rate": round(paced["throughput"]),
                                     "p50_ms": round(paced["latencies"]["50th"] / 1e6, 1),
                                     "p99_ms": round(paced["latencies"]["99th"] / 1e6, 1)}
        value = body.read_bytes()
        result["kafka_only"] = await produce_only(args.bootstrap, name, value, args.rate, args.seconds, False, 0)
        result["producer_only"] = await produce_only(args.bootstrap, name, value, args.rate, args.seconds, True,
                                                     args.linger_ms)
        return result
    finally:
        gw.stop()
        body.unlink(missing_ok=True)
        await topic(args.bootstrap, name, False)


def mosquitto(*args: str, stdin: bytes | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), input=stdin, capture_output=True, timeout=timeout, check=True)


async def bench_mqtt(args: argparse.Namespace) -> dict:
    ensure_mosquitto()
    port = str(mqtt_port())
    run = uuid.uuid4().hex[:8]
    base = f"bench-{run}"
    now = int(time.time() * 1000)
    payloads = b"\n".join(orjson.dumps({"observationTime": now + i, "longitude": -73.9, "latitude": 40.7})
                          for i in range(args.messages)) + b"\n"

    def publish(prefix: str) -> None:  # 10 devices, each its own topic level
        for d in range(10):
            part = b"\n".join(payloads.splitlines()[d::10]) + b"\n"
            mosquitto("mosquitto_pub", "-p", port, "-q", "1", "-t", f"{prefix}/dev{d}/position", "-l", stdin=part)

    # baseline: mosquitto_sub's persistent session gets every message queued, then drains it
    sub_id = f"{base}-sub"
    subprocess.run(["mosquitto_sub", "-p", port, "-q", "1", "-c", "-i", sub_id, "-t", f"{base}-s/+/position", "-W", "1"],
                   capture_output=True, timeout=30)  # -W: exits after 1 s of silence, with the session left
    publish(f"{base}-s")
    before, started = children_cpu(), time.monotonic()
    mosquitto("mosquitto_sub", "-p", port, "-q", "1", "-c", "-i", sub_id, "-t", f"{base}-s/+/position",
              "-C", str(args.messages))
    sub_wall, sub_cpu = time.monotonic() - started, children_cpu() - before
    subprocess.run(["mosquitto_sub", "-p", port, "-i", sub_id, "-t", "x", "-W", "1", "-E"], capture_output=True)

    name = f"bench-ingest-{run}"
    await topic(args.bootstrap, name, True)
    env = {"MQTT_URL": f"mqtt://127.0.0.1:{port}", "MQTT_TOPIC": f"{base}-g/+/position", "MQTT_CLIENT_ID": f"{base}-gw",
           "MQTT_QUEUE": str(args.queue)}
    log = ROOT / "test-output" / f"{name}.log"
    gw = gateway(args.bootstrap, name, log, **env)
    try:
        time.sleep(1)  # subscribed
        gw.stop()
        publish(f"{base}-g")
        gw.start()
        assert gw.proc is not None
        key = 'geoiot_ingest_accepted_total{source="mqtt"}'
        first = None
        deadline = time.monotonic() + 600
        while True:
            if time.monotonic() > deadline:
                sys.exit(f"the gateway took {gw.metrics().get(key)} of {args.messages} messages in 600 s")
            got = gw.metrics().get(key, 0)
            if got and first is None:
                first = (time.monotonic(), cpu_seconds(gw.proc.pid), got)
            if got >= args.messages:
                end = (time.monotonic(), cpu_seconds(gw.proc.pid), got)
                break
            await asyncio.sleep(0.02)
        assert first is not None
        n = end[2] - first[2]
        gw_wall, gw_cpu = end[0] - first[0], end[1] - first[1]
        sub = {"messages": args.messages, "wall_s": round(sub_wall, 2), "cpu_s": round(sub_cpu, 2),
               "rate": round(args.messages / sub_wall), "per_cpu_s": round(args.messages / max(sub_cpu, 0.01))}
        gwr = {"messages": int(n), "wall_s": round(gw_wall, 2), "cpu_s": round(gw_cpu, 2), "rate": round(n / gw_wall),
               "per_cpu_s": round(n / gw_cpu), "queue": args.queue}
        return {"bench": "mqtt", "mosquitto_sub": sub, "gateway": gwr,
                "ratio_rate": round(gwr["rate"] / sub["rate"], 2),
                "ratio_per_core": round(gwr["per_cpu_s"] / sub["per_cpu_s"], 2), "loadavg": os.getloadavg()[0]}
    finally:
        gw.stop()
        await topic(args.bootstrap, name, False)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ingest_gateway", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("which", choices=["batches", "single", "mqtt"])
    parser.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP", "localhost:9092"))
    parser.add_argument("--rows", type=int, default=200_000, help="batches: positions (default 200,000)")
    parser.add_argument("--clients", type=int, default=200, help="single: concurrent clients (default 200)")
    parser.add_argument("--rate", type=float, default=2000, help="single: open-loop requests/s (default 2,000)")
    parser.add_argument("--seconds", type=float, default=15, help="single: seconds per phase (default 15)")
    parser.add_argument("--linger-ms", type=int, default=5, help="single: the gateway's INGEST_LINGER_MS (default 5)")
    parser.add_argument("--messages", type=int, default=50_000, help="mqtt: messages (default 50,000)")
    parser.add_argument("--queue", type=int, default=1000, help="mqtt: the gateway's MQTT_QUEUE (default 1,000)")
    args = parser.parse_args()
    (ROOT / "test-output").mkdir(exist_ok=True)
    runner = {"batches": bench_batches, "single": bench_single, "mqtt": bench_mqtt}[args.which]
    print(json.dumps(asyncio.run(runner(args))))


if __name__ == "__main__":
    main()
