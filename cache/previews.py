"""JPEG previews of document pages (page_images=true), for GET /ocr_service/previews/<token>.

Kept in this process's memory only, bounded by their bytes: past `max_bytes` the preview
read or stored longest ago is dropped (its URL then answers 404 until the document is sent
again with page_images=true). They are never part of a cached OCR result, so the result
cache's size does not change with them. Each preview is served under a random token, not a
name derived from the document: holding a password-protected PDF does not tell its pages' URLs.
"""

from __future__ import annotations

import collections
import secrets
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Preview:
    jpeg: bytes
    size: tuple[int, int]  # (width, height) of the JPEG
    token: str


class PreviewStore:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.evictions = 0
        self._items: collections.OrderedDict[str, Preview] = collections.OrderedDict()  # by slot
        self._slots: dict[str, str] = {}  # token -> slot

    def get(self, slot: str) -> Preview | None:
        """The preview kept for a document's page (its slot), marked as recently used."""
        preview = self._items.get(slot)
        if preview is not None:
            self._items.move_to_end(slot)
        return preview

    def by_token(self, token: str) -> Preview | None:
        slot = self._slots.get(token)
        return None if slot is None else self.get(slot)

    def put(self, slot: str, jpeg: bytes, size: tuple[int, int]) -> None:
        if len(jpeg) > self.max_bytes:
            return  # larger than the whole store (or the store is off)
        self._drop(slot)
        preview = Preview(jpeg, size, secrets.token_hex(16))
        self._items[slot] = preview
        self._slots[preview.token] = slot
        self.bytes += len(jpeg)
        while self.bytes > self.max_bytes:
            self._drop(next(iter(self._items)))
            self.evictions += 1

    def _drop(self, slot: str) -> None:
        preview = self._items.pop(slot, None)
        if preview is not None:
            self.bytes -= len(preview.jpeg)
            del self._slots[preview.token]

    def stats(self) -> dict[str, Any]:
        return {"entries": len(self._items), "bytes": self.bytes, "max_bytes": self.max_bytes, "evictions": self.evictions}
