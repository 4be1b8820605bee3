"""Result store, single-flight and the fire-and-forget task store (see service.py for the order)."""

from cache.records import ErrorInfo, Result, TaskView
from cache.service import OcrService
from cache.single_flight import Computation
from cache.task_store import TaskRecord
from cache.ttl_lru import TTLLRUCache

__all__ = ["Computation", "ErrorInfo", "OcrService", "Result", "TTLLRUCache", "TaskRecord", "TaskView"]
