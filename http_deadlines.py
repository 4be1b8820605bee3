"""web_server.idle_timeout and body_timeout, kept with one timer per request phase.

Tornado's own header and body timeouts wrap each read in gen.with_timeout: a future, a
timeout callback and a chained copy of the result, twice per request (~9 us each measured
here, and two extra event-loop callbacks). A cache hit is short enough for that to show.
RequestDeadlines keeps the same two limits with a plain loop timer re-armed at each phase:

- from the start of a request (on a kept-alive connection: once the previous answer was
  written) until its headers are in: idle_timeout, then the connection is closed silently;
- from the headers until the whole body is in: body_timeout, then the connection is closed
  and "Timeout reading body from <client>" is logged (as Tornado does).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

from tornado import httputil
from tornado.log import gen_log


class DeadlineKeeper:
    """The timer of each connection's current request, so a closed connection drops its own."""

    def __init__(self, idle_timeout: float | None, body_timeout: float | None) -> None:
        self.idle_timeout = idle_timeout
        self.body_timeout = body_timeout
        self._timers: dict[object, asyncio.TimerHandle] = {}

    def arm(self, key: object, delay: float | None, callback: object) -> None:
        self.disarm(key)
        if delay is not None:
            self._timers[key] = asyncio.get_running_loop().call_later(delay, callback)  # type: ignore[arg-type]

    def disarm(self, key: object) -> None:
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()

    def __len__(self) -> int:
        return len(self._timers)


class RequestDeadlines(httputil.HTTPMessageDelegate):
    """Wraps one request's delegate; `key` is its connection (HTTP1ServerConnection)."""

    def __init__(
        self,
        keeper: DeadlineKeeper,
        key: object,
        connection: httputil.HTTPConnection,
        delegate: httputil.HTTPMessageDelegate,
    ) -> None:
        self.keeper = keeper
        self.key = key
        self.connection = connection
        self.delegate = delegate
        keeper.arm(key, keeper.idle_timeout, self._headers_late)

    def headers_received(
        self,
        start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
        headers: httputil.HTTPHeaders,
    ) -> Awaitable[None] | None:
        self.keeper.arm(self.key, self.keeper.body_timeout, self._body_late)
        return self.delegate.headers_received(start_line, headers)

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        return self.delegate.data_received(chunk)

    def finish(self) -> None:
        self.keeper.disarm(self.key)
        self.delegate.finish()

    def on_connection_close(self) -> None:
        self.keeper.disarm(self.key)
        self.delegate.on_connection_close()

    def _headers_late(self) -> None:
        self.keeper.disarm(self.key)
        self.connection.close()  # type: ignore[attr-defined]

    def _body_late(self) -> None:
        self.keeper.disarm(self.key)
        gen_log.info("Timeout reading body from %s", self.connection.context)  # type: ignore[attr-defined]
        self.connection.stream.close()  # type: ignore[attr-defined]
