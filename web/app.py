"""The aiohttp application: its state, and the lifecycles of the Elasticsearch clients, the alerts consumer
and the event streams' fan-out.

Layout follows aio-libs' demos: ``init_app(settings)`` builds the app; resources that need closing live
in ``cleanup_ctx``; handlers are in ``web.views`` and their paths in ``web.routes``, middlewares in ``web.middlewares``,
Elasticsearch access in ``web.search``, the typed state keys in ``web.keys``; the HTTP server around it is
``web.server``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from geoiot.config import Settings
from geoiot.malloc import release_freed_heap
from geoiot.schema import load_preset
from web import alerts, assets, events, fences, ogc, routes, search
from web.cache import TTLCache
from web.compression import CompressedBodies
from web.keys import ALERTS, CACHE, COMPRESSED, HUB, LIVE, METRICS, PRESET, SEARCH, SETTINGS
from web.live.mirror import Mirror
from web.limiter import Limiter
from web.metrics import Metrics
from web.middlewares import compress, errors, observe

log = logging.getLogger("web")

# The map's files: web/bundled/ of an installed wheel, else the checkout (web.assets owns the layout).
ROOT = assets.asset_root()
STATIC_DIR = ROOT / assets.STATIC
NODE_MODULES = ROOT / assets.NODE_MODULES
VENDOR = assets.VENDOR


def search_ctx(es: Any = None) -> Any:
    """The app's :class:`web.search.Search`: over ``es`` when given (a client the caller owns, or an in-process
    fake), else over clients of ES_URL made at start and closed at cleanup."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        settings = app[SETTINGS]
        client, raw = (es, es) if es is not None else search.clients(settings)
        limiter = Limiter(settings.web_es_concurrency, settings.web_es_queue, settings.web_queue_timeout)
        app[SEARCH] = door = search.Search(client, raw, limiter=limiter, metrics=app[METRICS],
                                           preset=app[PRESET], index=settings.iot_index)
        log.info(json.dumps({"event": "es_client", "hosts": settings.es_hosts, "index": settings.iot_index}))
        yield
        if es is None:
            await door.close()

    return ctx


async def alerts_ctx(app: web.Application) -> AsyncIterator[None]:
    """The alerts consumer as a background task, cancelled at shutdown."""
    settings = app[SETTINGS]
    task = asyncio.create_task(alerts.consume(settings.kafka_bootstrap, settings.iot_alerts_topic,
                                              app[ALERTS], app[METRICS]), name="alerts-consumer")
    yield
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass


async def live_ctx(app: web.Application) -> AsyncIterator[None]:
    """The live layer's mirror (web.live), loading in the background from start: /healthz is ready once it
    read the topic to its end; /api/latest, /api/aggregate?source=latest and the event views answer from it."""
    mirror = app[LIVE] = Mirror(app[SETTINGS], app[PRESET])
    metrics = app[METRICS]
    metrics.live_tracks.set_function(lambda: len(mirror.table))
    metrics.live_records.set_function(lambda: mirror.follower.records)
    metrics.live_lag.set_function(lambda: mirror.follower.lag)
    metrics.live_synced.set_function(lambda: int(mirror.synced))
    mirror.start()
    yield
    await mirror.stop()


async def hub_ctx(app: web.Application) -> AsyncIterator[None]:
    """The event streams' fan-out (web.events): its views read the live mirror (web.live)."""
    settings, metrics = app[SETTINGS], app[METRICS]
    fetch = app[LIVE].fetch
    hub = app[HUB] = events.Hub(fetch, app[ALERTS], period=settings.web_sse_refresh,
                                queue_size=settings.web_sse_queue, max_clients=settings.web_sse_max_clients,
                                max_views=settings.web_sse_max_views,
                                counters=events.Counters(metrics), view_features=settings.web_sse_view_features,
                                feature_budget=settings.web_sse_feature_budget, release=release_freed_heap)
    metrics.sse_clients.set_function(lambda: hub.clients)
    metrics.sse_views.set_function(lambda: len(hub.views))
    metrics.sse_features.set_function(lambda: hub.held)
    yield
    await hub.close()


async def close_streams(app: web.Application) -> None:
    """At shutdown, end the event streams at once (else the server would wait for them to time out)."""
    if HUB in app:
        await app[HUB].close()


def init_app(settings: Settings, *, cache_ttl: float = 1.0, consume_alerts: bool = True,
             alerts_maxlen: int | None = None, es: Any = None) -> web.Application:
    """The web application for ``settings``; ``cache_ttl=0`` disables the aggregation cache (benchmarks);
    ``es``: the Elasticsearch client to search with (see :func:`search_ctx`)."""
    app = web.Application(middlewares=[observe, compress, errors])
    app[SETTINGS] = settings
    app[PRESET] = load_preset(settings.iot_schema)
    app[METRICS] = Metrics()
    app[CACHE] = TTLCache(cache_ttl)
    app[COMPRESSED] = CompressedBodies()
    app[ALERTS] = alerts.AlertBuffer(alerts_maxlen or settings.web_sse_ring)
    app.cleanup_ctx.append(search_ctx(es))
    if consume_alerts:
        app.cleanup_ctx.append(alerts_ctx)
    app.cleanup_ctx.append(live_ctx)
    app.cleanup_ctx.append(hub_ctx)
    app.on_shutdown.append(close_streams)
    routes.setup(app)
    fences.setup(app, settings)
    ogc.setup(app)
    add_static_routes(app)
    return app


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html")


def add_static_routes(app: web.Application) -> None:
    """The map's page, its files and the vendored Leaflet (found next to the package, see STATIC_DIR)."""
    r = app.router
    r.add_get("/", index)
    if STATIC_DIR.is_dir():
        r.add_static("/static", STATIC_DIR)
    for prefix, folder in VENDOR.items():
        path = NODE_MODULES / folder
        if path.is_dir():
            r.add_static(prefix, path)
        else:
            log.warning(json.dumps({"event": "vendor_missing", "path": str(path),
                                    "hint": "run `npm ci` at the repository root; the map needs Leaflet"}))
