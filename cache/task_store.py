"""Fire-and-forget task records: kept for polling by id, long-polled, shared through Redis.

A record follows one computation (cache/single_flight.py) until it ends, then keeps only the
outcome: the result or the error, never the job or the image. With a shared store, the node
running an unfinished task rewrites its record there every HEARTBEAT_S; a node polling it from
elsewhere answers a record that stopped being rewritten as failed (node_lost), not as queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
import uuid
from asyncio import FIRST_COMPLETED
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

from cache.records import ErrorInfo, Result, TaskView
from cache.redis_store import RedisStore, SharedStoreUnavailableError
from cache.remote_poll import poll_pauses
from cache.single_flight import Computation
from cache.ttl_lru import DropReason, TTLLRUCache, json_size
from ocr_pool import PoolError, QueueFullError

# While a task is unfinished its node rewrites the shared record this often (renewing its TTL);
# a record not rewritten for LOST_AFTER_S (a few heartbeats missed) belongs to a node that died.
HEARTBEAT_S = 5.0
LOST_AFTER_S = 20.0
# A view Redis did not take (it was unreachable) is written again this often until it is: an
# outcome left unwritten read on other nodes as queued, then as node_lost, though it was done.
RESHARE_S = 1.0
# The ids of dropped finished records remembered (with why and when), per service.task_number:
# a poll of one answers 410 (task_expired, task_evicted) rather than 404 as for an id never
# seen. The oldest are forgotten first; each costs about 260 bytes (10 MB at the default 10000).
DROPPED_PER_TASK = 4


class ResultTooLargeError(PoolError):
    """A finished task's answer is larger than the whole service.task_bytes budget."""

    code = "result_too_large"


class TaskRecord:
    """A pollable task created by a block_flag=false request."""

    def __init__(self, image_hash: str) -> None:
        self.task_id = uuid.uuid4().hex
        self.image_hash = image_hash
        self.created = time.time()
        self.computation: Computation | None = None
        self.result: Result | None = None
        self.cached = False
        self.error: PoolError | None = None
        self.finished: float | None = None  # when its store kept it finished (the store's clock)
        self._ended: asyncio.Future[None] | None = None  # set when it ends: wakes its long polls

    def ended(self) -> asyncio.Future[None]:
        """A future done once the task has its outcome (its run's, or a cancel's)."""
        if self._ended is None:
            self._ended = asyncio.get_running_loop().create_future()
        return self._ended

    def mark_ended(self) -> None:
        if self._ended is not None and not self._ended.done():
            self._ended.set_result(None)

    @property
    def status(self) -> str:
        if self.result is not None:
            return "done"
        if self.error is not None:
            return "failed"
        if self.computation is not None and self.computation.state != "queued":
            # Out of the queue: running until its outcome is copied here, a few loop turns after
            # the job ended (reading the job's "done" as "queued" sent a poll back a step).
            return "running"
        return "queued"

    def view(self) -> TaskView:
        error = None if self.error is None else ErrorInfo(self.error.code, self.error.message)
        return TaskView(self.task_id, self.status, self.image_hash, self.result, self.cached, error)

    def keep_progress(self) -> None:
        """Copy what the view shows of its run's progress before the run is let go (a document's pages)."""

    def record_outcome(self, future: asyncio.Future[Result]) -> None:
        """Copy a finished computation's result or error (idempotent)."""
        if self.result is not None or self.error is not None:
            return
        error = future.exception()
        if isinstance(error, PoolError):
            self.error = error
        elif error is not None:
            self.error = PoolError(f"OCR failed: {error}")
        else:
            self.result = future.result()


@dataclasses.dataclass(frozen=True)
class DroppedTask:
    """A finished record no longer kept: why ("expired", or pushed out past the "count" or the
    "bytes" bound), how long after the task finished, and how long ago."""

    reason: DropReason
    kept_s: float
    ago_s: float


class TaskStore:
    """Finished records live in a TTL + LRU store (service.time, service.task_number and, with
    `max_bytes`, service.task_bytes of their views' JSON: a record keeps its result, and a
    document's can be megabytes); unfinished ones apart, never evicted: a client polling a task
    still queued or running must not get 404 because newer tasks or the clock pushed it out. At
    most `capacity` are unfinished at once (refuse_if_full() says when a new task must be refused).
    The ids of the DROPPED_PER_TASK * `capacity` records dropped last are remembered (dropped())."""

    def __init__(
        self,
        capacity: int,
        ttl: float,
        shared: RedisStore | None = None,
        max_bytes: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.records: TTLLRUCache[TaskRecord] = TTLLRUCache(
            capacity, ttl, clock, max_bytes=max_bytes, size_of=record_size, on_drop=self._on_drop
        )
        self.unfinished: dict[str, TaskRecord] = {}
        self._starting = 0  # tasks between refuse_if_full() and add() (see starting())
        self.capacity = capacity
        self.shared = shared
        self.clock = clock
        # Dropped finished records, oldest first: task id -> (why, when it finished, when dropped).
        self._dropped: OrderedDict[str, tuple[DropReason, float, float]] = OrderedDict()
        self.polls_waiting = 0  # long polls (?wait=) waiting for their task now
        # Background writes of finished records: referenced until done, so none is collected early.
        self._pending: set[asyncio.Future[Any]] = set()
        self._heartbeats: dict[str, asyncio.Task[None]] = {}  # task id -> its shared record's heartbeat
        # Records whose view Redis did not take (it was away), oldest first, each with the
        # time (monotonic) past which it would have expired anyway; one retry loop for all.
        self._unshared: dict[str, tuple[TaskRecord, float]] = {}
        self._resharing: asyncio.Task[None] | None = None
        # Cancels a task this node runs whose cancel another node asked for (set by OcrService).
        self.on_cancel: Callable[[TaskRecord], None] | None = None
        if shared is not None:
            shared.on_data_lost.append(self._share_all_again)

    def __len__(self) -> int:
        return len(self.records) + len(self.unfinished)

    def refuse_if_full(self) -> None:
        """Raise QueueFullError (503) when `capacity` tasks are unfinished already (counting
        those being started: see starting())."""
        unfinished = len(self.unfinished) + self._starting
        if unfinished >= max(1, self.capacity):
            raise QueueFullError(f"too many unfinished tasks ({unfinished}, service.task_number); retry shortly")

    @contextlib.contextmanager
    def starting(self) -> Iterator[None]:
        """Hold an unfinished task's place while it is started (refused if there is none left):
        starting takes awaits (a claim in Redis), and tasks checked for room at once would all
        fit and then all be added."""
        self.refuse_if_full()
        self._starting += 1
        try:
            yield
        finally:
            self._starting -= 1

    async def add(self, record: TaskRecord) -> None:
        """Keep a new record; one with a computation records its outcome when that ends."""
        computation = record.computation
        if computation is not None:
            self.unfinished[record.task_id] = record
            self._start_heartbeat(record)
            computation.future.add_done_callback(lambda future: self._on_done(record, future))
        else:
            self._keep(record)
        if not await self._share(record):
            self._share_later(record)  # not in a heartbeat's time: a poll elsewhere would get 404

    def _on_done(self, record: TaskRecord, future: asyncio.Future[Result]) -> None:
        self._in_background(self._finished(record, future))

    async def _finished(self, record: TaskRecord, future: asyncio.Future[Result]) -> None:
        if record.computation is None:
            return  # it ended before its run did (cancelled: see end())
        record.record_outcome(future)
        self._close(record)
        if not await self._share(record):
            self._share_later(record)

    def end(self, record: TaskRecord, error: PoolError) -> None:
        """End an unfinished task now with `error` (its client cancelled it), whatever becomes
        of its run: the caller lets go of that."""
        record.error = error
        record.keep_progress()
        self._close(record)
        self._in_background(self._share_or_later(record))

    def _in_background(self, work: Coroutine[Any, Any, Any]) -> None:
        """Run `work` on its own, referenced until done (so it is not collected early)."""
        running = asyncio.ensure_future(work)
        self._pending.add(running)
        running.add_done_callback(self._pending.discard)

    def _close(self, record: TaskRecord) -> None:
        """A task has its outcome: its heartbeat stops, its long polls answer, and its record
        is kept as finished."""
        self._stop_heartbeat(record.task_id)
        record.mark_ended()
        # The outcome is copied: let go of the computation (and through it the job and the image).
        record.computation = None
        # Kept a full TTL from now, not from submission.
        self._keep(record)
        self.unfinished.pop(record.task_id, None)

    async def _share_or_later(self, record: TaskRecord) -> None:
        if not await self._share(record):
            self._share_later(record)

    def _keep(self, record: TaskRecord) -> None:
        """Keep a finished record for polling. One whose answer is larger than the whole byte
        budget is kept as a small failure saying so: dropped, its poll answered 404 (unknown id
        or expired) seconds after the task was accepted. With Redis the full answer is shared
        all the same, and a poll here reads it from there (nothing is kept here then)."""
        too_large = self.records.too_large
        record.finished = self.clock()
        self.records.set(record.task_id, record)
        if self.records.too_large == too_large or self.shared is not None:
            return
        view = record.view()
        size, what = json_size(view.to_json()), "document" if view.is_document else "image"
        record.result, record.cached = None, False
        record.error = ResultTooLargeError(
            f"the task's answer ({size} bytes of JSON) is larger than service.task_bytes"
            f" ({self.records.max_bytes}), so it was not kept for polling; send the {what} again"
            " with block_flag=true to get it"
        )
        self.records.set(record.task_id, record)

    async def _share(self, record: TaskRecord) -> bool:
        """Write the record's view to the shared store; False when it could not be written."""
        if self.shared is None:
            return True
        return await self.shared.put_task(record.task_id, record.view().to_json())

    def _share_later(self, record: TaskRecord) -> None:
        """Write the record's current view once Redis takes it again (an outage, a restart),
        until the record would have expired anyway. A finished record's heartbeat has stopped:
        without this, other nodes read its last unfinished view, then node_lost, for a task that
        is done (or 404 for one submitted while Redis was away)."""
        if self.shared is None:
            return
        self._unshared.pop(record.task_id, None)
        self._unshared[record.task_id] = (record, time.monotonic() + self.records.ttl)
        while len(self._unshared) > max(1, self.capacity):  # a long outage: the oldest go first
            del self._unshared[next(iter(self._unshared))]
        if self._resharing is None or self._resharing.done():
            self._resharing = self.shared.keep_alive(self._reshare, RESHARE_S)

    def _share_all_again(self) -> None:
        """Redis lost its data: every finished record this node holds is written again (it
        was written once, and other nodes answered 404 for it for good). Unfinished ones are
        written once now (their heartbeat would take up to HEARTBEAT_S, and a poll elsewhere
        meanwhile read 404 for a live task), not through the bounded retry list, which they
        would fill ahead of the finished ones: a write that fails is left to the heartbeat."""
        for record in self.records.values():
            self._share_later(record)
        for record in list(self.unfinished.values()):
            self._in_background(self._share(record))

    async def _reshare(self) -> bool:
        """One retry round, oldest first; False (the loop ends) once nothing is left to write."""
        for task_id, entry in list(self._unshared.items()):
            record, until = entry
            if time.monotonic() < until and not await self._share(record):
                return True  # Redis is still away (the breaker answers at once): next round
            # Not if it was queued again meanwhile (it finished while its older view was written).
            if self._unshared.get(task_id) is entry:
                del self._unshared[task_id]
        return bool(self._unshared)

    def _start_heartbeat(self, record: TaskRecord) -> None:
        if self.shared is not None:
            self._heartbeats[record.task_id] = self.shared.keep_alive(lambda: self._beat(record), HEARTBEAT_S)

    async def _beat(self, record: TaskRecord) -> bool:
        if self.shared is None:
            return False
        # Queued or running (a document: its progress), a fresh TTL, and whether a DELETE of it
        # reached another node.
        cancel_asked = await self.shared.beat_task(record.task_id, record.view().to_json())
        if cancel_asked and self.on_cancel is not None:
            if record.computation is not None:  # (it may have ended meanwhile)
                self.on_cancel(record)
            return False
        return True  # Redis down: beat again, the record may outlast the outage

    def _stop_heartbeat(self, task_id: str) -> None:
        heartbeat = self._heartbeats.pop(task_id, None)
        if heartbeat is not None:
            heartbeat.cancel()

    def _on_drop(self, task_id: str, record: TaskRecord, reason: DropReason) -> None:
        now = self.clock()
        finished = now if record.finished is None else record.finished
        # An expired record is noticed on the next read: it went a TTL after it was kept.
        dropped = min(now, finished + self.records.ttl) if reason == "expired" else now
        self._dropped[task_id] = (reason, finished, dropped)
        while len(self._dropped) > DROPPED_PER_TASK * max(1, self.capacity):
            self._dropped.popitem(last=False)

    def dropped(self, task_id: str) -> DroppedTask | None:
        """Why this node no longer keeps a finished task's record; None for an id it never
        dropped (unknown, or forgotten). With a shared store, a record this node pushed out
        was kept in Redis a full TTL: once that ran out too, it reads as expired."""
        entry = self._dropped.get(task_id)
        if entry is None:
            return None
        reason, finished, dropped = entry
        now = self.clock()
        if self.shared is not None and reason != "expired" and now >= finished + self.records.ttl:
            reason, dropped = "expired", finished + self.records.ttl
        return DroppedTask(reason, dropped - finished, now - dropped)

    async def view(self, task_id: str, wait: float = 0.0) -> TaskView | None:
        """The task's state; with `wait`, first wait up to that many seconds for it to finish.
        A waiting poll may be cancelled (its client left): the task itself runs on."""
        record = self.unfinished.get(task_id) or self.records.get(task_id)
        if record is not None:
            computation = record.computation
            if wait > 0 and computation is not None and record.status in ("queued", "running"):
                with self._waiting():  # until its run ends, it is cancelled, or the wait is over
                    await asyncio.wait((computation.future, record.ended()), timeout=wait, return_when=FIRST_COMPLETED)
                if computation.future.done():
                    record.record_outcome(computation.future)
            return record.view()
        if self.shared is None:
            return None
        if wait <= 0:
            return await self._remote_view(task_id, wait)
        with self._waiting():
            return await self._remote_view(task_id, wait)

    @contextlib.contextmanager
    def _waiting(self) -> Iterator[None]:
        """Count a long poll while it waits (/health: cache.task_polls_waiting)."""
        self.polls_waiting += 1
        try:
            yield
        finally:
            self.polls_waiting -= 1

    async def _remote_view(self, task_id: str, wait: float) -> TaskView | None:
        """Follow a task another node runs in Redis until it ends or `wait` runs out. Redis out of
        reach for a moment (a restart, a network blip) is waited through: the last view seen is
        answered, never None (a 404) for a task that exists; SharedStoreUnavailableError when
        Redis could not be asked at all before the deadline."""
        last: TaskView | None = None
        unreachable: SharedStoreUnavailableError | None = None
        async for _ in poll_pauses(time.monotonic() + wait, now=True):
            try:
                view = await self._shared_view(task_id)
            except SharedStoreUnavailableError as error:
                unreachable = error  # keep the last view; try again after the next pause
                continue
            if view is None and last is None:
                return None  # unknown or expired
            if view is not None and view.finished:
                return view
            # Seen unfinished and gone now: Redis lost it (a restart without persistence, its
            # maxmemory eviction); its node writes it again with its next heartbeat.
            last = view or last
        if last is None and unreachable is not None:
            raise unreachable  # never reached: whether the task exists is unknown (not a 404)
        return last

    async def _shared_view(self, task_id: str) -> TaskView | None:
        """The view another node shared; failed (node_lost) once its node stopped heartbeating."""
        assert self.shared is not None
        raw = await self.shared.get_task(task_id)
        if raw is None:
            return None
        view = TaskView.from_json(raw)
        age = raw.get("heartbeat_age")
        if view.finished or age is None or age <= LOST_AFTER_S:
            return view
        return node_lost(view, raw.get("node"), age)

    def stats(self) -> dict[str, Any]:
        return {
            "tasks_kept": len(self),
            "tasks_unfinished": len(self.unfinished),
            "tasks_bytes": self.records.bytes,  # finished records only: unfinished ones hold no result
            "tasks_max_bytes": self.records.max_bytes,
            "tasks_evictions": self.records.evictions,
            "tasks_too_large": self.records.too_large,
        }


def record_size(record: TaskRecord) -> int:
    """A finished record's size: its poll answer's JSON (the result, or the error, and the ids)."""
    return json_size(record.view().to_json())


def node_lost(view: TaskView, node: str | None, age: float) -> TaskView:
    """An unfinished view whose node stopped rewriting it: it will not finish, say so."""
    what = "document" if view.is_document else "image"
    message = (
        f"the server node running this task ({node or 'unknown'}) stopped answering {age:.0f} s ago"
        f" (it died or lost Redis); send the {what} again"
    )
    return dataclasses.replace(view, status="failed", error=ErrorInfo("node_lost", message))
