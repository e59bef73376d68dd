"""Validation of the OGC API's query parameters into one frozen value per request; anything else is a 400.

Built on web.params (bbox, times, limits, unknown parameters) so the two APIs accept the same values.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from geoiot.documents import DAY_MS
from web.ogc import cql
from web.params import (WORLD, BadRequest, BBox, Filter, Query, Window, parse_bbox, parse_limit, parse_time_param,
                        single)

# Part 1's limit: default 10, maximum 10,000 (the standard's OpenAPI fragment and Elasticsearch's result window).
DEFAULT_LIMIT = 10
MAX_LIMIT = 10_000
FORMATS = ("json", "html")
CRS84 = "http://www.opengis.net/def/crs/OGC/1.3/CRS84"
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
ITEMS_PARAMS = ("bbox", "datetime", "limit", "filter", "filter-lang", "filter-crs", "bbox-crs", "cursor", "f")


@dataclass(frozen=True)
class ItemsParams:
    bbox: BBox
    window: Window
    limit: int
    where: tuple[Filter, ...]
    cursor: str | None
    fmt: str


def format_params(query: Query, accept: str | None) -> str:
    """The pages whose only parameter is ``f``."""
    return negotiate(single(query, ("f",)).get("f"), accept)


def negotiate(fmt: str | None, accept: str | None) -> str:
    """``f=json|html``; without it, HTML for a browser (Accept names text/html before any JSON), else JSON."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise BadRequest(f"f {fmt[:20]!r} must be one of {', '.join(FORMATS)}")
        return fmt
    accept = (accept or "").lower()
    html, json = accept.find("text/html"), accept.find("json")
    return "html" if html >= 0 and (json < 0 or html < json) else "json"


def _bound(text: str, name: str, end: bool) -> int | None:
    """One end of a datetime interval: open (``..`` or empty), a date (its whole UTC day), or an instant."""
    if text in ("", ".."):
        return None
    value = parse_time_param(text, name)
    assert value is not None
    return value + DAY_MS - 1 if end and _DATE.fullmatch(text) else value


def parse_datetime(text: str | None) -> Window:
    """``datetime``: an instant, ``start/end``, ``../end`` or ``start/..`` (RFC 3339), inclusive."""
    if text is None:
        return Window()
    if "/" in text:
        start_text, _, end_text = text.partition("/")
        if "/" in end_text or (start_text in ("", "..") and end_text in ("", "..")):
            raise BadRequest(f"datetime {text[:60]!r} must be an instant or an interval start/end with at most "
                             "one open end ('..')")
        window = Window(_bound(start_text, "datetime start", False), _bound(end_text, "datetime end", True))
        if window.start is not None and window.end is not None and window.end < window.start:
            raise BadRequest(f"datetime {text[:60]!r} ends before it starts")
        return window
    return Window(_bound(text, "datetime", False), _bound(text, "datetime", True))


def items_params(query: Query, accept: str | None, fields: Mapping[str, str], filterable: bool = True) -> ItemsParams:
    """The items of a collection: bbox, datetime, limit, a CQL2 filter (``filterable`` collections), the
    next-page cursor and the format."""
    q = single(query, ITEMS_PARAMS)
    fmt = negotiate(q.get("f"), accept)
    for name in ("bbox-crs", "filter-crs"):
        if q.get(name, CRS84) != CRS84:
            raise BadRequest(f"{name} must be {CRS84} (the only CRS served)")
    lang = q.get("filter-lang", cql.TEXT)
    where: tuple[Filter, ...] = ()
    if "filter" in q:
        if not filterable:
            raise BadRequest("this collection cannot be filtered (its items are few and held in memory)")
        where = (cql.parse(q["filter"], lang, fields),)
    elif "filter-lang" in q and lang not in cql.LANGUAGES:
        raise BadRequest(f"filter-lang {lang[:40]!r} must be one of {', '.join(cql.LANGUAGES)}")
    bbox = parse_bbox(q["bbox"]) if "bbox" in q else WORLD
    return ItemsParams(bbox, parse_datetime(q.get("datetime")), parse_limit(q.get("limit"), DEFAULT_LIMIT, MAX_LIMIT),
                       where, q.get("cursor"), fmt)
