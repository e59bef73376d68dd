"""A worker's py-spy samples (``py-spy record -f raw``) by stage of the batch: where its CPU goes.

Each stack is given the stage of its innermost frame that a rule names (rules in ``STAGES`` order for the
same frame); stacks no rule names are "other" (event loop, metrics, GC). Waiting threads and start-up imports are left
out of the shares. Works for the
row-wise core (before ``core``) and the batch core alike. With ``--us-per-event X`` (the worker's CPU per
event, from ``bench/agents_end_to_end.py``) each share is also given in µs per event; the sampled worker
is on CPU in every sample (py-spy records only active threads by default).

    .venv/bin/python -m bench.pyspy_stages FILE.txt [--us-per-event 20.5]
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter

# (stage, regex over one frame "function (file:line)"), most specific first.
STAGES: list[tuple[str, str]] = [
    ("geofences", r"\(agents/core/geofence\.py|shapely"),
    ("motion", r"advance_batch|_advance|\(agents/core/motion\.py"),
    ("decode/validate", r"decode_batch|^decode |typed_record|_fast_core|core_values|parse_time|coerce |"
                        r"Pipeline\._validate|EventTimeBounds|index_for|doc_id|_daily"),
    ("documents/serialisation", r"serialized_action|build_into|^build |^fill |^action |latest_action|keep_newest|"
                                r"Pipeline\._annotate|Pipeline\._collect|\(agents/core/bulk\.py|geohash|_process_bulk_chunk|"
                                r"expand_action|_chunk_actions|Pipeline\.process|BatchResult"),
    ("bulk I/O", r"\(agents/store/sink\.py|elasticsearch/|elastic_transport|streaming_bulk|async_bulk|"
                 r"aiohttp/(client|http_writer|connector|streams)"),
    ("fetch", r"SourceStream\._fetch|getmany|aiokafka/consumer/fetcher|Fetcher\.|<genexpr> \(agents/worker/stream\.py|"
              r"decode.*\(aiokafka/protocol|aiokafka/record"),
    ("state and commit", r"SourceStream\.complete|_send_all|_send_batches|SourceStream\._commit|\(agents/worker/track_table\.py|"
                         r"SourceStream\.prepare|dead_letter|aiokafka/producer"),
]
_RULES = [(stage, re.compile(rx)) for stage, rx in STAGES]
# Not CPU of the batches: a thread waiting (py-spy does not always tell idle threads apart), start-up imports.
_IDLE = re.compile(r"^(select|poll|epoll|.*Selector\.select|_worker \(concurrent|wait \(threading|.*\.wait \(threading)")
_STARTUP = re.compile(r"importlib")


def stage_of(frames: list[str]) -> str:
    if frames and _IDLE.search(frames[-1]):
        return "idle"
    if any(_STARTUP.search(f) for f in frames):
        return "start-up"
    for frame in reversed(frames):  # innermost first
        for stage, rule in _RULES:
            if rule.search(frame):
                return stage
    return "other"


def shares(path: str) -> tuple[dict[str, float], int]:
    counts: Counter[str] = Counter()
    total = 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            stack, _, n = line.rstrip("\n").rpartition(" ")
            if not n.isdigit():
                continue
            frames = [fr for fr in stack.split(";") if not fr.startswith("process ") and not fr.startswith("thread ")]
            counts[stage_of(frames)] += int(n)
            total += int(n)
    busy = total - counts["idle"] - counts["start-up"]
    return {stage: counts[stage] / busy for stage in [s for s, _ in STAGES] + ["other"]}, busy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("file")
    ap.add_argument("--us-per-event", type=float, default=None)
    args = ap.parse_args()
    share, total = shares(args.file)
    out = {"busy_samples": total, "share": {k: round(v, 3) for k, v in share.items()}}
    if args.us_per_event:
        out["us_per_event"] = {k: round(v * args.us_per_event, 1) for k, v in share.items()}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
