"""Document pages over the pool, fairly.

A document's pages do not go into the pool's queue all at once: they wait here, and at
most one page per worker (all documents together) is in the pool, queued or running.
Each time a page finishes, the next page comes from the next document in turn
(round-robin). So:
- a single image waits behind at most the pages already running, never behind a
  100-page document (the pool's FIFO queue serves it first);
- two documents share the workers page by page;
- a page's task_timeout starts when it enters the pool, not when its document arrived.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from typing import Any

from ocr_pool.errors import PoolError, QueueFullError, QueueTimeoutError, TaskCancelledError
from ocr_pool.pool import Job, WorkerPool

# When the pool's queue is full of images, pages try again after this long ...
REFEED_DELAY_S = 0.1
# ... for at most task_timeout; then the page fails with queue_timeout.
OVERLOADED = (
    "the server is overloaded: the page found the OCR queue full for {:.1f} s (task_timeout {:g} s); try again later"
)


class PageTask:
    """One page's OCR: waits here, then runs as a pool job; `future` gets its result."""

    def __init__(self, index: int, params: dict[str, Any], loop: asyncio.AbstractEventLoop) -> None:
        self.index = index
        self.params = params
        self.future: asyncio.Future[dict[str, Any]] = loop.create_future()
        self.job: Job | None = None
        self.refused_since: float | None = None  # when a full queue first turned it away

    @property
    def state(self) -> str:
        return self.job.state if self.job is not None else "waiting"


# Told (page index, error) of each page whose job failed on the pool.
FailureHook = Callable[[int, BaseException], None]


class DocumentPages:
    """The pages of one document still to be handed to the pool."""

    def __init__(self, payload: bytes, tasks: list[PageTask], on_failure: FailureHook | None = None) -> None:
        self.payload = payload
        self.tasks = tasks
        self.pending: collections.deque[PageTask] = collections.deque(tasks)
        # Called even when nobody awaits the page any more (its document was dropped while
        # the page ran): a page that crashed or hung a worker must still be remembered.
        self.on_failure = on_failure


class PageScheduler:
    def __init__(self, pool: WorkerPool) -> None:
        self.pool = pool
        self._documents: collections.deque[DocumentPages] = collections.deque()
        self._in_pool = 0
        self._jobs: set[Job] = set()  # the pages' jobs in the pool, queued or running
        self._refeed: asyncio.TimerHandle | None = None
        # At shutdown the pool lets the pages of documents already accepted finish (within
        # its grace), not only what is in its queue.
        pool.add_drain_source(lambda: self.pending)

    @property
    def pending(self) -> int:
        """Pages waiting here (not yet in the pool's queue)."""
        return sum(len(document.pending) for document in self._documents)

    @property
    def waiting(self) -> int:
        """Pages no worker has started: waiting here or queued in the pool (at most one per worker)."""
        return self.pending + sum(1 for job in self._jobs if job.state == "queued")

    @property
    def in_pool(self) -> int:
        return self._in_pool

    def add(
        self, payload: bytes, pages: list[tuple[int, dict[str, Any]]], on_failure: FailureHook | None = None
    ) -> DocumentPages:
        loop = asyncio.get_running_loop()
        document = DocumentPages(payload, [PageTask(index, params, loop) for index, params in pages], on_failure)
        if document.pending:
            self._documents.append(document)
            self._feed()
        return document

    def cancel(self, document: DocumentPages, task: PageTask) -> bool:
        """Nobody wants this page any more: forget it if it waits here, cancel its job if queued.
        False when it already runs (it is left to finish) or is done. The document's other
        pages are not touched: they may be read for other documents' pages too."""
        cancelled = TaskCancelledError("no client waits for this page any more")
        if task in document.pending:
            document.pending.remove(task)
            settle(task.future, None, cancelled)
        elif task.job is None or not self.pool.cancel(task.job):  # its failure settles the task
            return False
        if not document.pending:
            if document in self._documents:
                self._documents.remove(document)
            document.payload = b""  # nothing of it is left to submit
        return True

    def _feed(self) -> None:
        window = max(1, self.pool.size)
        while self._in_pool < window and self._documents:
            document = self._documents[0]
            if not document.pending:
                self._documents.popleft()
                continue
            task = document.pending.popleft()
            self._documents.rotate(-1)  # the next page comes from the next document
            payload = document.payload
            if not document.pending:
                # Its last page: from here its job holds the bytes (for a retry too), and a
                # document kept by its run or a cycle until a full collection holds none.
                document.payload = b""
            if task.future.done():
                continue  # its page was given up (or failed) while it waited here
            try:
                job = self.pool.submit(payload, task.params, accepted=True)
            except QueueFullError:
                now = time.monotonic()
                task.refused_since = task.refused_since or now
                if now - task.refused_since > self.pool.task_timeout:
                    # Images kept the queue full for as long as a page may wait: overloaded
                    # (the document fails with 503, to be retried), never a wait without end.
                    error = QueueTimeoutError(OVERLOADED.format(now - task.refused_since, self.pool.task_timeout))
                    settle(task.future, None, error)
                    while document.pending:  # its other pages would only wait as long again
                        settle(document.pending.popleft().future, None, error)
                    document.payload = b""
                    continue
                document.pending.appendleft(task)  # images fill the queue: try again shortly
                document.payload = payload
                self._schedule_refeed()
                return
            except PoolError as error:  # shutting down, no worker
                settle(task.future, None, error)
                continue
            task.job = job
            self._in_pool += 1
            self._jobs.add(job)
            job.future.add_done_callback(lambda future, task=task, doc=document: self._page_done(doc, task, future))
        if not any(document.pending for document in self._documents):
            self._documents.clear()

    def _schedule_refeed(self) -> None:
        if self._refeed is None:
            self._refeed = asyncio.get_running_loop().call_later(REFEED_DELAY_S, self._refed)

    def _refed(self) -> None:
        self._refeed = None
        self._feed()

    def _page_done(self, document: DocumentPages, task: PageTask, future: asyncio.Future[dict[str, Any]]) -> None:
        self._in_pool -= 1
        if task.job is not None:
            self._jobs.discard(task.job)
        error = future.exception()
        if error is not None and document.on_failure is not None:
            document.on_failure(task.index, error)
        settle(task.future, None if error is not None else future.result(), error)
        self._feed()


def settle(future: asyncio.Future[dict[str, Any]], result: dict[str, Any] | None, error: BaseException | None) -> None:
    """Give `future` its result or error, unless it already has one."""
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
        future.exception()  # seen: a dropped document's pages may have nobody waiting
    else:
        assert result is not None
        future.set_result(result)
