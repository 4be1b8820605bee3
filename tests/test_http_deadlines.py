"""idle_timeout and body_timeout as kept by http_deadlines, on a real GuardedHTTPServer in-process."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import pytest
from tornado import netutil, web

from http_listener import GuardedHTTPServer


class Echo(web.RequestHandler):
    def get(self) -> None:
        self.finish("ok")

    def post(self) -> None:
        self.finish(str(len(self.request.body)))


async def with_server(
    test: Callable[[int, GuardedHTTPServer], Awaitable[None]], idle: float = 30.0, body: float = 30.0
) -> None:
    app = web.Application([("/", Echo)])
    server = GuardedHTTPServer(app, idle_connection_timeout=idle, body_timeout=body)
    sockets = netutil.bind_sockets(0, "127.0.0.1")
    server.add_sockets(sockets)
    try:
        await test(sockets[0].getsockname()[1], server)
    finally:
        server.stop()
        await server.close_all_connections()


async def closed_by_server(reader: asyncio.StreamReader, within: float = 20.0) -> bool:
    """True once the server closed the connection (reads end), False if it is still open after `within` s."""

    async def drain() -> None:
        while await reader.read(65536):
            pass

    try:
        await asyncio.wait_for(drain(), within)
        return True
    except asyncio.TimeoutError:
        return False


async def until(condition: Callable[[], bool], within: float = 20.0) -> bool:
    deadline = asyncio.get_running_loop().time() + within
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


def test_kept_alive_requests_leave_no_timer_behind() -> None:
    async def scenario(port: int, server: GuardedHTTPServer) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(3):
            writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
            await writer.drain()
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
            assert await reader.readexactly(1) == b"5"
        assert len(server.deadlines) == 1  # the idle timer of the next request on this connection
        writer.close()
        assert await until(lambda: len(server.deadlines) == 0), "a closed connection kept its timer"

    asyncio.run(with_server(scenario))


def test_kept_alive_requests_move_one_timer_instead_of_making_new_ones() -> None:
    # A new phase only moves the connection's deadline: with idle 30 s and body 60 s, the one
    # timer made for the first request's idle phase serves every later request.
    async def scenario(port: int, server: GuardedHTTPServer) -> None:
        loop = asyncio.get_running_loop()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        scheduled = []
        for _ in range(20):
            writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
            await writer.drain()
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
            assert await reader.readexactly(1) == b"5"
            scheduled.append(len(loop._scheduled))  # type: ignore[attr-defined]
        assert server.deadlines.timers() == 1 and len(server.deadlines) == 1
        assert max(scheduled) - min(scheduled) <= 1, scheduled  # no timer (or cancelled one) per request
        writer.close()
        assert await until(lambda: server.deadlines.timers() == 0), "a closed connection kept its timer"

    asyncio.run(with_server(scenario, idle=30.0, body=60.0))


def test_the_idle_timeout_still_closes_a_connection_after_requests_moved_its_deadline() -> None:
    # The timer set at the first request fires early, sees the deadline moved, and waits for it.
    async def scenario(port: int, server: GuardedHTTPServer) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(3):
            await asyncio.sleep(0.25)  # each request moves the idle deadline 0.25 s on
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            await writer.drain()
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
            assert await reader.readexactly(2) == b"ok"
        started = asyncio.get_running_loop().time()
        assert await closed_by_server(reader, within=5.0)
        assert asyncio.get_running_loop().time() - started >= 0.5 - 0.05  # a full idle_timeout after the last answer
        assert await until(lambda: len(server.deadlines) == 0 and server.deadlines.timers() == 0)
        writer.close()

    asyncio.run(with_server(scenario, idle=0.5, body=5.0))


def test_tornado_keeps_no_header_timeout_of_its_own_beside_ours() -> None:
    app = web.Application([("/", Echo)])
    assert GuardedHTTPServer(app, idle_connection_timeout=30.0).conn_params.header_timeout is None
    # Without an idle timeout of ours, Tornado's own default stays in force.
    assert GuardedHTTPServer(app).conn_params.header_timeout == 3600


@pytest.mark.parametrize("sent", [b"", b"GET / HTTP/1.1\r\nHost: x\r\n"])
def test_a_connection_without_a_complete_head_is_closed_after_idle_timeout(sent: bytes) -> None:
    async def scenario(port: int, server: GuardedHTTPServer) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(sent)
        assert await closed_by_server(reader)
        assert await until(lambda: len(server.deadlines) == 0)
        writer.close()

    asyncio.run(with_server(scenario, idle=0.3))


def test_a_body_that_stops_arriving_is_cut_after_body_timeout(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario(port: int, server: GuardedHTTPServer) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
        await writer.drain()
        assert await closed_by_server(reader)
        writer.close()

    with caplog.at_level(logging.INFO, logger="tornado.general"):
        asyncio.run(with_server(scenario, body=0.3))
    assert any("Timeout reading body from" in record.getMessage() for record in caplog.records)


def test_a_slow_but_complete_request_is_answered() -> None:
    async def scenario(port: int, server: GuardedHTTPServer) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\n")
        await asyncio.sleep(0.1)  # well within body_timeout
        writer.write(b"abcd")
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
        assert await reader.readexactly(1) == b"4"
        writer.close()

    asyncio.run(with_server(scenario, idle=5.0, body=5.0))
