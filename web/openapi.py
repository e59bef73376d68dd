"""The API described in OpenAPI 3.1, served at /api/openapi.json; tests validate it and check real
responses against its schemas."""

from __future__ import annotations

from typing import Any

from geoiot import fences
from geoiot.documents import GEOFENCES, HEADING, SPEED
from web.geo import zoom_table
from web.alerts import CURSOR_PATTERN
from web.params import (BBOX_PATTERN, DEFAULT_LIMIT, DEFAULT_PRECISION, MAX_LIMIT, MAX_TRACK_POINTS,
                        OBSERVATIONS_SOURCE, SOURCES, TIME_PATTERN, TOKEN_PATTERN)
from web.where import MAX_FILTER_VALUES, MAX_FILTERS, RANGE_TYPES, TRACK_PAGE, WHERE_PATTERN
from web.events import SSE_RETRY_MS

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
_WHERE = {**_param(
    "where",
    f"Attribute filters, repeat the parameter for several (all must hold: AND; at most {MAX_FILTERS}). Each is "
    "field:expression; the field is any attribute of the preset or of the observation document (listed with its "
    "type under `fields` in /api/config), an unknown one is a 400. Expressions, any type: "
    f"field:value or field:a|b|c (one of, at most {MAX_FILTER_VALUES}; on geofences: contains one of); string "
    "values are taken literally (a leading < or > is refused), bool values are true or false. "
    f"{', '.join(RANGE_TYPES)}: also field:>=x, field:>x, field:<=x, field:<x and field:low..high (inclusive; "
    "low.. or ..high open on one side). Numbers are decimal; times as for start. A value of the wrong type is "
    "a 400 naming the field. Examples: vendor_id:VTS, rate_code:1|2, passengerCount:>=3, speed_mps:10..30.",
    {"type": "array", "maxItems": MAX_FILTERS,
     "items": {"type": "string", "minLength": 3, "maxLength": 1153, "pattern": WHERE_PATTERN}}),
    "style": "form", "explode": True, "example": ["vendor_id:VTS", "passengerCount:>=3"]}

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
    "LatestCollection": {"type": "object", "required": ["type", "features", "total"], "properties": {
        "type": {"const": "FeatureCollection"},
        "total": {"type": "integer", "minimum": 0, "description": "Tracks in view passing the filters"},
        "features": {"type": "array", "items": {"type": "object", "required": ["type", "id", "geometry", "properties"],
                                                "properties": {
            "type": {"const": "Feature"}, "id": {"type": "string", "description": "The track id"},
            "geometry": {"type": "object", "required": ["type", "coordinates"],
                         "properties": {"type": {"const": "Point"}, "coordinates": _POSITION}},
            "properties": {"type": "object",
                           "required": ["track", "time", SPEED, HEADING, GEOFENCES, "attributes"], "properties": {
                "track": {"type": "string"},
                "time": {"type": "integer", "description": "Event time of the newest report, epoch ms"},
                SPEED: {"type": ["number", "null"], "description": "m/s; null on a track's first report"},
                HEADING: {"type": ["number", "null"], "description": "Degrees clockwise from north"},
                GEOFENCES: {"type": "array", "items": {"type": "string"}},
                "attributes": {"type": "object", "description": "Every other attribute of the report"}}}}}}}},
    "Track": {"type": "object", "required": ["type", "geometry", "properties"], "properties": {
        "type": {"const": "Feature"},
        "geometry": {"type": "object", "properties": {"type": {"enum": ["LineString", "Point"]}}},
        "properties": {"type": "object", "required": ["track", "count", "times"], "properties": {
            "track": {"type": "string"}, "count": {"type": "integer"},
            "points": {"type": "integer", "minimum": 1, "description": "Points returned (= count)"},
            "total": {"type": "integer", "minimum": 0, "description": "Reports of the track in the window"},
            "pages": {"type": "integer", "minimum": 1,
                      "description": f"Searches it took (search_after, {TRACK_PAGE} points each)"},
            "complete": {"type": "boolean", "description": "Every report of the window is in the answer"},
            "truncated": {"type": "boolean", "description": "Not complete: limit (or the bound "
                                                            f"{MAX_TRACK_POINTS}) stopped it"},
            "times": {"type": "array", "items": {"type": "integer"}}}}}},
    "LatestChanges": {"type": "object", "required": ["type", "features", "total", "full", "removed"],
                      "description": "The data of an /api/events `latest` event",
                      "properties": {
        "type": {"const": "FeatureCollection"},
        "total": {"type": "integer", "minimum": 0, "description": "Tracks in view now"},
        "full": {"type": "boolean", "description": "features is the whole view (replace); else only what "
                                                   "changed (upsert by id)"},
        "removed": {"type": "array", "items": {"type": "string"}, "description": "Tracks that left the view"},
        "features": {"$ref": "#/components/schemas/LatestCollection/properties/features"}}},
    "LatestGap": {"type": "object", "required": ["after", "kept", "message"], "properties": {
        "after": {"type": "string", "description": "The token the client resumed after"},
        "kept": {"type": "integer", "minimum": 0, "description": "Alerts kept after it, sent next"},
        "message": {"type": "string"}}},
    "Alerts": {"type": "object", "required": ["alerts", "connected"], "properties": {
        "connected": {"type": "boolean"},
        "alerts": {"type": "array", "items": {"type": "object", "properties": {
            "track": {"type": "string"}, "fence": {"type": "string"}, "event": {"enum": ["enter", "exit"]},
            "time": {"type": "integer"}, "lon": {"type": "number"}, "lat": {"type": "number"},
            "version": {"type": ["integer", "null"], "description": "The fence's version (of its tombstone when "
                                                                    "removed); null for fences from a file"},
            "removed": {"type": "boolean", "description": "The exit from a fence that was deleted"},
            "received": {"type": "integer"}}}}}},
    **{  # the live geofences (geoiot.fences)
        "FenceInput": {"type": "object", "required": ["type", "geometry"],
                       "description": "A fence to store: one GeoJSON Feature, Polygon or MultiPolygon, in WGS84, "
                                      f"closed rings, valid (OGC rules), at most {fences.MAX_VERTICES} vertices, "
                                      f"at most {fences.MAX_BODY_BYTES} bytes",
                       "properties": {
            "type": {"const": "Feature"},
            "id": {"type": "string", "description": "When given, the fence id of the path"},
            "geometry": {"type": "object", "required": ["type", "coordinates"], "properties": {
                "type": {"enum": list(fences.GEOMETRY_TYPES)}, "coordinates": {"type": "array"}}},
            "properties": {"type": ["object", "null"]}}},
        "Fence": {"type": "object", "required": ["type", "id", "geometry", "properties", "version", "updated"],
                  "properties": {
            "type": {"const": "Feature"}, "id": {"type": "string", "pattern": fences.FENCE_ID_PATTERN},
            "geometry": {"type": "object", "required": ["type", "coordinates"], "properties": {
                "type": {"enum": list(fences.GEOMETRY_TYPES)}, "coordinates": {"type": "array"}}},
            "properties": {"type": "object"},
            "version": {"type": "integer", "minimum": 0,
                        "description": "The fence's version: the offset of its record on the fence topic"},
            "updated": {"type": "integer", "description": "Time of the change, epoch ms (the record's timestamp)"}}},
        "FenceCollection": {"type": "object", "required": ["type", "features", "version", "synced"], "properties": {
            "type": {"const": "FeatureCollection"},
            "version": {"type": "integer", "minimum": -1, "description": "The newest change applied (-1: none)"},
            "synced": {"type": "boolean", "description": "The server read the fence topic to its end at start"},
            "features": {"type": "array", "items": {"$ref": "#/components/schemas/Fence"}}}},
        "FenceDeleted": {"type": "object", "required": ["id", "deleted", "version", "updated"], "properties": {
            "id": {"type": "string"}, "deleted": {"const": True},
            "version": {"type": "integer", "minimum": 0}, "updated": {"type": "integer"}}},
    },
}


def _json(ref: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}}


_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying", "schema": {"type": "integer"}}}
_ERRORS = {"400": _json("Error", "Invalid parameters"),
           "503": {**_json("Error", "Server busy (too many searches running and waiting: load shed before "
                                    "Elasticsearch), or Elasticsearch unreachable"), "headers": _RETRY_AFTER},
           "504": {**_json("Error", "Elasticsearch did not answer in time"), "headers": _RETRY_AFTER}}


_FENCE_ID = _param("id", "Fence id: 1 to 128 of letters, digits and . _ : -, starting with a letter or digit",
                   {"type": "string", "pattern": fences.FENCE_ID_PATTERN}, "path", True)
_WRITE_REFUSED = {"400": _json("Error", "The fence or the id is invalid (the message names the problem); nothing "
                                        "was written"),
                  "401": _json("Error", "No bearer token"),
                  "403": _json("Error", "The token is not valid or not of scope fences"),
                  "503": {**_json("Error", "The fence topic is not reachable; nothing was written"),
                          "headers": _RETRY_AFTER}}
_FENCE_OPERATIONS = {
    "parameters": [_FENCE_ID],
    "get": {"summary": "One geofence, with its version and time of change",
            "responses": {"200": _json("Fence", "The fence"), "404": _json("Error", "No such fence"),
                          "400": _ERRORS["400"]}},
    "put": {"summary": "Create or replace a geofence; answers once Kafka acknowledged it",
            "security": [{"bearer": []}],
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/FenceInput"}}}},
            "responses": {"200": _json("Fence", "The fence as stored, with its new version"), **_WRITE_REFUSED}},
    "delete": {"summary": "Delete a geofence (a tombstone on the fence topic); answers once Kafka acknowledged it",
               "security": [{"bearer": []}],
               "responses": {"200": _json("FenceDeleted", "Deleted"), "404": _json("Error", "No such fence"),
                             **_WRITE_REFUSED}},
}


def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the API."""
    zooms = ", ".join(f"{r['minZoom']}-{r['maxZoom']}: {r['precision']}" for r in zoom_table())
    return {
        "openapi": "3.1.0",
        "info": {"title": "geoiot web API", "version": "0.1.0",
                 "description": "Queries over the observation index, and the live geofences. Every Elasticsearch "
                                "query is built by the server from validated parameters; unknown parameters are "
                                "refused. Fence writes need a bearer token of scope fences."},
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
                               _START, _END, _FENCE, _WHERE,
                               _param("source", "What is counted: observations (every report, the default) or "
                                      "latest (current tracks: each track's newest report, from the latest-position "
                                      "index, for zoomed-out views of the fleet now). Filters apply to what is "
                                      "counted.", {"type": "string", "enum": list(SOURCES),
                                                   "default": OBSERVATIONS_SOURCE})],
                "responses": {"200": _json("CellCollection", "Cells with counts and centroids"), **_ERRORS}}},
            "/api/observations": {"get": {
                "summary": "Observations in view as GeoJSON points, newest first",
                "parameters": [_BBOX, _START, _END, _LIMIT, _FENCE, _WHERE],
                "responses": {"200": _json("PointCollection", "Observations"), **_ERRORS}}},
            "/api/latest": {"get": {
                "summary": "Current positions: the newest report of each track in view, newest first (GeoJSON "
                           "points)",
                "description": "Read from the agents' latest-position index (one document per track, never "
                               "overwritten by an older report). A track that passes the filters now is "
                               "returned with its newest report; filters apply to that report.",
                "parameters": [_BBOX, _LIMIT, _WHERE],
                "responses": {"200": _json("LatestCollection", "Current positions"), **_ERRORS}}},
            "/api/events": {"get": {
                "summary": "Server-Sent Events: geofence alerts as the server reads them, and the view's latest "
                           "positions as they change",
                "description": (
                    "A text/event-stream; the first line is `retry: " + str(SSE_RETRY_MS) + "`, and a comment "
                    "`: ping` keeps it alive every WEB_SSE_PING s. Events: `alert` (id: resume token; data: the "
                    "alert JSON exactly as on the alerts topic; every alert, whatever the view), `latest` (id: "
                    "the current token; data: a LatestChanges FeatureCollection of the view's features that "
                    "changed since the last push, the whole view when `full`; none when nothing changed) and "
                    "`gap` (a resume token older than the server's ring, WEB_SSE_RING: some alerts are lost; "
                    "data: LatestGap; what is kept follows) and `fences` (the geofences changed: data "
                    "`{\"version\", \"ids\"}`; /api/geofences has them). The view is searched once per WEB_SSE_REFRESH s "
                    "for all its clients. A client's queue holds WEB_SSE_QUEUE events: a slow client loses its "
                    "oldest (counted in /metrics) and gets the whole view again at the next push."),
                "parameters": [_BBOX, _LIMIT, _WHERE,
                               _param("last_event_id", "Resume after this token (a new stream, e.g. when the view "
                                      "changed); the Last-Event-ID header, sent by a reconnecting EventSource, "
                                      "wins over it. Without either, only alerts read from now on.",
                                      {"type": "string", "pattern": CURSOR_PATTERN}),
                               _param("Last-Event-ID", "Resume token, as the browser sends it on a reconnect.",
                                      {"type": "string", "pattern": CURSOR_PATTERN}, "header")],
                "responses": {"200": {"description": "The event stream (see the description; data schemas: "
                                                     "LatestChanges, LatestGap)",
                                      "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                              "400": _ERRORS["400"],
                              "503": {**_json("Error", "Too many streams open (WEB_SSE_MAX_CLIENTS)"),
                                      "headers": _RETRY_AFTER}}}},
            "/api/tracks/{id}": {"get": {
                "summary": "One track in time order as a LineString, paged through the window "
                           "(properties.complete says whether it is whole)",
                "parameters": [_param("id", "Track id", _TOKEN, "path", True), _START, _END,
                               _param("limit", f"At most this many points (default and bound {MAX_TRACK_POINTS}); "
                                      f"the server pages through the window {TRACK_PAGE} points a search.",
                                      {"type": "integer", "minimum": 1, "maximum": MAX_TRACK_POINTS}), _WHERE],
                "responses": {"200": _json("Track", "The track"), "404": _json("Error", "No such track"),
                              **_ERRORS}}},
            "/api/alerts": {"get": {
                "summary": "Recent geofence enter/exit alerts, newest first (kept in memory, bounded)",
                "parameters": [_param("since", "Only alerts at or after this time. " + _TIME["description"],
                                      _TIME["schema"]),
                               _param("limit", "At most this many (default 100).",
                                      {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT})],
                "responses": {"200": _json("Alerts", "Alerts"), "400": _ERRORS["400"]}}},
            "/api/config": {"get": {"summary": "Map settings: tile URL, refresh period, marker threshold, stale time, zoom table, filterable fields",
                                    "responses": {"200": {"description": "Settings",
                                                          "content": {"application/json": {"schema": {"type": "object"}}}},
                                                 "400": _ERRORS["400"]}}},
            "/api/geofences": {"get": {"summary": "The geofences in force, as a GeoJSON FeatureCollection with each "
                                              "fence's version and time of change",
                                       "responses": {"200": _json("FenceCollection", "Geofences"),
                                                     "400": _ERRORS["400"]}}},
            "/api/geofences/{id}": _FENCE_OPERATIONS,
            "/api/openapi.json": {"get": {"summary": "This document",
                                          "responses": {"200": {"description": "OpenAPI 3.1"}}}},
            "/healthz": {"get": {"summary": "200 when Elasticsearch answers, 503 otherwise",
                                 "responses": {"200": {"description": "Healthy"}, "503": {"description": "Unhealthy"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics",
                                 "responses": {"200": {"description": "Text exposition format"}}}},
        },
        "components": {"schemas": _SCHEMAS,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                                      "description": "A token of scope `fences` (IOT_TOKENS_FILE)"}}},
    }
