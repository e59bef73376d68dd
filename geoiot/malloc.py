"""Keep glibc from handing freed heap back to the kernel after every batch.

Our processes allocate and free the same few megabytes per batch (JSON bytes from orjson, bulk bodies,
Kafka records). orjson builds each result in a buffer too large for Python's small-object allocator, so
every document lands in glibc's heap. With glibc's defaults the top of the heap is trimmed (returned to
the kernel) as soon as a batch is freed and page-faulted back in by the next one, which makes
``orjson.dumps`` of a document kept with its batch several times dearer (``python -m bench.json_heap_churn``;
the figures are in docs/BENCHMARKS.md).
Raising the trim threshold and the top pad keeps those pages: resident memory stays at the batch's high
water mark plus at most ``TRIM_THRESHOLD`` bytes. It is what the ``MALLOC_TRIM_THRESHOLD_`` /
``MALLOC_TOP_PAD_`` / ``MALLOC_MMAP_THRESHOLD_`` environment variables do, applied from inside the
process so that ``faust worker``, ``python -m web`` and ``python -m replay`` get it without a wrapper;
if any of those variables is set, the operator's choice wins and nothing is changed here.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger("geoiot.malloc")

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3  # from glibc's <malloc.h>
TRIM_THRESHOLD = 128 << 20
TOP_PAD = 64 << 20
MMAP_THRESHOLD = 8 << 20  # bulk bodies and fetch responses (a few MB) stay on the heap too
ENV_VARS = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_THRESHOLD_")

_applied: bool | None = None


def keep_freed_heap() -> bool:
    """Apply the settings once per process; False (and nothing done) off glibc or when the env decides."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if any(name in os.environ for name in ENV_VARS):
        log.debug("malloc: left to the MALLOC_* environment variables")
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl, macOS, Windows: no mallopt, nothing to tune
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    _applied = all(mallopt(param, value) == 1 for param, value in
                   ((M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_TOP_PAD, TOP_PAD), (M_MMAP_THRESHOLD, MMAP_THRESHOLD)))
    return _applied


def release_freed_heap() -> bool:
    """Hand the heap's free pages back to the kernel now (glibc's ``malloc_trim(0)``), for a process that
    keeps freed heap (above) after a burst it will not repeat soon; False off glibc. Costs a walk of the heap."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return False
    trim.argtypes = (ctypes.c_size_t,)
    trim.restype = ctypes.c_int
    return bool(trim(0))
