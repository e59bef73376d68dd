"""Micro-benchmark of the pure analytics core: ``Pipeline.process`` plus the bulk body, no I/O.

Generated taxi events (``replay.generate``, the values ``python -m replay`` sends), cut into batches of
``--batch``; track states carried from batch to batch as the worker does. Per stage, µs of CPU per event
(``time.thread_time``, median of ``--repeat`` passes over all events): validate (decode + checks: from
the start of ``process`` to the geofence call), geofences (``Geofences.containing``), motion
(``advance_batch``), documents (the rest of ``process``), bulk body (the request bytes). The stage marks are
taken around calls both the row-wise core (before ``core``) and the batch core make, so the same file
measures either tree: run it with ``PYTHONPATH`` at an older checkout for the baseline.

    .venv/bin/python -m bench.pipeline_core [--events 100000 --batch 2000 --repeat 5]
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import statistics
import time

import numpy as np
import orjson

import agents.core.pipeline as pipeline_module
from agents.core.geofence import Geofences
from agents.core.pipeline import Incoming, Pipeline
from geoiot import config
from geoiot.schema import load_preset, parse_row
from replay.generate import iter_lines, make_tracks

STAGES = ("validate", "geofences", "motion", "documents", "bulk_body")


def events(preset, n: int, tracks: int) -> list[bytes]:
    points = max(1, n // tracks)
    text = "".join(iter_lines(make_tracks(tracks, points, 7), points))
    return [orjson.dumps(parse_row(preset, row)[0]) for row in csv.reader(io.StringIO(text))]


def body_of(result) -> bytes:
    """The bulk request bytes of a batch, whichever core made it."""
    if hasattr(result, "bulk"):
        return result.bulk().body()
    from testkit.actions import serialized_action  # the row-wise core: the helper's two lines per action
    return b"".join(meta + b"\n" + source + b"\n"
                    for meta, source in map(serialized_action, result.actions + result.latest))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--tracks", type=int, default=500)
    ap.add_argument("--batch", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    settings = config.load()
    preset = load_preset(settings.iot_schema)
    fences = Geofences.load(settings.iot_geofences)
    values = events(preset, args.events, args.tracks)
    n = len(values)
    marks: dict[str, float] = {}
    clock = time.thread_time

    class Timed(type(fences)):
        def containing(self, lon, lat):
            marks["fences_start"] = clock()
            try:
                return super().containing(lon, lat)
            finally:
                marks["fences_end"] = clock()

    object.__setattr__(fences, "__class__", Timed)
    advance_batch = pipeline_module.advance_batch

    def timed_advance(*a, **k):
        t = clock()
        try:
            return advance_batch(*a, **k)
        finally:
            marks["motion"] = marks.get("motion", 0.0) + clock() - t

    pipeline_module.advance_batch = timed_advance
    pipe = Pipeline(preset, fences, "bench")
    passes: list[dict[str, float]] = []
    for _ in range(args.repeat):
        states: dict = {}
        totals = dict.fromkeys(STAGES, 0.0)
        size = 0
        for start in range(0, n, args.batch):
            msgs = [Incoming(v, None, "src", start % 3, start + j) for j, v in enumerate(values[start:start + args.batch])]
            marks.clear()
            t0 = clock()
            result = pipe.process(msgs, states.get)
            t1 = clock()
            body = body_of(result)
            t2 = clock()
            for track, (_, state) in result.states.items():
                states[track] = state
            size += len(body)
            motion = marks.get("motion", 0.0)
            totals["validate"] += marks["fences_start"] - t0
            totals["geofences"] += marks["fences_end"] - marks["fences_start"]
            totals["motion"] += motion
            totals["documents"] += t1 - marks["fences_end"] - motion
            totals["bulk_body"] += t2 - t1
        passes.append({k: v / n * 1e6 for k, v in totals.items()})
    out = {stage: round(statistics.median(p[stage] for p in passes), 2) for stage in STAGES}
    out["total_us_per_event"] = round(statistics.median(sum(p.values()) for p in passes), 2)
    out.update(events=n, batch=args.batch, repeat=args.repeat, body_bytes_per_event=round(size / n, 1),
               numpy_threads=os.environ.get("OMP_NUM_THREADS"), numpy=np.__version__)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
