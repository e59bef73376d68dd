"""Signed next-page cursors: where a scan resumes (search_after values or an offset), how many it has
returned and how many match, bound to the query they page through.

A cursor is ``base64url(JSON).base64url(HMAC-SHA256)``; the MAC covers the collection and a digest of the
query too, so a cursor edited by hand, or replayed on another query, is a 400 and never reaches
Elasticsearch. Pure: the key is passed in.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

import orjson

from web.params import BadRequest

MAX_CURSOR = 2048  # characters: a track id of 256 characters fits many times over
_MAC_BYTES = 16


@dataclass(frozen=True)
class Cursor:
    """``after``: the sort values of the last feature returned (None for in-memory collections, which page by
    ``offset``); ``offset``: features returned before the next page; ``matched``: the first page's count."""

    after: list[Any] | None
    offset: int
    matched: int


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(key: bytes, scope: str, payload: bytes) -> bytes:
    return hmac.new(key, scope.encode() + b"\0" + payload, hashlib.sha256).digest()[:_MAC_BYTES]


def query_scope(collection: str, query: Any) -> str:
    """What a cursor is bound to: the collection and the canonical JSON of its query."""
    digest = hashlib.sha256(orjson.dumps(query, option=orjson.OPT_SORT_KEYS, default=repr)).hexdigest()
    return f"{collection}:{digest}"


def encode(key: bytes, scope: str, cursor: Cursor) -> str:
    payload = orjson.dumps([cursor.after, cursor.offset, cursor.matched])
    return f"{_b64(payload)}.{_b64(_mac(key, scope, payload))}"


def decode(key: bytes, scope: str, text: str) -> Cursor:
    """The cursor ``text`` if this server signed it for ``scope``; else BadRequest."""
    bad = BadRequest("cursor is not one this server issued for this query (take the next link as it is)")
    if len(text) > MAX_CURSOR or text.count(".") != 1:
        raise bad
    body, mac = text.split(".")
    try:
        payload, given = _unb64(body), _unb64(mac)
    except (binascii.Error, ValueError):
        raise bad from None
    if not hmac.compare_digest(given, _mac(key, scope, payload)):
        raise bad
    after, offset, matched = orjson.loads(payload)  # signed by us: the shape is ours
    return Cursor(after, offset, matched)
