"""``python -m ingest.fleet``: a small simulated fleet that reports through the gateway, half over HTTP and
half over MQTT (QoS 1), once a second each, so the map shows live devices (``make demo``).

Vehicles drive random walks around a centre (JFK by default, where the shipped geofences are), in the
gateway preset's field names; positions are stamped with the current time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import random
import signal
import ssl
import time
from typing import Any
from urllib.parse import unquote, urlparse

import aiohttp
import aiomqtt
import orjson

from geoiot import config
from geoiot.schema import Preset, load_preset

log = logging.getLogger("ingest.fleet")
FLAGS = ["IOT_SCHEMA", "INGEST_PORT", "MQTT_URL", "MQTT_TOPIC"]


class Vehicle:
    def __init__(self, track: str, lon: float, lat: float, rng: random.Random) -> None:
        self.track, self.lon, self.lat, self.rng = track, lon, lat, rng
        self.heading = rng.uniform(0, 2 * math.pi)

    def step(self, preset: Preset) -> dict[str, Any]:
        self.heading += self.rng.gauss(0, 0.3)
        self.lon += 0.0004 * math.cos(self.heading)
        self.lat += 0.0003 * math.sin(self.heading)
        return {preset.track: self.track, preset.time: int(time.time() * 1000), preset.lon: round(self.lon, 6),
                preset.lat: round(self.lat, 6)}


def mqtt_topic(filter_: str, track: str) -> str:
    """A concrete topic of the filter: its first ``+`` is the track id, other wildcards become ``x``."""
    levels = filter_.split("/")
    out = []
    placed = False
    for level in levels:
        if level == "+" and not placed:
            out.append(track)
            placed = True
        elif level in ("+", "#"):
            out.append("x")
        else:
            out.append(level)
    return "/".join(out)


async def drive_http(url: str, token: str | None, vehicles: list[Vehicle], preset: Preset, stop: asyncio.Event) -> None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession(headers=headers) as session:
        while not stop.is_set():
            for v in vehicles:
                try:
                    async with session.post(url, data=orjson.dumps(v.step(preset))) as r:
                        if r.status >= 300:
                            log.warning("gateway answered %d: %s", r.status, (await r.text())[:200])
                except aiohttp.ClientError as exc:
                    log.warning("gateway unreachable: %s", exc)
            await asyncio.sleep(1)


def publisher(url: str, client_id: str) -> aiomqtt.Client:
    """An MQTT 5 publishing client of the broker at ``url`` (credentials and mqtts:// from the URL)."""
    parsed = urlparse(url)
    tls = ssl.create_default_context() if parsed.scheme == "mqtts" else None
    return aiomqtt.Client(parsed.hostname or "127.0.0.1", parsed.port or (8883 if tls else 1883),
                          username=unquote(parsed.username) if parsed.username else None,
                          password=unquote(parsed.password) if parsed.password else None,
                          identifier=client_id, protocol=aiomqtt.ProtocolVersion.V5, tls_context=tls, keepalive=30)


async def drive_mqtt(broker: str, filter_: str, vehicles: list[Vehicle], preset: Preset, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            client_id = f"geoiot-fleet-{random.getrandbits(32):08x}"
            async with publisher(broker, client_id) as client:
                while not stop.is_set():
                    for v in vehicles:
                        await client.publish(mqtt_topic(filter_, v.track), orjson.dumps(v.step(preset)), qos=1)
                    await asyncio.sleep(1)
        except Exception as exc:  # noqa: BLE001 - the broker went away: the demo keeps trying
            log.warning("MQTT broker %s: %s", broker, exc)
            await asyncio.sleep(2)


async def run(settings: config.Settings, vehicles: int, token: str | None, centre: tuple[float, float],
              seed: int) -> None:
    preset = load_preset(settings.iot_schema)
    rng = random.Random(seed)
    fleet = [Vehicle(f"fleet-{i:03d}", centre[0] + rng.uniform(-0.05, 0.05), centre[1] + rng.uniform(-0.04, 0.04), rng)
             for i in range(vehicles)]
    half = len(fleet) // 2 if settings.mqtt_url else len(fleet)
    stop = asyncio.Event()
    tasks = [drive_http(f"http://127.0.0.1:{settings.ingest_port}/v1/positions", token, fleet[:half], preset, stop)]
    if settings.mqtt_url:
        tasks.append(drive_mqtt(settings.mqtt_url, settings.mqtt_topic, fleet[half:], preset, stop))
    log.info(json.dumps({"event": "fleet", "http": half, "mqtt": len(fleet) - half}))
    await asyncio.gather(*tasks)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ingest.fleet", description=__doc__)
    config.add_flags(parser, FLAGS)
    parser.add_argument("--vehicles", type=int, default=20, help="vehicles in the fleet (default 20)")
    parser.add_argument("--token", default=None, help="bearer token for HTTP (a gateway with IOT_TOKENS_FILE)")
    parser.add_argument("--centre", default="-73.78,40.645", help="lon,lat the fleet starts around (default JFK)")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    settings = config.from_args(args, component="ingest")
    lon, lat = (float(x) for x in args.centre.split(","))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # Started in the background by a script (make demo), the fleet inherits SIGINT ignored; Ctrl-C must stop it.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        asyncio.run(run(settings, args.vehicles, args.token, (lon, lat), args.seed))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
