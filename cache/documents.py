"""Documents (PDF, multi-page TIFF): one request, many pages, each page OCR'd as an image.

A document run: (PDF only) a probe task in a worker counts the pages, refuses too many,
reads each page's size and text layer; then every page that needs OCR goes to the page
scheduler (ocr_pool.pages: fair across documents, one page per worker in the pool) and
the answers are put together in page order. Results are cached per page (a repeated or
re-tried document re-runs only what is missing) and per document. Identical documents in
flight share one run, as identical images do.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from dataclasses import dataclass
from typing import Any

from cache.records import TaskView
from cache.service import OcrService
from cache.task_store import TaskRecord
from ocr_pool import Job, PoolError, QueueFullError, TaskCancelledError, TaskFailedError
from ocr_pool.pages import DocumentPages, PageScheduler, settle

# Errors that say nothing about a page but about the server (stopping, no worker, full): a
# page failing so fails the whole document, to be retried (its finished pages are cached).
SERVER_ERRORS = ("shutting_down", "no_worker", "queue_full", "cancelled")


@dataclass(frozen=True)
class RenderSettings:
    """What the workers need to turn a page into pixels (part of every cache key)."""

    dpi: float
    max_side: int
    max_pixels: int
    max_pages: int

    def spec(self) -> dict[str, Any]:
        return {"dpi": self.dpi, "max_side": self.max_side, "max_pixels": self.max_pixels}


class DocumentRun:
    """One document's OCR, shared by every local request for the same document and options.

    Looks like cache.Computation to the handlers (future, waiters, state, task_id, release):
    the last blocking waiter to leave cancels what has not started.
    """

    def __init__(self, key: str, kind: str, future: asyncio.Future[dict[str, Any]]) -> None:
        self.key = key
        self.kind = kind
        self.future = future
        self.task_id = uuid.uuid4().hex
        self.job: Job | None = None  # always None: a document is many jobs (see probe, pages)
        self.claim: str | None = None
        self.probe: Job | None = None
        self.pages: DocumentPages | None = None
        self.poller: asyncio.Task[None] | None = None  # the run itself; cancelled on release
        self.waiters = 0
        self.pages_total: int | None = None
        self.pages_done = 0
        self.started = time.monotonic()
        self.first_start: float | None = None

    @property
    def state(self) -> str:
        if self.pages_done or (self.probe is not None and self.probe.state != "queued"):
            return "running"
        if self.pages is not None and any(task.state == "running" for task in self.pages.tasks):
            return "running"
        return "queued"


class DocumentTaskRecord(TaskRecord):
    """A block_flag=false document: its view also says how many pages are done."""

    def __init__(self, image_hash: str, pages_total: int | None) -> None:
        super().__init__(image_hash)
        self.pages_total = pages_total

    def view(self) -> TaskView:
        view = super().view()
        if self.result is not None:
            done = total = len(self.result["pages"])
        elif isinstance(self.computation, DocumentRun):
            done, total = self.computation.pages_done, self.computation.pages_total
        else:
            done, total = (0 if self.error is None else None), self.pages_total
        return dataclasses.replace(view, is_document=True, pages_done=done, pages_total=total)


def page_error(error: BaseException) -> dict[str, str]:
    code = error.code if isinstance(error, PoolError) else "ocr_failed"
    message = error.message if isinstance(error, PoolError) else f"OCR failed: {error}"
    return {"code": code, "message": message}


class DocumentService:
    def __init__(self, ocr: OcrService, scheduler: PageScheduler, render: RenderSettings) -> None:
        self.ocr = ocr
        self.pool = ocr.pool
        self.scheduler = scheduler
        self.render = render
        self._in_flight: dict[str, DocumentRun] = {}
        self.documents_run = 0
        self.pages_ocr = 0
        self.pages_layer = 0
        self.pages_cached = 0

    # ---- keys ------------------------------------------------------------------------

    def document_key(self, doc_hash: str, kind: str, params: dict[str, Any]) -> str:
        options = {**params, "document": kind, **self.render.spec()}
        return self.ocr.cache_key(doc_hash, options)

    def page_key(self, doc_hash: str, kind: str, index: int, det: str, fingerprint: str | None = None) -> str:
        """A page's cache key: its content's fingerprint (a scanned PDF page: the same scan in
        another PDF is the same page), else the document's hash and the page number."""
        options = {"det": det, "document": kind, **self.render.spec()}
        identity = f"scan:{fingerprint}" if fingerprint else f"{doc_hash}#page={index + 1}"
        return self.ocr.cache_key(identity, options)

    # ---- requests --------------------------------------------------------------------

    def join(self, key: str, kind: str, payload: bytes, doc_hash: str, params: dict[str, Any], pages: int | None):
        """Wait on the run for this document, starting one if there is none.

        pages: the page count when the event loop could read it cheaply (TIFF); a PDF's
        comes from the probe. Raises PoolError when the pool cannot take the work now.
        """
        run = self._in_flight.get(key)
        if run is None:
            self._admit(pages or 1)
            run = DocumentRun(key, kind, asyncio.get_running_loop().create_future())
            run.pages_total = pages
            run.future.add_done_callback(lambda _: self._forget(run))
            self._in_flight[key] = run
            run.poller = asyncio.ensure_future(self._run(run, payload, doc_hash, params))
            self.documents_run += 1
        run.waiters += 1
        return run

    def _admit(self, pages: int) -> None:
        """Pages count against the queue bound: a document is taken when its pages fit beside
        what already waits (or when nothing waits: a document larger than the bound runs alone)."""
        if self.ocr.pool.queue_size <= 0:
            return
        waiting = self.pool.queue_depth + self.scheduler.pending
        if waiting and waiting + pages > self.pool.queue_size:
            raise QueueFullError(
                f"the OCR queue is full ({waiting} tasks and pages waiting; this document has {pages} pages)"
            )

    def _forget(self, run: DocumentRun) -> None:
        if self._in_flight.get(run.key) is run:
            del self._in_flight[run.key]

    async def submit_task(
        self, key: str, kind: str, payload: bytes, doc_hash: str, params: dict[str, Any], pages: int | None
    ) -> DocumentTaskRecord:
        record = DocumentTaskRecord(doc_hash, pages)
        cached = await self.ocr.lookup(key)
        if cached is not None:
            record.result, record.cached = cached, True
        else:
            run = self.join(key, kind, payload, doc_hash, params, pages)  # never released: the task must run
            record.computation = run  # type: ignore[assignment]  # a Computation look-alike
        await self.ocr.tasks.add(record)  # records the outcome and shares the view when the run ends
        return record

    # ---- the run ---------------------------------------------------------------------

    async def _run(self, run: DocumentRun, payload: bytes, doc_hash: str, params: dict[str, Any]) -> None:
        try:
            result = await self._compute(run, payload, doc_hash, params)
        except asyncio.CancelledError:
            self._abandon(run)
            settle(run.future, None, TaskCancelledError("no client waits for this document any more"))
            return
        except PoolError as error:
            settle(run.future, None, error)
            return
        except Exception as error:  # noqa: BLE001 - never leave waiters hanging
            settle(run.future, None, PoolError(f"OCR failed: {type(error).__name__}: {error}"))
            return
        if not any("error" in page for page in result["pages"]):
            await self._store(run.key, result)
        settle(run.future, result, None)

    def _abandon(self, run: DocumentRun) -> None:
        if run.probe is not None:
            self.pool.cancel(run.probe)
        if run.pages is not None:
            self.scheduler.drop(run.pages)

    async def _store(self, key: str, result: dict[str, Any]) -> None:
        await self.ocr.results.put(key, result)  # and into the shared store, when there is one

    async def _compute(self, run: DocumentRun, payload: bytes, doc_hash: str, params: dict[str, Any]) -> dict[str, Any]:
        det, pdf_text = params["det"], params.get("pdf_text", "auto")
        spec = {"hash": doc_hash, **self.render.spec()}
        probe_ms = None
        if run.kind == "pdf":
            probe_spec = {**spec, "op": "probe", "max_pages": self.render.max_pages, "pdf_text": pdf_text}
            run.probe = self.pool.submit(payload, {"det": det, "document": probe_spec})
            # Shielded: cancelling this run must not cancel the pool's own future (pool.cancel does).
            probe = await asyncio.shield(run.probe.future)
            probe_ms = probe.get("timing", {}).get("probe")
            infos = probe["pages"]
        else:
            infos = [{"image_size": None, "layer": None, "error": None} for _ in range(run.pages_total or 1)]
        run.pages_total = len(infos)
        if run.probe is not None:
            # The probe told the page count only now: it counts against the queue bound too.
            self._admit(len([info for info in infos if info["layer"] is None and info["error"] is None]))
        pages: list[dict[str, Any] | None] = [None] * len(infos)
        to_ocr: list[tuple[int, dict[str, Any]]] = []
        keys: dict[int, str] = {}
        for index, info in enumerate(infos):
            number = index + 1
            if info["error"] is not None:
                pages[index] = {"page": number, "image_size": info["image_size"], "error": info["error"]}
            elif info["layer"] is not None:
                pages[index] = _page_body(number, info["image_size"], info["layer"], "layer", {}, False)
                self.pages_layer += 1
            else:
                keys[index] = self.page_key(doc_hash, run.kind, index, det, info.get("fingerprint"))
                cached = await self.ocr.lookup(keys[index])
                if cached is not None:
                    pages[index] = _ocr_page(number, cached, True)
                    self.pages_cached += 1
                else:
                    page_spec = {**spec, "op": "page", "kind": run.kind, "index": index}
                    to_ocr.append((index, {"det": det, "document": page_spec}))
                    continue
            run.pages_done += 1
        if to_ocr:
            run.pages = self.scheduler.add(payload, to_ocr)
            await asyncio.gather(
                *(self._page(run, task.future, task.index, keys[task.index], pages) for task in run.pages.tasks)
            )
        done = [page for page in pages if page is not None]
        failed = [page for page in done if "error" in page]
        server_side = next((page for page in failed if page["error"]["code"] in SERVER_ERRORS), None)
        if server_side is not None:
            raise TaskFailedError(server_side["error"]["code"], server_side["error"]["message"])
        if failed and len(failed) == len(done):
            # Nothing could be read: the request fails as the first page did.
            raise TaskFailedError(failed[0]["error"]["code"], _whole_failure_message(failed))
        timing: dict[str, Any] = {"total": round((time.monotonic() - run.started) * 1000, 2)}
        first_job = run.probe or (run.pages.tasks[0].job if run.pages is not None else None)
        if first_job is not None and first_job.queue_wait_ms is not None:
            timing["queue_wait"] = first_job.queue_wait_ms  # until the first task of the document started
        if probe_ms is not None:
            timing["probe"] = probe_ms
        return {"document": {"type": run.kind, "pages": len(done)}, "pages": done, "timing": timing}

    async def _page(
        self,
        run: DocumentRun,
        future: asyncio.Future[dict[str, Any]],
        index: int,
        key: str,
        pages: list[dict[str, Any] | None],
    ) -> None:
        try:
            result = await future
        except PoolError as error:
            pages[index] = {"page": index + 1, "image_size": None, "error": page_error(error)}
        else:
            pages[index] = _ocr_page(index + 1, result, False)
            self.pages_ocr += 1
            await self._store(key, result)
        run.pages_done += 1

    def stats(self) -> dict[str, Any]:
        return {
            "in_flight": len(self._in_flight),
            "documents_run": self.documents_run,
            "pages_ocr": self.pages_ocr,
            "pages_layer": self.pages_layer,
            "pages_cached": self.pages_cached,
            "pages_waiting": self.scheduler.pending,
        }


def _page_body(
    number: int, size: Any, lines: list[dict[str, Any]], source: str, timing: dict[str, Any], cached: bool
) -> dict[str, Any]:
    return {
        "page": number,
        "image_size": size,
        "text_lines": lines,
        "source": source,
        "timing": timing,
        "cached": cached,
    }


def _ocr_page(number: int, result: dict[str, Any], cached: bool) -> dict[str, Any]:
    body = _page_body(number, result["image_size"], result["text_lines"], "ocr", dict(result.get("timing", {})), cached)
    body["det_used"] = result.get("det_used")
    return body


def _whole_failure_message(failed: list[dict[str, Any]]) -> str:
    first = failed[0]["error"]["message"]
    if len(failed) == 1:
        return first
    return f"none of the {len(failed)} pages could be read; page 1: {first}"
