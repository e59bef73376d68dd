"""The OsmAnd protocol (Traccar Client, OsmAnd): its parameters and Traccar Client's JSON body as records of
the shipped ``osmand`` preset, then in the gateway's own preset. Pure functions, no I/O.

OsmAnd sends ``id, timestamp, lat, lon, speed, bearing, altitude, accuracy, batt`` as query or form
parameters (``deviceid`` is an older name of ``id``). Traccar Client 6.7+ posts JSON instead:
``{"device_id": ..., "location": {"timestamp": ..., "coords": {"latitude", "longitude", "speed",
"heading", "altitude", "accuracy"}, "battery": {"level": 0..1}}}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from geoiot.schema import Preset, load_preset

PRESET_NAME = "osmand"


def preset() -> Preset:
    return load_preset(PRESET_NAME)


def from_params(params: Mapping[str, str]) -> dict[str, Any]:
    """An OsmAnd query or form as a record in the ``osmand`` preset's names (values still text)."""
    names = preset().names
    record: dict[str, Any] = {name: params[name] for name in names if name in params}
    if "id" not in record and "deviceid" in params:
        record["id"] = params["deviceid"]
    return record


def from_traccar_json(body: Any) -> dict[str, Any]:
    """Traccar Client's JSON body as a record in the ``osmand`` preset's names; missing parts stay missing
    (the shared validation then names what is wrong)."""
    if not isinstance(body, dict):
        return {}
    location = body.get("location")
    location = location if isinstance(location, dict) else {}
    coords = location.get("coords")
    coords = coords if isinstance(coords, dict) else {}
    battery = location.get("battery")
    level = battery.get("level") if isinstance(battery, dict) else None
    record: dict[str, Any] = {"id": body.get("device_id"), "timestamp": location.get("timestamp"),
                              "lat": coords.get("latitude"), "lon": coords.get("longitude"),
                              "speed": coords.get("speed"), "bearing": coords.get("heading"),
                              "altitude": coords.get("altitude"), "accuracy": coords.get("accuracy")}
    if isinstance(level, (int, float)) and not isinstance(level, bool):
        record["batt"] = level * 100 if 0 <= level <= 1 else level
    return {k: v for k, v in record.items() if v is not None}


def project(record: Mapping[str, Any], source: Preset, target: Preset) -> dict[str, Any]:
    """A record of ``source``'s names in ``target``'s: the track, time, lon and lat by role, every other
    field by name when ``target`` has it (the identity when both presets are the same)."""
    if source == target:
        return dict(record)
    roles = dict(zip(source.core, target.core))
    return {roles.get(name, name): value for name, value in record.items()
            if name in roles or name in target.names}
