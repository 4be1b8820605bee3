"""The typed records the cache layer keeps and shares: OCR results and task views."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# An engine's answer as the API returns it (text_lines, image_size, timing...): the engine's own
# JSON shape, kept as it is rather than re-modelled here.
Result = dict[str, Any]

FINISHED = ("done", "failed")


@dataclass(frozen=True)
class ErrorInfo:
    code: str
    message: str


@dataclass(frozen=True)
class TaskView:
    """What a poll of a fire-and-forget task answers, and what a shared store keeps of it."""

    task_id: str
    status: str  # queued | running | done | failed
    image_hash: str
    result: Result | None = None
    cached: bool = False
    error: ErrorInfo | None = None
    # Documents (PDF, multi-page TIFF) only: progress; None while the page count is unknown.
    is_document: bool = False
    pages_done: int | None = None
    pages_total: int | None = None

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    def status_json(self) -> dict[str, Any]:
        """What a poll answers while the task is not done (documents: with their progress)."""
        body: dict[str, Any] = {"task_id": self.task_id, "status": self.status, "image_hash": self.image_hash}
        if self.is_document:
            body["pages_done"] = self.pages_done
            body["pages_total"] = self.pages_total
        return body

    def to_json(self) -> dict[str, Any]:
        body = self.status_json()
        if self.result is not None:
            body["result"] = self.result
            body["cached"] = self.cached
        if self.error is not None:
            body["error"] = {"code": self.error.code, "message": self.error.message}
        return body

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> TaskView:
        error = body.get("error")
        return cls(
            task_id=body["task_id"],
            status=body["status"],
            image_hash=body["image_hash"],
            result=body.get("result"),
            cached=bool(body.get("cached", False)),
            error=ErrorInfo(error["code"], error["message"]) if error else None,
            is_document="pages_total" in body,
            pages_done=body.get("pages_done"),
            pages_total=body.get("pages_total"),
        )
