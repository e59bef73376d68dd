"""The API described in OpenAPI 3.1, served at /api/openapi.json; tests validate it and check real
responses against its schemas."""

from __future__ import annotations

from typing import Any

from web.geo import zoom_table
from web.params import DEFAULT_LIMIT, DEFAULT_PRECISION, MAX_LIMIT, TIME_PATTERN, TOKEN_PATTERN, BBOX_PATTERN

_TIME = {"description": "Epoch milliseconds (seconds also accepted, told apart by magnitude; at most 13 digits) "
                        "or an ISO 8601 date of the years 1000-8999 with optional time and offset (UTC unless "
                        "an offset is given); inclusive.",
         "schema": {"type": "string", "pattern": TIME_PATTERN}}


def _param(name: str, description: str, schema: dict[str, Any], where: str = "query",
           required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": where, "required": required, "description": description, "schema": schema}


_BBOX = _param("bbox", "minLon,minLat,maxLon,maxLat, inclusive; minLon > maxLon crosses the antimeridian. "
               "minLat must not exceed maxLat. Default: the whole world.",
               {"type": "string", "pattern": BBOX_PATTERN, "example": "-74.05,40.6,-73.75,40.9"})
_START = _param("start", "Window start. " + _TIME["description"], _TIME["schema"])
_END = _param("end", "Window end, not before start. " + _TIME["description"], _TIME["schema"])
# track and fence ids: the server's own pattern (web.params), whole-string
_TOKEN = {"type": "string", "minLength": 1, "maxLength": 256, "pattern": TOKEN_PATTERN}
_FENCE = _param("fence", "Only observations inside this geofence id.", _TOKEN)
_LIMIT = _param("limit", f"At most this many results (1..{MAX_LIMIT}).",
                {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT})

_ERROR = {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}
_POSITION = {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2}
_SCHEMAS: dict[str, Any] = {
    "Error": _ERROR,
    "Extent": {"type": "object", "required": ["start", "end", "count", "bbox"], "properties": {
        "start": {"type": ["integer", "null"]}, "end": {"type": ["integer", "null"]},
        "count": {"type": "integer", "minimum": 0},
        "bbox": {"oneOf": [{"type": "null"}, {"type": "array", "items": {"type": "number"},
                                               "minItems": 4, "maxItems": 4}]}}},
    "CellCollection": {"type": "object", "required": ["type", "features", "total", "precision", "truncated"],
                       "properties": {
        "type": {"const": "FeatureCollection"},
        "total": {"type": "integer", "description": "Observations in view (sum of counts unless truncated)"},
        "precision": {"type": "integer", "minimum": 1, "maximum": 12},
        "truncated": {"type": "boolean", "description": "More cells than the cap; the fullest are returned"},
        "features": {"type": "array", "items": {"type": "object", "required": ["type", "geometry", "properties"],
                                                "properties": {
            "type": {"const": "Feature"}, "id": {"type": "string"},
            "geometry": {"type": "object", "required": ["type", "coordinates"], "properties": {
                "type": {"const": "Polygon"},
                "coordinates": {"type": "array", "items": {"type": "array", "items": _POSITION}}}},
            "properties": {"type": "object", "required": ["geohash", "count", "centroid"], "properties": {
                "geohash": {"type": "string"}, "count": {"type": "integer", "minimum": 1},
                "centroid": {"oneOf": [{"type": "null"}, _POSITION]}}}}}}}},
    "PointCollection": {"type": "object", "required": ["type", "features", "total"], "properties": {
        "type": {"const": "FeatureCollection"}, "total": {"type": "integer"},
        "features": {"type": "array", "items": {"type": "object", "required": ["type", "geometry", "properties"],
                                                "properties": {
            "type": {"const": "Feature"}, "id": {"type": "string"},
            "geometry": {"type": "object", "properties": {"type": {"const": "Point"},
                                                          "coordinates": _POSITION}},
            "properties": {"type": "object"}}}}}},
    "Track": {"type": "object", "required": ["type", "geometry", "properties"], "properties": {
        "type": {"const": "Feature"},
        "geometry": {"type": "object", "properties": {"type": {"enum": ["LineString", "Point"]}}},
        "properties": {"type": "object", "required": ["track", "count", "times"], "properties": {
            "track": {"type": "string"}, "count": {"type": "integer"}, "truncated": {"type": "boolean"},
            "times": {"type": "array", "items": {"type": "integer"}}}}}},
    "Alerts": {"type": "object", "required": ["alerts", "connected"], "properties": {
        "connected": {"type": "boolean"},
        "alerts": {"type": "array", "items": {"type": "object", "properties": {
            "track": {"type": "string"}, "fence": {"type": "string"}, "event": {"enum": ["enter", "exit"]},
            "time": {"type": "integer"}, "lon": {"type": "number"}, "lat": {"type": "number"},
            "received": {"type": "integer"}}}}}},
}


def _json(ref: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}}


_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying", "schema": {"type": "integer"}}}
_ERRORS = {"400": _json("Error", "Invalid parameters"),
           "503": {**_json("Error", "Server busy (too many searches running and waiting: load shed before "
                                    "Elasticsearch), or Elasticsearch unreachable"), "headers": _RETRY_AFTER},
           "504": {**_json("Error", "Elasticsearch did not answer in time"), "headers": _RETRY_AFTER}}


def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the read-only API."""
    zooms = ", ".join(f"{r['minZoom']}-{r['maxZoom']}: {r['precision']}" for r in zoom_table())
    return {
        "openapi": "3.1.0",
        "info": {"title": "geoiot web API", "version": "0.1.0",
                 "description": "Read-only queries over the observation index. Every Elasticsearch query is "
                                "built by the server from validated parameters; unknown parameters are refused."},
        "paths": {
            "/api/extent": {"get": {"summary": "Time span, count and bounding box of all observations",
                                    "responses": {"200": _json("Extent", "The extent"), **_ERRORS}}},
            "/api/aggregate": {"get": {
                "summary": "Observations in view counted per geohash cell (GeoJSON polygons)",
                "parameters": [_BBOX,
                               _param("precision", f"Geohash precision 1..12 (default {DEFAULT_PRECISION}). The "
                                      "grid over bbox may have at most WEB_MAX_GRID_CELLS cells (default 65,536): "
                                      "a finer precision is lowered until it fits, and the answer's precision "
                                      "says which was used.",
                                      {"type": "integer", "minimum": 1, "maximum": 12}),
                               _param("zoom", f"Map zoom 0..22 instead of precision; zoom->precision: {zooms} "
                                      "(lowered like precision).",
                                      {"type": "integer", "minimum": 0, "maximum": 22}),
                               _START, _END, _FENCE],
                "responses": {"200": _json("CellCollection", "Cells with counts and centroids"), **_ERRORS}}},
            "/api/observations": {"get": {
                "summary": "Observations in view as GeoJSON points, newest first",
                "parameters": [_BBOX, _START, _END, _LIMIT, _FENCE],
                "responses": {"200": _json("PointCollection", "Observations"), **_ERRORS}}},
            "/api/tracks/{id}": {"get": {
                "summary": "One track in time order as a LineString",
                "parameters": [_param("id", "Track id", _TOKEN, "path", True), _START, _END,
                               _param("limit", f"At most this many points (default {MAX_LIMIT}).",
                                      {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT})],
                "responses": {"200": _json("Track", "The track"), "404": _json("Error", "No such track"),
                              **_ERRORS}}},
            "/api/alerts": {"get": {
                "summary": "Recent geofence enter/exit alerts, newest first (kept in memory, bounded)",
                "parameters": [_param("since", "Only alerts at or after this time. " + _TIME["description"],
                                      _TIME["schema"]),
                               _param("limit", "At most this many (default 100).",
                                      {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT})],
                "responses": {"200": _json("Alerts", "Alerts"), "400": _ERRORS["400"]}}},
            "/api/config": {"get": {"summary": "Map settings: tile URL, refresh period, marker threshold, zoom table",
                                    "responses": {"200": {"description": "Settings",
                                                          "content": {"application/json": {"schema": {"type": "object"}}}},
                                                 "400": _ERRORS["400"]}}},
            "/api/geofences": {"get": {"summary": "The geofences as a GeoJSON FeatureCollection",
                                       "responses": {"200": {"description": "Geofences",
                                                             "content": {"application/json": {"schema": {"type": "object"}}}},
                                                 "400": _ERRORS["400"]}}},
            "/api/openapi.json": {"get": {"summary": "This document",
                                          "responses": {"200": {"description": "OpenAPI 3.1"}}}},
            "/healthz": {"get": {"summary": "200 when Elasticsearch answers, 503 otherwise",
                                 "responses": {"200": {"description": "Healthy"}, "503": {"description": "Unhealthy"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics",
                                 "responses": {"200": {"description": "Text exposition format"}}}},
        },
        "components": {"schemas": _SCHEMAS},
    }
