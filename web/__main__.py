"""``python -m web``: the read-only query API and the Leaflet map."""

from __future__ import annotations

import argparse
import json
import logging

from aiohttp import web

from geoiot import config
from web.app import init_app

FLAGS = ["ES_URL", "IOT_INDEX", "IOT_SCHEMA", "WEB_PORT", "WEB_HOST", "KAFKA_BOOTSTRAP", "IOT_ALERTS_TOPIC",
         "IOT_GEOFENCES", "MAP_TILE_URL", "MAP_REFRESH_MS", "MAP_MARKER_THRESHOLD"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m web", description=__doc__)
    config.add_flags(parser, FLAGS)
    parser.add_argument("--log-level", default="INFO", help="Python logging level (default INFO)")
    args = parser.parse_args(argv)
    try:
        settings = config.from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("elastic_transport").setLevel(logging.WARNING)  # one line per search otherwise
    logging.getLogger("aiokafka").setLevel(logging.ERROR)  # its own reconnect noise; we log one line per retry
    url = f"http://{settings.web_host}:{settings.web_port}/"
    logging.getLogger("web").info(json.dumps({"event": "listening", "url": url, "index": settings.iot_index,
                                              "es": settings.es_url}))
    web.run_app(init_app(settings), host=settings.web_host, port=settings.web_port, access_log=None,
                print=None)


if __name__ == "__main__":
    main()
