"""The ingest gateway as a subprocess, Mosquitto from the local stack, and what a topic holds: shared by the
gateway's tests and its benchmarks."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition

from testkit.kafka_events import drain
from testkit.processes import free_port

ROOT = Path(__file__).resolve().parents[1]
STACK = ROOT / "infra" / "local" / "stack"


def mqtt_port() -> int:
    return int(os.environ.get("MQTT_PORT", "1883"))


def answers(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def ensure_mosquitto() -> str:
    """The local stack's Mosquitto (started when nothing answers on MQTT_PORT); its URL."""
    port = mqtt_port()
    if not answers(port):
        result = subprocess.run([str(STACK), "up", "mqtt"], cwd=ROOT, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"infra/local/stack up mqtt failed:\n{result.stdout}\n{result.stderr}")
    return f"mqtt://127.0.0.1:{port}"


class GatewayProcess:
    """``python -m ingest`` with ``env`` on a free port; ``start`` waits until /healthz answers."""

    def __init__(self, env: dict[str, str], log_path: Path, tls: ssl.SSLContext | None = None) -> None:
        self.port = free_port()
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", "INGEST_HOST": "127.0.0.1",
                    "INGEST_PORT": str(self.port), **env}
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self.tls = tls
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> GatewayProcess:
        log = open(self.log_path, "a")
        self.proc = subprocess.Popen([sys.executable, "-m", "ingest"], cwd=ROOT, env=self.env, stdout=log,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                tail = self.log_path.read_text()[-2000:]
                raise RuntimeError(f"the gateway exited with {self.proc.returncode}: {tail}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=2, context=self.tls) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the gateway did not answer: {self.log_path.read_text()[-2000:]}")
            time.sleep(0.2)

    def metrics(self) -> dict[str, float]:
        with urllib.request.urlopen(self.url + "/metrics", timeout=10, context=self.tls) as r:
            text = r.read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


async def read_messages(bootstrap: str, topic: str, expect: int, timeout: float = 60,
                        settle: float = 2.0) -> list[tuple[int, bytes, bytes]]:
    """(partition, key, value) of every message of ``topic``: waits for ``expect``, then ``settle`` s for extras."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    await consumer.start()
    out: list[tuple[int, bytes, bytes]] = []
    try:
        partitions = consumer.partitions_for_topic(topic)
        if partitions is None:  # not in the metadata yet
            await consumer._client.force_metadata_update()  # noqa: SLF001
            partitions = consumer.partitions_for_topic(topic) or set()
        parts = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        out = [(r.partition, r.key, r.value) for r in await drain(consumer, expect, timeout, settle)]
    finally:
        await consumer.stop()
    return out


def curl(url: str, *args: str, data: bytes | None = None, timeout: float = 60) -> tuple[int, str, dict[str, str]]:
    """(status, body, headers) of one request made by curl."""
    cmd = ["curl", "-sS", "-D", "-", "-m", str(timeout), *args, url]
    if data is not None:
        cmd[1:1] = ["--data-binary", "@-"]
    result = subprocess.run(cmd, input=data, capture_output=True, timeout=timeout + 10)
    assert result.returncode == 0, result.stderr.decode()
    head, _, body = result.stdout.partition(b"\r\n\r\n")
    while head.startswith(b"HTTP/1.1 100"):
        head, _, body = body.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, body.decode(), headers


def mosquitto_pub(topic: str, lines: list[bytes], *extra: str, qos: int = 1) -> None:
    """Publish each line as one message (``mosquitto_pub -l``); returns once the broker acknowledged them."""
    result = subprocess.run(["mosquitto_pub", "-p", str(mqtt_port()), "-q", str(qos), "-t", topic, "-l", *extra],
                            input=b"\n".join(lines) + b"\n", capture_output=True, timeout=120)
    assert result.returncode == 0, result.stderr.decode()


