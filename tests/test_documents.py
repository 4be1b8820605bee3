"""PDFs and multi-page TIFFs on the real server: real workers, real models, PDFs made here.

Scanned documents are made from the shared ground-truth images, so each page's error can be
held to what the same image gets on its own; born-digital ones carry a known text layer;
hostile ones (encrypted, truncated, a million pages declared, a page 14 km wide) must each
get their typed error and leave the server serving.
"""

from __future__ import annotations

import io
import os
import signal
import time
from typing import Any

import pytest
import requests
from PIL import Image

from bench.common import bag_cer
from tests.conftest import GT_DIR, RunningServer, base_config, gt_entry, gt_manifest, random_word, text_image
from tests.pdf_builder import (
    encrypted_pdf,
    garbled_first_page_pdf,
    image_pdf,
    multipage_tiff,
    nested_text_forms_pdf,
    password_pdf,
    text_pdf,
)

# Small pages of three kinds (a receipt, a printed document, a form) keep the tests quick.
SCANS = ("sroie_320.jpg", "rapid_en.jpg", "funsd_82491256.png")
# A page read from a PDF may differ from the image read alone by this much order-free CER
# (the PDF holds the image recompressed, rendered back at the same DPI).
CER_SLACK = 0.02


def gt_rows(names: tuple[str, ...]) -> list[dict[str, Any]]:
    rows = {entry["image"].rsplit("/", 1)[-1]: entry for entry in gt_manifest()}
    missing = [name for name in names if name not in rows]
    if missing:
        pytest.skip(f"ground-truth images missing: {missing}")
    return [rows[name] for name in names]


def open_gt(row: dict[str, Any]) -> Image.Image:
    return Image.open(GT_DIR / row["image"])


def error_rate(row: dict[str, Any], lines: list[dict[str, Any]]) -> float:
    edits, total = bag_cer(row["lines"], [line["text"] for line in lines])
    return edits / max(total, 1)


def post_document(server: RunningServer, data: bytes, name: str = "doc.pdf", **fields: Any) -> requests.Response:
    return requests.post(
        f"{server.url}/ocr_service",
        data={"file_type": "file", **fields},
        files={"file": (name, data)},
        timeout=300,
    )


def assert_error(response: requests.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code, error
    return error


def test_scanned_pdf_pages_read_as_well_as_the_images_alone(ocr_server: RunningServer) -> None:
    rows = gt_rows(SCANS)
    pdf = image_pdf([open_gt(row) for row in rows], dpi=200)
    response = post_document(ocr_server, pdf)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "done" and body["cached"] is False
    assert body["document"] == {"type": "pdf", "pages": 3}
    assert body["pages_total"] == body["pages_done"] == 3 and body["pages_failed"] == 0
    assert [page["page"] for page in body["pages"]] == [1, 2, 3]
    assert len(body["document_hash"]) == 64
    for row, page in zip(rows, body["pages"]):
        assert page["source"] == "ocr"
        # Rendered at the DPI the page was made for: the image's own size back (PDFium rounds up).
        assert abs(page["image_size"][0] - row["width"]) <= 2 and abs(page["image_size"][1] - row["height"]) <= 2
        alone = ocr_server.ocr_upload((GT_DIR / row["image"]).read_bytes())
        assert alone.status_code == 200 and "pages" not in alone.json()  # an image keeps its own shape
        page_cer, image_cer = error_rate(row, page["text_lines"]), error_rate(row, alone.json()["text_lines"])
        assert page_cer <= image_cer + CER_SLACK, (row["image"], page_cer, image_cer)

    # The same document again: the whole answer from the cache, no OCR.
    runs = ocr_server.health()["ocr_runs"]
    again = post_document(ocr_server, pdf).json()
    assert again["cached"] is True and again["pages"] == body["pages"]
    assert ocr_server.health()["ocr_runs"] == runs

    # The second scan inside another PDF (after a new page): only the new page is OCR'd.
    word = random_word()
    other = image_pdf([Image.open(io.BytesIO(text_image(word))), open_gt(rows[1])], dpi=200)
    mixed = post_document(ocr_server, other).json()
    assert [page["cached"] for page in mixed["pages"]] == [False, True]
    assert mixed["pages"][1]["text_lines"] == body["pages"][1]["text_lines"]
    assert ocr_server.health()["ocr_runs"] == runs + 2  # the probe and the new page


def test_born_digital_pdf_answers_from_its_text_layer(ocr_server: RunningServer) -> None:
    lines = [[f"INVOICE {random_word(6)}", "TOTAL 12.50 EUR"], [f"PAGE TWO {random_word(6)}"]]
    pdf = text_pdf(lines)
    body = post_document(ocr_server, pdf).json()
    assert [page["source"] for page in body["pages"]] == ["layer", "layer"]
    assert [[line["text"] for line in page["text_lines"]] for page in body["pages"]] == lines
    first = body["pages"][0]["text_lines"]
    assert first[0]["box"][0][1] < first[1]["box"][0][1]  # top to bottom, in page pixels

    # pdf_text=ocr reads the same pages from their pixels, and the boxes land on the same text.
    ocr = post_document(ocr_server, pdf, pdf_text="ocr").json()
    assert [page["source"] for page in ocr["pages"]] == ["ocr", "ocr"]
    for expected, page in zip(lines, ocr["pages"]):
        row = {"lines": expected}
        assert error_rate(row, page["text_lines"]) <= 0.05, page["text_lines"]
    layer_box, ocr_box = first[0]["box"], ocr["pages"][0]["text_lines"][0]["box"]
    assert abs(layer_box[0][1] - ocr_box[0][1]) < 30 and abs(layer_box[2][1] - ocr_box[2][1]) < 30


def test_pdf_text_layer_on_a_scan_and_auto_on_a_mixed_document(ocr_server: RunningServer) -> None:
    scan = Image.open(io.BytesIO(text_image(f"SCANNED {random_word(6)}")))
    pdf = image_pdf([scan])
    layer = post_document(ocr_server, pdf, pdf_text="layer").json()
    assert layer["pages"][0]["source"] == "layer" and layer["pages"][0]["text_lines"] == []
    auto = post_document(ocr_server, pdf).json()  # a scan has no text layer: auto OCRs it
    assert auto["pages"][0]["source"] == "ocr" and "SCANNED" in auto["pages"][0]["text_lines"][0]["text"]


def test_multipage_tiff_reads_every_page_and_a_single_page_tiff_stays_an_image(ocr_server: RunningServer) -> None:
    words = [random_word(8) for _ in range(2)]
    images = [Image.open(io.BytesIO(text_image(word))) for word in words]
    body = post_document(ocr_server, multipage_tiff(images), name="fax.tif").json()
    assert body["document"] == {"type": "tiff", "pages": 2}
    assert [page["text_lines"][0]["text"] for page in body["pages"]] == words
    single = post_document(ocr_server, multipage_tiff(images[:1]), name="one.tif").json()
    assert "pages" not in single and single["text_lines"][0]["text"] == words[0]


def test_non_blocking_document_reports_pages_done_then_long_polls_to_the_end(ocr_server: RunningServer) -> None:
    rows = gt_rows(SCANS)
    images = [open_gt(row) for row in rows]
    pdf = image_pdf([*images, images[0].rotate(180)], dpi=150)  # a new document: nothing cached
    submitted = post_document(ocr_server, pdf, block_flag="false")
    assert submitted.status_code == 202, submitted.text
    status_url = ocr_server.url + submitted.json()["status_url"]
    seen = []
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        view = requests.get(status_url, timeout=30).json()
        seen.append((view["status"], view.get("pages_done"), view.get("pages_total")))
        if view["status"] in ("done", "failed"):
            break
        time.sleep(0.05)
    assert view["status"] == "done", view
    assert view["pages_total"] == view["pages_done"] == 4 and len(view["pages"]) == 4
    assert any(status == "running" and total == 4 and 0 <= done < 4 for status, done, total in seen), seen
    dones = [done for _, done, _ in seen if done is not None]
    assert dones == sorted(dones)

    # ?wait= answers as soon as a document finishes, as for an image.
    again = post_document(ocr_server, image_pdf(images[:2], dpi=120), block_flag="false").json()
    waited = requests.get(f"{ocr_server.url}{again['status_url']}?wait=30", timeout=60).json()
    while waited["status"] not in ("done", "failed"):
        waited = requests.get(f"{ocr_server.url}{again['status_url']}?wait=30", timeout=60).json()
    assert waited["status"] == "done" and waited["pages_done"] == 2


def test_hostile_documents_get_typed_errors_and_the_server_keeps_serving(ocr_server: RunningServer) -> None:
    error = assert_error(post_document(ocr_server, encrypted_pdf()), 415, "encrypted_document")
    assert "encrypted" in error["message"]
    assert_error(post_document(ocr_server, encrypted_pdf(b"Standard")), 422, "pdf_password_required")
    error = assert_error(
        post_document(ocr_server, text_pdf([["ONE"]], declared_count=1_000_000)), 413, "too_many_pages"
    )
    assert "max_pdf_pages=100" in error["message"] and "1000000" in error["message"]
    error = assert_error(post_document(ocr_server, text_pdf([["X"]] * 101)), 413, "too_many_pages")
    assert "max_pdf_pages=100" in error["message"]
    huge = text_pdf([["HUGE"]], media_box=(1_000_000, 1_000_000))
    assert_error(post_document(ocr_server, huge), 413, "page_too_large")
    good = text_pdf([["GOOD PAGE ONE"], ["GOOD PAGE TWO"]])
    assert_error(post_document(ocr_server, good[: len(good) // 2]), 415, "corrupt_document")
    assert_error(post_document(ocr_server, b"%PDF-1.7\n" + os.urandom(2000)), 415, "corrupt_document")
    # A page that only quotes the PDF marker (readers take "%PDF-" anywhere in the first KiB)
    # is named for what it is, as it would be without the quote; it was a "corrupt PDF".
    quoting = b"<!DOCTYPE html><html><body>See the attached %PDF-1.4 file.</body></html>\n"
    error = assert_error(post_document(ocr_server, quoting, name="page.html"), 415, "unsupported_image")
    assert "HTML page" in error["message"]
    tiny = Image.new("RGB", (64, 32), "white")
    assert_error(post_document(ocr_server, multipage_tiff([tiny] * 101), name="many.tif"), 413, "too_many_pages")
    assert_error(post_document(ocr_server, good, pdf_text="maybe"), 400, "invalid_field")

    word = random_word()
    alive = ocr_server.ocr_upload(text_image(word))
    assert alive.status_code == 200 and alive.json()["text_lines"][0]["text"] == word
    assert ocr_server.health()["workers"]["ready"] == 2


def test_a_text_layer_bomb_gets_a_bounded_answer(ocr_server: RunningServer) -> None:
    """Two pages of 5 KB that draw 10^5 text runs each through nested forms: the answer was
    17 MB of text-layer lines (68 MB for 8 pages, the event loop held 13 s encoding it)."""
    bomb = nested_text_forms_pdf(pages=2)
    assert len(bomb) < 10_000
    error = assert_error(post_document(ocr_server, bomb, pdf_text="layer"), 413, "text_layer_too_large")
    assert "over a page's limit of 10000" in error["message"]
    # auto reads such pages by OCR, as scans: an answer of the size OCR gives.
    auto = post_document(ocr_server, bomb)
    assert auto.status_code == 200, auto.text[:500]
    assert [page["source"] for page in auto.json()["pages"]] == ["ocr", "ocr"]
    assert len(auto.content) < 1_000_000
    assert ocr_server.health()["workers"]["ready"] == 2


def test_one_unreadable_page_fails_alone_and_says_which(ocr_server: RunningServer) -> None:
    pdf = text_pdf([["FIRST PAGE"], ["BOMB"], ["THIRD PAGE"]], media_boxes={1: (1_000_000, 1_000_000)})
    response = post_document(ocr_server, pdf)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["pages_failed"] == 1
    bad = body["pages"][1]
    assert bad["page"] == 2 and bad["error"]["code"] == "page_too_large" and bad["error"]["http_status"] == 413
    assert [body["pages"][i]["text_lines"][0]["text"] for i in (0, 2)] == ["FIRST PAGE", "THIRD PAGE"]


def test_a_worker_killed_during_a_page_costs_nothing(server_factory: Any) -> None:
    server = server_factory(base_config(number=2), name="doc-crash")
    rows = gt_rows(SCANS)
    pdf = image_pdf([open_gt(row) for row in rows], dpi=200)
    submitted = post_document(server, pdf, block_flag="false").json()
    deadline = time.monotonic() + 60
    busy: list[int] = []
    while not busy and time.monotonic() < deadline:
        busy = [w["pid"] for w in server.health()["workers"]["workers"] if w["state"] == "busy"]
        time.sleep(0.02)
    assert busy, "no page ever ran"
    os.kill(busy[0], signal.SIGKILL)  # a worker we started, by its PID
    view = requests.get(f"{server.url}{submitted['status_url']}?wait=30", timeout=60).json()
    while view["status"] not in ("done", "failed"):
        view = requests.get(f"{server.url}{submitted['status_url']}?wait=30", timeout=60).json()
    assert view["status"] == "done" and view["pages_failed"] == 0, view  # the page was retried
    deadline = time.monotonic() + 60
    while server.health()["workers"]["ready"] < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.health()["workers"]["ready"] == 2
    assert server.ocr_upload(text_image("STILL SERVING")).status_code == 200


def test_a_single_image_is_not_kept_waiting_behind_a_long_document(ocr_server: RunningServer) -> None:
    rows = gt_rows(SCANS)
    images = [open_gt(row) for row in rows]
    pdf = image_pdf([images[i % 3].rotate(180 * (i // 3)) for i in range(8)], dpi=170)
    submitted = post_document(ocr_server, pdf, block_flag="false").json()
    status_url = f"{ocr_server.url}{submitted['status_url']}"
    deadline = time.monotonic() + 120
    before = 0
    while not before and time.monotonic() < deadline:  # the pages are under way
        time.sleep(0.05)
        before = requests.get(status_url, timeout=30).json()["pages_done"]
    word = random_word()
    image = ocr_server.ocr_upload(text_image(word))  # arrives while the document's pages run
    assert image.status_code == 200 and image.json()["text_lines"][0]["text"] == word
    # It waited for the (at most 2) pages already running, not for the rest of the document:
    # the 2 running then, and 1 more on the other worker while the image was read, at most.
    view = requests.get(status_url, timeout=30).json()
    assert view["status"] == "running" and view["pages_done"] <= before + 3, (before, view)
    while view["status"] not in ("done", "failed"):
        view = requests.get(f"{status_url}?wait=30", timeout=60).json()
    assert view["status"] == "done" and view["pages_failed"] == 0


def fetch_preview(server: RunningServer, page: dict[str, Any]) -> Image.Image:
    """GET a page's preview: a JPEG of the size the answer says."""
    response = requests.get(server.url + page["preview"]["url"], timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "image/jpeg"
    image = Image.open(io.BytesIO(response.content))
    image.load()
    assert image.format == "JPEG" and list(image.size) == page["preview"]["size"]
    return image


def assert_preview_fits(image: Image.Image, page: dict[str, Any]) -> None:
    """The preview shows the whole page, smaller, and each box lands on dark (text) pixels."""
    width, height = page["image_size"]
    assert max(image.size) <= 1100 and abs(image.size[0] / image.size[1] - width / height) < 0.01
    scale = page["preview"]["scale"]
    assert abs(scale * width - image.size[0]) <= 1 and abs(scale * height - image.size[1]) <= 2
    grey = image.convert("L")
    for line in page["text_lines"]:
        xs = [x * scale for x, _ in line["box"]]
        ys = [y * scale for _, y in line["box"]]
        assert 0 <= min(xs) and max(xs) <= image.size[0] + 1 and 0 <= min(ys) and max(ys) <= image.size[1] + 1
        inside = grey.crop((int(min(xs)), int(min(ys)), int(max(xs)) + 1, int(max(ys)) + 1))
        assert inside.getextrema()[0] < 100, line  # ink where the box says the text is
    assert grey.getpixel((1, 1)) > 200  # and white paper around it


def test_page_images_give_each_page_a_jpeg_its_boxes_fit(ocr_server: RunningServer) -> None:
    lines = [[f"PREVIEW {random_word(6)}", "SECOND LINE"], [f"PAGE TWO {random_word(6)}"]]
    pdf = text_pdf(lines)
    plain = post_document(ocr_server, pdf).json()
    assert all("preview" not in page for page in plain["pages"])  # opt-in: no previews by default

    # Text-layer pages: the previews come from quick tasks that only draw the page.
    body = post_document(ocr_server, pdf, page_images="true").json()
    assert body["status"] == "done" and [page["source"] for page in body["pages"]] == ["layer", "layer"]
    for page in body["pages"]:
        assert page["image_size"] == [1700, 2200]  # US Letter at 200 dpi
        assert_preview_fits(fetch_preview(ocr_server, page), page)

    # Pages read by OCR: each page's preview comes with its OCR, from the same pixels (no
    # second task per page: the probe and one task per page run).
    runs = ocr_server.health()["ocr_runs"]
    ocr = post_document(ocr_server, pdf, page_images="true", pdf_text="ocr").json()
    assert [page["source"] for page in ocr["pages"]] == ["ocr", "ocr"]
    assert ocr_server.health()["ocr_runs"] == runs + 3
    for page in ocr["pages"]:
        assert_preview_fits(fetch_preview(ocr_server, page), page)

    # The same request again: the whole answer from the cache, previews included.
    again = post_document(ocr_server, pdf, page_images="true").json()
    assert again["cached"] is True
    assert [page["preview"]["url"] for page in again["pages"]] == [page["preview"]["url"] for page in body["pages"]]

    # A multi-page TIFF gets its previews too; as a task, the view links them.
    words = [random_word(8) for _ in range(2)]
    tiff = multipage_tiff([Image.open(io.BytesIO(text_image(word))) for word in words])
    task = post_document(ocr_server, tiff, name="fax.tif", block_flag="false", page_images="true").json()
    view = requests.get(f"{ocr_server.url}{task['status_url']}?wait=30", timeout=60).json()
    while view["status"] not in ("done", "failed"):
        view = requests.get(f"{ocr_server.url}{task['status_url']}?wait=30", timeout=60).json()
    assert view["status"] == "done", view
    for page, word in zip(view["pages"], words):
        assert page["text_lines"][0]["text"] == word
        image = fetch_preview(ocr_server, page)
        assert list(image.size) == page["image_size"]  # small pages are not enlarged
        assert_preview_fits(image, page)

    missing = requests.get(f"{ocr_server.url}/ocr_service/previews/{'0' * 32}", timeout=10)
    assert_error(missing, 404, "preview_not_found")
    assert ocr_server.health()["documents"]["previews"]["bytes"] > 0


def test_a_password_protected_pdf_is_read_with_its_password_and_only_with_it(ocr_server: RunningServer) -> None:
    secret = f"pw-{random_word(10)}"
    lines = [[f"CONFIDENTIAL {random_word(6)}"], [f"SALARY {random_word(6)}"]]
    pdf = password_pdf(lines, secret)
    error = assert_error(post_document(ocr_server, pdf), 422, "pdf_password_required")
    assert "password" in error["message"]
    assert_error(post_document(ocr_server, pdf, password="not-" + secret), 422, "pdf_password_wrong")
    in_url = requests.post(
        f"{ocr_server.url}/ocr_service?password={secret}", files={"file": ("doc.pdf", pdf)}, timeout=60
    )
    assert_error(in_url, 400, "invalid_field")  # URLs get logged: the body only

    body = post_document(ocr_server, pdf, password=secret).json()
    assert body["status"] == "done" and body["document"]["password_protected"] is True
    assert [[line["text"] for line in page["text_lines"]] for page in body["pages"]] == lines
    ocr = post_document(ocr_server, pdf, password=secret, pdf_text="ocr").json()  # its pixels too
    assert [page["source"] for page in ocr["pages"]] == ["ocr", "ocr"]
    assert error_rate({"lines": lines[0]}, ocr["pages"][0]["text_lines"]) <= 0.05

    # Read once, the document is cached, but never answered from there without the password.
    assert_error(post_document(ocr_server, pdf), 422, "pdf_password_required")
    assert_error(post_document(ocr_server, pdf, pdf_text="ocr"), 422, "pdf_password_required")
    assert_error(post_document(ocr_server, pdf, password="wrong"), 422, "pdf_password_wrong")
    task = post_document(ocr_server, pdf, block_flag="false", pdf_text="ocr").json()
    view = requests.get(f"{ocr_server.url}{task['status_url']}?wait=30", timeout=60).json()
    assert view["status"] == "failed" and view["error"]["code"] == "pdf_password_required", view

    # As a task with the password: the view has the text, and the password is nowhere.
    task = post_document(ocr_server, pdf, block_flag="false", password=secret, page_images="true").json()
    view = requests.get(f"{ocr_server.url}{task['status_url']}?wait=30", timeout=60).json()
    while view["status"] not in ("done", "failed"):
        view = requests.get(f"{ocr_server.url}{task['status_url']}?wait=30", timeout=60).json()
    assert view["status"] == "done" and view["pages"][1]["text_lines"][0]["text"] == lines[1][0]
    shown = [
        requests.get(f"{ocr_server.url}{task['status_url']}", timeout=30).text,
        requests.get(f"{ocr_server.url}/health", timeout=30).text,
        requests.get(f"{ocr_server.url}/metrics", timeout=30).text,
        ocr_server.log_text(),
    ]
    assert not [text[:200] for text in shown if secret in text]

    # Only an owner password (no user password): it opens without one, as readers do.
    owner_only = password_pdf([["OWNER PROTECTED ONLY"]], "")
    body = post_document(ocr_server, owner_only).json()
    assert body["pages"][0]["text_lines"][0]["text"] == "OWNER PROTECTED ONLY"


def test_the_same_tiff_page_inside_another_tiff_is_not_read_again(ocr_server: RunningServer) -> None:
    shared_word, first_word, other_word = (random_word(8) for _ in range(3))
    shared, first, other = (Image.open(io.BytesIO(text_image(word))) for word in (shared_word, first_word, other_word))
    body = post_document(ocr_server, multipage_tiff([first, shared]), name="a.tif").json()
    assert [page["cached"] for page in body["pages"]] == [False, False]
    runs = ocr_server.health()["ocr_runs"]
    # Another fax holding the same page (at another place in another file): only the new page is read.
    again = post_document(ocr_server, multipage_tiff([shared, other, first]), name="b.tif").json()
    assert [page["cached"] for page in again["pages"]] == [True, False, True]
    assert [page["text_lines"][0]["text"] for page in again["pages"]] == [shared_word, other_word, first_word]
    assert ocr_server.health()["ocr_runs"] == runs + 1


def test_a_page_that_hung_a_worker_is_remembered_not_read_again(server_factory: Any) -> None:
    # A scan of over 1.5 MP runs past a tiny task_timeout (as in test_service's timeout tests;
    # over a second of reading here): each of its pages costs a worker once. Not the largest,
    # 35 MP: building, sending and decoding its pages took seconds and showed nothing more.
    big = gt_entry(lambda e: e["width"] * e["height"] > 1_500_000)
    image = open_gt(big)
    tiff = multipage_tiff([image, image.rotate(180)])
    # Two workers: both pages start at once (one alone would leave the second page queued
    # while its worker is replaced, and a page that never ran says nothing about itself).
    server = server_factory(base_config(number=2, task_timeout=0.2), name="doc-poison")
    first = post_document(server, tiff, name="big.tif")
    assert_error(first, 504, "timeout")
    deadline = time.monotonic() + 60
    while server.health()["workers"]["ready"] < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    health = server.health()
    runs, restarts = health["ocr_runs"], health["workers"]["restarts"]
    assert restarts == {"timeout": 2}, restarts
    # Again, and inside another document: answered at once, saying why, no worker killed.
    again = assert_error(post_document(server, tiff, name="big.tif"), 504, "timeout")
    assert "remembered from an earlier attempt" in again["message"]
    other = multipage_tiff([image.rotate(180), image])
    view = post_document(server, other, name="other.tif", block_flag="false").json()
    view = requests.get(f"{server.url}{view['status_url']}?wait=30", timeout=60).json()
    assert view["status"] == "failed" and view["error"]["code"] == "timeout", view
    health = server.health()
    assert health["workers"]["restarts"] == {"timeout": 2} and health["ocr_runs"] == runs
    assert health["cache"]["failures_answered"] == 4


def test_the_same_born_digital_page_read_by_ocr_inside_another_pdf_is_not_read_again(
    ocr_server: RunningServer,
) -> None:
    shared = [f"SHARED {random_word(6)}", "SECOND LINE"]
    first = post_document(ocr_server, text_pdf([[f"FIRST {random_word(6)}"], shared]), pdf_text="ocr").json()
    assert [page["cached"] for page in first["pages"]] == [False, False]
    runs = ocr_server.health()["ocr_runs"]
    # The same page (same text, font, place) first in another PDF: its OCR comes from the cache.
    other = post_document(ocr_server, text_pdf([shared, [f"OTHER {random_word(6)}"]]), pdf_text="ocr").json()
    assert [page["cached"] for page in other["pages"]] == [True, False]
    assert other["pages"][0]["text_lines"] == first["pages"][1]["text_lines"]
    assert ocr_server.health()["ocr_runs"] == runs + 2  # the probe and the new page
    # One letter different, or the same text a point larger: another page, read again.
    for near in (text_pdf([[shared[0], "SECOND LINF"]]), text_pdf([shared], font_size=29)):
        assert post_document(ocr_server, near, pdf_text="ocr").json()["pages"][0]["cached"] is False


def test_page_identity_reads_drawn_pages_and_gives_up_on_what_it_cannot_read() -> None:
    identity = _first_page_identity
    page = [["INVOICE 4711", "TOTAL 12.50"]]
    same = identity(text_pdf(page))
    assert same is not None and same == identity(text_pdf([["COVER"], *page]), 1)
    assert identity(text_pdf([["INVOICE 4711", "TOTAL 12.5O"]])) != same
    assert identity(text_pdf(page, media_box=(595, 842))) != same  # A4: the text sits elsewhere
    # An annotation is drawn from its own appearance, not read here: no identity.
    annotated = text_pdf(page).replace(
        b"/Resources << /Font",
        b"/Annots [<< /Type /Annot /Subtype /Square /Rect [10 10 100 100] /C [1 0 0] >>] /Resources << /Font",
    )
    assert identity(annotated) is None


def _first_page_identity(pdf: bytes, index: int = 0) -> str | None:
    from models.page_identity import page_fingerprint
    from models.pdf import open_pdf

    document = open_pdf(pdf)
    try:
        page = document[index]
        try:
            return page_fingerprint(page)
        finally:
            page.close()
    finally:
        document.close()


def _one_image_pdf(
    image_extra: bytes,
    stream: bytes,
    width: int,
    height: int,
    colour_space: bytes = b"/DeviceGray",
    content: bytes = b"",
    more_resources: bytes = b"",
    more_objects: tuple[bytes, ...] = (),
) -> bytes:
    """A scanned page as the review built it: one Flate image (object 5), nothing else drawn
    unless `content` says so; `more_objects` are numbered from 6."""
    from multirequest import write_pdf

    content = content or b"q 432 0 0 144 90 324 cm /Im1 Do Q"
    image = (
        b"<< /Type /XObject /Subtype /Image /Width %d /Height %d /BitsPerComponent 8 /ColorSpace %s"
        b" /Filter /FlateDecode %s /Length %d >>\nstream\n"
        % (width, height, colour_space, image_extra, len(stream))
        + stream
        + b"\nendstream"
    )
    return write_pdf(
        [
            b"<< /Type /Catalog /Pages 2 0 R >>",
            b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
            (
                b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R"
                b" /Resources << %s/XObject << /Im1 5 0 R >> >> >>" % more_resources
            ),
            b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream",
            image,
            *more_objects,
        ]
    )


def test_scans_that_differ_only_in_palette_decode_array_clip_or_mask_never_share_an_identity() -> None:
    import zlib

    import numpy as np

    width, height = 120, 40
    indices = (np.arange(width * height) % 3).astype(np.uint8).tobytes()
    gray = (np.arange(width * height) % 251).astype(np.uint8).tobytes()
    pairs = {
        # The same indices through two palettes: "PAY 100" against "PAY 999" in the review.
        "palette": [
            _one_image_pdf(
                b"", zlib.compress(indices), width, height, b"[/Indexed /DeviceRGB 2 <FFFFFF 000000 FFFFFF>]"
            ),
            _one_image_pdf(
                b"", zlib.compress(indices), width, height, b"[/Indexed /DeviceRGB 2 <FFFFFF FFFFFF 000000>]"
            ),
        ],
        "decode_array": [
            _one_image_pdf(b"", zlib.compress(gray), width, height),
            _one_image_pdf(b"/Decode [1 0]", zlib.compress(gray), width, height),
        ],
        "clip_path": [
            _one_image_pdf(b"", zlib.compress(gray), width, height),
            _one_image_pdf(
                b"",
                zlib.compress(gray),
                width,
                height,
                content=b"q 250 324 272 144 re W n 432 0 0 144 90 324 cm /Im1 Do Q",
            ),
        ],
        "predictor": [
            _one_image_pdf(b"", zlib.compress(gray), width, height),
            _one_image_pdf(b"/DecodeParms << /Predictor 2 /Columns %d >>" % width, zlib.compress(gray), width, height),
        ],
        "colour_key_mask": [
            _one_image_pdf(b"", zlib.compress(gray), width, height),
            _one_image_pdf(b"/Mask [0 100]", zlib.compress(gray), width, height),
        ],
    }
    for name, (first, second) in pairs.items():
        one, other = _first_page_identity(first), _first_page_identity(second)
        assert one is None or one != other, name
    # The plain one keeps its identity, equal in another PDF with the same image.
    plain = pairs["decode_array"][0]
    assert _first_page_identity(plain) is not None
    assert _first_page_identity(plain) == _first_page_identity(pairs["clip_path"][0])


def test_a_soft_masked_scan_has_no_identity_and_a_born_digital_image_reads_its_decode_array() -> None:
    import zlib

    width, height = 60, 20
    gray = zlib.compress(bytes(range(60)) * height)
    mask = zlib.compress(bytes(width * height // 2) + b"\xff" * (width * height // 2))
    soft_mask = (
        b"<< /Type /XObject /Subtype /Image /Width %d /Height %d /BitsPerComponent 8 /ColorSpace /DeviceGray"
        b" /Filter /FlateDecode /Length %d >>\nstream\n" % (width, height, len(mask)) + mask + b"\nendstream"
    )
    document = _one_image_pdf(b"/SMask 6 0 R", gray, width, height, more_objects=(soft_mask,))
    assert _first_page_identity(_one_image_pdf(b"", gray, width, height)) is not None
    assert _first_page_identity(document) is None

    # A born-digital page (text and an image): the image's /Decode array is read too.
    def drawn(image_extra: bytes) -> bytes:
        return _one_image_pdf(
            image_extra,
            gray,
            width,
            height,
            content=b"BT /F1 20 Tf 72 700 Td (LOGO) Tj ET q 120 0 0 40 72 600 cm /Im1 Do Q",
            more_resources=b"/Font << /F1 6 0 R >> ",
            more_objects=(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",),
        )

    plain = _first_page_identity(drawn(b""))
    assert plain is not None and plain == _first_page_identity(drawn(b""))
    assert _first_page_identity(drawn(b"/Decode [1 0]")) not in (None, plain)


def test_the_same_scanned_jpeg_in_two_pdfs_keeps_one_identity() -> None:
    from tests.pdf_builder import image_pdf

    scan = Image.open(io.BytesIO(text_image(f"SCANNED {random_word(6)}")))
    cover = Image.open(io.BytesIO(text_image("COVER")))
    alone = _first_page_identity(image_pdf([scan]))
    assert alone is not None and alone == _first_page_identity(image_pdf([cover, scan]), 1)
    assert alone != _first_page_identity(image_pdf([cover]))


def _pattern_page(content: bytes, resources: bytes, *extra: bytes) -> bytes:
    """One page drawing `content`, with `resources`; objects 5 on are `extra`."""
    from multirequest import write_pdf

    return write_pdf(
        [
            b"<< /Type /Catalog /Pages 2 0 R >>",
            b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R /Resources << %s >> >>" % resources,
            b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream",
            *extra,
        ]
    )


def _axial(start: bytes, end: bytes, pattern: bool = True) -> bytes:
    shading = (
        b"<< /ShadingType 2 /ColorSpace /DeviceRGB /Coords [100 0 500 0] /Extend [true true]"
        b" /Function << /FunctionType 2 /Domain [0 1] /C0 [%s] /C1 [%s] /N 1 >> >>" % (start, end)
    )
    return b"<< /PatternType 2 /Shading %s >>" % shading if pattern else shading


def _tiling(colour: bytes) -> bytes:
    cell = b"%s rg 0 0 5 5 re f" % colour
    return (
        b"<< /Type /Pattern /PatternType 1 /PaintType 1 /TilingType 1 /BBox [0 0 10 10] /XStep 10 /YStep 10"
        b" /Resources << >> /Length %d >>\nstream\n" % len(cell) + cell + b"\nendstream"
    )


def test_paths_and_text_painted_with_a_pattern_never_share_an_identity() -> None:
    # PDFium reports a shading pattern's colour as white and a tiling pattern's as grey
    # (FPDFPageObj_GetFillColor): a red and a blue gradient read the same.
    patterns = b"/Pattern << /P1 5 0 R >>"
    fill, stroke = b"/Pattern cs /P1 scn 100 100 400 400 re f", b"/Pattern CS /P1 SCN 20 w 100 100 400 400 re S"
    text = b"/Pattern cs /P1 scn BT /F1 48 Tf 100 400 Td (TOTAL 12.50) Tj ET"
    font = b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"
    with_font = patterns + b" /Font << /F1 6 0 R >>"
    pairs = {
        "shading_fill": [_pattern_page(fill, patterns, _axial(c, b"1 1 1")) for c in (b"1 0 0", b"0 0 1")],
        "shading_stroke": [_pattern_page(stroke, patterns, _axial(c, b"1 1 1")) for c in (b"1 0 0", b"0 0 1")],
        "shading_text": [_pattern_page(text, with_font, _axial(c, b"1 1 1"), font) for c in (b"1 0 0", b"0 0 1")],
        "tiling_fill": [_pattern_page(fill, patterns, _tiling(c)) for c in (b"1 0 0", b"0 0 1")],
        "tiling_stroke": [_pattern_page(stroke, patterns, _tiling(c)) for c in (b"1 0 0", b"0 0 1")],
        # A gradient against a plain fill of the colour PDFium reports for it.
        "shading_or_white": [
            _pattern_page(fill, patterns, _axial(b"1 0 0", b"1 1 1")),
            _pattern_page(b"1 1 1 rg 100 100 400 400 re f", b""),
        ],
        "tiling_or_grey": [
            _pattern_page(fill, patterns, _tiling(b"1 0 0")),
            _pattern_page(b"0.75 g 100 100 400 400 re f", b""),
        ],
    }
    for name, (first, second) in pairs.items():
        one, other = _first_page_identity(first), _first_page_identity(second)
        assert one is None or one != other, name
    # A shading drawn with `sh`: no identity either.
    drawn = _pattern_page(
        b"q 100 100 400 400 re W n /Sh1 sh Q", b"/Shading << /Sh1 5 0 R >>", _axial(b"1 0 0", b"1 1 1", False)
    )
    assert _first_page_identity(drawn) is None
    # A plain coloured page keeps its identity, the same in another PDF.
    red = _pattern_page(b"1 0 0 rg 100 100 400 400 re f", b"")
    assert _first_page_identity(red) is not None
    assert _first_page_identity(red) == _first_page_identity(
        _pattern_page(b"1 0 0 rg 100 100 400 400 re f", b"/Font << >>")
    )


def test_a_damaged_page_read_once_is_read_again_by_the_same_worker() -> None:
    # PDFium loads the garbled first page of this PDF once, then refuses it in the same open
    # document; the worker keeps the last PDF open, so the page's second task there (another
    # det, pdf_text or a preview), or the next probe, said "page 1 cannot be read"
    # (corrupt_document; a 500 ocr_failed in a page task) for a page the first request read.
    import hashlib

    from models import documents

    pdf = garbled_first_page_pdf([[f"GARBLED {random_word(6)}"], ["PAGE TWO"]])
    spec = {"dpi": 200.0, "max_side": 4000, "max_pixels": 16_000_000, "hash": hashlib.sha256(pdf).hexdigest()}
    page = {**spec, "kind": "pdf", "index": 0}
    probe = {**spec, "op": "probe", "max_pages": 100, "pdf_text": "ocr"}
    documents._close_open_pdf()
    try:
        first = documents.page_pixels(pdf, page, 50_000_000, 8)
        assert documents.page_pixels(pdf, page, 50_000_000, 8).shape == first.shape == (2200, 1700, 3)
        preview = documents.run_preview(pdf, {**page, "preview": {"max_side": 1100, "quality": 80}}, 50_000_000, 8)
        assert preview["image_size"] == [1700, 2200]
        documents.page_pixels(pdf, page, 50_000_000, 8)
        assert [info["error"] for info in documents.run_probe(pdf, probe)["pages"]] == [None, None]
    finally:
        documents._close_open_pdf()
