"""The two replay modes: constant rate (N events every interval, or as fast as possible) and
timestamp-driven (each unique timestamp group, at a fixed interval or at the file's pace / speedup).

Both read the file lazily, skip and count bad rows, route every track to one partition, and count
as sent only what Kafka acknowledged. A damaged file or a broker that acknowledges nothing within the
delivery timeout ends the run early but normally: the summary then has ``error``, and every row taken
from the file (up to ``last_line``) is counted as sent, skipped or failed. ``run`` is the Python API
the CLI, tests and benchmarks share.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import timezone, tzinfo
from pathlib import Path
from typing import IO, Any

import orjson

from geoiot.logs import QuietLog
from geoiot.schema import Preset, load_preset
from geoiot.timeparse import EventTimeBounds
from replay.pacing import Clock, Timestamps, batch_interval, constant_schedule
from replay.partitioning import make_partitioner
from replay.producer import (DEFAULT_BATCH_BYTES, DEFAULT_DELIVERY_TIMEOUT_S, DEFAULT_LINGER_MS, BatchingProducer,
                             ReplayError, ensure_topic, oversize_reason)
from replay.reader import DamagedFile, Rejected, read_records
from replay.summary import Stats, build_summary

log = logging.getLogger("replay")

MAX_RATE_CHUNK = 2000  # records converted between two hand-overs to the producer at max rate
BEHIND_LIMIT_S = 1.0  # a backlog beyond this is dropped from the schedule (and reported), not burst out
BEHIND_LOG_PERIOD_S = 10.0


class StrictStop(Exception):
    """``--strict`` met a bad row."""

    def __init__(self, rejected: Rejected) -> None:
        super().__init__(f"line {rejected.line_no}: {rejected.reason}")
        self.rejected = rejected


@dataclass
class ReplayOptions:
    path: str | Path
    topic: str
    bootstrap: str = "localhost:9092"
    mode: str = "constant"  # constant | timestamp
    preset: Preset | str = "taxi"
    tz: tzinfo = timezone.utc
    rate: float | None = None  # constant: events/s; None or 0 = as fast as possible
    interval_s: float | None = None  # constant: batch period (default from the rate); timestamp: group gap
    speedup: float | None = None  # timestamp: file gaps divided by this
    retime: str = "keep"  # keep | now
    time_bounds: EventTimeBounds | None = None  # rows outside are rejected (only with retime keep)
    loop: bool = False
    limit: int | None = None
    partitioner: str = "hash"
    partitions: int = 3
    replication: int = 1
    strict: bool = False
    rejects: str | Path | None = None
    connect_timeout: float = 10.0
    delivery_timeout: float = DEFAULT_DELIVERY_TIMEOUT_S
    linger_ms: int = DEFAULT_LINGER_MS
    batch_bytes: int = DEFAULT_BATCH_BYTES
    progress_every_s: float = 5.0
    worker: tuple[int, int] | None = None  # (index, count): convert and send only this worker's partitions
    extra: dict[str, Any] = field(default_factory=dict)


class Replay:
    """One run: owns the producer, the counters and the stop flag (set by Ctrl-C)."""

    def __init__(self, options: ReplayOptions) -> None:
        self.o = options
        self.preset = load_preset(options.preset) if isinstance(options.preset, str) else options.preset
        rate = options.rate if options.rate and options.rate > 0 else None
        self.stats = Stats(options.mode, options.topic, rate if options.mode == "constant" else None)
        self.stats.core = self.preset.core
        self.stop = asyncio.Event()
        self.producer: BatchingProducer | None = None
        self._rejects_out: IO[str] | None = None
        self._owns: Callable[[Any], bool] | None = None
        self.on_reject: Callable[[Rejected], None] | None = None
        self._line_no = 0  # file line of the record last taken from records()
        self._behind = QuietLog(log, BEHIND_LOG_PERIOD_S)

    # --- source -------------------------------------------------------------------------------

    def records(self) -> Iterator[dict[str, Any]]:
        """Valid records in file order (again and again with ``loop``), bad rows counted and reported."""
        o = self.o
        while True:
            valid = 0
            self.stats.last_line = 0
            try:
                for line_no, item in read_records(o.path, self.preset, o.tz, self._owns,
                                                  o.time_bounds if o.retime == "keep" else None):
                    if type(item) is Rejected:
                        self._reject(item)
                        continue
                    valid += 1
                    self._line_no = line_no
                    yield item
            except DamagedFile as exc:  # what came before the damage was yielded: end the run there
                self.stats.error = str(exc)
                return
            if not o.loop or valid == 0 or self.stop.is_set():
                return

    def _reject(self, rejected: Rejected) -> None:
        reported = self.stats.reject(rejected)
        self.stats.last_line = max(self.stats.last_line, rejected.line_no)
        if self._rejects_out is not None:
            self._rejects_out.write(json.dumps({"line": rejected.line_no, "reason": rejected.reason,
                                                "row": rejected.raw}) + "\n")
        if self.o.strict:
            raise StrictStop(rejected)
        if reported:
            log.warning("skipped line %d: %s", rejected.line_no, rejected.reason)
        if self.on_reject is not None:
            self.on_reject(rejected)

    # --- sending ------------------------------------------------------------------------------

    def _emit(self, chunk: Iterable[dict[str, Any]], partition_of: Callable[[bytes], int],
              lines: list[int] | None = None) -> int:
        """Serialise and append a chunk of records to their partitions' batches; returns how many were
        taken (queued or skipped as too large). ``lines``: the records' file lines, when the chunk was
        read ahead (else the line of each is the one records() just yielded)."""
        producer = self.producer
        assert producer is not None
        append = producer.append
        dumps = orjson.dumps
        track = self.preset.track
        # the value holds the track id (the key) too, so a value under half the payload always fits
        half_payload = producer.max_payload // 2
        n = oversized = 0
        now_ms = time.time_ns() // 1_000_000 if self.o.retime == "now" else None
        time_field = self.preset.time
        try:
            for record in chunk:
                n += 1
                if now_ms is not None:
                    record[time_field] = now_ms
                key = record[track].encode()
                value = dumps(record)
                if len(value) > half_payload and (size := producer.too_large(key, value)) is not None:
                    oversized += 1  # before the skip: --strict raises there
                    self._skip_oversized(value, size, lines[n - 1] if lines else self._line_no)
                    continue
                append(partition_of(key), key, value)
        finally:
            self.stats.queued += n - oversized
            if n:
                self.stats.last_line = max(self.stats.last_line, lines[n - 1] if lines else self._line_no)
        return n

    def _skip_oversized(self, value: bytes, size: int, line_no: int) -> None:
        """Count and report a row no Kafka request could carry: skipped alone, before it joins a batch."""
        assert self.producer is not None
        reason = oversize_reason(size, self.producer.max_request_size)
        self._reject(Rejected(line_no, reason, value.decode(), "size"))

    async def _sleep_until(self, clock: Clock, offset: float) -> float:
        delay = offset - clock.elapsed()
        if delay > 0:
            try:
                await asyncio.wait_for(self.stop.wait(), delay)
            except asyncio.TimeoutError:
                pass
        return max(0.0, clock.elapsed() - offset)

    async def _constant(self, records: Iterator[dict[str, Any]], partition_of: Callable[[bytes], int]) -> None:
        rate = self.stats.requested_rate
        producer = self.producer
        assert producer is not None
        if rate is None:
            while not self.stop.is_set():
                if not self._emit(itertools.islice(records, MAX_RATE_CHUNK), partition_of):
                    break
                await producer.dispatch()
            return
        interval = self.o.interval_s or batch_interval(rate)
        clock = Clock()
        for offset, count in constant_schedule(rate, interval):
            late = await self._sleep_until(clock, offset)
            if self.stop.is_set():
                break
            if late > max(BEHIND_LIMIT_S, 2 * interval):
                self.stats.behind_warnings += 1
                achieved = self.stats.queued / max(clock.elapsed(), 1e-9)
                self._behind.warning("behind", "cannot keep up: %.1fs behind schedule, achieved %.0f of %.0f "
                                     "events/s; dropping the backlog from the schedule", late, achieved, rate)
                clock.rebase(offset)
            sent = self._emit(itertools.islice(records, count), partition_of) if count else 0
            await producer.dispatch(all_open=True)
            if sent:  # real time from the start to this batch plus its own period: honest even after a rebase
                self.stats.paced_seconds = time.monotonic() - self.stats.started + interval
            if sent < count:
                break

    async def _timestamp(self, records: Iterator[dict[str, Any]], partition_of: Callable[[bytes], int]) -> None:
        producer = self.producer
        assert producer is not None
        if self.o.speedup is not None:
            pace = Timestamps(speedup=self.o.speedup)
        else:
            pace = Timestamps(interval_s=3.0 if self.o.interval_s is None else self.o.interval_s)
        clock = Clock()
        for group_time, batch, lines in self._groups(records):
            await self._sleep_until(clock, pace.deadline(group_time))
            if self.stop.is_set():
                break
            self._emit(batch, partition_of, lines)
            await producer.dispatch(all_open=True)

    def _groups(self, records: Iterator[dict[str, Any]]) -> Iterator[tuple[Any, list[dict[str, Any]], list[int]]]:
        """Runs of consecutive records sharing a time, with their file lines."""
        time_field = self.preset.time
        batch: list[dict[str, Any]] = []
        lines: list[int] = []
        current: Any = None
        for record in records:
            value = record[time_field]
            if batch and value != current:
                yield current, batch, lines
                batch, lines = [], []
            current = value
            batch.append(record)
            lines.append(self._line_no)
        if batch:
            yield current, batch, lines

    async def run(self) -> dict[str, Any]:
        """Replay the file; returns the summary. Raises ReplayError / StrictStop for the CLI to report."""
        o = self.o
        if not Path(o.path).is_file():
            raise FileNotFoundError(f"no such file: {o.path}")
        partitions = await ensure_topic(o.bootstrap, o.topic, o.partitions, o.replication, o.connect_timeout)
        partitioner = make_partitioner(o.partitioner, partitions)
        partition_of: Callable[[bytes], int] = partitioner
        if o.worker is not None:
            index, count = o.worker
            if o.limit is not None or o.strict or o.mode != "constant" or self.stats.requested_rate:
                raise ValueError("several workers only replay at max rate, without --limit or --strict")

            def owns(raw: Any) -> bool:
                # Every worker routes every keyed row (so balanced assignments agree), converts only its own.
                if type(raw) is not str or not raw.strip():
                    return index == 0  # rows without a usable track id: worker 0 rejects and counts them
                return partitioner(raw.strip().encode()) % count == index

            self._owns = owns
            partition_of = partitioner.assigned.__getitem__  # already routed (and counted) by owns()
        self.producer = BatchingProducer(o.bootstrap, o.topic, linger_ms=o.linger_ms, batch_bytes=o.batch_bytes,
                                         connect_timeout=o.connect_timeout, delivery_timeout=o.delivery_timeout)
        await self.producer.start()
        self._rejects_out = open(o.rejects, "w", encoding="utf-8") if o.rejects else None
        self.stats.started = time.monotonic()
        records = self.records()
        if o.limit is not None:
            records = itertools.islice(records, o.limit)
        try:
            try:
                if o.mode == "constant":
                    await self._constant(records, partition_of)
                elif o.mode == "timestamp":
                    await self._timestamp(records, partition_of)
                else:
                    raise ValueError(f"unknown mode {o.mode!r}")
            except ReplayError:
                if not self.producer.gave_up:
                    raise
                # Kafka acknowledged nothing within the delivery timeout: every queued row is counted
                # failed; the run ends here with its summary (the error is in it)
        finally:
            try:
                await self.producer.stop()  # flushes: every queued message is acknowledged or failed
            finally:
                self.stats.finished = time.monotonic()
                self.stats.interrupted = self.stop.is_set()
                self._behind.flush()
                if self._rejects_out is not None:
                    self._rejects_out.close()
        return self.summary()

    def summary(self) -> dict[str, Any]:
        delivery = self.producer.delivery if self.producer else None
        acked = dict(delivery.acked) if delivery else {}
        summary = build_summary(self.stats, acked, delivery.failed if delivery else 0)
        errors = [self.stats.error] if self.stats.error else []
        if delivery is not None and delivery.error is not None:
            errors.append(str(delivery.error) or type(delivery.error).__name__)
        if errors:
            summary["error"] = "; ".join(errors)
        return summary

    def progress(self) -> tuple[int, int, int]:
        """(acknowledged, queued, skipped) right now, for progress displays."""
        acked = self.producer.delivery.sent if self.producer else 0
        return acked, self.stats.queued, self.stats.skipped
