"""How much text a PDF's text layers may answer: per page and per document.

A text layer is bounded as OCR is (the detector keeps at most 1000 lines a page): 5 KB of
nested forms drew 10^5 text runs a page, 8 MB of answer a page, encoded on the event loop.
A dense real page has a few thousand runs (a spreadsheet of 3000 cells). Light (no PDFium,
no numpy): the parent applies the document's bound to pages probed one task each.

A worker sends each page's layer back already encoded (EncodedLayer): rebuilt as Python
objects in the parent, the runs of a document at its bound (300,000, 9 KB of PDF) held the
event loop for 1.5-3 s; as bytes they cost it a copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from .errors import TextLayerTooLargeError

MAX_LAYER_RUNS = 10_000  # a page's text runs (its answer's lines)
MAX_LAYER_CHARS = 100_000
# All the pages of one document together: 100 pages of dense print (10,000 characters in 90
# runs each) or of a 3000-cell spreadsheet fit; the answer stays within ~30 MB of JSON.
MAX_DOCUMENT_LAYER_RUNS = 300_000
MAX_DOCUMENT_LAYER_CHARS = 3_000_000


@dataclass(frozen=True)
class EncodedLayer:
    """A page's text layer as its answer's `text_lines` JSON, with the counts its bounds need."""

    json: bytes
    runs: int
    chars: int

    @classmethod
    def of(cls, lines: list[dict[str, Any]]) -> EncodedLayer:
        return cls(orjson.dumps(lines), len(lines), _chars(lines))


def _chars(lines: list[dict[str, Any]]) -> int:
    return sum(len(line["text"]) for line in lines)


class LayerBudget:
    """The runs and characters the text layers of one document's pages may still answer."""

    def __init__(self, runs: int = MAX_DOCUMENT_LAYER_RUNS, chars: int = MAX_DOCUMENT_LAYER_CHARS) -> None:
        self.runs = runs
        self.chars = chars

    def limits(self) -> tuple[int, int]:
        """A page's limits: its own, or what the document has left if less."""
        return min(MAX_LAYER_RUNS, self.runs), min(MAX_LAYER_CHARS, self.chars)

    def refusal(self, what: str, count: int | str, limit: int) -> TextLayerTooLargeError:
        """The error for a page whose layer holds `count` `what`, over `limit` (from limits())."""
        page_limit = MAX_LAYER_RUNS if what != "characters" else MAX_LAYER_CHARS
        if limit >= page_limit:
            over = f"over a page's limit of {limit}"
        else:
            document_limit = MAX_DOCUMENT_LAYER_RUNS if what != "characters" else MAX_DOCUMENT_LAYER_CHARS
            over = f"over the {limit} left of the document's limit of {document_limit} by the pages before it"
        return TextLayerTooLargeError(
            f"the page's text layer holds {count} {what}, {over}; pdf_text=auto or ocr reads such a page by OCR"
        )

    def take(self, runs: int, chars: int) -> None:
        """Count a page's layer, as answered (its runs and characters), against the document's."""
        self.runs -= runs
        self.chars -= chars

    def fits(self, runs: int, chars: int) -> TextLayerTooLargeError | None:
        """None when a page's layer, as answered, fits what is left; else why not."""
        runs_left, chars_left = self.limits()
        if runs > runs_left:
            return self.refusal("runs of text", runs, runs_left)
        if chars > chars_left:
            return self.refusal("characters", chars, chars_left)
        return None

    def take_lines(self, lines: list[dict[str, Any]]) -> None:
        self.take(len(lines), _chars(lines))


def bound_document_layers(pages: list[dict[str, Any]], mode: str) -> None:
    """Apply the document's bound to probed pages in order (in place): a page whose layer
    does not fit what the pages before it left is read by OCR (auto) or fails (layer).
    For pages probed one task each, where no task sees the others' layers."""
    budget = LayerBudget()
    for info in pages:
        layer: EncodedLayer | None = info.get("layer")
        if layer is None:
            continue
        refused = budget.fits(layer.runs, layer.chars)
        if refused is None:
            budget.take(layer.runs, layer.chars)
            continue
        info["layer"] = None
        if mode == "layer":
            info["error"] = {"code": refused.code, "message": str(refused)}
