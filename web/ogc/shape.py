"""GeoJSON features of the OGC API's pages. :func:`shaper`: a page of Elasticsearch hits, from the response's
bytes: msgspec reads the envelope and each document's position and times, and the document's own JSON becomes
the feature's properties as it is, its epoch-ms times replaced in place by RFC 3339 strings, with no dict built
per hit. :func:`document_shaper`: the same features from documents held in memory (the live mirror).

The search excludes ``geometry`` from ``_source`` (web.where.page_body); the position is the preset's
lon/lat fields, which the agents write with the same values. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import msgspec
import orjson

from geoiot.documents import GEOMETRY, field_types
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
    times = [name for name, kind in field_types(preset).items() if kind == "time"]
    names = {"lon": preset.lon, "lat": preset.lat, **{f"t{i}": t for i, t in enumerate(times)}}
    members = msgspec.json.Decoder(msgspec.defstruct("Members", [(a, Any, None) for a in names], rename=names))
    response = msgspec.json.Decoder(_Response)
    keys = [(f"t{i}", orjson.dumps(t)) for i, t in enumerate(times)]  # attribute, quoted member name

    def shape(body: bytes) -> Shaped:
        resp = response.decode(body)
        seen: dict[int, bytes] = {}
        parts: list[bytes] = []
        for hit in resp.hits.hits:
            props = bytes(hit.source)
            doc = members.decode(props)
            lon, lat = doc.lon, doc.lat
            if type(lon) not in (int, float) or type(lat) not in (int, float):
                continue
            for attr, key in keys:
                ms = getattr(doc, attr)
                if type(ms) is int:
                    text = seen.get(ms)
                    if text is None:
                        text = seen[ms] = b'"%s"' % rfc3339(ms).encode()  # type: ignore[union-attr]
                    # the member as the compact JSON holds it: a quoted name is never inside a string
                    props = props.replace(b"%s:%d" % (key, ms), b"%s:%s" % (key, text), 1)
            parts.append(b'{"type":"Feature","id":%s,"geometry":{"type":"Point","coordinates":[%s,%s]},'
                         b'"properties":%s}' % (orjson.dumps(hit.id), orjson.dumps(lon), orjson.dumps(lat), props))
        hits = resp.hits.hits
        return Shaped(b"[" + b",".join(parts) + b"]", len(parts), len(hits), hits[-1].sort if hits else None,
                      resp.hits.total.value)

    return shape


@lru_cache(maxsize=16)
def document_shaper(preset: Preset) -> Callable[[Sequence[tuple[str, dict[str, Any]]]], tuple[bytes, int]]:
    """The function that shapes (feature id, document) pairs held in memory (the live mirror's, web.live) as
    :func:`shaper` shapes hits: the position from the preset's lon/lat (a document without them is left out),
    every other member but ``geometry`` as a property, epoch-ms times as RFC 3339. Gives (a JSON array of the
    features, how many)."""
    times = [name for name, kind in field_types(preset).items() if kind == "time"]
    lon_name, lat_name = preset.lon, preset.lat

    def shape(docs: Sequence[tuple[str, dict[str, Any]]]) -> tuple[bytes, int]:
        seen: dict[int, str | None] = {}
        out: list[dict[str, Any]] = []
        for fid, doc in docs:
            lon, lat = doc.get(lon_name), doc.get(lat_name)
            if type(lon) not in (int, float) or type(lat) not in (int, float):
                continue
            props = dict(doc)
            props.pop(GEOMETRY, None)
            for name in times:
                ms = props.get(name)
                if type(ms) is int:
                    text = seen.get(ms)
                    if text is None:
                        text = seen[ms] = rfc3339(ms)
                    props[name] = text
            out.append({"type": "Feature", "id": fid, "geometry": {"type": "Point", "coordinates": [lon, lat]},
                        "properties": props})
        return orjson.dumps(out), len(out)

    return shape
