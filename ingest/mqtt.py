"""The gateway's MQTT side: a persistent QoS 1 session whose PUBACKs are sent only after Kafka acknowledged.

aiomqtt (on paho-mqtt) with manual acknowledgement: paho answers a QoS 1 PUBLISH only when told to, so a
message is acknowledged to the broker after its record is in Kafka, in the order the messages arrived
(MQTT's rule). A gateway killed before that leaves the message unacknowledged in its session, and the
broker delivers it again on the next connection. MQTT 5: the session outlives the connection
(session expiry), the broker sends at most ``queue`` unacknowledged messages at once (receive maximum:
the bounded queue; :class:`MqttIngest` warns when a broker sends more), and ``$share/<group>/<filter>``
splits one topic between several gateways.
A message that cannot become a position (not JSON, no track id, retained) is counted and acknowledged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from collections import deque
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlparse

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from geoiot.convert import message
from ingest.parse import Reject, mqtt_record

log = logging.getLogger("ingest")

SESSION_EXPIRY_S = 7 * 86400  # a gateway away this long loses the messages queued for it
RECONNECT_S = 2.0
RETRY_S = 1.0


@dataclass
class _Entry:
    mid: int
    qos: int
    arrived: float
    done: bool = False


def subscription(filter_: str, share_group: str) -> str:
    return f"$share/{share_group}/{filter_}" if share_group else filter_


def client_for(url: str, client_id: str, queue: int, manual_ack: bool = True) -> aiomqtt.Client:
    """A persistent-session MQTT 5 client of the broker at ``url`` (credentials and mqtts:// from the URL);
    with ``manual_ack`` it PUBACKs a message only when told to (:meth:`MqttIngest._consume`)."""
    parsed = urlparse(url)
    properties = Properties(PacketTypes.CONNECT)
    properties.SessionExpiryInterval = SESSION_EXPIRY_S
    properties.ReceiveMaximum = queue
    tls = ssl.create_default_context() if parsed.scheme == "mqtts" else None
    client = aiomqtt.Client(
        parsed.hostname or "127.0.0.1", parsed.port or (8883 if tls else 1883),
        username=unquote(parsed.username) if parsed.username else None,
        password=unquote(parsed.password) if parsed.password else None,
        identifier=client_id, protocol=aiomqtt.ProtocolVersion.V5, clean_start=False, properties=properties,
        # aiomqtt drops what does not fit its queue, and a dropped QoS 1 message is never acknowledged (the
        # session stalls once the receive maximum is used up by such), so its queue is not capped: the receive
        # maximum bounds it (Mosquitto 2.0 was seen to exceed it when it delivers a session's backlog)
        tls_context=tls, max_queued_incoming_messages=0, keepalive=30)
    # aiomqtt has no option for it yet (empicano/aiomqtt#345): paho's own manual acknowledgement
    client._client.manual_ack_set(manual_ack)  # noqa: SLF001
    return client


class MqttIngest:
    """Reads the subscription into the gateway until stopped; reconnects after a broker outage."""

    def __init__(self, gateway: Any, url: str, filter_: str, client_id: str, share_group: str, queue: int) -> None:
        self.gateway, self.url, self.filter, self.client_id = gateway, url, filter_, client_id
        self.share_group, self.queue = share_group, queue
        self.metrics = gateway.metrics
        self.connected = False

    async def run(self) -> None:
        while True:
            try:
                client = client_for(self.url, self.client_id, self.queue)
                async with client:
                    await client.subscribe(subscription(self.filter, self.share_group), qos=1)
                    self.connected = True
                    self.metrics.mqtt_connected.set(1)
                    log.info(json.dumps({"event": "mqtt_subscribed", "url": _safe(self.url), "topic": self.filter,
                                         "share_group": self.share_group or None, "client_id": self.client_id}))
                    await self._consume(client)
            except aiomqtt.MqttError as exc:
                self.gateway.quiet.warning("mqtt", "MQTT broker %s: %s; reconnecting in %gs", _safe(self.url), exc,
                                           RECONNECT_S)
            finally:
                self.connected = False
                self.metrics.mqtt_connected.set(0)
            await asyncio.sleep(RECONNECT_S)

    async def _consume(self, client: aiomqtt.Client) -> None:
        pending: deque[_Entry] = deque()
        paho = client._client  # noqa: SLF001
        gateway = self.gateway
        metrics = self.metrics
        loop = asyncio.get_running_loop()
        accepted = metrics.accepted.labels("mqtt")
        accepted_messages = metrics.mqtt_messages.labels("accepted")
        produce_seconds = metrics.produce.labels("mqtt")

        def drain() -> None:  # PUBACKs in arrival order, each once its record is acknowledged by Kafka
            now = time.monotonic()
            while pending and pending[0].done:
                entry = pending.popleft()
                if entry.qos:
                    paho.ack(entry.mid, entry.qos)
                metrics.puback_delay.observe(now - entry.arrived)

        def produce(entry: _Entry, key: bytes, value: bytes) -> None:
            """Into Kafka, again and again until acknowledged (the broker keeps the message meanwhile)."""
            started = time.monotonic()

            def settled(future: asyncio.Future) -> None:
                if future.cancelled() or future.exception() is not None:
                    gateway.quiet.warning("mqtt-produce", "Kafka did not take an MQTT position (%s); retrying",
                                          "cancelled" if future.cancelled() else future.exception())
                    loop.call_later(RETRY_S, produce, entry, key, value)
                    return
                produce_seconds.observe(time.monotonic() - started)
                accepted.inc()
                accepted_messages.inc()
                entry.done = True
                drain()

            gateway.producer.append(key, value).add_done_callback(settled)

        async for msg in client.messages:
            entry = _Entry(msg.mid, msg.qos, time.monotonic())
            pending.append(entry)
            if len(pending) > self.queue:
                gateway.quiet.warning("mqtt-over", "the broker sent %d messages not yet acknowledged, above the "
                                      "receive maximum %d (MQTT_QUEUE)", len(pending), self.queue)
            payload = msg.payload if isinstance(msg.payload, (bytes, bytearray)) else str(msg.payload).encode()
            try:
                out = mqtt_record(gateway.preset, gateway.converter, self.filter, str(msg.topic), bytes(payload),
                                  bool(msg.retain))
                if not isinstance(out, Reject):
                    key, value = message(gateway.preset, out)
                    if len(key) + len(value) > gateway.producer.max_message:
                        out = Reject(0, f"over {gateway.producer.max_message} bytes as a Kafka message", "size")
            except Exception as exc:  # noqa: BLE001 - no single message may stop the subscription
                log.exception("MQTT message on %s", str(msg.topic)[:200])
                out = Reject(0, f"cannot be read: {type(exc).__name__}", "invalid")
            if isinstance(out, Reject):
                metrics.mqtt_messages.labels("rejected").inc()
                gateway.count_rejects([out], "mqtt")
                gateway.quiet.log(logging.INFO, "mqtt-reject", json.dumps(
                    {"event": "rejected", "source": "mqtt", "topic": str(msg.topic)[:200], "reason": out.reason}))
                entry.done = True
                drain()
                continue
            produce(entry, key, value)


def _safe(url: str) -> str:
    """The URL without its password, for logs."""
    parsed = urlparse(url)
    if parsed.password:
        return url.replace(f":{parsed.password}@", ":***@")
    return url
