"""A bounded mapping with a time-to-live per entry and least-recently-used eviction.

cachetools' TTLCache does the work (LRU order plus an expiry list); this wrapper keeps the
small interface the cache layer uses, counts what is evicted and what expires (for /health
and /metrics), and treats a zero capacity or TTL as "keep nothing".
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from cachetools import TTLCache

V = TypeVar("V")


class _CountingTTLCache(TTLCache):  # type: ignore[type-arg]
    def __init__(self, maxsize: int, ttl: float, timer: Callable[[], float]) -> None:
        super().__init__(maxsize, ttl, timer)
        self.evictions = 0
        self.expirations = 0

    def expire(self, time: float | None = None) -> Any:
        expired = super().expire(time)
        self.expirations += len(expired)
        return expired

    def popitem(self) -> Any:  # called only to make room: the least recently used goes
        item = super().popitem()
        self.evictions += 1
        return item


class TTLLRUCache(Generic[V]):
    """Entries expire `ttl` seconds after they were stored (checked on every read);
    when full, the entry read or written longest ago is evicted."""

    def __init__(self, capacity: int, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = capacity
        self.ttl = ttl
        self._cache = _CountingTTLCache(max(1, capacity), max(ttl, 1e-9), clock)

    @property
    def evictions(self) -> int:
        return self._cache.evictions

    @property
    def expirations(self) -> int:
        return self._cache.expirations

    def get(self, key: str) -> V | None:
        value = self._cache.get(key)
        if value is None:
            self._cache.expire()  # an expired entry is dropped (and counted) when first missed
        return value

    def set(self, key: str, value: V) -> None:
        if self.capacity <= 0 or self.ttl <= 0:
            return
        self._cache[key] = value

    def pop(self, key: str) -> V | None:
        return self._cache.pop(key, None)

    def purge_expired(self) -> int:
        """Drop expired entries (reads already ignore them; this frees their memory)."""
        return len(self._cache.expire())

    def __len__(self) -> int:
        return len(self._cache)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get(key) is not None
