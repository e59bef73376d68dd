"""The gateway's MQTT 5 codec and protocol on bytes: packets split anywhere, PUBACKs, CONNECT, flow control.

The broker side is the real Mosquitto in tests/integration/test_ingest_gateway.py; here the packets are
built by hand from the MQTT 5 specification (and CONNECT's properties read back by paho-mqtt)."""

from __future__ import annotations

import asyncio
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ingest import mqtt5


def publish_bytes(topic: str, payload: bytes, qos: int, packet_id: int, retain: bool, props: bytes = b"") -> bytes:
    """A PUBLISH as a broker sends it (MQTT 5 section 3.3)."""
    body = struct.pack(">H", len(topic.encode())) + topic.encode()
    if qos:
        body += struct.pack(">H", packet_id)
    body += mqtt5.varint(len(props)) + props + payload
    return bytes(((3 << 4) | (qos << 1) | int(retain),)) + mqtt5.varint(len(body)) + body


class Transport(asyncio.Transport):
    """Collects what the protocol writes; records pause and resume."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.paused = False
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.aborted

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def abort(self) -> None:
        self.aborted = True


messages = st.lists(st.tuples(st.text(min_size=1, max_size=30), st.binary(max_size=300), st.sampled_from([0, 1]),
                              st.integers(1, 65535), st.booleans(),
                              st.sampled_from([b"", b"\x01\x01", b"\x23\x00\x05"])),  # format indicator, alias
                    max_size=20)


@given(messages, st.lists(st.integers(1, 200), min_size=1, max_size=50))
@settings(max_examples=300, deadline=None)
def test_publishes_split_anywhere_come_out_whole_and_in_order(sent: list, cuts: list[int]) -> None:
    async def run() -> None:
        got: list[mqtt5.Publish] = []
        protocol = mqtt5.Subscriber(got.append, hold=10_000)
        protocol.connection_made(Transport())
        data = b"".join(publish_bytes(*m) for m in sent)
        pos, i = 0, 0
        while pos < len(data):
            step = cuts[i % len(cuts)]
            protocol.data_received(data[pos:pos + step])
            pos, i = pos + step, i + 1
        assert got == [mqtt5.Publish(t, p, q, pid if q else 0, r) for t, p, q, pid, r, _ in sent]
        assert protocol.unacked == sum(1 for m in sent if m[2])
        assert not protocol.rest
    asyncio.run(run())


def test_pubacks_leave_in_one_write_and_reading_pauses_above_the_hold() -> None:
    async def run() -> None:
        got: list[mqtt5.Publish] = []
        protocol = mqtt5.Subscriber(got.append, hold=2)
        transport = Transport()
        protocol.connection_made(transport)
        protocol.data_received(b"".join(publish_bytes("d/1", b"{}", 1, pid, False) for pid in (7, 8, 300)))
        assert transport.paused and len(got) == 3
        protocol.ack([7, 8, 300])
        assert bytes(transport.written) == b"\x40\x02\x00\x07" + b"\x40\x02\x00\x08" + b"\x40\x02\x01\x2c"
        assert not transport.paused and protocol.unacked == 0
    asyncio.run(run())


def test_connect_asks_for_a_persistent_session() -> None:
    packet = mqtt5.connect_packet("gw-1", 30, 604800, 1000, "user", "pa:ss")
    assert packet[0] == 0x10
    body = packet[1 + len(mqtt5.varint(len(packet) - 2)):]
    assert body[:6] == b"\x00\x04MQTT" and body[6] == 5
    flags = body[7]
    assert flags & 0x02 == 0  # clean start off: the session (and its unacknowledged messages) outlives us
    assert flags & 0xC0 == 0xC0  # user name and password
    assert struct.unpack(">H", body[8:10])[0] == 30
    props = Properties(PacketTypes.CONNECT)
    used = props.unpack(body[10:])[1]
    assert props.SessionExpiryInterval == 604800 and props.ReceiveMaximum == 1000
    assert props.MaximumPacketSize == mqtt5.MAXIMUM_PACKET
    rest = body[10 + used:]
    assert rest == b"\x00\x04gw-1\x00\x04user\x00\x05pa:ss"


def test_subscribe_packet_asks_for_qos_1_on_a_shared_subscription() -> None:
    packet = mqtt5.subscribe_packet(1, "$share/g/devices/+/position")
    assert packet[0] == 0x82
    assert packet[2:] == b"\x00\x01\x00\x00\x1b$share/g/devices/+/position\x01"


@pytest.mark.parametrize("data", [b"\xe0\x01\x8e", b"\x30\xff\xff\xff\xff\x01", b"\x70\x00"])
def test_a_broker_disconnect_or_garbage_ends_the_connection(data: bytes) -> None:
    async def run() -> None:
        protocol = mqtt5.Subscriber(lambda m: None, hold=10)
        transport = Transport()
        protocol.connection_made(transport)
        protocol.data_received(data)
        assert transport.aborted
        with pytest.raises(mqtt5.MqttProtocolError):
            await protocol.closed
    asyncio.run(run())


def test_keepalive_pings_and_gives_up_on_a_silent_broker() -> None:
    async def run() -> None:
        protocol = mqtt5.Subscriber(lambda m: None, hold=10)
        transport = Transport()
        protocol.connection_made(transport)
        pinger = asyncio.create_task(mqtt5.keep_alive(protocol, 1.0))
        await asyncio.sleep(0.6)  # one PINGREQ after half a keepalive (more on a stalled machine: still PINGREQs)
        assert transport.written and bytes(transport.written) == mqtt5.PING * (len(transport.written) // 2)
        assert not transport.aborted
        protocol.data_received(b"\xd0\x00")  # PINGRESP: heard from
        await asyncio.wait_for(pinger, 5)  # then silence: more than 1.5 keepalives
        assert transport.aborted
        with pytest.raises(mqtt5.MqttProtocolError, match="did not answer"):
            await protocol.closed
    asyncio.run(run())
