"""The primitive query parsers (bbox, times, limits, ids) and the dataclasses handlers get instead of the raw
query string; anything invalid is a :class:`BadRequest` (a 400). The filter dataclasses are shared by the
``where`` language (web.where) and CQL2 (web.ogc.cql); web.where builds Elasticsearch requests from them."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Protocol, Union

from geoiot.timeparse import TimeParseError, parse_time
from web.geo import MAX_ZOOM, grid_cells, precision_for_zoom

MAX_LIMIT = 10_000
# /api/tracks/{id} pages through the window (search_after, web.where.TRACK_PAGE points a search) up to
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


def bounded_precision(bbox: BBox, precision: int, max_cells: int) -> int:
    """The highest precision up to ``precision`` whose grid over ``bbox`` has at most ``max_cells`` cells
    (never below 1): an aggregation's cost grows with the cells it may build, so a wide view at a fine
    precision is answered at a coarser one, and the answer's ``precision`` says which."""
    while precision > 1 and grid_cells(*bbox.as_list(), precision) > max_cells:
        precision -= 1
    return precision


def normal_view(p: LatestParams) -> LatestParams:
    """``p`` with its filters in one order and each once: views that select the same are equal."""
    return LatestParams(p.bbox, p.limit, tuple(sorted(set(p.where), key=repr)))


def alert_params(query: Query) -> AlertParams:
    q = single(query, {"since", "limit"})
    return AlertParams(parse_time_param(q.get("since"), "since"), parse_limit(q.get("limit"), 100))


def no_params(query: Query) -> None:
    single(query, ())
