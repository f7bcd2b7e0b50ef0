"""Handing the C heap's free pages back to the system, on glibc.

glibc's allocator keeps what a process frees in the arena it came from, and returns memory
to the system only from the top of each arena. A server whose threads (mail checks, parsing)
allocate and free buffers of many sizes all day leaves free holes in the middle of its
arenas: pages that were written once stay resident although nothing uses them, and the
resident size creeps up with every message while the memory in use stays flat (see
docs/RELIABILITY.md, Soak). ``malloc_trim(0)`` gives every whole free page of every arena
back (``madvise``), so the resident size follows what is really in use.

``HeapTrimmer.run`` calls it every ``interval`` seconds. It does nothing where the C
library has no ``malloc_trim`` (musl, macOS).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
from collections.abc import Callable
from typing import Any

from . import logs

log = logs.get("rua_sink.heap")


def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc: Any = ctypes.CDLL(name)
        trim: Any = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    func: Callable[[int], int] = trim
    return func


class HeapTrimmer:
    """Trims the C heap every ``interval`` seconds."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._trim = _malloc_trim()

    @property
    def available(self) -> bool:
        return self._trim is not None

    def trim(self) -> bool:
        """One trim; whether memory was given back."""
        return self._trim is not None and bool(self._trim(0))

    async def run(self) -> None:
        if self._trim is None:
            log.info("heap_trim_unavailable")
            return
        while True:
            await asyncio.sleep(self.interval)
            # About a millisecond on the server's heap of a few tens of MiB: cheaper on
            # the loop than a hop to a thread.
            self.trim()
