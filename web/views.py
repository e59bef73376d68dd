"""Request handlers of the JSON API: validate (web.params, web.where), search through the app's
web.search.Search or read the live mirror (web.live), shape the answer (web.geojson). Their paths are in
web.routes."""

from __future__ import annotations

import json
import logging

import orjson
from aiohttp import hdrs, web
from aiohttp_sse import EventSourceResponse

from geoiot.documents import field_types
from web import geojson, openapi, params, where
from web.geo import zoom_table
from web.keys import ALERTS, CACHE, HUB, LIVE, METRICS, PRESET, SEARCH, SETTINGS
from web.events import SSE_RETRY_MS, SSE_SEND_TIMEOUT
from web.limiter import Busy
from web.responses import json_response

log = logging.getLogger("web")


async def extent(request: web.Request) -> web.Response:
    params.no_params(request.query)
    resp = await request.app[SEARCH].search("extent", where.extent_body(request.app[PRESET]))
    return json_response(geojson.extent(resp))


async def aggregate(request: web.Request) -> web.Response:
    app = request.app
    p = where.aggregate_params(request.query, app[SETTINGS].web_max_grid_cells, field_types(app[PRESET]))
    body = where.aggregate_body(app[PRESET], p)
    # source=latest counts current tracks (the live mirror, web.live), else observations (Elasticsearch)
    door, live = app[SEARCH], app[LIVE]
    # the key is the source and the whole search body: bbox, window, precision, fence and every where filter
    key = p.source + orjson.dumps(body, option=orjson.OPT_SORT_KEYS).decode()

    async def compute() -> bytes:
        if p.source == params.LATEST_SOURCE:
            return live.aggregate(p)
        return geojson.aggregate_payload(await door.search("aggregate", body), p.precision)

    payload, cached = await app[CACHE].get_or_compute(key, compute)
    app[METRICS].cache.labels("hit" if cached else "miss").inc()
    return json_response(None, raw=payload)


async def observations(request: web.Request) -> web.Response:
    preset = request.app[PRESET]
    p = where.observation_params(request.query, field_types(preset))
    resp = await request.app[SEARCH].search("observations", where.observations_body(preset, p))
    return json_response(geojson.observations(preset, resp))


async def latest(request: web.Request) -> web.Response:
    """Current positions: the newest report of each track in view (the live mirror, web.live), newest first.
    Answers are shared like aggregations (web.cache, 1 s): maps polling one view cost one computation."""
    app = request.app
    p = params.normal_view(where.latest_params(request.query, field_types(app[PRESET])))
    key = "latest" + repr(p)  # normal_view: equal views (filters in any order) are one key

    async def compute() -> bytes:
        return app[LIVE].latest_payload(p)

    payload, cached = await app[CACHE].get_or_compute(key, compute)
    app[METRICS].latest_cache.labels("hit" if cached else "miss").inc()
    return json_response(None, raw=payload)


async def events(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events: alerts as they are read, and the view's latest positions as they change (the
    shared fan-out of web.events). A bad query is a 400 before the stream starts."""
    app = request.app
    settings = app[SETTINGS]
    p = where.event_params(request.query, request.headers.get(hdrs.LAST_EVENT_ID), field_types(app[PRESET]))
    hub = app[HUB]
    try:
        sub = hub.subscribe(p.view, None if p.resume is None else dict(p.resume))
    except OverflowError as exc:
        reason = "sse_budget" if "BUDGET" in str(exc) else "sse_views" if "VIEWS" in str(exc) else "sse_clients"
        raise Busy(reason, f"server busy: {exc}") from None
    except RuntimeError as exc:
        raise web.HTTPServiceUnavailable(text=str(exc)) from None
    log.info(json.dumps({"event": "sse_open", "clients": hub.clients, "views": len(hub.views),
                         "resume": p.resume is not None}))
    resp = EventSourceResponse(ping_interval=settings.web_sse_ping, send_timeout=SSE_SEND_TIMEOUT)
    try:
        await resp.prepare(request)
        await resp.write(f"retry: {SSE_RETRY_MS}\r\n\r\n".encode())
        # A client that left is noticed within a refresh period (its connection's transport is gone), not
        # only at the next write, so its view, and the view's memory, end soon after.
        while not sub.closed and resp.is_connected() and request.transport is not None:
            for event in await sub.get(min(settings.web_sse_ping, settings.web_sse_refresh)):
                await resp.send(event.data, id=event.id, event=event.kind)
    except (ConnectionError, TimeoutError, RuntimeError):
        pass  # the client went away, or stalled past SSE_SEND_TIMEOUT and was cut off
    finally:
        hub.unsubscribe(sub)
        if resp.prepared and resp.is_connected():
            resp.stop_streaming()
        log.info(json.dumps({"event": "sse_close", "clients": hub.clients, "dropped": sub.dropped}))
    return resp


async def track(request: web.Request) -> web.Response:
    """The window's reports of one track, paged with search_after (where.TRACK_PAGE a search) up to
    ``limit`` (params.MAX_TRACK_POINTS at most); ``complete`` says whether that was all of them."""
    preset, door = request.app[PRESET], request.app[SEARCH]
    p = where.track_params(request.match_info["id"], request.query, field_types(preset))
    coords, times = [], []
    fetched, total, pages, after, exhausted = 0, 0, 0, None, False
    while fetched < p.limit:
        size = min(where.TRACK_PAGE, p.limit - fetched)
        resp = await door.search("track", where.track_body(preset, p, size, after))
        pages += 1
        if after is None:
            total = geojson.total(resp)
        hits = resp.get("hits", {}).get("hits", [])
        for hit in hits:
            position = geojson.position(preset, dict(hit.get("_source", {})))
            if position is not None:
                coords.append(position)
                times.append(int(hit["sort"][0]))
        fetched += len(hits)
        if len(hits) < size or fetched >= total:
            exhausted = True
            break
        after = int(hits[-1]["sort"][0])
    if not coords:
        return json_response({"error": f"no observations of track {p.track!r} in that window"}, 404)
    return json_response(geojson.track(p.track, coords, times, total, pages, exhausted and fetched >= total))


async def recent_alerts(request: web.Request) -> web.Response:
    p = params.alert_params(request.query)
    buffer = request.app[ALERTS]
    return json_response({"connected": buffer.connected, "alerts": buffer.recent(p.since, p.limit)})


async def map_config(request: web.Request) -> web.Response:
    params.no_params(request.query)
    settings, preset = request.app[SETTINGS], request.app[PRESET]
    url = settings.map_tile_url
    return json_response({
        "tileUrl": url,
        "tileAttribution": "&copy; OpenStreetMap contributors" if "openstreetmap" in url else "",
        "refreshMs": settings.map_refresh_ms,
        "markerThreshold": settings.map_marker_threshold,
        "staleMs": settings.map_stale_ms,  # the map's default for fading a track without recent reports
        "zoomPrecision": zoom_table(),
        "maxLimit": params.MAX_LIMIT,
        "index": settings.iot_index,
        "schema": {"track": preset.track, "time": preset.time, "lon": preset.lon, "lat": preset.lat},
        "fields": dict(field_types(preset)),  # what `where` filters may name, with their types
    })


async def openapi_json(request: web.Request) -> web.Response:
    return json_response(openapi.document())


async def healthz(request: web.Request) -> web.Response:
    """Ready when Elasticsearch answers and the live mirror read its topic to the end found at start."""
    app = request.app
    up, cluster = await app[SEARCH].health()
    body = {"status": "ok" if up else "unavailable", "elasticsearch": up, "cluster": cluster,
            "alerts_consumer": app[ALERTS].connected}
    mirror = app[LIVE]
    body["live"] = {"synced": mirror.synced, "tracks": len(mirror.table), "records": mirror.follower.records,
                    "lag": mirror.follower.lag}
    if up and not mirror.synced:
        body["status"] = "loading"
        up = False
    return json_response(body, 200 if up else 503)


async def metrics(request: web.Request) -> web.Response:
    body, ctype = request.app[METRICS].render()
    return web.Response(body=body, headers={"Content-Type": ctype})
