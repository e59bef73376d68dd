"""The gateway's MQTT side: a persistent QoS 1 session whose PUBACKs are sent only after Kafka acknowledged.

A message is acknowledged to the broker after its record is in Kafka, in the order the messages arrived
(MQTT's rule); the PUBACKs that one Kafka acknowledgement releases leave in one write. A gateway killed
before that leaves the message unacknowledged in its session, and the broker delivers it again on the
next connection. MQTT 5: the session outlives the connection (session expiry), the broker sends at most
``queue`` unacknowledged messages at once (receive maximum: the bounded queue; reading pauses while a
broker sends more), and ``$share/<group>/<filter>`` splits one topic between several gateways.
A message that cannot become a position (not JSON, no track id, retained, too large) is counted and goes
to the dead-letter topic with its reason (``geoiot.deadletter``: ``topic`` is the MQTT topic, ``partition``
and ``offset`` are -1); it is acknowledged once the dead letter is in Kafka.

The client is :mod:`ingest.mqtt5`, ours: paho-mqtt's per-message cost capped the gateway far below the
broker's rate (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from collections import deque
from typing import Any
from urllib.parse import unquote, urlparse

from geoiot.convert import message
from geoiot.deadletter import dead_letter
from ingest import mqtt5
from ingest.parse import Reject, mqtt_record
from ingest.producer import AckingProducer

log = logging.getLogger("ingest")

SESSION_EXPIRY_S = 7 * 86400  # a gateway away this long loses the messages queued for it
KEEPALIVE_S = 30
RECONNECT_S = 1.0  # then doubling up to RECONNECT_MAX_S while the broker stays away
RECONNECT_MAX_S = 30.0
RETRY_S = 1.0
DEAD_LETTER_KEY_BYTES = 200


class _Entry:
    """One received message until its PUBACK."""

    __slots__ = ("packet_id", "arrived", "done", "key", "value", "producer")

    def __init__(self, packet_id: int, arrived: float) -> None:
        self.packet_id, self.arrived, self.done = packet_id, arrived, False


def subscription(filter_: str, share_group: str) -> str:
    return f"$share/{share_group}/{filter_}" if share_group else filter_


def broker_of(url: str, tls: ssl.SSLContext | None = None) -> mqtt5.Broker:
    """Host, port, credentials and TLS of an MQTT_URL; ``tls`` verifies an mqtts:// broker (default: the
    system's CAs), a mqtt:// one has none."""
    parsed = urlparse(url)
    if parsed.scheme != "mqtts":
        tls = None
    elif tls is None:
        tls = ssl.create_default_context()
    return mqtt5.Broker(parsed.hostname or "127.0.0.1", parsed.port or (8883 if tls else 1883),
                        unquote(parsed.username) if parsed.username else None,
                        unquote(parsed.password) if parsed.password else None, tls)


class _Session:
    """One connection's messages: into Kafka (or the dead-letter topic), PUBACKed in arrival order."""

    def __init__(self, ingest: MqttIngest) -> None:
        self.ingest = ingest
        self.gateway = gateway = ingest.gateway
        self.protocol: mqtt5.Subscriber | None = None
        self.pending: deque[_Entry] = deque()
        self.waiting: dict[asyncio.Future, list[_Entry]] = {}
        metrics = gateway.metrics
        self.accepted = metrics.accepted.labels("mqtt")
        self.accepted_messages = metrics.mqtt_messages.labels("accepted")
        self.rejected_messages = metrics.mqtt_messages.labels("rejected")
        self.produce_seconds = metrics.produce.labels("mqtt")
        self.puback_delay = metrics.puback_delay
        self.loop = asyncio.get_running_loop()

    def subscriber(self) -> mqtt5.Subscriber:
        self.protocol = mqtt5.Subscriber(self.on_publish, self.ingest.queue)
        return self.protocol

    def on_publish(self, msg: mqtt5.Publish) -> None:
        entry = _Entry(msg.packet_id, time.monotonic())
        self.pending.append(entry)
        gateway = self.gateway
        try:
            out = mqtt_record(gateway.preset, gateway.converter, self.ingest.filter, msg.topic, msg.payload,
                              msg.retain)
            if not isinstance(out, Reject):
                key, value = message(gateway.preset, out)
                if len(key) + len(value) > gateway.producer.max_message:
                    out = Reject(0, f"over {gateway.producer.max_message} bytes as a Kafka message", "size")
        except Exception as exc:  # noqa: BLE001 - no single message may stop the subscription
            log.exception("MQTT message on %s", msg.topic[:200])
            out = Reject(0, f"cannot be read: {type(exc).__name__}", "invalid")
        if isinstance(out, Reject):
            self.reject(entry, msg, out)
            return
        entry.key, entry.value, entry.producer = key, value, gateway.producer
        self.produce(entry)

    def reject(self, entry: _Entry, msg: mqtt5.Publish, out: Reject) -> None:
        self.rejected_messages.inc()
        self.gateway.count_rejects([out], "mqtt")
        self.gateway.quiet.log(logging.INFO, "mqtt-reject", json.dumps(
            {"event": "rejected", "source": "mqtt", "topic": msg.topic[:200], "reason": out.reason}))
        entry.key = msg.topic.encode()[:DEAD_LETTER_KEY_BYTES]
        entry.value = dead_letter(msg.payload, out.reason, msg.topic, -1, -1)
        entry.producer = self.ingest.dead_letters
        self.produce(entry)

    def produce(self, entry: _Entry) -> None:
        """Into Kafka; the entries of one Kafka batch share its future and one callback."""
        future = entry.producer.append(entry.key, entry.value)
        entries = self.waiting.get(future)
        if entries is None:
            self.waiting[future] = [entry]
            future.add_done_callback(self.settled)
        else:
            entries.append(entry)

    def retry(self, entry: _Entry) -> None:
        """Produce again, unless the connection is gone: the broker then sends the message again itself."""
        if self.protocol is not None and self.protocol.closed.done():
            return
        self.produce(entry)

    def settled(self, future: asyncio.Future) -> None:
        entries = self.waiting.pop(future)
        if future.cancelled() or future.exception() is not None:
            self.gateway.quiet.warning("mqtt-produce", "Kafka did not take %d MQTT messages (%s); retrying",
                                       len(entries), "cancelled" if future.cancelled() else future.exception())
            for entry in entries:
                self.loop.call_later(RETRY_S, self.retry, entry)
            return
        positions = 0
        for entry in entries:
            entry.done = True
            if entry.producer is self.gateway.producer:
                positions += 1
            entry.key = entry.value = entry.producer = None
        if positions:
            self.accepted.inc(positions)
            self.accepted_messages.inc(positions)
        self.produce_seconds.observe(time.monotonic() - entries[0].arrived)
        self.drain()

    def drain(self) -> None:
        """PUBACK, in arrival order, every message up to the first one Kafka has not acknowledged yet."""
        pending = self.pending
        ids = []
        now = time.monotonic()
        observe = self.puback_delay.observe
        while pending and pending[0].done:
            entry = pending.popleft()
            if entry.packet_id:
                ids.append(entry.packet_id)
            observe(now - entry.arrived)
        if ids and self.protocol is not None:
            self.protocol.ack(ids)


class MqttIngest:
    """Reads the subscription into the gateway until stopped; reconnects (with backoff) after a broker outage."""

    def __init__(self, gateway: Any, url: str, filter_: str, client_id: str, share_group: str, queue: int,
                 dead_letters: AckingProducer, tls: ssl.SSLContext | None = None) -> None:
        self.gateway, self.url, self.filter, self.client_id = gateway, url, filter_, client_id
        self.tls = tls
        self.share_group, self.queue, self.dead_letters = share_group, queue, dead_letters
        self.metrics = gateway.metrics
        self.connected = False

    async def run(self) -> None:
        broker = broker_of(self.url, self.tls)
        delay = RECONNECT_S
        while True:
            session = _Session(self)
            try:
                protocol, present = await mqtt5.connect(
                    broker, self.client_id, subscription(self.filter, self.share_group), session.subscriber,
                    receive_maximum=self.queue, session_expiry=SESSION_EXPIRY_S, keepalive=KEEPALIVE_S)
                self.connected = True
                self.metrics.mqtt_connected.set(1)
                delay = RECONNECT_S
                log.info(json.dumps({"event": "mqtt_subscribed", "url": _safe(self.url), "topic": self.filter,
                                     "share_group": self.share_group or None, "client_id": self.client_id,
                                     "session_present": present}))
                pinger = asyncio.create_task(mqtt5.keep_alive(protocol, KEEPALIVE_S))
                try:
                    await asyncio.shield(protocol.closed)
                except asyncio.CancelledError:
                    protocol.send(mqtt5.DISCONNECT_NORMAL)  # the session stays (its expiry): a clean goodbye
                    if protocol.transport is not None:
                        protocol.transport.close()
                    raise
                finally:
                    pinger.cancel()
            except (OSError, asyncio.TimeoutError) as exc:  # ConnectionError, MqttProtocolError, SSLError included
                self.gateway.quiet.warning("mqtt", "MQTT broker %s: %s; reconnecting in %gs", _safe(self.url),
                                           _why(exc), delay)
            finally:
                self.connected = False
                self.metrics.mqtt_connected.set(0)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_S)


def _why(exc: BaseException) -> str:
    """A failed connection in words; a certificate that does not verify says which setting decides."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        why = str(exc.verify_message).rstrip(".")
        return (f"its TLS certificate does not verify ({why}; MQTT_CA_FILE names the CA that signed it, and the "
                "certificate must name the host of MQTT_URL)")
    return str(exc) or type(exc).__name__


def _safe(url: str) -> str:
    """The URL without its password, for logs."""
    parsed = urlparse(url)
    if parsed.password:
        return url.replace(f":{parsed.password}@", ":***@")
    return url
