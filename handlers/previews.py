"""GET /ocr_service/previews/<token>: a document page's JPEG preview (page_images=true)."""

from __future__ import annotations

from handlers.base import JsonHandler
from handlers.context import AppContext
from handlers.errors import ApiError
from handlers.request_parsing import is_hex_id


class PreviewHandler(JsonHandler):
    endpoint = "/ocr_service/previews/{token}"
    ctx: AppContext

    def get(self, token: str) -> None:
        documents = self.ctx.documents
        preview = documents.previews.by_token(token) if documents is not None and is_hex_id(token) else None
        if preview is None:
            raise ApiError(
                404,
                "preview_not_found",
                "no such page preview (unknown, or dropped to make room for newer ones:"
                " send the document again with page_images=true)",
            )
        self.set_header("Content-Type", "image/jpeg")
        # The token names one rendering of one page: it never changes, only disappears.
        self.set_header("Cache-Control", "private, max-age=3600, immutable")
        self.finish(preview.jpeg)
