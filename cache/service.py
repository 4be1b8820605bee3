"""The result cache in front of the worker pool.

- Finished results live in a TTL + LRU cache keyed by the image's sha256 plus everything
  that changes the result (engine and model identity, request options).
- Running computations live in a separate in-flight table, so identical requests share
  one OCR run and eviction from the cache can never touch work still in progress.
- Fire-and-forget requests get a task record that clients poll by id.
- With a shared store (Redis), results and task records are visible to every node, and
  a claim key makes one node compute an image while the others wait for its result.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from typing import Any

from cache.redis_store import RedisStore
from cache.ttl_lru import TTLLRUCache
from ocr_pool import Job, PoolError, RememberedFailureError, TaskTimeoutError, WorkerCrashedError, WorkerPool

REMOTE_POLL_S = 0.05
LONG_POLL_MAX_PAUSE_S = 0.5
# Failed images remembered at once (a key and an error each); the oldest are forgotten first.
FAILURE_CAPACITY = 1000


def is_poison(error: BaseException) -> bool:
    """A failure that says something about the image and cost a worker: worth remembering."""
    if isinstance(error, WorkerCrashedError):
        return True  # it killed a worker on every attempt
    return isinstance(error, TaskTimeoutError) and error.killed_worker  # not merely a long queue


class Computation:
    """One OCR run, shared by every local request waiting for the same cache key.

    Usually a job on this node's pool; with a shared store it may instead be a wait for
    another node's run of the same image (job is None until this node computes itself).
    """

    def __init__(self, key: str, future: asyncio.Future[dict[str, Any]]) -> None:
        self.key = key
        self.future = future
        self.job: Job | None = None
        self.claim: str | None = None
        self.waiters = 0
        self.poller: asyncio.Task[None] | None = None

    @property
    def state(self) -> str:
        return self.job.state if self.job is not None else "queued"

    @property
    def task_id(self) -> str:
        return self.job.id if self.job is not None else uuid.uuid4().hex


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
        if self.computation is not None and self.computation.state == "running":
            return "running"
        return "queued"

    def view(self) -> dict[str, Any]:
        """What a poll returns (and what a shared store keeps)."""
        body: dict[str, Any] = {"task_id": self.task_id, "status": self.status, "image_hash": self.image_hash}
        if self.result is not None:
            body["result"] = self.result
            body["cached"] = self.cached
        if self.error is not None:
            body["error"] = {"code": self.error.code, "message": self.error.message}
        return body


def _record_outcome(record: TaskRecord, future: asyncio.Future[dict[str, Any]]) -> None:
    """Copy a finished computation's result or error into the task record (idempotent)."""
    if record.result is not None or record.error is not None:
        return
    error = future.exception()
    if isinstance(error, PoolError):
        record.error = error
    elif error is not None:
        record.error = PoolError(f"OCR failed: {error}")
    else:
        record.result = future.result()


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
    ) -> None:
        self.pool = pool
        self.engine_identity = engine_identity
        self.shared = shared
        self.results: TTLLRUCache[dict[str, Any]] = TTLLRUCache(cache_capacity, cache_ttl)
        self.tasks: TTLLRUCache[TaskRecord] = TTLLRUCache(task_capacity, task_ttl)
        self._in_flight: dict[str, Computation] = {}
        # Images that crashed or outran the timeout recently: repeats are answered without OCR.
        self.failures: TTLLRUCache[tuple[PoolError, float]] = TTLLRUCache(FAILURE_CAPACITY, failure_ttl)
        self.failures_answered = 0
        self.hits = 0
        self.misses = 0
        self.shared_waits = 0

    def cache_key(self, image_hash: str, params: dict[str, Any]) -> str:
        return f"{image_hash}|{self.engine_identity}|{json.dumps(params, sort_keys=True)}"

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    async def lookup(self, key: str) -> dict[str, Any] | None:
        result = self.results.get(key)
        if result is None and self.shared is not None:
            result = await self.shared.get_result(key)
            if result is not None:
                self.results.set(key, result)
        if result is None:
            self.misses += 1
        else:
            self.hits += 1
        return result

    async def join(self, key: str, payload: bytes, params: dict[str, Any]) -> Computation:
        """Wait on the in-flight run for `key`, starting one if there is none.

        Raises PoolError (queue full, no worker, shutting down, a remembered failure) when a
        run cannot start.
        """
        self._refuse_remembered_failure(key)
        computation = self._in_flight.get(key)
        if computation is None:
            computation = self._new_computation(key)
            # Registered before any await: a local request for the same image arriving while
            # this one asks Redis for the claim joins this run instead of claiming too.
            self._in_flight[key] = computation
            claim = None if self.shared is None else await self.shared.claim(key)
            if self.shared is not None and claim is None:
                # Another node computes this image: wait for its result.
                computation.poller = asyncio.ensure_future(self._wait_for_other_node(computation, payload, params))
            else:
                self._start_job(computation, payload, params, claim)
        if computation.waiters > 0:
            self.shared_waits += 1
        computation.waiters += 1
        return computation

    def _refuse_remembered_failure(self, key: str) -> None:
        remembered = self.failures.get(key)
        if remembered is None:
            return
        error, when = remembered
        age = time.monotonic() - when
        self.failures_answered += 1
        raise RememberedFailureError(
            error.code,
            f"{error.message} (remembered from an earlier attempt {age:.0f} s ago;"
            f" not tried again for {max(0.0, self.failures.ttl - age):.0f} s)",
        )

    def _new_computation(self, key: str) -> Computation:
        computation = Computation(key, asyncio.get_running_loop().create_future())
        computation.future.add_done_callback(lambda _: self._forget(computation))
        return computation

    def _start_job(self, computation: Computation, payload: bytes, params: dict[str, Any], claim: str | None) -> None:
        """Submit to the pool (raising PoolError at once if it cannot take the task).

        On refusal the computation fails with the same error, so local requests that joined it
        meanwhile get that answer too, and it leaves the in-flight table.
        """
        try:
            job = self.pool.submit(payload, params)
        except PoolError as error:
            if claim is not None and self.shared is not None:
                asyncio.ensure_future(self.shared.release(computation.key, claim))
            self._forget(computation)
            if not computation.future.done():
                computation.future.set_exception(error)
                computation.future.exception()  # seen: the caller gets it raised
            raise
        computation.job, computation.claim = job, claim
        job.future.add_done_callback(lambda future: asyncio.ensure_future(self._job_finished(computation, future)))

    async def _job_finished(self, computation: Computation, future: asyncio.Future[dict[str, Any]]) -> None:
        error = future.exception()
        # Only successes are cached; a crash or a timeout that killed a worker is remembered for
        # failure_ttl seconds, so repeats of a poison image do not cost a worker each.
        if error is not None and is_poison(error):
            self.failures.set(computation.key, (error, time.monotonic()))
        if error is None:
            result = future.result()
            self.results.set(computation.key, result)
            if self.shared is not None:
                await self.shared.put_result(computation.key, result)
        if self.shared is not None and computation.claim is not None:
            await self.shared.release(computation.key, computation.claim)
        if not computation.future.done():
            if error is None:
                computation.future.set_result(future.result())
            else:
                computation.future.set_exception(error)
                computation.future.exception()  # seen: nobody may be waiting any more

    async def _wait_for_other_node(self, computation: Computation, payload: bytes, params: dict[str, Any]) -> None:
        assert self.shared is not None
        deadline = time.monotonic() + self.pool.task_timeout
        try:
            while time.monotonic() < deadline:
                await asyncio.sleep(REMOTE_POLL_S)
                result = await self.shared.get_result(computation.key)
                if result is not None:
                    self.results.set(computation.key, result)
                    computation.future.set_result(result)
                    return
                if not await self.shared.claim_held(computation.key):
                    # The other node gave up (failure, crash, Redis down): compute here.
                    claim = await self.shared.claim(computation.key)
                    if claim is None:
                        continue  # a third node was faster; keep waiting for it
                    self._start_job(computation, payload, params, claim)
                    return
            raise TaskTimeoutError(f"OCR did not finish within {self.pool.task_timeout:g} s")
        except PoolError as error:
            if not computation.future.done():
                computation.future.set_exception(error)
                computation.future.exception()

    def _forget(self, computation: Computation) -> None:
        if self._in_flight.get(computation.key) is computation:
            del self._in_flight[computation.key]

    def release(self, computation: Computation) -> None:
        """A waiter left; drop a task nobody waits for that has not started yet."""
        computation.waiters -= 1
        if computation.waiters > 0 or computation.future.done():
            return
        if computation.job is not None:
            if self.pool.cancel(computation.job):  # its failure then reaches computation.future
                # Doomed now: a request for the same image arriving before that failure has
                # travelled (a loop turn later, or a Redis round trip) must start a fresh run.
                self._forget(computation)
                self._release_claim_now(computation)
        elif computation.poller is not None:
            computation.poller.cancel()
            self._forget(computation)

    def _release_claim_now(self, computation: Computation) -> None:
        """Give up the shared claim at once, so the next run of this image is not kept waiting."""
        if self.shared is not None and computation.claim is not None:
            claim, computation.claim = computation.claim, None
            asyncio.ensure_future(self.shared.release(computation.key, claim))

    # ---- fire-and-forget tasks ------------------------------------------------------------

    async def submit_task(self, key: str, image_hash: str, payload: bytes, params: dict[str, Any]) -> TaskRecord:
        """Start (or join) the OCR run for a fire-and-forget request and return its record."""
        record = TaskRecord(image_hash)
        cached = await self.lookup(key)
        if cached is not None:
            record.result, record.cached = cached, True
        else:
            computation = await self.join(key, payload, params)  # never released: the task must run
            record.computation = computation
            computation.future.add_done_callback(
                lambda future: asyncio.ensure_future(self._task_finished(record, future))
            )
        self.tasks.set(record.task_id, record)
        if self.shared is not None:
            await self.shared.put_task(record.task_id, record.view())
        return record

    async def _task_finished(self, record: TaskRecord, future: asyncio.Future[dict[str, Any]]) -> None:
        _record_outcome(record, future)
        # The outcome is copied: let go of the computation (and through it the job and the image).
        record.computation = None
        # Keep the finished record a full TTL from now, not from submission.
        self.tasks.set(record.task_id, record)
        if self.shared is not None:
            await self.shared.put_task(record.task_id, record.view())

    async def task_view(self, task_id: str, wait: float = 0.0) -> dict[str, Any] | None:
        """The task's state; with `wait`, first wait up to that many seconds for it to finish."""
        record = self.tasks.get(task_id)
        if record is not None:
            computation = record.computation
            if wait > 0 and computation is not None and record.status in ("queued", "running"):
                with contextlib.suppress(Exception):  # timed out, or the task failed: the view says which
                    await asyncio.wait_for(asyncio.shield(computation.future), wait)
                if computation.future.done():
                    _record_outcome(record, computation.future)
            return record.view()
        if self.shared is None:
            return None
        view = await self.shared.get_task(task_id)
        deadline = time.monotonic() + wait
        pause = REMOTE_POLL_S
        while view is not None and view["status"] in ("queued", "running"):
            # The task runs on another node: follow it in Redis, backing off so that many
            # long-polls do not become many Redis reads per second each.
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            await asyncio.sleep(min(pause, remaining))
            pause = min(pause * 1.5, LONG_POLL_MAX_PAUSE_S)
            view = await self.shared.get_task(task_id)
        return view

    def stats(self) -> dict[str, Any]:
        return {
            "backend": "redis" if self.shared is not None else "memory",
            "size": len(self.results),
            "capacity": self.results.capacity,
            "ttl_s": self.results.ttl,
            "hits": self.hits,
            "misses": self.misses,
            "shared_in_flight": self.shared_waits,
            "evictions": self.results.evictions,
            "in_flight": len(self._in_flight),
            "tasks_kept": len(self.tasks),
            "failures_remembered": len(self.failures),
            "failures_answered": self.failures_answered,
            "shared_store": self.shared.stats() if self.shared is not None else None,
        }
