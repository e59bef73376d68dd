"""Request handlers: validate (web.params), build the query (web.queries), ask Elasticsearch, shape GeoJSON."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import orjson
from aiohttp import hdrs, web
from aiohttp.web import AppKey
from elasticsearch import AsyncElasticsearch
from aiohttp_sse import EventSourceResponse

from geoiot.documents import GEOFENCES, HEADING, SPEED, field_types, latest_index
from web import openapi, params, queries
from web.geo import CELL_PREFIXES, cell_prefix, zoom_table
from web.keys import ALERTS, CACHE, ES, HUB, LIMITER, METRICS, PRESET, SETTINGS
from web.events import SSE_RETRY_MS, SSE_SEND_TIMEOUT
from web.limiter import Busy
from web.responses import json_response

log = logging.getLogger("web")


async def search(request: web.Request, name: str, body: dict[str, Any], index: str | None = None) -> dict[str, Any]:
    """Run one search on the index alias (or ``index``) in a slot of the limiter (web.limiter.Busy when none
    comes soon), timed per query kind."""
    return await app_search(request.app, name, body, index)


async def app_search(app: web.Application, name: str, body: dict[str, Any], index: str | None = None,
                     client: AppKey[AsyncElasticsearch] = ES) -> Any:
    """:func:`search` for the application's own tasks (the event streams' views); ``client``: the key of the
    Elasticsearch client (web.keys.RAW_ES answers bytes)."""
    metrics = app[METRICS]
    queued = time.perf_counter()
    async with app[LIMITER].slot():
        began = time.perf_counter()
        metrics.queue_wait.observe(began - queued)
        try:
            response = await app[client].search(index=index or app[SETTINGS].iot_index, **body)
        except Exception as exc:
            metrics.es_errors.labels(name, type(exc).__name__).inc()
            raise
        finally:
            metrics.es_latency.labels(name).observe(time.perf_counter() - began)
    return response.body


def _total(resp: dict[str, Any]) -> int:
    return int(resp.get("hits", {}).get("total", {}).get("value", 0))


async def extent(request: web.Request) -> web.Response:
    params.no_params(request.query)
    preset = request.app[PRESET]
    resp = await search(request, "extent", queries.extent_body(preset))
    aggs = resp.get("aggregations", {})
    start, end = aggs.get("start", {}).get("value"), aggs.get("end", {}).get("value")
    bounds = aggs.get("bounds", {}).get("bounds")
    bbox = None
    if bounds:
        tl, br = bounds["top_left"], bounds["bottom_right"]
        bbox = [tl["lon"], br["lat"], br["lon"], tl["lat"]]
    return json_response({"start": None if start is None else int(start), "end": None if end is None else int(end),
                          "count": _total(resp), "bbox": bbox})


def aggregate_payload(resp: dict[str, Any], precision: int) -> bytes:
    """The FeatureCollection of the cells, written as bytes from per-cell pre-serialised fragments: the same
    JSON as ``orjson.dumps`` of ``cell_feature``s, without building (and then walking) a dict per cell.
    The loop is the hot path of the busiest endpoint, hence local names and no per-cell function call."""
    buckets = resp.get("aggregations", {}).get("cells", {}).get("buckets", [])
    parts: list[bytes] = []
    append, dumps, prefixes = parts.append, orjson.dumps, CELL_PREFIXES
    in_cells = 0
    for b in buckets:
        cell, count = b["key"], b["doc_count"]
        in_cells += count
        prefix = prefixes.get(cell) or cell_prefix(cell)
        location = b.get("centroid", {}).get("location")
        tail = dumps((location["lon"], location["lat"])) if location else b"null"
        append(b"%s%d,\"centroid\":%s}}" % (prefix, count, tail))
    total = _total(resp)
    head = orjson.dumps({"type": "FeatureCollection", "precision": precision, "total": total,
                         "truncated": in_cells < total})
    return b"".join((head[:-1], b',"features":[', b",".join(parts), b"]}"))


async def aggregate(request: web.Request) -> web.Response:
    p = params.aggregate_params(request.query, request.app[SETTINGS].web_max_grid_cells,
                                field_types(request.app[PRESET]))
    body = queries.aggregate_body(request.app[PRESET], p)
    # source=latest counts current tracks (one document each) in the latest index, else observations
    index = latest_index(request.app[SETTINGS].iot_index) if p.source == params.LATEST_SOURCE else None
    # the key is the source and the whole search body: bbox, window, precision, fence and every where filter
    key = p.source + orjson.dumps(body, option=orjson.OPT_SORT_KEYS).decode()

    async def compute() -> bytes:
        return aggregate_payload(await search(request, "aggregate", body, index), p.precision)

    payload, cached = await request.app[CACHE].get_or_compute(key, compute)
    request.app[METRICS].cache.labels("hit" if cached else "miss").inc()
    return json_response(None, raw=payload)


def _position(preset: Any, source: dict[str, Any]) -> list[float] | None:
    geometry = source.pop(queries.GEO_FIELD, None)
    if isinstance(geometry, dict) and "lon" in geometry and "lat" in geometry:
        return [geometry["lon"], geometry["lat"]]
    lon, lat = source.get(preset.lon), source.get(preset.lat)
    return [lon, lat] if isinstance(lon, (int, float)) and isinstance(lat, (int, float)) else None


async def observations(request: web.Request) -> web.Response:
    p = params.observation_params(request.query, field_types(request.app[PRESET]))
    preset = request.app[PRESET]
    resp = await search(request, "observations", queries.observations_body(preset, p))
    features = []
    for hit in resp.get("hits", {}).get("hits", []):
        source = dict(hit.get("_source", {}))
        position = _position(preset, source)
        if position is None:
            continue
        features.append({"type": "Feature", "id": hit["_id"],
                         "geometry": {"type": "Point", "coordinates": position}, "properties": source})
    return json_response({"type": "FeatureCollection", "total": _total(resp), "features": features})


def latest_feature(preset: Any, source: dict[str, Any]) -> dict[str, Any] | None:
    """A track's current position as a GeoJSON Point: track, time, speed, heading and fences named, every
    other attribute of its document under ``attributes``."""
    position = _position(preset, source)
    if position is None:
        return None
    track = source.pop(preset.track, None)
    time_ms = source.pop(preset.time, None)
    for name in (preset.lon, preset.lat):
        source.pop(name, None)
    props = {"track": track, "time": time_ms, SPEED: source.pop(SPEED, None), HEADING: source.pop(HEADING, None),
             GEOFENCES: source.pop(GEOFENCES, None) or [], "attributes": source}
    return {"type": "Feature", "id": track, "geometry": {"type": "Point", "coordinates": position},
            "properties": props}


async def latest_features(app: web.Application, p: params.LatestParams,
                          name: str = "latest") -> tuple[int, list[dict[str, Any]]]:
    """The tracks in view (total) and the current positions of the first ``limit`` of them, newest first."""
    preset = app[PRESET]
    resp = await app_search(app, name, queries.latest_body(preset, p), latest_index(app[SETTINGS].iot_index))
    features = [f for f in (latest_feature(preset, dict(hit.get("_source", {})))
                            for hit in resp.get("hits", {}).get("hits", [])) if f is not None]
    return _total(resp), features


async def latest(request: web.Request) -> web.Response:
    """Current positions: the newest report of each track in view (the agents' latest index), newest first.
    Answers are shared like aggregations (web.cache, 1 s): maps polling one view cost one search."""
    app = request.app
    p = params.normal_view(params.latest_params(request.query, field_types(app[PRESET])))
    key = "latest" + orjson.dumps(queries.latest_body(app[PRESET], p), option=orjson.OPT_SORT_KEYS).decode()

    async def compute() -> bytes:
        total, features = await latest_features(app, p)
        return orjson.dumps({"type": "FeatureCollection", "total": total, "features": features})

    payload, cached = await app[CACHE].get_or_compute(key, compute)
    app[METRICS].latest_cache.labels("hit" if cached else "miss").inc()
    return json_response(None, raw=payload)


async def events(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events: alerts as they are read, and the view's latest positions as they change (the
    shared fan-out of web.events). A bad query is a 400 before the stream starts."""
    app = request.app
    settings = app[SETTINGS]
    p = params.event_params(request.query, request.headers.get(hdrs.LAST_EVENT_ID), field_types(app[PRESET]))
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
    """The window's reports of one track, paged with search_after (queries.TRACK_PAGE a search) up to
    ``limit`` (params.MAX_TRACK_POINTS at most); ``complete`` says whether that was all of them."""
    p = params.track_params(request.match_info["id"], request.query, field_types(request.app[PRESET]))
    preset = request.app[PRESET]
    coords, times = [], []
    fetched, total, pages, after, exhausted = 0, 0, 0, None, False
    while fetched < p.limit:
        size = min(queries.TRACK_PAGE, p.limit - fetched)
        resp = await search(request, "track", queries.track_body(preset, p, size, after))
        pages += 1
        if after is None:
            total = _total(resp)
        hits = resp.get("hits", {}).get("hits", [])
        for hit in hits:
            position = _position(preset, dict(hit.get("_source", {})))
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
    complete = exhausted and fetched >= total
    geometry = ({"type": "LineString", "coordinates": coords} if len(coords) > 1
                else {"type": "Point", "coordinates": coords[0]})
    return json_response({"type": "Feature", "id": p.track, "geometry": geometry,
                          "properties": {"track": p.track, "count": len(coords), "times": times,
                                         "points": len(coords), "total": total, "pages": pages,
                                         "complete": complete, "truncated": not complete}})


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
    # cluster health, not ping: HEAD / is refused by some proxies and deployments, and a failed ping would
    # put the client's only node on a dead-node timeout.
    try:
        health = (await request.app[ES].cluster.health(timeout="2s")).body
        up, cluster = True, health.get("status")
    except Exception as exc:  # any failure to answer means unhealthy
        up, cluster = False, type(exc).__name__
    body = {"status": "ok" if up else "unavailable", "elasticsearch": up, "cluster": cluster,
            "alerts_consumer": request.app[ALERTS].connected}
    return json_response(body, 200 if up else 503)


async def metrics(request: web.Request) -> web.Response:
    body, ctype = request.app[METRICS].render()
    return web.Response(body=body, headers={"Content-Type": ctype})


def setup(app: web.Application) -> None:
    """The API's routes (the map's page and files are web.app's: it knows where they are)."""
    r = app.router
    r.add_get("/api/extent", extent)
    r.add_get("/api/aggregate", aggregate)
    r.add_get("/api/observations", observations)
    r.add_get("/api/latest", latest)
    r.add_get("/api/events", events)
    r.add_get("/api/tracks/{id}", track)
    r.add_get("/api/alerts", recent_alerts)
    r.add_get("/api/config", map_config)
    r.add_get("/api/openapi.json", openapi_json)
    r.add_get("/healthz", healthz)
    r.add_get("/metrics", metrics)
