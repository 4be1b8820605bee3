"""A PDF's probe (page count, sizes, text layers) is one task; when that task crashes or hangs
its worker, the probe is made again page by page, so that one page PDFium cannot get through
fails alone (and is remembered), and a long document whose probe outlasts task_timeout is
still read.

The fake engine (real worker processes) plays a PDF whose page crashes or hangs the probe; the
real server reads a real 100-page PDF whose one-task probe runs past a short task_timeout.
"""

from __future__ import annotations

import asyncio
from typing import Any

from cache.documents import DocumentInput
from ocr_pool import WorkerCrashedError, WorkerPool
from tests.conftest import base_config, random_word
from tests.pdf_builder import text_pdf
from tests.test_documents import post_document
from tests.test_documents_sharing import texts
from tests.test_pages import services
from tests.test_pool import run, wait_for


def fake_pdf(plan: bytes, password: str | None = None, **params: str) -> DocumentInput:
    params = {"det": "auto", "pdf_text": "auto", **params}
    return DocumentInput("pdf", b"pages:" + plan, f"h-{plan.decode()}", params, password=password)


def holds(value: Any, secret: str) -> bool:
    if isinstance(value, str):
        return secret in value
    if isinstance(value, dict):
        return any(holds(item, secret) for item in value.values())
    return isinstance(value, (list, tuple)) and any(holds(item, secret) for item in value)


def test_a_page_by_page_probe_shows_its_page_count_and_keeps_no_password_once_its_client_left() -> None:
    async def scenario(pool: WorkerPool) -> None:
        ocr, documents = services(pool)
        doc = fake_pdf(b"count=6,probe_sleep=0.4", password="s3cret-pw")
        # Its one-task probe crashed a worker earlier: straight to the page-by-page probe.
        documents.ocr.flight.remember_failure(documents.probe_key(doc), WorkerCrashedError("the worker died"))
        run_ = documents.join(doc)
        await wait_for(lambda: run_.probe_pages is not None and any(t.state == "running" for t in run_.probe_pages.tasks))
        assert run_.pages_total == 6 and run_.pages_done == 0  # counted: a task's view says of how many
        ocr.release(run_)  # its only client leaves while pages are probed
        await wait_for(lambda: run_.future.done() and all(t.future.done() for t in run_.probe_pages.tasks))
        await asyncio.sleep(0)  # the tasks' done callbacks
        tasks = run_.probe_pages.tasks
        assert not any(holds(t.params, "s3cret-pw") or (t.job and holds(t.job.params, "s3cret-pw")) for t in tasks)
        assert not holds(run_.probe.params, "s3cret-pw")
        assert documents.stats()["in_flight"] == 0 and documents.stats()["pages_waiting"] == 0

    run(scenario)


def test_a_page_that_crashes_the_probe_fails_alone_and_is_not_probed_again() -> None:
    async def scenario(pool: WorkerPool) -> None:
        _ocr, documents = services(pool)
        run_ = documents.join(fake_pdf(b"count=4,probe_crash=2"))
        result = await run_.future
        assert texts(result) == ["layer 1", "layer 2", "worker_crashed", "layer 4"]
        # The document's wait is its first task's (the one-task probe), not the later count's.
        assert run_.first_probe is not run_.probe
        assert result["timing"]["queue_wait"] == run_.first_probe.queue_wait_ms
        assert result["pages"][2]["error"]["message"].startswith("page 3 could not be opened: ")
        await wait_for(lambda: pool.ready_count == 2)
        # The whole probe and then the page's own, each tried twice: four workers, no more.
        assert pool.restarts["crashed"] == 4 and documents.probed_by_page == 1
        # The same PDF with other options: page by page at once, the page answered from memory.
        again = await documents.join(fake_pdf(b"count=4,probe_crash=2", det="on")).future
        assert texts(again) == texts(result)
        assert "remembered from an earlier attempt" in again["pages"][2]["error"]["message"]
        assert pool.restarts["crashed"] == 4 and documents.probed_by_page == 2

    run(scenario)


def test_a_page_that_hangs_the_probe_fails_alone_with_timeout() -> None:
    async def scenario(pool: WorkerPool) -> None:
        _ocr, documents = services(pool)
        result = await documents.join(fake_pdf(b"count=3,probe_hang=1")).future
        assert texts(result) == ["layer 1", "timeout", "layer 3"]
        await wait_for(lambda: pool.ready_count == 2)
        assert pool.restarts["timeout"] == 2  # the whole probe, then the page's own

    run(scenario, task_timeout=0.5)


def test_a_one_page_pdf_whose_probe_crashes_fails_so_without_another_try() -> None:
    async def scenario(pool: WorkerPool) -> None:
        _ocr, documents = services(pool)
        run_ = documents.join(fake_pdf(b"count=1,probe_crash=0"))
        error: Any = None
        try:
            await run_.future
        except Exception as exc:  # noqa: BLE001 - the error is what is checked
            error = exc
        assert error is not None and error.code == "worker_crashed", error
        await wait_for(lambda: pool.ready_count == 2)
        # Its one page is the whole probe's: not probed again on its own (two workers, not four).
        assert pool.restarts["crashed"] == 2

    run(scenario)


def test_a_page_by_page_probe_does_not_fill_the_queue_against_other_documents() -> None:
    # Its tasks (a few ms each) wait in the page scheduler; counted as pages to read, a
    # 20-page probe refused every other document (503 queue_full) while it ran.
    async def scenario(pool: WorkerPool) -> None:
        _ocr, documents = services(pool)
        doc = fake_pdf(b"count=20,probe_sleep=0.1")
        documents.ocr.flight.remember_failure(documents.probe_key(doc), WorkerCrashedError("the worker died"))
        probing = documents.join(doc)
        await wait_for(lambda: probing.probe_pages is not None and documents.scheduler.pending > 4)
        other = documents.join(DocumentInput("tiff", b"pages:sleep=0.05", "h-other", {"det": "auto", "pdf_text": "ocr"}, 2))
        assert texts(await other.future) == ["page 1", "page 2"]
        assert texts(await probing.future) == [f"layer {n}" for n in range(1, 21)]

    run(scenario, queue_size=4)


def test_a_long_pdf_whose_probe_outlasts_task_timeout_is_probed_page_by_page(server_factory: Any) -> None:
    # 100 pages of dense born-digital print: the one-task probe reads every text layer (about
    # 3 s here), far past a task_timeout of 0.5 s; one page's probe takes a few milliseconds.
    words = [random_word(6) for _ in range(100)]
    pages = [[f"PAGE {n} {words[n]}"] + [f"LINE {i} " + "amount due 12.50 EUR " * 5 for i in range(90)] for n in range(100)]
    pdf = text_pdf(pages, font_size=4)
    server = server_factory(base_config(number=2, task_timeout=0.5), name="probe-by-page")
    response = post_document(server, pdf)
    assert response.status_code == 200, response.text
    body = response.json()
    assert [page["source"] for page in body["pages"]] == ["layer"] * 100
    assert [page["text_lines"][0]["text"] for page in body["pages"]] == [f"PAGE {n} {words[n]}" for n in range(100)]
    health = server.health()
    assert health["workers"]["restarts"] == {"timeout": 1} and health["documents"]["probed_by_page"] == 1
    # The same PDF with other options: no second one-task probe, no worker lost.
    again = post_document(server, pdf, det="on")
    assert again.status_code == 200 and [page["text_lines"] for page in again.json()["pages"]] == [
        page["text_lines"] for page in body["pages"]
    ]
    health = server.health()
    assert health["workers"]["restarts"] == {"timeout": 1} and health["documents"]["probed_by_page"] == 2
