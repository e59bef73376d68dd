"""OGC API - Features (Part 1 Core, GeoJSON, OpenAPI 3.0; Part 3 Filtering with CQL2) under /ogc of the web
server: routes in ``web.ogc.routes``, documents in ``web.ogc.views``, parameters in ``web.ogc.params`` and
``web.ogc.cql``, next-page cursors in ``web.ogc.cursor``; Elasticsearch queries stay in ``web.where``."""

from __future__ import annotations

import hashlib
import secrets

from aiohttp import web

from web.keys import METRICS, SETTINGS
from web.limiter import Limiter
from web.ogc import routes
from web.ogc.keys import CURSOR_KEY, PREFETCH, SCANS
from web.ogc.prefetch import Prefetched


def setup(app: web.Application) -> None:
    """Mount the API on ``app``: its routes, its scan bound (WEB_OGC_SCANS, queued and shed like every search)
    and its cursor key (WEB_OGC_CURSOR_SECRET, else random)."""
    settings = app[SETTINGS]
    app[SCANS] = Limiter(settings.web_ogc_scans, settings.web_es_queue, settings.web_queue_timeout)
    secret = settings.web_ogc_cursor_secret
    app[CURSOR_KEY] = hashlib.sha256(secret.encode()).digest() if secret else secrets.token_bytes(32)
    app[PREFETCH] = Prefetched(settings.web_ogc_scans)  # a next page per scan slot at most

    async def close(app: web.Application) -> None:
        app[PREFETCH].close()

    app.on_cleanup.append(close)
    app[METRICS].ogc_scans.set_function(lambda: app[SCANS].in_flight)
    routes.setup(app)
