"""Equal pages are read once: inside one document, and across documents read at the same time
(single-flight per page key, as images have it); and /health's pages_waiting counts every page
accepted and not yet started.

The real server (real workers, real models) proves each by counting OCR runs (/health
`ocr_runs`, `documents.pages_ocr`), never by timing: two images keep both workers busy while
the documents are sent, so every page is still unread when the next document arrives, and
each test checks that they were. The fake engine (real worker processes) covers the edges fast:
a crashing shared page, clients leaving, the queue-bound accounting.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import socket
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import requests
from PIL import Image, ImageDraw

from cache.documents import DocumentInput, DocumentRun, DocumentService
from ocr_pool import QueueFullError, TaskCancelledError, WorkerPool
from tests.conftest import GT_DIR, RunningServer, gt_entry, random_word, text_image
from tests.pdf_builder import image_pdf, multipage_tiff
from tests.test_documents import fetch_preview, post_document
from tests.test_pages import services
from tests.test_pool import run, wait_for

PARAMS = {"det": "auto", "pdf_text": "ocr"}


def tiff_input(name: str, prints: list[str], payload: bytes = b"pages:sleep=0.05") -> DocumentInput:
    """A fake-engine TIFF whose pages have these content fingerprints (equal: the same page)."""
    return DocumentInput("tiff", payload, f"h-{name}", PARAMS, len(prints), fingerprints=list(prints))


def texts(result: dict[str, Any]) -> list[str]:
    """Each page's first line, or its error's code, as a client reads the answer (a text
    layer's lines are kept encoded until then)."""
    pages = orjson.loads(orjson.dumps(result["pages"]))
    return [page["text_lines"][0]["text"] if "error" not in page else page["error"]["code"] for page in pages]


def queue_bound_waiting(documents: DocumentService) -> int:
    """What `_admit` measures a new document against."""
    return documents.pool.queue_depth + documents.scheduler.pending + documents._reserved


# ---- fake engine: fast checks of the edges ---------------------------------------------------


def test_two_documents_sharing_a_page_read_it_once() -> None:
    async def scenario(pool: WorkerPool) -> None:
        _ocr, documents = services(pool)
        first = documents.join(tiff_input("share-1", ["shared", "one"]))
        second = documents.join(tiff_input("share-2", ["two", "shared"]))  # in flight together
        a, b = await asyncio.gather(first.future, second.future)
        assert pool.tasks_run == 3  # the shared page once (it was read twice)
        # The fake engine answers "page N" of the page it read: the second document's page 2
        # is the first one's page 1, under its own number.
        assert texts(a) == ["page 1", "page 2"] and texts(b) == ["page 1", "page 1"]
        assert [page["page"] for page in b["pages"]] == [1, 2]
        assert documents.pages_ocr == 3 and documents.pages_shared == 1
        assert documents._flights == {} and documents._reserved == 0 and documents.scheduler.pending == 0

    run(scenario)


def test_equal_pages_in_one_document_are_read_once_and_keep_their_numbers() -> None:
    async def scenario(pool: WorkerPool) -> None:
        _ocr, documents = services(pool)
        result = await documents.join(tiff_input("twice", ["x", "y", "x", "x"])).future
        assert pool.tasks_run == 2
        assert [page["page"] for page in result["pages"]] == [1, 2, 3, 4]
        assert texts(result) == ["page 1", "page 2", "page 1", "page 1"]
        assert documents.pages_ocr == 2 and documents.pages_shared == 2

    run(scenario)


def test_a_shared_page_that_crashes_fails_each_of_its_pages_and_costs_two_workers_only() -> None:
    async def scenario(pool: WorkerPool) -> None:
        _ocr, documents = services(pool)
        doc = tiff_input("crash", ["x", "y", "x"], b"pages:crash=0")
        result = await documents.join(doc).future
        assert [page["page"] for page in result["pages"]] == [1, 2, 3]
        assert texts(result) == ["worker_crashed", "page 2", "worker_crashed"]
        await wait_for(lambda: pool.ready_count == 2)
        assert pool.restarts["crashed"] == 2  # one read, tried twice: not once per equal page
        # Again: both pages answered from memory, the other from the cache; no worker lost.
        tasks = pool.tasks_run
        again = await documents.join(doc).future
        assert texts(again) == ["worker_crashed", "page 2", "worker_crashed"]
        assert pool.tasks_run == tasks and pool.restarts["crashed"] == 2

    run(scenario)


async def _pages_handed_on(*runs: DocumentRun) -> None:
    """Each run's pages are in the scheduler, or wait for another's read."""
    await wait_for(lambda: all(run_.pages is not None or run_.flights for run_ in runs))


@pytest.mark.parametrize(
    ("leaving", "answers", "reads"),
    [
        # The document reading the shared page leaves: the other still gets it from that read
        # (its page 2 is the reader's page 1); the image, the shared page and b1 ran.
        ("reader", {"waiter": ["page 1", "page 1"]}, 3),
        ("waiter", {"reader": ["page 1", "page 2", "page 3"]}, 4),  # b1 never ran
        ("both", {}, 1),  # only the image: no page was left to run for nobody
    ],
)
def test_a_client_leaving_cancels_only_the_reads_no_other_document_waits_for(
    leaving: str, answers: dict[str, list[str]], reads: int
) -> None:
    async def scenario(pool: WorkerPool) -> None:
        ocr, documents = services(pool)
        busy = pool.submit(b"sleep:0.5", {})  # nothing of the documents starts meanwhile
        runs = {
            "reader": documents.join(tiff_input("reader", ["shared", "a1", "a2"])),
            "waiter": documents.join(tiff_input("waiter", ["b1", "shared"])),
        }
        await _pages_handed_on(*runs.values())
        gone = [name for name in runs if leaving in (name, "both")]
        for name in gone:
            ocr.release(runs[name])  # its only client disconnected
        for name in gone:
            with pytest.raises(TaskCancelledError):
                await runs[name].future
        for name, expected in answers.items():
            assert texts(await runs[name].future) == expected
        await busy.future
        await wait_for(lambda: pool.queue_depth == 0 and pool.running_count() == 0)
        assert pool.tasks_run == reads
        assert documents._flights == {} and documents.scheduler.pending == 0 and documents._reserved == 0
        # The shared page later: from the cache, or read afresh if nobody read it (never stuck
        # behind a cancelled read).
        result = await documents.join(tiff_input("later", ["shared"] * 2)).future
        assert texts(result) == ["page 1", "page 1"]
        assert pool.tasks_run == reads + (1 if leaving == "both" else 0)

    run(scenario, size=1)


def test_equal_pages_count_once_against_the_queue_bound() -> None:
    async def scenario(pool: WorkerPool) -> None:
        _ocr, documents = services(pool)
        busy = pool.submit(b"sleep:0.5", {})
        await wait_for(lambda: pool.running_count() == 1)
        first = documents.join(tiff_input("bound-1", ["p", "q", "r"]))
        # Eight equal pages are one read: admitted beside the 3 waiting (queue_size 4) ...
        same = documents.join(tiff_input("bound-2", ["s"] * 8))
        with pytest.raises(QueueFullError):  # ... where two more different pages do not fit
            documents.join(tiff_input("bound-3", ["t", "u"]))
        await _pages_handed_on(first, same)
        assert queue_bound_waiting(documents) == 4 and documents.stats()["pages_waiting"] == 4
        # Pages being read for another document add nothing: admitted, and no place held twice.
        waiter = documents.join(tiff_input("bound-4", ["p", "s"]))
        assert queue_bound_waiting(documents) == 4
        await _pages_handed_on(waiter)
        assert queue_bound_waiting(documents) == 4 and documents.stats()["pages_waiting"] == 4
        results = await asyncio.gather(first.future, same.future, waiter.future)
        assert texts(results[1]) == ["page 1"] * 8 and texts(results[2]) == ["page 1", "page 1"]
        await busy.future
        assert pool.tasks_run == 5 and documents._reserved == 0 and queue_bound_waiting(documents) == 0

    run(scenario, size=1, queue_size=4)


def test_pages_waiting_counts_pages_reserved_and_queued_in_the_pool() -> None:
    async def scenario(pool: WorkerPool) -> None:
        _ocr, documents = services(pool)
        busy = pool.submit(b"sleep:0.5", {})
        run_ = documents.join(tiff_input("waiting", ["a", "b", "c"]))
        # Admitted, its pages not yet looked up: waiting all the same.
        assert documents.stats()["pages_waiting"] == 3
        await _pages_handed_on(run_)
        assert documents.scheduler.pending == 2  # and one queued in the pool behind the image
        assert documents.stats()["pages_waiting"] == 3
        await run_.future
        await busy.future
        assert documents.stats()["pages_waiting"] == 0

    run(scenario, size=1)


# ---- the real server -------------------------------------------------------------------------


def _busy_image() -> bytes:
    """A form scan (~1.5 s of OCR) with a random word on it: never a cache hit."""
    row = gt_entry(lambda entry: entry["image"].endswith("funsd_82491256.png"))
    image = Image.open(GT_DIR / row["image"]).convert("RGB")
    ImageDraw.Draw(image).text((8, 8), random_word(12), fill="black")
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def _status(server: RunningServer, url: str, wait: float = 0) -> dict[str, Any]:
    return requests.get(f"{server.url}{url}?wait={wait:g}", timeout=wait + 30).json()


def _finished(server: RunningServer, url: str) -> dict[str, Any]:
    view = _status(server, url, 30)
    while view["status"] not in ("done", "failed"):
        view = _status(server, url, 30)
    return view


@contextlib.contextmanager
def workers_held(server: RunningServer) -> Iterator[list[str]]:
    """Both workers busy with an image each (queued pages wait behind them); yields the images'
    status urls, and waits for them on the way out."""
    urls = [server.ocr_upload(_busy_image(), block_flag="false").json()["status_url"] for _ in range(2)]
    deadline = time.monotonic() + 30
    while sum(w["state"] == "busy" for w in server.health()["workers"]["workers"]) < 2:
        assert time.monotonic() < deadline, "the images never started"
        time.sleep(0.01)
    yield urls
    for url in urls:
        assert _finished(server, url)["status"] == "done"


def assert_still_held(server: RunningServer, urls: list[str]) -> None:
    """No page could have been read yet: both images still run (else the test proves nothing)."""
    states = [_status(server, url)["status"] for url in urls]
    assert "done" not in states, f"the images finished too early to hold the pages back: {states}"


def word_pages(count: int) -> tuple[list[str], list[Image.Image]]:
    words = [random_word(8) for _ in range(count)]
    return words, [Image.open(io.BytesIO(text_image(word))) for word in words]


def counters(server: RunningServer) -> tuple[int, int, int]:
    health = server.health()
    documents = health["documents"]
    return health["ocr_runs"], documents["pages_ocr"], documents.get("pages_shared", 0)


def test_two_tiffs_sharing_a_page_sent_together_read_it_once(ocr_server: RunningServer) -> None:
    (shared, one, two), (shared_page, one_page, two_page) = word_pages(3)
    first, second = multipage_tiff([shared_page, one_page]), multipage_tiff([two_page, shared_page])
    runs, pages, shared_before = counters(ocr_server)
    with workers_held(ocr_server) as images:
        urls = [post_document(ocr_server, doc, name="doc.tif", block_flag="false").json() for doc in (first, second)]
        assert_still_held(ocr_server, images)
    a, b = (_finished(ocr_server, view["status_url"]) for view in urls)
    assert a["status"] == b["status"] == "done", (a, b)
    assert [page["text_lines"][0]["text"] for page in a["pages"]] == [shared, one]
    assert [page["text_lines"][0]["text"] for page in b["pages"]] == [two, shared]
    assert [page["page"] for page in b["pages"]] == [1, 2] and b["pages"][1]["cached"] is False
    runs_after, pages_after, shared_after = counters(ocr_server)
    assert pages_after - pages == 3, "the shared page was read twice"
    assert runs_after - runs == 2 + 3 and shared_after - shared_before == 1


def test_equal_pages_in_one_document_are_read_once(ocr_server: RunningServer) -> None:
    (first, second), (first_page, second_page) = word_pages(2)
    runs, pages, shared = counters(ocr_server)
    tiff = post_document(ocr_server, multipage_tiff([first_page, second_page, first_page]), name="fax.tif").json()
    assert [page["page"] for page in tiff["pages"]] == [1, 2, 3]
    assert [page["text_lines"][0]["text"] for page in tiff["pages"]] == [first, second, first]
    assert counters(ocr_server) == (runs + 2, pages + 2, shared + 1)
    # A scanned PDF with one scan on two pages: the probe, then two reads for three pages.
    (third, fourth), (third_page, fourth_page) = word_pages(2)
    pdf = post_document(ocr_server, image_pdf([third_page, fourth_page, third_page])).json()
    assert [page["text_lines"][0]["text"] for page in pdf["pages"]] == [third, fourth, third]
    assert [page["page"] for page in pdf["pages"]] == [1, 2, 3]
    assert counters(ocr_server) == (runs + 5, pages + 4, shared + 2)
    # With previews: the one read makes the JPEG, and each page links a copy of its own.
    (fifth,), (fifth_page,) = word_pages(1)
    body = post_document(ocr_server, multipage_tiff([fifth_page] * 2), name="p.tif", page_images="true").json()
    assert [page["text_lines"][0]["text"] for page in body["pages"]] == [fifth, fifth]
    for page in body["pages"]:
        assert fetch_preview(ocr_server, page).size == tuple(page["preview"]["size"])
    assert counters(ocr_server) == (runs + 6, pages + 5, shared + 3)


def _open_blocking_post(server: RunningServer, data: bytes) -> socket.socket:
    """A blocking POST of `data` whose connection the test closes when it likes (a client leaving)."""
    url = f"{server.url}/ocr_service"
    prepared = requests.Request("POST", url, data={"file_type": "file"}, files={"file": ("a.tif", data)}).prepare()
    host, port = server.url.rsplit("//", 1)[1].split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    head = "".join(f"{name}: {value}\r\n" for name, value in prepared.headers.items())
    sock.sendall(f"POST /ocr_service HTTP/1.1\r\nHost: {host}:{port}\r\n{head}\r\n".encode() + bytes(prepared.body))
    return sock


def _documents_in_flight(server: RunningServer, count: int) -> None:
    deadline = time.monotonic() + 30
    while server.health()["documents"]["in_flight"] != count:
        assert time.monotonic() < deadline, f"never {count} documents in flight"
        time.sleep(0.01)


def test_a_client_leaving_does_not_cancel_the_read_another_document_waits_for(ocr_server: RunningServer) -> None:
    (shared, _mine, theirs), (shared_page, my_page, their_page) = word_pages(3)
    runs, pages, shared_before = counters(ocr_server)
    with workers_held(ocr_server) as images:
        leaving = _open_blocking_post(ocr_server, multipage_tiff([shared_page, my_page]))  # it reads the shared page
        _documents_in_flight(ocr_server, 1)
        other = multipage_tiff([their_page, shared_page])
        view = post_document(ocr_server, other, name="b.tif", block_flag="false").json()
        _documents_in_flight(ocr_server, 2)
        leaving.close()
        _documents_in_flight(ocr_server, 1)
        assert_still_held(ocr_server, images)
    body = _finished(ocr_server, view["status_url"])
    assert body["status"] == "done" and body["pages_failed"] == 0, body
    assert [page["text_lines"][0]["text"] for page in body["pages"]] == [theirs, shared]
    # The shared page read once, for the one left; the leaving document's own page not at all.
    assert counters(ocr_server) == (runs + 2 + 2, pages + 2, shared_before + 1)


def test_health_pages_waiting_counts_every_page_accepted_and_not_started(ocr_server: RunningServer) -> None:
    _words, images_ = word_pages(3)
    with workers_held(ocr_server) as images:
        view = post_document(ocr_server, multipage_tiff(images_), name="c.tif", block_flag="false").json()
        waiting = ocr_server.health()["documents"]["pages_waiting"]
        assert_still_held(ocr_server, images)
    # Two pages queued in the pool behind the images, one in the page scheduler (or all three
    # admitted and not yet handed on): none started.
    assert waiting == 3
    assert _finished(ocr_server, view["status_url"])["status"] == "done"
    assert ocr_server.health()["documents"]["pages_waiting"] == 0
