"""Read position files (CSV with or without header, JSON Lines; plain or gzip) into wire-format records.

A UTF-8 byte-order mark is dropped. A damaged file (truncated or corrupt gzip, a read error) yields
every complete line before the damage, rejects the incomplete last one, then raises DamagedFile.

The shared core (:mod:`geoiot.schema`) defines what a valid record is; this module only makes the
common case fast with :class:`geoiot.convert.FastConverter` (shared with the ingest gateway), so results
and rejection reasons are exactly the shared core's.
"""

from __future__ import annotations

import csv
import gzip
import io
import itertools
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timezone, tzinfo
from pathlib import Path
from typing import IO, Any

import orjson

from geoiot.convert import FastConverter
from geoiot.schema import InvalidRecord, Preset, parse_row
from geoiot.timeparse import EventTimeBounds

JSON_SUFFIXES = {".jsonl", ".ndjson", ".json"}


@dataclass(frozen=True)
class Rejected:
    """A row that must not be sent: where it was, why, and its text (for ``--rejects``)."""

    line_no: int
    reason: str
    raw: str
    kind: str | None = None  # the summary's skip_reasons key, when the reason text does not tell it


class DamagedFile(ValueError):
    """The file could not be read to its end; every complete line before the damage was yielded."""

    def __init__(self, path: str | Path, lines: int, cause: str) -> None:
        super().__init__(f"{path} is damaged after line {lines}: {cause}")
        self.path, self.lines, self.cause = str(path), lines, cause


_DAMAGE = (EOFError, zlib.error, OSError)  # truncated gzip, corrupt deflate data, BadGzipFile / CRC / EIO


class _Guard(io.RawIOBase):
    """Bytes of a (possibly damaged) stream, passed on only up to the last newline seen.

    A truncated or corrupt stream then ends cleanly at a line boundary instead of raising in the
    middle of the text layer (where the partial line would be lost); ``damage`` says what happened
    and ``partial`` holds the incomplete line. Works per chunk, off the per-line hot path.
    """

    CHUNK = 64 * 1024

    def __init__(self, inner: IO[bytes]) -> None:
        super().__init__()
        self.inner = inner
        self.damage: str | None = None
        self.partial = b""
        self.lines = 0  # newlines passed on
        self._out = memoryview(b"")
        self._tail = bytearray()
        self._eof = False
        # read1: a gzip read() would drop what it decompressed before the damage, read1 returns it first
        self._read = getattr(inner, "read1", inner.read)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._out:
            if self._eof:
                return 0
            try:
                data = self._read(self.CHUNK)
            except _DAMAGE as exc:
                kind = "corrupt gzip data" if isinstance(exc, zlib.error) else type(exc).__name__
                self.damage = f"{kind}: {exc}" if str(exc) else kind
                self.partial, self._tail, self._eof = bytes(self._tail), bytearray(), True
                continue
            if not data:
                self._out, self._tail, self._eof = memoryview(bytes(self._tail)), bytearray(), True
                continue
            cut = data.rfind(b"\n") + 1
            if not cut:  # still inside one long line
                self._tail += data
                continue
            chunk = bytes(self._tail) + data[:cut] if self._tail else data[:cut]
            self._tail = bytearray(data[cut:])
            self.lines += chunk.count(b"\n")
            self._out = memoryview(chunk)
        n = min(len(buffer), len(self._out))
        buffer[:n] = self._out[:n]
        self._out = self._out[n:]
        return n

    def close(self) -> None:
        self.inner.close()
        super().close()


def _open(path: str | Path) -> tuple[IO[str], _Guard]:
    path = Path(path)
    with path.open("rb") as probe:
        magic = probe.read(2)
    raw: IO[bytes] = gzip.open(path, "rb") if magic == b"\x1f\x8b" else path.open("rb", buffering=0)
    guard = _Guard(raw)
    # utf-8-sig: a byte-order mark (Excel, Notepad) would otherwise be part of the first field
    text = io.TextIOWrapper(io.BufferedReader(guard, _Guard.CHUNK), encoding="utf-8-sig", errors="replace",
                            newline="")
    return text, guard


def open_text(path: str | Path) -> IO[str]:
    """Text stream of a plain or gzip file (gzip told by its magic bytes, not only the suffix), BOM dropped."""
    return _open(path)[0]


def detect_format(path: str | Path, first_line: str) -> str:
    """'jsonl' or 'csv': by suffix (ignoring .gz), else by the first non-empty line."""
    suffixes = [s.lower() for s in Path(path).suffixes if s.lower() != ".gz"]
    if suffixes and suffixes[-1] in JSON_SUFFIXES:
        return "jsonl"
    if suffixes and suffixes[-1] == ".csv":
        return "csv"
    return "jsonl" if first_line.lstrip().startswith("{") else "csv"


def _split(line: str) -> list[str]:
    if '"' in line:
        return next(csv.reader([line]))
    return line.split(",")


Owns = Callable[[Any], bool]  # given a row's raw track id (None when unknown): is this reader its owner?


def read_records(path: str | Path, preset: Preset, tz: tzinfo = timezone.utc, owns: Owns | None = None,
                 bounds: EventTimeBounds | None = None) -> Iterator[tuple[int, dict[str, Any] | Rejected]]:
    """Yield (line number, wire object or Rejected) for every non-blank line of the file, in order.

    With ``owns``, rows whose raw track id it refuses are skipped before conversion: several worker
    processes then share one file, each converting (and counting) only the rows of its own partitions.
    With ``bounds``, rows whose event time the agents would refuse (:class:`EventTimeBounds`) are rejected.
    """
    converter = FastConverter(preset, tz, bounds)
    stream, guard = _open(path)
    with stream:
        lines = enumerate(stream, 1)
        for line_no, line in lines:
            text = line.rstrip("\r\n")
            if not text.strip():
                continue
            if detect_format(path, text) == "jsonl":
                yield from _jsonl(itertools.chain([(line_no, line)], lines), converter, owns)
                break
            head = [h.strip() for h in _split(text)]
            if preset.track in head and preset.time in head:
                yield from _csv_with_header(lines, converter, head, owns)
            else:
                yield from _csv(itertools.chain([(line_no, line)], lines), converter, owns)
            break
    if guard.damage is not None:
        partial = guard.partial.decode("utf-8", errors="replace").rstrip("\r")
        if partial.strip() and (owns is None or owns(None)):
            line_no = guard.lines + 1
            yield line_no, Rejected(line_no, f"incomplete last line: the file ends inside it ({guard.damage})",
                                    partial, "incomplete")
        raise DamagedFile(path, guard.lines, guard.damage)


def _jsonl(lines: Iterator[tuple[int, str]], converter: FastConverter,
           owns: Owns | None) -> Iterator[tuple[int, dict[str, Any] | Rejected]]:
    track = converter.preset.track
    for line_no, line in lines:
        text = line.rstrip("\r\n")
        if not text.strip():
            continue
        try:
            try:
                obj = orjson.loads(text)
            except orjson.JSONDecodeError as exc:
                if owns is not None and not owns(None):
                    continue
                raise InvalidRecord(f"not valid JSON: {exc}") from None
            if not isinstance(obj, dict):
                if owns is not None and not owns(None):
                    continue
                raise InvalidRecord(f"a JSON {type(obj).__name__}, not an object")
            if owns is not None and not owns(obj.get(track)):
                continue
            yield line_no, converter.convert(obj)
        except InvalidRecord as exc:
            yield line_no, Rejected(line_no, exc.reason, text)


def _csv(lines: Iterator[tuple[int, str]], converter: FastConverter,
         owns: Owns | None) -> Iterator[tuple[int, dict[str, Any] | Rejected]]:
    """Headerless CSV, the hot path of max-rate replays: one split and one compiled conversion per row."""
    preset, tz = converter.preset, converter.tz
    width = len(preset.names)
    track_i = preset.names.index(preset.track)
    convert = converter.convert_strings
    for line_no, line in lines:
        text = line.rstrip("\r\n")
        values = text.split(",") if '"' not in text else _split(text)
        try:
            if len(values) != width:
                if not text.strip() or (owns is not None and not owns(None)):
                    continue
                parse_row(preset, values, tz)  # raises the shared core's column-count error
            elif owns is not None and not owns(values[track_i]):
                continue
            yield line_no, convert(values)
        except InvalidRecord as exc:
            yield line_no, Rejected(line_no, exc.reason, text)


def _csv_with_header(lines: Iterator[tuple[int, str]], converter: FastConverter, head: list[str],
                     owns: Owns | None) -> Iterator[tuple[int, dict[str, Any] | Rejected]]:
    columns = [head.index(n) if n in head else None for n in converter.names]
    track_col = head.index(converter.preset.track)
    for line_no, line in lines:
        text = line.rstrip("\r\n")
        if not text.strip():
            continue
        values = _split(text)
        if owns is not None and not owns(values[track_col] if len(values) == len(head) else None):
            continue
        if len(values) != len(head):
            reason = f"expected {len(head)} columns (as in the header), found {len(values)}"
            yield line_no, Rejected(line_no, reason, text)
            continue
        try:
            yield line_no, converter.convert_strings(["" if c is None else values[c] for c in columns])
        except InvalidRecord as exc:
            yield line_no, Rejected(line_no, exc.reason, text)
