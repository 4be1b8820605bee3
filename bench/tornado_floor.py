"""The least work a Tornado server can do for a cache hit: the yardstick for bench/hit_latency.py.

POST /ocr_service reads the whole upload (Tornado's HTTP parsing, the body in memory) and
answers a fixed JSON body read from --response (the real server's cached answer, so both
send the same bytes back). No multipart parsing, no hashing, no cache, no access log.
GET /readyz answers {"status": "ready"} so the benchmark launcher can wait for it.

With --processes N it forks N processes sharing one listening socket before any event
loop exists; SIGTERM to the parent stops the children by PID, then the parent.

    python bench/tornado_floor.py --port 8899 --response answer.json [--processes 2]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

from tornado import httpserver, netutil, web

MAX_BODY_BYTES = 64 * 1024 * 1024


class FixedAnswerHandler(web.RequestHandler):
    def initialize(self, body: bytes) -> None:
        self.body = body

    def post(self) -> None:
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(self.body)


class ReadyHandler(web.RequestHandler):
    def get(self) -> None:
        self.finish({"status": "ready"})


async def serve(sockets: list, body: bytes) -> None:
    app = web.Application(
        [(r"/ocr_service", FixedAnswerHandler, {"body": body}), (r"/readyz", ReadyHandler)],
        log_function=lambda handler: None,
    )
    server = httpserver.HTTPServer(app, max_body_size=MAX_BODY_BYTES)
    server.add_sockets(sockets)
    await asyncio.Event().wait()


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
    args = p.parse_args(argv)
    body = args.response.read_bytes()
    sockets = netutil.bind_sockets(args.port, "127.0.0.1")
    is_parent = True
    children: list[int] = []
    if args.processes > 1:
        children = fork_children(args.processes - 1)
        is_parent = bool(children)

    if is_parent and children:

        def stop_children(signum: int, frame: object) -> None:
            for pid in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
            for pid in children:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)
            sys.exit(0)

        signal.signal(signal.SIGTERM, stop_children)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(sockets, body))
    return 0


if __name__ == "__main__":
    sys.exit(main())
