"""Document pages over a real pool of worker processes (fake engine): fairness, progress,
a crashing or hanging page, cancellation. The same paths with real models and real PDFs are
in test_documents.py."""

from __future__ import annotations

import asyncio
import contextlib
import io
from typing import Any

from PIL import Image

from cache import OcrService
from cache.documents import DocumentInput, DocumentService, RenderSettings
from ocr_pool import PoolError, QueueFullError, QueueTimeoutError, TaskCancelledError, WorkerPool
from ocr_pool.pages import PageScheduler
from tests.test_pool import run, wait_for

RENDER = RenderSettings(dpi=200, max_side=4000, max_pixels=16_000_000, max_pages=100)


def services(pool: WorkerPool) -> tuple[OcrService, DocumentService]:
    ocr = OcrService(
        pool, engine_identity="fake", cache_capacity=100, cache_ttl=60, task_capacity=10, task_ttl=60, failure_ttl=60
    )
    return ocr, DocumentService(ocr, PageScheduler(pool), RENDER)


def page_params(count: int) -> list[tuple[int, dict[str, Any]]]:
    return [
        (index, {"det": "auto", "document": {"op": "page", "kind": "tiff", "index": index}}) for index in range(count)
    ]


def test_a_single_image_waits_for_the_running_pages_only_not_for_the_whole_document() -> None:
    async def scenario(pool: WorkerPool) -> None:
        scheduler = PageScheduler(pool)
        document = scheduler.add(b"pages:sleep=0.3", page_params(10))
        assert scheduler.in_pool == 2 and scheduler.pending == 8  # one page per worker in the pool
        image = pool.submit(b"single image", {})
        await image.future
        done = sum(task.future.done() for task in document.tasks)
        # The image took the first free worker: it waited for the 2 running pages at most.
        assert done <= 3, done
        assert document.payload == b"pages:sleep=0.3"  # pages still wait for it
        await asyncio.gather(*(task.future for task in document.tasks))
        # All handed over: the document holds no bytes (a run or a reference cycle may keep
        # it until a full collection; its jobs held their own copy for a retry).
        assert document.payload == b""

    run(scenario)


def test_two_documents_share_the_workers_page_by_page() -> None:
    async def scenario(pool: WorkerPool) -> None:
        scheduler = PageScheduler(pool)
        big = scheduler.add(b"pages:sleep=0.2", page_params(12))
        small = scheduler.add(b"pages:sleep=0.2,", page_params(2))
        await asyncio.gather(*(task.future for task in small.tasks))
        # Round-robin: the 2-page document did not wait for the 12-page one to finish.
        assert sum(task.future.done() for task in big.tasks) <= 6
        await asyncio.gather(*(task.future for task in big.tasks))

    run(scenario, size=1)


def test_a_page_that_kills_its_worker_fails_that_page_only_and_the_pool_recovers() -> None:
    async def scenario(pool: WorkerPool) -> None:
        _ocr, documents = services(pool)
        params = {"det": "auto", "pdf_text": "ocr"}
        run_ = documents.join(DocumentInput("tiff", b"pages:crash=1", "h-crash", params, 3))
        result = await run_.future
        pages = result["pages"]
        assert [page["page"] for page in pages] == [1, 2, 3]
        assert pages[1]["error"]["code"] == "worker_crashed"
        assert [line["text"] for line in pages[0]["text_lines"]] == ["page 1"]
        assert [line["text"] for line in pages[2]["text_lines"]] == ["page 3"]
        await wait_for(lambda: pool.ready_count == 2)
        assert pool.restarts["crashed"] == 2  # the page was tried twice, as an image would be

        # The same document again: the crashing page is answered from memory, as an image would
        # be (no worker killed for it), the others from the cache.
        tasks_before = pool.tasks_run
        again = await documents.join(DocumentInput("tiff", b"pages:crash=1", "h-crash", params, 3)).future
        assert again["pages"][1]["error"]["code"] == "worker_crashed"
        assert "remembered from an earlier attempt" in again["pages"][1]["error"]["message"]
        assert [page.get("cached") for page in again["pages"]] == [True, None, True]
        assert pool.restarts["crashed"] == 2 and pool.tasks_run == tasks_before
        assert documents.ocr.flight.failures_answered == 1

    run(scenario)


def test_a_pdf_that_crashed_its_probe_is_remembered_whatever_det_and_pdf_text_it_comes_with() -> None:
    # The probe opens the PDF whatever is asked of its pages: a PDF that kills PDFium kills
    # it again with pdf_text=ocr or another det. It was remembered per (det, pdf_text), so
    # each other combination cost two more workers.
    async def scenario(pool: WorkerPool) -> None:
        _ocr, documents = services(pool)
        with contextlib.suppress(PoolError):
            await documents.join(DocumentInput("pdf", b"crash", "h-poison", {"det": "auto", "pdf_text": "auto"})).future
        await wait_for(lambda: pool.ready_count == 2)
        # Its probe, then its page count alone (the page-by-page probe's first step), each tried
        # twice: a PDF that kills PDFium on opening costs four workers once.
        assert pool.restarts["crashed"] == 4
        for params in ({"det": "auto", "pdf_text": "ocr"}, {"det": "on", "pdf_text": "auto"}):
            try:
                documents.join(DocumentInput("pdf", b"crash", "h-poison", params))
            except PoolError as error:
                assert error.code == "worker_crashed" and "remembered from an earlier attempt" in error.message
            else:
                raise AssertionError(f"the poison PDF was probed again with {params}")
        assert pool.restarts["crashed"] == 4

    run(scenario)


def test_a_hanging_page_times_out_alone_and_its_worker_is_replaced() -> None:
    async def scenario(pool: WorkerPool) -> None:
        _ocr, documents = services(pool)
        run_ = documents.join(DocumentInput("tiff", b"pages:hang=0", "h-hang", {"det": "auto", "pdf_text": "ocr"}, 2))
        result = await run_.future
        assert result["pages"][0]["error"]["code"] == "timeout"
        assert result["pages"][1]["text_lines"][0]["text"] == "page 2"
        await wait_for(lambda: pool.ready_count == 2)
        assert pool.restarts["timeout"] == 1

    run(scenario, task_timeout=1.5)


def test_progress_and_per_page_cache() -> None:
    async def scenario(pool: WorkerPool) -> None:
        ocr, documents = services(pool)
        params = {"det": "auto", "pdf_text": "ocr"}
        doc = DocumentInput("tiff", b"pages:sleep=0.2", "h-progress", params, 4)
        key = documents.document_key(doc)
        record = await documents.submit_task(doc)
        seen = []
        while record.status != "done":
            view = record.view()
            seen.append((view.pages_done, view.pages_total))
            await asyncio.sleep(0.02)
        assert seen[0][1] == 4 and any(0 < done < 4 for done, _ in seen), seen
        assert record.view().pages_done == 4
        # The document's entry gone, its pages' entries kept: a re-run OCRs nothing.
        ocr.results.cache.pop(key)
        before = pool.tasks_run
        again = documents.join(doc)
        result = await again.future
        assert pool.tasks_run == before
        assert [page["cached"] for page in result["pages"]] == [True] * 4

    run(scenario)


def test_the_last_client_leaving_cancels_the_pages_not_started() -> None:
    async def scenario(pool: WorkerPool) -> None:
        ocr, documents = services(pool)
        run_ = documents.join(
            DocumentInput("tiff", b"pages:sleep=0.3", "h-gone", {"det": "auto", "pdf_text": "ocr"}, 10)
        )
        await wait_for(lambda: run_.pages is not None and run_.state == "running")
        ocr.release(run_)  # the only waiter disconnected
        try:
            await run_.future
        except TaskCancelledError:
            pass
        else:
            raise AssertionError("the document should have been cancelled")
        await wait_for(lambda: pool.running_count() == 0)
        assert documents.scheduler.pending == 0 and pool.queue_depth == 0
        assert pool.tasks_run <= 4  # the pages running at the time, not the 10

    run(scenario)


def test_a_request_right_after_the_last_client_left_gets_a_fresh_run_not_the_cancelled_one() -> None:
    async def scenario(pool: WorkerPool) -> None:
        ocr, documents = services(pool)
        doc = DocumentInput("tiff", b"pages:sleep=0", "h-again", {"det": "auto", "pdf_text": "ocr"}, 3)
        busy = pool.submit(b"sleep:0.5", {})  # the document's pages wait behind it
        first = documents.join(doc)
        await asyncio.sleep(0.1)
        ocr.release(first)  # its only client left ...
        again = documents.join(doc)  # ... and the same document arrives in the same loop turn
        assert again is not first
        result = await again.future
        assert len(result["pages"]) == 3 and not [page for page in result["pages"] if "error" in page]
        await busy.future

    run(scenario, size=1)


def test_what_the_event_loop_calls_a_document() -> None:
    from handlers.documents import document_kind
    from handlers.errors import ApiError
    from tests.conftest import text_image
    from tests.pdf_builder import multipage_tiff, text_pdf

    assert document_kind(text_pdf([["A"]]), 100) == ("pdf", None)
    assert document_kind(b"junk before the header\n" + text_pdf([["A"]]), 100) == ("pdf", None)
    png = text_image("PDF")
    assert document_kind(png[:40] + b"%PDF-1.4" + png[40:], 100) is None  # an image mentioning it
    page = Image.open(io.BytesIO(png))
    assert document_kind(multipage_tiff([page] * 3), 100) == ("tiff", 3)
    assert document_kind(multipage_tiff([page]), 100) is None  # one page: an image
    try:
        document_kind(multipage_tiff([page] * 4), 3)
    except ApiError as error:
        assert error.status == 413 and error.code == "too_many_pages" and "max_pdf_pages=3" in error.message
    else:
        raise AssertionError("4 pages past a limit of 3 must be refused")


def test_a_document_cut_short_by_shutdown_fails_as_a_whole_with_503() -> None:
    async def scenario(pool: WorkerPool) -> None:
        _ocr, documents = services(pool)
        run_ = documents.join(
            DocumentInput("tiff", b"pages:sleep=0.3", "h-stop", {"det": "auto", "pdf_text": "ocr"}, 8)
        )
        await wait_for(lambda: run_.pages_done >= 1)
        await pool.close(grace=0.2)  # SIGTERM: what has not started is refused
        try:
            await run_.future
        except PoolError as error:
            assert error.code == "shutting_down"
        else:
            raise AssertionError("a document with unread pages at shutdown must fail, not answer half")

    run(scenario)


def test_a_page_expired_in_an_overloaded_queue_fails_the_document_with_503() -> None:
    # queue_timeout says the server is busy, not that the page is bad: like queue_full, the
    # whole document fails (to be retried; its finished pages are cached), not a 200 with a hole.
    async def scenario(pool: WorkerPool) -> None:
        _ocr, documents = services(pool)
        await pool.submit(b"sleep:1.5", {}).future  # recent runs now say a task takes ~1.5 s
        busy = pool.submit(b"sleep:1.8", {})  # another client's image holds the only worker
        run_ = documents.join(DocumentInput("tiff", b"pages:sleep=0", "h-busy", {"det": "auto", "pdf_text": "ocr"}, 2))
        try:
            await run_.future
        except PoolError as error:
            assert error.code == "queue_timeout", error.code
        else:
            raise AssertionError("a page that expired in the queue must fail the document with 503")
        await busy.future

    run(scenario, size=1, task_timeout=2.0)


def test_a_document_accepted_before_shutdown_is_finished_within_the_grace() -> None:
    # SIGTERM drains: the pages still waiting in the scheduler (not yet in the pool's queue)
    # belong to work already accepted, and are read like the queued ones.
    async def scenario(pool: WorkerPool) -> None:
        _ocr, documents = services(pool)
        run_ = documents.join(
            DocumentInput("tiff", b"pages:sleep=0.2", "h-drain", {"det": "auto", "pdf_text": "ocr"}, 4)
        )
        await wait_for(lambda: run_.state == "running")
        closing = asyncio.ensure_future(pool.close(grace=20))
        await asyncio.sleep(0.05)  # close() has begun
        with contextlib.suppress(PoolError):
            pool.submit(b"new", {})
            raise AssertionError("a new task must be refused once the pool is closing")
        result = await run_.future
        assert len(result["pages"]) == 4 and not [page for page in result["pages"] if "error" in page]
        await closing

    run(scenario, size=1)


class _AlwaysFullPool:
    """A pool whose queue other clients' images keep full."""

    size = 1
    task_timeout = 0.3

    def add_drain_source(self, waiting: Any) -> None:
        pass

    def submit(self, payload: bytes, params: dict[str, Any], accepted: bool = False) -> None:
        raise QueueFullError("the OCR queue is full")


def test_pages_that_find_the_queue_full_for_task_timeout_fail_as_overloaded() -> None:
    async def scenario() -> None:
        scheduler = PageScheduler(_AlwaysFullPool())  # type: ignore[arg-type]
        document = scheduler.add(b"doc", page_params(3))
        results = await asyncio.wait_for(
            asyncio.gather(*(task.future for task in document.tasks), return_exceptions=True), timeout=10
        )
        assert [type(error) for error in results] == [QueueTimeoutError] * 3, results
        assert "overloaded" in str(results[0]) and scheduler.pending == 0

    asyncio.run(scenario())


def test_page_previews_are_bounded_by_their_bytes_and_served_by_random_tokens() -> None:
    from cache.previews import PreviewStore

    store = PreviewStore(max_bytes=250)
    for number in range(1, 4):
        store.put(f"doc#{number}", bytes(100), (10, 10))
    assert store.get("doc#1") is None and store.bytes == 200 and store.evictions == 1  # least recent dropped
    store.get("doc#2")  # read: now the most recent
    store.put("doc#4", bytes(100), (10, 10))
    assert store.get("doc#3") is None and store.get("doc#2") is not None
    kept = store.get("doc#4")
    assert kept is not None and store.by_token(kept.token) is kept and len(kept.token) == 32
    store.put("doc#4", bytes(50), (5, 5))  # made again: a new token, the old one dead
    assert store.by_token(kept.token) is None and store.bytes == 150
    store.put("huge", bytes(251), (1, 1))  # larger than the whole store: not kept
    assert store.get("huge") is None and PreviewStore(0).stats()["entries"] == 0


def _nested_forms_pdf(pages: int, depth: int = 6, fan: int = 10) -> bytes:
    """The review's probe bomb: form k draws form k+1 `fan` times, the last one 1x1 square, so
    each page draws fan ** (depth - 1) squares (1e5) from a few hundred bytes of streams."""
    from multirequest import write_pdf

    first_form = 3 + pages + 1
    kids = b" ".join(b"%d 0 R" % (3 + i) for i in range(pages))
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [%s] /Count %d >>" % (kids, pages)]
    for _ in range(pages):
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents %d 0 R"
            b" /Resources << /XObject << /X %d 0 R >> >> >>" % (3 + pages, first_form)
        )
    objects.append(b"<< /Length 5 >>\nstream\n/X Do\nendstream")
    for level in range(depth):
        if level < depth - 1:
            body, resources = b"/X Do " * fan, b"/Resources << /XObject << /X %d 0 R >> >>" % (first_form + level + 1)
        else:
            body, resources = b"0 0 1 1 re f", b""
        objects.append(
            b"<< /Type /XObject /Subtype /Form /BBox [0 0 612 792] %s /Length %d >>\nstream\n" % (resources, len(body))
            + body
            + b"\nendstream"
        )
    return write_pdf(objects)


def test_a_probe_bomb_gets_no_page_identity_within_the_work_budget() -> None:
    import hashlib

    from models import page_identity
    from models.documents import run_probe
    from models.pdf import open_pdf

    bomb = _nested_forms_pdf(1)
    assert len(bomb) < 4000
    document = open_pdf(bomb)
    try:
        page = document[0]
        try:
            budget = page_identity.FingerprintBudget()
            assert page_identity.page_fingerprint(page, budget) is None
            # Stopped at the object limit (plus what those objects' segments cost), not after
            # reading the 111111 objects the page draws.
            assert budget.pages_over == 1
            assert page_identity.MAX_OBJECTS < budget.spent <= 5 * page_identity.MAX_OBJECTS
            # A document whose deadline has passed: no page gets read at all.
            late = page_identity.FingerprintBudget(seconds=-1.0)
            assert page_identity.page_fingerprint(page, late) is None and late.spent == 0 and late.pages_over == 1
        finally:
            page.close()
    finally:
        document.close()
    spec = {"dpi": 200.0, "max_side": 4000, "max_pixels": 16_000_000, "hash": hashlib.sha256(bomb).hexdigest()}
    probe = run_probe(bomb, {**spec, "op": "probe", "max_pages": 100, "pdf_text": "ocr"})
    assert probe["pages_total"] == 1 and probe["pages"][0]["fingerprint"] is None
    assert probe["pages"][0]["image_size"] == [1700, 2200]


def test_documents_arriving_together_are_admitted_against_the_queue_bound() -> None:
    # A run starts a loop turn after join (and looks its pages up first): documents whose
    # requests resumed in the same turn were each measured against an empty queue, so three
    # 8-page TIFFs were all taken by a queue bound of 10 (40 pages waiting of 40 x 20 MiB
    # uploads on the real server), where the README says the second gets 503 queue_full.
    async def scenario(pool: WorkerPool) -> None:
        _ocr, documents = services(pool)
        params = {"det": "auto", "pdf_text": "ocr"}
        first = documents.join(DocumentInput("tiff", b"pages:sleep=0.05", "h-together-1", params, 8))
        for number in (2, 3):
            try:
                documents.join(DocumentInput("tiff", b"pages:sleep=0.05", f"h-together-{number}", params, 8))
            except QueueFullError as error:
                assert "8 tasks and pages waiting" in error.message, error.message
            else:
                raise AssertionError(f"document {number} was admitted past the queue bound")
        result = await first.future
        assert len(result["pages"]) == 8 and not [page for page in result["pages"] if "error" in page]
        # Its admission is given back once its pages ran: the next document is taken.
        later = await documents.join(DocumentInput("tiff", b"pages:sleep=0", "h-together-4", params, 8)).future
        assert len(later["pages"]) == 8 and documents._reserved == 0

    run(scenario, queue_size=10)


def test_a_probe_or_page_that_costs_a_worker_after_its_client_left_is_still_remembered() -> None:
    # The failure was remembered by the coroutine awaiting the probe (or the page), which
    # the last client's leaving cancels: a poison PDF sent again and again by clients that
    # leave while it is probed cost two workers each time instead of one answer from memory.
    async def scenario(pool: WorkerPool) -> None:
        ocr, documents = services(pool)
        poison = DocumentInput("pdf", b"crash", "h-gone-poison", {"det": "auto", "pdf_text": "auto"})
        run_ = documents.join(poison)
        while run_.probe is None:  # (the crash is instant: leave before the loop can see it)
            await asyncio.sleep(0)
        assert run_.probe.state == "running"  # the probe runs ...
        ocr.release(run_)  # ... and its only client leaves
        with contextlib.suppress(PoolError):
            await run_.future
        await wait_for(lambda: run_.probe is not None and run_.probe.future.done())
        await wait_for(lambda: pool.ready_count == 2)
        assert pool.restarts["crashed"] == 2
        # Remembered: the next client's run goes straight to the page-by-page probe, whose
        # page count alone kills PDFium too (two workers more), and that is remembered as well.
        with contextlib.suppress(PoolError):
            await documents.join(poison).future
        await wait_for(lambda: pool.ready_count == 2)
        assert pool.restarts["crashed"] == 4
        try:
            documents.join(poison)
        except PoolError as error:
            assert error.code == "worker_crashed" and "remembered from an earlier attempt" in error.message
        else:
            raise AssertionError("the PDF that crashed its probe was probed again")
        assert pool.restarts["crashed"] == 4

        # A page that hangs its worker, its client gone: killed at task_timeout, remembered.
        hang = DocumentInput("tiff", b"pages:hang=0", "h-gone-hang", {"det": "auto", "pdf_text": "ocr"}, 2)
        run_ = documents.join(hang)
        await wait_for(lambda: run_.pages is not None and run_.pages.tasks[0].state == "running")
        ocr.release(run_)
        with contextlib.suppress(PoolError):
            await run_.future
        await wait_for(lambda: pool.restarts["timeout"] == 1)
        await wait_for(lambda: pool.ready_count == 2)
        result = await documents.join(hang).future
        assert result["pages"][0]["error"]["code"] == "timeout"
        assert "remembered from an earlier attempt" in result["pages"][0]["error"]["message"]
        assert result["pages"][1]["text_lines"][0]["text"] == "page 2" and pool.restarts["timeout"] == 1

    run(scenario, task_timeout=1.5)
