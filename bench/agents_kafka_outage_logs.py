"""Log lines a worker writes during a Kafka outage: this checkout against a baseline checkout, same stack.

It stops and restarts Kafka, so it needs a stack of its own, never the shared one:

    cp -a .stack/m2 .stack/kafka-* .stack/es-dist /tmp/own-stack/
    STACK_DIR=/tmp/own-stack KAFKA_PORT=19092 KAFKA_CONTROLLER_PORT=19093 ES_PORT=19200 \\
        ES_TRANSPORT_PORT=19300 infra/local/stack up
    python -m bench.agents_kafka_outage_logs --stack-dir /tmp/own-stack --baseline /path/to/main/checkout

For each checkout: create the topics, start ``faust -A agents.app worker``, wait for /healthz, stop
Kafka for ``--outage`` seconds, start it again, wait ``--settle`` seconds, stop the worker; report the
lines and bytes logged from the outage on, the busiest message templates, and /healthz afterwards.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from testkit.processes import free_port

ROOT = Path(__file__).resolve().parent.parent
STACK = ROOT / "infra" / "local" / "stack"


def healthz(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
            return resp.read().decode()
    except OSError as exc:
        return f"unreachable: {exc}"


def run_one(code: Path, stack_env: dict[str, str], kafka_port: int, es_port: int, outage: float,
            settle: float) -> dict:
    tag = f"outage-{uuid.uuid4().hex[:8]}"
    env = dict(os.environ, PYTHONPATH=str(code), KAFKA_BOOTSTRAP=f"127.0.0.1:{kafka_port}",
               ES_URL=f"http://127.0.0.1:{es_port}", IOT_APP_ID=tag, IOT_TOPIC=tag, IOT_DLQ_TOPIC=f"{tag}-dlq",
               IOT_ALERTS_TOPIC=f"{tag}-alerts", IOT_INDEX=tag)
    subprocess.run([sys.executable, "-m", "geoiot.topics"], cwd=code, env=env, check=True, capture_output=True)
    port = free_port()
    log_path = Path(tempfile.gettempdir()) / f"{tag}.log"
    with log_path.open("wb") as out:
        worker = subprocess.Popen([sys.executable, "-m", "faust", "-A", "agents.app", "worker", "-l", "info",
                                   "--web-port", str(port)], cwd=code, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while not healthz(port).startswith('{"status":"ok"') and time.monotonic() < deadline:
                time.sleep(0.5)
            before = log_path.stat().st_size
            subprocess.run([str(STACK), "stop-kafka"], env=stack_env, check=True, capture_output=True)
            time.sleep(outage)
            subprocess.run([str(STACK), "start-kafka"], env=stack_env, check=True, capture_output=True)
            time.sleep(settle)
            health = healthz(port)
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(120)
    data = log_path.read_bytes()[before:].decode(errors="replace").splitlines()
    templates = collections.Counter(re.sub(r"\d+", "N", line.split("] ", 2)[-1])[:70] for line in data)
    return {"code": str(code), "lines": len(data), "bytes": sum(len(line) + 1 for line in data),
            "healthz_after": health, "top": templates.most_common(5), "log": str(log_path)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stack-dir", required=True, help="STACK_DIR of a stack of your own (it gets restarted)")
    parser.add_argument("--kafka-port", type=int, default=19092)
    parser.add_argument("--kafka-controller-port", type=int, default=19093)
    parser.add_argument("--es-port", type=int, default=19200)
    parser.add_argument("--es-transport-port", type=int, default=19300)
    parser.add_argument("--baseline", type=Path, help="another checkout to measure in the same run")
    parser.add_argument("--outage", type=float, default=75.0)
    parser.add_argument("--settle", type=float, default=20.0)
    args = parser.parse_args()
    if Path(args.stack_dir).resolve() == (ROOT / ".stack").resolve() or args.kafka_port == 9092:
        parser.error("this benchmark stops Kafka: give it a stack of its own (--stack-dir, --kafka-port)")
    stack_env = dict(os.environ, STACK_DIR=args.stack_dir, KAFKA_PORT=str(args.kafka_port),
                     KAFKA_CONTROLLER_PORT=str(args.kafka_controller_port), ES_PORT=str(args.es_port),
                     ES_TRANSPORT_PORT=str(args.es_transport_port))
    results = [run_one(code, stack_env, args.kafka_port, args.es_port, args.outage, args.settle)
               for code in ([args.baseline] if args.baseline else []) + [ROOT]]
    print(json.dumps({"outage_s": args.outage, "settle_s": args.settle, "runs": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
