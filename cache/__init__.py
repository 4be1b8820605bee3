"""Result cache, in-flight sharing and the fire-and-forget task store."""

from cache.service import Computation, OcrService, TaskRecord
from cache.ttl_lru import TTLLRUCache

__all__ = ["Computation", "OcrService", "TTLLRUCache", "TaskRecord"]
