"""The C allocator's settings for a long-running server, on glibc.

glibc serves allocations of 128 KiB and more (its mmap threshold) with a mapping of their
own, returned to the system when freed. But the threshold moves: each time such a block is
freed, glibc raises it to that block's size (mallopt(3), M_MMAP_THRESHOLD). asyncio, for
one, reads a socket into a fresh 256 KiB buffer and shrinks it to what arrived; once the
threshold has risen, such buffers are carved from the heap instead, and freed into holes
that the next blocks of other sizes do not fit. The heap grows by about 1 MiB every 2,500
messages while the memory in use stays flat, and the holes stay resident
(docs/RELIABILITY.md, Soak).

Setting the threshold explicitly turns the adjustment off: large blocks keep their own
mappings, and the heap stays at its working size. An operator's ``MALLOC_MMAP_THRESHOLD_``
in the environment is left alone. Where the C library has no ``mallopt`` (musl, macOS)
nothing is done.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from typing import Any

M_MMAP_THRESHOLD = -3  # malloc.h
#: glibc's own initial threshold
MMAP_THRESHOLD = 128 * 1024


def _libc() -> Any:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None


def fix_mmap_threshold(threshold: int = MMAP_THRESHOLD) -> bool:
    """Pin glibc's mmap threshold; whether it was set by this call."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    mallopt = getattr(_libc(), "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, threshold))
