"""Live geofences: the time to put one fence change in force with N fences loaded, and what it costs the batches.

Measured with the worker's own code (:class:`agents.core.fence_shapes.Shapes` on a :class:`geoiot.fences.FenceSet`
filled with records as the follower applies them):

* ``update in place after one change``: one fence replaced, then :func:`agents.core.fence_shapes.updated` (what the
  worker runs in a thread, the new index put in force between two batches);
* ``rebuild after one change``: the same change, the new index built by ``Shapes`` (the worker's thread rebuild,
  for many changes at once or a new frame);
* ``index from scratch`` (baseline, same run): the same index without the shapes kept between rebuilds;
* batch latency vs. with no change (baseline): ``Geofences.containing`` of one batch (``--batch`` points)
  in one thread while 20 changes, one after another, are put in force in another (as the worker's event loop and
  its fence thread): by updates in place (what the worker does) and by rebuilds (baseline); median and maximum.

Fences and points are those of ``bench.geofence_throughput`` (32-gon discs over New York City, plus JFK).

    .venv/bin/python -m bench.fence_apply [--fences 10000] [--changes 5] [--batch 2000]
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

import numpy as np
import orjson
import shapely

from agents.core.fence_shapes import Shapes, updated
from bench.geofence_throughput import NYC, fences as make_fences
from geoiot import fences


def fence_set(n: int, rng: np.random.Generator) -> tuple[fences.FenceSet, list]:
    index = make_fences(n, rng)
    fs = fences.FenceSet()
    for offset, (fid, geom) in enumerate(zip(index.ids, index.geometries)):
        feature = fences.check_feature(fid, {"type": "Feature", "geometry": orjson.loads(shapely.to_geojson(geom))})
        fs.apply(*fences.encode(feature), offset, 0)
    return fs, list(index.geometries)


def batch_latencies(index, lon, lat, batch: int, stop: threading.Event | None, rounds: int) -> list[float]:
    out = []
    k = 0
    while len(out) < rounds or (stop is not None and not stop.is_set()):
        i = (k * batch) % (len(lon) - batch)
        t0 = time.perf_counter()
        index.containing(lon[i:i + batch], lat[i:i + batch])
        out.append(time.perf_counter() - t0)
        k += 1
        if stop is None and len(out) >= rounds:
            break
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fences", type=int, default=10_000)
    ap.add_argument("--changes", type=int, default=5)
    ap.add_argument("--batch", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    fs, geoms = fence_set(args.fences, rng)
    print(f"fences={args.fences}: records applied to a FenceSet in {time.perf_counter() - t0:.2f} s")
    shapes = Shapes()
    index = shapes.index(dict(fs.fences), dict(fs.removed))
    lon = rng.uniform(NYC[0], NYC[2], 200_000)
    lat = rng.uniform(NYC[1], NYC[3], 200_000)

    rebuild, scratch, merge = [], [], []
    offset = len(fs.fences)

    def change(c: int) -> str:
        """Move fence ``c`` a little, as one record on the topic; its id."""
        nonlocal offset
        fid = index.ids[1 + c % (len(index.ids) - 1)]
        moved = shapely.transform(geoms[1 + c % (len(geoms) - 1)], lambda xy: xy + [0.0001 * (c + 1), 0.0])
        feature = fences.check_feature(fid, {"type": "Feature", "geometry": orjson.loads(shapely.to_geojson(moved))})
        fs.apply(*fences.encode(feature), offset, 0)
        offset += 1
        return fid

    for c in range(args.changes):
        fid = change(c)
        t = time.perf_counter()
        merged = updated(index, dict(fs.fences), dict(fs.removed), [fid])
        merge.append(time.perf_counter() - t)
        assert merged is not None
        t = time.perf_counter()
        index = shapes.index(dict(fs.fences), dict(fs.removed))
        rebuild.append(time.perf_counter() - t)
        t = time.perf_counter()
        Shapes().index(dict(fs.fences), dict(fs.removed))
        scratch.append(time.perf_counter() - t)

    idle = batch_latencies(index, lon, lat, args.batch, None, 200)

    def during(step) -> tuple[list[float], float]:
        """Batch latencies in one thread while 20 changes are put in force by ``step`` in another (as the worker's
        event loop and the thread of its fence task)."""
        stop = threading.Event()
        busy: list[float] = []
        worker = threading.Thread(target=lambda: busy.extend(batch_latencies(index, lon, lat, args.batch, stop, 1)))
        worker.start()
        t = time.perf_counter()
        for c in range(step.first, step.first + 20):
            step(change(c))
        seconds = time.perf_counter() - t
        stop.set()
        worker.join()
        return busy, seconds

    state = {"index": index}

    def merge_step(fid: str) -> None:
        state["index"] = updated(state["index"], dict(fs.fences), dict(fs.removed), [fid]) or state["index"]

    def rebuild_step(fid: str) -> None:
        shapes.index(dict(fs.fences), dict(fs.removed))

    merge_step.first, rebuild_step.first = args.changes, args.changes + 20  # type: ignore[attr-defined]
    merging, merge_s = during(merge_step)
    busy, during_s = during(rebuild_step)

    med = statistics.median
    print(f"{'measure':<44} {'median s':>9} {'max s':>8}")
    print(f"{'update in place after one change':<44} {med(merge):>9.3f} {max(merge):>8.3f}")
    print(f"{'rebuild after one change (Shapes kept)':<44} {med(rebuild):>9.3f} {max(rebuild):>8.3f}")
    print(f"{'index from scratch (baseline)':<44} {med(scratch):>9.3f} {max(scratch):>8.3f}"
          f"   ratio rebuild/scratch {med(rebuild) / med(scratch):.2f}")
    print(f"{f'batch of {args.batch} points, no rebuild (baseline)':<44} {med(idle):>9.4f} {max(idle):>8.4f}")
    print(f"{f'batch of {args.batch} points, updates in a thread':<44} {med(merging):>9.4f} {max(merging):>8.4f}"
          f"   ({len(merging)} batches over {merge_s:.1f} s of 20 updates; median ratio {med(merging) / med(idle):.2f})")
    print(f"{f'batch of {args.batch} points, rebuild in a thread':<44} {med(busy):>9.4f} {max(busy):>8.4f}"
          f"   ({len(busy)} batches over {during_s:.1f} s of 20 rebuilds; median ratio {med(busy) / med(idle):.2f})")


if __name__ == "__main__":
    main()
