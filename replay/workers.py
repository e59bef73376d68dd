"""Max-rate replay in several processes: one Python process is CPU-bound (row typing, JSON), so
``--workers N`` splits the topic's partitions among N processes that all read the same file.

Each worker converts and sends only the rows of its partitions, so every track still goes to one
partition in file order through one producer; the summaries are merged into one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import multiprocessing as mp
import os
import queue
import signal
import time
from typing import Any

from replay.producer import ensure_topic
from replay.runner import Replay, ReplayOptions
from replay.summary import MAX_REPORTED_REJECTS


def _worker(options: ReplayOptions, results: Any) -> None:
    async def go() -> None:
        replay = Replay(options)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, replay.stop.set)
        try:
            results.put(("ok", await replay.run(), None))
        except Exception as exc:  # reported by the parent, which owns the exit code
            results.put(("error", replay.summary() if replay.producer else None, str(exc)))

    asyncio.run(go())


def merge(summaries: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    """One summary out of the workers' (counts add up, partitions are disjoint)."""
    sent = sum(s["sent"] for s in summaries)
    partitions: dict[str, int] = {}
    reasons: dict[str, int] = {}
    for s in summaries:
        partitions.update(s["partitions"])
        for kind, n in s["skip_reasons"].items():
            reasons[kind] = reasons.get(kind, 0) + n
    rejects = sorted((r for s in summaries for r in s["rejects"]), key=lambda r: r["line"])[:MAX_REPORTED_REJECTS]
    merged = dict(summaries[0], sent=sent, skipped=sum(s["skipped"] for s in summaries),
                  failed=sum(s["failed"] for s in summaries), seconds=round(seconds, 3),
                  events_per_s=round(sent / seconds, 1) if seconds > 0 else 0.0,
                  partitions={p: partitions[p] for p in sorted(partitions, key=int)},
                  skip_reasons=dict(sorted(reasons.items())), rejects=rejects,
                  interrupted=any(s["interrupted"] for s in summaries), workers=len(summaries),
                  last_line=max(s["last_line"] for s in summaries))
    if "achieved_rate" in merged:
        merged["achieved_rate"] = merged["events_per_s"]
    errors = [s["error"] for s in summaries if s.get("error")]
    if errors:
        merged["error"] = errors[0]
    return merged


def run_workers(options: ReplayOptions, workers: int) -> tuple[dict[str, Any] | None, list[str]]:
    """Run ``workers`` processes; returns the merged summary and the workers' error messages."""
    asyncio.run(ensure_topic(options.bootstrap, options.topic, options.partitions, options.replication,
                             options.connect_timeout))  # once, before the workers race to create it
    ctx = mp.get_context("fork")
    results = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(dataclasses.replace(options, worker=(i, workers)), results), daemon=True)
             for i in range(workers)]
    started = time.monotonic()

    def forward(sig: int, _frame: Any) -> None:  # the workers flush and report; we merge
        for proc in procs:
            if proc.pid is not None and proc.is_alive():
                os.kill(proc.pid, sig)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    outcomes: list[tuple[str, Any, Any]] = []
    try:
        for proc in procs:
            proc.start()
        while len(outcomes) < len(procs):
            try:
                outcomes.append(results.get(timeout=0.5))
            except queue.Empty:
                if not any(proc.is_alive() for proc in procs) and results.empty():
                    outcomes.append(("error", None, "a worker died without a summary"))
        for proc in procs:
            proc.join()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    seconds = time.monotonic() - started
    summaries = [summary for _, summary, _ in outcomes if summary is not None]
    errors = [message for status, _, message in outcomes if status != "ok" and message]
    return (merge(summaries, seconds) if summaries else None), errors
