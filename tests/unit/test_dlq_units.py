"""The dead-letter redrive's pure parts (replay/dlq.py): a letter gives back the exact original key and
value that ``geoiot.deadletter.dead_letter`` was given, and the selection skips each letter under one kind."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, strategies as st

from geoiot.deadletter import DLQ_KEEP_BYTES, dead_letter
from replay.dlq import SKIP_KINDS, Letter, NotALetter, Selection, parse_letter


@given(st.binary(max_size=2000), st.one_of(st.none(), st.binary(max_size=50)))
def test_a_letter_gives_back_the_exact_original_bytes_and_key(raw: bytes, key: bytes | None) -> None:
    letter = parse_letter(dead_letter(raw, "why", "src", 2, 41, key), key)
    assert (letter.value, letter.key, letter.topic, letter.partition, letter.offset) == (raw, key, "src", 2, 41)
    assert letter.reason == "why" and not letter.truncated


def test_the_letter_key_text_is_used_only_without_a_record_key() -> None:
    letter = parse_letter(dead_letter(b"{}", "r", "src", 0, 1, b"cab-1"), None)
    assert letter.key == b"cab-1"


def test_a_missing_or_truncated_value_is_said_so() -> None:
    empty = parse_letter(dead_letter(None, "empty value", "src", 0, 1, b"k"), b"k")
    assert empty.value is None and Selection().skip(empty, 0) == "no_value"
    big = parse_letter(dead_letter(b"x" * 1_000_000, "too big", "src", 0, 2, b"k"), b"k")
    assert big.truncated and len(big.value) == DLQ_KEEP_BYTES and Selection().skip(big, 0) == "truncated"


@pytest.mark.parametrize("value", [b"", b"not json", b"[1]", b'{"topic":"t","partition":"0","offset":1}',
                                   b'{"topic":"t","partition":0}', b'{"partition":0,"offset":1,"original":"x"}'])
def test_anything_else_is_not_a_letter(value: bytes) -> None:
    with pytest.raises(NotALetter):
        parse_letter(value, None)


def letter(reason: str = "time 2030 is 3.0 days ahead", partition: int = 1, topic: str = "src") -> Letter:
    return Letter(topic, partition, 7, b"k", b"{}", reason, False)


@pytest.mark.parametrize("selection, ts, kind", [
    (Selection(), 5, None),
    (Selection(reasons=("DAYS AHEAD",)), 5, None),
    (Selection(reasons=("latitude", "days ahead")), 5, None),
    (Selection(reasons=("latitude",)), 5, "reason"),
    (Selection(since_ms=5, until_ms=5), 5, None),
    (Selection(since_ms=6), 5, "time"),
    (Selection(until_ms=4), 5, "time"),
    (Selection(partitions=(0, 1)), 5, None),
    (Selection(partitions=(0,)), 5, "partition"),
    (Selection(topics=("other",)), 5, "topic"),
])
def test_selection_skips_under_one_documented_kind(selection: Selection, ts: int, kind: str | None) -> None:
    assert selection.skip(letter(), ts) == kind
    assert kind is None or kind in SKIP_KINDS


def test_the_letter_json_is_the_workers_format() -> None:
    """The fields the redrive reads are the ones the worker writes (one home: agents.core.validate)."""
    assert {"reason", "topic", "partition", "offset", "key", "original", "original_encoding"} <= \
        set(orjson.loads(dead_letter(b"v", "r", "t", 0, 0, b"k")))
