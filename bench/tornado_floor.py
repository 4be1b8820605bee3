"""The least work a Tornado server can do for a cache hit: the yardstick for bench/hit_latency.py.

POST /ocr_service reads the whole upload and answers a fixed JSON body read from --response
(the real server's cached answer, so both send the same bytes back). No multipart parsing,
no hashing, no cache, no access log; the same glibc heap settings, body chunk size and
header reading (no per-request header timeout) as the server. GET /readyz answers
{"status": "ready"} so the benchmark launcher can wait for it. Two layers:

- `--layer web` (default): a tornado.web.Application with one streaming RequestHandler
  that drops the body chunks as they arrive (as this server's upload handler streams them);
- `--layer http`: Tornado's HTTP server alone with a bare HTTPMessageDelegate that drops
  the body chunks and answers: no routing, no RequestHandler. Nothing built on Tornado
  can answer faster.

With --processes N it forks N processes sharing one listening socket before any event
loop exists; SIGTERM to the parent stops it, then it stops its children by PID.

    python bench/tornado_floor.py --port 8899 --response answer.json [--processes 2] [--layer http]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import sys
from pathlib import Path

from tornado import httpserver, httputil, netutil, web

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from http_listener import BODY_CHUNK_BYTES, keep_freed_heap, map_large_buffers

MAX_BODY_BYTES = 64 * 1024 * 1024


@web.stream_request_body
class FixedAnswerHandler(web.RequestHandler):
    def initialize(self, body: bytes) -> None:
        self.body = body

    def data_received(self, chunk: bytes) -> None:
        pass  # read and dropped: holding the body would be work the floor does not need

    def post(self) -> None:
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(self.body)


class ReadyHandler(web.RequestHandler):
    def get(self) -> None:
        self.finish({"status": "ready"})


class BareAnswer(httputil.HTTPMessageDelegate):
    """One request at the HTTP layer: ignore the body, answer `body` (or ready, for GET /readyz)."""

    def __init__(self, connection: httputil.HTTPConnection, body: bytes) -> None:
        self.connection = connection
        self.body = body

    def headers_received(
        self, start_line: httputil.RequestStartLine | httputil.ResponseStartLine, headers: httputil.HTTPHeaders
    ) -> None:
        if isinstance(start_line, httputil.RequestStartLine) and start_line.method == "GET":
            self.body = b'{"status": "ready"}'

    def data_received(self, chunk: bytes) -> None:
        pass

    def finish(self) -> None:
        headers = httputil.HTTPHeaders({"Content-Type": "application/json; charset=UTF-8"})
        headers["Content-Length"] = str(len(self.body))
        self.connection.write_headers(httputil.ResponseStartLine("HTTP/1.1", 200, "OK"), headers)
        self.connection.write(self.body)
        self.connection.finish()


class BareServer(httputil.HTTPServerConnectionDelegate):
    def __init__(self, body: bytes) -> None:
        self.body = body

    def start_request(self, server_conn: object, request_conn: httputil.HTTPConnection) -> httputil.HTTPMessageDelegate:
        return BareAnswer(request_conn, self.body)


async def serve(sockets: list[socket.socket], body: bytes, layer: str) -> None:
    if layer == "http":
        target: httputil.HTTPServerConnectionDelegate = BareServer(body)
    else:
        target = web.Application(
            [(r"/ocr_service", FixedAnswerHandler, {"body": body}), (r"/readyz", ReadyHandler)],
            log_function=lambda handler: None,
        )
    server = httpserver.HTTPServer(target, max_body_size=MAX_BODY_BYTES, chunk_size=BODY_CHUNK_BYTES)
    # As the server's listener (http_listener.GuardedHTTPServer, which keeps its idle timeout
    # with a timer of its own): no gen.with_timeout around every request's header read.
    server.conn_params.header_timeout = None
    server.add_sockets(sockets)
    # SIGTERM through the loop: the stop runs as ordinary code, never as an exception
    # raised wherever the signal happened to land.
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    server.stop()


def fork_children(count: int) -> list[int]:
    """Fork `count` children; returns their PIDs in the parent, [] in a child."""
    children: list[int] = []
    for _ in range(count):
        pid = os.fork()
        if pid == 0:
            return []
        children.append(pid)
    return children


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--response", type=Path, required=True, help="file with the JSON body to answer")
    p.add_argument("--processes", type=int, default=1)
    p.add_argument("--layer", choices=("web", "http"), default="web")
    args = p.parse_args(argv)
    # The server's glibc settings: without them the floor faults in fresh pages for every
    # upload at 50 connections (~11 a request), and would be slower than it has to be.
    map_large_buffers()
    keep_freed_heap()
    body = args.response.read_bytes()
    sockets = netutil.bind_sockets(args.port, "127.0.0.1")
    # Empty in the children, and in the parent when there is only one process.
    children = fork_children(args.processes - 1) if args.processes > 1 else []
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(sockets, body, args.layer))
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    for pid in children:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
