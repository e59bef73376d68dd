"""The ingest gateway against the real Kafka and Mosquitto, with curl, mosquitto_pub and mosquitto_sub as clients."""

from __future__ import annotations

import asyncio
import getpass
import gzip
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest

from geoiot import documents
from geoiot.convert import FastConverter, message
from geoiot.deadletter import original_bytes
from geoiot.partitioning import kafka_partition
from geoiot.schema import load_preset
from testkit.worker import Worker, all_docs, cleanup_topics, wait_count
from testkit.ingest import GatewayProcess, curl, ensure_mosquitto, mosquitto_pub, mqtt_port, read_messages

pytestmark = pytest.mark.integration

TAXI = load_preset("taxi")
TOKEN_A = "fleet-a-token-0123456789"
TOKEN_ALL = "all-tracks-token-0123456789"
TOKEN_FENCES = "fences-only-token-0123456789"


@pytest.fixture(scope="session")
def mosquitto(stack) -> str:
    for tool in ("mosquitto_pub", "mosquitto_sub", "curl"):
        assert subprocess.run(["which", tool], capture_output=True).returncode == 0, \
            f"{tool} missing: make test installs Debian's mosquitto-clients and curl"
    return ensure_mosquitto()


@pytest.fixture
def tokens_file(tmp_path: Path) -> Path:
    path = tmp_path / "tokens"
    path.write_text(f"{TOKEN_A} ingest fleet-a-\n{TOKEN_ALL} ingest\n{TOKEN_FENCES} fences\n")
    return path


def gateway_env(stack, topic: str, tokens_file: Path, **extra: str) -> dict[str, str]:
    return {"KAFKA_BOOTSTRAP": stack.kafka_bootstrap, "IOT_TOPIC": topic, "IOT_SCHEMA": "taxi",
            "IOT_TOKENS_FILE": str(tokens_file), "MQTT_URL": "", **extra}


def now_ms() -> int:
    return int(time.time() * 1000)


def pos(track: str, i: int, **extra) -> dict:
    return {"taxiId": track, "observationTime": now_ms() - 60_000 + i, "longitude": -73.9 + i * 1e-5,
            "latitude": 40.7, **extra}


def expected(records: list[dict]) -> Counter:
    converter = FastConverter(TAXI)
    return Counter(message(TAXI, converter.convert(r)) for r in records)


def bearer(token: str) -> list[str]:
    return ["-H", f"Authorization: Bearer {token}"]


async def test_exact_accounting_over_http_and_mqtt(stack, mosquitto, new_topic, tokens_file, output_dir, es, new_index,
                                                   python_env, kafka_admin) -> None:
    topic = await new_topic("ingest-exact", partitions=3)
    env = gateway_env(stack, topic, tokens_file, MQTT_URL=mosquitto, MQTT_TOPIC=f"{topic}/+/position",
                      IOT_DLQ_TOPIC=await new_topic("ingest-dlq", partitions=1),
                      MQTT_CLIENT_ID=f"{topic}-gw")
    gateway = GatewayProcess(env, output_dir / f"{topic}.log").start()
    try:
        valid: list[dict] = []
        sent_rejects = 0
        answers = []
        for batch in range(3):
            lines = []
            for i in range(100):
                if i % 5 == 4:  # one row in five is bad, each a different way
                    bad = [b"{not json", orjson.dumps(pos("fleet-a-x", i, latitude=95.0)), b"[1]",
                           orjson.dumps({"taxiId": "fleet-a-y", "observationTime": "yesterday-ish",
                                         "longitude": 1, "latitude": 1}),
                           orjson.dumps(pos("fleet-a-z", i, observationTime=now_ms() + 40 * 86_400_000))][i // 5 % 5]
                    lines.append(bad)
                    sent_rejects += 1
                else:
                    record = pos(f"fleet-a-{i % 7}", batch * 1000 + i, passengerCount=i)
                    valid.append(record)
                    lines.append(orjson.dumps(record))
            body = b"\n".join(lines)
            args = [*bearer(TOKEN_A), "-H", "Content-Type: application/x-ndjson"]
            if batch == 1:
                body = gzip.compress(body)
                args += ["-H", "Content-Encoding: gzip"]
            status, text, _ = curl(gateway.url + "/v1/positions", *args, data=body)
            assert status == 202, text
            answers.append(orjson.loads(text))
        assert sum(a["accepted"] for a in answers) == len(valid) == 240
        assert sum(a["rejected"] for a in answers) == sent_rejects == 60
        assert all(len(a["rejects"]) == a["rejected"] and all(r["reason"] for r in a["rejects"]) for a in answers)

        mqtt_valid = [pos(f"mq-{i % 4}", 5000 + i) for i in range(80)]
        for track in sorted({r["taxiId"] for r in mqtt_valid}):
            payloads = [orjson.dumps({k: v for k, v in r.items() if k != "taxiId"})
                        for r in mqtt_valid if r["taxiId"] == track]
            mosquitto_pub(f"{topic}/{track}/position", payloads)
        mosquitto_pub(f"{topic}/mq-bad/position", [b"not json", b"42", b'{"observationTime": "x"}'])

        want = expected(valid) + expected(mqtt_valid)
        got = await read_messages(stack.kafka_bootstrap, topic, sum(want.values()), settle=3)
        assert Counter((k, v) for _, k, v in got) == want  # each valid position exactly once, nothing else
        assert all(p == kafka_partition(k, 3) for p, k, _ in got)
        deadline = time.monotonic() + 30
        while True:
            m = gateway.metrics()
            if m.get('geoiot_ingest_mqtt_messages_total{outcome="rejected"}') == 3 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        assert m['geoiot_ingest_accepted_total{source="http"}'] == 240
        assert m['geoiot_ingest_accepted_total{source="mqtt"}'] == 80
        assert m['geoiot_ingest_mqtt_messages_total{outcome="rejected"}'] == 3
        http_rejects = [v for k, v in m.items()
                        if k.startswith("geoiot_ingest_rejected_total{") and 'source="http"' in k]
        assert sum(http_rejects) == 60
        assert m["geoiot_ingest_puback_delay_seconds_count"] == 83

        # and Elasticsearch, through the agents worker, holds exactly the same positions
        index = new_index("ingest")
        worker = Worker({**python_env, "IOT_TOPIC": topic, "IOT_APP_ID": f"{topic}-app", "IOT_INDEX": index,
                         "IOT_DLQ_TOPIC": f"{topic}-dlq", "IOT_ALERTS_TOPIC": f"{topic}-alerts",
                         "IOT_INDEX_REFRESH": "1s", "IOT_BULK_WITHIN": "0.2"}, output_dir / f"{topic}-worker.log")
        try:
            worker.start()
            total = sum(want.values())
            assert await wait_count(es, index, total, timeout=180) == total
            ids = {d["_id"] for d in await all_docs(es, index)}
            assert ids == {documents.doc_id(r["taxiId"], r["observationTime"]) for r in valid + mqtt_valid}
            assert worker.metrics()["geoiot_agent_dead_lettered_total"] == 0
        finally:
            worker.stop()
            await cleanup_topics(kafka_admin, [f"{topic}-"])
    finally:
        gateway.stop()


async def test_osmand_protocol_with_curl(stack, new_topic, tokens_file, output_dir) -> None:
    """A phone's report (query, form, Traccar Client's JSON) lands in the gateway's preset."""
    topic = await new_topic("ingest-osmand", partitions=3)
    gateway = GatewayProcess(gateway_env(stack, topic, tokens_file), output_dir / f"{topic}.log").start()
    try:
        t = int(time.time())
        q = f"?id=fleet-a-phone&timestamp={t}&lat=40.7&lon=-73.9&speed=3&bearing=90&batt=50"
        assert curl(gateway.url + "/" + q, *bearer(TOKEN_A))[0] == 200
        form = f"id=fleet-a-phone&timestamp={t + 1}&lat=40.71&lon=-73.9"
        assert curl(gateway.url + "/?token=" + TOKEN_A, "--data", form)[0] == 200
        traccar = {"device_id": "fleet-a-phone", "location": {
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t + 2)),
            "coords": {"latitude": 40.72, "longitude": -73.9, "speed": 1, "heading": 10}, "battery": {"level": 0.5}}}
        status, _, _ = curl(gateway.url + "/", *bearer(TOKEN_A), "-H", "Content-Type: application/json",
                            data=orjson.dumps(traccar))
        assert status == 200
        # Traccar Client's server URL may carry the token (phones send no header): the OsmAnd protocol only
        bad_json = orjson.dumps({**traccar, "location": {**traccar["location"], "coords": {"latitude": 1}}})
        assert curl(gateway.url + "/?token=wrong-token-0123456789", "-H", "Content-Type: application/json",
                    data=bad_json)[0] == 403
        assert curl(gateway.url + "/?token=" + TOKEN_A, "-H", "Content-Type: application/json",
                    data=bad_json)[0] == 400  # let in; the position itself is refused
        assert curl(gateway.url + "/v1/positions?token=" + TOKEN_A, data=orjson.dumps(pos("fleet-a-1", 1)))[0] == 401
        assert curl(gateway.url + "/" + q.replace("fleet-a-phone", "fleet-b-phone"), *bearer(TOKEN_A))[0] == 403
        status, text, _ = curl(gateway.url + "/?id=fleet-a-phone&timestamp=1&lat=NaN&lon=1", *bearer(TOKEN_A))
        assert status == 400 and "lat" in text
        got = await read_messages(stack.kafka_bootstrap, topic, 3)
        values = sorted(orjson.loads(v)["latitude"] for _, _, v in got)
        assert values == [40.7, 40.71, 40.72]
        assert {k for _, k, _ in got} == {b"fleet-a-phone"}
        assert {orjson.loads(v)["observationTime"] for _, _, v in got} == {t * 1000, (t + 1) * 1000, (t + 2) * 1000}
    finally:
        gateway.stop()


def slow_body(port: int, seconds: float) -> bytes:
    """Headers announcing 1000 bytes, then 10 of them, then silence: what the gateway answers."""
    with socket.create_connection(("127.0.0.1", port), timeout=seconds + 20) as s:
        s.sendall(b"POST /v1/positions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN_ALL.encode()
                  + b"\r\nContent-Length: 1000\r\n\r\n{\"taxiId\":")
        data = b""
        while not data.endswith(b"}") and b"\r\n\r\n" not in data or len(data) < 20:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
            if b"}" in data:
                break
        return data


async def test_hostile_input(stack, mosquitto, new_topic, tokens_file, output_dir, tmp_path) -> None:
    topic = await new_topic("ingest-hostile", partitions=3)
    filter_ = f"{topic}/+/position"
    retained_topic = f"{topic}/old-car/position"
    mosquitto_pub(retained_topic, [orjson.dumps({k: v for k, v in pos("x", 0).items() if k != "taxiId"})], "-r")
    dlq = await new_topic("ingest-hostile-dlq", partitions=1)
    env = gateway_env(stack, topic, tokens_file, INGEST_MAX_BODY="65536", INGEST_BODY_TIMEOUT="2",
                      MQTT_URL=mosquitto, MQTT_TOPIC=filter_, MQTT_CLIENT_ID=f"{topic}-gw", IOT_DLQ_TOPIC=dlq)
    gateway = GatewayProcess(env, output_dir / f"{topic}.log").start()
    url = gateway.url + "/v1/positions"
    one = orjson.dumps(pos("fleet-a-1", 1))
    try:
        status, text, headers = curl(url, data=one)
        assert status == 401 and "bearer" in orjson.loads(text)["error"].lower()
        assert headers.get("www-authenticate", "").startswith("Bearer")
        assert curl(url, *bearer("wrong-token-0123456789"), data=one)[0] == 403
        assert curl(url, *bearer(TOKEN_FENCES), data=one)[0] == 403
        status, text, _ = curl(url, *bearer(TOKEN_A), data=orjson.dumps([pos("fleet-a-1", 2), pos("fleet-b-1", 3)]))
        assert status == 403 and "fleet-b-1" in orjson.loads(text)["error"]
        big = b"\n".join(orjson.dumps(pos("fleet-a-1", i)) for i in range(1000))
        assert len(big) > 65536
        assert curl(url, *bearer(TOKEN_A), data=big)[0] == 413
        bomb = gzip.compress(b" " * 50_000_000)
        status, text, _ = curl(url, *bearer(TOKEN_A), "-H", "Content-Encoding: gzip", data=bomb)
        assert status == 413 and "decompressed" in text
        assert curl(url, *bearer(TOKEN_A), "-H", "Content-Encoding: br", data=one)[0] == 400
        deep = b'{"taxiId": "fleet-a-1", "x": ' + b"[" * 3000 + b"]" * 3000 + b"}"
        status, text, _ = curl(url, *bearer(TOKEN_A), data=deep)
        assert status == 400 and orjson.loads(text)["rejects"][0]["reason"].startswith("not valid JSON")
        nan = b'{"taxiId": "fleet-a-1", "observationTime": 1, "longitude": NaN, "latitude": 1}'
        assert curl(url, *bearer(TOKEN_A), data=nan)[0] == 400
        wrong_types = orjson.dumps({"taxiId": {"a": 1}, "observationTime": True, "longitude": "east", "latitude": []})
        status, text, _ = curl(url, *bearer(TOKEN_A), data=wrong_types)
        assert status == 400 and orjson.loads(text)["rejected"] == 1
        assert curl(url, *bearer(TOKEN_A), data=b"")[0] == 400
        answer = await asyncio.to_thread(slow_body, gateway.port, 2)
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert curl(gateway.url + "/nowhere")[0] == 404

        mosquitto_pub(f"{topic}/car1/position", [b"\x01 not json", b"[]"])
        mosquitto_pub(f"{topic}//position", [orjson.dumps({k: v for k, v in pos("x", 0).items() if k != "taxiId"})])
        mosquitto_pub(f"{topic}/car2/position", [orjson.dumps(pos("car3", 0))])  # payload says another track
        good = {k: v for k, v in pos("car9", 9).items() if k != "taxiId"}
        mosquitto_pub(f"{topic}/car9/position", [orjson.dumps(good)])
        deadline = time.monotonic() + 30
        while gateway.metrics().get('geoiot_ingest_mqtt_messages_total{outcome="accepted"}') != 1:
            assert time.monotonic() < deadline, gateway.metrics()
            await asyncio.sleep(0.2)
        m = gateway.metrics()
        assert m.get('geoiot_ingest_rejected_total{reason="retained",source="mqtt"}') == 1, m
        assert m['geoiot_ingest_rejected_total{reason="json",source="mqtt"}'] == 1
        assert m['geoiot_ingest_rejected_total{reason="not_object",source="mqtt"}'] == 1
        assert m['geoiot_ingest_rejected_total{reason="no_track",source="mqtt"}'] == 1
        assert m['geoiot_ingest_rejected_total{reason="track_mismatch",source="mqtt"}'] == 1
        assert curl(url, *bearer(TOKEN_A), data=one)[0] == 202  # still serving
        got = await read_messages(stack.kafka_bootstrap, topic, 2)
        assert sorted(k for _, k, _ in got) == [b"car9", b"fleet-a-1"]
        # nobody to answer an MQTT reject: each is a dead letter (the worker's format) with its reason
        letters = [orjson.loads(v) for _, _, v in await read_messages(stack.kafka_bootstrap, dlq, 5)]
        assert all(d["partition"] == -1 and d["offset"] == -1 for d in letters), letters
        got_letters = sorted((d["topic"], d["reason"].split(" ")[0]) for d in letters)
        assert got_letters == sorted([(retained_topic, "a"), (f"{topic}/car1/position", "not"),
                                      (f"{topic}/car1/position", "a"), (f"{topic}//position", "topic"),
                                      (f"{topic}/car2/position", "taxiId")]), letters
        assert sorted(original_bytes(d) for d in letters if d["topic"].endswith("car1/position")) == \
            [b"\x01 not json", b"[]"]
        assert gateway.proc.poll() is None
    finally:
        gateway.stop()
        subprocess.run(["mosquitto_pub", "-p", str(mqtt_port()), "-t", retained_topic, "-r", "-n"], timeout=30)


def test_refuses_to_start_without_tokens_unless_told(stack, output_dir, tmp_path) -> None:
    env = {"KAFKA_BOOTSTRAP": stack.kafka_bootstrap, "IOT_TOKENS_FILE": "", "INGEST_INSECURE": "false"}
    result = subprocess.run([sys.executable, "-m", "ingest"], env={**GatewayProcess(env, tmp_path / "x").env},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "INGEST_INSECURE" in result.stderr
    bad = tmp_path / "bad-tokens"
    bad.write_text("short ingest\n")
    result = subprocess.run([sys.executable, "-m", "ingest"],
                            env=GatewayProcess({**env, "IOT_TOKENS_FILE": str(bad)}, tmp_path / "x").env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "line 1" in result.stderr


@pytest.mark.slow
async def test_sigkill_mid_stream_loses_nothing_acknowledged(stack, mosquitto, new_topic, tokens_file,
                                                              output_dir) -> None:
    """QoS 1 publishers and retrying HTTP clients while the gateway is killed with SIGKILL and restarted."""
    topic = await new_topic("ingest-kill", partitions=3)
    env = gateway_env(stack, topic, tokens_file, MQTT_URL=mosquitto, MQTT_TOPIC=f"{topic}/+/position",
                      IOT_DLQ_TOPIC=await new_topic("ingest-dlq", partitions=1),
                      MQTT_CLIENT_ID=f"{topic}-gw")
    log = output_dir / f"{topic}.log"
    gateway = GatewayProcess(env, log).start()
    mqtt_records = [pos(f"mq-{i % 5}", i) for i in range(1500)]
    http_records = [[pos(f"http-{c}", 10_000 + c * 1000 + j * 5 + k) for k in range(5)] for c in range(4)
                    for j in range(40)]
    acknowledged: list[dict] = []
    lock = threading.Lock()

    def publisher(track: str) -> None:
        payloads = [orjson.dumps({k: v for k, v in r.items() if k != "taxiId"}) for r in mqtt_records
                    if r["taxiId"] == track]
        proc = subprocess.Popen(["mosquitto_pub", "-p", str(mqtt_port()), "-q", "1", "-t", f"{topic}/{track}/position",
                                 "-l", "-i", f"{topic}-{track}"], stdin=subprocess.PIPE)
        for p in payloads:
            proc.stdin.write(p + b"\n")
            proc.stdin.flush()
            time.sleep(0.004)
        proc.stdin.close()
        assert proc.wait(120) == 0

    def http_client(batches: list[list[dict]]) -> None:
        for batch in batches:  # curl retries on refused connections and 5xx until the gateway is back
            body = b"\n".join(orjson.dumps(r) for r in batch)
            result = subprocess.run(["curl", "-sS", "-f", "--retry", "60", "--retry-all-errors", "--retry-delay", "1",
                                     "--retry-connrefused", "-m", "20", *bearer(TOKEN_ALL), "--data-binary", "@-",
                                     gateway.url + "/v1/positions"], input=body, capture_output=True, timeout=300)
            if result.returncode == 0 and orjson.loads(result.stdout)["accepted"] == len(batch):
                with lock:
                    acknowledged.extend(batch)
            time.sleep(0.02)

    threads = [threading.Thread(target=publisher, args=(f"mq-{i}",)) for i in range(5)]
    threads += [threading.Thread(target=http_client, args=(http_records[c * 40:(c + 1) * 40],)) for c in range(4)]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 60
        while gateway.metrics().get('geoiot_ingest_accepted_total{source="mqtt"}', 0) < 300:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        gateway.kill()  # mid-stream: messages and requests in flight
        await asyncio.sleep(2)
        gateway.start()  # the same port and MQTT client id: the broker delivers the unacknowledged again
        for t in threads:
            await asyncio.to_thread(t.join, 300)
            assert not t.is_alive()
        assert len(acknowledged) == len(http_records) * 5  # curl retried until every batch was accepted
        want = expected(acknowledged) + expected(mqtt_records)
        got = await read_messages(stack.kafka_bootstrap, topic, sum(want.values()), timeout=120, settle=3)
        counts = Counter((k, v) for _, k, v in got)
        missing = set(want) - set(counts)
        assert not missing, f"{len(missing)} acknowledged positions missing, e.g. {next(iter(missing))}"
        assert set(counts) == set(want)  # duplicates (redelivered after the kill) but nothing else
        (output_dir / f"{topic}.duplicates").write_text(f"{sum(counts.values()) - len(counts)} duplicates\n")
    finally:
        gateway.stop()


def stack_cmd(*args: str) -> None:
    result = subprocess.run([str(Path(__file__).resolve().parents[2] / "infra" / "local" / "stack"), *args],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
async def test_kafka_outage_answers_503_and_never_202_for_what_kafka_lacks(stack, new_topic, tokens_file,
                                                                            output_dir) -> None:
    """Kafka stopped for 30 s under HTTP load: 503 with Retry-After meanwhile, every 202'd position in Kafka."""
    import aiohttp

    topic = await new_topic("ingest-outage", partitions=3)
    env = gateway_env(stack, topic, tokens_file, INGEST_ACK_TIMEOUT="3")
    gateway = GatewayProcess(env, output_dir / f"{topic}.log").start()
    answers: list[tuple[float, float, int, str | None, dict]] = []  # started, ended, status, Retry-After, record
    stop = asyncio.Event()
    counter = iter(range(10**9))

    async def client(session: aiohttp.ClientSession, c: int) -> None:
        while not stop.is_set():
            record = pos(f"load-{c}", next(counter))
            started = time.monotonic()
            try:
                async with session.post(gateway.url + "/v1/positions", data=orjson.dumps(record),
                                        headers={"Authorization": f"Bearer {TOKEN_ALL}"}) as r:
                    await r.read()
                    answers.append((started, time.monotonic(), r.status, r.headers.get("Retry-After"), record))
                    if r.status == 503:
                        await asyncio.sleep(0.2)
            except aiohttp.ClientError as exc:
                answers.append((started, time.monotonic(), -1, str(exc), record))
            await asyncio.sleep(0.02)

    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
            clients = [asyncio.create_task(client(session, c)) for c in range(4)]
            await asyncio.sleep(5)
            await asyncio.to_thread(stack_cmd, "down", "kafka")
            down = time.monotonic()
            await asyncio.sleep(30)
            # liveness stays 200 (a restart would not bring Kafka back), readiness says Kafka is silent
            live, ready = await asyncio.to_thread(curl, gateway.url + "/healthz"), \
                await asyncio.to_thread(curl, gateway.url + "/readyz")
            up = time.monotonic()
            await asyncio.to_thread(stack_cmd, "up", "kafka")
            deadline = time.monotonic() + 120
            while not any(s == 202 and st > up for st, _, s, _, _ in answers):
                assert time.monotonic() < deadline, "no 202 after Kafka came back"
                await asyncio.sleep(0.5)
            await asyncio.sleep(3)
            stop.set()
            await asyncio.gather(*clients)
        assert live[0] == 200 and orjson.loads(live[1])["status"] == "degraded", live
        assert ready[0] == 503 and "Kafka" in orjson.loads(ready[1])["kafka"], ready
        assert curl(gateway.url + "/readyz")[0] == 200  # Kafka is back
        statuses = Counter(s for _, _, s, _, _ in answers)
        assert set(statuses) <= {202, 503}, statuses
        assert all(ra is not None and int(ra) > 0 for _, _, s, ra, _ in answers if s == 503)
        during = [s for st, end, s, _, _ in answers if st > down and end < up]
        assert during and set(during) == {503}, Counter(during)
        accepted = [r for _, _, s, _, r in answers if s == 202]
        assert len(accepted) > 10
        want = expected(accepted)
        got = await read_messages(stack.kafka_bootstrap, topic, sum(want.values()), timeout=120, settle=5)
        present = {(k, v) for _, k, v in got}
        assert set(want) <= present, f"{len(set(want) - present)} positions answered 202 are not in Kafka"
        (output_dir / f"{topic}.answers").write_text(f"{dict(statuses)}; during the outage {Counter(during)}\n")
    finally:
        stop.set()
        gateway.stop()


async def test_shared_subscription_splits_a_topic_and_tls(stack, mosquitto, new_topic, tokens_file, output_dir,
                                                         tmp_path) -> None:
    """Two gateways of one MQTT_SHARE_GROUP take each message once between them; HTTPS with a certificate."""
    topic = await new_topic("ingest-share", partitions=3)
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    common = dict(MQTT_URL=mosquitto, MQTT_TOPIC=f"{topic}/+/position", MQTT_SHARE_GROUP=f"{topic}-group",
                  IOT_DLQ_TOPIC=await new_topic("ingest-dlq", partitions=1))
    first = GatewayProcess(gateway_env(stack, topic, tokens_file, MQTT_CLIENT_ID=f"{topic}-a", **common),
                           output_dir / f"{topic}-a.log").start()
    tls_env = gateway_env(stack, topic, tokens_file, MQTT_CLIENT_ID=f"{topic}-b", INGEST_TLS_CERT=str(cert),
                          INGEST_TLS_KEY=str(key), **common)
    second = GatewayProcess(tls_env, output_dir / f"{topic}-b.log", ssl.create_default_context(cafile=str(cert)))
    try:
        second.start()
        records = [pos(f"sh-{i % 10}", i) for i in range(400)]
        for track in sorted({r["taxiId"] for r in records}):
            mosquitto_pub(f"{topic}/{track}/position", [orjson.dumps({k: v for k, v in r.items() if k != "taxiId"})
                                                        for r in records if r["taxiId"] == track])
        over_tls = pos("over-tls", 1)
        status, text, _ = curl(second.url + "/v1/positions", "--cacert", str(cert), *bearer(TOKEN_ALL),
                               data=orjson.dumps(over_tls))
        assert status == 202, text
        want = expected(records) + expected([over_tls])
        got = await read_messages(stack.kafka_bootstrap, topic, sum(want.values()), settle=3)
        assert Counter((k, v) for _, k, v in got) == want
        key_ = 'geoiot_ingest_accepted_total{source="mqtt"}'
        a, b = first.metrics().get(key_, 0), second.metrics().get(key_, 0)
        assert a + b == 400 and a > 0 and b > 0, (a, b)
    finally:
        first.stop()
        second.stop()


async def test_mqtt_credentials_and_a_broker_restart(stack, mosquitto, new_topic, tokens_file,
                                                     output_dir, tmp_path) -> None:
    """A Mosquitto of its own with a password file: a wrong password is refused (the gateway keeps serving and
    retrying), the right one in MQTT_URL (percent-encoded) subscribes and takes QoS 1 messages; after the broker
    restarts, the gateway is connected and subscribed again."""
    topic = await new_topic("ingest-auth", partitions=3)
    dlq = await new_topic("ingest-auth-dlq", partitions=1)
    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    broker_port = port.getsockname()[1]
    port.close()
    passwords = tmp_path / "passwords"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(passwords), "gateway", "p@ss:word"], check=True, timeout=30)
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"listener {broker_port} 127.0.0.1\nallow_anonymous false\npassword_file {passwords}\n"
                    f"persistence false\nuser {getpass.getuser()}\n")
    broker = subprocess.Popen(["/usr/sbin/mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL,
                              stderr=open(output_dir / f"{topic}-mosquitto.log", "w"))
    base = dict(MQTT_TOPIC=f"{topic}/+/position", IOT_DLQ_TOPIC=dlq)
    wrong = GatewayProcess(gateway_env(stack, topic, tokens_file, MQTT_CLIENT_ID=f"{topic}-w",
                                       MQTT_URL=f"mqtt://gateway:wrong@127.0.0.1:{broker_port}", **base),
                           output_dir / f"{topic}-wrong.log")
    right = GatewayProcess(gateway_env(stack, topic, tokens_file, MQTT_CLIENT_ID=f"{topic}-r",
                                       MQTT_URL=f"mqtt://gateway:p%40ss%3Aword@127.0.0.1:{broker_port}", **base),
                           output_dir / f"{topic}-right.log")
    try:
        deadline = time.monotonic() + 30
        while not (output_dir / f"{topic}-mosquitto.log").exists() or \
                subprocess.run(["mosquitto_pub", "-p", str(broker_port), "-u", "gateway", "-P", "p@ss:word", "-t", "x",
                                "-n"], capture_output=True, timeout=10).returncode != 0:
            assert time.monotonic() < deadline, "the password broker did not start"
            time.sleep(0.2)
        wrong.start()
        right.start()
        deadline = time.monotonic() + 30
        while right.metrics().get("geoiot_ingest_mqtt_connected") != 1:
            assert time.monotonic() < deadline, right.log_path.read_text()[-2000:]
            await asyncio.sleep(0.2)
        records = [pos("auth-1", i) for i in range(20)]
        result = subprocess.run(["mosquitto_pub", "-p", str(broker_port), "-u", "gateway", "-P", "p@ss:word", "-q",
                                 "1", "-t", f"{topic}/auth-1/position", "-l"], capture_output=True, timeout=60,
                                input=b"\n".join(orjson.dumps({k: v for k, v in r.items() if k != "taxiId"})
                                                 for r in records) + b"\n")
        assert result.returncode == 0, result.stderr
        got = await read_messages(stack.kafka_bootstrap, topic, 20, settle=2)
        assert Counter((k, v) for _, k, v in got) == expected(records)
        assert wrong.metrics().get("geoiot_ingest_mqtt_connected") == 0
        assert wrong.proc.poll() is None and "refused the connection" in wrong.log_path.read_text()
        assert curl(wrong.url + "/healthz")[0] == 200
        # the broker goes away and comes back: the gateway reconnects (with backoff) and subscribes again
        broker.terminate()
        broker.wait(10)
        deadline = time.monotonic() + 30
        while right.metrics().get("geoiot_ingest_mqtt_connected") != 0:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.2)
        broker = subprocess.Popen(["/usr/sbin/mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while right.metrics().get("geoiot_ingest_mqtt_connected") != 1:
            assert time.monotonic() < deadline, right.log_path.read_text()[-2000:]
            await asyncio.sleep(0.2)
        later = [pos("auth-2", 100 + i) for i in range(10)]
        subprocess.run(["mosquitto_pub", "-p", str(broker_port), "-u", "gateway", "-P", "p@ss:word", "-q", "1", "-t",
                        f"{topic}/auth-2/position", "-l"], check=True, capture_output=True, timeout=60,
                       input=b"\n".join(orjson.dumps({k: v for k, v in r.items() if k != "taxiId"}) for r in later))
        got = await read_messages(stack.kafka_bootstrap, topic, 30, settle=2)
        assert Counter((k, v) for _, k, v in got) == expected(records + later)
    finally:
        wrong.stop()
        right.stop()
        broker.terminate()
        broker.wait(10)
