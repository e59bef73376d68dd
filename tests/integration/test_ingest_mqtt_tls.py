"""The gateway's MQTT over TLS against a real Mosquitto whose certificates a private CA signed (made with openssl):
MQTT_CA_FILE verifies the broker, hostname included; the client certificate and the URL's password go over TLS;
a broker that does not verify is a logged, rate-limited warning and retries, never a crash; bad TLS files are a
one-line start error."""

from __future__ import annotations

import asyncio
import getpass
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest
from test_ingest_gateway import TOKEN_ALL, expected, gateway_env, pos

from testkit.ingest import GatewayProcess, curl, free_port, read_messages

pytestmark = pytest.mark.integration

USER, PASSWORD = "gateway", "tls p@ss:word"
CERTIFICATE_ERROR = "its TLS certificate does not verify"


@pytest.fixture
def tokens_file(tmp_path: Path) -> Path:
    path = tmp_path / "tokens"
    path.write_text(f"{TOKEN_ALL} ingest\n")
    return path


def openssl(*args: str) -> None:
    result = subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def make_ca(folder: Path, name: str) -> tuple[Path, Path]:
    """A CA certificate and its key (EC P-256: instant to make)."""
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1",
            "-keyout", str(key), "-out", str(cert), "-subj", f"/CN={name}",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    return cert, key


def issue(folder: Path, ca: tuple[Path, Path], name: str, usage: str, alt_names: str = "") -> tuple[Path, Path]:
    """A leaf certificate for ``usage`` (serverAuth, clientAuth) and its key, signed by ``ca``."""
    cert, key, csr, ext = (folder / f"{name}.pem", folder / f"{name}.key", folder / f"{name}.csr",
                           folder / f"{name}.ext")
    openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}")
    ext.write_text("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                   f"extendedKeyUsage={usage}\nauthorityKeyIdentifier=keyid\nsubjectKeyIdentifier=hash\n"
                   + (f"subjectAltName={alt_names}\n" if alt_names else ""))
    openssl("x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]), "-CAcreateserial",
            "-days", "1", "-out", str(cert), "-extfile", str(ext))
    return cert, key


def tls_pub(port: int, ca: Path, client: tuple[Path, Path], topic: str, lines: list[bytes], *extra: str) -> int:
    """mosquitto_pub over TLS to localhost (its hostname check on), QoS 1; its exit code."""
    return subprocess.run(["mosquitto_pub", "-h", "localhost", "-p", str(port), "--cafile", str(ca),
                           "--cert", str(client[0]), "--key", str(client[1]), "-u", USER, "-P", PASSWORD,
                           "-q", "1", "-t", topic, *extra],
                          input=b"\n".join(lines) + b"\n", capture_output=True, timeout=30).returncode


async def wait_for(what: str, ok, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.2)


async def test_mqtts_with_a_private_ca(stack, new_topic, tokens_file, output_dir, tmp_path) -> None:
    """A Mosquitto with two TLS listeners (certificates of a private CA; client certificates and passwords
    required): the gateway with MQTT_CA_FILE and a client certificate takes QoS 1 messages into Kafka exactly once;
    one with the system's CAs, and one with the right CA on a listener whose certificate names another host, are
    refused by their own TLS check: each logs it once per period while retrying, and serves /healthz."""
    topic = await new_topic("ingest-mqtts", partitions=3)
    dlq = await new_topic("ingest-mqtts-dlq", partitions=1)
    ca = make_ca(tmp_path, "private-ca")
    server = issue(tmp_path, ca, "broker", "serverAuth", "IP:127.0.0.1,DNS:localhost")
    elsewhere = issue(tmp_path, ca, "elsewhere", "serverAuth", "DNS:elsewhere.invalid")
    client = issue(tmp_path, ca, "gateway", "clientAuth")
    passwords = tmp_path / "passwords"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(passwords), USER, PASSWORD], check=True, timeout=30)
    port, other_host_port = free_port(), free_port()
    tls = f"cafile {ca[0]}\nrequire_certificate true\n"
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"per_listener_settings false\nallow_anonymous false\npassword_file {passwords}\n"
                    f"persistence false\nuser {getpass.getuser()}\n"
                    f"listener {port} 127.0.0.1\n{tls}certfile {server[0]}\nkeyfile {server[1]}\n"
                    f"listener {other_host_port} 127.0.0.1\n{tls}certfile {elsewhere[0]}\nkeyfile {elsewhere[1]}\n")
    broker_log = output_dir / f"{topic}-mosquitto.log"
    broker = subprocess.Popen(["/usr/sbin/mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL,
                              stderr=open(broker_log, "w"))
    def attempts() -> int:
        return broker_log.read_text().count(f"on port {other_host_port}.")

    url = f"mqtts://{USER}:tls%20p%40ss%3Aword@127.0.0.1"
    base = dict(MQTT_TOPIC=f"{topic}/+/position", IOT_DLQ_TOPIC=dlq, MQTT_TLS_CERT=str(client[0]),
                MQTT_TLS_KEY=str(client[1]))

    def gateway(name: str, **env: str) -> GatewayProcess:
        return GatewayProcess(gateway_env(stack, topic, tokens_file, MQTT_CLIENT_ID=f"{topic}-{name}", **base, **env),
                              output_dir / f"{topic}-{name}.log")

    right = gateway("right", MQTT_URL=f"{url}:{port}", MQTT_CA_FILE=str(ca[0]))
    system_cas = gateway("system-cas", MQTT_URL=f"{url}:{port}")
    other_host = gateway("other-host", MQTT_URL=f"{url}:{other_host_port}", MQTT_CA_FILE=str(ca[0]))
    gateways = (right, system_cas, other_host)
    try:
        await wait_for("the TLS broker did not start", lambda: tls_pub(port, ca[0], client, "x", [], "-n") == 0)
        for g in gateways:
            g.start()
        await wait_for(right.log_path.read_text()[-2000:],
                       lambda: right.metrics().get("geoiot_ingest_mqtt_connected") == 1)
        records = [pos(f"tls-{i % 3}", i) for i in range(30)]
        for track in sorted({r["taxiId"] for r in records}):
            assert tls_pub(port, ca[0], client, f"{topic}/{track}/position",
                           [orjson.dumps({k: v for k, v in r.items() if k != "taxiId"})
                            for r in records if r["taxiId"] == track], "-l") == 0
        got = await read_messages(stack.kafka_bootstrap, topic, len(records), settle=2)
        assert Counter((k, v) for _, k, v in got) == expected(records)  # once: the refused gateways took none
        assert right.metrics().get('geoiot_ingest_accepted_total{source="mqtt"}') == len(records)
        # only the other-host gateway connects to its listener: the broker counts its attempts (backoff 1 s, 2 s...)
        await wait_for("the other-host gateway did not retry", lambda: attempts() >= 2)
        unknown_ca = ("self-signed certificate in certificate chain", "unable to get local issuer certificate")
        for g, why in ((system_cas, unknown_ca), (other_host, ("mismatch",))):
            text = g.log_path.read_text()
            assert g.proc.poll() is None and g.metrics().get("geoiot_ingest_mqtt_connected") == 0, text[-2000:]
            assert curl(g.url + "/healthz")[0] == 200
            lines = [line for line in text.splitlines() if CERTIFICATE_ERROR in line]
            assert lines and any(w in lines[0] for w in why) and "Traceback" not in text, text[-2000:]
            assert PASSWORD not in text and "tls%20p%40ss" not in text  # the URL is logged without its password
            if g is other_host:  # one line per period (10 s), not one per attempt
                assert len(lines) < attempts(), (lines, attempts())
    finally:
        for g in gateways:
            g.stop()
        broker.terminate()
        broker.wait(10)


def test_bad_tls_files_are_a_one_line_start_error(tmp_path) -> None:
    """A CA file that is missing or not PEM, half a client certificate, or TLS files for a plain mqtt:// broker:
    exit 2 with one line naming the setting, before anything connects."""
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    ca = make_ca(tmp_path, "ca")
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{TOKEN_ALL} ingest\n")
    base = {"KAFKA_BOOTSTRAP": "127.0.0.1:1", "IOT_TOKENS_FILE": str(tokens), "MQTT_URL": "mqtts://127.0.0.1:1",
            "MQTT_CA_FILE": "", "MQTT_TLS_CERT": "", "MQTT_TLS_KEY": ""}
    cases = [
        ({"MQTT_CA_FILE": str(tmp_path / "missing.pem")}, "MQTT_CA_FILE"),
        ({"MQTT_CA_FILE": str(garbage)}, "MQTT_CA_FILE"),
        ({"MQTT_CA_FILE": str(ca[0]), "MQTT_TLS_CERT": str(ca[0])}, "MQTT_TLS_KEY"),
        ({"MQTT_TLS_CERT": str(garbage), "MQTT_TLS_KEY": str(garbage)}, "client certificate"),
        ({"MQTT_URL": "mqtt://127.0.0.1:1", "MQTT_CA_FILE": str(ca[0])}, "mqtts://"),
    ]
    for env, says in cases:
        result = subprocess.run([sys.executable, "-m", "ingest"], capture_output=True, text=True, timeout=60,
                                env=GatewayProcess({**base, **env}, tmp_path / "x").env)
        assert result.returncode == 2 and result.stderr.count("\n") == 1 and says in result.stderr, (env, result.stderr)
