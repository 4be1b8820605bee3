"""OCR web server: `python server.py [--config config.json] [--port N]`.

Without --config the embedded defaults apply (bundled PP-OCR models, in-memory cache,
port 8888 on 127.0.0.1). The request path reads top to bottom:
server.py -> handlers/ -> cache/ -> ocr_pool/ -> models/.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any

from tornado import netutil, web

from cache import OcrService
from cache.documents import DocumentService, RenderSettings
from cache.redis_store import RedisStore, redact
from handlers import AppContext, ServiceMetrics, routes
from handlers.base import NO_BODY_BYTES, OPEN_REQUESTS, NotFoundHandler
from handlers.upload_budget import UploadBudget
from handlers.upload_hashes import RecentHashes
from http_listener import (
    BODY_CHUNK_BYTES,
    GuardedHTTPServer,
    keep_freed_heap,
    map_large_buffers,
    raise_descriptor_limit,
)
from models import ModelLoadError, check_model_files, model_identity
from ocr_pool import WorkerPool, read_usable_cpus
from ocr_pool.pages import PageScheduler
from settings import ConfigError, Settings, load_settings

log = logging.getLogger("ocr_server")
access_log = logging.getLogger("ocr_server.access")

# At shutdown, how long answers still being written (503 shutting_down) may take before the
# connections are closed; shorter after a second signal.
SHUTDOWN_FLUSH_S = 2.0
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
SHUTDOWN_FLUSH_FORCED_S = 0.5


class ListenError(RuntimeError):
    """The HTTP port cannot be bound."""


class SecondCachingFormatter(logging.Formatter):
    """logging.Formatter whose default %(asctime)s text ("2026-01-31 12:00:00,123") is built once
    per second: localtime + strftime were a sixth of an access-log line's cost. A record without
    exception or stack text (an access-log line) is filled into a %-style format directly, the
    same text as Formatter.format() gives through its four layers of calls."""

    _second: int | None = None
    _text = ""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._direct = type(self._style) is logging.PercentStyle and not getattr(self._style, "_defaults", None)
        self._uses_time = self.usesTime()

    def format(self, record: logging.LogRecord) -> str:
        if not self._direct or record.exc_info or record.exc_text or record.stack_info:
            return super().format(record)
        record.message = record.getMessage()
        if self._uses_time:
            record.asctime = self.formatTime(record, self.datefmt)
        try:
            return self._fmt % record.__dict__  # type: ignore[operator]
        except KeyError:
            return super().format(record)  # a field the record lacks: logging's own error

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt or not self.default_msec_format:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        if second != self._second:
            self._text = time.strftime(self.default_time_format, self.converter(record.created))
            self._second = second
        return self.default_msec_format % (self._text, record.msecs)


class LineHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """StreamHandler writing and flushing each line in emit() itself: Handler.handle() already
    holds the handler's lock, which StreamHandler.flush() would take a second time."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = self.stream
            stream.write(self.format(record) + self.terminator)
            stream.flush()
        except RecursionError:
            raise
        except Exception:  # noqa: BLE001 - as logging.StreamHandler: report, never raise
            self.handleError(record)


CLIENT_CLOSED_REQUEST = 499


def log_request(handler: web.RequestHandler) -> None:
    """One access-log line per request: method, path, status, latency, task id, cache hit."""
    request = handler.request
    duration = request.request_time()  # one reading for the metrics and the line
    # A client that left before its answer got none: 499 (nginx's "client closed request"),
    # not the 503 of the run cancelled for it, which nobody received and no alert should count.
    status = CLIENT_CLOSED_REQUEST if getattr(handler, "client_gone", False) else handler.get_status()
    metrics = handler.application.settings.get("metrics")
    if metrics is not None:
        metrics.observe_request(handler, duration, status)
    fields: dict[str, Any] | None = getattr(handler, "log_fields", None)
    extra = " ".join(f"{key}={value}" for key, value in fields.items()) if fields else ""
    access_log.log(
        # A 500 is a fault to look at; 503 (load shed, shutting down, /readyz while loading)
        # and 504 are the service saying no as designed: seen at --log-level WARNING, not ERROR.
        logging.INFO if status < 500 else logging.ERROR if status == 500 else logging.WARNING,
        "%s %s %d %.1fms %s",
        request.method,
        request.path,
        status,
        1000.0 * duration,
        extra,
    )


def build_context(settings: Settings) -> AppContext:
    cpus = read_usable_cpus()  # affinity and cgroup quota, not the host's core count
    options = settings.engine_options(cpus)
    check_model_files(options)  # fail at start-up, naming the path, not at the first request
    identity = model_identity(options)
    process = settings.ocr.process
    pool = WorkerPool(
        size=process.number,
        max_tasks=process.max_task_number,
        queue_size=process.queue_size,
        task_timeout=process.task_timeout,
        start_timeout=process.start_timeout,
        engine_options=options,
        threads=options.cpu_threads,
        cpus=cpus,
    )
    service = settings.service
    # A finished task is kept at least as long as a cached result.
    # A task may wait up to task_timeout for a worker, then run up to task_timeout.
    task_ttl = max(service.time, 300.0) + 2 * process.task_timeout
    shared = None
    if service.backend == "redis":
        shared = RedisStore(
            service.redis_url,
            prefix=service.redis_prefix,
            result_ttl=service.time,
            max_results=service.img_number,
            task_ttl=task_ttl,
            claim_ttl=2 * process.task_timeout + 5.0,
        )
    ocr = OcrService(
        pool,
        engine_identity=identity,
        cache_capacity=service.img_number,
        cache_ttl=service.time,
        task_capacity=service.task_number,
        task_ttl=task_ttl,
        shared=shared,
        failure_ttl=service.failure_ttl,
        cache_bytes=service.img_bytes,
        task_bytes=service.task_bytes,
    )
    docs = settings.documents
    render = RenderSettings(docs.dpi, docs.max_page_side, docs.max_page_pixels, docs.max_pdf_pages)
    return AppContext(
        documents=DocumentService(ocr, PageScheduler(pool), render, docs.preview_cache_bytes),
        settings=settings,
        ocr=ocr,
        pool=pool,
        engine_identity=identity,
        allowed_roots=settings.allowed_root_paths(),
        upload_budget=UploadBudget(settings.web_server.max_buffered_bytes),
        # Copies of recent uploads live no longer than the results they help find.
        upload_hashes=RecentHashes(ttl=service.time if service.img_number > 0 else 0.0),
        usable_cpus=cpus,
        precision=options.precision,
    )


def missing_roots(roots: list[Path]) -> list[Path]:
    """The allowed roots that are not folders (missing, or a file)."""
    return [root for root in roots if not root.is_dir()]


def build_app(ctx: AppContext) -> web.Application:
    metrics = ServiceMetrics(ctx)
    return web.Application(
        routes(ctx, metrics),
        default_handler_class=NotFoundHandler,
        log_function=log_request,
        metrics=metrics,
    )


async def serve(settings: Settings) -> int:
    ctx = build_context(settings)
    app = build_app(ctx)
    web_settings = settings.web_server
    server = GuardedHTTPServer(
        app,
        xheaders=False,
        chunk_size=BODY_CHUNK_BYTES,
        max_body_size=NO_BODY_BYTES,  # POST /ocr_service raises it for its own requests
        idle_connection_timeout=web_settings.idle_timeout,
        body_timeout=web_settings.body_timeout,
    )
    try:
        sockets = netutil.bind_sockets(web_settings.port, address=web_settings.host)
    except OSError as exc:  # the port is taken, or the address is not on this machine
        raise ListenError(f"cannot listen on {web_settings.host}:{web_settings.port}: {exc.strerror or exc}") from exc
    server.add_sockets(sockets)
    port = sockets[0].getsockname()[1]
    log.info(
        "listening on http://%s:%d (engine %s, %d workers, %d threads each, %d usable CPUs)",
        f"[{web_settings.host}]" if ":" in web_settings.host else web_settings.host,  # IPv6: [::1]
        port,
        settings.ocr.engine,
        settings.ocr.process.number,
        ctx.pool.threads,
        ctx.usable_cpus,
    )

    for root in missing_roots(ctx.allowed_roots):
        # Not fatal (the folder may be mounted later), but until then every `filename` under it
        # is refused, and nothing else would say why.
        log.warning("web_server.allowed_roots: %s is not a folder: no filename under it can be read", root)

    stop = asyncio.Event()
    forced = asyncio.Event()

    def on_signal(name: str) -> None:
        if not stop.is_set():
            stop.set()
        elif not forced.is_set():
            # A second SIGTERM or Ctrl-C during the drain: stop now, exit 1.
            log.warning("%s again: failing pending requests and killing the workers now", name)
            forced.set()
            ctx.pool.hurry()

    loop = asyncio.get_running_loop()
    ctx.loop_lag.start(loop)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig.name)

    if ctx.ocr.shared is not None:
        if not await ctx.ocr.shared.ping():
            log.warning(
                "Redis at %s is unreachable; serving without the shared cache until it is back",
                redact(settings.service.redis_url),
            )
        ctx.ocr.shared.watch()
    await ctx.pool.start(wait=False)
    startup = asyncio.ensure_future(ctx.pool.wait_ready())
    stopper = asyncio.ensure_future(stop.wait())
    started = time.monotonic()
    await asyncio.wait({startup, stopper}, return_when=asyncio.FIRST_COMPLETED)
    exit_code = 0
    if startup.done():
        if startup.exception() is not None:
            error = startup.exception()
            log.error("cannot start the OCR workers: %s", getattr(error, "message", error))
            exit_code = 1
            stop.set()
        else:
            log.info("all %d workers ready in %.1f s", settings.ocr.process.number, time.monotonic() - started)
    await stop.wait()
    startup.cancel()

    log.info("shutting down: no new connections, finishing in-flight work")
    server.stop()
    await ctx.pool.close(grace=web_settings.shutdown_grace)
    # The requests the pool just failed are writing their `503 shutting_down`: closing the
    # connections now could cut those answers off. Give them a moment (2 s at most, 0.5 s once forced).
    flush_started = time.monotonic()
    while (OPEN_REQUESTS or server.writing()) and time.monotonic() - flush_started < (
        SHUTDOWN_FLUSH_FORCED_S if forced.is_set() else SHUTDOWN_FLUSH_S
    ):
        await asyncio.sleep(0.02)
    await server.close_all_connections()
    if ctx.ocr.shared is not None:
        await ctx.ocr.shared.close()
    if forced.is_set():
        log.warning("stopped before the drain finished (second signal)")
        return 1
    log.info("stopped")
    return exit_code


def log_level(name: str) -> str:
    """--log-level's value, checked here: logging.basicConfig raised a traceback for a typo."""
    level = name.upper()
    if not isinstance(logging.getLevelName(level), int):
        raise argparse.ArgumentTypeError(f"unknown level {name!r} (DEBUG, INFO, WARNING, ERROR or CRITICAL)")
    return level


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="OCR web server (PP-OCR in a pool of worker processes)")
    parser.add_argument("--config", help="path to config.json (default: embedded defaults)")
    parser.add_argument("--port", type=int, help="override web_server.port (0 picks a free port)")
    parser.add_argument("--host", help="override web_server.host")
    parser.add_argument("--log-level", default="INFO", type=log_level)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    handler = LineHandler()
    handler.setFormatter(SecondCachingFormatter(LOG_FORMAT))
    logging.basicConfig(level=args.log_level, handlers=[handler])
    # LOG_FORMAT prints no source file, thread, process or multiprocessing name: not collecting
    # them makes each record (one per request, the access log) cheaper, as the logging HOWTO's
    # "Optimization" section describes.
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    try:
        settings = load_settings(args.config)
        if args.port is not None or args.host is not None:
            settings = settings.with_listen(port=args.port, host=args.host)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    before, after = raise_descriptor_limit()  # each connection, worker pipe and open image is one
    if after != before:
        log.info("file descriptor limit raised from %d to %d", before, after)
    map_large_buffers()  # uploads grow without copies and are given back when freed
    keep_freed_heap()  # small uploads reuse the heap's pages instead of faulting in new ones
    try:
        return asyncio.run(serve(settings))
    except ModelLoadError as exc:
        print(f"model error: {exc}", file=sys.stderr)
        return 2
    except ListenError as exc:
        print(exc, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
