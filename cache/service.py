"""The result cache in front of the worker pool.

- Finished results live in a TTL + LRU cache keyed by the image's sha256 plus everything
  that changes the result (engine and model identity, request options).
- Running computations live in a separate in-flight table, so identical requests share
  one OCR run and eviction from the cache can never touch work still in progress.
- Fire-and-forget requests get a task record that clients poll by id.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

from cache.ttl_lru import TTLLRUCache
from ocr_pool import Job, PoolError, WorkerPool


class Computation:
    """One OCR run, shared by every request waiting for the same cache key."""

    def __init__(self, key: str, job: Job) -> None:
        self.key = key
        self.job = job
        self.waiters = 0

    @property
    def future(self) -> asyncio.Future[dict[str, Any]]:
        return self.job.future


class TaskRecord:
    """A pollable task created by a block_flag=false request."""

    def __init__(self, image_hash: str) -> None:
        self.task_id = uuid.uuid4().hex
        self.image_hash = image_hash
        self.created = time.time()
        self.computation: Computation | None = None
        self.result: dict[str, Any] | None = None
        self.cached = False
        self.error: PoolError | None = None

    @property
    def status(self) -> str:
        if self.result is not None:
            return "done"
        if self.error is not None:
            return "failed"
        if self.computation is not None and self.computation.job.state == "running":
            return "running"
        return "queued"


class OcrService:
    def __init__(
        self,
        pool: WorkerPool,
        *,
        engine_identity: str,
        cache_capacity: int,
        cache_ttl: float,
        task_capacity: int,
        task_ttl: float,
    ) -> None:
        self.pool = pool
        self.engine_identity = engine_identity
        self.results: TTLLRUCache[dict[str, Any]] = TTLLRUCache(cache_capacity, cache_ttl)
        self.tasks: TTLLRUCache[TaskRecord] = TTLLRUCache(task_capacity, task_ttl)
        self._in_flight: dict[str, Computation] = {}
        self.hits = 0
        self.misses = 0
        self.shared = 0

    def cache_key(self, image_hash: str, params: dict[str, Any]) -> str:
        return f"{image_hash}|{self.engine_identity}|{json.dumps(params, sort_keys=True)}"

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def lookup(self, key: str) -> dict[str, Any] | None:
        result = self.results.get(key)
        if result is None:
            self.misses += 1
        else:
            self.hits += 1
        return result

    def join(self, key: str, payload: bytes, params: dict[str, Any]) -> Computation:
        """Wait on the in-flight run for `key`, starting one if there is none.

        Raises PoolError (queue full, no worker, shutting down) when a new run cannot start.
        """
        computation = self._in_flight.get(key)
        if computation is None:
            job = self.pool.submit(payload, params)
            computation = Computation(key, job)
            self._in_flight[key] = computation
            job.future.add_done_callback(lambda future: self._finished(computation, future))
        else:
            self.shared += 1
        computation.waiters += 1
        return computation

    def release(self, computation: Computation) -> None:
        """A waiter left; drop a task nobody waits for that has not started yet."""
        computation.waiters -= 1
        if computation.waiters <= 0 and not computation.future.done():
            self.pool.cancel(computation.job)

    def _finished(self, computation: Computation, future: asyncio.Future[dict[str, Any]]) -> None:
        if self._in_flight.get(computation.key) is computation:
            del self._in_flight[computation.key]
        # Only successes are cached: a timeout or crash must be retried next time.
        if not future.cancelled() and future.exception() is None:
            self.results.set(computation.key, future.result())

    def submit_task(self, key: str, image_hash: str, payload: bytes, params: dict[str, Any]) -> TaskRecord:
        """Start (or join) the OCR run for a fire-and-forget request and return its record."""
        record = TaskRecord(image_hash)
        cached = self.lookup(key)
        if cached is not None:
            record.result, record.cached = cached, True
        else:
            computation = self.join(key, payload, params)  # never released: the task must run
            record.computation = computation
            computation.future.add_done_callback(lambda future: self._task_finished(record, future))
        self.tasks.set(record.task_id, record)
        return record

    def _task_finished(self, record: TaskRecord, future: asyncio.Future[dict[str, Any]]) -> None:
        error = future.exception()
        if isinstance(error, PoolError):
            record.error = error
        elif error is not None:
            record.error = PoolError(f"OCR failed: {error}")
        else:
            record.result = future.result()
        # Keep the finished record a full TTL from now, not from submission.
        self.tasks.set(record.task_id, record)

    def get_task(self, task_id: str) -> TaskRecord | None:
        return self.tasks.get(task_id)

    def stats(self) -> dict[str, Any]:
        return {
            "size": len(self.results),
            "capacity": self.results.capacity,
            "ttl_s": self.results.ttl,
            "hits": self.hits,
            "misses": self.misses,
            "shared_in_flight": self.shared,
            "evictions": self.results.evictions,
            "in_flight": len(self._in_flight),
            "tasks_kept": len(self.tasks),
        }
