"""The OGC API's documents (landing page, conformance, collections, queryables, OpenAPI 3.0, features) as plain
data, and a cheap HTML rendering of any of them. No I/O: the handlers (web.ogc.routes) pass everything in."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

import orjson

from geoiot.documents import GEOMETRY
from web.ogc.cql import LANGUAGES, TEXT
from web.ogc.params import CRS84, DEFAULT_LIMIT, FORMATS, MAX_LIMIT

JSON, GEOJSON, HTML = "application/json", "application/geo+json", "text/html"
OPENAPI = "application/vnd.oai.openapi+json;version=3.0"
SCHEMA = "application/schema+json"
GREGORIAN = "http://www.opengis.net/def/uri/ISO-8601/0/Gregorian"
CONFORMANCE = (
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/core",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/geojson",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/oas30",
    "http://www.opengis.net/spec/ogcapi-features-3/1.0/conf/filter",
    "http://www.opengis.net/spec/ogcapi-features-3/1.0/conf/features-filter",
    "http://www.opengis.net/spec/ogcapi-features-3/1.0/conf/queryables",
    "http://www.opengis.net/spec/cql2/1.0/conf/cql2-text",
    "http://www.opengis.net/spec/cql2/1.0/conf/cql2-json",
    "http://www.opengis.net/spec/cql2/1.0/conf/basic-cql2",
    "http://www.opengis.net/spec/cql2/1.0/conf/basic-spatial-functions",
    "http://www.opengis.net/spec/cql2/1.0/conf/basic-spatial-functions-plus",
)
# Preset types as JSON Schema (queryables); times are RFC 3339 strings in features and TIMESTAMP() in filters.
_SCHEMAS: dict[str, dict[str, Any]] = {"string": {"type": "string"}, "int": {"type": "integer"},
                                       "float": {"type": "number"}, "bool": {"type": "boolean"},
                                       "time": {"type": "string", "format": "date-time"}}


_DAYS: dict[int, str] = {}
_MAX_DAYS = 4096


def rfc3339(ms: int | float | None) -> str | None:
    """Epoch ms as an RFC 3339 UTC instant with milliseconds. Every feature of a page has a few times: the
    date part is cached per day, the clock is arithmetic (cheaper than datetime formatting)."""
    if ms is None:
        return None
    day, rest = divmod(int(ms), 86_400_000)
    prefix = _DAYS.get(day)
    if prefix is None:
        if len(_DAYS) >= _MAX_DAYS:
            _DAYS.clear()
        prefix = _DAYS[day] = datetime.fromtimestamp(day * 86_400, timezone.utc).strftime("%Y-%m-%dT")
    seconds, milli = divmod(rest, 1000)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    return f"{prefix}{hours:02d}:{minutes:02d}:{seconds:02d}.{milli:03d}Z"


def link(href: str, rel: str, kind: str, title: str | None = None) -> dict[str, str]:
    out = {"href": href, "rel": rel, "type": kind}
    if title:
        out["title"] = title
    return out


def self_links(url: str, kind: str) -> list[dict[str, str]]:
    """``self`` in the answer's format and ``alternate`` in the other (``url`` without ``f``)."""
    sep = "&" if "?" in url else "?"
    other = HTML if kind != HTML else JSON
    fmt = {HTML: "html"}.get(kind, "json")
    ofmt = "html" if other == HTML else "json"
    return [link(f"{url}{sep}f={fmt}", "self", kind), link(f"{url}{sep}f={ofmt}", "alternate", other)]


def landing(base: str, kind: str) -> dict[str, Any]:
    return {"title": "geoiot", "description": "Position reports of moving things, as OGC API - Features",
            "links": [*self_links(base + "/", kind),
                      link(base + "/api", "service-desc", OPENAPI, "the API definition (OpenAPI 3.0)"),
                      link(base + "/api?f=html", "service-doc", HTML, "the API definition as a page"),
                      link(base + "/conformance", "conformance", JSON, "conformance classes"),
                      link(base + "/collections", "data", JSON, "collections")]}


def conformance() -> dict[str, Any]:
    return {"conformsTo": list(CONFORMANCE)}


def collection(base: str, cid: str, title: str, description: str, bbox: Sequence[float] | None,
               interval: tuple[str | None, str | None] | None, kind: str = JSON) -> dict[str, Any]:
    url = f"{base}/collections/{cid}"
    extent: dict[str, Any] = {"spatial": {"bbox": [list(bbox) if bbox else [-180.0, -90.0, 180.0, 90.0]],
                                          "crs": CRS84}}
    if interval is not None:
        extent["temporal"] = {"interval": [list(interval)], "trs": GREGORIAN}
    return {"id": cid, "title": title, "description": description, "itemType": "feature", "crs": [CRS84],
            "extent": extent,
            "links": [*self_links(url, kind),
                      link(f"{url}/items?f=json", "items", GEOJSON, f"the features of {cid}"),
                      link(f"{url}/items?f=html", "items", HTML, f"the features of {cid} as a page"),
                      link(f"{url}/queryables", "http://www.opengis.net/def/rel/ogc/1.0/queryables", SCHEMA,
                           "what a filter may name")]}


def collections(base: str, items: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    return {"links": self_links(base + "/collections", kind), "collections": items}


def queryables(base: str, cid: str, fields: Mapping[str, str], point: bool = True) -> dict[str, Any]:
    props: dict[str, Any] = {name: {"title": name, **_SCHEMAS[kind]} for name, kind in fields.items()
                             if kind in _SCHEMAS}
    props[GEOMETRY] = ({"title": "position", "format": "geometry-point"} if point
                       else {"title": "geometry", "format": "geometry-any"})
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": f"{base}/collections/{cid}/queryables", "type": "object", "title": cid,
            "properties": props, "additionalProperties": False}


def _param(name: str, description: str, schema: dict[str, Any], where: str = "query",
           explode: bool | None = None) -> dict[str, Any]:
    out = {"name": name, "in": where, "required": where == "path", "description": description, "schema": schema}
    if explode is not None:
        out.update(style="form", explode=explode)
    return out


def openapi(base: str, ids: Sequence[str]) -> dict[str, Any]:
    """OpenAPI 3.0 of the OGC API, with Part 1's parameter definitions (limit, bbox, datetime) as written."""
    fmt = _param("f", "The answer's format", {"type": "string", "enum": list(FORMATS)}, explode=False)
    cid = _param("collectionId", "A collection", {"type": "string", "enum": list(ids)}, "path")
    fid = _param("featureId", "A feature's id (the document _id)", {"type": "string"}, "path")
    items_params = [
        cid,
        _param("limit", f"At most this many features (1..{MAX_LIMIT})",
               {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT}, explode=False),
        _param("bbox", "minLon,minLat,maxLon,maxLat (CRS84); minLon > maxLon crosses the antimeridian",
               {"type": "array", "minItems": 4, "maxItems": 6, "items": {"type": "number"}}, explode=False),
        _param("datetime", "An instant or an interval start/end (RFC 3339, '..' for an open end)",
               {"type": "string"}, explode=False),
        _param("filter", "A CQL2 filter (basic CQL2, spatial on geometry, time comparisons)", {"type": "string"},
               explode=False),
        _param("filter-lang", "The filter's encoding", {"type": "string", "enum": list(LANGUAGES), "default": TEXT},
               explode=False),
        _param("filter-crs", "The filter's CRS", {"type": "string", "enum": [CRS84]}, explode=False),
        _param("bbox-crs", "The bbox's CRS", {"type": "string", "enum": [CRS84]}, explode=False),
        _param("cursor", "Where the next page starts (take it from the next link)", {"type": "string"},
               explode=False),
        fmt]

    def get(summary: str, params: list[dict[str, Any]], kind: str) -> dict[str, Any]:
        return {"get": {"summary": summary, "parameters": params,
                        "responses": {"200": {"description": summary, "content": {kind: {"schema": {"type": "object"}},
                                                                                  HTML: {"schema": {"type": "string"}}}},
                                      "400": {"description": "a bad query (JSON message)"},
                                      "404": {"description": "not found"},
                                      "503": {"description": "busy: retry after Retry-After"}}}}

    return {"openapi": "3.0.3",
            "info": {"title": "geoiot OGC API - Features", "version": "1.0.0",
                     "description": "Part 1 Core with GeoJSON and Part 3 Filtering (CQL2)"},
            "servers": [{"url": base}],
            "paths": {
                "/": get("landing page", [fmt], JSON),
                "/conformance": get("conformance classes", [fmt], JSON),
                "/api": get("this document", [fmt], OPENAPI),
                "/collections": get("the collections", [fmt], JSON),
                "/collections/{collectionId}": get("one collection", [cid, fmt], JSON),
                "/collections/{collectionId}/queryables": get("its queryables", [cid, fmt], SCHEMA),
                "/collections/{collectionId}/items": get("its features", items_params, GEOJSON),
                "/collections/{collectionId}/items/{featureId}": get("one feature", [cid, fid, fmt], GEOJSON),
            }}


def page(title: str, doc: Any) -> bytes:
    """Any document as a small HTML page: its links as anchors, then the JSON itself."""
    links = doc.get("links", []) if isinstance(doc, dict) else []
    anchors = "".join(f'<li><a href="{html.escape(ln["href"])}">{html.escape(ln.get("title") or ln["rel"])}</a> '
                      f'({html.escape(ln["rel"])}, {html.escape(ln["type"])})</li>' for ln in links)
    body = html.escape(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
    return (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title></head>"
            f"<body><h1>{html.escape(title)}</h1><ul>{anchors}</ul><pre>{body}</pre></body></html>").encode()
