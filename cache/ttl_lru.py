"""A bounded mapping with a time-to-live per entry and least-recently-used eviction.

cachetools' TTLCache does the work (LRU order plus an expiry list); this wrapper keeps the
small interface the cache layer uses, counts what is evicted and what expires (for /health
and /metrics), and treats a zero capacity or TTL as "keep nothing".

With `max_bytes` it also bounds the entries' total size: each entry is measured once, when it
is stored (by default the length of its JSON encoding, see json_size), and the least recently
used entries are evicted until both the count and the bytes hold. The estimate is not the
entry's memory: Python objects take several times their JSON size (README: "Configuration").
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from typing import Any, Generic, Literal, TypeVar

import cachetools
import orjson
from cachetools import TTLCache

V = TypeVar("V")
# Why an entry left without being popped: its TTL ran out, or a newer one pushed it out past
# the count bound (capacity) or the byte bound (max_bytes).
DropReason = Literal["expired", "count", "bytes"]


def json_size(value: Any) -> int:
    """Bytes of `value` encoded as JSON (as the API sends it): a cheap, deterministic size.
    A type JSON cannot hold is measured by its str(), never an error on the storing path."""
    return len(orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS))


class _CountingTTLCache(TTLCache):  # type: ignore[type-arg]
    def __init__(
        self,
        maxsize: int,
        ttl: float,
        timer: Callable[[], float],
        on_drop: Callable[[Any, Any, DropReason], None] | None,
    ) -> None:
        super().__init__(maxsize, ttl, timer)
        self.evictions = 0
        self.expirations = 0
        self.sizes: dict[Hashable, int] = {}  # key -> its measured bytes (byte-bounded caches only)
        self.bytes = 0
        self.on_drop = on_drop
        self.evicting_for: DropReason = "count"  # "bytes" while store() makes room under max_bytes

    def expire(self, time: float | None = None) -> Any:
        expired = super().expire(time)  # removes entries without __delitem__: release them here
        self.expirations += len(expired)
        for key, value in expired:
            self.release(key)
            if self.on_drop is not None:
                self.on_drop(key, value, "expired")
        return expired

    def popitem(self) -> Any:  # called only to make room: the least recently used goes
        item = super().popitem()
        self.evictions += 1
        if self.on_drop is not None:
            self.on_drop(*item, self.evicting_for)
        return item

    def __delitem__(self, key: Hashable) -> None:  # pop() and popitem() come through here
        try:
            super().__delitem__(key)
        finally:  # TTLCache raises KeyError for an expired entry after removing it
            self.release(key)

    def release(self, key: Hashable) -> None:
        self.bytes -= self.sizes.pop(key, 0)

    def store(self, key: Hashable, value: Any, size: int, max_bytes: int) -> None:
        """Set `key`, then evict the least recently used until `max_bytes` holds again."""
        self.release(key)  # a replaced value's bytes go with it
        self[key] = value
        self.sizes[key] = size
        self.bytes += size
        self.evicting_for = "bytes"
        try:
            while self.bytes > max_bytes:
                self.popitem()  # never `key` itself: it is the most recently used, and fits alone
        finally:
            self.evicting_for = "count"


class TTLLRUCache(Generic[V]):
    """Entries expire `ttl` seconds after they were stored (checked on every read); when
    more than `capacity` or (with `max_bytes`) more bytes than that, the entry read or
    written longest ago is evicted. An entry larger than `max_bytes` alone is not kept.
    `on_drop(key, value, reason)` hears of every entry that expires or is evicted (not of one
    popped, replaced or refused as too large)."""

    def __init__(
        self,
        capacity: int,
        ttl: float,
        clock: Callable[[], float] = time.monotonic,
        *,
        max_bytes: int | None = None,
        size_of: Callable[[V], int] = json_size,
        on_drop: Callable[[str, V, DropReason], None] | None = None,
    ) -> None:
        self.capacity = capacity
        self.ttl = ttl
        self.max_bytes = max_bytes  # None: bounded by count only (entries are not measured)
        self.size_of = size_of
        self.too_large = 0  # entries not kept because they alone exceed max_bytes
        self._cache = _CountingTTLCache(max(1, capacity), max(ttl, 1e-9), clock, on_drop)

    @property
    def evictions(self) -> int:
        return self._cache.evictions

    @property
    def expirations(self) -> int:
        return self._cache.expirations

    @property
    def bytes(self) -> int:
        """The measured size of the entries held (0 without a byte budget). Expired entries go
        first: on an idle node nothing else would drop them, and /metrics would report them."""
        self._cache.expire()
        return self._cache.bytes

    def get(self, key: str) -> V | None:
        try:
            # One lookup: TTLCache.get() checks the entry's expiry twice (`in`, then `[]`), a
            # few microseconds of every cache hit. An expired entry raises KeyError here too.
            return self._cache[key]  # type: ignore[no-any-return]
        except KeyError:
            self._cache.expire()  # an expired entry is dropped (and counted) when first missed
            return None

    def set(self, key: str, value: V) -> None:
        if self.capacity <= 0 or self.ttl <= 0 or self.max_bytes == 0:
            return
        if self.max_bytes is None:
            self._cache[key] = value
            return
        size = self.size_of(value)
        if size > self.max_bytes:
            self.too_large += 1
            self._cache.pop(key, None)  # an older value for the key must not be served instead
            return
        self._cache.store(key, value, size, self.max_bytes)

    def pop(self, key: str) -> V | None:
        return self._cache.pop(key, None)

    def values(self) -> list[V]:
        """The entries held now (expired ones dropped first), in no particular order; reading
        them leaves their recency as it was (TTLCache's own reads would refresh every one)."""
        self._cache.expire()
        return [cachetools.Cache.__getitem__(self._cache, key) for key in list(self._cache)]

    def purge_expired(self) -> int:
        """Drop expired entries (reads already ignore them; this frees their memory)."""
        return len(self._cache.expire())

    def __len__(self) -> int:
        return len(self._cache)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get(key) is not None
