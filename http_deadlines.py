"""web_server.idle_timeout and body_timeout, kept with one timer per request phase.

Tornado's own header and body timeouts wrap each read in gen.with_timeout: a future, a
timeout callback and a chained copy of the result, twice per request (~9 us each measured
here, and two extra event-loop callbacks). A cache hit is short enough for that to show.
RequestDeadlines keeps the same two limits with one loop timer per connection:

- from the start of a request (on a kept-alive connection: once the previous answer was
  written) until its headers are in: idle_timeout, then the connection is closed silently;
- from the headers until the whole body is in: body_timeout, then the connection is closed
  and "Timeout reading body from <client>" is logged (as Tornado does).

A new phase only moves the connection's deadline (a float in a dict); its timer stays where
it is as long as that is no later than the deadline, and when it fires early it sets itself
again for what is left. Cancelling and scheduling a timer at every phase, twice per request,
was a heap push and a cancelled handle left in the loop's heap each time: with 60 and 120 s
limits a kept-alive connection now has one timer firing about once a minute.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from tornado import httputil
from tornado.log import gen_log


class DeadlineKeeper:
    """Each connection's current deadline and the one timer that fires at or before it."""

    def __init__(self, idle_timeout: float | None, body_timeout: float | None) -> None:
        self.idle_timeout = idle_timeout
        self.body_timeout = body_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._deadlines: dict[object, tuple[float, Callable[[], object]]] = {}
        self._timers: dict[object, tuple[asyncio.TimerHandle, float]] = {}  # with the time each fires

    def arm(self, key: object, delay: float | None, callback: Callable[[], object]) -> None:
        """`callback` runs `delay` seconds from now unless `key` is armed again or disarmed first."""
        if delay is None:
            self.disarm(key)
            return
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        deadline = loop.time() + delay
        self._deadlines[key] = (deadline, callback)
        timer = self._timers.get(key)
        if timer is not None:
            if timer[1] <= deadline:
                return  # it fires first, and then waits for the rest
            timer[0].cancel()
        self._timers[key] = (loop.call_at(deadline, self._due, key), deadline)

    def disarm(self, key: object) -> None:
        """No deadline for `key` until it is armed again (its timer, if any, then lapses)."""
        self._deadlines.pop(key, None)

    def forget(self, key: object) -> None:
        """`key`'s connection is closed: drop its deadline and its timer."""
        self._deadlines.pop(key, None)
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer[0].cancel()

    def _due(self, key: object) -> None:
        del self._timers[key]
        armed = self._deadlines.get(key)
        if armed is None:
            return  # disarmed since: nothing to do, no timer until it is armed again
        deadline, callback = armed
        assert self._loop is not None
        if self._loop.time() < deadline:
            self._timers[key] = (self._loop.call_at(deadline, self._due, key), deadline)  # armed again since
            return
        del self._deadlines[key]
        callback()

    def timers(self) -> int:
        """Loop timers held (at most one per connection)."""
        return len(self._timers)

    def __len__(self) -> int:
        """Connections with a deadline now."""
        return len(self._deadlines)


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
        self.keeper.forget(self.key)
        self.delegate.on_connection_close()

    def _headers_late(self) -> None:
        self.keeper.forget(self.key)
        self.connection.close()  # type: ignore[attr-defined]

    def _body_late(self) -> None:
        self.keeper.forget(self.key)
        gen_log.info("Timeout reading body from %s", self.connection.context)  # type: ignore[attr-defined]
        self.connection.stream.close()  # type: ignore[attr-defined]
