"""A small MQTT 5 subscriber for the gateway: one asyncio protocol, no per-message task or object.

Only what the gateway needs: CONNECT (persistent session: clean start off, session expiry, receive
maximum, user name and password), SUBSCRIBE (QoS 1, ``$share/...`` filters too), PUBLISH received with
QoS 0 or 1, PUBACKs written when the caller says, many per write, PINGREQ keepalive and DISCONNECT.
paho-mqtt (under aiomqtt) spent most of the gateway's CPU per message in its pure-Python packet
handling and one socket write per PUBACK (docs/BENCHMARKS.md); here the bytes of many PUBLISH packets
are parsed per read and the PUBACKs of a Kafka batch leave in one write. The codec functions are pure.
"""

from __future__ import annotations

import asyncio
import ssl
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

CONNECT, CONNACK, PUBLISH, PUBACK, SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT = 1, 2, 3, 4, 8, 9, 12, 13, 14
PING = bytes((PINGREQ << 4, 0))
DISCONNECT_NORMAL = bytes((DISCONNECT << 4, 0))

_U16 = struct.Struct(">H")
MAXIMUM_PACKET = 2 * 1024 * 1024  # above a Kafka message: such a payload is still seen, and refused as too large


class MqttProtocolError(ConnectionError):
    """The broker refused us, sent what MQTT 5 does not allow, or went silent."""


def varint(n: int) -> bytes:
    """MQTT's variable byte integer."""
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


def _text(s: str | bytes) -> bytes:
    data = s.encode() if isinstance(s, str) else s
    return _U16.pack(len(data)) + data


def _packet(kind: int, flags: int, body: bytes) -> bytes:
    return bytes(((kind << 4) | flags,)) + varint(len(body)) + body


def connect_packet(client_id: str, keepalive: int, session_expiry: int, receive_maximum: int,
                   username: str | None = None, password: str | None = None,
                   maximum_packet: int = MAXIMUM_PACKET) -> bytes:
    """CONNECT of a persistent session (clean start off) with its expiry, receive maximum and the largest
    packet we take (the broker drops larger messages instead of sending them)."""
    flags = (0x80 if username is not None else 0) | (0x40 if password is not None else 0)
    props = (b"\x11" + struct.pack(">I", session_expiry) + b"\x21" + _U16.pack(receive_maximum)
             + b"\x27" + struct.pack(">I", maximum_packet))
    body = _text("MQTT") + bytes((5, flags)) + _U16.pack(keepalive) + varint(len(props)) + props + _text(client_id)
    if username is not None:
        body += _text(username)
    if password is not None:
        body += _text(password)
    return _packet(CONNECT, 0, body)


def subscribe_packet(packet_id: int, filter_: str, qos: int = 1) -> bytes:
    return _packet(SUBSCRIBE, 2, _U16.pack(packet_id) + b"\x00" + _text(filter_) + bytes((qos,)))


def pubacks(packet_ids: list[int]) -> bytes:
    """The PUBACKs (success, the 2-byte form MQTT 5 allows) of these packets, as one write."""
    return b"".join(b"\x40\x02" + _U16.pack(pid) for pid in packet_ids)


class Publish(NamedTuple):
    topic: str
    payload: bytes
    qos: int
    packet_id: int
    retain: bool


def split_packets(data: bytes) -> tuple[list[tuple[int, int, memoryview]], int]:
    """The complete packets at the start of ``data`` as (type, flags, body), and the bytes they take."""
    out = []
    view = memoryview(data)
    pos, end = 0, len(data)
    while pos + 2 <= end:
        first = data[pos]
        length, shift, i = 0, 0, pos + 1
        while True:
            if i >= end:
                return out, pos
            byte = data[i]
            length |= (byte & 0x7F) << shift
            i += 1
            if not byte & 0x80:
                break
            shift += 7
            if shift > 21:
                raise MqttProtocolError("malformed remaining length")
        if i + length > end:
            break
        out.append((first >> 4, first & 0x0F, view[i:i + length]))
        pos = i + length
    return out, pos


def packet_size(data: bytes | bytearray) -> int:
    """The whole size of the packet that ``data`` begins (0 while its fixed header is incomplete)."""
    length, shift = 0, 0
    for i in range(1, min(len(data), 5)):
        byte = data[i]
        length |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return i + 1 + length
        shift += 7
    return 0


def parse_publish(flags: int, body: memoryview) -> Publish:
    """A PUBLISH packet's body (MQTT 5: topic, packet id when QoS > 0, properties, payload)."""
    qos = (flags >> 1) & 3
    pos = 2 + ((body[0] << 8) | body[1])
    topic = str(body[2:pos], "utf-8")
    packet_id = 0
    if qos:
        packet_id = (body[pos] << 8) | body[pos + 1]
        pos += 2
    props, pos = _varint_at(body, pos)
    return Publish(topic, bytes(body[pos + props:]), qos, packet_id, bool(flags & 1))


def _varint_at(body: memoryview, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = body[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def reason_of_connack(body: memoryview) -> tuple[bool, int]:
    """(session present, reason code) of a CONNACK."""
    return bool(body[0] & 1), body[1]


def reasons_of_suback(body: memoryview) -> list[int]:
    props, pos = _varint_at(body, 2)
    return list(body[pos + props:])


class Subscriber(asyncio.Protocol):
    """One connection: ``on_publish(Publish)`` for each message, in arrival order, from ``data_received``.

    ``ack(packet_ids)`` writes their PUBACKs at once. Reading pauses while more than ``hold`` messages
    wait for their acknowledgement (a broker that sends past the receive maximum cannot grow memory)."""

    def __init__(self, on_publish: Callable[[Publish], None], hold: int) -> None:
        self.on_publish, self.hold = on_publish, hold
        self.rest = bytearray()  # the start of a packet not yet complete
        self.need = 0  # its size, once its fixed header is in
        self.transport: asyncio.Transport | None = None
        self.connack: asyncio.Future = asyncio.get_running_loop().create_future()
        self.suback: asyncio.Future = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future = asyncio.get_running_loop().create_future()
        self.unacked = 0
        self.paused = False
        self.heard = asyncio.get_running_loop().time()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        error = exc or MqttProtocolError("the broker closed the connection")
        for future in (self.connack, self.suback, self.closed):
            if not future.done():
                future.set_exception(error)
            _retrieved(future)

    def data_received(self, data: bytes) -> None:
        if self.rest:  # a packet began in an earlier read: gather until it is complete, then parse
            self.rest += data
            if len(self.rest) < self.need:
                return
            data, self.rest = bytes(self.rest), bytearray()
        self.heard = asyncio.get_running_loop().time()
        try:
            packets, used = split_packets(data)
            for kind, flags, body in packets:
                if kind == PUBLISH:
                    message = parse_publish(flags, body)
                    if message.qos:
                        self.unacked += 1
                    self.on_publish(message)
                elif kind == PINGRESP:
                    pass
                elif kind == CONNACK:
                    if not self.connack.done():
                        self.connack.set_result(reason_of_connack(body))
                elif kind == SUBACK:
                    if not self.suback.done():
                        self.suback.set_result(reasons_of_suback(body))
                elif kind == DISCONNECT:
                    reason = body[0] if len(body) else 0
                    raise MqttProtocolError(f"the broker disconnected us (reason code 0x{reason:02x})")
                else:
                    raise MqttProtocolError(f"unexpected MQTT packet type {kind}")
        except (MqttProtocolError, IndexError, UnicodeDecodeError) as exc:
            self.abort(exc if isinstance(exc, MqttProtocolError) else MqttProtocolError(f"malformed packet: {exc}"))
            return
        if used < len(data):
            self.rest = bytearray(data[used:])
            self.need = packet_size(self.rest)
        if self.unacked > self.hold and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def ack(self, packet_ids: list[int]) -> None:
        """PUBACK these messages (one write); a closed connection drops them (the broker sends them again)."""
        self.unacked -= len(packet_ids)
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.write(pubacks(packet_ids))
        if self.paused and self.unacked <= self.hold:
            self.paused = False
            transport.resume_reading()

    def send(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def abort(self, exc: Exception) -> None:
        for future in (self.connack, self.suback, self.closed):
            if not future.done():
                future.set_exception(exc)
            _retrieved(future)
        if self.transport is not None:
            self.transport.abort()


def _retrieved(future: asyncio.Future) -> None:
    """Mark a failed future's exception as seen (no "never retrieved" warning when nobody awaits it)."""
    if future.done() and not future.cancelled():
        future.exception()


@dataclass(frozen=True)
class Broker:
    host: str
    port: int
    username: str | None = None
    password: str | None = None
    tls: ssl.SSLContext | None = None


async def connect(broker: Broker, client_id: str, filter_: str, subscriber: Callable[[], Subscriber], *,
                  receive_maximum: int, session_expiry: int, keepalive: int = 30,
                  timeout: float = 10.0) -> tuple[Subscriber, bool]:
    """A connected, subscribed session (``subscriber()`` makes its protocol) and whether the broker still had
    it; raises OSError (ConnectionError, MqttProtocolError) or TimeoutError."""
    loop = asyncio.get_running_loop()
    transport, protocol = await asyncio.wait_for(loop.create_connection(
        subscriber, broker.host, broker.port, ssl=broker.tls), timeout)
    try:
        protocol.send(connect_packet(client_id, keepalive, session_expiry, receive_maximum, broker.username,
                                     broker.password))
        present, reason = await asyncio.wait_for(protocol.connack, timeout)
        if reason >= 0x80:
            raise MqttProtocolError(f"the broker refused the connection (reason code 0x{reason:02x})")
        protocol.send(subscribe_packet(1, filter_))
        reasons = await asyncio.wait_for(protocol.suback, timeout)
        if not reasons or reasons[0] >= 0x80:
            raise MqttProtocolError(f"the broker refused the subscription to {filter_!r} "
                                    f"(reason code 0x{(reasons or [0x80])[0]:02x})")
    except BaseException:
        transport.abort()
        raise
    return protocol, present


async def keep_alive(protocol: Subscriber, keepalive: int) -> None:
    """PINGREQ every half keepalive; a broker silent for 1.5 keepalives is taken as gone."""
    loop = asyncio.get_running_loop()
    while not protocol.closed.done():
        await asyncio.sleep(keepalive / 2)
        if loop.time() - protocol.heard > keepalive * 1.5:
            protocol.abort(MqttProtocolError(f"the broker did not answer for {keepalive * 1.5:g}s"))
            return
        protocol.send(PING)
