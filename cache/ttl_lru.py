"""A bounded mapping with a time-to-live per entry and least-recently-used eviction."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

V = TypeVar("V")


class TTLLRUCache(Generic[V]):
    """Entries expire `ttl` seconds after they were stored (checked on every read);
    when full, the entry read or written longest ago is evicted."""

    def __init__(self, capacity: int, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = capacity
        self.ttl = ttl
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, V]] = OrderedDict()
        self.evictions = 0
        self.expirations = 0

    def get(self, key: str) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires_at, value = entry
        if self._clock() >= expires_at:
            del self._entries[key]
            self.expirations += 1
            return None
        self._entries.move_to_end(key)
        return value

    def set(self, key: str, value: V) -> None:
        if self.capacity <= 0 or self.ttl <= 0:
            return
        if key in self._entries:
            self._entries.move_to_end(key)
        self._entries[key] = (self._clock() + self.ttl, value)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)
            self.evictions += 1

    def pop(self, key: str) -> V | None:
        entry = self._entries.pop(key, None)
        return None if entry is None else entry[1]

    def purge_expired(self) -> int:
        """Drop expired entries (reads already ignore them; this frees their memory)."""
        now = self._clock()
        expired = [key for key, (expires_at, _) in self._entries.items() if now >= expires_at]
        for key in expired:
            del self._entries[key]
        self.expirations += len(expired)
        return len(expired)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get(key) is not None
