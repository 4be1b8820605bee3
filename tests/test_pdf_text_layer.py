"""A born-digital PDF page's text layer (models.pdf.text_layer), read in the test process.

The lines are the ones the page was written with, one per text object, top to bottom, their
boxes on the rendered page; the work is linear in the page's characters (PDFium's text by
rectangle scans the whole page per rectangle: a dense page of thousands of short text
objects took seconds to minutes), checked by counting PDFium's calls, never by the clock.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson
import pytest
from pypdfium2 import raw
from pypdfium2._helpers.textpage import PdfTextPage

from models.documents import _close_open_pdf, probe_pdf, run_probe
from models.errors import TextLayerTooLargeError
from models.pdf import RenderLimits, count_text_objects, has_real_text, open_pdf, rendered_size, text_layer
from models.text_layers import (
    MAX_DOCUMENT_LAYER_RUNS,
    MAX_LAYER_RUNS,
    EncodedLayer,
    LayerBudget,
    bound_document_layers,
)
from multirequest import write_pdf
from tests.conftest import random_word
from tests.pdf_builder import image_pdf, nested_text_forms_pdf, text_pdf


@contextmanager
def first_page(data: bytes, rotate: int = 0) -> Iterator[tuple[Any, tuple[int, int]]]:
    document = open_pdf(data)
    page = document[0]
    try:
        if rotate:
            page.set_rotation(rotate)
        yield page, rendered_size(page, RenderLimits())
    finally:
        page.close()
        document.close()


def texts(lines: list[dict[str, Any]]) -> list[str]:
    return [line["text"] for line in lines]


def assert_on_page(lines: list[dict[str, Any]], size: tuple[int, int]) -> None:
    for line in lines:
        (left, top), (right, top2), (right2, bottom), (left2, bottom2) = line["box"]
        assert (left, right, top) == (left2, right2, top2) and bottom == bottom2
        assert 0 <= left <= right <= size[0] and 0 <= top <= bottom <= size[1], line
        assert line["confidence"] == 1.0


def content_pdf(content: bytes) -> bytes:
    """A one-page PDF drawing `content` (Helvetica as /F1)."""
    return write_pdf(
        [
            b"<< /Type /Catalog /Pages 2 0 R >>",
            b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R /Resources << /Font << /F1 5 0 R >> >> >>",
            b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream",
            b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        ]
    )


@pytest.mark.parametrize("rotate", [0, 90])
def test_a_page_answers_the_lines_it_was_written_with_top_to_bottom(rotate: int) -> None:
    written = [
        f"INVOICE {random_word(6)}",
        "TOTAL 12.50 EUR (incl. VAT) \\ 19%",
        "x",
        "a line of some length, with words, numbers 0123456789 and punctuation: ;!?",
        "ab",
        f"{random_word(3)} {random_word(40)} {random_word(2)}",
    ]
    pages = [written, ["PAGE TWO"]]
    with first_page(text_pdf(pages, font_size=12), rotate) as (page, size):
        lines, real = text_layer(page, size)
    assert real
    assert_on_page(lines, size)
    if rotate:
        # A portrait page turned: its lines run down the landscape image (their order there is
        # the image's top to bottom, not the text's), their boxes upright and on the image.
        assert size[0] > size[1]
        assert sorted(texts(lines)) == sorted(written)
        long_ones = [line["box"] for line in lines if len(line["text"]) > 3]
        assert all(box[2][1] - box[0][1] > box[2][0] - box[0][0] for box in long_ones)
    else:
        assert texts(lines) == written
        tops = [line["box"][0][1] for line in lines]
        assert tops == sorted(tops) and len(set(tops)) == len(tops)
        assert all(line["box"][2][1] - line["box"][0][1] >= 12 for line in lines)  # 12 pt at 200 DPI


def test_lines_of_very_different_lengths_each_keep_their_own_text() -> None:
    # Each run of characters is found from the length of the one before: long after short,
    # short after long, equal lengths, one-character lines.
    lengths = [1, 300, 2, 2, 2, 150, 1, 1, 90, 91, 89, 5, 400, 3, 1]
    written = [f"{index:02d}" + random_word(length) for index, length in enumerate(lengths)]
    with first_page(text_pdf([written], font_size=1)) as (page, size):
        lines, real = text_layer(page, size)
    assert texts(lines) == written and real
    assert_on_page(lines, size)


def test_overlapping_text_objects_each_give_their_own_characters_once() -> None:
    # The TeX logo: a lowered E between T and X, its box overlapping both. By rectangle,
    # each object also took the characters of the others its box touched ("LaTE", "TEX", "EX").
    content = (
        b"BT /F1 24 Tf 72 700 Td (LaT) Tj ET BT /F1 24 Tf 109 694 Td (E) Tj ET BT /F1 24 Tf 122 700 Td (X rules) Tj ET"
    )
    with first_page(content_pdf(content)) as (page, size):
        lines, _real = text_layer(page, size)
    assert texts(lines) == ["LaT", "X rules", "E"]  # top to bottom: the lowered E's box is lower


def test_characters_past_u_ffff_come_whole() -> None:
    # PDFium gives a character past U+FFFF (a mathematical letter from XeLaTeX, an emoji) as
    # two UTF-16 halves, one per character index: both were dropped, and with them the page's
    # claim to real text.
    mapping = b"<41> <D835DC00>\n<42> <D835DC01>\n<43> <0043>\n"
    cmap = (
        b"/CIDInit /ProcSet findresource begin 12 dict begin begincmap /CIDSystemInfo << /Registry (Adobe)"
        b" /Ordering (UCS) /Supplement 0 >> def /CMapName /Adobe-Identity-UCS def /CMapType 2 def"
        b" 1 begincodespacerange <00> <FF> endcodespacerange\n3 beginbfchar\n" + mapping + b"endbfchar endcmap"
        b" CMapName currentdict /CMap defineresource pop end end"
    )
    content = b"BT /F1 24 Tf 72 700 Td (ABC) Tj ET"
    font = b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /ToUnicode 6 0 R >>"
    data = write_pdf(
        [
            b"<< /Type /Catalog /Pages 2 0 R >>",
            b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R /Resources << /Font << /F1 5 0 R >> >> >>",
            b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream",
            font,
            b"<< /Length %d >>\nstream\n" % len(cmap) + cmap + b"\nendstream",
        ]
    )
    with first_page(data) as (page, size):
        lines, real = text_layer(page, size)
    assert texts(lines) == ["\U0001d400\U0001d401C"] and real


def test_a_page_without_text_has_no_lines() -> None:
    from PIL import Image

    with first_page(image_pdf([Image.new("RGB", (200, 100), "white")])) as (page, size):
        assert text_layer(page, size) == ([], False)
    with first_page(content_pdf(b"0 0 1 rg 10 10 100 100 re f")) as (page, size):
        assert text_layer(page, size) == ([], False)


def test_real_text_needs_three_visible_characters_most_of_them_printable() -> None:
    assert has_real_text("ab c") and has_real_text("Total: 12,50 €")
    assert not has_real_text("a b") and not has_real_text("  \n\t ")
    assert not has_real_text("\ufffd\ufffd\ufffdab")  # a font without a Unicode map
    assert has_real_text("x" * 90 + "\x02" * 10) and not has_real_text("x" * 89 + "\x02" * 11)


class Calls:
    """PDFium's text calls made during text_layer: how many of each, and how many characters
    FPDFText_CountRects walked (its work is one pass over the characters it is given)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count: Counter[str] = Counter()
        self.rect_chars = 0
        self.chars = 0
        for name in dir(raw):
            if name.startswith(("FPDFText_", "FPDF_PageToDevice")):
                monkeypatch.setattr(raw, name, self._counted(name, getattr(raw, name)))

        def bounded(*args: Any, **kwargs: Any) -> str:
            raise AssertionError("text by rectangle scans the whole page once per rectangle")

        monkeypatch.setattr(PdfTextPage, "get_text_bounded", bounded)

    def _counted(self, name: str, function: Any) -> Any:
        def counted(*args: Any) -> Any:
            self.count[name] += 1
            result = function(*args)
            if name == "FPDFText_CountChars":
                self.chars = result
            if name == "FPDFText_CountRects":
                _handle, start, count = args
                self.rect_chars += self.chars - start if count < 0 else min(count, self.chars - start)
            return result

        return counted


def dense_page(lines: int) -> tuple[bytes, list[str]]:
    """A spreadsheet-like page: `lines` short text objects (one per line), all on the page."""
    written = [f"r{index} {random_word(1 + index % 7)} {index * 37 % 1000}.{index % 100:02d}" for index in range(lines)]
    return text_pdf([written], font_size=1, media_box=(612, 2 * lines + 200)), written


def test_the_work_is_linear_in_the_page_characters(monkeypatch: pytest.MonkeyPatch) -> None:
    measured = []
    for count in (1500, 3000):
        data, written = dense_page(count)
        with first_page(data) as (page, size):
            calls = Calls(monkeypatch)
            lines, real = text_layer(page, size)
            monkeypatch.undo()
        assert texts(lines) == written and real
        assert_on_page(lines, size)
        assert calls.count["FPDFText_GetBoundedText"] == 0
        # Every character is walked a bounded number of times by the rectangle counts (once for
        # all of them, then a few times around each run's end), never once per rectangle.
        assert calls.rect_chars <= 8 * calls.chars, (calls.rect_chars, calls.chars)
        measured.append((calls.chars, sum(calls.count.values()), calls.rect_chars))
    (chars1, calls1, walked1), (chars2, calls2, walked2) = measured
    assert 1.9 < chars2 / chars1 < 2.2
    # Twice the lines: about twice the native calls and twice the characters walked.
    assert 1.8 < calls2 / calls1 < 2.3, measured
    assert 1.8 < walked2 / walked1 < 2.4, measured


def test_a_page_drawing_more_text_runs_than_a_page_holds_is_refused_before_its_text_is_laid_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A few KB of nested forms drew 10^5 text runs: 8 MB of answer a page, built in seconds.
    data = nested_text_forms_pdf(pages=1, runs=100, fanout=10, levels=3)
    assert len(data) < 10_000
    with first_page(data) as (page, size):
        calls = Calls(monkeypatch)
        with pytest.raises(TextLayerTooLargeError) as refused:
            text_layer(page, size)
        monkeypatch.undo()
    assert refused.value.code == "text_layer_too_large"
    assert f"over a page's limit of {MAX_LAYER_RUNS}" in str(refused.value)
    assert calls.count["FPDFText_LoadPage"] == 0  # PDFium's text layout of it is what costs
    # Under the limit the same construction is read whole.
    with first_page(nested_text_forms_pdf(pages=1, runs=10, fanout=10, levels=2)) as (page, size):
        lines, real = text_layer(page, size)
    assert len(lines) == 1000 and real


def test_the_pages_of_one_document_share_one_bound_on_their_text_layers() -> None:
    data, written = dense_page(3000)
    budget = LayerBudget()
    with first_page(data) as (page, size):
        lines, _ = text_layer(page, size, budget)
        assert texts(lines) == written
        budget.runs = 2000  # as if earlier pages had answered all but 2000 runs
        with pytest.raises(TextLayerTooLargeError) as refused:
            text_layer(page, size, budget)
    message = str(refused.value)
    assert f"over the 2000 left of the document's limit of {MAX_DOCUMENT_LAYER_RUNS}" in message, message


def _lines(count: int, text: str = "cell") -> list[dict[str, Any]]:
    return [{"text": text, "confidence": 1.0, "box": [[0, 0], [1, 0], [1, 1], [0, 1]]} for _ in range(count)]


def test_a_worker_sends_each_text_layer_as_its_answers_json() -> None:
    # Sent as Python objects, the layers of a document at its bound were rebuilt on the event
    # loop (1.6 s); as bytes, the parent splices them into the answer.
    words = [[random_word(), random_word()], [random_word()]]
    spec = {"hash": random_word(), "op": "probe", "max_pages": 10, "pdf_text": "layer", "dpi": 72, "max_side": 2000,
            "max_pixels": 50_000_000}  # fmt: skip
    data = text_pdf(words)
    try:
        expected = [info["layer"] for info in probe_pdf(data, spec)["pages"]]
        sent = [info["layer"] for info in run_probe(data, spec)["pages"]]
    finally:
        _close_open_pdf()
    assert all(isinstance(layer, EncodedLayer) for layer in sent)
    assert [orjson.loads(layer.json) for layer in sent] == expected
    assert [[line["text"] for line in lines] for lines in expected] == words
    assert [(layer.runs, layer.chars) for layer in sent] == [(len(ws), sum(map(len, ws))) for ws in words]


@pytest.mark.parametrize("mode", ["auto", "layer"])
def test_pages_probed_one_task_each_get_the_documents_bound_too(mode: str) -> None:
    # Each page's task sees only its own layer: every page of a full layer was answered when
    # the probe went page by page, past the document's bound that a whole probe keeps.
    count = MAX_DOCUMENT_LAYER_RUNS // MAX_LAYER_RUNS + 2
    pages = [
        {"image_size": [10, 10], "layer": EncodedLayer.of(_lines(MAX_LAYER_RUNS)), "error": None} for _ in range(count)
    ]
    bound_document_layers(pages, mode)
    kept = [page for page in pages if page["layer"] is not None]
    assert len(kept) * MAX_LAYER_RUNS == MAX_DOCUMENT_LAYER_RUNS
    refused = pages[len(kept) :]
    assert all(page["layer"] is None for page in refused)
    if mode == "layer":
        assert all(page["error"]["code"] == "text_layer_too_large" for page in refused)
    else:  # read by OCR instead
        assert all(page["error"] is None for page in refused)


def _paths_and_a_line_pdf(fanout: int, levels: int) -> bytes:
    """One page: nested forms drawing 100 x fanout**levels short paths, and one line of text."""
    strokes = b"".join(b"%d %d m %d %d l S\n" % (i, i, i + 1, i + 1) for i in range(100))
    form = b"<< /Type /XObject /Subtype /Form /BBox [0 0 600 800] /Resources << %s >> /Length %d >>\nstream\n%s\nendstream"
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>", b"", b"", b""]
    objects.append(form % (b"", len(strokes), strokes))  # 6
    for level in range(levels):
        draws = b"".join(b"q 1 0 0 1 %d 0 cm /X Do Q\n" % i for i in range(fanout))
        objects.append(form % (b"/XObject << /X %d 0 R >>" % (6 + level), len(draws), draws))
    top = len(objects)
    content = b"/X Do BT /F1 24 Tf 72 700 Td (HELLO VECTOR WORLD) Tj ET"
    objects[2] = (
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R"
        b" /Resources << /Font << /F1 5 0 R >> /XObject << /X %d 0 R >> >> >>" % top
    )
    objects[3] = b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream"
    objects[4] = b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"
    return write_pdf(objects)


def test_a_drawing_of_many_paths_keeps_its_text_layer() -> None:
    # Past MAX_LAYER_WALK objects the walk stops: that says nothing about the page's text (a
    # map, a CAD drawing), so its few text objects are read as the counts after layout allow.
    with first_page(_paths_and_a_line_pdf(fanout=32, levels=2)) as (page, size):  # 102,400 paths
        assert count_text_objects(page, MAX_LAYER_RUNS) == (0, False)  # past MAX_LAYER_WALK
        lines, real = text_layer(page, size)
    assert texts(lines) == ["HELLO VECTOR WORLD"] and real
