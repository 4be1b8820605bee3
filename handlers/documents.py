"""POST /ocr_service for documents: a PDF, or a TIFF with more than one page.

The event loop only looks at the leading bytes (and walks a TIFF's page chain, header
arithmetic); everything PDFium does runs in the workers (cache.documents).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from cache.documents import DocumentInput, DocumentService
from handlers.errors import STATUS_BY_CODE, ApiError, api_error_from_pool
from handlers.request_parsing import OcrRequest
from models.tiff import TIFF_MAGIC, count_tiff_pages, is_tiff, page_fingerprints
from ocr_pool import PoolError

# PDF readers accept the header anywhere in the first KiB (some generators put junk first)...
PDF_HEADER_WINDOW = 1024
# ... but an image whose metadata happens to hold "%PDF-" stays an image.
IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", *TIFF_MAGIC, b"RIFF", b"BM")  # TIFF: BigTIFF too


def document_kind(data: bytes | bytearray | memoryview, max_pages: int) -> tuple[str, int | None] | None:
    """("pdf", None) or ("tiff", pages) for a document, None for a single image.

    A TIFF with more pages than max_pages is refused here, before any work.
    """
    head = bytes(data[:PDF_HEADER_WINDOW])  # at most 1 KiB; `data` may be a view
    if head.startswith(b"%PDF-") or (b"%PDF-" in head and not head.startswith(IMAGE_MAGIC)):
        return "pdf", None
    if is_tiff(head):
        pages = count_tiff_pages(data if isinstance(data, (bytes, bytearray)) else bytes(data), max_pages)
        if pages > max_pages:
            raise too_many_pages(f"more than {max_pages}", max_pages)
        if pages > 1:
            return "tiff", pages
    return None


def too_many_pages(count: str, max_pages: int) -> ApiError:
    return ApiError(413, "too_many_pages", f"the document has {count} pages; the limit is max_pdf_pages={max_pages}")


def document_body(task_id: str, doc_hash: str, result: dict[str, Any], cached: bool) -> dict[str, Any]:
    """The answer for a finished document: every page in order, each with its lines or its error."""
    pages = []
    for page in result["pages"]:
        page = dict(page)
        if "error" in page:
            page["error"] = {**page["error"], "http_status": STATUS_BY_CODE.get(page["error"]["code"], 500)}
        pages.append(page)
    failed = sum(1 for page in pages if "error" in page)
    return {
        "task_id": task_id,
        "status": "done",
        "image_hash": doc_hash,
        "document_hash": doc_hash,
        "cached": cached,
        "document": dict(result["document"]),
        "pages_done": len(pages),
        "pages_total": len(pages),
        "pages_failed": failed,
        "pages": pages,
        "timing": dict(result.get("timing", {})),
    }


class DocumentAnswers:
    """OcrHandler's document path (a mixin: it uses the handler's finish and release helpers)."""

    ctx: Any
    log_fields: dict[str, Any]
    _computation: Any
    client_gone: bool

    async def answer_document(
        self, request: OcrRequest, data: bytes, doc_hash: str, kind: str, pages: int | None
    ) -> None:
        documents: DocumentService = self.ctx.documents
        params = {"det": request.det, "pdf_text": request.pdf_text if kind == "pdf" else "ocr"}
        doc = DocumentInput(
            kind,
            data,
            doc_hash,
            params,
            pages,
            page_images=request.page_images,
            password=request.password if kind == "pdf" else None,
        )
        if kind == "tiff":
            # Each page's content identity (hashing its stored bytes, in a thread): the same
            # page inside another TIFF is then read from the cache.
            loop = asyncio.get_running_loop()
            doc.fingerprints = await loop.run_in_executor(None, page_fingerprints, data, pages or 1)
        self.log_fields["document"] = kind
        try:
            if not request.block:
                record = await self.submit_counted(lambda: documents.submit_task(doc), data)  # type: ignore[attr-defined]
                if record is not None:
                    self._answer_task(record)  # type: ignore[attr-defined]
                return
            cached = await documents.cached(doc)
            if cached is not None:
                self._finish_result(uuid.uuid4().hex, doc_hash, cached, True, None)  # type: ignore[attr-defined]
                return
            if self.client_gone:
                return  # it left while the pages were fingerprinted or looked up: no run for it
            self._run_payload = data  # type: ignore[attr-defined]
            run = documents.join(doc)
            self._computation = run  # released (and the run cancelled) if the client leaves
            self.log_fields["task_id"] = run.task_id
            try:
                result = await run.future
            finally:
                self._release()  # type: ignore[attr-defined]
            queue_wait = result.get("timing", {}).get("queue_wait")
            self._finish_result(run.task_id, doc_hash, result, False, queue_wait)  # type: ignore[attr-defined]
        except PoolError as exc:
            raise api_error_from_pool(exc) from None
