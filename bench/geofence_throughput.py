"""Geofencing throughput: points tested per second against 1, 100, 1,000 and 10,000 fences (one core).

Baselines measured in the same run, on the same points:
* ``numpy-bbox``: a pure numpy bounding-box test of every point against one box (memory-bound floor
  of any point-in-area test; says how noisy/fast the machine is right now);
* ``intersects_xy-1``: shapely's vectorised prepared ``intersects_xy`` against the single JFK fence;
* ``STRtree``: ``shapely.STRtree.query(points, predicate="intersects")`` over the same fences (the
  textbook way; it needs a Point per position).

Above 1,000 fences, also at the density of the 1,000-fence case (fences and points over an area grown in
proportion): the cost of more fences apart from that of more fences per point.

Measured: ``agents.core.geofence.Geofences.pairs`` (uniform grid of covering/boundary fences, numpy
lookups, one prepared ``intersects_xy`` call for points in boundary cells) and ``containing`` (the same plus the sorted id tuples
the agent puts into documents). Fences are 32-gon discs of 150-600 m scattered over New York City
(plus JFK), points uniform over the same area, in batches of the agent's bulk size.

    .venv/bin/python -m bench.geofence_throughput [--points 1000000] [--batch 1000] [--repeat 3] [--sizes 1,100,1000,10000]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import shapely

from agents.core.geofence import Geofences
from geoiot.config import DEFAULT_GEOFENCES

NYC = (-74.05, 40.58, -73.75, 40.88)


def scaled(area: tuple[float, float, float, float], factor: float) -> tuple[float, float, float, float]:
    """``area`` grown from its south-west corner so that it is ``factor`` times as large."""
    w, s, e, n = area
    k = factor ** 0.5
    return w, s, w + (e - w) * k, s + (n - s) * k


def fences(n: int, rng: np.random.Generator, area: tuple[float, float, float, float] = NYC) -> Geofences:
    jfk = shapely.from_geojson(json.dumps(json.loads(DEFAULT_GEOFENCES.read_text())["features"][0]["geometry"]))
    if n == 1:
        return Geofences.from_geometries(["jfk"], [jfk])
    x = rng.uniform(area[0], area[2], n - 1)
    y = rng.uniform(area[1], area[3], n - 1)
    r = rng.uniform(150, 600, n - 1) / 111_000
    discs = shapely.buffer(shapely.points(x, y), r, quad_segs=8)
    return Geofences.from_geometries(["jfk"] + [f"f{i:05d}" for i in range(n - 1)], [jfk, *discs])


def rate(fun, lon, lat, batch: int, repeat: int) -> tuple[float, int]:
    best, hits = 0.0, 0
    for _ in range(repeat):
        hits = 0
        t0 = time.perf_counter()
        for i in range(0, len(lon), batch):
            hits += fun(lon[i:i + batch], lat[i:i + batch])
        best = max(best, len(lon) / (time.perf_counter() - t0))
    return best, hits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--sizes", default="1,100,1000,10000", help="fence counts, comma-separated")
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    lon = rng.uniform(NYC[0], NYC[2], args.points)
    lat = rng.uniform(NYC[1], NYC[3], args.points)
    one = fences(1, rng)
    jfk = one.geometries[0]
    bx = jfk.bounds
    rows = []
    r, h = rate(lambda x, y: int(np.count_nonzero((x >= bx[0]) & (x <= bx[2]) & (y >= bx[1]) & (y <= bx[3]))),
                lon, lat, args.batch, args.repeat)
    rows.append(("numpy-bbox (baseline)", 1, r, h))
    r, h = rate(lambda x, y: int(np.count_nonzero(shapely.intersects_xy(jfk, x, y))), lon, lat, args.batch, args.repeat)
    rows.append(("intersects_xy-1 (baseline)", 1, r, h))
    base = r
    for n in (int(v) for v in args.sizes.split(",")):
        f = one if n == 1 else fences(n, rng)
        tree = shapely.STRtree(f.geometries)
        r, h = rate(lambda x, y: int(tree.query(shapely.points(x, y), predicate="intersects").shape[1]),
                    lon, lat, args.batch, args.repeat)
        rows.append(("STRtree (baseline)", n, r, h))
        r, h = rate(lambda x, y: int(f.pairs(x, y)[0].size), lon, lat, args.batch, args.repeat)
        rows.append(("Geofences.pairs", n, r, h))
        r2, _ = rate(lambda x, y: len(f.containing(x, y)), lon, lat, args.batch, args.repeat)
        rows.append(("Geofences.containing", n, r2, h))
        if n > 1000:  # the same density of fences as at 1,000: fences and points over an area n/1000 as large
            area = scaled(NYC, n / 1000)
            f = fences(n, rng, area)
            lon2, lat2 = rng.uniform(area[0], area[2], args.points), rng.uniform(area[1], area[3], args.points)
            r, h = rate(lambda x, y: int(f.pairs(x, y)[0].size), lon2, lat2, args.batch, args.repeat)
            rows.append(("Geofences.pairs, 1k density", n, r, h))
            r2, _ = rate(lambda x, y: len(f.containing(x, y)), lon2, lat2, args.batch, args.repeat)
            rows.append(("Geofences.containing, 1k den.", n, r2, h))
    print(f"points={args.points} batch={args.batch} repeat={args.repeat} (best of), one thread")
    print(f"{'method':<28} {'fences':>6} {'points/s':>12} {'hits':>9} {'vs intersects_xy-1':>18}")
    for name, n, r, h in rows:
        print(f"{name:<28} {n:>6} {r:>12,.0f} {h:>9} {r / base:>18.2f}")


if __name__ == "__main__":
    main()
