"""The dead-letter record: what a refused event becomes on the dead-letter topic, and its original bytes back.

Written by both runtimes and read by the redrive (replay/dlq.py), so it lives in the shared kernel.
"""

from __future__ import annotations

import base64
from typing import Any

import orjson

# A dead letter must fit in a Kafka message (brokers refuse more than ~1 MB by default), or the batch
# holding it could never complete and the partition would stall on it. Larger letters keep the first
# DLQ_KEEP_BYTES of the value, base64-encoded (4/3 of the size whatever the bytes; JSON escaping of
# control characters can grow text 6x), and say so; the whole value stays in the source topic at the
# partition and offset the letter names.
DLQ_MAX_BYTES = 900_000
DLQ_KEEP_BYTES = 600_000


def dead_letter(raw: bytes | None, reason: str, topic: str, partition: int, offset: int,
                key: bytes | None = None) -> bytes:
    """The dead-letter message value (JSON), at most ``DLQ_MAX_BYTES`` for any value up to the broker's limit.

    ``original`` is the original value as a UTF-8 string when it decodes as UTF-8, otherwise its
    base64 text; ``original_encoding`` ("utf-8", "base64" or null for a missing value) says which,
    so the exact bytes can always be recovered. A value too large for that is cut to its first
    ``DLQ_KEEP_BYTES`` (base64) with ``original_truncated: true`` and ``original_size``.
    """
    original: str | None
    encoding: str | None
    if raw is None:
        original, encoding = None, None
    else:
        raw = bytes(raw)
        try:
            original, encoding = raw.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            original, encoding = base64.b64encode(raw).decode("ascii"), "base64"
    letter = {
        "reason": reason[:10_000],
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "key": None if key is None else bytes(key)[:10_000].decode("utf-8", "backslashreplace"),
        "original": original,
        "original_encoding": encoding,
    }
    value = orjson.dumps(letter)
    if len(value) <= DLQ_MAX_BYTES or raw is None:
        return value
    letter["original"] = base64.b64encode(raw[:DLQ_KEEP_BYTES]).decode("ascii")
    letter["original_encoding"] = "base64"
    letter["original_truncated"] = True
    letter["original_size"] = len(raw)
    return orjson.dumps(letter)


def original_bytes(dead: dict[str, Any]) -> bytes | None:
    """The original value of a parsed dead letter (inverse of :func:`dead_letter`)."""
    if dead.get("original") is None:
        return None
    if dead.get("original_encoding") == "base64":
        return base64.b64decode(dead["original"])
    return str(dead["original"]).encode("utf-8")
