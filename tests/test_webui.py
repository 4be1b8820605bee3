"""The WebUI end to end: the real server, Debian's headless Chromium driven by Playwright, real images.

Needs /usr/bin/chromium (`apt-get install chromium`) and `pip install playwright`; never
`playwright install` (no browser download). Locally a missing one skips; under CI it fails.
"""

from __future__ import annotations

import base64
import io
import os
import re
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
    page.wait_for_selector("#progress:not([hidden])", timeout=RESULT_TIMEOUT_MS)
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
