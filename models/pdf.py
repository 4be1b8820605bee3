"""PDF pages as pixels and as text, with pypdfium2 (PDFium; Apache-2.0 / BSD-3).

Runs in the worker processes only: PDFium is native code reading untrusted bytes, so a
crash or a hang costs one worker (which the pool replaces), never the server.
"""

from __future__ import annotations

import ctypes
import math
import re
import sys
import unicodedata
from array import array
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import repeat
from typing import Any

import numpy as np

from .errors import (
    DocumentCorruptError,
    DocumentEncryptedError,
    ImageDecodeError,
    PageTooLargeError,
    PasswordRequiredError,
    PasswordWrongError,
    TooManyPagesError,
)
from .image_io import sniff_kind, unreadable_message
from .text_layers import LayerBudget

# The PDF specification's largest page side (200 inches); anything beyond is a page bomb
# or garbage, never paper.
MAX_PAGE_POINTS = 14_400.0
POINTS_PER_INCH = 72.0
# A page "has real text" (pdf_text=auto) with at least this many visible characters, most of
# them printable: a scan's stray OCR fragment or a font without a Unicode map does not count.
MIN_LAYER_CHARS = 3
MIN_GOOD_CHAR_SHARE = 0.9
# Objects visited to count a page's text objects before PDFium lays out its text (that
# layout, not the walk, is what costs: seconds for a page of 10^5 text runs).
MAX_LAYER_WALK = 100_000
TEXT, PATH, IMAGE, SHADING, FORM = 1, 2, 3, 4, 5  # page object types (FPDFPageObj_GetType)
# A text layer's characters as 32-bit Unicode values in the machine's byte order.
_UNICODE_ARRAY = "I" if array("I").itemsize == 4 else "L"
_UNICODE_CODEC = "utf-32-le" if sys.byteorder == "little" else "utf-32-be"
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class RenderLimits:
    """How pages become pixels: DPI, then the longest side and total pixels capped."""

    dpi: float = 200.0
    max_side: int = 4000
    max_pixels: int = 16_000_000

    def scale(self, width_pt: float, height_pt: float) -> float:
        """Pixels per point for a page of this size."""
        scale = self.dpi / POINTS_PER_INCH
        scale = min(scale, self.max_side / max(width_pt, height_pt, 1.0))
        return min(scale, math.sqrt(self.max_pixels / max(width_pt * height_pt, 1.0)))


def open_pdf(data: bytes, password: str | None = None) -> Any:
    """A pypdfium2 PdfDocument, or a typed error saying why the bytes cannot be one.

    The password is handed to PDFium only: it is never part of an error message.
    """
    import pypdfium2 as pdfium
    from pypdfium2 import raw

    try:
        return pdfium.PdfDocument(data, password=password or None)
    except pdfium.PdfiumError as exc:
        code = getattr(exc, "err_code", None)
        if code == raw.FPDF_ERR_PASSWORD and password:
            if _opens_without_password(data):
                # Only an owner password protects it: any password (or none) opens it.
                return pdfium.PdfDocument(data)
            raise PasswordWrongError("the PDF's password is wrong") from None
        if code == raw.FPDF_ERR_PASSWORD:
            raise PasswordRequiredError(
                "the PDF is encrypted (password-protected): send its password in the password field"
            ) from None
        if code == raw.FPDF_ERR_SECURITY:
            raise DocumentEncryptedError("the PDF is encrypted with a security handler that cannot be read") from None
        if code == raw.FPDF_ERR_SUCCESS:
            # PDFium refuses a document without pages but reports no error for it.
            raise DocumentCorruptError("the PDF has no pages") from None
        if not data.startswith(b"%PDF-") and sniff_kind(data) is not None:
            # "%PDF-" only somewhere in the first KiB (as readers allow), and the bytes before
            # it say what the file is (an HTML page quoting it): say that, as for an image.
            raise ImageDecodeError(unreadable_message(data)) from None
        raise DocumentCorruptError(f"corrupt or truncated PDF: {exc}") from None


def _opens_without_password(data: bytes) -> bool:
    import pypdfium2 as pdfium

    try:
        pdfium.PdfDocument(data).close()
    except pdfium.PdfiumError:
        return False
    return True


def needs_password(document: Any) -> bool:
    """Whether the open document is encrypted (it took a password to open, or only has an owner one)."""
    from pypdfium2 import raw

    return int(raw.FPDF_GetSecurityHandlerRevision(document.raw)) >= 0


def check_page_count(count: int, max_pages: int) -> None:
    if count < 1:
        raise DocumentCorruptError("the PDF has no pages")
    if count > max_pages:
        raise TooManyPagesError(f"the document has {count} pages; the limit is max_pdf_pages={max_pages}")


def page_problem(width_pt: float, height_pt: float) -> PageTooLargeError | DocumentCorruptError | None:
    """Why a page of this size cannot be read (None when it can)."""
    if not (math.isfinite(width_pt) and math.isfinite(height_pt)) or width_pt < 1 or height_pt < 1:
        return DocumentCorruptError(f"the page has an invalid size ({width_pt:g} x {height_pt:g} pt)")
    if max(width_pt, height_pt) > MAX_PAGE_POINTS:
        return PageTooLargeError(
            f"the page is {width_pt:g} x {height_pt:g} pt; a side may be at most {MAX_PAGE_POINTS:g} pt (200 in)"
        )
    return None


def render_page(page: Any, limits: RenderLimits, shrink: float = 1.0) -> tuple[np.ndarray, float]:
    """The page as a contiguous uint8 HxWx3 BGR array on white, and the scale used.

    shrink: a fraction of the OCR rendering's size (a preview is drawn smaller directly).
    """
    width, height = page.get_size()
    problem = page_problem(width, height)
    if problem is not None:
        raise problem
    scale = limits.scale(width, height) * shrink
    bitmap = page.render(scale=scale, fill_color=(255, 255, 255, 255), may_draw_forms=True)
    try:
        pixels = bitmap.to_numpy()
        if pixels.ndim == 3 and pixels.shape[2] == 4:  # BGRx / BGRA
            pixels = pixels[:, :, :3]
        if pixels.ndim == 2:  # greyscale bitmap
            pixels = np.repeat(pixels[:, :, None], 3, axis=2)
        return np.ascontiguousarray(pixels), scale
    finally:
        bitmap.close()


def _good_char(char: str) -> bool:
    category = unicodedata.category(char)
    return char != "\ufffd" and category not in ("Cc", "Co", "Cn", "Cs")


def has_real_text(text: str) -> bool:
    visible = good = 0
    for char, count in Counter(text).items():  # each distinct character once: a page has few
        if not char.isspace():
            visible += count
            good += count if _good_char(char) else 0
    if visible < MIN_LAYER_CHARS:
        return False
    return good >= MIN_GOOD_CHAR_SHARE * visible


def _device_box(page: Any, size: tuple[int, int], rect: tuple[float, float, float, float]) -> list[list[int]]:
    """A text rectangle (page points) as four pixel corners of the rendered page (rotation included)."""
    from pypdfium2 import raw

    left, bottom, right, top = rect
    x, y = ctypes.c_int(), ctypes.c_int()
    corners = []
    for px, py in ((left, top), (right, top), (right, bottom), (left, bottom)):
        raw.FPDF_PageToDevice(page.raw, 0, 0, size[0], size[1], 0, px, py, x, y)
        corners.append([x.value, y.value])
    # Keep the corners clockwise from the top-left whatever the page rotation made of them.
    xs = sorted(c[0] for c in corners)
    ys = sorted(c[1] for c in corners)
    return [[xs[0], ys[0]], [xs[-1], ys[0]], [xs[-1], ys[-1]], [xs[0], ys[-1]]]


def count_text_objects(page: Any, limit: int, walk_limit: int = MAX_LAYER_WALK) -> tuple[int, bool]:
    """The text objects the page draws (a form's counted each time it is drawn), counting
    stopped past `limit`; and whether the count is complete: False when more than
    `walk_limit` objects of any kind were visited first (a map's paths), which says
    nothing about its text."""
    from pypdfium2 import raw

    texts = visited = 0
    # (form object or None for the page, next child index, child count)
    stack: list[tuple[Any, int, int]] = [(None, 0, raw.FPDFPage_CountObjects(page.raw))]
    while stack:
        form, index, count = stack.pop()
        if index >= count:
            continue
        stack.append((form, index + 1, count))
        obj = raw.FPDFPage_GetObject(page.raw, index) if form is None else raw.FPDFFormObj_GetObject(form, index)
        visited += 1
        if visited > walk_limit:
            return texts, False
        kind = raw.FPDFPageObj_GetType(obj)
        if kind == TEXT:
            texts += 1
            if texts > limit:
                return texts, True
        elif kind == FORM:
            stack.append((obj, 0, raw.FPDFFormObj_CountObjects(obj)))
    return texts, True


def text_layer(
    page: Any, size: tuple[int, int], budget: LayerBudget | None = None
) -> tuple[list[dict[str, Any]], bool]:
    """The page's own text as lines with pixel boxes (for a page rendered at `size`), and
    whether it is real text (see has_real_text). TextLayerTooLargeError past the page's
    limits, or past what `budget` (the document's) has left; the caller takes what it uses.

    One line per text rectangle PDFium reports (a run of characters of one text object), its
    text the run's own characters. The work is linear in the page's characters: PDFium's text
    by rectangle (FPDFText_GetBoundedText) scans every character of the page for each
    rectangle, which made a page of thousands of short text objects (a dense spreadsheet)
    cost seconds to a minute."""
    from pypdfium2 import raw

    budget = budget or LayerBudget()
    max_runs, max_chars = budget.limits()
    texts, complete = count_text_objects(page, max_runs)
    if complete and texts > max_runs:
        # Known before PDFium lays out the page's text (seconds for 10^5 runs); an incomplete
        # count (many other objects first) leaves it to the counts below, which bound the answer.
        raise budget.refusal("text objects", f"more than {max_runs}", max_runs)
    textpage = page.get_textpage()
    try:
        chars = textpage.count_chars()
        if chars <= 0:
            return [], False
        if chars > max_chars:
            raise budget.refusal("characters", chars, max_chars)
        run_count = textpage.count_rects()
        if run_count > max_runs:
            raise budget.refusal("runs of text", run_count, max_runs)
        rects = [textpage.get_rect(index) for index in range(run_count)]
        handle = textpage.raw
        ends = _run_ends(raw, handle, chars, len(rects))
        # Each character's Unicode value (0: none), the one native call per character.
        codes = array(_UNICODE_ARRAY, map(raw.FPDFText_GetUnicode, repeat(handle, chars), range(chars)))
        runs = (
            (rect, _decode_run(codes[start:end]))
            for rect, start, end in zip(rects, [0, *ends], ends)
            if rect[2] > rect[0] and rect[3] > rect[1]  # else no visible character: PDFium's empty rectangle
        )
        lines, texts = layer_lines(page, size, runs)
        return lines, has_real_text(" ".join(texts))
    finally:
        textpage.close()


def layer_lines(
    page: Any, size: tuple[int, int], runs: Iterable[tuple[tuple[float, float, float, float], str]]
) -> tuple[list[dict[str, Any]], list[str]]:
    """Text-layer lines (API dicts, top to bottom, pixel boxes of a page rendered at `size`)
    from (rectangle in page points, text) runs, line breaks made spaces and empty runs left
    out; and the lines' texts in the runs' order."""
    lines = []
    texts = []
    for rect, run in runs:
        text = run.replace("\r", " ").replace("\n", " ").strip()
        if not text:
            continue
        texts.append(text)
        lines.append({"text": text, "confidence": 1.0, "box": _device_box(page, size, rect)})
    lines.sort(key=lambda line: (line["box"][0][1], line["box"][0][0]))
    return lines, texts


def _decode_run(codes: array) -> str:
    """A run's characters from PDFium's per-character values: UTF-16 units, so a character
    past U+FFFF (mathematical letters, emoji, rare CJK) comes as two surrogate halves, joined
    here; a value that is no character (0, or past U+10FFFF) is dropped."""
    try:
        text = codes.tobytes().decode(_UNICODE_CODEC, "surrogatepass")
    except UnicodeDecodeError:  # a value past U+10FFFF
        text = "".join(chr(code) for code in codes if code <= 0x10FFFF)
    text = text.replace("\0", "")
    if _SURROGATE.search(text):
        text = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return text


def _run_ends(raw: Any, handle: Any, chars: int, runs: int) -> list[int]:
    """Where each of the page's `runs` text rectangles ends: the character index after its
    last character (the characters PDFium leaves out of rectangles go with the run before).

    FPDFText_CountRects(start, n) counts the runs among n characters from `start` in one pass
    over them (natively), so a run starting at `start` is the largest n that counts one run:
    found by galloping from the previous run's length (lines of a page tend to be alike), then
    bisecting. Each probe scans at most about twice the longer of the two runs, and a run
    takes a few probes plus twice the log of how far its length is from the guess."""
    count = raw.FPDFText_CountRects
    ends = []
    start = 0
    guess = 1
    for _ in range(runs - 1):
        rest = chars - start
        if rest < 2:
            break
        low, high = 1, rest  # count(start, low) == 1 and count(start, high) > 1: more runs follow
        probe = min(guess, high - 1)
        if count(handle, start, probe) == 1:
            low, step = probe, 1
            while low + step < high:
                if count(handle, start, low + step) != 1:
                    high = low + step
                    break
                low += step
                step *= 2
        else:
            high, step = probe, 1
            while high - step > low:
                if count(handle, start, high - step) == 1:
                    low = high - step
                    break
                high -= step
                step *= 2
        while high - low > 1:
            middle = (low + high) // 2
            if count(handle, start, middle) == 1:
                low = middle
            else:
                high = middle
        start += low
        guess = low
        ends.append(start)
    ends.append(chars)
    return ends


def rendered_size(page: Any, limits: RenderLimits) -> tuple[int, int]:
    """The pixel size render_page gives this page, /Rotate included (PDFium rounds up)."""
    width, height = page.get_size()
    scale = limits.scale(width, height)
    return math.ceil(width * scale), math.ceil(height * scale)
