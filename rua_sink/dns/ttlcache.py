"""A small in-process cache of answers that hold for a while (DNS, SPF, sender lookups)."""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class TtlCache(Generic[K, V]):
    """Values kept until their time is up. Bounded the simplest way: when ``size``
    entries are held, the next one to be stored empties the cache first."""

    def __init__(self, size: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._entries: dict[K, tuple[float, V]] = {}
        self._size = size
        self._clock = clock

    def get(self, key: K) -> V | None:
        """The value stored for ``key``, or None if there is none or it has expired."""
        hit = self._entries.get(key)
        if hit is None or hit[0] <= self._clock():
            return None
        return hit[1]

    def put(self, key: K, value: V, ttl: float) -> None:
        if len(self._entries) >= self._size:
            self._entries.clear()
        self._entries[key] = (self._clock() + ttl, value)
