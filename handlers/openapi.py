"""GET /openapi.json: an OpenAPI 3.0 description of every endpoint.

The spec is built in Python rather than kept as a JSON file so that the enumerations
(detection modes, boolean words, error codes) come from the code that enforces them.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from handlers.base import JsonHandler
from handlers.errors import STATUS_BY_CODE
from handlers.request_parsing import (
    DEFAULT_DET,
    DET_MODES,
    FALSE_WORDS,
    MAX_TASK_WAIT_S,
    PDF_TEXT_MODES,
    TRUE_WORDS,
)
from models.options import PRECISIONS

API_VERSION = "0.1.0"
JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json_content(schema: dict[str, Any]) -> dict[str, Any]:
    return {JSON: {"schema": schema}}


# Codes only a task poll answers (the state of a task another node runs, in Redis).
POLL_ONLY_CODES = frozenset({"node_lost", "store_unavailable"})


def _codes_for(status: int) -> list[str]:
    """The codes of this status that POST /ocr_service may answer."""
    return sorted(
        code for code, code_status in STATUS_BY_CODE.items() if code_status == status and code not in POLL_ONLY_CODES
    )


# Error codes POST /ocr_service raises itself, by status; engine and pool codes are
# added from STATUS_BY_CODE so a new one there shows up here without an edit.
OCR_HANDLER_ERROR_CODES: dict[int, list[str]] = {
    400: [
        "malformed_body",
        "invalid_field",
        "duplicate_field",
        "missing_field",
        "unsupported_content_type",
        "empty_file",
        "invalid_filename",
        "not_a_file",
        "unreadable_file",
    ],
    403: ["forbidden_path"],
    404: ["file_not_found"],
    413: ["body_too_large", "file_too_large"],
    415: ["unsupported_content_type"],
    500: ["internal_error"],
    503: ["server_busy"],
}

OCR_ERROR_MEANINGS = {
    400: "Malformed or incomplete request, or an unusable `filename`.",
    403: "`filename` lies outside the folders this server may read (`web_server.allowed_roots`).",
    404: "`filename` names no file.",
    413: "The body, the file, the decoded image (pixels, or a side over 65,535 px), a document's page count "
    "(`documents.max_pdf_pages`) or a PDF page's size is larger than the limits.",
    415: "Neither a supported request encoding nor a decodable image or document (an encrypted or corrupt PDF).",
    422: "The image decodes but is too small to read, or a password-protected PDF came without its password "
    "or with a wrong one.",
    500: "The OCR worker failed on this image.",
    503: "Overloaded (queue full, or the task could not start within `ocr.process.task_timeout`),"
    " no worker ready, or shutting down: retry after `Retry-After` seconds.",
    504: "The OCR task ran longer than `ocr.process.task_timeout` on its worker.",
}


def _error_response(status: int, meaning: str, codes: list[str], retry_after: bool = False) -> dict[str, Any]:
    description = meaning + (f" Error codes: {', '.join(codes)}." if codes else "")
    response: dict[str, Any] = {"description": description, "content": _json_content(_ref("Error"))}
    if retry_after:
        response["headers"] = {
            "Retry-After": {
                "description": "Seconds to wait before retrying.",
                "required": True,
                "schema": {"type": "integer", "minimum": 0},
            }
        }
    return response


def _schemas() -> dict[str, Any]:
    number_or_null = {"type": "number", "nullable": True}
    result_properties: dict[str, Any] = {
        "task_id": {"type": "string"},
        "status": {"type": "string", "enum": ["done"]},
        "image_hash": {"type": "string", "pattern": "^[0-9a-f]{64}$", "description": "SHA-256 of the image bytes."},
        "cached": {"type": "boolean", "description": "True when the result came from the cache."},
        "text_lines": {"type": "array", "items": _ref("TextLine"), "description": "In reading order."},
        "image_size": {
            "type": "array",
            "items": {"type": "integer", "minimum": 0},
            "minItems": 2,
            "maxItems": 2,
            "description": "[width, height] of the decoded, EXIF-upright image.",
        },
        "det_used": {"type": "boolean", "nullable": True, "description": "Whether text detection ran."},
        "timing": _ref("Timing"),
    }
    task_status = {"type": "string", "enum": ["queued", "running", "done", "failed"]}
    pages_count = {"type": "integer", "minimum": 0, "nullable": True}
    document_properties: dict[str, Any] = {
        "task_id": {"type": "string"},
        "status": {"type": "string", "enum": ["done"]},
        "image_hash": {**result_properties["image_hash"], "description": "SHA-256 of the document's bytes."},
        "document_hash": {"type": "string", "pattern": "^[0-9a-f]{64}$", "description": "The same SHA-256."},
        "cached": result_properties["cached"],
        "document": {
            "type": "object",
            "properties": {
                "type": {"type": "string", "enum": ["pdf", "tiff"]},
                "pages": {"type": "integer"},
                "password_protected": {
                    "type": "boolean",
                    "description": "Present (true) when the PDF was opened with its `password`.",
                },
            },
        },
        "pages_done": {"type": "integer", "minimum": 0},
        "pages_total": {"type": "integer", "minimum": 0},
        "pages_failed": {"type": "integer", "minimum": 0},
        "pages": {"type": "array", "items": _ref("DocumentPage"), "description": "In page order."},
        "timing": _ref("Timing"),
    }
    return {
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["code", "message"],
                    "properties": {
                        "code": {"type": "string", "description": "Stable machine-readable code."},
                        "message": {"type": "string", "description": "For people; may change."},
                    },
                }
            },
        },
        "TextLine": {
            "type": "object",
            "required": ["text", "confidence", "box"],
            "properties": {
                "text": {"type": "string"},
                "confidence": {"type": "number", "minimum": 0, "maximum": 1},
                "box": {
                    "type": "array",
                    "description": "Four [x, y] corners in image pixels, clockwise from top-left.",
                    "minItems": 4,
                    "maxItems": 4,
                    "items": {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2},
                },
            },
        },
        "Timing": {
            "type": "object",
            "description": "Milliseconds per stage; `queue_wait` is left out of cached results.",
            "properties": {
                name: number_or_null for name in ("decode", "det", "cls", "rec", "total", "queue_wait", "request")
            },
            "additionalProperties": number_or_null,
        },
        "DocumentPage": {
            "type": "object",
            "required": ["page", "image_size"],
            "description": "One page: its lines (`source` says whether from OCR or the PDF's text layer), or "
            "the `error` that page alone got (the other pages are still read).",
            "properties": {
                "page": {"type": "integer", "minimum": 1},
                "image_size": {**result_properties["image_size"], "nullable": True},
                "text_lines": result_properties["text_lines"],
                "source": {"type": "string", "enum": ["ocr", "layer"]},
                "cached": {"type": "boolean"},
                "det_used": result_properties["det_used"],
                "timing": _ref("Timing"),
                "preview": {
                    "type": "object",
                    "required": ["url", "size", "scale"],
                    "description": "With `page_images=true`: a JPEG of the page (longest side at most 1100 px).",
                    "properties": {
                        "url": {"type": "string", "description": "GET it: `/ocr_service/previews/<token>`."},
                        "size": {**result_properties["image_size"], "description": "[width, height] of the JPEG."},
                        "scale": {"type": "number", "description": "JPEG pixels per page pixel: box x scale."},
                    },
                },
                "error": {
                    "type": "object",
                    "required": ["code", "message", "http_status"],
                    "properties": {
                        "code": {"type": "string"},
                        "message": {"type": "string"},
                        "http_status": {"type": "integer"},
                    },
                },
            },
        },
        "DocumentResult": {
            "type": "object",
            "description": "A PDF or multi-page TIFF, page by page.",
            "required": ["task_id", "status", "image_hash", "document_hash", "cached", "pages", "timing"],
            "properties": document_properties,
        },
        "OcrResult": {
            "type": "object",
            "required": ["task_id", "status", "image_hash", "cached", "text_lines", "image_size", "timing"],
            "properties": result_properties,
        },
        "TaskAccepted": {
            "type": "object",
            "description": "A task for `block_flag=false`. An already cached image is `done` at once and "
            "carries the result fields too.",
            "required": ["task_id", "status", "image_hash", "status_url"],
            "properties": {
                **result_properties,
                **document_properties,
                "status": task_status,
                "status_url": {"type": "string"},
                "pages_done": pages_count,
                "pages_total": pages_count,
            },
        },
        "TaskPending": {
            "type": "object",
            "required": ["task_id", "status", "image_hash"],
            "properties": {
                "task_id": {"type": "string"},
                "status": {"type": "string", "enum": ["queued", "running", "failed"]},
                "image_hash": result_properties["image_hash"],
                "pages_done": {**pages_count, "description": "Documents: pages finished so far."},
                "pages_total": {**pages_count, "description": "Documents: pages in all (null until counted)."},
                "error": {
                    "type": "object",
                    "description": "Why a `failed` task failed, with the status a blocking request would have had.",
                    "required": ["code", "message", "http_status"],
                    "properties": {
                        "code": {"type": "string"},
                        "message": {"type": "string"},
                        "http_status": {"type": "integer"},
                        "retry_after": {
                            "type": "integer",
                            "description": "Seconds after which sending the image again may succeed, where a "
                            "blocking request would have had this `Retry-After` (a 503).",
                        },
                    },
                },
            },
        },
        "Readiness": {
            "type": "object",
            "required": ["status", "workers_ready"],
            "properties": {
                "status": {"type": "string", "enum": ["ready", "not_ready"]},
                "workers_ready": {"type": "integer", "minimum": 0},
            },
        },
        "Health": {
            "type": "object",
            "required": ["status", "uptime_s", "engine", "model", "precision", "model_identity", "workers", "queue", "ocr_runs", "cache"],
            "properties": {
                "status": {"type": "string", "enum": ["ok", "degraded"]},
                "uptime_s": {"type": "number"},
                "engine": {"type": "string"},
                "model": {"type": "string", "description": "PP-OCR model family (ocr.predict_system.model)"},
                "precision": {
                    "type": "string",
                    "enum": [p for p in PRECISIONS if p != "auto"],  # "auto" is resolved at start
                    "description": "What the workers compute in (ocr.predict_system.precision; auto resolved)",
                },
                "model_identity": {"type": "string"},
                "workers": {"type": "object", "description": "Pool state: configured, alive, ready, busy, restarts by reason, tasks_retried."},
                "cpus": {
                    "type": "object",
                    "description": "CPUs the server may use (affinity mask, cgroup quota) and each worker's share.",
                    "properties": {
                        "usable": {"type": "integer", "minimum": 1},
                        "threads_per_worker": {"type": "integer", "minimum": 1},
                    },
                },
                "queue": {
                    "type": "object",
                    "properties": {
                        "depth": {"type": "integer"},
                        "capacity": {"type": "integer"},
                        "cancelled": {"type": "integer"},
                        "expired": {"type": "integer"},
                    },
                },
                "ocr_runs": {"type": "integer"},
                "cache": {
                    "type": "object",
                    "description": "Result cache counters and backend; results and finished task records held, "
                    "as a count and as JSON bytes against their budgets (`bytes`, `max_bytes`, `too_large`, "
                    "`tasks_kept`, `tasks_unfinished`, `tasks_bytes`, `tasks_max_bytes`) and the task long polls "
                    "waiting now (`task_polls_waiting`).",
                },
                "documents": {
                    "type": "object",
                    "nullable": True,
                    "description": "Documents in flight and run (and read by another node while this one "
                    "waited), pages read by OCR, from text layers and from the cache, pages waiting for a worker, "
                    "and the page previews kept (`previews`: entries, bytes, max_bytes, evictions).",
                },
                "uploads": {
                    "type": "object",
                    "description": "Request bodies held in memory now, the limit, and uploads refused for it.",
                    "properties": {
                        "buffered_bytes": {"type": "integer", "minimum": 0},
                        "max_buffered_bytes": {"type": "integer"},
                        "refused": {"type": "integer", "minimum": 0},
                    },
                },
            },
        },
    }


def _ocr_request_body() -> dict[str, Any]:
    det = {
        "type": "string",
        "enum": list(DET_MODES),
        "default": DEFAULT_DET,
        "description": "`on`: detect text lines (pages); `off`: read the image as one line; `auto`: skip "
        "detection for images shaped like one line. Booleans are accepted as on/off.",
    }
    block_words = sorted(TRUE_WORDS | FALSE_WORDS)
    block_text = {
        "type": "string",
        "default": "true",
        "description": f"`false` answers 202 with a task to poll. Case-insensitive; also {', '.join(block_words)}.",
    }
    pdf_text = {
        "type": "string",
        "enum": list(PDF_TEXT_MODES),
        "default": "auto",
        "description": "PDFs: `layer` answers from each page's own text, `ocr` reads its pixels, `auto` uses "
        "the text layer of pages that have real text and OCRs the scanned ones.",
    }
    page_images = {
        "type": "string",
        "enum": ["true", "false"],
        "default": "false",
        "description": "Documents: also make a small JPEG of each page, linked from the page as `preview`.",
    }
    password = {
        "type": "string",
        "description": "A password-protected PDF's password (never logged or stored). Without it such a "
        "PDF gets 422 `pdf_password_required`; a wrong one 422 `pdf_password_wrong`.",
    }
    file_type = {
        "type": "string",
        "enum": ["file", "filename"],
        "description": "What the request sends; when left out, inferred from the fields present.",
    }
    filename = {
        "type": "string",
        "minLength": 1,
        "description": "Path of an image on the server, inside `web_server.allowed_roots` "
        "(relative paths are resolved from the folder of the server's config.json).",
    }

    def by_filename(block_flag: dict[str, Any]) -> dict[str, Any]:
        """A server-side path request; form and JSON bodies differ only in block_flag's type."""
        return {
            "type": "object",
            "required": ["filename"],
            "properties": {
                "file_type": {**file_type, "enum": ["filename"]},
                "filename": filename,
                "block_flag": block_flag,
                "det": det,
                "pdf_text": pdf_text,
                "page_images": page_images if block_flag is block_text else {"oneOf": [{"type": "boolean"}, page_images]},
                "password": password,
            },
        }

    return {
        "required": True,
        "description": "The image as an upload (multipart) or as a server-side path (any encoding). "
        "The same fields (but `password`) may also be sent in the query string; body fields win.",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "description": "`file` (an upload) or `filename` (a server-side path).",
                    "properties": {
                        "file_type": file_type,
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "The image, a PDF or a multi-page TIFF (`image` is an alias).",
                        },
                        "filename": filename,
                        "block_flag": block_text,
                        "det": det,
                        "pdf_text": pdf_text,
                        "page_images": page_images,
                        "password": password,
                    },
                }
            },
            "application/x-www-form-urlencoded": {"schema": by_filename(block_text)},
            JSON: {
                "schema": by_filename(
                    {"oneOf": [{"type": "boolean"}, block_text], "default": True, "description": block_text["description"]}
                )
            },
        },
    }


def _json_ok(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": _json_content(schema)}


@functools.cache
def build_spec() -> dict[str, Any]:
    ocr_errors = {
        str(status): _error_response(
            status, meaning, sorted(set(OCR_HANDLER_ERROR_CODES.get(status, []) + _codes_for(status))), status == 503
        )
        for status, meaning in OCR_ERROR_MEANINGS.items()
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "OCR web server",
            "version": API_VERSION,
            "description": 'PP-OCR over HTTP. Every error is JSON: `{"error": {"code", "message"}}`.',
        },
        "paths": {
            "/ocr_service": {
                "post": {
                    "operationId": "runOcr",
                    "summary": "Read the text in an image, a PDF or a multi-page TIFF",
                    "requestBody": _ocr_request_body(),
                    "responses": {
                        "200": _json_ok(
                            "The OCR result (`block_flag` true, the default): an image's lines, or a document's pages.",
                            {"oneOf": [_ref("OcrResult"), _ref("DocumentResult")]},
                        ),
                        "202": {
                            **_json_ok("A task to poll at `status_url` (`block_flag=false`).", _ref("TaskAccepted")),
                            "headers": {"Location": {"description": "The task's URL.", "schema": {"type": "string"}}},
                            "links": {
                                "GetTask": {
                                    "operationId": "getTask",
                                    "parameters": {"task_id": "$response.body#/task_id"},
                                }
                            },
                        },
                        **ocr_errors,
                    },
                }
            },
            "/ocr_service/tasks/{task_id}": {
                "get": {
                    "operationId": "getTask",
                    "summary": "Poll a task created with block_flag=false",
                    "parameters": [
                        {
                            "name": "task_id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string", "pattern": "^[0-9a-f]{1,64}$"},
                        },
                        {
                            "name": "wait",
                            "in": "query",
                            "required": False,
                            "description": "Long-poll: wait up to this many seconds for the task to finish before "
                            f"answering (capped at {MAX_TASK_WAIT_S:g}).",
                            "schema": {"type": "number", "minimum": 0, "default": 0},
                        },
                    ],
                    "responses": {
                        "200": _json_ok(
                            "The result once `done`; otherwise the status (and the error of a `failed` task).",
                            {"oneOf": [_ref("OcrResult"), _ref("DocumentResult"), _ref("TaskPending")]},
                        ),
                        "304": {
                            "description": "Not modified: the answer's `ETag` matches `If-None-Match` (a finished "
                            "task's answer does not change)."
                        },
                        "400": _error_response(400, "`wait` is not a number of seconds.", ["invalid_field"]),
                        "404": _error_response(
                            404, "Unknown task id (or one dropped long ago), or a malformed one.", ["task_not_found"]
                        ),
                        "410": _error_response(
                            410,
                            "A finished task whose record this server dropped: expired after `service.time`, or "
                            "pushed out by newer tasks past `service.task_number` / `service.task_bytes`.",
                            ["task_evicted", "task_expired"],
                        ),
                        "503": _error_response(
                            503,
                            "Redis backend: the shared store could not be reached for the whole poll, so the task's "
                            "state is unknown (not gone); poll again.",
                            ["store_unavailable"],
                            retry_after=True,
                        ),
                    },
                },
                "delete": {
                    "operationId": "cancelTask",
                    "summary": "Cancel a task created with block_flag=false",
                    "description": "Its queued work (a document's pages not started) is dropped unless a blocking "
                    "request or another task waits on the same image; a page or image being read is finished and "
                    "cached. The task reads as `failed` with the error `cancelled` from then on. A finished task "
                    "is answered as it is.",
                    "parameters": [
                        {
                            "name": "task_id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string", "pattern": "^[0-9a-f]{1,64}$"},
                        }
                    ],
                    "responses": {
                        "200": _json_ok(
                            "Cancelled (`failed`, error `cancelled`), or the finished task as a poll would answer it.",
                            {"oneOf": [_ref("OcrResult"), _ref("DocumentResult"), _ref("TaskPending")]},
                        ),
                        "202": _json_ok(
                            "Redis backend: another node runs the task and cancels it at its next heartbeat "
                            "(within 5 s); its status until then.",
                            _ref("TaskPending"),
                        ),
                        "404": _error_response(
                            404, "Unknown task id (or one dropped long ago), or a malformed one.", ["task_not_found"]
                        ),
                        "410": _error_response(
                            410,
                            "A finished task whose record this server dropped.",
                            ["task_evicted", "task_expired"],
                        ),
                        "503": _error_response(
                            503,
                            "Redis backend: the shared store could not be reached; nothing was cancelled.",
                            ["store_unavailable"],
                            retry_after=True,
                        ),
                    },
                },
            },
            "/ocr_service/previews/{token}": {
                "get": {
                    "operationId": "getPagePreview",
                    "summary": "A document page's JPEG preview (`page_images=true`)",
                    "parameters": [
                        {
                            "name": "token",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string", "pattern": "^[0-9a-f]{1,64}$"},
                        }
                    ],
                    "responses": {
                        "200": {"description": "The JPEG.", "content": {"image/jpeg": {"schema": {"type": "string"}}}},
                        "404": _error_response(
                            404,
                            "Unknown or malformed token, or the preview was dropped to make room"
                            " (`documents.preview_cache_bytes`).",
                            ["preview_not_found"],
                        ),
                    },
                }
            },
            "/livez": {
                "get": {
                    "operationId": "livez",
                    "summary": "Liveness: the process answers",
                    "responses": {
                        "200": _json_ok(
                            "Alive.",
                            {
                                "type": "object",
                                "required": ["status"],
                                "properties": {"status": {"type": "string", "enum": ["alive"]}},
                            },
                        )
                    },
                }
            },
            "/readyz": {
                "get": {
                    "operationId": "readyz",
                    "summary": "Readiness: at least one OCR worker has its models loaded",
                    "responses": {
                        "200": _json_ok("Ready.", _ref("Readiness")),
                        "503": _json_ok("No worker ready yet (starting) or any more.", _ref("Readiness")),
                    },
                }
            },
            "/health": {
                "get": {
                    "operationId": "health",
                    "summary": "Workers, queue and cache state as JSON",
                    "responses": {"200": _json_ok("The state; `degraded` when no worker is ready.", _ref("Health"))},
                }
            },
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "summary": "Prometheus metrics",
                    "responses": {
                        "200": {
                            "description": "Prometheus text exposition format.",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
            "/": {
                "get": {
                    "operationId": "webui",
                    "summary": "The WebUI: upload an image and see the boxes and text",
                    "responses": {
                        "200": {"description": "The page.", "content": {"text/html": {"schema": {"type": "string"}}}}
                    },
                }
            },
            "/static/{path}": {
                "get": {
                    "operationId": "webuiStatic",
                    "summary": "The WebUI's script and stylesheet",
                    "parameters": [
                        {"name": "path", "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
                    ],
                    "responses": {
                        "200": {"description": "The file.", "content": {"*/*": {"schema": {"type": "string"}}}},
                        "403": _error_response(403, "The path leads out of the static folder.", ["forbidden_path"]),
                        "404": _error_response(404, "No such file.", ["not_found"]),
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document",
                    "responses": {"200": _json_ok("OpenAPI 3.0 document.", {"type": "object"})},
                }
            },
        },
        "components": {"schemas": _schemas()},
    }


@functools.cache
def spec_json() -> str:
    return json.dumps(build_spec(), indent=1)


class OpenApiHandler(JsonHandler):
    endpoint = "/openapi.json"

    def get(self) -> None:
        # No-store from JsonHandler is wrong here: the document changes only with a deploy.
        self.set_header("Cache-Control", "no-cache")
        self.set_header("Access-Control-Allow-Origin", "*")  # so hosted API viewers can read it
        self.finish(spec_json())
