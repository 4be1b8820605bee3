"""A supervised pool of OCR worker processes, driven from the asyncio event loop.

Why not concurrent.futures / pebble / loky: the service needs to know which task runs
on which process (to retry a crashed worker's task once, and to kill exactly the worker
whose task passed its deadline), to recycle workers one at a time, and to bound the
queue. Those fit in one small supervisor built on multiprocessing primitives: one
duplex pipe per worker, the process sentinel for liveness, and loop.add_reader for both,
so the event loop is never blocked waiting on a worker. An image larger than what a socket
buffer takes at once is written to the worker's pipe from a thread of that worker's own
(see _send), so a 20 MiB upload never holds up the loop while the worker reads it; replies
are read as their bytes arrive (see framing.py), so a worker stopped half-way through a
reply holds up nothing but its own task, which its timeout then ends.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import contextlib
import itertools
import logging
import multiprocessing
import os
import signal
import statistics
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from ocr_pool.cpus import read_usable_cpus
from ocr_pool.errors import (
    NoWorkerError,
    PoolClosedError,
    PoolError,
    QueueFullError,
    QueueTimeoutError,
    TaskCancelledError,
    TaskFailedError,
    TaskTimeoutError,
    WorkerCrashedError,
    WorkerStartError,
)
from ocr_pool.framing import MessageReader
from ocr_pool.sched import cpu_waits, hindrance
from ocr_pool.worker import shutdown_signals_blocked, worker_main

log = logging.getLogger("ocr_pool")

# A crashed worker's task is tried this many times in all before it fails.
MAX_ATTEMPTS = 2
RETIRE_GRACE_S = 10.0
MAX_RESTART_BACKOFF_S = 30.0
# With no worker ready, work is refused (no_worker) at once when starting one is broken: the
# engine said why it cannot load (or did not load in time), or the OS would not start a
# process. A worker that dies while loading without a word (killed from outside, the OOM
# killer) may well be followed by one that loads, seconds later: that takes this many such
# starts in a row, and until then work waits in the queue (its deadline still holds).
SILENT_START_FAILURES_TO_REFUSE = 3
# Recent run times the dispatcher predicts a task's run from (their median).
RUN_TIME_SAMPLES = 50
# Messages up to this size are written on the event loop: they fit in the socket buffer of
# an idle worker's pipe, so the write cannot block. Larger images go through a thread.
INLINE_SEND_BYTES = 64 * 1024
# At most this much of a worker's reply is read per readiness event of its pipe.
READ_CHUNK_BYTES = 256 * 1024


def write_message(conn: Connection, message: Any, payload: bytes | bytearray | None) -> None:
    """One message to a worker: a small pickled header, then the image bytes as they are
    (send_bytes writes the caller's buffer: no pickled copy of megabytes)."""
    try:
        conn.send(message)
        if payload is not None:
            conn.send_bytes(payload)
    except (BrokenPipeError, ConnectionResetError, OSError):
        pass  # the worker is gone; _on_exit will see to its task


def _how_it_ended(worker: WorkerHandle) -> str:
    """The worker's end in a few words: the signal that killed it (SIGKILL: the OOM killer or
    someone's kill -9; SIGSEGV: a crash in native code) or its exit code."""
    code = worker.process.exitcode
    if code is None:
        return "its end unknown"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
        return f"killed by signal {-code}"
    return f"exit code {code}"


def _read_some(worker: WorkerHandle) -> list[Any] | None:
    """One read of a readable worker pipe (it never blocks then): the messages it completed,
    or None once the worker closed its end."""
    try:
        data = os.read(worker.conn.fileno(), READ_CHUNK_BYTES)
    except OSError:
        return None
    return worker.reader.feed(data) if data else None


class Job:
    """One OCR task: queued, then running on a worker, then done or failed."""

    def __init__(
        self,
        payload: bytes | bytearray,
        params: dict[str, Any],
        loop: asyncio.AbstractEventLoop,
        timeout: float = float("inf"),
    ) -> None:
        self.id = uuid.uuid4().hex
        # The image bytes; None once the job ended, so a finished job kept for polling or
        # metrics does not hold megabytes (a crashed attempt keeps it for the retry).
        self.payload: bytes | bytearray | None = payload
        self.params = params
        self.state = "queued"
        self.attempts = 0
        self.future: asyncio.Future[dict[str, Any]] = loop.create_future()
        self.submitted = time.monotonic()
        # Past this, a task still waiting for a worker is dropped (the client's time is up);
        # once running, a task has its own budget from dispatch (see WorkerPool._dispatch).
        self.deadline = self.submitted + timeout
        self.started: float | None = None  # first dispatch
        self.dispatched: float | None = None  # this attempt's dispatch
        # Its worker's threads' CPU waits at dispatch (ocr_pool.sched), read off the event loop.
        self.cpu_waits_at_dispatch: asyncio.Future[dict[str, float] | None] | None = None
        self.busy_at_dispatch = 0  # the pool's busy workers then, this one's included
        self.finished: float | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.worker: WorkerHandle | None = None

    @property
    def queue_wait_ms(self) -> float | None:
        if self.started is None:
            return None
        return round((self.started - self.submitted) * 1000, 1)


class WorkerHandle:
    """The parent's view of one worker process."""

    def __init__(self, wid: int, process: BaseProcess, conn: Connection, task_limit: int) -> None:
        self.wid = wid
        self.process = process
        self.conn = conn
        self.task_limit = task_limit
        self.state = "starting"  # starting | idle | busy | retiring | stopping
        self.tasks_done = 0
        self.job: Job | None = None
        self.started = time.monotonic()
        self.load_ms: float | None = None
        self.load_error: str | None = None
        # Set when the parent ends the worker on purpose: recycled | timeout | shutdown.
        self.exit_reason: str | None = None
        # The worker loading to take this one's place (recycling): this one serves until it is ready.
        self.successor: WorkerHandle | None = None
        self.timer: asyncio.TimerHandle | None = None
        # Large writes to this worker's pipe run on this thread, in order; `sends_pending`
        # counts them, and while any is pending every message goes that way (no interleaving).
        self.sender: ThreadPoolExecutor | None = None
        self.sends_pending = 0
        self.exited = False
        # Replies as their bytes come in: a message is handled only once all of it is here.
        self.reader = MessageReader()
        self._pid = process.pid  # kept: once closed (after its exit) the process object tells nothing

    @property
    def pid(self) -> int | None:
        return self._pid


class WorkerPool:
    def __init__(
        self,
        *,
        size: int,
        max_tasks: int,
        queue_size: int,
        task_timeout: float,
        start_timeout: float,
        engine_options: Any,
        threads: int = 1,
        factory: str = "models:create_engine",
        cpus: int | None = None,
    ) -> None:
        self.size = size
        self.max_tasks = max_tasks
        self.queue_size = queue_size
        self.task_timeout = task_timeout
        self.start_timeout = start_timeout
        self._options = engine_options
        self._threads = threads
        # CPUs the workers share (affinity, cgroup quota): a worker kept waiting for one by its
        # own pool's other workers was not starved by the machine.
        self._cpus = cpus if cpus is not None else read_usable_cpus()
        self._factory = factory
        # spawn, not fork: the parent runs threads (executors) and must never hand a
        # half-initialised runtime to a child; models load only in the child.
        self._ctx = multiprocessing.get_context("spawn")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._workers: list[WorkerHandle] = []
        self._queue: collections.deque[Job] = collections.deque()
        self._ids = itertools.count()
        self._closing = False
        self._hurry = False  # a second signal: close() stops waiting and kills the workers
        # Work accepted before close() but not in the queue yet (a document's later pages):
        # close() waits for it too, within its grace, and submit(accepted=True) still takes it.
        self._drain_sources: list[Callable[[], int]] = []
        self._drain_over = False
        self._changed = asyncio.Event()
        self._start_failures = 0
        self._last_start_error: str | None = None
        self._start_broken = False  # see SILENT_START_FAILURES_TO_REFUSE
        # After a failed start, no process is started before this loop time but by the
        # back-off timer (_respawn): a recycle retried on every reply was a respawn storm.
        self._next_start = 0.0
        # Workers in a row that died after loading, before finishing a task (a runtime that
        # crashes once loaded, memory that runs out): their replacements back off too, or the
        # pool reloaded its models in a loop, several times a second.
        self._early_deaths = 0
        self._initial_ready = False
        self.tasks_run = 0
        self.tasks_cancelled = 0
        # Tasks dropped unrun: they waited past their deadline or could not finish by it.
        self.tasks_expired = 0
        # Tasks run again on another worker after theirs died under them.
        self.tasks_retried = 0
        self._run_times: collections.deque[float] = collections.deque(maxlen=RUN_TIME_SAMPLES)
        self.restarts: collections.Counter[str] = collections.Counter()
        # Called with each job that completed on a worker (for metrics).
        self.on_task_finished: Callable[[Job], None] | None = None
        self.identity: str | None = None

    # ---- lifecycle -------------------------------------------------------------

    async def start(self, wait: bool = True) -> None:
        self._loop = asyncio.get_running_loop()
        # Runs before multiprocessing's own exit handler (atexit is last in, first out).
        atexit.register(self._kill_on_exit)
        for index in range(self.size):
            # Stagger the first generation's limits so workers do not all recycle at once.
            self._spawn(max(1, self.max_tasks - (index * self.max_tasks) // self.size))
        if wait:
            await self.wait_ready()

    async def wait_ready(self) -> None:
        """Wait until every first-generation worker loaded; raise if one failed to."""
        while True:
            if self._last_start_error and not self._initial_ready:
                raise WorkerStartError(self._last_start_error)
            if self.ready_count >= self.size:
                self._initial_ready = True
                return
            self._changed.clear()
            await self._changed.wait()

    async def close(self, grace: float = 10.0) -> None:
        """Stop taking work, let queued and running tasks finish within `grace`, stop workers."""
        self._closing = True
        deadline = time.monotonic() + grace
        while (
            (self._queue or any(w.state == "busy" for w in self._workers) or self._accepted_waiting())
            and time.monotonic() < deadline
            and not self._hurry
        ):
            await asyncio.sleep(0.05)
        self._drain_over = True
        while self._queue:
            self._fail(self._queue.popleft(), PoolClosedError("the server is shutting down"))
        for worker in list(self._workers):
            if worker.job is not None:
                self._fail(worker.job, PoolClosedError("the server is shutting down"))
            worker.exit_reason = "shutdown"
            self._send(worker, None)
        stop_by = time.monotonic() + 5.0
        while self._workers and time.monotonic() < stop_by and not self._hurry:
            await asyncio.sleep(0.05)
        for worker in list(self._workers):
            worker.process.kill()
        while self._workers and time.monotonic() < stop_by + 5.0:
            await asyncio.sleep(0.05)
        atexit.unregister(self._kill_on_exit)

    def add_drain_source(self, waiting: Callable[[], int]) -> None:
        """Count `waiting()` tasks as accepted work that close() lets finish (see submit)."""
        self._drain_sources.append(waiting)

    def _accepted_waiting(self) -> int:
        return sum(waiting() for waiting in self._drain_sources)

    def hurry(self) -> None:
        """Cut a running close() short: fail what is left at once and kill the workers."""
        self._hurry = True

    def _kill_on_exit(self) -> None:
        """The interpreter exits without close() (an unexpected error): kill the workers.

        They ignore SIGTERM, and multiprocessing's exit handler would send them that, then
        wait for them for ever while this process still holds their pipes open.
        """
        for worker in list(self._workers):
            worker.process.kill()
            worker.process.join(timeout=5.0)

    # ---- public API --------------------------------------------------------------

    def submit(self, payload: bytes | bytearray, params: dict[str, Any], accepted: bool = False) -> Job:
        """Queue a task. `accepted`: part of work taken before close() (a document's next
        page), still queued while close() drains; anything else is refused once closing."""
        assert self._loop is not None, "start() the pool first"
        if self._closing and (not accepted or self._drain_over):
            raise PoolClosedError("the server is shutting down")
        if self.ready_count == 0 and self._start_broken:
            raise NoWorkerError(f"no OCR worker could start: {self._last_start_error}")
        if len(self._queue) >= self.queue_size:
            raise QueueFullError(f"the OCR queue is full ({self.queue_size} tasks waiting)")
        job = Job(payload, params, self._loop, self.task_timeout)
        job.timer = self._loop.call_later(self.task_timeout, self._on_timeout, job)
        self._queue.append(job)
        self._dispatch()
        return job

    def cancel(self, job: Job) -> bool:
        """Drop a task that has not started yet; a running task is left to finish."""
        if job.state != "queued":
            return False
        try:
            self._queue.remove(job)
        except ValueError:
            return False
        job.state = "cancelled"
        self.tasks_cancelled += 1
        self._fail(job, TaskCancelledError("no client waits for this task any more"))
        return True

    @property
    def ready_count(self) -> int:
        return sum(1 for w in self._workers if w.state in ("idle", "busy"))

    @property
    def threads(self) -> int:
        """Inference threads each worker runs."""
        return self._threads

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    def expected_run_s(self) -> float:
        """What a task is expected to take on a worker: the median of recent runs (0 before any)."""
        return statistics.median(self._run_times) if self._run_times else 0.0

    def stats(self) -> dict[str, Any]:
        return {
            "configured": self.size,
            "alive": len(self._workers),
            "ready": self.ready_count,
            "busy": self._busy_count(),
            "restarts": dict(self.restarts),
            "tasks_retried": self.tasks_retried,
            "last_start_error": self._last_start_error,
            "workers": [
                {
                    "pid": w.pid,
                    "state": w.state,
                    "tasks_done": w.tasks_done,
                    "task_limit": w.task_limit,
                    "load_ms": w.load_ms,
                }
                for w in self._workers
            ],
        }

    def _busy_count(self) -> int:
        return sum(1 for w in self._workers if w.state == "busy")

    def running_count(self) -> int:
        return sum(1 for w in self._workers if w.job is not None)

    def worker_pids(self) -> list[int]:
        return [w.pid for w in self._workers if w.pid is not None]

    # ---- workers -----------------------------------------------------------------

    def _spawn(self, task_limit: int) -> WorkerHandle | None:
        """Start a worker process; None if the OS refused (a retry is then scheduled)."""
        assert self._loop is not None
        wid = next(self._ids)
        try:
            parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        except OSError as exc:  # EMFILE, ENFILE
            self._spawn_failed(exc)
            return None
        process = self._ctx.Process(
            target=worker_main,
            args=(child_conn, self._factory, self._options, self._threads),
            name=f"ocr-worker-{wid}",
            daemon=True,
        )
        try:
            with shutdown_signals_blocked():
                process.start()
        except OSError as exc:  # EMFILE, ENOMEM, EAGAIN: out of descriptors, memory or processes
            parent_conn.close()
            child_conn.close()
            self._spawn_failed(exc)
            return None
        child_conn.close()
        worker = WorkerHandle(wid, process, parent_conn, task_limit)
        self._workers.append(worker)
        self._loop.add_reader(parent_conn.fileno(), self._on_message, worker)
        self._loop.add_reader(process.sentinel, self._on_exit, worker)
        worker.timer = self._loop.call_later(self.start_timeout, self._on_start_timeout, worker)
        log.info("worker %d starting (pid %s, task limit %d)", wid, process.pid, task_limit)
        return worker

    def _spawn_failed(self, exc: OSError) -> None:
        """The OS would not start a process: count it, and try again after a back-off."""
        assert self._loop is not None
        self._start_failures += 1
        self._start_broken = True
        self._last_start_error = f"could not start a worker process: {type(exc).__name__}: {exc}"
        self.restarts["start_failed"] += 1
        delay = self._schedule_respawn()
        log.error("%s; trying again in %.1f s", self._last_start_error, delay)
        self._fail_queue_if_unserved()
        self._changed.set()

    def _restart_delay(self) -> float:
        failures = max(self._start_failures, self._early_deaths)
        if not failures:
            return 0.0
        return min(MAX_RESTART_BACKOFF_S, 0.5 * 2 ** (failures - 1))

    def _schedule_respawn(self) -> float:
        """Start a worker where one is missing once the back-off of the failures so far is over."""
        assert self._loop is not None
        delay = self._restart_delay()
        self._next_start = self._loop.time() + delay
        self._loop.call_later(delay, self._respawn)
        return delay

    def _backing_off(self) -> bool:
        """A start failed and its back-off is not over: only the retry timer may start a process."""
        assert self._loop is not None
        return self._loop.time() < self._next_start

    def _send(self, worker: WorkerHandle, message: Any, payload: bytes | bytearray | None = None) -> None:
        assert self._loop is not None
        if worker.exited:
            return
        if worker.sends_pending == 0 and (payload is None or len(payload) <= INLINE_SEND_BYTES):
            write_message(worker.conn, message, payload)
            return
        if worker.sender is None:
            worker.sender = ThreadPoolExecutor(1, thread_name_prefix=f"ocr-send-{worker.wid}")
        worker.sends_pending += 1
        loop = self._loop
        future = worker.sender.submit(write_message, worker.conn, message, payload)
        future.add_done_callback(lambda _: loop.call_soon_threadsafe(self._on_sent, worker))

    def _on_sent(self, worker: WorkerHandle) -> None:
        worker.sends_pending -= 1
        if worker.exited and worker.sends_pending == 0:
            self._release_conn(worker)

    def _release_conn(self, worker: WorkerHandle) -> None:
        # Only once no thread writes to it: closing the fd under a write could hit a reused fd.
        worker.conn.close()
        if worker.sender is not None:
            worker.sender.shutdown(wait=False)

    def _on_message(self, worker: WorkerHandle) -> None:
        """The worker's pipe is readable: take what is there (one read never blocks once the
        pipe is readable) and handle the messages it completes."""
        assert self._loop is not None
        messages = _read_some(worker)
        if messages is None:  # the worker closed its end: its exit (the sentinel) says the rest
            self._loop.remove_reader(worker.conn.fileno())
            return
        if not messages:
            return  # part of a reply: nothing changed yet
        for message in messages:
            self._handle_message(worker, message)
        self._dispatch()
        self._changed.set()

    def _handle_message(self, worker: WorkerHandle, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "ready":
            if worker.timer:
                worker.timer.cancel()
            info = message[1]
            worker.load_ms = info.get("load_ms")
            self.identity = info.get("identity") or self.identity
            worker.state = "idle"
            self._start_failures = 0
            self._start_broken = False
            log.info("worker %d ready (pid %s, loaded in %s ms)", worker.wid, worker.pid, worker.load_ms)
            for other in list(self._workers):
                self._maybe_retire(other)
        elif kind == "load_failed":
            self._on_load_failed(worker, message[1])
        elif kind in ("done", "error"):
            self._on_reply(worker, message)

    def _on_load_failed(self, worker: WorkerHandle, error: str) -> None:
        worker.load_error = error
        log.error("worker %d failed to load the engine: %s", worker.wid, error)

    def _on_reply(self, worker: WorkerHandle, message: tuple[Any, ...]) -> None:
        job, worker.job = worker.job, None
        worker.tasks_done += 1
        self.tasks_run += 1
        if worker.tasks_done == 1 and not worker.exited:
            self._early_deaths = 0  # a new worker served: starting works again
        if worker.state == "busy":
            worker.state = "idle"
        if job is not None and job.id == message[1] and job.dispatched is not None:
            self._run_times.append(time.monotonic() - job.dispatched)
        if job is not None and job.id == message[1] and not job.future.done():
            job.finished = time.monotonic()
            if job.timer:
                job.timer.cancel()
            if message[0] == "done":
                job.state = "done"
                job.payload = None
                job.worker = None  # a finished job kept for polling must not hold a worker's process
                job.future.set_result(message[2])
            else:
                self._fail(job, TaskFailedError(message[2], message[3]))
            if self.on_task_finished is not None:
                self.on_task_finished(job)
        self._maybe_retire(worker)

    def _maybe_retire(self, worker: WorkerHandle, retrying: bool = False) -> None:
        """Recycle a worker past its task limit: first start its successor (one replacement
        loads at a time) while it keeps serving, then retire it once the successor is ready
        and it is idle, so the pool never has fewer than `size` ready workers for it.
        `retrying`: called by the back-off timer, which may start a process."""
        if worker.exited or self._closing or worker.tasks_done < worker.task_limit or worker.state not in ("idle", "busy"):
            return
        successor = worker.successor
        if successor is None:
            if any(w.state == "starting" for w in self._workers):
                return  # another replacement is loading; this one's turn comes when it is ready
            if self._backing_off() and not retrying:
                return  # the last start failed: the retry timer tries again (every reply did)
            worker.successor = self._spawn(self.max_tasks)
            return
        if successor.state not in ("idle", "busy") or worker.state != "idle":
            return
        worker.state = "retiring"
        worker.exit_reason = "recycled"
        self._send(worker, None)
        assert self._loop is not None
        self._loop.call_later(RETIRE_GRACE_S, self._kill_if_alive, worker)

    def _kill_if_alive(self, worker: WorkerHandle) -> None:
        if worker in self._workers and worker.process.is_alive():
            worker.process.kill()

    def _on_start_timeout(self, worker: WorkerHandle) -> None:
        if worker.state == "starting" and worker in self._workers:
            worker.load_error = f"the engine did not load within {self.start_timeout:g} s"
            worker.process.kill()

    def _on_exit(self, worker: WorkerHandle) -> None:
        assert self._loop is not None
        for fd in (worker.conn.fileno(), worker.process.sentinel):
            self._loop.remove_reader(fd)
        worker.process.join(timeout=1.0)
        worker.exited = True
        self._read_last_messages(worker)
        if worker.sends_pending == 0:
            self._release_conn(worker)  # else the write fails (the reader is gone) and _on_sent closes it
        if worker.timer:
            worker.timer.cancel()
        if worker in self._workers:
            self._workers.remove(worker)
        for other in self._workers:
            if other.successor is worker:
                other.successor = None  # it died loading: the next attempt starts another
        was_starting = worker.state == "starting"
        reason = worker.exit_reason or ("start_failed" if was_starting else "crashed")
        self.restarts[reason] += 1
        if reason == "crashed" and worker.tasks_done == 0 and worker.job is None:
            self._early_deaths += 1  # loaded, then died with no task: not the fault of an image
        if reason != "recycled" and reason != "shutdown":
            log.warning(
                "worker %d (pid %s) exited with code %s: %s",
                worker.wid,
                worker.pid,
                worker.process.exitcode,
                reason,
            )
        if was_starting and reason == "start_failed":
            self._start_failures += 1
            self._start_broken = (
                self._start_broken
                or worker.load_error is not None
                or self._start_failures >= SILENT_START_FAILURES_TO_REFUSE
            )
            self._last_start_error = worker.load_error or (
                f"worker exited with code {worker.process.exitcode} while loading the engine"
            )
        job = worker.job
        if job is not None and not job.future.done():
            job.worker = None
            if job.attempts < MAX_ATTEMPTS:
                log.warning("retrying task %s after its worker died", job.id)
                self.tasks_retried += 1
                job.state = "queued"
                if job.timer:
                    job.timer.cancel()
                # Waiting again, it may wait task_timeout at most (as a new task would): a retry
                # must not wait forever if no worker comes back. Dispatched, it gets a run
                # budget of its own.
                job.timer = self._loop.call_later(self.task_timeout, self._on_timeout, job)
                self._queue.appendleft(job)
            else:
                self._fail(job, WorkerCrashedError(f"the OCR worker died while processing this image ({_how_it_ended(worker)})"))
        if reason not in ("recycled", "shutdown") and self._replacing():
            self._schedule_respawn()
        # Its two spawn pipes stay open until the process object is closed or collected, and
        # finished jobs, documents and errors form cycles that only the rare full collection
        # frees: 140 descriptors built up over 70 recycles in a soak.
        with contextlib.suppress(ValueError):  # not reaped yet (the join timed out)
            worker.process.close()
        self._fail_queue_if_unserved()
        self._dispatch()
        self._changed.set()

    def _read_last_messages(self, worker: WorkerHandle) -> None:
        """What an exited worker wrote just before it went (a reply, its load error): its pipe
        and its exit become readable together, and the loop may see the exit first. A reply
        left unread made the task run again, or fail as worker_crashed on its last attempt."""
        messages: list[Any] = []
        with contextlib.suppress(OSError):
            while worker.conn.poll() and (more := _read_some(worker)) is not None:
                messages += more
        # A reply cut short by the exit (killed half-way through writing it) is not one.
        for message in messages:
            # Not "ready": a worker that died as it became ready must not retire the one it
            # was to replace. Nothing is dispatched to it: the caller drops it first.
            if message[0] == "load_failed":
                self._on_load_failed(worker, message[1])
            elif message[0] in ("done", "error"):
                self._on_reply(worker, message)

    def _fail_queue_if_unserved(self) -> None:
        """Nothing can serve the queue now (no worker alive, starting one is broken): fail
        fast with no_worker rather than let the tasks time out."""
        if self.ready_count == 0 and self._start_broken and not self._has_live_worker():
            while self._queue:
                self._fail(self._queue.popleft(), NoWorkerError(f"no OCR worker could start: {self._last_start_error}"))

    def _has_live_worker(self) -> bool:
        return any(w.state in ("idle", "busy", "retiring") for w in self._workers)

    def _replacing(self) -> bool:
        """Whether a worker that died is replaced: always but at shutdown, where only accepted
        work still waiting needs one (without, it waited out the grace for a 503)."""
        if not self._closing:
            return True
        return not self._drain_over and (bool(self._queue) or self._accepted_waiting() > 0)

    def _respawn(self) -> None:
        if not self._replacing():
            return
        # Workers that stay: not retiring, and not about to be replaced by a successor already counted.
        staying = sum(1 for w in self._workers if w.state != "retiring" and w.successor is None)
        if staying < self.size:
            self._spawn(self.max_tasks)
        else:
            for worker in list(self._workers):
                self._maybe_retire(worker, retrying=True)  # a recycle whose successor could not start

    # ---- tasks -------------------------------------------------------------------

    def _dispatch(self) -> None:
        while self._queue:
            worker = next((w for w in self._workers if w.state == "idle"), None)
            if worker is None:
                return
            job = self._queue.popleft()
            if job.future.done():
                continue
            now = time.monotonic()
            if job.attempts == 0 and job.deadline - now < self.expected_run_s():
                # It would outlive its deadline: drop it unrun rather than start work that the
                # client gives up on (under overload, the queue's head would be all such tasks).
                self._expire(job, "could not finish within")
                continue
            job.state = "running"
            job.attempts += 1
            job.worker = worker
            job.started = job.started or now
            job.dispatched = now
            if worker.pid is not None:  # a few /proc reads a thread: off the loop (~0.3 ms for 14 threads)
                job.cpu_waits_at_dispatch = self._loop.run_in_executor(None, cpu_waits, worker.pid)
            # From now on the task's own run is what counts: a worker is killed only for a task
            # that ran task_timeout seconds itself, never for the time it spent queued.
            if job.timer:
                job.timer.cancel()
            assert self._loop is not None
            job.timer = self._loop.call_later(self.task_timeout, self._on_timeout, job)
            worker.state = "busy"
            worker.job = job
            job.busy_at_dispatch = self._busy_count()
            self._send(worker, (job.id, job.params), job.payload)

    def _expire(self, job: Job, why: str) -> None:
        self.tasks_expired += 1
        waited = time.monotonic() - job.submitted
        self._fail(
            job,
            QueueTimeoutError(
                f"the server is overloaded: the task waited {waited:.1f} s for a worker and {why}"
                f" task_timeout ({self.task_timeout:g} s); try again later"
            ),
        )

    def _on_timeout(self, job: Job) -> None:
        if job.future.done():
            return
        if job.state == "queued":
            try:
                self._queue.remove(job)
            except ValueError:
                pass
            self._expire(job, "was not started within")
            return
        killed_worker = job.worker is not None
        message = f"OCR did not finish within {self.task_timeout:g} s of running"
        hindrance_reason = None
        if job.worker is not None:
            if job.worker.pid is not None and job.dispatched is not None:
                ran_s = time.monotonic() - job.dispatched
                # Waits for a CPU count only when the pool's own busy threads fit on its CPUs
                # (at dispatch and now: a neighbour killed for its own timeout is not busy now);
                # else they are the pool's load (slow images in several workers), not the machine's.
                busy_threads = max(job.busy_at_dispatch, self._busy_count()) * self._threads
                hindrance_reason = hindrance(
                    job.worker.pid, _result_or_none(job.cpu_waits_at_dispatch), ran_s, busy_threads <= self._cpus
                )
            job.worker.exit_reason = "timeout"
            job.worker.state = "stopping"  # not ready any more, even before its exit is seen
            job.worker.process.kill()
        if hindrance_reason is not None:
            message += f", but {hindrance_reason}: the time says nothing about the image; send it again"
        hindered = hindrance_reason is not None
        self._fail(job, TaskTimeoutError(message, killed_worker=killed_worker, worker_hindered=hindered))

    def _fail(self, job: Job, error: PoolError) -> None:
        if job.future.done():
            return
        if job.timer:
            job.timer.cancel()
        if job.state not in ("cancelled",):
            job.state = "failed"
        job.finished = time.monotonic()
        job.payload = None
        job.worker = None
        job.future.set_exception(error)
        # Mark the exception as seen: a task nobody awaits any more must not log noise.
        job.future.exception()


def _result_or_none(future: asyncio.Future[Any] | None) -> Any:
    """A finished future's result; None when there is none, it is not done, or it failed."""
    if future is None or not future.done() or future.cancelled() or future.exception() is not None:
        return None
    return future.result()
