"""``python -m replay constant|timestamp|generate|dlq``: argument parsing, progress, summary, exit codes.

Exit codes: 0 done (bad rows, oversized ones included, are skipped and counted, not errors);
1 runtime error: broker unreachable at start, unreadable file, a damaged (truncated or corrupt)
file, messages not acknowledged, or a broker that acknowledged nothing within --delivery-timeout;
2 usage error or ``--strict`` met a bad row; 130 interrupted by Ctrl-C. Every exit after the start
prints the summary (its ``error`` says why a run ended early).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Callable
from typing import Any

from geoiot import config
from geoiot.logs import quiet_repeats
from geoiot.malloc import keep_freed_heap
from replay.producer import DEFAULT_DELIVERY_TIMEOUT_S

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
log = logging.getLogger("replay")


def _non_negative(kind: type, noun: str) -> Callable[[str], Any]:
    """An argparse type that parses ``kind`` and refuses negatives, with a message naming the value."""
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {noun}") from None
        if value < 0:
            raise argparse.ArgumentTypeError(f"{text!r} must not be negative")
        return value
    return parse


_non_negative_float = _non_negative(float, "a number")
_positive_int = _non_negative(int, "an integer")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m replay", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="{constant,timestamp,generate,dlq}")

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("file", metavar="FILE", help="CSV (with or without header) or JSON Lines, optionally gzip")
    config.add_flags(common, config.envs("replay"))
    common.add_argument("--partitioner", choices=("hash", "balanced"), default="hash",
                        help="hash: Kafka's murmur2 of the track id (default); balanced: new tracks to the least-loaded partition")
    common.add_argument("--retime", choices=("keep", "now"), default="keep",
                        help="keep the file's event times (default) or rewrite them to the wall-clock send time")
    common.add_argument("--limit", type=_positive_int, help="stop after this many events")
    common.add_argument("--strict", action="store_true", help="stop at the first bad row with exit code 2")
    common.add_argument("--rejects", metavar="FILE", help="write bad rows as JSON Lines {line, reason, row}")
    common.add_argument("--json-summary", action="store_true", help="print the summary as one JSON object, last line of stdout")
    common.add_argument("--connect-timeout", type=_non_negative_float, default=10.0, metavar="S",
                        help="seconds to wait for Kafka at start (default 10)")
    common.add_argument("--delivery-timeout", type=_non_negative_float, default=DEFAULT_DELIVERY_TIMEOUT_S, metavar="S",
                        help="through a broker outage, retry a batch this long before stopping with the summary "
                             f"and exit code 1 (default {DEFAULT_DELIVERY_TIMEOUT_S:g}, Kafka's delivery.timeout.ms)")
    common.add_argument("--linger-ms", type=_positive_int, default=10, help="producer linger (default 10)")
    common.add_argument("--batch-bytes", type=_positive_int, default=960 * 1024, help="producer batch size (default 960 KiB)")
    noise = common.add_mutually_exclusive_group()
    noise.add_argument("-q", "--quiet", action="store_true", help="only errors and the summary")
    noise.add_argument("-v", "--verbose", action="store_true", help="debug logging")

    const = sub.add_parser("constant", parents=[common], help="send N events every interval (or as fast as possible)",
                           description="Play the file at a constant rate, in batches scheduled on a monotonic clock.")
    pace = const.add_mutually_exclusive_group()
    pace.add_argument("--rate", type=_non_negative_float, metavar="EV_PER_S", help="events per second (0 = as fast as possible)")
    pace.add_argument("--max-rate", action="store_true", help="as fast as possible")
    pace.add_argument("--events-per-interval", type=_positive_int, metavar="N", help="events per batch (default 100)")
    const.add_argument("--interval-ms", type=_non_negative_float, metavar="MS", help="batch period (default 1000)")
    const.add_argument("--loop", action="store_true", help="start over at the end of the file")
    const.add_argument("--workers", type=_positive_int, default=1, metavar="N",
                       help="max rate only: N processes share the partitions (default 1)")

    ts = sub.add_parser("timestamp", parents=[common], help="send each unique timestamp group, then wait",
                        description="Play each group of consecutive rows sharing a timestamp, then wait.")
    when = ts.add_mutually_exclusive_group()
    when.add_argument("--interval-ms", type=_non_negative_float, metavar="MS", help="wait between groups (default 3000)")
    when.add_argument("--speedup", type=_non_negative_float, metavar="X", help="the file's real gaps divided by X")

    gen = sub.add_parser("generate", help="write deterministic taxi tracks (headerless 19-column CSV)",
                         description="Deterministic vehicle tracks in the original taxi layout; same seed, same bytes. "
                                     "--points: trips reporting every second; --reports: a fleet reporting every "
                                     "--interval seconds, streamed (bounded memory: a million tracks and more).")
    gen.add_argument("--tracks", type=_positive_int, default=10, help="vehicles (default 10)")
    mode = gen.add_mutually_exclusive_group()
    mode.add_argument("--points", type=_positive_int, help="trips: reports per vehicle, one per second (default 100)")
    mode.add_argument("--reports", type=_positive_int, help="fleet: reports per vehicle, one per --interval")
    gen.add_argument("--interval", type=_positive_int, default=60, metavar="SECONDS",
                     help="fleet: seconds between a vehicle's reports; first reports spread over one (default 60)")
    gen.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    gen.add_argument("--out", required=True, metavar="FILE", help="output file (.gz for gzip)")
    gen.add_argument("--bbox", metavar="MINLON,MINLAT,MAXLON,MAXLAT", help="area (default NYC: -74.05,40.58,-73.75,40.88)")
    gen.add_argument("--start", default="2013-01-01 00:00:00", metavar="TIME", help="time of the first report (UTC)")
    gen.add_argument("--jfk-share", type=_non_negative_float, default=0.2, help="share of vehicles driving through JFK (default 0.2)")
    from replay import dlq

    dlq.add_parser(sub, _non_negative_float, _positive_int)
    return parser


def _setup_logging(args: argparse.Namespace) -> None:
    level = logging.WARNING if getattr(args, "quiet", False) else logging.DEBUG if getattr(args, "verbose", False) else logging.INFO
    logging.basicConfig(level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if level > logging.DEBUG:
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # its connection noise; our errors say it clearly


def _generate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import time

    from replay.generate import NYC_BBOX, write_csv, write_fleet_csv

    bbox = NYC_BBOX
    if args.bbox:
        try:
            bbox = tuple(float(v) for v in args.bbox.split(","))
        except ValueError:
            parser.error("--bbox must be four numbers: MINLON,MINLAT,MAXLON,MAXLAT")
    started = time.perf_counter()
    try:
        if args.reports is not None:
            rows = write_fleet_csv(args.out, args.tracks, args.reports, args.seed, interval=args.interval, bbox=bbox,
                                   start=args.start, jfk_share=args.jfk_share)
        else:
            args.points = 100 if args.points is None else args.points
            rows = write_csv(args.out, args.tracks, args.points, args.seed, bbox=bbox, start=args.start,
                             jfk_share=args.jfk_share)
    except ValueError as exc:
        parser.error(str(exc))
    except OSError as exc:
        print(f"replay generate: cannot write {args.out}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_ERROR
    seconds = time.perf_counter() - started
    shape = (f"{args.reports} reports every {args.interval} s" if args.reports is not None
             else f"{args.points} points")
    log.info("wrote %d rows (%d tracks x %s, seed %d) to %s in %.1f s (%.0f rows/s)", rows, args.tracks, shape,
             args.seed, args.out, seconds, rows / seconds if seconds else 0.0)
    return EXIT_OK


def _options(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Any:
    from geoiot.schema import SchemaError, load_preset
    from geoiot.timeparse import EventTimeBounds, zone
    from replay.pacing import rate_from_batches
    from replay.runner import ReplayOptions

    try:
        settings = config.from_args(args, component="replay")
        tz = zone(settings.iot_timezone)
        preset = load_preset(settings.iot_schema)
    except (ValueError, SchemaError) as exc:
        parser.error(str(exc))
    rate = interval_s = speedup = None
    if args.command == "constant":
        if args.max_rate or args.rate == 0:
            rate = None
        elif args.rate is not None:
            rate = args.rate
            interval_s = args.interval_ms / 1000 if args.interval_ms else None
        else:
            n = 100 if args.events_per_interval is None else args.events_per_interval
            ms = 1000.0 if args.interval_ms is None else args.interval_ms
            try:
                rate = rate_from_batches(n, ms)
            except ValueError as exc:
                parser.error(str(exc))
            interval_s = ms / 1000
    else:
        speedup = args.speedup
        interval_s = None if speedup else (3.0 if args.interval_ms is None else args.interval_ms / 1000)
    if getattr(args, "workers", 1) > 1 and (rate is not None or args.limit is not None or args.strict or args.rejects):
        parser.error("--workers above 1 needs --max-rate (or --rate 0) and no --limit, --strict or --rejects")
    return ReplayOptions(
        path=args.file, topic=settings.iot_topic, bootstrap=settings.kafka_bootstrap, mode=args.command,
        preset=preset, tz=tz, rate=rate, interval_s=interval_s, speedup=speedup, retime=args.retime,
        time_bounds=EventTimeBounds.from_settings(settings),
        loop=getattr(args, "loop", False), limit=args.limit, partitioner=args.partitioner,
        partitions=settings.iot_partitions, replication=settings.iot_replication, strict=args.strict,
        rejects=args.rejects, connect_timeout=args.connect_timeout, delivery_timeout=args.delivery_timeout,
        linger_ms=args.linger_ms,
        batch_bytes=args.batch_bytes)


async def _progress(replay: Any, quiet: bool) -> None:
    """Live bar with rate on a terminal; a plain line every few seconds otherwise."""
    if quiet:
        return
    if sys.stderr.isatty():
        from rich.console import Console
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        # stderr: stdout is kept for the summary (its last line is the JSON one with --json-summary).
        with Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"), TextColumn("{task.fields[line]}"),
                      TimeElapsedColumn(), transient=True, refresh_per_second=5,
                      console=Console(stderr=True)) as bar:
            task = bar.add_task(f"{replay.o.mode} -> {replay.o.topic}", line="", total=replay.o.limit)
            while True:
                acked, queued, skipped = replay.progress()
                elapsed = max(replay.stats.elapsed(), 1e-9)
                bar.update(task, completed=acked,
                           line=f"sent {acked:,}  queued {queued:,}  skipped {skipped:,}  {acked / elapsed:,.0f} ev/s")
                await asyncio.sleep(0.2)
    while True:
        await asyncio.sleep(replay.o.progress_every_s)
        acked, queued, skipped = replay.progress()
        elapsed = max(replay.stats.elapsed(), 1e-9)
        wanted = f" (requested {replay.stats.requested_rate:g}/s)" if replay.stats.requested_rate else ""
        log.info("progress sent=%d queued=%d skipped=%d rate=%.0f/s%s", acked, queued, skipped, acked / elapsed, wanted)


async def _run(options: Any, args: argparse.Namespace) -> tuple[int, dict[str, Any] | None]:
    from replay.producer import ReplayError
    from replay.runner import Replay, StrictStop

    replay = Replay(options)
    loop = asyncio.get_running_loop()

    def first_signal(sig: int) -> None:
        # Stop sending, flush and summarise; a second Ctrl-C interrupts the flush itself.
        log.warning("interrupted: flushing what was queued (Ctrl-C again to abandon it)")
        replay.stop.set()
        loop.remove_signal_handler(sig)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, first_signal, sig)
    progress = asyncio.create_task(_progress(replay, args.quiet))
    code = EXIT_OK
    try:
        summary = await replay.run()
    except StrictStop as exc:
        print(f"replay: --strict: bad row at {exc}", file=sys.stderr)
        return EXIT_USAGE, replay.summary()
    except (ReplayError, FileNotFoundError, OSError) as exc:
        print(f"replay: error: {exc}", file=sys.stderr)
        summary = replay.summary()  # zero counts when nothing was sent; still one JSON line for scripts
        summary["error"] = str(exc)
        return EXIT_ERROR, summary
    except Exception as exc:  # a bug or an error nobody foresaw: still one line and the summary, not a traceback
        log.debug("unexpected error", exc_info=True)
        message = f"unexpected {type(exc).__name__}: {exc} (-v shows where)"
        print(f"replay: error: {message}", file=sys.stderr)
        summary = replay.summary()
        summary["error"] = message
        return EXIT_ERROR, summary
    finally:
        progress.cancel()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    if summary["failed"]:
        print(f"replay: error: {summary['failed']} messages were not acknowledged: {summary.get('error')}",
              file=sys.stderr)
        code = EXIT_ERROR
    elif summary.get("error"):
        print(f"replay: error: {summary['error']}", file=sys.stderr)
        code = EXIT_ERROR
    wanted = summary.get("requested_rate")
    if wanted and summary["achieved_rate"] < 0.98 * wanted and not summary["interrupted"]:
        log.warning("could not keep up: achieved %.1f of the requested %g events/s", summary["achieved_rate"], wanted)
    if summary["interrupted"]:
        code = EXIT_INTERRUPTED
    return code, summary


def _run_workers(options: Any, workers: int) -> tuple[int, dict[str, Any] | None]:
    from replay.producer import ReplayError
    from replay.workers import run_workers

    try:
        summary, errors = run_workers(options, workers)
    except ReplayError as exc:
        print(f"replay: error: {exc}", file=sys.stderr)
        return EXIT_ERROR, {"sent": 0, "skipped": 0, "failed": 0, "seconds": 0.0, "events_per_s": 0.0,
                            "partitions": {}, "error": str(exc), "mode": options.mode, "topic": options.topic,
                            "interrupted": False}
    for message in errors:
        print(f"replay: error: {message}", file=sys.stderr)
    if summary is not None and not errors and summary.get("error"):
        print(f"replay: error: {summary['error']}", file=sys.stderr)
    if summary is None:
        return EXIT_ERROR, None
    if errors or summary["failed"] or summary.get("error"):
        return EXIT_ERROR, summary
    return (EXIT_INTERRUPTED if summary["interrupted"] else EXIT_OK), summary


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args)
    if args.command == "generate":
        return _generate(args, parser)
    if args.command == "dlq":
        from replay import dlq

        return dlq.main(args, parser, (EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED))
    options = _options(args, parser)
    keep_freed_heap()  # one orjson.dumps per row: see geoiot.malloc
    quiet_repeats()  # with --verbose, a broker outage: aiokafka's errors once per period, with a count
    from replay.summary import human, to_json

    try:
        if getattr(args, "workers", 1) > 1:
            code, summary = _run_workers(options, args.workers)
        else:
            code, summary = asyncio.run(_run(options, args))
    except KeyboardInterrupt:
        print("replay: interrupted twice: queued messages were abandoned", file=sys.stderr)
        return EXIT_INTERRUPTED
    if summary is not None:
        if not args.quiet or not args.json_summary:
            print(human(summary), file=sys.stderr)
        if args.json_summary:
            print(to_json(summary), flush=True)
    return code
