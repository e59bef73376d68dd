"""web.compression: the memo of compressed bodies gives back the right body's compressed form, reuses it only
for the same bytes (a CRC-32 collision included) and stays within its bound."""

from __future__ import annotations

import gzip
import zlib

from hypothesis import given
from hypothesis import strategies as st

from web.compression import CompressedBodies, gzip_body


def crc_twin(target: bytes, other: bytes) -> bytes:
    """``other`` with its last 4 bytes changed so that its CRC-32 equals ``target``'s (same length): CRC-32 is
    affine over GF(2) in the message bits, so the 32 bits of the tail that reach the wanted CRC are found by
    Gaussian elimination."""
    assert len(target) == len(other) >= 4
    base = bytearray(other)
    base[-4:] = b"\0\0\0\0"
    start = zlib.crc32(bytes(base))
    effects = []  # CRC change made by flipping each of the tail's 32 bits
    for bit in range(32):
        flipped = bytearray(base)
        flipped[-4 + bit // 8] ^= 1 << (bit % 8)
        effects.append(zlib.crc32(bytes(flipped)) ^ start)
    want = zlib.crc32(target) ^ start
    rows = [(effects[bit], 1 << bit) for bit in range(32)]  # (effect, which bits flipped)
    basis: dict[int, tuple[int, int]] = {}
    for effect, bits in rows:
        for pivot in range(31, -1, -1):
            if not effect >> pivot & 1:
                continue
            if pivot in basis:
                effect, bits = effect ^ basis[pivot][0], bits ^ basis[pivot][1]
            else:
                basis[pivot] = (effect, bits)
                break
    chosen = 0
    for pivot in range(31, -1, -1):
        if want >> pivot & 1:
            want, chosen = want ^ basis[pivot][0], chosen ^ basis[pivot][1]
    assert want == 0
    base[-4:] = chosen.to_bytes(4, "little")
    return bytes(base)


def test_the_twin_helper_collides() -> None:
    a, b = b"a" * 40_000, b"b" * 40_000
    twin = crc_twin(a, b)
    assert twin != a and zlib.crc32(twin) == zlib.crc32(a)


@given(body=st.binary(max_size=100_000), coding=st.sampled_from(["gzip", "deflate"]))
def test_memo_answers_decode_to_the_body(body: bytes, coding: str) -> None:
    memo = CompressedBodies(min_body=0)
    decode = gzip.decompress if coding == "gzip" else zlib.decompress
    first, reused_first = memo.compress(body, coding)
    again, reused_again = memo.compress(bytes(body), coding)  # equal bytes, another object
    assert decode(first) == body and decode(again) == body
    assert (reused_first, reused_again) == (False, True)


def test_same_crc_and_length_is_not_reused() -> None:
    memo = CompressedBodies()
    body = b'{"features":[' + b'{"id":1},' * 5000 + b"]}"
    twin = crc_twin(body, b'{"features":[' + b'{"id":2},' * 5000 + b"]}")
    assert zlib.crc32(twin) == zlib.crc32(body) and len(twin) == len(body)
    memo.compress(body, "gzip")
    out, reused = memo.compress(twin, "gzip")
    assert not reused and gzip.decompress(out) == twin
    out, reused = memo.compress(twin, "gzip")
    assert reused and gzip.decompress(out) == twin


def test_codings_are_kept_apart() -> None:
    memo = CompressedBodies()
    body = b"x" * 50_000
    memo.compress(body, "gzip")
    out, reused = memo.compress(body, "deflate")
    assert not reused and zlib.decompress(out) == body


def test_small_bodies_bypass_the_memo_and_the_bound_holds() -> None:
    memo = CompressedBodies(max_bytes=300_000, min_body=1_000)
    assert memo.compress(b"y" * 999, "gzip")[1] is False
    assert memo.compress(b"y" * 999, "gzip")[1] is False and memo.held == 0
    bodies = [bytes([i]) * 100_000 for i in range(10)]
    for body in bodies:
        memo.compress(body, "gzip")
        assert memo.held <= 300_000
    assert memo.compress(bodies[-1], "gzip")[1] is True  # the newest stays
    assert memo.compress(bodies[0], "gzip")[1] is False  # the oldest was dropped
    assert memo.compress(b"z" * 400_000, "gzip")[1] is False  # larger than the bound: never held
    assert memo.held <= 300_000
