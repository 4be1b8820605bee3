"""POST /ocr_service and GET /ocr_service/tasks/<id>."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

from tornado import web

from cache import Computation, TaskRecord, TaskView
from cache.documents import DocumentRun
from cache.task_store import DroppedTask
from handlers.answers import new_task_id, splices
from handlers.base import JsonHandler, header_value, refuse_unserved_method, refuse_with_close
from handlers.context import AppContext
from handlers.documents import DocumentAnswers, document_body, document_kind
from handlers.errors import RETRY_AFTER_BY_CODE, STATUS_BY_CODE, ApiError, api_error_from_pool
from handlers.files import open_allowed_file
from handlers.multipart import MultipartParser
from handlers.request_parsing import (
    FIELDS_BODY_LIMIT,
    FIELDS_ONLY_MEDIA_TYPES,
    OcrRequest,
    build_ocr_request,
    feed_multipart,
    fields_body_too_large,
    is_hex_id,
    media_type_of,
    multipart_fields,
    parse_ocr_request,
    parse_wait,
    readable_media_type,
    start_multipart,
    unsupported_content_type,
)
from handlers.upload_budget import UploadBudget
from handlers.upload_hashes import HASH_OFF_LOOP_BYTES
from ocr_pool import PoolError

# Room for multipart boundaries and form fields on top of the image byte limit.
FORM_OVERHEAD_BYTES = 64 * 1024
# Bodies declared larger than this are refused before reading anything; below it an
# oversized body is drained (not buffered) so the client can read a clean 413.
DRAIN_LIMIT_FACTOR = 4


def sha256_hex(data: bytes | bytearray | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def owned(data: bytes | bytearray | memoryview) -> bytes | bytearray:
    """The image as bytes the OCR workers and the document path can take: a view of the
    body chunk (an upload that arrived whole) is copied now, on a miss, and never on a hit."""
    return data.tobytes() if isinstance(data, memoryview) else data


def _give_back_when_all_done(budget: UploadBudget, size: int, futures: list[asyncio.Future[Any]]) -> None:
    """Give `size` bytes back to `budget` once every one of `futures` has ended."""
    remaining = len(futures)

    def one_done(_: asyncio.Future[Any]) -> None:
        nonlocal remaining
        remaining -= 1
        if remaining == 0:
            budget.give_back(size)

    for future in futures:
        future.add_done_callback(one_done)


def result_body(task_id: str, image_hash: str, result: dict[str, Any], cached: bool) -> dict[str, Any]:
    if "pages" in result:
        return document_body(task_id, image_hash, result, cached)
    return {
        "task_id": task_id,
        "status": "done",
        "image_hash": image_hash,
        "cached": cached,
        "text_lines": result["text_lines"],
        "image_size": result["image_size"],
        "det_used": result.get("det_used"),
        "timing": dict(result.get("timing", {})),
    }


@web.stream_request_body
class OcrHandler(DocumentAnswers, JsonHandler):
    endpoint = "/ocr_service"
    ctx: AppContext
    # Class default: on_connection_close may run for requests prepare() never saw (405).
    _computation: Computation | None = None
    _held = 0
    _run_payload: bytes | bytearray | None = None  # the image handed to the run this request waits on
    # Set when the client leaves; checked after each await that comes before a task exists
    # (reading, hashing), when on_connection_close had nothing to release yet.
    client_gone = False

    def prepare(self) -> None:
        self._start = time.perf_counter()
        refuse_unserved_method(self)  # only POST takes a body; the server's limit for others is 64 KiB
        self._chunks: list[bytes] = []
        self._received = 0
        self._too_large = False
        self._over_budget = False
        self._held = 0  # bytes of this body counted against the shared upload budget
        self._computation: Computation | None = None
        # A multipart body is parsed chunk by chunk as it arrives (never joined into one
        # bytes object on the event loop); other bodies are small and buffered.
        self._multipart: MultipartParser | None = None
        self._parse_error: ApiError | None = None
        headers = self.request.headers
        # Each header is looked up once (a cache hit is short enough for lookups to show).
        content_type = header_value(headers, "Content-Type") or ""
        declared = header_value(headers, "Content-Length")
        media_type = media_type_of(content_type)
        if media_type == "multipart/form-data":
            try:
                self._multipart = start_multipart(content_type, headers, declared)
            except ApiError as exc:
                self._parse_error = exc  # answered once the body is drained
        elif not readable_media_type(media_type):
            # Known from the headers: the body is drained, never buffered (it was kept, up to
            # max_body_bytes, and joined on the event loop only to be refused).
            self._parse_error = unsupported_content_type(media_type)
        self._max_bytes = self.ctx.settings.web_server.max_body_bytes
        # An untyped body is read only as JSON (fields, no image): it gets the same limit.
        self._fields_only = not media_type or media_type in FIELDS_ONLY_MEDIA_TYPES
        body_limit = FIELDS_BODY_LIMIT if self._fields_only else self._max_bytes + FORM_OVERHEAD_BYTES
        self._body_limit = body_limit
        self._drain_limit = body_limit * DRAIN_LIMIT_FACTOR
        if declared is not None and "," in declared:
            # The header repeated with one value (as some proxies send it) is that value, as
            # Tornado reads it (RFC 9110, 8.6); different values stay invalid.
            values = {value.strip() for value in declared.split(",")}
            declared = values.pop() if len(values) == 1 else declared
        if declared is not None:
            try:
                declared_bytes = int(declared)
            except ValueError:
                refuse_with_close(self, ApiError(400, "malformed_body", "invalid Content-Length"))
            if declared_bytes > self._drain_limit:
                refuse_with_close(self, self._body_too_large())
            self._too_large = declared_bytes > body_limit
            if (header_value(headers, "Expect") or "").lower() == "100-continue":
                # The client waits for our go-ahead before sending: a request that will fail
                # anyway is answered now, with no body to send and drain.
                if self._too_large:
                    refuse_with_close(self, self._body_too_large())
                if self._parse_error is not None:
                    refuse_with_close(self, self._parse_error)
                if not self.ctx.upload_budget.fits(declared_bytes):
                    busy = ApiError(503, "server_busy", "too many uploads in progress; retry shortly", retry_after=1)
                    refuse_with_close(self, busy)
        if self.request.method == "POST":
            # Room above the drain limit so that a chunked body (no declared length) gets our
            # JSON 413 from data_received, not Tornado's bare 400, when it passes the limit.
            self.request.connection.set_max_body_size(self._drain_limit * 2)

    def _body_too_large(self) -> ApiError:
        if self._fields_only:
            return fields_body_too_large()
        return ApiError(413, "body_too_large", f"the request body exceeds {self._max_bytes} bytes")

    def data_received(self, chunk: bytes) -> None:
        if self._finished:
            return  # answered early; Tornado closes the connection after the answer
        self._received += len(chunk)
        if self._received > self._drain_limit:
            # A chunked body past what we drain: answer now; the connection then closes.
            self._chunks.clear()
            self._multipart = None
            self._give_back()
            error = self._body_too_large()
            self.send_error(error.status_code, exc_info=(type(error), error, None))
            return
        if self._received > self._body_limit:
            self._too_large = True
        if self._parse_error is not None:
            return  # drained to answer the error, not kept: nothing more to count
        if not (self._too_large or self._over_budget) and not self.ctx.upload_budget.take(len(chunk)):
            self._over_budget = True
        if self._too_large or self._over_budget:
            self._chunks.clear()  # keep draining, never buffer an oversized body
            self._multipart = None
            self._give_back()
            return
        self._held += len(chunk)
        if self._multipart is not None:
            try:
                feed_multipart(self._multipart, chunk)
            except ApiError as exc:
                self._parse_error, self._multipart = exc, None  # drain the rest, then answer
                self._give_back()  # what the parser held is let go
        else:
            self._chunks.append(chunk)

    def _give_back(self) -> None:
        self.ctx.upload_budget.give_back(self._held)
        self._held = 0

    async def submit_counted(self, submit: Callable[[], Awaitable[Any]], payload: bytes | bytearray) -> Any:
        """Submit a fire-and-forget task (None when its client already left: nobody to answer).

        It is answered at once, but the run it starts holds its image until the run ends: its
        bytes stay counted in max_buffered_bytes until then (given back with the answer, a
        burst of fire-and-forget uploads was not bounded). They leave the connection's count
        before the submission's awaits, so a client hanging up meanwhile cannot take them back."""
        if self.client_gone:
            return None
        held, self._held = self._held, 0
        budget = self.ctx.upload_budget
        try:
            record = await submit()
        except BaseException:
            budget.give_back(held)
            raise
        run = record.computation
        if run is None or run.payload is not payload or run.future.done():
            budget.give_back(held)  # a cached result, or a run of the image another request started
        else:
            _give_back_when_all_done(budget, held, [run.future])
        return record

    def _count_until_run_ends(self, run: Computation | DocumentRun) -> None:
        """A blocking request leaving a run it started that goes on without it: its bytes
        stay counted while anything still holds them, not only until its answer. The run
        itself while it goes on (a fire-and-forget request joined it); else its pool jobs
        that still hold them (a worker reading the image, a document's probe or pages), which
        release() could not cancel (release forgets a run it cancelled: payload None)."""
        if self._run_payload is None or self._held == 0:
            return
        if run.payload is self._run_payload and not run.future.done():
            holding = [run.future]
        else:
            holding = [
                job.future
                for job in run.jobs()
                if job.payload is not None and job.payload is self._run_payload and not job.future.done()
            ]
        if not holding:
            return
        held, self._held = self._held, 0
        _give_back_when_all_done(self.ctx.upload_budget, held, holding)

    def on_finish(self) -> None:
        self._give_back()

    async def post(self) -> None:
        if self._too_large:
            raise self._body_too_large()
        if self._over_budget:
            raise ApiError(503, "server_busy", "too many uploads in progress; retry shortly", retry_after=1)
        if self._parse_error is not None:
            raise self._parse_error
        if self._multipart is not None:
            parser, self._multipart = self._multipart, None
            request = build_ocr_request(*multipart_fields(parser), self.request.query_arguments)
        else:
            body = b"".join(self._chunks)
            self._chunks = []
            request = parse_ocr_request(
                self.request.headers.get("Content-Type", ""), body, self.request.query_arguments, self.request.headers
            )
        if request.file_type == "file":  # an upload: no coroutine to make and await
            assert request.file_body is not None
            image_bytes = request.file_body
        else:
            image_bytes = await self._read_file(request)
        if not image_bytes:
            raise ApiError(400, "empty_file", "the image is empty (0 bytes)")
        if len(image_bytes) > self._max_bytes:
            raise ApiError(413, "file_too_large", f"the image exceeds {self._max_bytes} bytes")
        if len(image_bytes) > HASH_OFF_LOOP_BYTES:
            # hashlib releases the GIL: a big image is hashed without stalling the loop.
            loop = asyncio.get_running_loop()
            image_hash = await loop.run_in_executor(None, sha256_hex, image_bytes)
        else:
            image_hash = self.ctx.upload_hashes.sha256_hex(image_bytes)
        self.log_fields["image_hash"] = image_hash[:12]
        document = document_kind(image_bytes, self.ctx.settings.documents.max_pdf_pages)
        if document is not None:
            await self.answer_document(request, owned(image_bytes), image_hash, *document)
            return
        params = {"det": request.det}
        key = self.ctx.ocr.cache_key(image_hash, params)
        try:
            if request.block:
                await self._answer_blocking(key, image_hash, image_bytes, params)
            else:
                payload = owned(image_bytes)
                record = await self.submit_counted(
                    lambda: self.ctx.ocr.submit_task(key, image_hash, payload, params), payload
                )
                if record is not None:
                    self._answer_task(record)
        except PoolError as exc:
            raise api_error_from_pool(exc) from None

    async def _read_file(self, request: OcrRequest) -> bytes:
        """The image a `filename` request names, read off the event loop."""
        assert request.filename is not None
        loop = asyncio.get_running_loop()
        settings = self.ctx.settings
        opened = await loop.run_in_executor(
            None, open_allowed_file, request.filename, settings.base_dir, self.ctx.allowed_roots, self._max_bytes
        )
        # A file read into memory counts against the same budget as an upload: a burst of
        # `filename` requests for large files must not hold more than max_buffered_bytes.
        if not self.ctx.upload_budget.take(opened.size):
            opened.close()
            raise ApiError(503, "server_busy", "too many images being read in; retry shortly", retry_after=1)
        self._held += opened.size
        data = await loop.run_in_executor(None, opened.read, self._max_bytes)
        if len(data) > opened.size and self.ctx.upload_budget.take(len(data) - opened.size):
            self._held += len(data) - opened.size  # it grew since it was opened
        return data

    async def _answer_blocking(
        self, key: str, image_hash: str, image_bytes: bytes | bytearray | memoryview, params: dict[str, Any]
    ) -> None:
        task_id = new_task_id()
        cached = await self.ctx.ocr.lookup(key)
        if cached is not None:
            self.log_fields["task_id"] = task_id  # the id the answer carries, as for a miss
            if splices(cached):
                # The same bytes as _finish_result writes, without encoding the result again.
                self.log_fields["cached"] = True
                request_ms = round((time.perf_counter() - self._start) * 1000, 2)
                self.finish(self.ctx.answers.hit_answer(key, cached, task_id, image_hash, request_ms))
                return
            self._finish_result(task_id, image_hash, cached, True, None)
            return
        if self.client_gone:
            return  # nobody to answer: no task for it
        self._run_payload = payload = owned(image_bytes)
        computation = await self.ctx.ocr.join(key, payload, params)
        self._computation = computation
        if self.client_gone:
            self._release()  # it left while the task was being created
            return
        task_id = computation.task_id
        self.log_fields["task_id"] = task_id
        try:
            result = await computation.future
        finally:
            self._release()
        queue_wait = computation.job.queue_wait_ms if computation.job is not None else None
        self._finish_result(task_id, image_hash, result, False, queue_wait)

    def _finish_result(
        self, task_id: str, image_hash: str, result: dict[str, Any], cached: bool, queue_wait_ms: float | None
    ) -> None:
        body = result_body(task_id, image_hash, result, cached)
        if not cached:
            body["timing"]["queue_wait"] = queue_wait_ms
        body["timing"]["request"] = round((time.perf_counter() - self._start) * 1000, 2)
        self.log_fields["cached"] = cached
        self.write_json(body)

    def _answer_task(self, record: TaskRecord) -> None:
        self.log_fields["task_id"] = record.task_id
        status_url = f"/ocr_service/tasks/{record.task_id}"
        self.set_header("Location", status_url)
        if record.result is not None:
            # Already cached: the answer is complete now, no need to poll.
            body = result_body(record.task_id, record.image_hash, record.result, record.cached)
            self.log_fields["cached"] = record.cached
        else:
            body = record.view().status_json()
        body["status_url"] = status_url
        self.write_json(body, status=202)

    def _release(self) -> None:
        if self._computation is not None:
            computation, self._computation = self._computation, None
            self.ctx.ocr.release(computation)
            self._count_until_run_ends(computation)

    def on_connection_close(self) -> None:
        # The client gave up: a queued task nobody else waits for is dropped.
        self.client_gone = True
        self.log_fields["client_gone"] = True
        self._release()
        self._give_back()
        super().on_connection_close()


class TaskHandler(JsonHandler):
    endpoint = "/ocr_service/tasks/{task_id}"
    ctx: AppContext
    # A long poll's wait, cancelled if its client leaves (the task itself is shielded: it runs on).
    _poll: asyncio.Future[TaskView | None] | None = None
    client_gone = False

    async def get(self, task_id: str) -> None:
        # ?wait=N: long-poll, answering as soon as the task finishes (at most N seconds).
        wait = parse_wait(self.get_query_argument("wait", None))
        try:
            view = await self._view(task_id, wait) if is_hex_id(task_id) else None
        except PoolError as exc:  # the shared store out of reach: the task's state is unknown, not absent
            raise api_error_from_pool(exc) from None
        except asyncio.CancelledError:
            if not self.client_gone:
                raise
            self.log_fields["client_gone"] = True
            return  # nobody to answer
        if view is None:
            raise self._absent_error(task_id)
        self._write_view(view)

    async def delete(self, task_id: str) -> None:
        # Cancel the task (its queued work is dropped unless other requests wait on it too);
        # a finished one is answered as it is. 202: another node runs it and will cancel it.
        try:
            view, elsewhere = await self.ctx.ocr.cancel_task(task_id) if is_hex_id(task_id) else (None, False)
        except PoolError as exc:
            raise api_error_from_pool(exc) from None
        if view is None:
            raise self._absent_error(task_id)
        self._write_view(view, status=202 if elsewhere else 200)

    def _write_view(self, view: TaskView, status: int = 200) -> None:
        if view.status == "done" and view.result is not None:
            self.write_json(result_body(view.task_id, view.image_hash, view.result, view.cached), status=status)
            return
        body = view.status_json()
        if view.error is not None:
            code = view.error.code
            error = {"code": code, "message": view.error.message, "http_status": STATUS_BY_CODE.get(code, 500)}
            if code in RETRY_AFTER_BY_CODE:
                error["retry_after"] = RETRY_AFTER_BY_CODE[code]
            body["error"] = error
        self.write_json(body, status=status)

    async def _view(self, task_id: str, wait: float) -> TaskView | None:
        if wait <= 0:
            return await self.ctx.ocr.task_view(task_id)
        self._poll = asyncio.ensure_future(self.ctx.ocr.task_view(task_id, wait=wait))
        return await self._poll

    def _absent_error(self, task_id: str) -> ApiError:
        """404 for a task this node never knew (or forgot), 410 for one it dropped."""
        dropped = self.ctx.ocr.tasks.dropped(task_id)
        if dropped is None:
            return ApiError(404, "task_not_found", "no such task (unknown id, or dropped long ago or elsewhere)")
        return self._dropped_error(dropped)

    def _dropped_error(self, dropped: DroppedTask) -> ApiError:
        """410 for a finished task this node no longer keeps, naming the setting that decided it."""
        service = self.ctx.settings.service
        when = f"{dropped.kept_s:.0f} s after it finished ({dropped.ago_s:.0f} s ago)"
        if dropped.reason == "expired":
            ttl = self.ctx.ocr.tasks.records.ttl
            message = (
                f"the task expired {when}: finished tasks are kept {ttl:g} s (service.time is {service.time:g} s;"
                " at least 300 s, plus twice ocr.process.task_timeout); poll sooner, or send it again"
            )
            return ApiError(STATUS_BY_CODE["task_expired"], "task_expired", message)
        if dropped.reason == "count":
            key, value = "service.task_number", f"{service.task_number} (finished tasks kept)"
        else:
            key, value = "service.task_bytes", f"{service.task_bytes} (bytes of finished tasks' answers kept)"
        message = (
            f"the task was pushed out by newer tasks {when}: {key} is {value}, and past it the least recently"
            f" polled go first; poll sooner, raise {key}, or send it again"
        )
        return ApiError(STATUS_BY_CODE["task_evicted"], "task_evicted", message)

    def on_connection_close(self) -> None:
        # The client left: stop its long poll's wait (other polls of the task wait on).
        self.client_gone = True
        if self._poll is not None:
            self._poll.cancel()
        super().on_connection_close()
