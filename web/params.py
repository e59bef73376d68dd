"""Validation of every query parameter the API accepts; anything else is a 400 with a reason.

Handlers never look at the raw query string: they get the dataclasses below, and ``web.queries`` builds
Elasticsearch requests from those alone, so no request can reach Elasticsearch unchecked.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Protocol, Union

from geoiot.timeparse import TimeParseError, parse_time
from web.geo import MAX_ZOOM, grid_cells, precision_for_zoom

MAX_LIMIT = 10_000
# /api/tracks/{id} pages through the window (search_after, web.queries.TRACK_PAGE points a search) up to
# this many points: the bound on one answer's size and on the searches it takes.
MAX_TRACK_POINTS = 100_000
DEFAULT_LIMIT = 1_000
DEFAULT_PRECISION = 5
# Track and fence ids: printable, no control characters; the OpenAPI document publishes the same pattern.
# Matched whole (fullmatch): with ``re.match``, ``$`` also matched before a trailing newline.
TOKEN_PATTERN = r"^[\w.:@+\-/ ]{1,256}$"
_TOKEN = re.compile(TOKEN_PATTERN.removeprefix("^").removesuffix("$"))
# Times: epoch ms or s (told apart by magnitude; 13 digits at most, so within the years 1-9999), or ISO 8601
# dates of the years 1000-8999 with an optional time and offset. Published in the OpenAPI document, so what
# a client may send is exactly what the document says.
_YEAR, _MONTH, _DAY = "(1[0-9]{3}|[2-8][0-9]{3})", "(0[1-9]|1[0-2])", "(0[1-9]|[12][0-9]|3[01])"
_CLOCK, _OFFSET = "([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9](\\.[0-9]{1,6})?)?", "(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])"
TIME_PATTERN = f"^(-?[0-9]{{1,13}}|{_YEAR}-{_MONTH}-{_DAY}([T ]{_CLOCK}{_OFFSET}?)?)$"
_TIME = re.compile(TIME_PATTERN.removeprefix("^").removesuffix("$"))
_LON = "-?(180(\\.0+)?|(1[0-7][0-9]|[0-9]{1,2})(\\.[0-9]+)?)"
_LAT = "-?(90(\\.0+)?|[0-8]?[0-9](\\.[0-9]+)?)"
# The bbox's shape and ranges (minLat <= maxLat is checked by parse_bbox: no pattern can say it).
BBOX_PATTERN = f"^{_LON},{_LAT},{_LON},{_LAT}$"
# Attribute filters: ``where=field:expression``, repeated for several (combined with AND). The field is
# everything before the first colon; the expression is checked against the field's type by parse_filter.
# Published in the OpenAPI document: what violates it is refused before any other check.
MAX_FILTERS = 16
MAX_FILTER_VALUES = 64
MAX_STRING_VALUE = 256  # keyword fields ignore longer values (geoiot.documents), so none could match
WHERE_PATTERN = r"^[^:\x00-\x1f\x7f]{1,128}:[^\x00-\x1f\x7f]{1,1024}$"
_WHERE = re.compile(WHERE_PATTERN.removeprefix("^").removesuffix("$"))
_COMPARISON = re.compile(r"(>=|<=|>|<)(.*)", re.DOTALL)
_INT = re.compile(r"[+-]?[0-9]{1,19}")
_FLOAT = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]{1,3})?")
RANGE_TYPES = ("int", "float", "time")
NO_FIELDS: Mapping[str, str] = MappingProxyType({})


class BadRequest(ValueError):
    """A query the API refuses; the message is what the client sees in ``{"error": ...}``."""


class Query(Protocol):  # aiohttp's MultiDictProxy, or a dict in unit tests
    def getall(self, key: str, default: list[str] = ...) -> list[str]: ...
    def keys(self) -> Iterable[str]: ...


@dataclass(frozen=True)
class BBox:
    """Inclusive box; ``min_lon > max_lon`` means it crosses the antimeridian."""

    min_lon: float
    min_lat: float
    max_lon: float
    max_lat: float

    @property
    def crosses_antimeridian(self) -> bool:
        return self.min_lon > self.max_lon

    def as_list(self) -> list[float]:
        return [self.min_lon, self.min_lat, self.max_lon, self.max_lat]


WORLD = BBox(-180.0, -90.0, 180.0, 90.0)


@dataclass(frozen=True)
class Window:
    """Inclusive time window in epoch ms; None is open-ended."""

    start: int | None = None
    end: int | None = None


FilterValue = Union[str, int, float, bool]


@dataclass(frozen=True)
class OneOf:
    """``field:a|b``: the attribute equals one of ``values`` (for a list attribute: contains one of them).
    Values are of the field's type; times are epoch ms."""

    field: str
    kind: str
    values: tuple[FilterValue, ...]


@dataclass(frozen=True)
class Range:
    """``field:>=x``, ``field:<x``, ``field:low..high`` (inclusive; one side may be left empty); None is open.
    Numbers for int and float fields, epoch ms for time fields."""

    field: str
    kind: str
    low: int | float | None = None
    high: int | float | None = None
    include_low: bool = True
    include_high: bool = True


@dataclass(frozen=True)
class IsNull:
    """The attribute is missing or null (CQL2 ``IS NULL``)."""

    field: str


@dataclass(frozen=True)
class Like:
    """A string attribute matches ``pattern``: ``%`` any run of characters, ``_`` one, ``\\`` escapes (CQL2)."""

    field: str
    pattern: str


@dataclass(frozen=True)
class InBox:
    """The position lies in the box (a box crossing the antimeridian too)."""

    bbox: BBox


@dataclass(frozen=True)
class InShape:
    """The position lies in a validated GeoJSON Point, LineString or Polygon (or a multi of them), WGS 84."""

    geometry: tuple[str, str]  # (type, coordinates as canonical JSON): hashable, so views stay comparable


@dataclass(frozen=True)
class AllOf:
    parts: tuple["Filter", ...]


@dataclass(frozen=True)
class AnyOf:
    parts: tuple["Filter", ...]


@dataclass(frozen=True)
class Negation:
    part: "Filter"


# ``where`` parameters give OneOf and Range; CQL2 filters (web.ogc.cql) give the whole tree.
Filter = Union[OneOf, Range, IsNull, Like, InBox, InShape, AllOf, AnyOf, Negation]


# /api/aggregate?source=: what is counted per cell; observations (every report) or latest (current tracks).
OBSERVATIONS_SOURCE, LATEST_SOURCE = "observations", "latest"
SOURCES = (OBSERVATIONS_SOURCE, LATEST_SOURCE)


@dataclass(frozen=True)
class AggregateParams:
    bbox: BBox
    window: Window
    precision: int
    fence: str | None
    where: tuple[Filter, ...] = ()
    source: str = OBSERVATIONS_SOURCE


@dataclass(frozen=True)
class ObservationParams:
    bbox: BBox
    window: Window
    limit: int
    fence: str | None
    where: tuple[Filter, ...] = ()


@dataclass(frozen=True)
class TrackParams:
    track: str
    window: Window
    limit: int
    where: tuple[Filter, ...] = ()


@dataclass(frozen=True)
class LatestParams:
    """The current positions (newest report per track) in view that pass every ``where`` filter."""

    bbox: BBox
    limit: int
    where: tuple[Filter, ...] = ()


@dataclass(frozen=True)
class EventParams:
    """A stream of /api/events: the view whose latest positions it carries (normalised, so equal views are
    one key of the shared fan-out) and where its alerts resume (partition -> offset; None: new alerts only)."""

    view: LatestParams
    resume: tuple[tuple[int, int], ...] | None = None


@dataclass(frozen=True)
class AlertParams:
    since: int | None
    limit: int


def single(query: Query, allowed: Iterable[str], repeatable: Iterable[str] = ()) -> dict[str, str]:
    """The query as name -> value, refusing unknown parameters, and repeated ones unless ``repeatable``
    (those are left out: read them with ``query.getall``)."""
    repeatable = set(repeatable)
    allowed = set(allowed) | repeatable
    out: dict[str, str] = {}
    for key in query.keys():
        if key not in allowed:
            raise BadRequest(f"unknown parameter {key!r}; allowed: {', '.join(sorted(allowed)) or 'none'}")
        if key in repeatable:
            continue
        values = query.getall(key)
        if len(values) > 1:
            raise BadRequest(f"parameter {key!r} is given {len(values)} times")
        out[key] = values[0]
    return out


def _number(text: str, name: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise BadRequest(f"{name} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise BadRequest(f"{name} {text!r} is not finite")
    return value


def _integer(text: str, name: str, low: int, high: int) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise BadRequest(f"{name} {text!r} is not an integer") from None
    if not low <= value <= high:
        raise BadRequest(f"{name} {value} is outside {low}..{high}")
    return value


def parse_bbox(text: str | None) -> BBox:
    """``minLon,minLat,maxLon,maxLat``; absent means the whole world."""
    if text is None:
        return WORLD
    parts = text.split(",")
    if len(parts) != 4:
        raise BadRequest(f"bbox {text!r} must be minLon,minLat,maxLon,maxLat (4 numbers, found {len(parts)})")
    min_lon, min_lat, max_lon, max_lat = (_number(p.strip(), "bbox value") for p in parts)
    for name, lon in (("minLon", min_lon), ("maxLon", max_lon)):
        if not -180 <= lon <= 180:
            raise BadRequest(f"bbox {name} {lon:g} is outside -180..180")
    for name, lat in (("minLat", min_lat), ("maxLat", max_lat)):
        if not -90 <= lat <= 90:
            raise BadRequest(f"bbox {name} {lat:g} is outside -90..90")
    if min_lat > max_lat:
        raise BadRequest(f"bbox is inverted: minLat {min_lat:g} > maxLat {max_lat:g}")
    # minLon > maxLon is not an error: the box crosses the antimeridian (e.g. 170,-10,-170,10).
    return BBox(min_lon, min_lat, max_lon, max_lat)


def parse_time_param(text: str | None, name: str) -> int | None:
    """Epoch ms (or seconds, by magnitude) or ISO 8601 (UTC unless an offset is given)."""
    if text is None:
        return None
    if not _TIME.fullmatch(text):
        raise BadRequest(f"{name} {text[:40]!r} is not epoch ms or s (at most 13 digits) nor an ISO 8601 date "
                         "(years 1000-8999, optional time and offset)")
    try:
        return parse_time(text)
    except (TimeParseError, OverflowError, ValueError) as exc:
        raise BadRequest(f"{name}: {exc}") from None


def parse_window(start: str | None, end: str | None) -> Window:
    window = Window(parse_time_param(start, "start"), parse_time_param(end, "end"))
    if window.start is not None and window.end is not None and window.end < window.start:
        raise BadRequest(f"end {end!r} is before start {start!r}")
    return window


def parse_precision(precision: str | None, zoom: str | None) -> int:
    """Geohash precision 1..12 given directly or through the documented zoom table."""
    if precision is not None and zoom is not None:
        raise BadRequest("give precision or zoom, not both")
    if precision is not None:
        return _integer(precision, "precision", 1, 12)
    if zoom is not None:
        return precision_for_zoom(_integer(zoom, "zoom", 0, MAX_ZOOM))
    return DEFAULT_PRECISION


def parse_limit(text: str | None, default: int = DEFAULT_LIMIT, high: int = MAX_LIMIT) -> int:
    return default if text is None else _integer(text, "limit", 1, high)


def parse_token(text: str | None, name: str) -> str | None:
    """A track or fence id: 1..256 characters of letters, digits and ``_.:@+-/`` or space."""
    if text is None:
        return None
    if not _TOKEN.fullmatch(text):
        raise BadRequest(f"{name} {text[:40]!r} must be 1..256 letters, digits, spaces or _.:@+-/")
    return text


def _filter_value(kind: str, text: str, name: str) -> FilterValue:
    """One value of a filter on field ``name`` of type ``kind``, or a 400 naming the field and the type."""
    if text == "":
        raise BadRequest(f"where {name}: empty value")
    if kind == "string":
        if len(text) > MAX_STRING_VALUE:
            raise BadRequest(f"where {name}: a value longer than {MAX_STRING_VALUE} characters never matches")
        return text
    if kind == "int":
        if not _INT.fullmatch(text) or not -(2**63) <= int(text) < 2**63:
            raise BadRequest(f"where {name}: {text[:40]!r} is not an integer (int field, 64 bits)")
        return int(text)
    if kind == "float":
        if not _FLOAT.fullmatch(text) or not math.isfinite(float(text)):
            raise BadRequest(f"where {name}: {text[:40]!r} is not a finite number (float field)")
        return float(text)
    if kind == "bool":
        if text not in ("true", "false"):
            raise BadRequest(f"where {name}: {text[:40]!r} is not true or false (bool field)")
        return text == "true"
    if kind == "time":
        value = parse_time_param(text, f"where {name} (time field)")
        assert value is not None
        return value
    raise BadRequest(f"where {name}: fields of type {kind!r} cannot be filtered")


def parse_filter(text: str, fields: Mapping[str, str]) -> Filter:
    """One ``field:expression`` against ``fields`` (name -> preset type, geoiot.documents.field_types)."""
    if not _WHERE.fullmatch(text):
        raise BadRequest(f"where {text[:60]!r} is not field:expression (a field name, a colon, then 1..1024 "
                         "characters, no control characters)")
    name, _, expr = text.partition(":")
    kind = fields.get(name)
    if kind is None:
        raise BadRequest(f"where: unknown field {name[:60]!r}; filterable: {', '.join(sorted(fields)) or 'none'}")
    comparison = _COMPARISON.fullmatch(expr)
    if kind in RANGE_TYPES and (comparison or ".." in expr):
        if comparison:
            op, operand = comparison.groups()
            value = _filter_value(kind, operand, name)
            inclusive = op.endswith("=")
            return (Range(name, kind, low=value, include_low=inclusive) if op[0] == ">"
                    else Range(name, kind, high=value, include_high=inclusive))
        low_text, _, high_text = expr.partition("..")
        if not low_text and not high_text:
            raise BadRequest(f"where {name}: a range needs at least one bound (low..high, low.. or ..high)")
        low = _filter_value(kind, low_text, name) if low_text else None
        high = _filter_value(kind, high_text, name) if high_text else None
        if low is not None and high is not None and low > high:  # type: ignore[operator]
            raise BadRequest(f"where {name}: range {expr[:60]!r} is inverted (low > high)")
        return Range(name, kind, low, high)  # type: ignore[arg-type]
    if comparison:
        raise BadRequest(f"where {name}: ranges apply to {', '.join(RANGE_TYPES)} fields; {name!r} is a {kind} "
                         "(use field:value or field:a|b)")
    parts = expr.split("|")
    if len(parts) > MAX_FILTER_VALUES:
        raise BadRequest(f"where {name}: {len(parts)} values; at most {MAX_FILTER_VALUES}")
    return OneOf(name, kind, tuple(dict.fromkeys(_filter_value(kind, part, name) for part in parts)))


def parse_where(texts: Sequence[str], fields: Mapping[str, str]) -> tuple[Filter, ...]:
    """Every ``where`` parameter, all to hold at once (AND)."""
    if len(texts) > MAX_FILTERS:
        raise BadRequest(f"where is given {len(texts)} times; at most {MAX_FILTERS}")
    return tuple(parse_filter(text, fields) for text in texts)


def bounded_precision(bbox: BBox, precision: int, max_cells: int) -> int:
    """The highest precision up to ``precision`` whose grid over ``bbox`` has at most ``max_cells`` cells
    (never below 1): an aggregation's cost grows with the cells it may build, so a wide view at a fine
    precision is answered at a coarser one, and the answer's ``precision`` says which."""
    while precision > 1 and grid_cells(*bbox.as_list(), precision) > max_cells:
        precision -= 1
    return precision


def aggregate_params(query: Query, max_cells: int, fields: Mapping[str, str] = NO_FIELDS) -> AggregateParams:
    """``max_cells``: the most geohash cells one aggregation may cover (WEB_MAX_GRID_CELLS); ``fields``: what
    ``where`` may filter (geoiot.documents.field_types of the preset)."""
    q = single(query, {"bbox", "precision", "zoom", "start", "end", "fence", "source"}, {"where"})
    bbox = parse_bbox(q.get("bbox"))
    precision = bounded_precision(bbox, parse_precision(q.get("precision"), q.get("zoom")), max_cells)
    source = q.get("source", OBSERVATIONS_SOURCE)
    if source not in SOURCES:
        raise BadRequest(f"source {source[:40]!r} must be one of {', '.join(SOURCES)}")
    return AggregateParams(bbox, parse_window(q.get("start"), q.get("end")), precision,
                           parse_token(q.get("fence"), "fence"), parse_where(query.getall("where", []), fields),
                           source)


def observation_params(query: Query, fields: Mapping[str, str] = NO_FIELDS) -> ObservationParams:
    q = single(query, {"bbox", "start", "end", "limit", "fence"}, {"where"})
    return ObservationParams(parse_bbox(q.get("bbox")), parse_window(q.get("start"), q.get("end")),
                             parse_limit(q.get("limit")), parse_token(q.get("fence"), "fence"),
                             parse_where(query.getall("where", []), fields))


def track_params(track: str, query: Query, fields: Mapping[str, str] = NO_FIELDS) -> TrackParams:
    q = single(query, {"start", "end", "limit"}, {"where"})
    token = parse_token(track, "track id")
    assert token is not None
    return TrackParams(token, parse_window(q.get("start"), q.get("end")),
                       parse_limit(q.get("limit"), MAX_TRACK_POINTS, MAX_TRACK_POINTS),
                       parse_where(query.getall("where", []), fields))


def latest_params(query: Query, fields: Mapping[str, str] = NO_FIELDS) -> LatestParams:
    q = single(query, {"bbox", "limit"}, {"where"})
    return LatestParams(parse_bbox(q.get("bbox")), parse_limit(q.get("limit")),
                        parse_where(query.getall("where", []), fields))


# The resume token of /api/events (web.alerts.format_cursor): partition:offset, comma-separated.
CURSOR_PATTERN = r"^[0-9]{1,6}:[0-9]{1,19}(,[0-9]{1,6}:[0-9]{1,19}){0,1023}$"
_CURSOR = re.compile(CURSOR_PATTERN.removeprefix("^").removesuffix("$"))


def parse_cursor(text: str, name: str) -> tuple[tuple[int, int], ...]:
    """A resume token as sorted (partition, offset) pairs, each partition once."""
    if not _CURSOR.fullmatch(text):
        raise BadRequest(f"{name} {text[:40]!r} is not a resume token of this server (partition:offset, "
                         "comma-separated)")
    pairs = [tuple(int(x) for x in part.split(":")) for part in text.split(",")]
    cursor = dict(pairs)
    if len(cursor) != len(pairs):
        raise BadRequest(f"{name} {text[:40]!r} names a partition twice")
    return tuple(sorted(cursor.items()))


def normal_view(p: LatestParams) -> LatestParams:
    """``p`` with its filters in one order and each once: views that select the same are equal."""
    return LatestParams(p.bbox, p.limit, tuple(sorted(set(p.where), key=repr)))


def event_params(query: Query, last_event_id: str | None, fields: Mapping[str, str] = NO_FIELDS) -> EventParams:
    """/api/events: the /api/latest parameters, and the resume token from the ``Last-Event-ID`` header (which
    a browser's EventSource sends when it reconnects) or else from ``last_event_id`` (for a new stream, e.g.
    after the view changed, that must not miss the alerts in between)."""
    q = single(query, {"bbox", "limit", "last_event_id"}, {"where"})
    view = normal_view(LatestParams(parse_bbox(q.get("bbox")), parse_limit(q.get("limit")),
                                    parse_where(query.getall("where", []), fields)))
    if last_event_id is not None and last_event_id.strip() != "":
        return EventParams(view, parse_cursor(last_event_id.strip(), "Last-Event-ID"))
    token = q.get("last_event_id", "")
    return EventParams(view, parse_cursor(token, "last_event_id") if token else None)


def alert_params(query: Query) -> AlertParams:
    q = single(query, {"since", "limit"})
    return AlertParams(parse_time_param(q.get("since"), "since"), parse_limit(q.get("limit"), 100))


def no_params(query: Query) -> None:
    single(query, ())
