"""Geohashes of many points at once, equal character for character to python-geohash's ``geohash.encode``.

python-geohash encodes one point per call; the batch core needs one per event, and the per-call cost (the
Python wrapper's checks around its compiled encoder) was a measurable share of the core's time
(docs/BENCHMARKS.md). This does the same arithmetic on numpy arrays: each coordinate divided by its range
(lat / 90, lon / 180), turned into a 64-bit fixed-point value the way the library does (its mantissa shifted
by its exponent, offset from the midpoint by its sign; :func:`_fixed`), the top bits of longitude and latitude
interleaved (longitude first) and read five at a time as base32. Points the library treats specially (a
latitude of 90, a longitude outside [-180, 180), anything not finite) are passed to ``geohash.encode``
itself, so the result is the library's for every input; ``tests/unit/test_geohash_batch.py`` holds the two equal.
"""

from __future__ import annotations

from collections.abc import Sequence

import geohash
import numpy as np

BASE32 = np.frombuffer(b"0123456789bcdefghjkmnpqrstuvwxyz", dtype=np.uint8)
MAX_PRECISION = 12  # 60 bits: 30 of each coordinate fit the spreading below
_PAIRS = (BASE32[np.arange(1024) >> 5].astype(np.uint16) | (BASE32[np.arange(1024) & 31].astype(np.uint16) << 8)
          if np.little_endian else BASE32[np.arange(1024) & 31].astype(np.uint16) | (BASE32[np.arange(1024) >> 5].astype(np.uint16) << 8))
_SPACES = np.uint16(0x2020)  # two spaces
_MIDPOINT = np.uint64(1 << 63)
_MANTISSA = np.uint64(0x000F_FFFF_FFFF_FFFF)
_HIDDEN = np.uint64(0x0010_0000_0000_0000)
_MASKS = tuple(np.uint64(m) for m in (0x0000FFFF0000FFFF, 0x00FF00FF00FF00FF, 0x0F0F0F0F0F0F0F0F,
                                      0x3333333333333333, 0x5555555555555555))


def _fixed(ratio: np.ndarray) -> np.ndarray:
    """The library's 64-bit fixed point of values in [-1, 1], from their bits as it computes it: the mantissa
    (with its hidden bit) shifted by the exponent, the midpoint plus or minus that. A right shift of 64 or more
    is taken modulo 64, as its compiled code does (it shows only for magnitudes below 2**-64, where the result
    is not the midpoint for negative values); subnormals give the midpoint."""
    bits = ratio.view(np.uint64)
    exponent = ((bits >> np.uint64(52)) & np.uint64(0x7FF)).astype(np.int64)
    mantissa = (bits & _MANTISSA) | _HIDDEN
    shift = exponent - (0x3FF - 11)
    left = np.maximum(shift, 0).astype(np.uint64)
    right = ((-shift) & 63).astype(np.uint64)
    value = np.where(shift > 0, mantissa << left, mantissa >> right)
    value = np.where(exponent == 0, np.uint64(0), value)
    return np.where((bits >> np.uint64(63)).astype(bool), _MIDPOINT - value, _MIDPOINT + value)


def _spread(v: np.ndarray) -> np.ndarray:
    """The bits of 32-bit values moved to the even positions of 64-bit ones."""
    for shift, mask in zip((16, 8, 4, 2, 1), _MASKS):
        v = (v | (v << np.uint64(shift))) & mask
    return v


def encode_many(lats: Sequence[float], lons: Sequence[float], precision: int = MAX_PRECISION) -> list[str]:
    """``[geohash.encode(lat, lon, precision) for lat, lon in zip(lats, lons)]``, computed by columns."""
    if not 1 <= precision <= MAX_PRECISION:
        raise ValueError(f"precision must be 1..{MAX_PRECISION}, not {precision}")
    n = len(lats)
    if n == 0:
        return []
    lat = np.asarray(lats, dtype=np.float64)
    lon = np.asarray(lons, dtype=np.float64)
    plain = (lat >= -90.0) & (lat < 90.0) & (lon >= -180.0) & (lon < 180.0)  # False for NaN too
    special = None if plain.all() else np.flatnonzero(~plain)
    if special is not None:  # placeholders; those points are the library's own below
        lat = np.where(plain, lat, 0.0)
        lon = np.where(plain, lon, 0.0)
    bits = 5 * precision
    half = np.uint64(64 - (bits + 1) // 2)  # longitude takes the extra bit of an odd count
    lon_top = _fixed(lon / 180.0) >> half
    lat_top = _fixed(lat / 90.0) >> np.uint64(64 - bits // 2)
    if bits % 2:  # the first and the last bit are longitude's
        code = _spread(lon_top) | (_spread(lat_top) << np.uint64(1))
    else:
        code = (_spread(lon_top) << np.uint64(1)) | _spread(lat_top)
    # Two characters at a time: ten bits index a table of character pairs; a space ends each geohash, so
    # one split of the decoded text gives the strings.
    pairs, odd = divmod(precision, 2)
    if odd:
        code = code << np.uint64(5)  # a padding digit, cut below
        pairs += 1
    shifts = np.arange(10 * pairs - 10, -1, -10, dtype=np.uint64)
    chars = np.empty((n, pairs + 1), dtype=np.uint16)
    chars[:, :pairs] = _PAIRS[((code[:, None] >> shifts[None, :]) & np.uint64(1023)).astype(np.intp)]
    chars[:, pairs] = _SPACES
    text = chars.tobytes().decode("ascii")
    out = [g[:precision] for g in text.split()] if odd else text.split()
    if special is not None:
        for k in special.tolist():
            out[k] = geohash.encode(float(lats[k]), float(lons[k]), precision=precision)
    return out
