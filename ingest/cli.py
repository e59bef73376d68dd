"""``python -m ingest``: the device gateway (HTTP, the OsmAnd protocol, MQTT) in front of the source topic."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import signal
import ssl
import sys
from urllib.parse import urlparse

from aiohttp import web

from geoiot import config
from geoiot.config import Settings
from geoiot.logs import quiet_repeats
from geoiot.schema import load_preset
from geoiot.timeparse import EventTimeBounds
from geoiot.tokens import TokenFileError, Tokens
from ingest.app import Gateway, Limits, make_app
from ingest.metrics import Metrics
from ingest.mqtt import MqttIngest
from ingest.producer import AckingProducer

FLAGS = config.envs("ingest")
log = logging.getLogger("ingest")


class StartError(RuntimeError):
    """The gateway cannot start as configured; printed as one line before exiting 2."""


def tokens_of(settings: Settings) -> Tokens | None:
    """The tokens to check, or None when the gateway was told to run without them; refuses to guess."""
    if settings.iot_tokens_file:
        try:
            return Tokens.from_file(settings.iot_tokens_file)
        except TokenFileError as exc:
            raise StartError(str(exc)) from None
    if settings.ingest_insecure:
        return None
    raise StartError("no IOT_TOKENS_FILE: the gateway would accept positions from anyone; give a tokens file "
                     "or say INGEST_INSECURE=true (--insecure) on purpose")


def tls_of(settings: Settings) -> ssl.SSLContext | None:
    if not settings.ingest_tls_cert and not settings.ingest_tls_key:
        return None
    if not (settings.ingest_tls_cert and settings.ingest_tls_key):
        raise StartError("TLS needs both INGEST_TLS_CERT and INGEST_TLS_KEY")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(settings.ingest_tls_cert, settings.ingest_tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise StartError(f"cannot load the TLS certificate/key: {exc}") from None
    return context


def mqtt_tls_of(settings: Settings) -> ssl.SSLContext | None:
    """The context that verifies an mqtts:// broker (hostname included) and shows it our client certificate,
    if any; None for mqtt:// or no MQTT. TLS files given for a plain mqtt:// broker are refused: the user
    name and password would travel in clear while the settings say otherwise."""
    files = {"MQTT_CA_FILE": settings.mqtt_ca_file, "MQTT_TLS_CERT": settings.mqtt_tls_cert,
             "MQTT_TLS_KEY": settings.mqtt_tls_key}
    given = [env for env, path in files.items() if path]
    scheme = urlparse(settings.mqtt_url).scheme
    if scheme != "mqtts":
        if given and settings.mqtt_url:
            raise StartError(f"{' and '.join(given)} {'need' if len(given) > 1 else 'needs'} an mqtts:// MQTT_URL "
                             f"(it is {scheme}://)")
        return None
    if bool(settings.mqtt_tls_cert) != bool(settings.mqtt_tls_key):
        raise StartError("a client certificate needs both MQTT_TLS_CERT and MQTT_TLS_KEY")
    try:
        context = ssl.create_default_context(cafile=settings.mqtt_ca_file or None)
    except (OSError, ssl.SSLError) as exc:
        raise StartError(f"MQTT_CA_FILE={settings.mqtt_ca_file}: not a PEM CA bundle that can be read "
                         f"({_reason(exc)})") from None
    if settings.mqtt_tls_cert:
        try:
            context.load_cert_chain(settings.mqtt_tls_cert, settings.mqtt_tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise StartError(f"cannot load the MQTT client certificate/key {settings.mqtt_tls_cert}, "
                             f"{settings.mqtt_tls_key} (PEM, the key matching the certificate): {_reason(exc)}"
                             ) from None
    return context


def _reason(exc: OSError) -> str:
    """An OSError or SSLError in a few words (neither names the file)."""
    if isinstance(exc, ssl.SSLError):
        return re.sub(r"\s*\(_ssl\.c:\d+\)$", "", str(exc))
    return exc.strerror or str(exc)


async def serve(settings: Settings) -> None:
    tokens = tokens_of(settings)
    tls = tls_of(settings)
    mqtt_tls = mqtt_tls_of(settings)
    preset = load_preset(settings.iot_schema)
    metrics = Metrics()
    producer = AckingProducer(settings.kafka_bootstrap, settings.iot_topic, linger_s=settings.ingest_linger_ms / 1000)
    await producer.start(settings.iot_partitions, settings.iot_replication)
    limits = Limits(settings.ingest_max_body, settings.ingest_in_flight_bytes, settings.ingest_ack_timeout,
                    settings.ingest_body_timeout)
    gateway = Gateway(preset, EventTimeBounds.from_settings(settings), producer, tokens, limits, metrics)
    runner = web.AppRunner(make_app(gateway), auto_decompress=False, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, settings.ingest_host, settings.ingest_port, ssl_context=tls)
    await site.start()
    mqtt_task = dead_letters = None
    if settings.mqtt_url:  # MQTT rejects have nobody to answer: they go to the dead-letter topic
        dead_letters = AckingProducer(settings.kafka_bootstrap, settings.iot_dlq_topic,
                                      linger_s=settings.ingest_linger_ms / 1000)
        await dead_letters.start(settings.iot_partitions, settings.iot_replication)
        mqtt = MqttIngest(gateway, settings.mqtt_url, settings.mqtt_topic, settings.mqtt_client_id,
                          settings.mqtt_share_group, settings.mqtt_queue, dead_letters, mqtt_tls)
        mqtt_task = asyncio.create_task(mqtt.run())
    scheme = "https" if tls else "http"
    log.info(json.dumps({"event": "listening", "url": f"{scheme}://{settings.ingest_host}:{settings.ingest_port}/",
                         "topic": settings.iot_topic, "preset": preset.name, "partitions": producer.partitions,
                         "tokens": len(tokens) if tokens is not None else None, "mqtt": bool(settings.mqtt_url),
                         "pid": os.getpid()}))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        log.info(json.dumps({"event": "stopping", "acked": producer.acked}))
        if mqtt_task is not None:
            mqtt_task.cancel()
            await asyncio.gather(mqtt_task, return_exceptions=True)
        await runner.cleanup()
        await asyncio.wait_for(producer.stop(), 30)
        if dead_letters is not None:
            await asyncio.wait_for(dead_letters.stop(), 30)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ingest", description=__doc__)
    config.add_flags(parser, FLAGS)
    parser.add_argument("--log-level", default="INFO", help="Python logging level (default INFO)")
    args = parser.parse_args(argv)
    try:
        settings = config.from_args(args, component="ingest")
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    quiet_repeats()
    try:
        asyncio.run(serve(settings))
    except StartError as exc:
        print(f"python -m ingest: {exc}", file=sys.stderr)
        sys.exit(2)
    except (OSError, asyncio.TimeoutError) as exc:
        print(f"python -m ingest: cannot start: {exc or type(exc).__name__}", file=sys.stderr)
        sys.exit(1)
