"""The WebUI end to end: the real server, Debian's headless Chromium driven by Playwright, real images.

Needs /usr/bin/chromium (`apt-get install chromium`) and `pip install playwright`; never
`playwright install` (no browser download). Locally a missing one skips; under CI it fails.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from PIL import Image

from tests.conftest import ARTIFACTS, GT_DIR, RunningServer, gt_entry, random_word, text_image

CHROMIUM = Path("/usr/bin/chromium")
# No sandbox (root in CI containers) and nothing that phones home: CI has no network.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
REAL_IMAGE = "easyocr_english.png"
RESULT_TIMEOUT_MS = 120_000  # a cold worker on a slow CI machine


def _unavailable(reason: str) -> None:
    # CI installs the browser and Playwright, so there a missing one is a failure, not a skip.
    if IN_CI:
        pytest.fail(f"{reason} (CI must install it: see .ci/run)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.is_file():
        _unavailable(f"{CHROMIUM} not found: apt-get install -y chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("Playwright for Python is not installed: pip install playwright")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


class PageWatch:
    """A page on the WebUI plus what it did: requests sent and script errors."""

    def __init__(self, page: Any, base_url: str) -> None:
        self.page = page
        self.base_url = base_url
        self.requests: list[str] = []
        self.page_errors: list[str] = []
        self.console_errors: list[str] = []
        page.on("request", lambda request: self.requests.append(request.url))
        page.on("pageerror", lambda error: self.page_errors.append(str(error)))
        page.on("console", lambda msg: self.console_errors.append(msg.text) if msg.type == "error" else None)

    def foreign_requests(self) -> list[str]:
        local = (self.base_url + "/", "data:", "blob:")
        return [url for url in self.requests if not url.startswith(local)]

    def upload(self, files: Any) -> dict[str, Any]:
        """Choose a file in the picker; the JSON the server answered."""
        with self.page.expect_response(_is_ocr_post, timeout=RESULT_TIMEOUT_MS) as answer:
            self.page.set_input_files("#file", files)
        self.page.wait_for_selector("body[data-state=done], body[data-state=error]", timeout=RESULT_TIMEOUT_MS)
        return answer.value.json()

    def shown_texts(self) -> list[str]:
        return self.page.locator("#lines .text").all_text_contents()


def _is_ocr_post(response: Any) -> bool:
    return response.url.endswith("/ocr_service") and response.request.method == "POST"


@pytest.fixture
def webui(browser: Any, ocr_server: RunningServer) -> Iterator[PageWatch]:
    context = browser.new_context(
        viewport={"width": 1280, "height": 900}, permissions=["clipboard-read", "clipboard-write"]
    )
    page = context.new_page()
    watch = PageWatch(page, ocr_server.url)
    response = page.goto(f"{ocr_server.url}/")
    assert response is not None and response.status == 200, "GET / does not serve the WebUI (routes not wired?)"
    page.wait_for_selector("body[data-state=idle]")
    yield watch
    context.close()


def _squash(text: str) -> str:
    # The engine sometimes drops the spaces between words; compare without them.
    return re.sub(r"\s+", "", text).casefold()


def test_static_routes_serve_the_page_offline(ocr_server: RunningServer) -> None:
    page = requests.get(f"{ocr_server.url}/", timeout=10)
    assert page.status_code == 200, page.text[:300]
    assert page.headers["Content-Type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    assert requests.head(f"{ocr_server.url}/", timeout=10).status_code == 200
    # The same page under its file name has the same protection (it had none).
    same = requests.get(f"{ocr_server.url}/static/index.html", timeout=10)
    assert same.text == page.text
    assert same.headers["Content-Security-Policy"] == page.headers["Content-Security-Policy"]
    assert same.headers["X-Frame-Options"] == "DENY"
    for name, media_type in (("app.js", "text/javascript"), ("style.css", "text/css")):
        asset = requests.get(f"{ocr_server.url}/static/{name}", timeout=10)
        assert asset.status_code == 200
        assert asset.headers["Content-Type"].startswith(media_type)
    # Offline: nothing is loaded from another host (the SVG namespace is a name, not a load).
    static_dir = Path(__file__).resolve().parents[1] / "static"
    for path in static_dir.iterdir():
        urls = set(re.findall(r"(?:https?:)?//[\w.-]+\.[a-z]{2,}[^\s\"')]*", path.read_text()))
        assert urls <= {"http://www.w3.org/2000/svg"}, f"{path.name} refers to {urls}"

    for path, status, code in (
        ("/static/missing.js", 404, "not_found"),
        ("/static/%2e%2e/server.py", 403, "forbidden_path"),
        ("/static/%00", 404, "not_found"),
        ("/static/", 404, "not_found"),  # the folder itself is no file, and not outside it
        ("/static/%2e%2e/", 403, "forbidden_path"),
    ):
        answer = requests.get(f"{ocr_server.url}{path}", timeout=10)
        assert answer.status_code == status, (path, answer.text)
        assert answer.json()["error"]["code"] == code


def _raw_answer(server: RunningServer, request: bytes) -> bytes:
    """Everything the server writes back to `request` (it closes the connection after)."""
    host, port = server.url.rsplit("/", 1)[1].split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        with contextlib.suppress(ConnectionResetError):  # closed with part of the body unread
            while chunk := sock.recv(65536):
                answer += chunk
    return answer


def test_a_large_body_sent_to_the_page_gets_a_json_answer_before_it_is_read(ocr_server: RunningServer) -> None:
    # Tornado read the body first and answered one over 64 KiB with a bare 400.
    for method, path, status, code in (
        ("POST", "/", 405, "method_not_allowed"),
        ("PUT", "/static/app.js", 405, "method_not_allowed"),
        ("GET", "/static/app.js", 413, "body_too_large"),
    ):
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 50000000\r\n\r\n"
        answer = _raw_answer(ocr_server, head.encode() + b"\0" * 100)
        assert answer.startswith(f"HTTP/1.1 {status} ".encode()), (method, path, answer[:200])
        assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["code"] == code


def test_upload_real_image_draws_a_box_per_line(webui: PageWatch) -> None:
    entry = gt_entry(lambda e: e["image"].endswith(REAL_IMAGE))
    page = webui.page
    body = webui.upload(str(GT_DIR / entry["image"]))
    assert page.get_attribute("body", "data-state") == "done", page.text_content("#message")

    lines = body["text_lines"]
    assert lines, body
    texts = [line["text"] for line in lines]
    # The page shows exactly what the server answered, one box per line.
    assert webui.shown_texts() == texts
    assert page.locator("#overlay polygon.box").count() == len(lines)
    assert page.locator("#lines .confidence").all_text_contents()[0] == f"{lines[0]['confidence'] * 100:.1f}%"
    # ... and that is the known text of the image (words of 6+ letters from the ground truth).
    words = {w.casefold() for line in entry["lines"] for w in re.findall(r"[A-Za-z]{6,}", line)}
    read = _squash(" ".join(texts))
    found = {w for w in words if w in read}
    assert len(found) >= 0.6 * len(words), f"read {texts}, missing {sorted(words - found)}"
    assert "coronavirus" in read

    # The boxes are scaled to the displayed image: compare one box's place on screen.
    width, height = body["image_size"]
    assert page.evaluate("document.getElementById('image').naturalWidth") == width
    shown = page.locator("#image").bounding_box()
    overlay = page.locator("#overlay").bounding_box()
    assert shown is not None and overlay is not None
    for key in ("x", "y", "width", "height"):
        assert abs(shown[key] - overlay[key]) <= 1, (shown, overlay)
    assert shown["width"] < width, "the test image should be shown scaled down"
    scale_x, scale_y = shown["width"] / width, shown["height"] / height
    xs = [x for x, _ in lines[0]["box"]]
    ys = [y for _, y in lines[0]["box"]]
    box = page.locator('#overlay polygon[data-index="0"]').bounding_box()
    assert box is not None
    # Centres must match closely; sizes within the stroke, which the on-screen box includes.
    assert abs(box["x"] + box["width"] / 2 - (shown["x"] + (min(xs) + max(xs)) / 2 * scale_x)) <= 2
    assert abs(box["y"] + box["height"] / 2 - (shown["y"] + (min(ys) + max(ys)) / 2 * scale_y)) <= 2
    assert abs(box["width"] - (max(xs) - min(xs)) * scale_x) <= 10
    assert abs(box["height"] - (max(ys) - min(ys)) * scale_y) <= 10

    # Summary: line count, cache flag, timing.
    assert page.text_content("#line-count") == str(len(lines))
    assert page.text_content("#cached").startswith("yes" if body["cached"] else "no")
    assert re.search(r"\brec \d+ ms", page.text_content("#timing") or "")

    # Hovering a line highlights its box; a click pins it.
    page.hover("#lines li.line >> nth=1")
    assert "active" in (page.get_attribute('#overlay polygon[data-index="1"]', "class") or "")
    page.hover('#overlay polygon[data-index="2"]')
    assert "active" in (page.get_attribute("#lines li.line >> nth=2", "class") or "")
    page.click("#lines li.line >> nth=0")
    page.mouse.move(5, 5)
    assert page.locator(".box.active").count() == 1
    assert page.get_attribute(".box.active", "data-index") == "0"

    page.click("#copy")
    page.wait_for_selector("#message:has-text('Copied')")
    assert page.evaluate("navigator.clipboard.readText()") == "\n".join(texts)

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "webui.png"), full_page=True)

    # The same image again comes from the cache, and the page says so.
    again = webui.upload(str(GT_DIR / entry["image"]))
    assert again["cached"] is True
    assert page.text_content("#cached").startswith("yes")
    assert page.locator("#overlay polygon.box").count() == len(again["text_lines"])

    assert webui.page_errors == []
    assert webui.console_errors == []
    assert webui.foreign_requests() == []


def test_non_image_upload_shows_the_error(webui: PageWatch) -> None:
    page = webui.page
    body = webui.upload({"name": "notes.txt", "mimeType": "text/plain", "buffer": b"this is not an image\n"})
    assert body["error"]["code"] == "unsupported_image"
    assert page.get_attribute("body", "data-state") == "error"
    message = page.locator("#message")
    assert message.is_visible()
    assert "error" in (message.get_attribute("class") or "")
    assert message.get_attribute("role") == "alert"
    text = message.text_content() or ""
    assert "415" in text and "unsupported_image" in text, text
    assert page.locator("#result").is_hidden()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "webui-error.png"))
    assert webui.page_errors == []


def test_dropped_image_is_read(webui: PageWatch) -> None:
    page = webui.page
    word = random_word()
    png = base64.b64encode(text_image(f"DROP {word}")).decode()
    # Playwright cannot drag an OS file, so build the drop event the browser would send.
    with page.expect_response(_is_ocr_post, timeout=RESULT_TIMEOUT_MS):
        page.evaluate(
            """(png) => {
                const bytes = Uint8Array.from(atob(png), (c) => c.charCodeAt(0));
                const data = new DataTransfer();
                data.items.add(new File([bytes], "dropped.png", { type: "image/png" }));
                const zone = document.getElementById("dropzone");
                for (const type of ["dragenter", "dragover", "drop"]) {
                    zone.dispatchEvent(new DragEvent(type, { bubbles: true, cancelable: true, dataTransfer: data }));
                }
            }""",
            png,
        )
    page.wait_for_selector("body[data-state=done], body[data-state=error]", timeout=RESULT_TIMEOUT_MS)
    assert page.get_attribute("body", "data-state") == "done", page.text_content("#message")
    assert word in " ".join(webui.shown_texts())
    assert page.locator("#overlay polygon.box").count() == len(webui.shown_texts()) >= 1
    assert "dragging" not in (page.get_attribute("body", "class") or "")
    assert webui.page_errors == []


def test_document_shows_progress_then_every_page_with_its_boxes(webui: PageWatch) -> None:
    from tests.pdf_builder import image_pdf, text_pdf

    page = webui.page
    words = [random_word(8) for _ in range(2)]
    scans = [Image.open(io.BytesIO(text_image(f"SCAN {word}"))) for word in words]
    pdf = image_pdf(scans, dpi=100)
    with page.expect_response(_is_ocr_post, timeout=RESULT_TIMEOUT_MS) as answer:
        page.set_input_files("#file", {"name": "scan.pdf", "mimeType": "application/pdf", "buffer": pdf})
    assert answer.value.status == 202  # a document goes as a task, followed by long-polling
    # The bar shows while the task is polled; two small pages read on an idle machine can end
    # before the browser paints it (seen once in CI), so the finished state counts as well.
    page.wait_for_selector("#progress:not([hidden]), body[data-state=done]", timeout=RESULT_TIMEOUT_MS)
    page.wait_for_selector("body[data-state=done], body[data-state=error]", timeout=RESULT_TIMEOUT_MS)
    assert page.get_attribute("body", "data-state") == "done", page.text_content("#message")
    assert page.locator("#progress").is_hidden()
    assert page.locator("#pages section.page").count() == 2
    for number, word in enumerate(words, 1):
        sheet = page.locator(f'#pages section[data-page="{number}"]')
        assert word in (sheet.text_content() or ""), sheet.text_content()  # the text drawn in its box
        assert sheet.locator("polygon.box").count() >= 1
    assert page.locator("#lines li.page-heading").all_text_contents() == ["Page 1", "Page 2"]
    assert page.locator("#pages polygon.box").count() == len(webui.shown_texts())
    # Each page is drawn from its own image (a preview the server rendered), the boxes over it.
    for number in (1, 2):
        picture = page.locator(f'#pages section[data-page="{number}"] .sheet.has-image img.page-image')
        picture.scroll_into_view_if_needed()
        page.wait_for_function(
            "(img) => img.complete && img.naturalWidth > 0", arg=picture.element_handle(), timeout=RESULT_TIMEOUT_MS
        )
        shown = picture.bounding_box()
        drawn = page.locator(f'#pages section[data-page="{number}"] svg.overlay').bounding_box()
        assert shown is not None and drawn is not None
        assert abs(shown["width"] - drawn["width"]) < 2 and abs(shown["height"] - drawn["height"]) < 2
    assert sum("/ocr_service/previews/" in url for url in webui.requests) == 2
    page.hover("#lines li.line >> nth=1")
    assert "active" in (page.get_attribute('#pages polygon[data-index="1"]', "class") or "")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "webui-document.png"), full_page=True)

    # A born-digital PDF: its text layer, and one page that cannot be read says so.
    mixed = text_pdf([["LAYER TEXT"], ["BOMB"]], media_boxes={1: (1_000_000, 1_000_000)})
    webui.upload({"name": "mixed.pdf", "mimeType": "application/pdf", "buffer": mixed})
    page.wait_for_selector("body[data-state=done]", timeout=RESULT_TIMEOUT_MS)
    assert "text layer" in (page.text_content('#pages section[data-page="1"]') or "")
    assert "page_too_large" in (page.text_content('#pages section[data-page="2"]') or "")
    assert webui.page_errors == []
    assert webui.console_errors == []
    assert webui.foreign_requests() == []


def test_a_document_replaced_by_a_new_upload_is_cancelled_on_the_server(webui: PageWatch) -> None:
    # A new upload only stopped following the document: its pages went on taking the workers
    # (a 60-page PDF replaced by another: 503 queue_full for the second).
    from tests.pdf_builder import image_pdf

    page = webui.page
    deletes: list[str] = []
    page.on("request", lambda request: deletes.append(request.url) if request.method == "DELETE" else None)
    pages = [Image.open(io.BytesIO(text_image(f"PAGE {random_word()} {n}"))).resize((1200, 300)) for n in range(30)]
    with page.expect_response(_is_ocr_post, timeout=RESULT_TIMEOUT_MS) as answer:
        page.set_input_files("#file", {"name": "long.pdf", "mimeType": "application/pdf", "buffer": image_pdf(pages)})
    task = answer.value.json()
    assert answer.value.status == 202 and task["status"] != "done"
    page.wait_for_selector("#progress:not([hidden])", timeout=RESULT_TIMEOUT_MS)
    word = random_word()
    webui.upload({"name": "next.png", "mimeType": "image/png", "buffer": text_image(word)})
    assert page.get_attribute("body", "data-state") == "done" and word in " ".join(webui.shown_texts())
    status_url = f"{webui.base_url}{task['status_url']}"
    assert deletes == [status_url]
    view = requests.get(status_url, timeout=30).json()
    assert view["status"] == "failed" and view["error"]["code"] == "cancelled", view
    assert webui.page_errors == []


def test_a_document_replaced_before_its_202_arrives_is_cancelled_on_the_server(webui: PageWatch) -> None:
    # The page gave up the document's upload when a new file was chosen: when the server had
    # made the task already (its 202 still on the way), the page never learnt its id, and the
    # task read every page for nobody.
    from tests.pdf_builder import image_pdf

    page = webui.page
    deletes: list[str] = []
    page.on("request", lambda request: deletes.append(request.url) if request.method == "DELETE" else None)
    held: list[tuple[Any, Any]] = []

    def hold_the_first_answer(route: Any) -> None:
        if route.request.method == "POST" and not held:
            held.append((route, route.fetch()))  # the server has answered; the page has not seen it
        else:
            route.fallback()

    page.route("**/ocr_service", hold_the_first_answer)
    pages = [Image.open(io.BytesIO(text_image(f"PAGE {random_word()} {n}"))).resize((1200, 300)) for n in range(30)]
    page.set_input_files("#file", {"name": "long.pdf", "mimeType": "application/pdf", "buffer": image_pdf(pages)})
    deadline = time.monotonic() + 30
    while not held and time.monotonic() < deadline:
        page.wait_for_timeout(50)
    assert held, "the document's upload never reached the server"
    route, answer = held[0]
    task = answer.json()
    assert answer.status == 202 and task["status"] != "done", task
    word = random_word()
    page.set_input_files("#file", {"name": "next.png", "mimeType": "image/png", "buffer": text_image(word)})
    with contextlib.suppress(Exception):  # (a page that gave the upload up has no request to answer)
        route.fulfill(response=answer)
    page.wait_for_selector("body[data-state=done]", timeout=RESULT_TIMEOUT_MS)
    assert word in " ".join(webui.shown_texts())
    status_url = f"{webui.base_url}{task['status_url']}"
    deadline = time.monotonic() + 10
    while not deletes and time.monotonic() < deadline:
        page.wait_for_timeout(50)
    assert deletes == [status_url]
    view = requests.get(status_url, params={"wait": 30}, timeout=60).json()
    assert view["status"] == "failed" and view["error"]["code"] == "cancelled", view
    assert webui.page_errors == []


def test_a_protected_pdf_asks_for_its_password_and_is_read_with_it(webui: PageWatch) -> None:
    # The server's message named a password field the page did not have.
    from tests.pdf_builder import password_pdf

    page = webui.page
    word = random_word()
    pdf = password_pdf([[f"SECRET {word}"]], user_password="sesame")
    assert page.locator("#password-field").is_hidden()
    webui.upload({"name": "locked.pdf", "mimeType": "application/pdf", "buffer": pdf})
    assert page.get_attribute("body", "data-state") == "error"
    assert "pdf_password_required" in (page.text_content("#message") or "")
    assert page.locator("#password-field").is_visible()
    for password, state in (("wrong", "error"), ("sesame", "done")):
        page.fill("#password", password)
        with page.expect_response(_is_ocr_post, timeout=RESULT_TIMEOUT_MS):
            page.press("#password", "Enter")
        page.wait_for_selector(f"body[data-state={state}]", timeout=RESULT_TIMEOUT_MS)
    assert word in (page.text_content("#pages") or ""), page.text_content("#message")
    assert page.locator("#password-field").is_hidden()
    assert not any("sesame" in url for url in webui.requests)  # in the body, never the URL
    assert webui.page_errors == []


# ---- the page against answers it cannot trust or did not expect (the server is stood in for) ----

HOSTILE = '<img src=x onerror="document.title=1">'


def _line(text: str, top: int) -> dict[str, Any]:
    return {"text": text, "confidence": 0.9, "box": [[5, top], [200, top], [200, top + 10], [5, top + 10]]}


def _answer_with(page: Any, body: Any, status: int = 200, headers: dict[str, str] | None = None) -> None:
    """Every POST /ocr_service gets this answer (task polls still reach the server)."""
    text = json.dumps(body)
    page.route(
        "**/ocr_service",
        lambda route: route.fulfill(status=status, headers=headers or {}, content_type="application/json", body=text),
    )


def _choose(page: Any, name: str = "a.png", data: bytes | None = None, mime: str = "image/png") -> None:
    page.set_input_files("#file", {"name": name, "mimeType": mime, "buffer": data or text_image("ROUTED")})
    page.wait_for_selector("body[data-state=done], body[data-state=error]", timeout=30_000)  # no OCR: a local answer


def test_ocr_text_file_names_and_error_messages_show_as_text(webui: PageWatch) -> None:
    page = webui.page
    lines = [_line(f"{HOSTILE} {index}", 10 + 12 * index) for index in range(3)]
    _answer_with(
        page, {"status": "done", "cached": False, "text_lines": lines, "image_size": [210, 60], "det_used": True}
    )
    _choose(page, name=f"{HOSTILE}.png")
    assert webui.shown_texts() == [line["text"] for line in lines]
    assert page.locator("#overlay polygon title").all_text_contents() == [line["text"] for line in lines]
    page.unroute("**/ocr_service")
    _answer_with(page, {"error": {"code": "queue_full", "message": HOSTILE}}, 503, {"Retry-After": "7"})
    _choose(page, name=f"{HOSTILE}.png")
    assert page.text_content("#message") == f"{HOSTILE}.png: {HOSTILE} (HTTP 503, queue_full). Try again in 7 s."
    # Nothing became markup: the page's own picture is its only <img>.
    assert page.locator("img").count() == 1
    assert webui.page_errors == []


def test_a_document_task_that_failed_with_a_503_says_when_to_try_again(webui: PageWatch) -> None:
    page = webui.page
    task_id = "ab" * 16
    _answer_with(page, {"task_id": task_id, "status": "queued", "status_url": f"/ocr_service/tasks/{task_id}"}, 202)
    error = {"code": "queue_timeout", "message": "waited too long", "http_status": 503, "retry_after": 2}
    failed = json.dumps({"task_id": task_id, "status": "failed", "error": error})
    page.route(
        f"**/ocr_service/tasks/{task_id}*",
        lambda route: route.fulfill(status=200, content_type="application/json", body=failed),
    )
    _choose(page, name="doc.pdf", data=b"%PDF-1.4 routed", mime="application/pdf")
    assert page.text_content("#message") == "doc.pdf: waited too long (HTTP 503, queue_timeout). Try again in 2 s."
    assert webui.page_errors == []


def test_an_answer_the_page_cannot_draw_is_an_error_not_busy_for_ever(webui: PageWatch) -> None:
    page = webui.page
    _answer_with(page, {"status": "done", "text_lines": None})  # not what the page expects
    _choose(page)
    assert page.get_attribute("body", "data-state") == "error"
    assert "cannot show the server's answer" in (page.text_content("#message") or "")
    assert webui.page_errors == []


def test_many_pages_of_thousands_of_lines_render(webui: PageWatch) -> None:
    page = webui.page
    pages, per_page = 100, 200  # 20,000 lines: a long text-layer PDF
    body = {
        "status": "done",
        "cached": False,
        "document": {"type": "pdf", "pages": pages},
        "pages": [
            {
                "page": number,
                "image_size": [210, 12 * per_page + 20],
                "source": "layer",
                "timing": {},
                "text_lines": [_line(f"p{number} l{index}", 10 + 12 * index) for index in range(per_page)],
            }
            for number in range(1, pages + 1)
        ],
    }
    _answer_with(page, body)
    # Numbering each list item by hand made Chrome renumber the whole list per item: 20,000
    # lines took minutes; now a few seconds (the wait is generous, for a loaded machine).
    page.set_input_files("#file", {"name": "long.pdf", "mimeType": "application/pdf", "buffer": b"%PDF-1.7\n"})
    page.wait_for_selector("body[data-state=done]", timeout=40_000)
    assert page.locator("#lines li.line").count() == pages * per_page
    assert page.locator("#lines li.page-heading").count() == pages
    page.hover('#lines li.line[data-index="12345"]')
    assert "active" in (page.get_attribute('#pages polygon[data-index="12345"]', "class") or "")
    assert webui.page_errors == []


def test_a_second_upload_cancels_the_first(webui: PageWatch) -> None:
    page = webui.page
    held: list[Any] = []
    failed: list[str] = []
    page.on("requestfailed", lambda request: failed.append(request.url) if _is_ocr_request(request) else None)
    body = {"status": "done", "cached": False, "text_lines": [_line("SECOND", 10)], "image_size": [210, 40]}

    def answer(route: Any) -> None:
        if not held:
            held.append(route)  # the first upload never gets an answer...
        else:
            route.fulfill(status=200, content_type="application/json", body=json.dumps(body))

    page.route("**/ocr_service", answer)
    page.set_input_files("#file", {"name": "first.png", "mimeType": "image/png", "buffer": text_image("FIRST")})
    page.wait_for_function("() => document.body.dataset.state === 'busy'")
    _choose(page, name="second.png")  # ...the second replaces it
    assert webui.shown_texts() == ["SECOND"]
    # The first request was aborted, not left open: the server drops its task if not started.
    for _ in range(100):  # the event may come in just after the answer
        if failed:
            break
        page.wait_for_timeout(50)
    assert held and failed == [held[0].request.url], failed
    page.unroute_all(behavior="ignoreErrors")  # the held route's handler ends here
    assert webui.page_errors == []


def _is_ocr_request(request: Any) -> bool:
    return request.url.endswith("/ocr_service") and request.method == "POST"


def test_a_one_page_tiff_shows_its_text_in_the_boxes(webui: PageWatch) -> None:
    # The browser cannot draw a TIFF: a broken-image icon and empty boxes said nothing.
    page = webui.page
    word = random_word()
    scan = io.BytesIO()
    Image.open(io.BytesIO(text_image(f"TIFF {word}"))).save(scan, format="TIFF")
    webui.upload({"name": "one.tif", "mimeType": "image/tiff", "buffer": scan.getvalue()})
    assert page.get_attribute("body", "data-state") == "done", page.text_content("#message")
    assert page.locator("#pages").is_hidden()  # one page: the answer of an image
    assert page.locator("#image").is_hidden()
    drawn = page.locator("#overlay text").all_text_contents()
    assert drawn == webui.shown_texts() and word in " ".join(drawn), drawn
    assert webui.page_errors == []


def test_a_picture_the_browser_turns_otherwise_than_the_server_shows_its_text_in_the_boxes(webui: PageWatch) -> None:
    # Chromium does not follow an EXIF orientation in a WebP: the picture was squashed into the
    # server's turned size and every box fell on blank paper.
    page = webui.page
    word = random_word()
    upright = Image.open(io.BytesIO(text_image(f"TURNED {word}"))).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned a quarter clockwise: stored turned back
    stored = io.BytesIO()
    upright.transpose(Image.Transpose.ROTATE_90).save(stored, format="WEBP", lossless=True, exif=exif.tobytes())
    answer = webui.upload({"name": "turned.webp", "mimeType": "image/webp", "buffer": stored.getvalue()})
    assert page.get_attribute("body", "data-state") == "done", page.text_content("#message")
    assert answer["image_size"] == list(upright.size)  # the server read it upright
    natural = page.evaluate(
        "[document.getElementById('image').naturalWidth, document.getElementById('image').naturalHeight]"
    )
    if natural == answer["image_size"]:  # a browser that follows the orientation: the picture, as for a JPEG
        assert page.locator("#image").is_visible()
    else:  # Chromium 156 shows it as stored
        assert natural == [upright.height, upright.width]
        assert page.locator("#image").is_hidden()
        drawn = page.locator("#overlay text").all_text_contents()
        assert word in " ".join(drawn).replace(" ", ""), drawn
    assert webui.page_errors == []


def test_a_document_is_followed_through_a_lost_connection(webui: PageWatch) -> None:
    # One failed poll (a dropped connection, then a proxy's 503 while a node restarts) used to
    # end the page's follow with an error although the task went on; now it tries again.
    from tests.pdf_builder import image_pdf

    page = webui.page
    word = random_word(8)
    pdf = image_pdf([Image.open(io.BytesIO(text_image(f"SCAN {word}")))], dpi=100)
    polls: list[str] = []

    def flaky(route: Any) -> None:
        polls.append(route.request.url)
        if len(polls) == 1:
            route.abort("connectionreset")
        elif len(polls) == 2:
            route.fulfill(status=503, content_type="text/html", body="<html>502 Bad Gateway</html>")
        else:
            route.continue_()

    page.route("**/ocr_service/tasks/**", flaky)
    try:
        page.set_input_files("#file", {"name": "scan.pdf", "mimeType": "application/pdf", "buffer": pdf})
        page.wait_for_selector("body[data-state=done], body[data-state=error]", timeout=RESULT_TIMEOUT_MS)
        assert page.get_attribute("body", "data-state") == "done", page.text_content("#message")
        assert word in " ".join(webui.shown_texts())
        assert len(polls) >= 3
    finally:
        page.unroute_all(behavior="ignoreErrors")
    assert webui.page_errors == []


def test_a_server_that_never_answers_ends_in_an_error_not_busy_for_ever(webui: PageWatch) -> None:
    # A frozen server (or a proxy holding the connection) left the page busy until reloaded:
    # the upload now gives up after the page's answer timeout, and a silent task poll is
    # tried again and then given up on the same way. The page's clock is run forward.
    from tests.pdf_builder import image_pdf

    page = webui.page
    page.clock.install()
    page.reload()
    page.wait_for_selector("body[data-state=idle]")
    held: list[Any] = []
    page.route("**/ocr_service", lambda route: held.append(route))  # never answered
    try:
        page.set_input_files("#file", {"name": "a.png", "mimeType": "image/png", "buffer": text_image("HELD")})
        page.wait_for_function("() => document.body.dataset.state === 'busy'")
        page.clock.run_for(590_000)
        assert page.get_attribute("body", "data-state") == "busy"  # the server may still answer
        page.clock.run_for(20_000)
        page.wait_for_selector("body[data-state=error]", timeout=10_000)
        assert "no answer within 600 s" in (page.text_content("#message") or "")
        assert len(held) == 1

        # A document's polls: each silent one is lost after 30 s, tried again, then given up.
        page.unroute("**/ocr_service")
        page.route("**/ocr_service/tasks/**", lambda route: held.append(route))
        pdf = image_pdf([Image.open(io.BytesIO(text_image("POLLED")))], dpi=100)
        page.set_input_files("#file", {"name": "scan.pdf", "mimeType": "application/pdf", "buffer": pdf})
        page.wait_for_function("() => document.body.dataset.state === 'busy'")
        with page.expect_request("**/ocr_service/tasks/**", timeout=RESULT_TIMEOUT_MS):
            pass
        for _ in range(4):
            page.clock.run_for(40_000)
            page.wait_for_timeout(100)
        page.wait_for_selector("body[data-state=error]", timeout=10_000)
        message = page.text_content("#message") or ""
        assert "no answer within 30 s" in message and "the task may still finish" in message, message
        assert len(held) == 1 + 4  # the upload, then the first poll and its three retries
    finally:
        page.unroute_all(behavior="ignoreErrors")
    assert webui.page_errors == []
