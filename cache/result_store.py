"""Where finished OCR results live: this process's memory, and optionally Redis behind it.

Single-flight (cache/single_flight.py) and the service read and write results only through
the ResultStore interface, so they do not know which store they have.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from cache.records import Result
from cache.redis_store import RedisStore
from cache.ttl_lru import DropReason, TTLLRUCache


class ResultStore(Protocol):
    async def get(self, key: str) -> Result | None: ...

    async def put(self, key: str, result: Result) -> None: ...

    async def get_shared(self, key: str) -> Result | None:
        """A result another node stored (None where there are no other nodes)."""
        ...

    def stats(self) -> dict[str, Any]: ...


class MemoryResultStore:
    """TTL + LRU results in this process (cachetools.TTLCache underneath), at most `capacity`
    of them and, with `max_bytes`, at most that many bytes of their JSON (a document's result
    can be megabytes: a count alone does not bound the memory)."""

    def __init__(self, capacity: int, ttl: float, max_bytes: int | None = None) -> None:
        self.cache: TTLLRUCache[Result] = TTLLRUCache(capacity, ttl, max_bytes=max_bytes, on_drop=self._dropped)
        # Called with the key of each result that expires or is evicted (what keeps it elsewhere lets go).
        self.drop_listeners: list[Callable[[str], None]] = []

    def _dropped(self, key: str, _result: Result, _reason: DropReason) -> None:
        for listener in self.drop_listeners:
            listener(key)

    async def get(self, key: str) -> Result | None:
        return self.cache.get(key)

    async def put(self, key: str, result: Result) -> None:
        self.cache.set(key, result)

    async def get_shared(self, key: str) -> Result | None:
        return None

    def stats(self) -> dict[str, Any]:
        return {
            "backend": "memory",
            "size": len(self.cache),
            "capacity": self.cache.capacity,
            "ttl_s": self.cache.ttl,
            "evictions": self.cache.evictions,
            "bytes": self.cache.bytes,
            "max_bytes": self.cache.max_bytes,
            "too_large": self.cache.too_large,
        }


class RedisBackedResultStore(MemoryResultStore):
    """This node's memory in front of the results every node shares in Redis."""

    def __init__(self, capacity: int, ttl: float, shared: RedisStore, max_bytes: int | None = None) -> None:
        super().__init__(capacity, ttl, max_bytes)
        self.shared = shared

    async def get(self, key: str) -> Result | None:
        result = self.cache.get(key)
        if result is None:
            result = await self.get_shared(key)
        return result

    async def put(self, key: str, result: Result) -> None:
        self.cache.set(key, result)
        await self.shared.put_result(key, result)

    async def get_shared(self, key: str) -> Result | None:
        result = await self.shared.get_result(key)
        if result is not None:
            self.cache.set(key, result)
        return result

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "backend": "redis"}
