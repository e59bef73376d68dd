"""``python -m web``: the read-only query API and the Leaflet map."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys

from geoiot import config
from geoiot.config import Settings
from geoiot.logs import quiet_repeats
from geoiot.malloc import keep_freed_heap
from web import fences, server
from web.app import init_app

FLAGS = config.envs("web")
log = logging.getLogger("web")


def new_loop(use_uvloop: bool) -> tuple[asyncio.AbstractEventLoop, str]:
    """uvloop when asked for and installed, else asyncio's own. Opt-in and not a dependency: on the benchmark
    machine it made no measurable difference (docs/BENCHMARKS.md, Web)."""
    if use_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.new_event_loop(), "uvloop"
    return asyncio.new_event_loop(), "asyncio"


def serve(settings: Settings, *, reuse_port: bool, use_uvloop: bool) -> None:
    loop, kind = new_loop(use_uvloop)
    url = f"http://{settings.web_host}:{settings.web_port}/"
    log.info(json.dumps({"event": "listening", "url": url, "index": settings.iot_index, "es": settings.es_url,
                         "pid": os.getpid(), "loop": kind}))
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(server.run(init_app(settings), settings, reuse_port=reuse_port))
    finally:
        loop.close()


def run_workers(settings: Settings, workers: int, use_uvloop: bool) -> None:
    """``workers`` forked servers on one port (SO_REUSEPORT: the kernel spreads connections), so requests are
    shaped on several cores; SIGTERM/SIGINT stop them all. Each has its own cache, metrics and alerts buffer."""
    children: list[int] = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            try:
                serve(settings, reuse_port=True, use_uvloop=use_uvloop)
            finally:
                os._exit(0)
        children.append(pid)

    def stop(signum: int, _frame: object) -> None:
        for pid in children:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    status = 0
    for pid in children:
        _, code = os.waitpid(pid, 0)
        status = status or os.waitstatus_to_exitcode(code)
    sys.exit(status)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m web", description=__doc__)
    config.add_flags(parser, FLAGS)
    parser.add_argument("--log-level", default="INFO", help="Python logging level (default INFO)")
    parser.add_argument("--workers", type=int, default=1,
                        help="server processes sharing the port via SO_REUSEPORT (default 1)")
    parser.add_argument("--uvloop", action="store_true",
                        help="run on uvloop if it is installed (pip install uvloop); default asyncio's loop")
    args = parser.parse_args(argv)
    try:
        settings = config.from_args(args, component="web")
        fences.load_tokens(settings.iot_tokens_file)  # a malformed tokens file stops the server with one line
    except ValueError as exc:  # ConfigError and TokenFileError
        parser.error(str(exc))
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("elastic_transport").setLevel(logging.WARNING)  # one line per search otherwise
    logging.getLogger("aiokafka").setLevel(logging.ERROR)  # its own reconnect noise; we log one line per retry
    keep_freed_heap()  # per-request JSON churn: see geoiot.malloc
    quiet_repeats()  # the alerts consumer reconnects in a loop while Kafka is away: see geoiot.logs
    if args.workers == 1:
        serve(settings, reuse_port=False, use_uvloop=args.uvloop)
    else:
        run_workers(settings, args.workers, args.uvloop)


if __name__ == "__main__":
    main()
