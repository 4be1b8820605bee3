"""The HTTP listener: Tornado's HTTPServer, made to survive running out of file descriptors.

When the process is at its descriptor limit (a connection flood, a leak elsewhere),
accept() fails with EMFILE while the listening socket stays readable. Tornado's accept
handler then raises on every turn of the event loop: one core at 100% and an error
logged per attempt (tens of thousands of lines a second). Here accepting pauses for
ACCEPT_PAUSE_S instead, as nginx does, and resumes by itself; the connections waiting in
the kernel's backlog are accepted once descriptors are free again.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import errno
import logging
import resource
import socket
import sys
from collections.abc import Callable, Iterable
from typing import Any

from tornado import httpserver, httputil

from http_deadlines import DeadlineKeeper, RequestDeadlines

log = logging.getLogger("ocr_server")

ACCEPT_PAUSE_S = 0.5
# Connections accepted per readiness event before yielding to other work (as Tornado does).
ACCEPT_BATCH = 128
OUT_OF_DESCRIPTORS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
# Where to raise the soft descriptor limit when the hard limit is "unlimited".
FD_LIMIT_WHEN_UNLIMITED = 1 << 20


def raise_descriptor_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit; returns (before, after)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = FD_LIMIT_WHEN_UNLIMITED if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            return soft, target
        except (ValueError, OSError):
            pass
    return soft, soft


# glibc's mallopt() parameters, the size from which every allocation gets its own mapping,
# and how much freed memory at the top of the heap is kept rather than given back.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
LARGE_BUFFER_BYTES = 1 << 20
KEPT_FREE_HEAP_BYTES = 16 << 20
# Socket reads and body chunks of up to 256 KiB instead of Tornado's 64 KiB: a cache hit's
# ~111 KB upload reaches the handler in one piece (one pass through the body callbacks and
# the multipart parser, not two): ~10 % more hits/s at 50 connections. A 20 MiB upload
# still arrives in 80 pieces, each well under a millisecond of the loop's time.
BODY_CHUNK_BYTES = 256 << 10


def _mallopt(param: int, value: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(param, value))
    except (OSError, AttributeError):  # musl or no mallopt
        return False


def map_large_buffers() -> bool:
    """Make glibc give every buffer of 1 MiB or more its own memory mapping, for good.

    An upload grows in a bytearray as its chunks arrive. glibc's default threshold moves
    up (to 32 MiB) after the first large buffer is freed; from then on a 20 MiB upload lives
    on the heap, where growing it copies everything so far (milliseconds each time, on the
    event loop) and freeing it may not return the memory. Mapped buffers grow by remapping
    pages (no copy) and go back to the system when freed. False where this is not glibc.
    """
    return _mallopt(_M_MMAP_THRESHOLD, LARGE_BUFFER_BYTES)


def keep_freed_heap() -> bool:
    """Keep up to 16 MiB of freed memory at the top of the heap instead of giving it back.

    With the mapping threshold fixed (above), glibc gives back any free top of the heap over
    128 KiB at once. A cache hit's upload (a 111 KB receipt: the body chunks, the part's
    buffer) was freed at the top and taken again by the next request as fresh pages: 5-20
    page faults per hit at ~5 us each on a VM, none now. Buffers of 1 MiB or more are mapped
    and never held here. False where this is not glibc.
    """
    return _mallopt(_M_TRIM_THRESHOLD, KEPT_FREE_HEAP_BYTES)


class AcceptLoop:
    """Accepts connections on one listening socket, pausing while descriptors run out."""

    def __init__(self, sock: socket.socket, on_connection: Callable[[socket.socket, Any], None]) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.on_connection = on_connection
        self.loop = asyncio.get_running_loop()
        self.pauses = 0
        self._resume_timer: asyncio.TimerHandle | None = None
        self._starved = False  # in a run of pauses; logged once per run
        self._stopped = False
        sock.setblocking(False)
        self.loop.add_reader(self.fd, self._accept)

    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                connection, address = self.sock.accept()
            except BlockingIOError:
                return
            except ConnectionAbortedError:
                continue  # the client gave up while waiting in the backlog
            except OSError as exc:
                if exc.errno in OUT_OF_DESCRIPTORS:
                    self._pause(exc)
                    return
                raise
            if self._starved:
                self._starved = False
                log.warning("accepting connections again after %d pauses", self.pauses)
            self.on_connection(connection, address)

    def _pause(self, exc: OSError) -> None:
        self.pauses += 1
        if not self._starved:
            self._starved = True
            log.warning("cannot accept connections (%s); pausing accept for %.1f s at a time", exc.strerror, ACCEPT_PAUSE_S)
        self.loop.remove_reader(self.fd)
        self._resume_timer = self.loop.call_later(ACCEPT_PAUSE_S, self._resume)

    def _resume(self) -> None:
        self._resume_timer = None
        if not self._stopped:
            self.loop.add_reader(self.fd, self._accept)

    def stop(self) -> None:
        self._stopped = True
        if self._resume_timer is not None:
            self._resume_timer.cancel()
        else:
            self.loop.remove_reader(self.fd)


class GuardedHTTPServer(httpserver.HTTPServer):
    """HTTPServer whose sockets are served by AcceptLoop instead of Tornado's accept handler.

    TCPServer keeps, per listening socket, the socket and a function that unregisters it;
    stop() calls that function and closes the socket, so it works unchanged.
    idle_connection_timeout and body_timeout are kept by http_deadlines (one loop timer per
    request phase) instead of Tornado's per-read timeouts, which cost a cache hit more.
    """

    def initialize(  # type: ignore[override]
        self,
        *args: Any,
        idle_connection_timeout: float | None = None,
        body_timeout: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().initialize(*args, **kwargs)
        self.deadlines = DeadlineKeeper(idle_connection_timeout, body_timeout)
        if idle_connection_timeout is not None:
            # RequestDeadlines keeps the idle timeout: Tornado's own header timeout (its
            # default, 3600 s, as idle_connection_timeout is not passed on) would only wrap
            # every request's header read in one more gen.with_timeout.
            self.conn_params.header_timeout = None

    def start_request(self, server_conn: object, request_conn: httputil.HTTPConnection) -> httputil.HTTPMessageDelegate:
        delegate = super().start_request(server_conn, request_conn)
        if self.deadlines.idle_timeout is None and self.deadlines.body_timeout is None:
            return delegate
        return RequestDeadlines(self.deadlines, server_conn, request_conn, delegate)

    def on_close(self, server_conn: object) -> None:
        self.deadlines.forget(server_conn)
        super().on_close(server_conn)

    def add_sockets(self, sockets: Iterable[socket.socket]) -> None:
        for sock in sockets:
            accept_loop = AcceptLoop(sock, self._handle_connection)
            self._sockets[sock.fileno()] = sock
            self._handlers[sock.fileno()] = accept_loop.stop

    def writing(self) -> bool:
        """Some connection still has answer bytes waiting to be sent."""
        return any(connection.stream.writing() for connection in self._connections)
