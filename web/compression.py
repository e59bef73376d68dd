"""Response compression: gzip or deflate at a cheap level of ISA-L's deflate, and a bounded memo of compressed
bodies, so that an answer byte-identical to one just compressed is not compressed again.

Why the memo: maps over one fleet ask for views that differ only by a screen's size or a pan of a few pixels,
so the view-keyed answer cache (web.cache) cannot share them, yet their answers are often the same bytes (the
newest tracks of a city). Compressing such an answer is most of its cost on the live path
(docs/BENCHMARKS.md, Issue 23). A hit is checked byte for byte, so a body is never answered with another's."""

from __future__ import annotations

from collections import OrderedDict

from isal import isal_zlib

# Level 1 of ISA-L's deflate (isal, zlib's format and interface): much faster than zlib's default 6 for a
# slightly larger body (docs/BENCHMARKS.md, bench.web_shaping), and several times faster than zlib's level 1
# for a smaller one (docs/BENCHMARKS.md, Issue 23: /api/latest under load).
GZIP_LEVEL = 1
# Bodies below this go uncompressed: the headers would eat the saving.
MIN_COMPRESS = 512
# Bodies below this are compressed without the memo: cheap to compress, and they would crowd it.
MEMO_MIN_BODY = 32 * 1024
MEMO_MAX_BYTES = 64 * 1024 * 1024


def gzip_body(body: bytes, coding: str) -> bytes:
    """``body`` compressed at GZIP_LEVEL as gzip (wbits 31) or zlib-wrapped deflate (wbits 15, as HTTP wants)."""
    compressor = isal_zlib.compressobj(GZIP_LEVEL, isal_zlib.DEFLATED, 31 if coding == "gzip" else 15)
    return compressor.compress(body) + compressor.flush()


class CompressedBodies:
    """The compressed forms of recent large bodies, keyed by coding, length and CRC-32 and checked byte for byte
    on a hit; at most ``max_bytes`` (bodies and their compressed forms) held, least recently used dropped first."""

    def __init__(self, max_bytes: int = MEMO_MAX_BYTES, min_body: int = MEMO_MIN_BODY) -> None:
        self.max_bytes, self.min_body = max_bytes, min_body
        self.held = 0
        self._entries: OrderedDict[tuple[str, int, int], tuple[bytes, bytes]] = OrderedDict()

    def compress(self, body: bytes, coding: str) -> tuple[bytes, bool]:
        """The compressed body, and whether it came from the memo."""
        if len(body) < self.min_body:
            return gzip_body(body, coding), False
        key = (coding, len(body), isal_zlib.crc32(body))
        entry = self._entries.get(key)
        if entry is not None and entry[0] == body:
            self._entries.move_to_end(key)
            return entry[1], True
        compressed = gzip_body(body, coding)
        size = len(body) + len(compressed)
        if size > self.max_bytes:
            return compressed, False
        if entry is not None:  # a CRC-32 collision: the newer body takes the place
            self.held -= len(entry[0]) + len(entry[1])
        self._entries[key] = (body, compressed)
        self._entries.move_to_end(key)
        self.held += size
        while self.held > self.max_bytes:
            _, (old, old_compressed) = self._entries.popitem(last=False)
            self.held -= len(old) + len(old_compressed)
        return compressed, False
