"""What glibc's heap trimming costs a batch of JSON documents, with and without ``geoiot.malloc``.

    .venv/bin/python -m bench.json_heap_churn [--batch 2000 --rounds 20 --repeat 3]

A worker serialises a batch of documents with ``orjson.dumps`` and keeps every result until the bulk
request is sent, then frees them all. This times exactly that (µs per document) in fresh processes, one
with glibc's defaults (the baseline) and one after ``keep_freed_heap()``, alternating, plus the same
documents serialised and dropped at once (no heap growth: what the cost would be without the churn).
Any ``MALLOC_*`` variable in the environment is removed for the children, or it would decide for both.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, sys, time
import orjson
from geoiot.malloc import keep_freed_heap
from testkit.actions import action, build
mode, batch, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
applied = keep_freed_heap() if mode == "tuned" else False
record = {"taxiId": "123", "observationTime": 1356998400000, "longitude": -73.9, "latitude": 40.7,
          "passengerCount": 2, "tripDistance": 1.5, "medallion": "53A13043B026C48BBF33FEFF9243A8F5",
          "vendor_id": "VTS", "rate_code": 1, "store_and_fwd_flag": None}
docs = [action("idx", "123", 1356998400000 + i, build(record, -73.9, 40.7, ["jfk"], 1.0, 2.0, 3.0, 5))["_source"]
        for i in range(batch)]
dumps = orjson.dumps
def kept():
    return [dumps(d) for d in docs]
def dropped():
    for d in docs:
        dumps(d)
out = {"applied": applied}
for name, fn in (("kept", kept), ("dropped", dropped)):
    fn()
    began = time.perf_counter()
    for _ in range(rounds):
        fn()
    out[name] = (time.perf_counter() - began) / rounds / batch * 1e6
print(json.dumps(out))
"""


def run(mode: str, batch: int, rounds: int) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run([sys.executable, "-c", CHILD, mode, str(batch), str(rounds)], check=True,
                         capture_output=True, text=True, env=env, cwd=ROOT)
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, list[dict]] = {"default": [], "tuned": []}
    for _ in range(args.repeat):
        for mode in results:
            results[mode].append(run(mode, args.batch, args.rounds))
    print("| glibc heap | orjson.dumps, results kept (µs/doc) | results dropped (µs/doc) | kept vs default |")
    print("|---|---|---|---|")
    base = statistics.median(r["kept"] for r in results["default"])
    for mode, runs in results.items():
        kept = statistics.median(r["kept"] for r in runs)
        dropped = statistics.median(r["dropped"] for r in runs)
        label = "default (baseline)" if mode == "default" else f"keep_freed_heap() (applied: {runs[0]['applied']})"
        print(f"| {label} | {kept:.2f} | {dropped:.2f} | {kept / base:.2f} |")


if __name__ == "__main__":
    main()
