"""Documents in the worker: a PDF's page count and text layer (the probe), one page's pixels.

The parent sends the whole document with each task and says which page; the last PDF
opened stays open here (keyed by its sha256), so the pages of one document that land on
this worker are parsed once.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from .errors import ImageDecodeError, ImageError
from .image_io import decode_image
from .pdf import (
    RenderLimits,
    check_page_count,
    open_pdf,
    page_fingerprint,
    page_problem,
    render_page,
    rendered_size,
    text_layer,
)

_open_pdf: tuple[str, Any] | None = None  # (sha256, PdfDocument) of the last PDF read here


def _document(data: bytes, doc_hash: str) -> Any:
    global _open_pdf
    if _open_pdf is not None and _open_pdf[0] == doc_hash:
        return _open_pdf[1]
    if _open_pdf is not None:
        _open_pdf[1].close()
        _open_pdf = None
    document = open_pdf(data)
    _open_pdf = (doc_hash, document)
    return document


def limits_of(spec: dict[str, Any]) -> RenderLimits:
    return RenderLimits(dpi=float(spec["dpi"]), max_side=int(spec["max_side"]), max_pixels=int(spec["max_pixels"]))


def _error(exc: ImageError) -> dict[str, str]:
    return {"code": exc.code, "message": str(exc)}


def probe_pdf(data: bytes, spec: dict[str, Any]) -> dict[str, Any]:
    """Page count (refused past max_pages), each page's pixel size, and its text layer when
    pdf_text asks for it (auto: only a page with real text)."""
    document = _document(data, spec["hash"])
    count = len(document)
    check_page_count(count, int(spec["max_pages"]))
    limits = limits_of(spec)
    mode = spec.get("pdf_text", "auto")
    pages = []
    for index in range(count):
        info: dict[str, Any] = {"image_size": None, "layer": None, "error": None, "fingerprint": None}
        try:
            page = document[index]
        except Exception as exc:  # noqa: BLE001 - PDFium says only that the page failed to load
            info["error"] = _error(ImageDecodeError(f"page {index + 1} cannot be read: {exc}"))
            info["error"]["code"] = "corrupt_document"
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
                    lines, real = text_layer(page, size)
                    if mode == "layer" or real:
                        info["layer"] = lines
                if info["layer"] is None:
                    info["fingerprint"] = _fingerprint(page)
        finally:
            page.close()
        pages.append(info)
    return {"pages_total": count, "pages": pages}


def _fingerprint(page: Any) -> str | None:
    try:
        return page_fingerprint(page)
    except Exception:  # noqa: BLE001 - no content identity: the page is keyed by its number
        return None


def page_pixels(data: bytes, spec: dict[str, Any], max_pixels: int, min_side: int) -> np.ndarray:
    """One page of a PDF or multi-page TIFF as a BGR array."""
    index = int(spec["index"])
    if spec["kind"] == "tiff":
        return decode_image(data, max_pixels=max_pixels, min_side=min_side, frame=index)
    document = _document(data, spec["hash"])
    if not 0 <= index < len(document):
        raise ImageDecodeError(f"the PDF has no page {index + 1}")
    page = document[index]
    try:
        pixels, _ = render_page(page, limits_of(spec))
    finally:
        page.close()
    return pixels


def run_probe(data: bytes, spec: dict[str, Any]) -> dict[str, Any]:
    started = time.perf_counter()
    result = probe_pdf(data, spec)
    result["timing"] = {"probe": round((time.perf_counter() - started) * 1000, 2)}
    return result
