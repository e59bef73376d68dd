"""A page of Elasticsearch hits as GeoJSON features, from the response's bytes: msgspec reads the envelope
and each position, and the document's own JSON becomes the feature's properties as it is, times rewritten in
place as RFC 3339. The dict-per-hit path (parse, rebuild, serialise) cost more than the search itself.

The search excludes ``geometry`` from ``_source`` (web.queries.page_body); the position is the preset's
lon/lat fields, which the agents write with the same values. Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import msgspec
import orjson

from geoiot.documents import field_types
from geoiot.schema import Preset
from web.ogc.views import rfc3339


class _Hit(msgspec.Struct):
    id: str = msgspec.field(name="_id")
    source: msgspec.Raw = msgspec.field(name="_source", default=msgspec.Raw(b"null"))
    sort: list[Any] = []


class _Total(msgspec.Struct):
    value: int = 0


class _Hits(msgspec.Struct):
    hits: list[_Hit] = []
    total: _Total = msgspec.field(default_factory=_Total)


class _Response(msgspec.Struct):
    hits: _Hits = msgspec.field(default_factory=_Hits)


@dataclass(frozen=True)
class Shaped:
    features: bytes  # a JSON array
    count: int  # features (hits without a position are left out)
    returned: int  # hits
    after: list[Any] | None  # the last hit's sort values
    total: int


@lru_cache(maxsize=16)
def shaper(preset: Preset) -> Callable[[bytes], Shaped]:
    """The function that shapes a search response's bytes for ``preset``."""
    position = msgspec.json.Decoder(msgspec.defstruct(
        "Position", [("lon", Any, None), ("lat", Any, None)], rename={"lon": preset.lon, "lat": preset.lat}))
    response = msgspec.json.Decoder(_Response)
    times = [name for name, kind in field_types(preset).items() if kind == "time"]
    # a time member of the (compact, flat) document: a quote right after { or , is never inside a string
    pattern = re.compile(rb'(?<=[{,])"(' + b"|".join(re.escape(orjson.dumps(t)[1:-1]) for t in times)
                         + rb')":(-?[0-9]{1,16})(?=[,}])') if times else None

    def shape(body: bytes) -> Shaped:
        resp = response.decode(body)
        seen: dict[bytes, bytes] = {}

        def when(m: re.Match[bytes]) -> bytes:
            ms = m.group(2)
            text = seen.get(ms)
            if text is None:
                text = seen[ms] = b'"%s"' % rfc3339(int(ms)).encode()  # type: ignore[union-attr]
            return b'"%s":%s' % (m.group(1), text)

        parts: list[bytes] = []
        for hit in resp.hits.hits:
            raw = bytes(hit.source)
            pos = position.decode(raw)
            lon, lat = pos.lon, pos.lat
            if not isinstance(lon, (int, float)) or not isinstance(lat, (int, float)) \
                    or isinstance(lon, bool) or isinstance(lat, bool):
                continue
            props = pattern.sub(when, raw) if pattern is not None else raw
            parts.append(b'{"type":"Feature","id":%s,"geometry":{"type":"Point","coordinates":[%s,%s]},'
                         b'"properties":%s}' % (orjson.dumps(hit.id), orjson.dumps(lon), orjson.dumps(lat), props))
        hits = resp.hits.hits
        return Shaped(b"[" + b",".join(parts) + b"]", len(parts), len(hits), hits[-1].sort if hits else None,
                      resp.hits.total.value)

    return shape
