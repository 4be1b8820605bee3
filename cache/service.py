"""The OCR service in front of the worker pool, read top to bottom by the request path:

1. lookup: the result store (cache/result_store.py: this node's memory, Redis behind it when
   nodes share one) keyed by the image's sha256 plus everything that changes the result;
2. join: on a miss, single-flight (cache/single_flight.py) makes every request for the key
   wait on one run, on this node's pool or, with Redis, on whichever node claimed it;
3. submit_task / task_view: fire-and-forget requests get a record to poll (cache/task_store.py).
"""

from __future__ import annotations

import functools
import json
from typing import Any

from cache.records import Result, TaskView
from cache.redis_store import RedisStore, SharedStoreUnavailableError
from cache.result_store import MemoryResultStore, RedisBackedResultStore
from cache.single_flight import Computation, LocalClaims, SingleFlight
from cache.task_store import TaskRecord, TaskStore
from ocr_pool import TaskCancelledError, WorkerPool


def params_text(params: dict[str, Any]) -> str:
    """The parameters as they appear in a cache key (sorted JSON). The few distinct sets of
    plain values are encoded once: a cache hit then spends no time on json.dumps."""
    if len(params) == 1:  # {"det": ...}, an image's only parameter: nothing to sort
        [(name, value)] = params.items()
        if type(value) in _PLAIN:
            return _params_text(((name, type(value), value),))
    if all(type(value) in _PLAIN for value in params.values()):
        # Each value's type is part of the memo key: 1, 1.0 and True are equal but encode differently.
        return _params_text(tuple(sorted((name, type(value), value) for name, value in params.items())))
    return json.dumps(params, sort_keys=True)


_PLAIN = (str, int, float, bool, type(None))
# A DELETE that could not reach Redis (to read the task, or to ask its node to cancel it).
NOT_CANCELLED = "the shared store (Redis) cannot be reached, so nothing was cancelled; send the DELETE again shortly"


@functools.lru_cache(maxsize=256)
def _params_text(items: tuple[tuple[str, type, Any], ...]) -> str:
    return json.dumps({name: value for name, _, value in items}, sort_keys=True)


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
        shared: RedisStore | None = None,
        failure_ttl: float = 0.0,
        cache_bytes: int | None = None,
        task_bytes: int | None = None,
    ) -> None:
        """cache_bytes, task_bytes: JSON bytes of results and of finished task records kept in
        this process (service.img_bytes, service.task_bytes); None: bounded by count only."""
        self.pool = pool
        self.engine_identity = engine_identity
        self.shared = shared
        self.results = (
            MemoryResultStore(cache_capacity, cache_ttl, cache_bytes)
            if shared is None
            else RedisBackedResultStore(cache_capacity, cache_ttl, shared, cache_bytes)
        )
        self.flight = SingleFlight(pool, self.results, shared or LocalClaims(), failure_ttl)
        self.tasks = TaskStore(task_capacity, task_ttl, shared, task_bytes)
        self.tasks.on_cancel = self._cancel
        self.hits = 0
        self.misses = 0

    def cache_key(self, image_hash: str, params: dict[str, Any]) -> str:
        return f"{image_hash}|{self.engine_identity}|{params_text(params)}"

    @property
    def in_flight(self) -> int:
        return self.flight.in_flight

    @property
    def shared_waits(self) -> int:
        return self.flight.shared_waits

    async def lookup(self, key: str) -> Result | None:
        result = await self.results.get(key)
        if result is None:
            self.misses += 1
        else:
            self.hits += 1
        return result

    async def join(self, key: str, payload: bytes, params: dict[str, Any]) -> Computation:
        """Wait on the in-flight run for `key`, starting one if there is none (PoolError if it cannot start)."""
        return await self.flight.join(key, payload, params)

    def release(self, computation: Computation) -> None:
        """A waiter left; drop a task nobody waits for that has not started yet."""
        self.flight.release(computation)

    async def submit_task(self, key: str, image_hash: str, payload: bytes, params: dict[str, Any]) -> TaskRecord:
        """Start (or join) the OCR run for a fire-and-forget request and return its record."""
        record = TaskRecord(image_hash)
        cached = await self.lookup(key)
        if cached is not None:
            record.result, record.cached = cached, True
            await self.tasks.add(record)
            return record
        with self.tasks.starting():
            record.computation = await self.join(key, payload, params)  # never released: the task must run
        await self.tasks.add(record)  # unfinished from its first step, before any await: counted there
        return record

    async def cancel_task(self, task_id: str) -> tuple[TaskView | None, bool]:
        """Cancel a fire-and-forget task (an image's or a document's) and return its view, and
        whether the cancel was left to another node. One this node runs fails as cancelled at
        once and lets go of its run: dropped, with whatever has not started (a document's
        pages), unless a blocking request or another task waits on it too. One another node
        runs (Redis) is cancelled by that node at its next heartbeat. A finished task stays as
        it was. (None, False): no such task."""
        record = self.tasks.unfinished.get(task_id)
        if record is not None and record.computation is not None:
            self._cancel(record)
            return record.view(), False
        try:
            view = await self.tasks.view(task_id)
        except SharedStoreUnavailableError:
            raise SharedStoreUnavailableError(NOT_CANCELLED) from None
        if view is None or view.status not in ("queued", "running") or self.shared is None:
            return view, False
        if not await self.shared.request_cancel(task_id):
            raise SharedStoreUnavailableError(NOT_CANCELLED)
        return view, True

    def _cancel(self, record: TaskRecord) -> None:
        computation = record.computation
        assert computation is not None
        self.tasks.end(record, TaskCancelledError("cancelled by its client (DELETE of the task)"))
        self.release(computation)

    async def task_view(self, task_id: str, wait: float = 0.0) -> TaskView | None:
        """The task's state; with `wait`, first wait up to that many seconds for it to finish."""
        return await self.tasks.view(task_id, wait)

    def stats(self) -> dict[str, Any]:
        return {
            **self.results.stats(),
            "hits": self.hits,
            "misses": self.misses,
            "shared_in_flight": self.flight.shared_waits,
            "in_flight": self.flight.in_flight,
            **self.tasks.stats(),
            "task_polls_waiting": self.tasks.polls_waiting,
            "failures_remembered": len(self.flight.failures),
            "failures_answered": self.flight.failures_answered,
            "shared_store": self.shared.stats() if self.shared is not None else None,
        }
