"""Seeded generator of taxi position reports in the original headerless 19-column layout.

The project's own sample and benchmark data: vehicles drive plausible paths at plausible speeds
(5-20 m/s, gentle heading changes, one report per second) inside a bounding box (NYC by default);
a share of them drive through the JFK polygon so geofence enter/exit events happen. The same
arguments always give a byte-identical file: one ``random.Random(seed)``, fixed float formatting and
a fixed row order (time-major, then track id), so rows are sorted by time as the timestamp mode wants.
"""

from __future__ import annotations

import gzip
import io
import json
import math
import random
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from geoiot.config import DEFAULT_GEOFENCES

NYC_BBOX = (-74.05, 40.58, -73.75, 40.88)  # min lon, min lat, max lon, max lat
DEFAULT_START = "2013-01-01 00:00:00"
EARTH_M_PER_DEG_LAT = 111_320.0
MIN_SPEED, MAX_SPEED = 5.0, 20.0  # m/s
_HEX = "0123456789ABCDEF"


@dataclass(frozen=True)
class Track:
    """One simulated trip: its positions (one per second) and trip-level attributes."""

    track_id: str
    lons: array
    lats: array
    passengers: int
    medallion: str
    hack_license: str
    vendor: str
    rate_code: int
    distance_miles: float


def _polygon_center(path: Path) -> tuple[float, float]:
    """Mean vertex of the first polygon of a GeoJSON file: a point inside the (convex-ish) JFK fence."""
    data = json.loads(path.read_text())
    ring = data["features"][0]["geometry"]["coordinates"][0][:-1]
    return sum(p[0] for p in ring) / len(ring), sum(p[1] for p in ring) / len(ring)


def _meters_per_deg_lon(lat: float) -> float:
    return EARTH_M_PER_DEG_LAT * math.cos(math.radians(lat))


def _simulate(rng: random.Random, points: int, start: tuple[float, float], heading: float,
              bbox: tuple[float, float, float, float], target: tuple[float, float] | None) -> tuple[array, array, float]:
    """Positions of one vehicle, one per second; steers toward ``target`` when given, else wanders."""
    min_lon, min_lat, max_lon, max_lat = bbox
    lon, lat = start
    speed = rng.uniform(MIN_SPEED, MAX_SPEED)
    lons, lats = array("d"), array("d")
    distance = 0.0
    for _ in range(points):
        lons.append(lon)
        lats.append(lat)
        mx, my = _meters_per_deg_lon(lat), EARTH_M_PER_DEG_LAT
        if target is not None:
            wanted = math.atan2((target[1] - lat) * my, (target[0] - lon) * mx)
            turn = (wanted - heading + math.pi) % (2 * math.pi) - math.pi
            heading += max(-0.3, min(0.3, turn)) + rng.gauss(0.0, 0.05)
        else:
            heading += rng.gauss(0.0, 0.15)
        speed = min(MAX_SPEED, max(MIN_SPEED, speed + rng.gauss(0.0, 0.8)))
        if rng.random() < 0.03:  # a stop at a light: the taxi barely moves for this second
            step = rng.uniform(0.0, 1.0)
        else:
            step = speed
        nlon = lon + step * math.cos(heading) / mx
        nlat = lat + step * math.sin(heading) / my
        if not (min_lon <= nlon <= max_lon and min_lat <= nlat <= max_lat):
            # Turn back toward the middle of the box instead of leaving it.
            cx, cy = (min_lon + max_lon) / 2, (min_lat + max_lat) / 2
            heading = math.atan2((cy - lat) * my, (cx - lon) * mx) + rng.gauss(0.0, 0.3)
            nlon = lon + step * math.cos(heading) / mx
            nlat = lat + step * math.sin(heading) / my
            if not (min_lon <= nlon <= max_lon and min_lat <= nlat <= max_lat):
                nlon, nlat = lon, lat
        distance += math.hypot((nlon - lon) * mx, (nlat - lat) * my)
        lon, lat = nlon, nlat
    return lons, lats, distance


def make_tracks(tracks: int, points: int, seed: int, bbox: Sequence[float] = NYC_BBOX,
                jfk_share: float = 0.2, geofences: Path = DEFAULT_GEOFENCES) -> list[Track]:
    """Simulate ``tracks`` trips of ``points`` reports each; deterministic for a given seed."""
    if tracks < 0 or points < 0:
        raise ValueError("tracks and points must not be negative")
    box = tuple(float(v) for v in bbox)
    if len(box) != 4 or not (box[0] < box[2] and box[1] < box[3]):
        raise ValueError("bbox must be min_lon,min_lat,max_lon,max_lat with min < max")
    rng = random.Random(seed)
    jfk = _polygon_center(geofences)
    jfk_in_box = box[0] <= jfk[0] <= box[2] and box[1] <= jfk[1] <= box[3]
    out: list[Track] = []
    for i in range(tracks):
        to_jfk = jfk_in_box and rng.random() < jfk_share
        if to_jfk:
            # Start outside the fence at a distance the trip can cover, aim at the far side: drive through.
            path = points * (MIN_SPEED + MAX_SPEED) / 2
            radius = min(max(0.35 * path, 1300.0), 8000.0)
            angle = rng.uniform(0, 2 * math.pi)
            dx, dy = radius * math.cos(angle), radius * math.sin(angle)
            mx = _meters_per_deg_lon(jfk[1])
            start = (min(max(jfk[0] + dx / mx, box[0]), box[2]), min(max(jfk[1] + dy / EARTH_M_PER_DEG_LAT, box[1]), box[3]))
            target = (jfk[0] - dx / mx, jfk[1] - dy / EARTH_M_PER_DEG_LAT)
            heading = angle + math.pi
        else:
            start = (rng.uniform(box[0], box[2]), rng.uniform(box[1], box[3]))
            target = None
            heading = rng.uniform(-math.pi, math.pi)
        lons, lats, meters = _simulate(rng, points, start, heading, box, target)
        vendor = rng.choice(("VTS", "CMT"))
        out.append(Track(
            track_id=str(i), lons=lons, lats=lats,
            passengers=rng.choice((1, 1, 1, 1, 2, 2, 3, 4, 5, 6)),
            medallion="".join(rng.choice(_HEX) for _ in range(32)),
            hack_license="".join(rng.choice(_HEX) for _ in range(32)),
            vendor=vendor, rate_code=2 if to_jfk else 1,
            distance_miles=meters / 1609.344,
        ))
    return out


def _parse_start(start: str) -> datetime:
    text = start.strip()
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(timezone.utc).replace(tzinfo=None)
    return parsed


def iter_lines(tracks: Sequence[Track], points: int, start: str = DEFAULT_START) -> Iterator[str]:
    """CSV lines (with newline), time-major then track order; times are UTC 'YYYY-MM-DD HH:MM:SS'."""
    t0 = _parse_start(start)
    stamps = [(t0 + timedelta(seconds=s)).strftime("%Y-%m-%d %H:%M:%S") for s in range(max(points, 1))]
    pickup, dropoff = stamps[0], stamps[max(points - 1, 0)]
    trip_secs = max(points - 1, 0)
    prefixes, suffixes = [], []
    for t in tracks:
        flag = "N" if t.vendor == "CMT" else ""
        prefixes.append(t.track_id + ",")
        suffixes.append(
            f",{t.passengers},{trip_secs},{t.distance_miles:.2f},%d,{t.medallion},{t.hack_license},{t.vendor},"
            f"{t.rate_code},{flag},{pickup},{dropoff},{t.lons[0]:.6f},{t.lats[0]:.6f},"
            f"{t.lons[-1]:.6f},{t.lats[-1]:.6f}\n" if points else "")
    for s in range(points):
        stamp = stamps[s]
        for t, prefix, suffix in zip(tracks, prefixes, suffixes):
            yield f"{prefix}{stamp},{t.lons[s]:.6f},{t.lats[s]:.6f}" + (suffix % (s + 1))


def write_csv(path: str | Path, tracks: int, points: int, seed: int = 0, *, bbox: Sequence[float] = NYC_BBOX,
              start: str = DEFAULT_START, jfk_share: float = 0.2) -> int:
    """Write ``tracks * points`` rows to ``path`` (gzip when it ends in .gz); returns the row count."""
    simulated = make_tracks(tracks, points, seed, bbox, jfk_share)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = path.open("wb")
    # mtime=0 and no file name in the gzip header keep .gz output byte-identical too.
    stream = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) if path.suffix == ".gz" else raw
    count = 0
    with raw, stream, io.TextIOWrapper(stream, encoding="utf-8", newline="") as text:
        chunk: list[str] = []
        for line in iter_lines(simulated, points, start):
            chunk.append(line)
            if len(chunk) >= 10_000:
                text.write("".join(chunk))
                count += len(chunk)
                chunk.clear()
        text.write("".join(chunk))
        count += len(chunk)
    return count
