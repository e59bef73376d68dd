"""``python -m replay dlq``: re-drive dead letters to the topic they came from, once their cause is fixed.

A dead letter (``geoiot.deadletter.dead_letter``) names its source topic, partition and offset and carries the
original value (UTF-8 text or base64); the worker sends it with the original key as the Kafka key. This
command reads the dead-letter topic from its start up to the end offsets it finds when it starts (letters
added meanwhile, e.g. events dead-lettered again, wait for the next run), keeps the letters selected by
reason, time (the letter's Kafka timestamp: when it was dead-lettered) and source partition, and re-sends
each original value with its original key to its source topic and partition, at a bounded rate, with the
replay's producer (acks=all, idempotence). A letter that keeps only the start of a value over 900 kB takes
the whole value and key from the source topic at the partition and offset it names (when that offset is
still there and its value starts with the letter's). Re-sending twice is harmless: the documents' ``_id`` is
``<track>:<epoch ms>``, so an event stored twice overwrites itself.

Nothing is committed and no consumer group is used: a run is a read of the topic, repeatable at will.
The summary counts every letter read as selected (re-sent, failed, or planned with ``--dry-run``) or
skipped under one kind (:data:`SKIP_KINDS`).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
from aiokafka.errors import KafkaError

from geoiot import config, topics
from geoiot.deadletter import original_bytes
from geoiot.timeparse import TimeParseError, format_ms, parse_time
from replay.pacing import Clock, batch_interval, constant_schedule
from replay.producer import DEFAULT_DELIVERY_TIMEOUT_S, BatchingProducer, ReplayError

log = logging.getLogger("replay.dlq")

DEFAULT_RATE = 1000.0
MAX_REPORTED_SKIPS = 20
# Why a letter read was not re-sent: the summary's ``skip_reasons`` has exactly these keys.
SKIP_KINDS = {
    "reason": "its reason matches none of --reason",
    "time": "dead-lettered outside --since/--until",
    "partition": "its source partition is not one of --partition",
    "topic": "its source topic is not one of --source-topic",
    "not_a_letter": "not a dead letter (not JSON, or no topic/partition/offset/original)",
    "no_value": "the original message had no value: nothing to re-send",
    "truncated": "the letter keeps only the start of a value over 900 kB, and the source topic no longer holds "
                 "the whole one at the partition and offset it names",
    "no_topic": "its source topic (or that partition of it) does not exist",
    "too_large": "over the producer's maximum request size",
    "limit": "beyond --limit",
}


@dataclass(frozen=True)
class Letter:
    """A parsed dead letter: where its event came from, the original key and value bytes, and why."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    reason: str
    truncated: bool


class NotALetter(ValueError):
    """A message of the dead-letter topic that no worker wrote."""


def parse_letter(value: bytes | None, record_key: bytes | None) -> Letter:
    """The letter in a dead-letter message. Its Kafka key is the original key's exact bytes (the worker
    sends it so); the letter's own ``key`` text is used only for a message that has none."""
    try:
        dead = orjson.loads(value or b"")
        topic, partition, offset = dead["topic"], dead["partition"], dead["offset"]
        if not isinstance(topic, str) or type(partition) is not int or type(offset) is not int:
            raise TypeError("topic, partition or offset of the wrong type")
        raw = original_bytes(dead)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise NotALetter(f"{type(exc).__name__}: {exc}") from None
    key = record_key
    if key is None and isinstance(dead.get("key"), str):
        key = dead["key"].encode("utf-8")
    return Letter(topic, partition, offset, key, raw, str(dead.get("reason", "")),
                  bool(dead.get("original_truncated")))


@dataclass(frozen=True)
class Selection:
    """Which letters to re-send: reason substrings (any, case-insensitive), a dead-letter time range in
    epoch ms (inclusive), source partitions and source topics (empty: all)."""

    reasons: tuple[str, ...] = ()
    since_ms: int | None = None
    until_ms: int | None = None
    partitions: tuple[int, ...] = ()
    topics: tuple[str, ...] = ()

    def skip(self, letter: Letter, timestamp_ms: int) -> str | None:
        """The skip kind of a letter, or None when it is to be re-sent."""
        if self.topics and letter.topic not in self.topics:
            return "topic"
        if self.partitions and letter.partition not in self.partitions:
            return "partition"
        if self.reasons and not any(r.lower() in letter.reason.lower() for r in self.reasons):
            return "reason"
        if (self.since_ms is not None and timestamp_ms < self.since_ms) or \
                (self.until_ms is not None and timestamp_ms > self.until_ms):
            return "time"
        if letter.value is None:
            return "no_value"
        if letter.truncated:
            return "truncated"
        return None


@dataclass
class Tally:
    """The run's counts; ``summary()`` is the JSON the command prints."""

    dlq_topic: str
    dry_run: bool
    rate: float
    read: int = 0
    selected: int = 0
    skip_reasons: dict[str, int] = field(default_factory=dict)
    first_skipped: list[dict[str, Any]] = field(default_factory=list)
    planned: dict[str, dict[int, int]] = field(default_factory=dict)  # destination topic -> partition -> letters
    scanned: dict[int, list[int]] = field(default_factory=dict)  # dlq partition -> [first offset, end offset)
    started: float = field(default_factory=time.monotonic)

    def skipped(self, kind: str, dlq_partition: int, dlq_offset: int) -> None:
        self.skip_reasons[kind] = self.skip_reasons.get(kind, 0) + 1
        if len(self.first_skipped) < MAX_REPORTED_SKIPS:
            self.first_skipped.append({"dlq_partition": dlq_partition, "dlq_offset": dlq_offset, "kind": kind})

    def summary(self, producers: dict[str, BatchingProducer], error: str | None) -> dict[str, Any]:
        resent = {t: {str(p): n for p, n in sorted(prod.delivery.acked.items())} for t, prod in producers.items()}
        seconds = time.monotonic() - self.started
        out: dict[str, Any] = {
            "dlq_topic": self.dlq_topic, "dry_run": self.dry_run, "rate": self.rate,
            "read": self.read, "selected": self.selected,
            "resent": sum(prod.delivery.sent for prod in producers.values()),
            "failed": sum(prod.delivery.failed for prod in producers.values()),
            "skipped": sum(self.skip_reasons.values()),
            "skip_reasons": dict(sorted(self.skip_reasons.items())),
            "first_skipped": self.first_skipped,
            "selected_by_topic": {t: {str(p): n for p, n in sorted(parts.items())}
                                  for t, parts in sorted(self.planned.items())},
            "resent_by_topic": resent,
            "scanned": {str(p): r for p, r in sorted(self.scanned.items())},
            "seconds": round(seconds, 3),
        }
        if error:
            out["error"] = error
        return out


@dataclass
class Options:
    bootstrap: str
    dlq_topic: str
    selection: Selection
    rate: float
    dry_run: bool = False
    limit: int | None = None
    connect_timeout: float = 10.0
    delivery_timeout: float = DEFAULT_DELIVERY_TIMEOUT_S


class Redrive:
    """One run: scan the dead-letter topic to its end offsets at start, re-send what is selected."""

    def __init__(self, options: Options) -> None:
        self.o = options
        self.tally = Tally(options.dlq_topic, options.dry_run, options.rate)
        self.producers: dict[str, BatchingProducer] = {}
        self._partitions: dict[str, int] = {}  # destination topic -> partition count (0: missing)
        self._clock = Clock()
        self._schedule = constant_schedule(options.rate, batch_interval(options.rate))
        self._allowance = 0
        self._interval = batch_interval(options.rate)
        self._source: Any = None  # a consumer of the source topics, for truncated letters

    async def run(self) -> dict[str, Any]:
        error: str | None = None
        async with topics.admin_client(self.o.bootstrap, timeout=self.o.connect_timeout) as admin:
            try:
                await self._scan(admin)
            except ReplayError as exc:
                error = str(exc)
            finally:
                for producer in self.producers.values():
                    try:
                        await producer.stop()  # flushes: every selected letter is acknowledged or counted failed
                    except ReplayError as exc:
                        error = error or str(exc)
        failed = [p.delivery.error for p in self.producers.values() if p.delivery.error is not None]
        if error is None and failed:
            error = str(failed[0])
        return self.tally.summary(self.producers, error)

    async def _scan(self, admin: Any) -> None:
        """Read every partition of the dead-letter topic from its start to its end offset at start."""
        from aiokafka import AIOKafkaConsumer, TopicPartition

        found = await topics.describe(admin, [self.o.dlq_topic], timeout=self.o.connect_timeout)
        if self.o.dlq_topic not in found:
            raise ReplayError(f"the dead-letter topic {self.o.dlq_topic} does not exist")
        consumer = AIOKafkaConsumer(bootstrap_servers=self.o.bootstrap, group_id=None, enable_auto_commit=False,
                                    auto_offset_reset="earliest")
        try:
            await asyncio.wait_for(consumer.start(), self.o.connect_timeout)
            parts = [TopicPartition(self.o.dlq_topic, p) for p in range(found[self.o.dlq_topic].partitions)]
            consumer.assign(parts)
            begins = await consumer.beginning_offsets(parts)
            ends = await consumer.end_offsets(parts)
            for tp in parts:
                self.tally.scanned[tp.partition] = [begins[tp], ends[tp]]
            await consumer.seek_to_beginning(*parts)
            left = {tp for tp in parts if begins[tp] < ends[tp]}
            while left:
                batch = await consumer.getmany(*left, timeout_ms=1000, max_records=500)
                for tp, messages in batch.items():
                    for msg in messages:
                        if msg.offset < ends[tp]:
                            await self._one(admin, msg)
                for tp in list(left):
                    if await consumer.position(tp) >= ends[tp]:
                        left.discard(tp)
        finally:
            await consumer.stop()
            if self._source is not None:
                await self._source.stop()

    async def _whole(self, letter: Letter) -> Letter | None:
        """A truncated letter completed from the source topic: the key and value at its partition and offset,
        when still there and starting with the letter's bytes; None otherwise."""
        from aiokafka import AIOKafkaConsumer, TopicPartition

        if self._source is None:
            self._source = AIOKafkaConsumer(bootstrap_servers=self.o.bootstrap, group_id=None,
                                            enable_auto_commit=False, auto_offset_reset="none")
            await asyncio.wait_for(self._source.start(), self.o.connect_timeout)
        tp = TopicPartition(letter.topic, letter.partition)
        self._source.assign([tp])
        begin = (await self._source.beginning_offsets([tp]))[tp]
        end = (await self._source.end_offsets([tp]))[tp]
        if not begin <= letter.offset < end:
            return None
        self._source.seek(tp, letter.offset)
        deadline = asyncio.get_running_loop().time() + self.o.connect_timeout
        while asyncio.get_running_loop().time() < deadline:
            for msg in (await self._source.getmany(tp, timeout_ms=1000, max_records=1)).get(tp, []):
                if msg.offset != letter.offset or msg.value is None or not msg.value.startswith(letter.value or b""):
                    return None  # compacted away, or another message: not the letter's value
                return replace(letter, key=msg.key, value=msg.value, truncated=False)
        return None

    async def _one(self, admin: Any, msg: Any) -> None:
        tally = self.tally
        tally.read += 1
        try:
            letter = parse_letter(msg.value, msg.key)
        except NotALetter:
            tally.skipped("not_a_letter", msg.partition, msg.offset)
            return
        kind = self.o.selection.skip(letter, msg.timestamp)
        if kind == "truncated" and await self._partition_count(admin, letter.topic) > letter.partition:
            whole = await self._whole(letter)
            if whole is not None:
                letter, kind = whole, None
        if kind is None and await self._partition_count(admin, letter.topic) <= letter.partition:
            kind = "no_topic"
        if kind is None and self.o.limit is not None and tally.selected >= self.o.limit:
            kind = "limit"
        producer = None
        if kind is None and not self.o.dry_run:
            producer = await self._producer(letter.topic)
            if producer.too_large(letter.key or b"", letter.value or b"") is not None:
                kind = "too_large"
        if kind is not None:
            tally.skipped(kind, msg.partition, msg.offset)
            return
        tally.selected += 1
        per_topic = tally.planned.setdefault(letter.topic, {})
        per_topic[letter.partition] = per_topic.get(letter.partition, 0) + 1
        if producer is not None:
            await self._pace()
            producer.append(letter.partition, letter.key, letter.value)  # type: ignore[arg-type]

    async def _pace(self) -> None:
        """Wait for the rate's next slot; at each tick the open batches are handed over."""
        while self._allowance == 0:
            offset, due = next(self._schedule)
            wait = offset - self._clock.elapsed()
            if wait < -self._interval:
                self._clock.rebase(offset)  # the scan fell behind: no burst to catch up
            for producer in self.producers.values():
                await producer.dispatch(all_open=True)
            if wait > 0:
                await asyncio.sleep(wait)
            self._allowance += due
        self._allowance -= 1

    async def _partition_count(self, admin: Any, topic: str) -> int:
        if topic not in self._partitions:
            found = await topics.describe(admin, [topic], timeout=self.o.connect_timeout)
            self._partitions[topic] = found[topic].partitions if topic in found else 0
        return self._partitions[topic]

    async def _producer(self, topic: str) -> BatchingProducer:
        producer = self.producers.get(topic)
        if producer is None:
            producer = BatchingProducer(self.o.bootstrap, topic, connect_timeout=self.o.connect_timeout,
                                        delivery_timeout=self.o.delivery_timeout)
            await producer.start()
            self.producers[topic] = producer
        return producer


def add_parser(sub: Any, positive_float: Any, positive_int: Any) -> None:
    """The ``dlq`` sub-command of ``python -m replay``."""
    p = sub.add_parser("dlq", help="re-send dead letters to their source topic (select, --dry-run, summary)",
                       description="Re-send the original key and value of selected dead letters to the topic and "
                                   "partition they came from, at a bounded rate.")
    config.add_flags(p, ["KAFKA_BOOTSTRAP", "IOT_DLQ_TOPIC"])
    p.add_argument("--reason", action="append", default=[], metavar="TEXT",
                   help="only letters whose reason contains TEXT (case-insensitive; repeat for any of several)")
    p.add_argument("--since", metavar="TIME", help="only letters dead-lettered at or after TIME (ISO 8601 or epoch)")
    p.add_argument("--until", metavar="TIME", help="only letters dead-lettered at or before TIME")
    p.add_argument("--partition", action="append", type=positive_int, default=[], metavar="N",
                   help="only letters from this source partition (repeat for several)")
    p.add_argument("--source-topic", action="append", default=[], metavar="TOPIC",
                   help="only letters from this source topic (repeat for several; default: any)")
    p.add_argument("--rate", type=positive_float, default=DEFAULT_RATE, metavar="EV_PER_S",
                   help=f"re-sent letters per second at most (default {DEFAULT_RATE:g})")
    p.add_argument("--limit", type=positive_int, help="re-send at most this many letters")
    p.add_argument("--dry-run", action="store_true", help="send nothing; the summary says what would be re-sent")
    p.add_argument("--json-summary", action="store_true", help="print the summary as one JSON object, last line of stdout")
    p.add_argument("-q", "--quiet", action="store_true", help="only errors and the summary")
    p.add_argument("--connect-timeout", type=positive_float, default=10.0, metavar="S",
                   help="seconds to wait for Kafka at start (default 10)")
    p.add_argument("--delivery-timeout", type=positive_float, default=DEFAULT_DELIVERY_TIMEOUT_S, metavar="S",
                   help=f"seconds a batch may wait for Kafka before the run stops (default {DEFAULT_DELIVERY_TIMEOUT_S:g})")


def options(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Options:
    try:
        settings = config.from_args(args, component="replay")
        since = None if args.since is None else parse_time(args.since)
        until = None if args.until is None else parse_time(args.until)
    except (ValueError, TimeParseError) as exc:
        parser.error(str(exc))
    if args.rate <= 0:
        parser.error("--rate must be positive: the redrive is always paced")
    selection = Selection(tuple(args.reason), since, until, tuple(args.partition), tuple(args.source_topic))
    return Options(settings.kafka_bootstrap, settings.iot_dlq_topic, selection, args.rate, args.dry_run, args.limit,
                   args.connect_timeout, args.delivery_timeout)


def human(summary: dict[str, Any]) -> str:
    verb = "would re-send" if summary["dry_run"] else f"re-sent {summary['resent']}, failed {summary['failed']} of"
    kinds = ", ".join(f"{k}={n}" for k, n in summary["skip_reasons"].items()) or "none"
    return (f"dlq redrive of {summary['dlq_topic']}: read {summary['read']}, {verb} {summary['selected']} selected, "
            f"skipped {summary['skipped']} ({kinds}) in {summary['seconds']:.2f}s")


def main(args: argparse.Namespace, parser: argparse.ArgumentParser, codes: Sequence[int]) -> int:
    """Run the redrive; ``codes`` are the CLI's (ok, error, usage, interrupted) exit codes."""
    ok, failed, _, interrupted = codes
    opts = options(args, parser)
    since = "" if opts.selection.since_ms is None else f" since {format_ms(opts.selection.since_ms)}"
    log.info("redrive of %s%s at %g/s%s", opts.dlq_topic, since, opts.rate, " (dry run)" if opts.dry_run else "")
    try:
        summary = asyncio.run(_run(opts))
    except KeyboardInterrupt:
        print("replay dlq: interrupted", file=sys.stderr)
        return interrupted
    if summary.get("error"):
        print(f"replay dlq: error: {summary['error']}", file=sys.stderr)
    if not args.quiet or not args.json_summary:
        print(human(summary), file=sys.stderr)
    if args.json_summary:
        print(orjson.dumps(summary).decode(), flush=True)
    return failed if summary.get("error") or summary["failed"] else ok


async def _run(opts: Options) -> dict[str, Any]:
    redrive = Redrive(opts)
    try:
        return await redrive.run()
    except topics.TopicsError as exc:
        return redrive.tally.summary(redrive.producers, str(exc))
    except (KafkaError, asyncio.TimeoutError, OSError) as exc:
        return redrive.tally.summary(redrive.producers, f"Kafka at {opts.bootstrap}: {type(exc).__name__}: {exc}")
