"""Handlers of the OGC API - Features under /ogc: validate (web.ogc.params, web.ogc.cql), build the query
(web.where), search through the server's limiter and a bound on concurrent scans, shape the documents
(web.ogc.views). The ``latest`` collection answers from the live mirror (web.live.ogc_items), as /api/latest
does, with the answers and cursors the Elasticsearch ``_latest`` index gave."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web
from shapely.geometry import box, shape

from geoiot.documents import field_types
from web import geojson, where
from web.fences import SERVICE
from web.keys import ALERTS, CACHE, LIVE, METRICS, PRESET, SEARCH, SETTINGS
from web.limiter import Busy
from web.live import ogc_items
from web.live.mirror import Mirror
from web.ogc import cursor as cursors
from web.ogc import views
from web.ogc.keys import CURSOR_KEY, PREFETCH, SCANS
from web.ogc.params import ItemsParams, format_params, items_params
from web.ogc.shape import Shaped, document_shaper, shaper
from web.params import WORLD, BBox, Window, parse_token

PREFIX = "/ogc"


@dataclass(frozen=True)
class Collection:
    """``index``: the Elasticsearch index or alias of the features, from the settings; ``live``: the live
    mirror's tracks (web.live); else ``features``, an in-memory list from the application (few: fences, the
    alerts ring)."""

    id: str
    title: str
    description: str
    index: Callable[[web.Application], str] | None = None
    features: Callable[[web.Application], list[tuple[dict[str, Any], int | None]]] | None = None
    live: bool = False

    @property
    def filterable(self) -> bool:
        return self.index is not None or self.live


def _fences(app: web.Application) -> list[tuple[dict[str, Any], int | None]]:
    """The web server's mirror of the fence topic; a fence's time is its time of change."""
    fences = app[SERVICE].follower.fences.fences
    return [(fences[fid].as_feature(), fences[fid].updated) for fid in sorted(fences)]


def _alerts(app: web.Application) -> list[tuple[dict[str, Any], int | None]]:
    buffer = app[ALERTS]
    out: list[tuple[dict[str, Any], int | None]] = []
    for a in reversed(buffer.recent(None, len(buffer) or 1)):
        lon, lat, t = a.get("lon"), a.get("lat"), a.get("time")
        if isinstance(lon, (int, float)) and isinstance(lat, (int, float)):
            ms = int(t) if isinstance(t, (int, float)) and not isinstance(t, bool) else None
            out.append(({"type": "Feature", "id": f"{a.get('track')}:{a.get('fence')}:{a.get('event')}:{t}",
                         "geometry": {"type": "Point", "coordinates": [lon, lat]},
                         "properties": {**a, "time": views.rfc3339(ms)}}, ms))
    return out


COLLECTIONS = {c.id: c for c in (
    Collection("observations", "Observations", "Every position report stored (the index alias)",
               index=lambda app: app[SETTINGS].iot_index),
    Collection("latest", "Latest positions", "Each track's newest position (the live layer, held in memory)",
               live=True),
    Collection("alerts", "Geofence alerts", "The recent enter/exit alerts the server has read (in memory)",
               features=_alerts),
    Collection("geofences", "Geofences", "The geofences the server draws", features=_fences),
)}


def base_url(request: web.Request) -> str:
    return f"{request.url.origin()}{PREFIX}"


def answer(request: web.Request, doc: Any, kind: str, fmt: str, title: str) -> web.Response:
    if fmt == "html":
        return web.Response(body=views.page(title, doc), content_type="text/html", charset="utf-8")
    return web.Response(body=orjson.dumps(doc), headers={"Content-Type": kind})


def _collection(request: web.Request) -> Collection:
    found = COLLECTIONS.get(request.match_info["cid"])
    if found is None:
        raise web.HTTPNotFound(text=f"no collection {request.match_info['cid'][:60]!r}; "
                               f"collections: {', '.join(COLLECTIONS)}")
    return found


async def landing(request: web.Request) -> web.Response:
    fmt = format_params(request.query, request.headers.get("Accept"))
    return answer(request, views.landing(base_url(request), views.HTML if fmt == "html" else views.JSON),
                  views.JSON, fmt, "geoiot OGC API - Features")


async def conformance(request: web.Request) -> web.Response:
    fmt = format_params(request.query, request.headers.get("Accept"))
    return answer(request, views.conformance(), views.JSON, fmt, "Conformance")


async def api(request: web.Request) -> web.Response:
    fmt = format_params(request.query, request.headers.get("Accept"))
    return answer(request, views.openapi(base_url(request), list(COLLECTIONS)), views.OPENAPI, fmt, "API")


async def _extent(request: web.Request, c: Collection) -> tuple[list[float] | None,
                                                               tuple[str | None, str | None] | None]:
    """The collection's bounding box and time interval, from the store (shared for a second, web.cache)."""
    app = request.app
    if c.features is not None:
        features = c.features(app)
        if not features:
            return None, None
        x0, y0, x1, y1 = shape({"type": "GeometryCollection",
                                "geometries": [f["geometry"] for f, _ in features]}).bounds
        times = [ms for _, ms in features if ms is not None]
        return [x0, y0, x1, y1], (views.rfc3339(min(times)), views.rfc3339(max(times))) if times else None
    if c.live:  # while the mirror loads: what it holds so far (the collections page stays up)
        mirror = app[LIVE]
        bbox, (start, end) = ogc_items.extent(mirror.table, mirror.cutoff())
        return bbox, (views.rfc3339(start), views.rfc3339(end))
    index = c.index(app)  # type: ignore[misc]

    async def compute() -> bytes:
        resp = await app[SEARCH].search("ogc_extent", where.extent_body(app[PRESET], wrap=False), index)
        aggs = resp.get("aggregations", {})
        return orjson.dumps([geojson.bounds_bbox(aggs), [views.rfc3339(aggs.get("start", {}).get("value")),
                                    views.rfc3339(aggs.get("end", {}).get("value"))]])

    payload, _ = await app[CACHE].get_or_compute("ogc-extent:" + index, compute)
    bbox, interval = orjson.loads(payload)
    return bbox, tuple(interval)


async def _collection_doc(request: web.Request, c: Collection, kind: str) -> dict[str, Any]:
    bbox, interval = await _extent(request, c)
    return views.collection(base_url(request), c.id, c.title, c.description, bbox, interval, kind)


async def collections(request: web.Request) -> web.Response:
    fmt = format_params(request.query, request.headers.get("Accept"))
    kind = views.HTML if fmt == "html" else views.JSON
    docs = [await _collection_doc(request, c, views.JSON) for c in COLLECTIONS.values()]
    return answer(request, views.collections(base_url(request), docs, kind), views.JSON, fmt, "Collections")


async def collection(request: web.Request) -> web.Response:
    c = _collection(request)
    fmt = format_params(request.query, request.headers.get("Accept"))
    doc = await _collection_doc(request, c, views.HTML if fmt == "html" else views.JSON)
    return answer(request, doc, views.JSON, fmt, c.title)


def _mirror(app: web.Application) -> Mirror:
    """The live mirror (web.live.mirror.Mirror), once it read its topic to the end found at start (else 503)."""
    mirror = app[LIVE]
    if not mirror.synced:
        raise Busy("live_loading", "the live layer is still loading (see /healthz)")
    return mirror


def _fields(app: web.Application, c: Collection) -> dict[str, str]:
    if c.features is None:
        return dict(field_types(app[PRESET]))
    return {}


async def queryables(request: web.Request) -> web.Response:
    c = _collection(request)
    fmt = format_params(request.query, request.headers.get("Accept"))
    doc = views.queryables(base_url(request), c.id, _fields(request.app, c), point=c.id != "geofences")
    return answer(request, doc, views.SCHEMA, fmt, f"Queryables of {c.id}")


def _in_box(bbox: BBox, geometry: dict[str, Any]) -> bool:
    if bbox == WORLD:
        return True
    geom = shape(geometry)
    if not bbox.crosses_antimeridian:
        return geom.intersects(box(bbox.min_lon, bbox.min_lat, bbox.max_lon, bbox.max_lat))
    return (geom.intersects(box(bbox.min_lon, bbox.min_lat, 180, bbox.max_lat))
            or geom.intersects(box(-180, bbox.min_lat, bbox.max_lon, bbox.max_lat)))


def _in_window(window: Window, ms: int | None) -> bool:
    """Fences have no time: a time window does not select among them."""
    return ms is None or ((window.start is None or ms >= window.start) and (window.end is None or ms <= window.end))


def _collection_links(request: web.Request, c: Collection, kind: str) -> list[dict[str, str]]:
    url = request.url.with_query({k: v for k, v in request.query.items() if k != "f"})
    return views.self_links(str(url), kind) + [
        views.link(f"{base_url(request)}/collections/{c.id}", "collection", views.JSON, c.title)]


async def fetch_page(app: web.Application, index: str, body: dict[str, Any]) -> Shaped:
    """Search one page in a scan slot (WEB_OGC_SCANS, then the server's limiter) and shape its features."""
    async with app[SCANS].slot():
        raw = await app[SEARCH].search("ogc_items", body, index, raw=True)
    return shaper(app[PRESET])(raw)


def live_page(app: web.Application, p: ItemsParams, after: list[Any] | None, count: bool) -> Shaped:
    """One page of the live mirror's tracks, as :func:`fetch_page` read it from the ``_latest`` index."""
    mirror = _mirror(app)
    table = mirror.table
    rows = ogc_items.matching(table, p.bbox, p.window, p.where, mirror.cutoff())
    chosen = ogc_items.page(table, rows, p.limit, after)
    docs = table.documents(chosen)
    features, shaped = document_shaper(app[PRESET])([(table.tracks[r], d) for r, d in zip(chosen.tolist(), docs)])
    last = ogc_items.sort_values(table, int(chosen[-1])) if len(chosen) else None
    return Shaped(features, shaped, len(chosen), last, len(rows) if count else 0)


async def items(request: web.Request) -> web.Response:
    c = _collection(request)
    app = request.app
    p = items_params(request.query, request.headers.get("Accept"), _fields(app, c), filterable=c.filterable)
    scope = cursors.query_scope(c.id, [p.bbox.as_list(), [p.window.start, p.window.end], repr(p.where)])
    key = app[CURSOR_KEY]
    position = cursors.decode(key, scope, p.cursor) if p.cursor is not None else None
    offset = position.offset if position else 0
    if c.index is not None:
        index = c.index(app)
        page = await app[PREFETCH].take((p.cursor, p.limit)) if p.cursor is not None else None
        app[METRICS].ogc_prefetch.labels("none" if p.cursor is None else "hit" if page else "miss").inc()
        if page is None:
            page = await fetch_page(app, index, where.page_body(app[PRESET], p.bbox, p.window, p.where, p.limit,
                                                                  position.after if position else None,
                                                                  position is None))
        matched = position.matched if position else page.total
        returned, after, features, count = page.returned, page.after, page.features, page.count
    elif c.live:
        page = live_page(app, p, position.after if position else None, position is None)
        matched = position.matched if position else page.total
        returned, after, features, count = page.returned, page.after, page.features, page.count
    else:
        selected = [f for f, ms in c.features(app)  # type: ignore[misc]
                    if _in_box(p.bbox, f["geometry"]) and _in_window(p.window, ms)]
        chosen = selected[offset:offset + p.limit]
        matched, returned, after, features = len(selected), len(chosen), None, orjson.dumps(chosen)
        count = returned
    kind = views.HTML if p.fmt == "html" else views.GEOJSON
    links = _collection_links(request, c, kind)
    if returned and offset + returned < matched:
        token = cursors.encode(key, scope, cursors.Cursor(after, offset + returned, matched))
        links.append(views.link(str(request.url.update_query(cursor=token)), "next", kind, "next page"))
        if c.index is not None and p.fmt == "json":
            app[PREFETCH].start((token, p.limit), fetch_page(app, c.index(app), where.page_body(
                app[PRESET], p.bbox, p.window, p.where, p.limit, after, False)))
    tail = {"links": links, "timeStamp": views.rfc3339(time.time() * 1000), "numberMatched": matched,
            "numberReturned": count}
    if p.fmt == "html":
        doc = {"type": "FeatureCollection", "features": orjson.loads(features), **tail}
        return answer(request, doc, views.GEOJSON, p.fmt, f"Features of {c.id}")
    body = b"".join((b'{"type":"FeatureCollection","features":', features, b",", orjson.dumps(tail)[1:]))
    return web.Response(body=body, headers={"Content-Type": views.GEOJSON})


async def feature(request: web.Request) -> web.Response:
    c = _collection(request)
    app = request.app
    fmt = format_params(request.query, request.headers.get("Accept"))
    fid = request.match_info["fid"]
    found: dict[str, Any] | None = None
    try:
        parse_token(fid, "featureId")
    except ValueError:
        fid = ""
    if fid and c.index is not None:
        raw = await app[SEARCH].search("ogc_feature", where.ids_body(fid), c.index(app), raw=True)
        shaped = orjson.loads(shaper(app[PRESET])(raw).features)
        found = shaped[0] if shaped else None
    elif fid and c.live:
        mirror = _mirror(app)
        row = ogc_items.row_of(mirror.table, fid, mirror.cutoff())
        if row is not None:
            shaped = orjson.loads(document_shaper(app[PRESET])([(fid, mirror.table.documents([row])[0])])[0])
            found = shaped[0] if shaped else None
    elif fid:
        found = next((dict(f) for f, _ in c.features(app) if str(f.get("id")) == fid), None)  # type: ignore[misc]
    if found is None:
        raise web.HTTPNotFound(text=f"no feature {fid[:60]!r} in {c.id}")
    url = f"{base_url(request)}/collections/{c.id}/items/{fid}"
    kind = views.HTML if fmt == "html" else views.GEOJSON
    found["links"] = views.self_links(url, kind) + [
        views.link(f"{base_url(request)}/collections/{c.id}", "collection", views.JSON, c.title)]
    return answer(request, found, views.GEOJSON, fmt, f"{c.id} {fid}")


def setup(app: web.Application) -> None:
    r = app.router
    r.add_get(PREFIX, landing)
    r.add_get(PREFIX + "/", landing)
    r.add_get(PREFIX + "/conformance", conformance)
    r.add_get(PREFIX + "/api", api)
    r.add_get(PREFIX + "/collections", collections)
    r.add_get(PREFIX + "/collections/{cid}", collection)
    r.add_get(PREFIX + "/collections/{cid}/queryables", queryables)
    r.add_get(PREFIX + "/collections/{cid}/items", items)
    r.add_get(PREFIX + "/collections/{cid}/items/{fid:.+}", feature)
