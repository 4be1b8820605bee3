"""Documents (PDF, multi-page TIFF): one request, many pages, each page OCR'd as an image.

A document run: (PDF only) a probe task in a worker counts the pages, refuses too many,
reads each page's size and text layer (when that task crashes or hangs its worker, the probe
is made again page by page, so that a page PDFium cannot get through fails alone); then
every page that needs OCR goes to the page scheduler (ocr_pool.pages: fair across documents,
one page per worker in the pool) and the answers are put together in page order. Results are cached per page (a repeated or
re-tried document re-runs only what is missing) and per document. Identical documents in
flight share one run, as identical images do, and so do identical pages: a page whose key
another page is being read under (in this document or another) waits for that read
(PageFlight) instead of being read again.

With page_images, each page also gets a small JPEG preview (made by the worker from the
pixels it OCRs, or by a "preview" task for a page that needs no OCR), kept in a bounded
store (cache.previews) and linked from the answer. A password-protected PDF's password
goes to the workers with each task and nowhere else: not into a key, a log or a task view.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson

from cache.previews import PreviewStore
from cache.records import Result, TaskView
from cache.remote_poll import poll_pauses
from cache.service import OcrService
from cache.single_flight import is_poison, store_quietly
from cache.task_store import TaskRecord
from models.text_layers import bound_document_layers
from ocr_pool import Job, PoolError, QueueFullError, TaskCancelledError, TaskFailedError
from ocr_pool.pages import DocumentPages, PageScheduler, PageTask, settle

# Errors that say nothing about a page but about the server (stopping, no worker, full or
# overloaded): a page failing so fails the whole document, to be retried (its finished pages
# are cached).
SERVER_ERRORS = ("shutting_down", "no_worker", "queue_full", "queue_timeout", "cancelled")
# Page previews (page_images=true): the longest side in pixels, and the JPEG quality.
PREVIEW = {"max_side": 1100, "quality": 80}
PREVIEW_URL = "/ocr_service/previews/{}"


@dataclass(frozen=True)
class RenderSettings:
    """What the workers need to turn a page into pixels (part of every cache key)."""

    dpi: float
    max_side: int
    max_pixels: int
    max_pages: int

    def spec(self) -> dict[str, Any]:
        return {"dpi": self.dpi, "max_side": self.max_side, "max_pixels": self.max_pixels}


@dataclass
class DocumentInput:
    """One request's document: what to read, and how."""

    kind: str  # "pdf" | "tiff"
    payload: bytes
    doc_hash: str
    params: dict[str, Any]  # det, pdf_text: what changes the result (part of the cache key)
    pages: int | None = None  # the page count when the event loop could read it (TIFF)
    page_images: bool = False
    # A PDF's password: sent to the workers only (never a key, a log line or a task view).
    password: str | None = field(default=None, repr=False)
    # Each page's content identity when it can be read cheaply (TIFF), else None.
    fingerprints: list[str | None] | None = None


class PageFlight:
    """One page's OCR, awaited by every page with the same page key (equal pages in one
    document, or the same page in documents read at the same time): read once, each page
    answered with its own number. It belongs to no run: a run that leaves only stops waiting,
    and the read is cancelled when no page waits for it and it has not started."""

    def __init__(self, key: str, future: asyncio.Future[dict[str, Any]], preview: bool) -> None:
        self.key = key
        self.future = future  # the worker's result (with its preview, if made), once stored
        self.preview = preview  # the read also makes the page's preview
        self.pages: DocumentPages | None = None  # where its task waits for the pool
        self.task: PageTask | None = None
        self.waiters = 0  # pages (of any run) waiting for it
        # Waits for the task and stores its result (held here: the loop keeps tasks only weakly).
        self.landing: asyncio.Task[None] | None = None

    @property
    def state(self) -> str:
        return self.task.state if self.task is not None else "waiting"


class DocumentRun:
    """One document's OCR, shared by every local request for the same document and options.

    Looks like cache.Computation to the handlers (future, waiters, state, task_id, release):
    the last blocking waiter to leave cancels what has not started.
    """

    def __init__(self, key: str, cache_key: str, kind: str, future: asyncio.Future[dict[str, Any]]) -> None:
        self.key = key  # who may share this run
        self.cache_key = cache_key  # where its result is stored
        self.kind = kind
        self.future = future
        self.task_id = uuid.uuid4().hex
        self.job: Job | None = None  # always None: a document is many jobs (see probe, pages)
        self.claim: str | None = None
        self.probe: Job | None = None
        self.first_probe: Job | None = None  # the document's first task (a page-by-page probe's count comes later)
        self.probe_pages: DocumentPages | None = None  # the probe page by page (see _probe)
        self.pages: DocumentPages | None = None  # the tasks this run put in the scheduler
        self.flights: dict[int, PageFlight] = {}  # page index -> the read it waits for (its own or another's)
        self.preview_tasks: list[PageTask] = []  # its preview-only tasks
        self.poller: asyncio.Task[None] | None = None  # the run itself; cancelled on release
        self.payload: bytes | bytearray | None = None  # the document's bytes, until the run ends (see Computation)
        self.waiters = 0
        self.pages_total: int | None = None
        self.pages_done = 0
        self.reserved = 0  # pages admitted against the queue bound, not in the pool or scheduler yet
        self.started = time.monotonic()
        self.first_start: float | None = None

    def jobs(self) -> list[Job]:
        """The pool jobs of this run so far (each holds the document until it ends)."""
        jobs = [job for job in {self.first_probe, self.probe} if job is not None]
        for group in (self.probe_pages, self.pages):
            if group is not None:
                jobs.extend(task.job for task in group.tasks if task.job is not None)
        jobs.extend(task.job for task in self.preview_tasks if task.job is not None)
        return jobs

    @property
    def state(self) -> str:
        if self.pages_done or (self.probe is not None and self.probe.state != "queued"):
            return "running"
        if self.pages is not None and any(task.state == "running" for task in self.pages.tasks):
            return "running"
        if any(flight.state == "running" for flight in self.flights.values()):
            return "running"  # another document's read of one of its pages runs
        return "queued"

    @property
    def doomed(self) -> bool:
        """Its last waiter left and the run is being cancelled: nobody may join it any more."""
        return self.poller is not None and (self.poller.cancelled() or self.poller.cancelling() > 0)


class DocumentTaskRecord(TaskRecord):
    """A block_flag=false document: its view also says how many pages are done."""

    def __init__(self, image_hash: str, pages_total: int | None) -> None:
        super().__init__(image_hash)
        self.pages_total = pages_total
        self.pages_done: int | None = None  # kept when it was cancelled with pages read

    def keep_progress(self) -> None:
        if isinstance(self.computation, DocumentRun):
            self.pages_done, self.pages_total = self.computation.pages_done, self.computation.pages_total

    def view(self) -> TaskView:
        view = super().view()
        if self.result is not None:
            done = total = len(self.result["pages"])
        elif isinstance(self.computation, DocumentRun):
            done, total = self.computation.pages_done, self.computation.pages_total
        elif self.pages_done is not None:
            done, total = self.pages_done, self.pages_total  # cancelled: how far it got
        else:
            done, total = (0 if self.error is None else None), self.pages_total
        return dataclasses.replace(view, is_document=True, pages_done=done, pages_total=total)


def page_error(error: BaseException) -> dict[str, str]:
    code = error.code if isinstance(error, PoolError) else "ocr_failed"
    message = error.message if isinstance(error, PoolError) else f"OCR failed: {error}"
    return {"code": code, "message": message}


class DocumentService:
    def __init__(
        self, ocr: OcrService, scheduler: PageScheduler, render: RenderSettings, preview_bytes: int = 64 << 20
    ) -> None:
        self.ocr = ocr
        self.pool = ocr.pool
        self.scheduler = scheduler
        self.render = render
        self.previews = PreviewStore(preview_bytes)
        self._in_flight: dict[str, DocumentRun] = {}
        # Pages of admitted runs not yet handed to the pool or the page scheduler (a run starts
        # a loop turn after join, and looks its pages up first): they count against the queue
        # bound too, or documents arriving together were all admitted past it.
        self._reserved = 0
        # Pages being read, by page key: an equal page waits for that read (single-flight).
        self._flights: dict[str, PageFlight] = {}
        self.documents_run = 0
        self.pages_ocr = 0  # pages read by OCR (a read answering several equal pages counts once)
        self.pages_layer = 0
        self.pages_cached = 0
        self.pages_shared = 0  # pages answered by a read made for another page
        self.documents_shared = 0  # read by another node while this one waited
        self.probed_by_page = 0  # PDFs probed page by page (their whole probe crashed or hung a worker)

    # ---- keys ------------------------------------------------------------------------

    def document_key(self, doc: DocumentInput) -> str:
        options = {**doc.params, "document": doc.kind, **self.render.spec()}
        return self.ocr.cache_key(doc.doc_hash, options)

    def run_key(self, doc: DocumentInput) -> str:
        """Which requests share one run: the same document and options, the same want of
        previews; a request with a password never shares (its own probe checks it)."""
        key = self.document_key(doc)
        if doc.page_images:
            key += "|page_images"
        if doc.password and doc.kind == "pdf":
            key += f"|private:{uuid.uuid4().hex}"
        return key

    def probe_key(self, doc: DocumentInput) -> str:
        """What a PDF's probe depends on: its bytes and the render settings, not det or
        pdf_text. A PDF that crashed or hung its probe is remembered under this key, so that
        resending it with other options does not cost another worker."""
        return self.ocr.cache_key(doc.doc_hash, {"document": doc.kind, "op": "probe", **self.render.spec()})

    def count_key(self, doc: DocumentInput) -> str:
        """Where a PDF whose page count alone crashed or hung a worker is remembered: it is
        refused at once while remembered."""
        return self.ocr.cache_key(doc.doc_hash, {"document": doc.kind, "op": "count", **self.render.spec()})

    def page_probe_key(self, doc: DocumentInput, index: int) -> str:
        """Where a page whose own probe crashed or hung a worker is remembered."""
        options = {"document": doc.kind, "op": "probe", **self.render.spec()}
        return self.ocr.cache_key(f"{doc.doc_hash}#page={index + 1}", options)

    def preview_slot(self, doc_hash: str, number: int) -> str:
        return self.ocr.cache_key(f"{doc_hash}#page={number}", {"preview": PREVIEW, **self.render.spec()})

    def page_key(self, doc_hash: str, kind: str, index: int, det: str, fingerprint: str | None = None) -> str:
        """A page's cache key: its content's fingerprint (a scanned PDF page, a TIFF page: the
        same page in another document is the same page), else the document's hash and the
        page number."""
        options = {"det": det, "document": kind, **self.render.spec()}
        identity = f"scan:{fingerprint}" if fingerprint else f"{doc_hash}#page={index + 1}"
        return self.ocr.cache_key(identity, options)

    # ---- requests --------------------------------------------------------------------

    async def cached(self, doc: DocumentInput) -> Result | None:
        """The whole document's cached answer, when it may be given without a run: never for
        a PDF that took a password (a run's probe checks the password first), and with
        page_images only while every page's preview is still kept."""
        cached = await self.ocr.lookup(self.document_key(doc))
        if cached is None or cached["document"].get("password_protected"):
            return None
        if doc.page_images:
            return self.with_previews(cached, doc.doc_hash, require_all=True)
        return cached

    def join(self, doc: DocumentInput) -> DocumentRun:
        """Wait on the run for this document, starting one if there is none.

        Raises PoolError when the pool cannot take the work now, or when counting the
        document's pages crashed or hung a worker recently (answered from memory).
        """
        key = self.run_key(doc)
        run = self._in_flight.get(key)
        if run is None or run.doomed:  # a doomed run leaves _in_flight a loop turn later
            cache_key = self.document_key(doc)
            remembered = self.ocr.flight.remembered_failure(self.count_key(doc)) if doc.kind == "pdf" else None
            if remembered is not None:
                raise remembered
            reads = 1 if doc.kind == "pdf" else self._reads(self._tiff_page_keys(doc))  # a PDF: its probe
            self._admit(reads)
            run = DocumentRun(key, cache_key, doc.kind, asyncio.get_running_loop().create_future())
            self._reserve(run, reads)
            run.pages_total = doc.pages
            run.payload = doc.payload
            run.future.add_done_callback(lambda _: self._forget(run))
            self._in_flight[key] = run
            run.poller = asyncio.ensure_future(self._run(run, doc))
            self.documents_run += 1
        run.waiters += 1
        return run

    def _tiff_page_keys(self, doc: DocumentInput) -> list[str]:
        """Each TIFF page's key, as its run will look it up (from the handler's fingerprints)."""
        prints = doc.fingerprints or []
        return [
            self.page_key(
                doc.doc_hash, doc.kind, index, doc.params["det"], prints[index] if index < len(prints) else None
            )
            for index in range(doc.pages or 1)
        ]

    def _reads(self, keys: list[str]) -> int:
        """The reads these pages add: equal pages are read once, and a page being read for
        another page already waits for that read (it holds no place of its own)."""
        return len(set(keys) - self._flights.keys())

    def _admit(self, pages: int) -> None:
        """Pages count against the queue bound: a document is taken when its pages fit beside
        what already waits (or when nothing waits: a document larger than the bound runs alone)."""
        if self.ocr.pool.queue_size <= 0:
            return
        # A page-by-page probe's tasks wait in the page scheduler too, but each is a few
        # milliseconds, not a page to read: they do not count against the bound.
        probes = sum(len(run.probe_pages.pending) for run in self._in_flight.values() if run.probe_pages)
        waiting = self.pool.queue_depth + self.scheduler.pending - probes + self._reserved
        if waiting and waiting + pages > self.pool.queue_size:
            raise QueueFullError(
                f"the OCR queue is full ({waiting} tasks and pages waiting; this document has {pages} pages to read)"
            )

    def _reserve(self, run: DocumentRun, pages: int) -> None:
        self._unreserve(run)
        run.reserved = pages
        self._reserved += pages

    def _unreserve(self, run: DocumentRun) -> None:
        """The run's admitted pages are in the pool or the scheduler now (or never will be)."""
        self._reserved -= run.reserved
        run.reserved = 0

    def _forget(self, run: DocumentRun) -> None:
        run.payload = None
        if self._in_flight.get(run.key) is run:
            del self._in_flight[run.key]

    async def submit_task(self, doc: DocumentInput) -> DocumentTaskRecord:
        record = DocumentTaskRecord(doc.doc_hash, doc.pages)
        cached = await self.cached(doc)
        if cached is not None:
            record.result, record.cached = cached, True
        else:
            self.ocr.tasks.refuse_if_full()
            run = self.join(doc)  # never released: the task must run
            record.computation = run  # type: ignore[assignment]  # a Computation look-alike
        await self.ocr.tasks.add(record)  # records the outcome and shares the view when the run ends
        return record

    # ---- previews --------------------------------------------------------------------

    def with_previews(self, result: Result, doc_hash: str, require_all: bool = False) -> Result | None:
        """A copy of `result` whose pages link their previews (None, with require_all, when
        one is no longer kept). `scale` maps a box (page pixels) onto the preview."""
        pages = []
        for page in result["pages"]:
            preview = None if "error" in page else self.previews.get(self.preview_slot(doc_hash, page["page"]))
            if preview is None:
                if require_all and "error" not in page:
                    return None
                pages.append(page)
                continue
            width = page["image_size"][0] if page.get("image_size") else preview.size[0]
            link = {"url": PREVIEW_URL.format(preview.token), "size": list(preview.size)}
            link["scale"] = round(preview.size[0] / max(width, 1), 6)
            pages.append({**page, "preview": link})
        return {**result, "pages": pages}

    def _keep_preview(self, doc_hash: str, number: int, made: dict[str, Any] | None) -> None:
        if made is not None:
            self.previews.put(self.preview_slot(doc_hash, number), made["jpeg"], (made["size"][0], made["size"][1]))

    # ---- the run ---------------------------------------------------------------------

    async def _run(self, run: DocumentRun, doc: DocumentInput) -> None:
        try:
            result = await self._claimed_compute(run, doc)
        except asyncio.CancelledError:
            settle(run.future, None, TaskCancelledError("no client waits for this document any more"))
            return
        except PoolError as error:
            settle(run.future, None, error)
            return
        except Exception as error:  # noqa: BLE001 - never leave waiters hanging
            settle(run.future, None, PoolError(f"OCR failed: {type(error).__name__}: {error}"))
            return
        finally:
            self._unreserve(run)
            self._abandon(run)  # what it still waits for (it was cancelled, or failed)
            doc.password = None  # the run is over: nothing keeps the password
        if not any("error" in page for page in result["pages"]):
            await self._store(run.cache_key, result)
        if doc.page_images:
            result = self.with_previews(result, doc.doc_hash) or result
        settle(run.future, result, None)

    async def _claimed_compute(self, run: DocumentRun, doc: DocumentInput) -> dict[str, Any]:
        """With a shared store, one node reads a document at a time: the others wait for its
        result there (or take over when its claim goes: it failed, or the node died). A
        request with a password reads for itself (its probe checks the password)."""
        shared = self.ocr.shared
        if shared is None or doc.password:
            return await self._compute(run, doc)
        while True:
            token = await shared.claim(run.cache_key)
            if token is not None:
                break
            self._unreserve(run)  # another node reads it: nothing of it waits here
            result = await self._wait_for_other_node(run)
            if result is not None:
                self.documents_shared += 1
                if doc.page_images:
                    return await self._compute(run, doc)  # its pages are cached now: only the previews are made
                return result
        keeper = shared.keep(run.cache_key, token)  # a short lease, renewed while the run lasts
        try:
            return await self._compute(run, doc)
        finally:
            if keeper is not None:
                keeper.cancel()
            await shared.release(run.cache_key, token)

    async def _wait_for_other_node(self, run: DocumentRun) -> Result | None:
        """The other node's result, or None once its claim is gone without one."""
        assert self.ocr.shared is not None
        async for _ in poll_pauses():  # no deadline: the other node keeps its claim alive while it reads
            result = await self.ocr.results.get_shared(run.cache_key)
            if result is not None and not result["document"].get("password_protected"):
                return result  # (a protected one is stored by a password's run: this request proves nothing)
            if not await self.ocr.shared.claim_held(run.cache_key):
                return None
        return None

    def _abandon(self, run: DocumentRun) -> None:
        """The run waits for nothing any more: cancel its probe and previews if they have not
        started, and leave the reads of its pages (each cancelled if no other page waits)."""
        if run.probe is not None:
            self.pool.cancel(run.probe)
        if run.probe_pages is not None:
            for task in run.probe_pages.tasks:
                self.scheduler.cancel(run.probe_pages, task)
        if run.pages is not None:
            for task in run.preview_tasks:
                self.scheduler.cancel(run.pages, task)
        flights, run.flights = list(run.flights.values()), {}
        for flight in flights:
            self._leave(flight)

    def _leave(self, flight: PageFlight) -> None:
        """A page stops waiting for `flight`; the last one cancels the read if it has not started."""
        flight.waiters -= 1
        if flight.waiters > 0 or flight.future.done():
            return
        if flight.pages is None or flight.task is None or self.scheduler.cancel(flight.pages, flight.task):
            # Gone now (a running read is left to finish, and answers whoever comes for it):
            # a page with this key arriving later starts a read of its own.
            self._forget_flight(flight)
            settle(flight.future, None, TaskCancelledError("no client waits for this page any more"))

    def _forget_flight(self, flight: PageFlight) -> None:
        if self._flights.get(flight.key) is flight:
            del self._flights[flight.key]

    async def _store(self, key: str, result: dict[str, Any]) -> None:
        await store_quietly(self.ocr.results, key, result)  # and into the shared store, when there is one

    async def _probe(self, run: DocumentRun, doc: DocumentInput, spec: dict[str, Any]) -> dict[str, Any]:
        """The PDF's page count, and each page's size, text layer and identity: one task for
        the whole document, or page by page when that task crashed or hung a worker (now or
        recently), so that one page PDFium cannot get through costs that page, not the document."""
        probe_spec = {**spec, "op": "probe", "max_pages": self.render.max_pages, "pdf_text": doc.params["pdf_text"]}
        probe_key = self.probe_key(doc)
        remembered = self.ocr.flight.failures.get(probe_key)
        failed: PoolError | None = remembered[0] if remembered is not None else None
        if failed is None:
            try:
                return await self._probe_task(run, doc, probe_spec, probe_key)
            except PoolError as error:
                if not is_poison(error):
                    raise
                failed = error
        return await self._probe_by_page(run, doc, probe_spec, failed)

    async def _probe_task(
        self, run: DocumentRun, doc: DocumentInput, probe_spec: dict[str, Any], key: str
    ) -> dict[str, Any]:
        run.probe = self.pool.submit(doc.payload, {"det": doc.params["det"], "document": probe_spec})
        run.first_probe = run.first_probe or run.probe
        self._unreserve(run)  # the probe is in the pool's queue now
        # A PDF that crashes or hangs PDFium is remembered from the job itself: also when
        # its client left while the probe ran (the run no longer awaits it).
        job = run.probe
        job.future.add_done_callback(lambda future: self._remember_failure(key, future))
        try:
            # Shielded: cancelling this run must not cancel the pool's own future (pool.cancel does).
            return await asyncio.shield(job.future)
        finally:
            if job.future.done():
                job.params = {}  # a finished job is kept for the task's timing: not its password

    async def _probe_by_page(
        self, run: DocumentRun, doc: DocumentInput, probe_spec: dict[str, Any], whole_failed: PoolError
    ) -> dict[str, Any]:
        """The probe page by page: the count first (a document that cannot even be counted
        fails as its probe did), then one task a page, fed fairly as pages are. A page whose
        task crashed or hung a worker is answered with that error (and remembered: it is not
        tried again while remembered); the others are probed as the whole probe would have.
        A one-page PDF's page is the whole probe's: it fails as that did, without another try."""
        started = time.monotonic()
        self.probed_by_page += 1
        counted = await self._probe_task(run, doc, {**probe_spec, "probe_pages": []}, self.count_key(doc))
        run.pages_total = counted["pages_total"]  # a task's view shows it while the pages are probed
        infos: list[dict[str, Any]] = [{} for _ in range(counted["pages_total"])]
        keys = {index: self.page_probe_key(doc, index) for index in range(len(infos))}
        to_probe: list[tuple[int, dict[str, Any]]] = []
        for index, key in keys.items():
            remembered = self.ocr.flight.remembered_failure(key)
            if remembered is None and len(infos) == 1:
                remembered = whole_failed
            if remembered is not None:
                infos[index] = _unprobed_page(index, remembered)
            else:
                page_spec = {**probe_spec, "probe_pages": [index]}
                to_probe.append((index, {"det": doc.params["det"], "document": page_spec}))
        if to_probe:
            run.probe_pages = self.scheduler.add(doc.payload, to_probe, functools.partial(self._remember_page, keys))
            tasks = run.probe_pages.tasks
            for task in tasks:
                # Each task keeps no password once it ends: also one still running when its
                # run was dropped, or cancelled while it waited.
                task.future.add_done_callback(lambda _future, task=task: _scrub(task))
            # Shielded, as the whole probe: the run's release cancels what has not started.
            outcomes = await asyncio.gather(*(asyncio.shield(task.future) for task in tasks), return_exceptions=True)
            for task, outcome in zip(tasks, outcomes):
                if isinstance(outcome, dict):
                    infos[task.index] = outcome["pages"][0]
                elif isinstance(outcome, PoolError) and outcome.code not in SERVER_ERRORS:
                    infos[task.index] = _unprobed_page(task.index, outcome)
                else:
                    raise outcome
        # Each page's task bounded its own layer; the document's bound spans the pages.
        bound_document_layers(infos, probe_spec["pdf_text"])
        probe_ms = round((time.monotonic() - started) * 1000, 2)
        return {**counted, "pages": infos, "timing": {"probe": probe_ms}}

    async def _compute(self, run: DocumentRun, doc: DocumentInput) -> dict[str, Any]:
        det = doc.params["det"]
        spec: dict[str, Any] = {"hash": doc.doc_hash, **self.render.spec()}
        if doc.password and run.kind == "pdf":
            spec["password"] = doc.password
        probe_ms = None
        protected = False
        if run.kind == "pdf":
            probe = await self._probe(run, doc, spec)
            probe_ms = probe.get("timing", {}).get("probe")
            protected = bool(probe.get("protected"))
            infos = probe["pages"]
        else:
            infos = [{"image_size": None, "layer": None, "error": None} for _ in range(run.pages_total or 1)]
            for info, fingerprint in zip(infos, doc.fingerprints or []):
                info["fingerprint"] = fingerprint
        run.pages_total = len(infos)
        to_read = [index for index, info in enumerate(infos) if info["layer"] is None and info["error"] is None]
        keys = {
            index: self.page_key(doc.doc_hash, run.kind, index, det, infos[index].get("fingerprint"))
            for index in to_read
        }
        if run.probe is not None:
            # The probe told the page count only now: it counts against the queue bound too.
            reads = self._reads(list(keys.values()))
            self._admit(reads)
            self._reserve(run, reads)
        found: dict[str, Result | None] = {}  # each key looked up once: equal pages share one
        for key in keys.values():
            if key not in found and key not in self.ocr.flight.failures:  # (remembered: answered below)
                found[key] = await self.ocr.lookup(key)
        # Nothing awaits from here until the pages are handed on, so that each page to read
        # either finds the read of its key in flight or registers its own before anyone looks.
        loop = asyncio.get_running_loop()
        pages: list[dict[str, Any] | None] = [None] * len(infos)
        to_run: list[tuple[int, dict[str, Any]]] = []
        owned: dict[int, PageFlight] = {}  # the pages this run reads
        from_read: set[int] = set()  # pages whose preview comes with their read
        for index, info in enumerate(infos):
            number = index + 1
            page_spec = {**spec, "kind": run.kind, "index": index}
            wants_preview = doc.page_images and info["error"] is None
            if wants_preview and self.previews.get(self.preview_slot(doc.doc_hash, number)) is not None:
                wants_preview = False
            if info["error"] is not None:
                pages[index] = {"page": number, "image_size": info["image_size"], "error": info["error"]}
            elif info["layer"] is not None:
                # The worker's bytes, spliced into the answer as they are (see EncodedLayer).
                lines = orjson.Fragment(info["layer"].json)
                pages[index] = _page_body(number, info["image_size"], lines, "layer", {}, False)
                self.pages_layer += 1
            else:
                key = keys[index]
                remembered = self.ocr.flight.remembered_failure(key)
                # (a read of this key that ended while the keys were looked up is in this node's
                # memory, not in `found`: looked at again here, where nothing can end meanwhile)
                cached = None if remembered is not None else found.get(key) or self.ocr.results.cache.get(key)
                if remembered is not None:
                    # This page crashed or hung a worker recently: answered so, without OCR.
                    pages[index] = {"page": number, "image_size": info["image_size"], "error": page_error(remembered)}
                    wants_preview = False
                elif cached is not None:
                    pages[index] = _ocr_page(number, cached, True)
                    self.pages_cached += 1
                else:
                    flight = self._flights.get(key)
                    if flight is None:  # nobody reads this page yet: this run does
                        flight = self._flights[key] = PageFlight(key, loop.create_future(), wants_preview)
                        if wants_preview:
                            page_spec["preview"] = PREVIEW  # made from the pixels the page is read from
                        to_run.append((index, {"det": det, "document": {**page_spec, "op": "page"}}))
                        owned[index] = flight
                    flight.waiters += 1
                    run.flights[index] = flight
                    if wants_preview and flight.preview:
                        from_read.add(index)
                        wants_preview = False
            if index not in run.flights:
                run.pages_done += 1
            if wants_preview:  # a page whose answer makes no preview: a quick task makes only that
                to_run.append((index, {"det": det, "document": {**page_spec, "op": "preview", "preview": PREVIEW}}))
        self._unreserve(run)
        if to_run:
            # A page that crashes or hangs a worker is remembered from its job, as the probe is.
            page_keys = {index: keys[index] for index in owned}
            run.pages = self.scheduler.add(doc.payload, to_run, functools.partial(self._remember_page, page_keys))
            for task in run.pages.tasks:
                if task.index in owned:
                    self._bind(owned[task.index], run.pages, task)
                else:
                    run.preview_tasks.append(task)
        waits = [
            self._page(run, doc, pages, index, flight, index not in owned, index in from_read)
            for index, flight in run.flights.items()
        ]
        await asyncio.gather(*waits, *(self._preview(doc, task) for task in run.preview_tasks))
        done = [page for page in pages if page is not None]
        failed = [page for page in done if "error" in page]
        server_side = next((page for page in failed if page["error"]["code"] in SERVER_ERRORS), None)
        if server_side is not None:
            raise TaskFailedError(server_side["error"]["code"], server_side["error"]["message"])
        if failed and len(failed) == len(done):
            # Nothing could be read: the request fails as the first page did.
            raise TaskFailedError(failed[0]["error"]["code"], _whole_failure_message(failed))
        timing: dict[str, Any] = {"total": round((time.monotonic() - run.started) * 1000, 2)}
        tasks = [*(run.pages.tasks if run.pages is not None else []), *(f.task for f in run.flights.values() if f.task)]
        first_job = run.first_probe or (tasks[0].job if tasks else None)
        if first_job is not None and first_job.queue_wait_ms is not None:
            timing["queue_wait"] = first_job.queue_wait_ms  # until the first task of the document started
        if probe_ms is not None:
            timing["probe"] = probe_ms
        document: dict[str, Any] = {"type": run.kind, "pages": len(done)}
        if protected:
            document["password_protected"] = True  # its cached answer is given only after a password check
        return {"document": document, "pages": done, "timing": timing}

    def _bind(self, flight: PageFlight, pages: DocumentPages, task: PageTask) -> None:
        flight.pages, flight.task = pages, task
        flight.landing = asyncio.ensure_future(self._land(flight, task))

    async def _land(self, flight: PageFlight, task: PageTask) -> None:
        """Wait for a page's read (whoever still waits for it), store it without its preview,
        then answer every page waiting for it."""
        result: dict[str, Any] | None = None
        error: BaseException | None = None
        try:
            result = await task.future
            self.pages_ocr += 1
            await self._store(flight.key, {name: value for name, value in result.items() if name != "preview"})
        except PoolError as failed:
            error = failed
        finally:
            _scrub(task)
            self._forget_flight(flight)
            if result is None and error is None:  # cancelled: the loop is closing
                error = TaskCancelledError("the page was not read")
            settle(flight.future, result, error)

    async def _page(
        self,
        run: DocumentRun,
        doc: DocumentInput,
        pages: list[dict[str, Any] | None],
        index: int,
        flight: PageFlight,
        shared: bool,
        preview: bool,
    ) -> None:
        """A page of this run answered from the read of its key (its own, or made for an equal
        page), under its own number."""
        number = index + 1
        try:
            # Shielded: this run leaving must not cancel a read other pages may wait for (_leave decides).
            result = await asyncio.shield(flight.future)
        except PoolError as error:
            pages[index] = {"page": number, "image_size": None, "error": page_error(error)}
        else:
            if preview:
                self._keep_preview(doc.doc_hash, number, result.get("preview"))
            pages[index] = _ocr_page(number, result, False)
            if shared:
                self.pages_shared += 1
        run.pages_done += 1

    async def _preview(self, doc: DocumentInput, task: PageTask) -> None:
        """A preview-only task: its page is answered already; only the JPEG is kept."""
        try:
            result = await task.future
        except PoolError:
            return  # the page has no preview
        finally:
            _scrub(task)
        self._keep_preview(doc.doc_hash, task.index + 1, result.get("preview"))

    def _remember_page(self, page_keys: dict[int, str], index: int, error: BaseException) -> None:
        if index in page_keys:  # not a page's preview-only task: its OCR is cached, or a text layer
            self.ocr.flight.remember_failure(page_keys[index], error)

    def _remember_failure(self, key: str, future: asyncio.Future[dict[str, Any]]) -> None:
        if not future.cancelled() and future.exception() is not None:
            self.ocr.flight.remember_failure(key, future.exception())  # type: ignore[arg-type]

    def stats(self) -> dict[str, Any]:
        return {
            "in_flight": len(self._in_flight),
            "documents_run": self.documents_run,
            "pages_ocr": self.pages_ocr,
            "pages_layer": self.pages_layer,
            "pages_cached": self.pages_cached,
            "pages_shared": self.pages_shared,
            "documents_from_other_nodes": self.documents_shared,
            "probed_by_page": self.probed_by_page,
            # Pages accepted that no worker has started: admitted and not yet handed on, waiting
            # in the page scheduler, or queued in the pool (what counts against queue_size).
            "pages_waiting": self._reserved + self.scheduler.waiting,
            "previews": self.previews.stats(),
        }


def _scrub(task: PageTask) -> None:
    """A finished page keeps no password (its task may be kept for the run's timing)."""
    task.params = {}
    if task.job is not None:
        task.job.params = {}


def _unprobed_page(index: int, error: BaseException) -> dict[str, Any]:
    """A page whose own probe failed: answered with the error, never read."""
    reason = page_error(error)
    message = f"page {index + 1} could not be opened: {reason['message']}"
    return {"image_size": None, "layer": None, "fingerprint": None, "error": {"code": reason["code"], "message": message}}


def _page_body(
    number: int, size: Any, lines: list[dict[str, Any]] | orjson.Fragment, source: str, timing: dict[str, Any], cached: bool
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
