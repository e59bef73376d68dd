"""Seeded generator of taxi position reports in the original headerless 19-column layout.

The project's own sample and benchmark data, in two modes:

* trips (:func:`write_csv`, ``--points``): vehicles drive plausible paths at plausible speeds (5-20 m/s,
  gentle heading changes, one report per second) inside a bounding box (NYC by default); a share of them
  drive through the JFK polygon so geofence enter/exit events happen. One ``random.Random(seed)`` simulates
  every track before the first row is written, so memory grows with tracks x points.
* fleet (:func:`write_fleet_csv`, ``--reports``): many vehicles reporting now and then, the scale case (a
  million tracks with a few reports each): each track reports every ``interval`` seconds, the tracks'
  first reports spread over the first interval, so each second holds about tracks / interval rows of
  distinct tracks. Streaming: every value of a row is a function of (seed, track, report) alone
  (:func:`_unit`, a counter-based hash), straight lines at 5-20 m/s folded back into the box, the JFK
  share crossing the fence (outside, inside, outside for three reports), so rows are computed and written
  block by block (at most :data:`FLEET_BLOCK` tracks at a time), whatever the track count.

Both give a byte-identical file for the same arguments (fixed float formatting, fixed row order:
time-major, then track id), sorted by time as the timestamp mode wants.
"""

from __future__ import annotations

import gzip
import io
import json
import math
import random
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

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


def _write(path: str | Path, blocks: Iterable[tuple[int, str]]) -> int:
    """Write text blocks (row count, rows) to ``path`` (gzip when it ends in .gz); returns the row count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = path.open("wb")
    # mtime=0 and no file name in the gzip header keep .gz output byte-identical too.
    stream = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) if path.suffix == ".gz" else raw
    count = 0
    with raw, stream, io.TextIOWrapper(stream, encoding="utf-8", newline="") as text:
        for rows, block in blocks:
            text.write(block)
            count += rows
    return count


def _blocks(lines: Iterable[str], size: int = 10_000) -> Iterator[tuple[int, str]]:
    chunk: list[str] = []
    for line in lines:
        chunk.append(line)
        if len(chunk) >= size:
            yield len(chunk), "".join(chunk)
            chunk.clear()
    yield len(chunk), "".join(chunk)


def write_csv(path: str | Path, tracks: int, points: int, seed: int = 0, *, bbox: Sequence[float] = NYC_BBOX,
              start: str = DEFAULT_START, jfk_share: float = 0.2) -> int:
    """Write ``tracks * points`` rows to ``path`` (gzip when it ends in .gz); returns the row count."""
    simulated = make_tracks(tracks, points, seed, bbox, jfk_share)
    return _write(path, _blocks(iter_lines(simulated, points, start)))


# --- fleet mode: many tracks, a few reports each, streaming ---------------------------------------------------

FLEET_BLOCK = 1 << 16  # tracks computed together (numpy columns): the bound on the generator's memory
DEFAULT_INTERVAL = 60  # seconds between two reports of a track
JFK_STEP_M = 1600.0  # a crossing track's step: from the fence's centre, farther than its corners (~1.5 km)
_PASSENGERS = np.array([1, 1, 1, 1, 2, 2, 3, 4, 5, 6], dtype=np.int64)
# What each hash of a track draws (the salt of :func:`_hash`, below _SALTS: each (track, salt) is one counter).
_JFK, _X, _Y, _DX, _DY, _SPEED, _PAX, _VENDOR, _MEDALLION, _MEDALLION2, _HACK, _HACK2 = range(12)
_SALTS = 16


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser over uint64 (wrapping arithmetic): a counter-based generator, so any track's
    values are computed without the tracks before it."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _hash(seed: int, ids: np.ndarray, salt: int) -> np.ndarray:
    return _mix(_mix(ids * np.uint64(_SALTS) + np.uint64(salt)) ^ np.uint64(seed & 0xFFFFFFFFFFFFFFFF))


def _unit(seed: int, ids: np.ndarray, salt: int) -> np.ndarray:
    """Uniform floats in [0, 1), one per track, from (seed, track, salt) alone."""
    return (_hash(seed, ids, salt) >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def _fold(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``x`` reflected back into [lo, hi] (a straight path bouncing off the box's sides)."""
    width = hi - lo
    t = np.mod(x - lo, 2 * width)
    return lo + np.where(t <= width, t, 2 * width - t)


@dataclass(frozen=True)
class _Fleet:
    """The per-track rules of the fleet mode (everything but the track ids)."""

    tracks: int
    reports: int
    seed: int
    interval: int
    box: tuple[float, float, float, float]
    jfk_share: float
    jfk: tuple[float, float] | None  # the fence's centre, when inside the box

    def block(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        """Per-track columns of ``ids``: start, step per report (degrees), attributes."""
        min_lon, min_lat, max_lon, max_lat = self.box
        m_lon = _meters_per_deg_lon((min_lat + max_lat) / 2)
        dx, dy = _unit(self.seed, ids, _DX) * 2 - 1, _unit(self.seed, ids, _DY) * 2 - 1
        norm = np.sqrt(dx * dx + dy * dy)
        flat = norm < 1e-9
        dx, dy, norm = np.where(flat, 1.0, dx), np.where(flat, 0.0, dy), np.where(flat, 1.0, norm)
        dx, dy = dx / norm, dy / norm
        meters = (MIN_SPEED + (MAX_SPEED - MIN_SPEED) * _unit(self.seed, ids, _SPEED)) * self.interval
        lon0 = min_lon + (max_lon - min_lon) * _unit(self.seed, ids, _X)
        lat0 = min_lat + (max_lat - min_lat) * _unit(self.seed, ids, _Y)
        crossing = np.zeros(len(ids), dtype=bool)
        if self.jfk is not None:
            crossing = _unit(self.seed, ids, _JFK) < self.jfk_share
            meters = np.where(crossing, np.maximum(meters, JFK_STEP_M), meters)
            back = float(self.reports // 2)  # report reports // 2 is at the centre: outside, inside, outside
            lon0 = np.where(crossing, self.jfk[0] - back * meters * dx / m_lon, lon0)
            lat0 = np.where(crossing, self.jfk[1] - back * meters * dy / EARTH_M_PER_DEG_LAT, lat0)
        vendor_cmt = (_hash(self.seed, ids, _VENDOR) & np.uint64(1)).astype(bool)
        return {"lon0": lon0, "lat0": lat0, "dlon": meters * dx / m_lon, "dlat": meters * dy / EARTH_M_PER_DEG_LAT,
                "miles": meters * max(self.reports - 1, 0) / 1609.344, "crossing": crossing, "cmt": vendor_cmt,
                "pax": _PASSENGERS[(_hash(self.seed, ids, _PAX) % np.uint64(len(_PASSENGERS))).astype(np.int64)],
                "medallion": np.stack([_hash(self.seed, ids, _MEDALLION), _hash(self.seed, ids, _MEDALLION2)], 1),
                "hack": np.stack([_hash(self.seed, ids, _HACK), _hash(self.seed, ids, _HACK2)], 1)}

    def position(self, cols: dict[str, np.ndarray], report: int) -> tuple[np.ndarray, np.ndarray]:
        min_lon, min_lat, max_lon, max_lat = self.box
        return (_fold(cols["lon0"] + report * cols["dlon"], min_lon, max_lon),
                _fold(cols["lat0"] + report * cols["dlat"], min_lat, max_lat))


def _hex32(pairs: np.ndarray) -> list[str]:
    """Two uint64 per row as 32 upper-case hex digits (one conversion for the whole block)."""
    text = pairs.astype(">u8").tobytes().hex().upper()
    return [text[i:i + 32] for i in range(0, len(text), 32)]


def iter_fleet_blocks(tracks: int, reports: int, seed: int = 0, *, interval: int = DEFAULT_INTERVAL,
                      bbox: Sequence[float] = NYC_BBOX, start: str = DEFAULT_START, jfk_share: float = 0.2,
                      geofences: Path = DEFAULT_GEOFENCES, block: int = FLEET_BLOCK) -> Iterator[tuple[int, str]]:
    """The fleet mode's CSV rows as (row count, text) blocks of at most ``block`` rows, in time order.

    Track ``i`` (id ``str(i)``) reports at ``start + i % interval + k * interval`` seconds, ``k < reports``;
    rows of one second are in track order. Memory is bounded by ``block``, not by ``tracks``."""
    if tracks < 0 or reports < 0:
        raise ValueError("tracks and reports must not be negative")
    if interval < 1 or block < 1:
        raise ValueError("interval and block must be at least 1")
    box = tuple(float(v) for v in bbox)
    if len(box) != 4 or not (box[0] < box[2] and box[1] < box[3]):
        raise ValueError("bbox must be min_lon,min_lat,max_lon,max_lat with min < max")
    jfk = _polygon_center(geofences)
    inside = box[0] <= jfk[0] <= box[2] and box[1] <= jfk[1] <= box[3]
    fleet = _Fleet(tracks, reports, seed, interval, box, jfk_share, jfk if inside else None)  # type: ignore[arg-type]
    return _fleet_blocks(fleet, _parse_start(start), block)  # checked above, before the first row is asked for


def _fleet_blocks(fleet: _Fleet, t0: datetime, block: int) -> Iterator[tuple[int, str]]:
    tracks, reports, interval = fleet.tracks, fleet.reports, fleet.interval
    stamp = lambda s: (t0 + timedelta(seconds=s)).strftime("%Y-%m-%d %H:%M:%S")  # noqa: E731
    trip = (reports - 1) * interval if reports else 0
    for second in range(reports * interval if tracks else 0):
        report, phase = divmod(second, interval)
        if phase >= tracks:
            continue
        now, pickup, dropoff = stamp(second), stamp(phase), stamp(phase + trip)
        for first in range(phase, tracks, interval * block):
            ids = np.arange(first, min(tracks, first + interval * block), interval, dtype=np.uint64)
            cols = fleet.block(ids)
            lon, lat = fleet.position(cols, report)
            lon0, lat0 = fleet.position(cols, 0)
            lon1, lat1 = fleet.position(cols, max(reports - 1, 0))
            rows = [
                f"{i},{now},{x:.6f},{y:.6f},{pax},{trip},{miles:.2f},{report + 1},{med},{hack},"
                f"{'CMT,2' if cmt and cross else 'CMT,1' if cmt else 'VTS,2' if cross else 'VTS,1'},"
                f"{'N' if cmt else ''},{pickup},{dropoff},{x0:.6f},{y0:.6f},{x1:.6f},{y1:.6f}\n"
                for i, x, y, pax, miles, med, hack, cmt, cross, x0, y0, x1, y1 in zip(
                    ids.tolist(), lon.tolist(), lat.tolist(), cols["pax"].tolist(), cols["miles"].tolist(),
                    _hex32(cols["medallion"]), _hex32(cols["hack"]), cols["cmt"].tolist(),
                    cols["crossing"].tolist(), lon0.tolist(), lat0.tolist(), lon1.tolist(), lat1.tolist())]
            yield len(rows), "".join(rows)


def write_fleet_csv(path: str | Path, tracks: int, reports: int, seed: int = 0, *, interval: int = DEFAULT_INTERVAL,
                    bbox: Sequence[float] = NYC_BBOX, start: str = DEFAULT_START, jfk_share: float = 0.2) -> int:
    """Write the fleet mode's ``tracks * reports`` rows to ``path`` (gzip when it ends in .gz); returns the count."""
    return _write(path, iter_fleet_blocks(tracks, reports, seed, interval=interval, bbox=bbox, start=start,
                                          jfk_share=jfk_share))
