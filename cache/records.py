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

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"task_id": self.task_id, "status": self.status, "image_hash": self.image_hash}
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
        )
