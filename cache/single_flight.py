"""Single-flight: every request for one cache key waits on one OCR run.

Local requests for the same key share one Computation (the in-flight table, separate from the
result store so eviction never touches work in progress). Across nodes, a claim decides which
node runs an image; the others wait for its result in the result store. Without a shared store
every claim is won at once (LocalClaims), so the same code serves one node and many, and it
reads and writes results only through the ResultStore interface.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any, Protocol

from cache.records import Result
from cache.remote_poll import FIRST_PAUSE_S, poll_pauses
from cache.result_store import ResultStore
from cache.ttl_lru import TTLLRUCache
from ocr_pool import (
    Job,
    PoolError,
    RememberedFailureError,
    TaskCancelledError,
    TaskTimeoutError,
    WorkerCrashedError,
    WorkerPool,
)
from ocr_pool.pages import settle

log = logging.getLogger("ocr_cache")


async def store_quietly(results: ResultStore, key: str, result: Result) -> None:
    """Store a result. Whatever the store raises costs the cache entry, never the answer:
    the callers settle their waiters after this."""
    try:
        await results.put(key, result)
    except Exception:  # an unsettled future would leave its key in flight forever
        log.exception("storing the result of %s failed; answered without caching it", key)


# Failed images remembered at once (a key and an error each); the oldest are forgotten first.
FAILURE_CAPACITY = 1000


class Claims(Protocol):
    """Which node computes a key (cache.redis_store.RedisStore is the shared implementation)."""

    async def claim(self, key: str) -> str | None:
        """A token if this node is to compute `key`, None if another node already does.
        A claim won after the caller was cancelled is given back."""
        ...

    async def claim_held(self, key: str) -> bool: ...

    def keep(self, key: str, token: str) -> asyncio.Task[None] | None:
        """Renew the claim while the run lasts (cancel the task it returns when the run ends);
        a claim is a short lease, so that a node that dies mid-run holds up the others briefly."""
        ...

    async def release(self, key: str, token: str) -> None: ...


class LocalClaims:
    """One node alone: it computes everything itself."""

    async def claim(self, key: str) -> str | None:
        return "local"

    async def claim_held(self, key: str) -> bool:
        return False

    def keep(self, key: str, token: str) -> asyncio.Task[None] | None:
        return None

    async def release(self, key: str, token: str) -> None:
        return None


# Past twice task_timeout (the owner's queue wait plus its run), how long a waiting node still
# gives the owner. A dead owner does not take that long: its claim lapses within one lease.
OWNER_GRACE_S = 10.0


def is_poison(error: BaseException) -> bool:
    """A failure that says something about the image and cost a worker: worth remembering."""
    if isinstance(error, WorkerCrashedError):
        return True  # it killed a worker on every attempt
    # Not merely a long queue, nor a worker that the machine stopped or starved.
    return isinstance(error, TaskTimeoutError) and error.killed_worker and not error.worker_hindered


class Computation:
    """One OCR run, shared by every local request waiting for the same cache key.

    A job on this node's pool, or (with a shared store) a wait for another node's run of the
    same image until it finishes or this node takes over (job is None until then).
    """

    def __init__(self, key: str, future: asyncio.Future[Result]) -> None:
        self.key = key
        self.future = future
        self.id = uuid.uuid4().hex
        self.job: Job | None = None
        self.claim: str | None = None
        self.keeper: asyncio.Task[None] | None = None  # renews the claim while the job lives
        self.waiters = 0
        self.poller: asyncio.Task[None] | None = None
        # The image this run reads, as the request that started it sent it, until the run ends:
        # a fire-and-forget upload is answered before then and its bytes stay counted meanwhile.
        self.payload: bytes | bytearray | None = None

    @property
    def state(self) -> str:
        # Waiting for another node counts as queued: no worker of ours runs it.
        return self.job.state if self.job is not None else "queued"

    @property
    def task_id(self) -> str:
        return self.job.id if self.job is not None else self.id

    def jobs(self) -> list[Job]:
        """The pool jobs of this run so far (each holds the image until it ends)."""
        return [self.job] if self.job is not None else []


class SingleFlight:
    def __init__(self, pool: WorkerPool, results: ResultStore, claims: Claims, failure_ttl: float = 0.0) -> None:
        self.pool = pool
        self.results = results
        self.claims = claims
        self._in_flight: dict[str, Computation] = {}
        # Images that crashed or outran the timeout recently: repeats are answered without OCR.
        self.failures: TTLLRUCache[tuple[PoolError, float]] = TTLLRUCache(FAILURE_CAPACITY, failure_ttl)
        self.failures_answered = 0
        self.shared_waits = 0

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    async def join(self, key: str, payload: bytes, params: dict[str, Any]) -> Computation:
        """Wait on the in-flight run for `key`, starting one if there is none.

        Raises PoolError (queue full, no worker, shutting down, a remembered failure) when a
        run cannot start.
        """
        self._refuse_remembered_failure(key)
        computation = self._in_flight.get(key)
        if computation is None:
            computation = Computation(key, asyncio.get_running_loop().create_future())
            computation.payload = payload
            computation.future.add_done_callback(lambda _: self._forget(computation))
            # Registered before any await: a local request for the same image arriving while
            # this one asks for the claim joins this run instead of claiming too.
            self._in_flight[key] = computation
            try:
                claim = await self.claims.claim(key)
            except BaseException as error:
                # Cancelled or failed asking: the requests that joined meanwhile must not wait
                # on a run that never starts, nor may later ones.
                self._forget(computation)
                cancelled = isinstance(error, asyncio.CancelledError)
                settle(
                    computation.future,
                    None,
                    TaskCancelledError("the request that started it left") if cancelled else error,
                )
                raise
            if claim is None:
                # Another node computes this image: wait for its result.
                computation.poller = asyncio.ensure_future(self._wait_for_other_node(computation, payload, params))
            else:
                self._start_job(computation, payload, params, claim)
        if computation.waiters > 0:
            self.shared_waits += 1
        computation.waiters += 1
        return computation

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
            # As a cancelled job fails its run: the request that left ends (its image let go).
            settle(computation.future, None, TaskCancelledError("no client waits for it any more"))

    def _refuse_remembered_failure(self, key: str) -> None:
        error = self.remembered_failure(key)
        if error is not None:
            raise error

    def remembered_failure(self, key: str) -> RememberedFailureError | None:
        """The error to answer at once for `key` (an image, or a document's page) that
        crashed or hung a worker recently; None when there is none."""
        remembered = self.failures.get(key)
        if remembered is None:
            return None
        error, when = remembered
        age = time.monotonic() - when
        self.failures_answered += 1
        return RememberedFailureError(
            error.code,
            f"{error.message} (remembered from an earlier attempt {age:.0f} s ago;"
            f" not tried again for {max(0.0, self.failures.ttl - age):.0f} s)",
        )

    def remember_failure(self, key: str, error: BaseException) -> None:
        """Keep a failure that cost a worker, so that repeats of the input do not cost another."""
        if is_poison(error):
            self.failures.set(key, (error, time.monotonic()))  # type: ignore[arg-type]

    def _start_job(self, computation: Computation, payload: bytes, params: dict[str, Any], claim: str) -> None:
        """Submit to the pool (raising PoolError at once if it cannot take the task).

        On refusal the computation fails with the same error, so local requests that joined it
        meanwhile get that answer too, and it leaves the in-flight table.
        """
        try:
            job = self.pool.submit(payload, params)
        except PoolError as error:
            asyncio.ensure_future(self.claims.release(computation.key, claim))
            self._forget(computation)
            settle(computation.future, None, error)  # the caller gets it raised
            raise
        computation.job, computation.claim = job, claim
        computation.keeper = self.claims.keep(computation.key, claim)
        job.future.add_done_callback(lambda future: asyncio.ensure_future(self._job_finished(computation, future)))

    async def _job_finished(self, computation: Computation, future: asyncio.Future[Result]) -> None:
        error = future.exception()
        # Only successes are stored; a crash or a timeout that killed a worker is remembered for
        # failure_ttl seconds, so repeats of a poison image do not cost a worker each.
        if error is not None:
            self.remember_failure(computation.key, error)
        _stop_keeping(computation)
        if error is None:
            await store_quietly(self.results, computation.key, future.result())
        if computation.claim is not None:
            await self.claims.release(computation.key, computation.claim)
        settle(computation.future, None if error is not None else future.result(), error)

    async def _wait_for_other_node(self, computation: Computation, payload: bytes, params: dict[str, Any]) -> None:
        # The owner may take its queue wait plus its run, task_timeout each: giving up after one
        # task_timeout answered 504 for images the owner then read. It renews its claim while
        # its job lives; if it dies, the claim lapses within a lease and this node takes over.
        wait_s = 2 * self.pool.task_timeout + OWNER_GRACE_S
        deadline = time.monotonic() + wait_s
        try:
            # A steady short pause: a single image is read in about a second.
            async for _ in poll_pauses(deadline, max_pause=FIRST_PAUSE_S):
                result = await self.results.get_shared(computation.key)
                if result is not None:
                    computation.future.set_result(result)
                    return
                if not await self.claims.claim_held(computation.key):
                    # The other node gave up (failure, crash, Redis down): compute here.
                    claim = await self.claims.claim(computation.key)
                    if claim is None:
                        continue  # a third node was faster; keep waiting for it
                    self._start_job(computation, payload, params, claim)
                    return
            raise TaskTimeoutError(f"another node did not finish this image within {wait_s:g} s")
        except PoolError as error:
            settle(computation.future, None, error)

    def _forget(self, computation: Computation) -> None:
        computation.payload = None
        if self._in_flight.get(computation.key) is computation:
            del self._in_flight[computation.key]

    def _release_claim_now(self, computation: Computation) -> None:
        """Give up the shared claim at once, so the next run of this image is not kept waiting."""
        _stop_keeping(computation)
        if computation.claim is not None:
            claim, computation.claim = computation.claim, None
            asyncio.ensure_future(self.claims.release(computation.key, claim))


def _stop_keeping(computation: Computation) -> None:
    if computation.keeper is not None:
        computation.keeper.cancel()
        computation.keeper = None
