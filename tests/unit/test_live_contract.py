"""The live layer's record contract (geoiot.live): round trips and the newest-wins rule."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from geoiot import live


@given(st.text(min_size=1, max_size=64))
def test_key_round_trip(track: str) -> None:
    assert live.track_of(live.key(track)) == track


@given(st.dictionaries(st.text(max_size=8), st.integers(-2**53, 2**53) | st.text(max_size=8), max_size=6),
       st.integers(0, 2**53))
def test_value_round_trip(attrs: dict, time_ms: int) -> None:
    doc = {**attrs, "t": time_ms}
    assert live.document(live.value(doc), "t") == doc


@pytest.mark.parametrize("raw", [b"[]", b'{"t": 1.5}', b'{"x": 1}', b'"s"', b'{"t": true}'])
def test_a_value_without_an_integer_time_is_refused(raw: bytes) -> None:
    with pytest.raises(ValueError):
        live.document(raw, "t")


@given(st.lists(st.integers(0, 100), min_size=1, max_size=30))
def test_newest_wins_whatever_the_order(times: list[int]) -> None:
    held = None
    for t in times:
        if live.newer(t, held):
            held = t
    assert held == max(times)
