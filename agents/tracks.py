"""Per-track motion state: distance, speed and heading from the previous report; fence transitions.

The state is a small JSON-able dict (kept per source partition by :mod:`agents.state`, backed by a changelog topic)::

    {"t": time_ms, "lon": .., "lat": .., "fences": [ids], "hist": [[t, lon, lat], ...]}

Rule: only a report newer than the state's time moves the track. An older or duplicate report never
moves it backwards; its motion is computed against the latest earlier point kept in ``hist`` (the
last :data:`HISTORY` accepted points), so a report redelivered after a crash (when the state had
already been saved) gets the same speed/heading/distance as the first time, not nulls.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from dataclasses import dataclass
from typing import Any

EARTH_RADIUS_M = 6_371_008.8  # mean Earth radius (IUGG)
HISTORY = 32

State = dict[str, Any]


def haversine_m(lon1: float, lat1: float, lon2: float, lat2: float) -> float:
    """Great-circle distance in metres."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(a)))


def bearing_deg(lon1: float, lat1: float, lon2: float, lat2: float) -> float:
    """Initial bearing from point 1 to point 2, degrees clockwise from north in [0, 360)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dl = math.radians(lon2 - lon1)
    x = math.sin(dl) * math.cos(p2)
    y = math.cos(p1) * math.sin(p2) - math.sin(p1) * math.cos(p2) * math.cos(dl)
    return math.degrees(math.atan2(x, y)) % 360.0


@dataclass(frozen=True, slots=True)
class Motion:
    distance_m: float | None
    speed_mps: float | None
    heading_deg: float | None
    moved: bool  # the report advanced the track (newer than its state)
    entered: tuple[str, ...] = ()
    exited: tuple[str, ...] = ()


def motion_between(t0: int, lon0: float, lat0: float, t1: int, lon1: float, lat1: float) -> tuple[float, float | None, float | None]:
    """(distance, speed, heading) from an earlier point to a later one; heading is None when not moving."""
    distance = haversine_m(lon0, lat0, lon1, lat1)
    dt = (t1 - t0) / 1000.0
    speed = distance / dt if dt > 0 else None
    heading = bearing_deg(lon0, lat0, lon1, lat1) if distance > 0 else None
    return distance, speed, heading


def advance(state: State | None, time_ms: int, lon: float, lat: float, fences: tuple[str, ...]) -> tuple[State | None, Motion]:
    """The new state (the same object when unchanged) and the motion of this report.

    The first report of a track has no motion and no transitions: transitions are changes of the
    fence set between consecutive reports.
    """
    if state is None:
        new = {"t": time_ms, "lon": lon, "lat": lat, "fences": list(fences), "hist": [[time_ms, lon, lat]]}
        return new, Motion(None, None, None, True)
    if time_ms > state["t"]:
        distance, speed, heading = motion_between(state["t"], state["lon"], state["lat"], time_ms, lon, lat)
        before = set(state["fences"])
        after = set(fences)
        hist = state.get("hist") or [[state["t"], state["lon"], state["lat"]]]
        hist = (hist + [[time_ms, lon, lat]])[-HISTORY:]
        new = {"t": time_ms, "lon": lon, "lat": lat, "fences": list(fences), "hist": hist}
        return new, Motion(distance, speed, heading, True, tuple(sorted(after - before)), tuple(sorted(before - after)))
    # Older or duplicate: the state stays; motion against the latest kept point strictly before it.
    hist = state.get("hist") or []
    i = bisect_left([h[0] for h in hist], time_ms)
    if i == 0:
        return state, Motion(None, None, None, False)
    t0, lon0, lat0 = hist[i - 1]
    distance, speed, heading = motion_between(t0, lon0, lat0, time_ms, lon, lat)
    return state, Motion(distance, speed, heading, False)
