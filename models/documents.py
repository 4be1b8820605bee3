"""Documents in the worker: a PDF's page count and text layer (the probe), one page's pixels.

The parent sends the whole document with each task and says which page; the last PDF
opened stays open here (keyed by its sha256 and the password that opened it), so the pages
of one document that land on this worker are parsed once. With `preview` in the task, a page
also comes back as a small JPEG (the WebUI draws the boxes over it); the "preview" op makes
only that, for a page that needs no OCR.
"""

from __future__ import annotations

import time
from typing import Any

import cv2
import numpy as np

from .errors import DocumentCorruptError, ImageDecodeError, ImageError, TextLayerTooLargeError
from .image_io import decode_image
from .page_identity import FingerprintBudget, page_fingerprint
from .pdf import (
    RenderLimits,
    check_page_count,
    needs_password,
    open_pdf,
    page_problem,
    render_page,
    rendered_size,
    text_layer,
)
from .text_layers import EncodedLayer, LayerBudget

# (sha256, password, PdfDocument) of the last PDF read here. The password is part of the key:
# a task with a wrong one must not read a document another task opened with the right one.
_open_pdf: tuple[str, str | None, Any] | None = None


def _document(data: bytes, spec: dict[str, Any]) -> Any:
    global _open_pdf
    doc_hash, password = spec["hash"], spec.get("password") or None
    if _open_pdf is not None and _open_pdf[:2] == (doc_hash, password):
        return _open_pdf[2]
    _close_open_pdf()
    document = open_pdf(data, password)
    _open_pdf = (doc_hash, password, document)
    return document


def _close_open_pdf() -> None:
    global _open_pdf
    if _open_pdf is not None:
        _open_pdf[2].close()
        _open_pdf = None


def _is_open(spec: dict[str, Any]) -> bool:
    return _open_pdf is not None and _open_pdf[:2] == (spec["hash"], spec.get("password") or None)


def _load_page(data: bytes, spec: dict[str, Any], index: int) -> Any:
    """Page `index` of the PDF, or DocumentCorruptError when PDFium cannot load it.

    In a damaged PDF, PDFium may load a page once and refuse it ever after in the same open
    document (once it was rendered), while a fresh open reads it again: so a page the kept
    document refuses is tried once more in a fresh one (the answer must not depend on what
    this worker read before).
    """
    reused = _is_open(spec)
    try:
        return _document(data, spec)[index]
    except Exception as exc:  # noqa: BLE001 - PDFium says only that the page failed to load
        if not reused:
            raise _unreadable_page(index, exc) from None
    _close_open_pdf()
    try:
        return _document(data, spec)[index]
    except Exception as exc:  # noqa: BLE001
        raise _unreadable_page(index, exc) from None


def _unreadable_page(index: int, exc: Exception) -> DocumentCorruptError:
    return DocumentCorruptError(f"page {index + 1} cannot be read: {exc}")


def limits_of(spec: dict[str, Any]) -> RenderLimits:
    return RenderLimits(dpi=float(spec["dpi"]), max_side=int(spec["max_side"]), max_pixels=int(spec["max_pixels"]))


def _error(exc: ImageError) -> dict[str, str]:
    return {"code": exc.code, "message": str(exc)}


def probe_pdf(data: bytes, spec: dict[str, Any]) -> dict[str, Any]:
    """Page count (refused past max_pages), each page's pixel size, and its text layer when
    pdf_text asks for it (auto: only a page with real text).

    spec["probe_pages"], when given, lists the pages (0-based) to look at, in the answer's
    order: the parent probes page by page a PDF whose whole probe crashed or hung a worker
    ([]: the count only)."""
    count = len(_document(data, spec))
    check_page_count(count, int(spec["max_pages"]))
    limits = limits_of(spec)
    mode = spec.get("pdf_text", "auto")
    pages = []
    budget = FingerprintBudget()  # one deadline for all the pages' fingerprints
    layer_budget = LayerBudget()  # and one bound on all their text layers
    wanted = spec.get("probe_pages")
    for index in range(count) if wanted is None else wanted:
        if not 0 <= index < count:
            raise ImageDecodeError(f"the PDF has no page {index + 1}")
        info: dict[str, Any] = {"image_size": None, "layer": None, "error": None, "fingerprint": None}
        try:
            page = _load_page(data, spec, index)  # (it may open the document afresh)
        except DocumentCorruptError as exc:
            info["error"] = _error(exc)
            pages.append(info)
            continue
        try:
            problem = page_problem(*page.get_size())
            if problem is not None:
                info["error"] = _error(problem)
            else:
                size = rendered_size(page, limits)
                info["image_size"] = list(size)
                if mode != "ocr":
                    try:
                        lines, real = text_layer(page, size, layer_budget)
                    except TextLayerTooLargeError as exc:
                        if mode == "layer":
                            info["error"] = _error(exc)
                        # auto: read by OCR as a scan is (whose answer is bounded)
                    else:
                        if mode == "layer" or real:
                            info["layer"] = lines
                            layer_budget.take_lines(lines)
                if info["layer"] is None and info["error"] is None:
                    info["fingerprint"] = _fingerprint(page, budget)
        finally:
            page.close()
        pages.append(info)
    # Opened with a password: its results must not be answered to a request without it.
    protected = bool(spec.get("password")) and needs_password(_document(data, spec))
    return {"pages_total": count, "pages": pages, "protected": protected}


def _fingerprint(page: Any, budget: FingerprintBudget) -> str | None:
    try:
        return page_fingerprint(page, budget)
    except Exception:  # noqa: BLE001 - no content identity: the page is keyed by its number
        return None


def page_pixels(data: bytes, spec: dict[str, Any], max_pixels: int, min_side: int) -> np.ndarray:
    """One page of a PDF or multi-page TIFF as a BGR array."""
    index = int(spec["index"])
    if spec["kind"] == "tiff":
        return decode_image(data, max_pixels=max_pixels, min_side=min_side, frame=index)
    if not 0 <= index < len(_document(data, spec)):
        raise ImageDecodeError(f"the PDF has no page {index + 1}")
    page = _load_page(data, spec, index)
    try:
        pixels, _ = render_page(page, limits_of(spec))
    finally:
        page.close()
    return pixels


def jpeg_preview(pixels: np.ndarray, preview: dict[str, Any]) -> dict[str, Any]:
    """`pixels` shrunk to at most preview["max_side"] a side, as JPEG bytes and their size."""
    height, width = pixels.shape[:2]
    shrink = min(1.0, int(preview["max_side"]) / max(width, height))
    if shrink < 1.0:
        size = (max(1, round(width * shrink)), max(1, round(height * shrink)))
        pixels = cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)
    ok, encoded = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, int(preview["quality"])])
    if not ok:
        raise ImageDecodeError("the page preview could not be encoded")
    return {"jpeg": encoded.tobytes(), "size": [int(pixels.shape[1]), int(pixels.shape[0])]}


def run_preview(data: bytes, spec: dict[str, Any], max_pixels: int, min_side: int) -> dict[str, Any]:
    """Only a page's preview (its OCR is cached or comes from the text layer): a PDF page is
    rendered small at once, a TIFF page decoded and shrunk."""
    started = time.perf_counter()
    index = int(spec["index"])
    if spec["kind"] == "tiff":
        pixels = decode_image(data, max_pixels=max_pixels, min_side=min_side, frame=index)
        size = [int(pixels.shape[1]), int(pixels.shape[0])]
    else:
        page = _load_page(data, spec, index)
        try:
            limits = limits_of(spec)
            size = list(rendered_size(page, limits))
            pixels, _ = render_page(page, limits, min(1.0, int(spec["preview"]["max_side"]) / max(size)))
        finally:
            page.close()
    preview = jpeg_preview(pixels, spec["preview"])
    return {
        "image_size": size,
        "preview": preview,
        "timing": {"preview": round((time.perf_counter() - started) * 1000, 2)},
    }


def run_probe(data: bytes, spec: dict[str, Any]) -> dict[str, Any]:
    """probe_pdf as a worker answers it: each page's text layer encoded (EncodedLayer)."""
    started = time.perf_counter()
    result = probe_pdf(data, spec)
    for info in result["pages"]:
        if info["layer"] is not None:
            info["layer"] = EncodedLayer.of(info["layer"])
    result["timing"] = {"probe": round((time.perf_counter() - started) * 1000, 2)}
    return result
