"""Keep freed tensor memory in the process on CPU runs (glibc malloc tuning).

PyTorch's CPU allocator is plain malloc. A training step frees and re-allocates the same buffers every
step; with glibc's defaults, buffers above the mmap threshold go back to the OS when freed and come back
as fresh zeroed pages (page faults) on the next step, and heap memory above the trim threshold is
returned too (`python benchmarks/cpu_bench.py` measures the difference; docs/throughput.md).

The cost: up to ``TRIM_THRESHOLD`` of freed memory stays mapped to the process instead of returning to
the OS (the peak is unchanged). ``MEGADEPTH_MALLOC_TUNING=0`` turns it off; the usual glibc variables
(``MALLOC_MMAP_THRESHOLD_`` ...) set by the user win, since we leave those alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

# mallopt parameter numbers from glibc's malloc.h
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 256 * 2**20  # blocks below come from the heap, reused (glibc's adaptive cap: 32 MiB)
TRIM_THRESHOLD = 1024 * 2**20
TOP_PAD = 64 * 2**20

_done = False


def keep_freed_memory() -> bool:
    """Set glibc's mmap/trim thresholds for this process; True if they were set. A no-op off glibc,
    when turned off, when the user set the glibc variables, and after the first call."""
    global _done
    if _done or os.environ.get("MEGADEPTH_MALLOC_TUNING", "1") == "0":
        return False
    if any(k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl or another libc without mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = all(mallopt(param, value) == 1 for param, value in (
        (_M_MMAP_THRESHOLD, MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD), (_M_TOP_PAD, TOP_PAD)))
    _done = ok
    return ok
