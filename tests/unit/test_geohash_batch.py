"""geoiot.geohash_batch.encode_many equals python-geohash's own encoder, point for point and character for character."""

from __future__ import annotations

import random
import struct
import warnings

import geohash
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geoiot.geohash_batch import MAX_PRECISION, encode_many

LATS = st.floats(min_value=-90.0, max_value=90.0, allow_subnormal=True)
LONS = st.floats(min_value=-180.0, max_value=180.0, allow_subnormal=True)


def library(lats: list[float], lons: list[float], precision: int) -> list[str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # latitude 90: the library's warning, tested below
        return [geohash.encode(lat, lon, precision=precision) for lat, lon in zip(lats, lons)]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(LATS, LONS), max_size=50), st.integers(1, MAX_PRECISION))
def test_equals_the_library_for_any_point_and_precision(points: list[tuple[float, float]], precision: int) -> None:
    lats, lons = [p[0] for p in points], [p[1] for p in points]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = encode_many(lats, lons, precision)
    assert got == library(lats, lons, precision)


def test_equals_the_library_on_edges_and_arbitrary_bit_patterns() -> None:
    edges = [0.0, -0.0, 5e-324, -5e-324, 2.2250738585072014e-308, -2.2250738585072014e-308, 1e-20, -1e-20,
             -5.884163733812897e-302]  # tiny negatives: the library shifts modulo 64, so not the midpoint
    lats = edges + [-90.0, 89.99999999999999, 45.0, -45.0, 0.1, -0.1]
    lons = edges + [-180.0, 179.99999999999997, 180.0, 90.0, -90.0, -0.1]
    rnd = random.Random(7)

    def any_double(limit: float) -> float:  # uniform over bit patterns: every exponent, mostly tiny magnitudes
        while True:
            x = struct.unpack("<d", rnd.getrandbits(64).to_bytes(8, "little"))[0]
            if x == x and abs(x) <= limit:
                return x

    lats += [any_double(90.0) for _ in range(20_000)] + [rnd.uniform(-90, 90) for _ in range(20_000)]
    lons += [any_double(180.0) for _ in range(20_000)] + [rnd.uniform(-180, 180) for _ in range(20_000)]
    n = min(len(lats), len(lons))
    for precision in (12, 5, 1):
        assert encode_many(lats[:n], lons[:n], precision) == library(lats[:n], lons[:n], precision)


def test_the_library_decides_its_special_points_and_errors() -> None:
    with pytest.warns(UserWarning):  # latitude 90: the library's adjacent cell and its warning
        assert encode_many([90.0, 10.0], [10.0, 180.0]) == [geohash.encode(89.99999999999999, 10.0),
                                                            geohash.encode(10.0, -180.0)]
    with pytest.raises(Exception, match="latitude"):
        encode_many([91.0], [0.0])
    with pytest.raises(ValueError):
        encode_many([0.0], [0.0], 13)
    assert encode_many([], []) == []
