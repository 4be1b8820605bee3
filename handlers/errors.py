"""API errors and how pool/engine failures map onto HTTP status codes."""

from __future__ import annotations

from tornado import web

from ocr_pool import PoolError


class ApiError(web.HTTPError):
    """A failure reported to the client as {"error": {"code", "message"}}.

    An HTTPError, so Tornado answers with its status and logs no traceback; no
    log_message either: the access log line already records the status and code.
    """

    def __init__(self, status: int, code: str, message: str, retry_after: int | None = None) -> None:
        super().__init__(status)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after


# Codes raised by the engine (models.errors) or the pool, and the status each deserves.
STATUS_BY_CODE = {
    "unsupported_image": 415,
    "image_too_large": 413,
    "image_too_small": 422,
    "encrypted_document": 415,
    "corrupt_document": 415,
    "pdf_password_required": 422,
    "pdf_password_wrong": 422,
    "too_many_pages": 413,
    "page_too_large": 413,
    "text_layer_too_large": 413,
    "queue_full": 503,
    "no_worker": 503,
    "shutting_down": 503,
    "cancelled": 503,
    "queue_timeout": 503,
    "node_lost": 503,
    "store_unavailable": 503,
    "task_expired": 410,  # a task poll: the finished task's record was dropped (service.time)
    "task_evicted": 410,  # a task poll: pushed out by newer tasks (service.task_number, task_bytes)
    "timeout": 504,
    "worker_crashed": 500,
    "ocr_failed": 500,
}
RETRY_AFTER_BY_CODE = {"queue_full": 1, "no_worker": 10, "shutting_down": 5, "cancelled": 1, "queue_timeout": 2, "node_lost": 1, "store_unavailable": 2}


def api_error_from_pool(error: PoolError) -> ApiError:
    code = error.code
    return ApiError(STATUS_BY_CODE.get(code, 500), code, error.message, RETRY_AFTER_BY_CODE.get(code))


def error_body(code: str, message: str) -> dict[str, dict[str, str]]:
    return {"error": {"code": code, "message": message}}
