"""TTL + LRU cache semantics, with an injected clock."""

from __future__ import annotations

from cache import TTLLRUCache


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_ttl_is_enforced_on_read() -> None:
    clock = FakeClock()
    cache: TTLLRUCache[str] = TTLLRUCache(capacity=10, ttl=5, clock=clock)
    cache.set("a", "A")
    clock.now = 4.9
    assert cache.get("a") == "A"
    clock.now = 5.0
    assert cache.get("a") is None
    assert len(cache) == 0 and cache.expirations == 1


def test_eviction_is_least_recently_used_not_oldest() -> None:
    cache: TTLLRUCache[int] = TTLLRUCache(capacity=2, ttl=100, clock=FakeClock())
    cache.set("a", 1)
    cache.set("b", 2)
    assert cache.get("a") == 1  # "a" is now the most recently used
    cache.set("c", 3)
    assert cache.get("b") is None
    assert cache.get("a") == 1 and cache.get("c") == 3
    assert cache.evictions == 1


def test_zero_capacity_or_ttl_disables_caching() -> None:
    assert len(_filled(TTLLRUCache(capacity=0, ttl=10))) == 0
    assert len(_filled(TTLLRUCache(capacity=10, ttl=0))) == 0


def test_purge_frees_expired_entries() -> None:
    clock = FakeClock()
    cache: TTLLRUCache[int] = TTLLRUCache(capacity=10, ttl=1, clock=clock)
    for key in "abc":
        cache.set(key, 1)
    clock.now = 2
    assert cache.purge_expired() == 3 and len(cache) == 0


def _filled(cache: TTLLRUCache[int]) -> TTLLRUCache[int]:
    cache.set("a", 1)
    return cache
