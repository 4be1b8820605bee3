"""The task and result stores shared through a real Redis: outages, restarts, node clocks."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from bench.launch import free_port
from cache import redis_store
from cache.redis_store import SharedStoreUnavailableError
from cache.service import OcrService
from tests.conftest import RunningServer, base_config, random_word, text_image
from tests.test_scaleout import (
    REDIS,
    FakePool,
    RedisServer,
    _start_nodes,
    fast_heartbeat,
    make_store,
    service_node,
    upload,
)

pytestmark = pytest.mark.skipif(REDIS is None, reason="needs Debian's redis-server (.ci/run installs it)")
__all__ = ["fast_heartbeat"]  # the fixture, imported for its use by name here


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path, free_port())
    server.start()
    try:
        yield server
    finally:
        resume(server)  # a stopped process would not act on SIGTERM
        server.stop()


def pause(server: RedisServer) -> None:
    """Redis stops answering (a network blip, a stalled host) but keeps its data."""
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGSTOP)


def resume(server: RedisServer) -> None:
    assert server.process is not None
    if server.process.poll() is None:
        os.kill(server.process.pid, signal.SIGCONT)


def two_nodes(url: str) -> tuple[OcrService, OcrService]:
    """Nodes A and B on one Redis, each over a pool whose jobs end only when the test says."""
    return tuple(service_node(url, FakePool(None, task_timeout=60.0)) for _ in range(2))  # type: ignore[return-value]


async def close_nodes(*nodes: object) -> None:
    for node in nodes:
        await node.shared.close()  # type: ignore[attr-defined]


@pytest.mark.usefixtures("fast_heartbeat")
def test_an_outcome_reached_while_redis_was_away_reaches_the_other_nodes(redis_server: RedisServer) -> None:
    # The outcome was written once, when the task ended; Redis away at that moment, other nodes
    # kept reading the last "queued" view, then node_lost, for a task that was done.

    async def scenario() -> None:
        node_a, node_b = two_nodes(redis_server.url)
        record = await node_a.submit_task("k", "h", b"x", {})
        await asyncio.sleep(0.5)
        assert (await node_b.task_view(record.task_id)).status == "queued"  # type: ignore[union-attr]
        pause(redis_server)
        node_a.pool.jobs[0].future.set_result({"text_lines": [{"text": "read on A"}]})  # type: ignore[attr-defined]
        await asyncio.sleep(1.5)  # its outcome's write times out
        assert (await node_a.task_view(record.task_id)).status == "done"  # type: ignore[union-attr]
        resume(redis_server)
        await asyncio.sleep(3.5)  # past the circuit breaker's back-off, and past LOST_AFTER_S
        view = await node_b.task_view(record.task_id, wait=5.0)
        assert view is not None and view.status == "done", view
        assert view.result == {"text_lines": [{"text": "read on A"}]}
        await close_nodes(node_a, node_b)

    asyncio.run(asyncio.wait_for(scenario(), timeout=40))


def test_tasks_ended_during_an_outage_are_all_written_after_it_by_one_retry_loop(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        node_a, node_b = two_nodes(redis_server.url)
        records = [await node_a.submit_task(f"k{i}", "h", b"x", {}) for i in range(5)]
        pause(redis_server)
        for index, job in enumerate(node_a.pool.jobs):  # type: ignore[attr-defined]
            job.future.set_result({"text_lines": [{"text": f"page {index}"}]})
        await asyncio.sleep(2.0)
        assert len(node_a.tasks._unshared) == 5
        retry_loops = [k for k in node_a.shared._keepers if not k.done()]  # type: ignore[union-attr]
        assert len(retry_loops) == 1  # not a loop per task: one, whatever the outage leaves
        resume(redis_server)
        for index, record in enumerate(records):
            view = await node_b.task_view(record.task_id, wait=5.0)
            assert view is not None and view.status == "done", view
            assert view.result == {"text_lines": [{"text": f"page {index}"}]}
        await asyncio.sleep(1.5)
        assert not node_a.tasks._unshared and node_a.tasks._resharing.done()  # type: ignore[union-attr]
        await close_nodes(node_a, node_b)

    asyncio.run(asyncio.wait_for(scenario(), timeout=40))


@pytest.mark.usefixtures("fast_heartbeat")
def test_a_poll_while_redis_is_away_is_not_an_unknown_task(redis_server: RedisServer) -> None:
    # A poll of another node's task while Redis did not answer came back None: the API's
    # 404 task_not_found, after which a client stops polling a task that is still running.

    async def scenario() -> None:
        node_a, node_b = two_nodes(redis_server.url)
        record = await node_a.submit_task("k", "h", b"x", {})
        await asyncio.sleep(0.3)
        pause(redis_server)
        with pytest.raises(SharedStoreUnavailableError):
            await node_b.task_view(record.task_id)
        # A long poll that meets the outage waits through it and answers what Redis says after.
        polling = asyncio.ensure_future(node_b.task_view(record.task_id, wait=10.0))
        await asyncio.sleep(1.0)
        node_a.pool.jobs[0].future.set_result({"text_lines": [{"text": "read on A"}]})  # type: ignore[attr-defined]
        resume(redis_server)
        view = await polling
        assert view is not None and view.status == "done", view
        assert await node_b.task_view("0" * 32) is None  # an unknown id is still unknown
        await close_nodes(node_a, node_b)

    asyncio.run(asyncio.wait_for(scenario(), timeout=40))


def test_a_long_poll_keeps_its_task_when_redis_loses_the_record(redis_server: RedisServer) -> None:
    # Redis restarted without persistence (or evicted the key under maxmemory): the task's
    # record is gone until its node's next heartbeat (HEARTBEAT_S, 5 s). A long poll already
    # following it answered None (404) at once; now it waits for the record to come back.

    async def scenario() -> None:
        node_a, node_b = two_nodes(redis_server.url)
        record = await node_a.submit_task("k", "h", b"x", {})
        polling = asyncio.ensure_future(node_b.task_view(record.task_id, wait=6.0))
        await asyncio.sleep(0.5)
        await node_a.shared._client.delete("ocr-test:task:" + record.task_id)  # type: ignore[union-attr]
        await asyncio.sleep(1.0)
        node_a.pool.jobs[0].future.set_result({"text_lines": [{"text": "read on A"}]})  # type: ignore[attr-defined]
        view = await polling
        assert view is not None and view.status == "done", view
        await close_nodes(node_a, node_b)

    asyncio.run(asyncio.wait_for(scenario(), timeout=40))


def test_the_result_lru_orders_uses_by_redis_clock_not_each_nodes(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each node stamped its uses with its own wall clock: a node an hour behind had every
    # result it stored or read evicted first, however recently used.

    async def scenario() -> None:
        behind, on_time = make_store(redis_server.url, max_results=2), make_store(redis_server.url, max_results=2)
        real_time = time.time
        await on_time.put_result("old", {"text_lines": [], "n": 1})
        await asyncio.sleep(0.01)
        monkeypatch.setattr(redis_store.time, "time", lambda: real_time() - 3600)  # the node behind
        await behind.put_result("recent", {"text_lines": [], "n": 2})
        assert await behind.get_result("recent") is not None  # and used again just now
        monkeypatch.setattr(redis_store.time, "time", real_time)
        await asyncio.sleep(0.01)
        await on_time.put_result("new", {"text_lines": [], "n": 3})  # one too many: the LRU one goes
        assert await on_time.get_result("old") is None
        assert await on_time.get_result("recent") is not None
        for store in (behind, on_time):
            await store.close()

    asyncio.run(asyncio.wait_for(scenario(), timeout=20))


# ---- the real server: two nodes with real workers on one Redis ------------------------------


def test_a_task_finished_while_redis_was_away_is_polled_done_on_the_other_node(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    nodes: list[RunningServer] = []
    try:
        nodes.extend(_start_nodes(tmp_path, redis_server.url, 2))  # one worker each, loading at once
        node1, node2 = nodes
        word = random_word()
        pause(redis_server)
        submitted = upload(node1.url, text_image(word), block_flag="false")  # Redis does not answer
        assert submitted.status_code == 202, submitted.text
        status_url = submitted.json()["status_url"]
        unknown = requests.get(node2.url + status_url, timeout=30)  # node 2 cannot ask Redis about it
        assert unknown.status_code == 503, unknown.text  # was 404 task_not_found: "stop polling"
        assert unknown.json()["error"]["code"] == "store_unavailable" and unknown.headers["Retry-After"] == "2"
        local = requests.get(node1.url + status_url, params={"wait": 30}, timeout=60)
        assert local.json()["status"] == "done"  # node 1 has it; Redis never heard of it
        resume(redis_server)
        deadline = time.monotonic() + 10
        while True:  # Redis is back: node 1 writes the outcome within its back-off and a retry
            polled = requests.get(node2.url + status_url, timeout=10)
            if polled.status_code == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert polled.status_code == 200, polled.text  # was 404 task_not_found for good
        assert polled.json()["status"] == "done"
        assert word in " ".join(line["text"] for line in polled.json()["text_lines"])
    finally:
        resume(redis_server)
        for node in nodes:
            with contextlib.suppress(Exception):
                node.stop()


def _lines_image(lines: list[str]) -> bytes:
    """A PNG of several lines of text: an answer of some kilobytes of JSON."""
    import io

    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=40)
    image = Image.new("RGB", (900, 80 + 70 * len(lines)), "white")
    draw = ImageDraw.Draw(image)
    for index, line in enumerate(lines):
        draw.text((40, 40 + 70 * index), line, fill="black", font=font)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def test_a_task_whose_answer_is_larger_than_task_bytes_says_so_when_polled(server_factory) -> None:  # type: ignore[no-untyped-def]
    # The record was dropped and its poll answered 404 "no such task (unknown id, or it
    # expired)" a second after the 202 that gave the id: the client could not tell why.
    config = base_config(number=1)
    config["service"]["task_bytes"] = 1000
    server = server_factory(config)
    data = _lines_image([" ".join(random_word(5) for _ in range(3)) for _ in range(8)])
    submitted = server.ocr_upload(data, block_flag="false")
    assert submitted.status_code == 202, submitted.text
    status_url = server.url + submitted.json()["status_url"]
    # A long poll waiting as the task ends may still be handed the whole answer; a poll after is not.
    finished = requests.get(status_url, params={"wait": 30}, timeout=60)
    assert finished.status_code == 200 and finished.json()["status"] in ("done", "failed"), finished.text
    polled = requests.get(status_url, timeout=10)
    assert polled.status_code == 200, polled.text
    body = polled.json()
    assert body["status"] == "failed" and body["error"]["code"] == "result_too_large", body
    assert "service.task_bytes" in body["error"]["message"] and "block_flag=true" in body["error"]["message"]
    again = server.ocr_upload(data)  # as the message says: the blocking answer has it all
    assert again.status_code == 200 and len(again.json()["text_lines"]) >= 8
    cache = server.health()["cache"]
    assert cache["tasks_too_large"] == 1 and 0 < cache["tasks_bytes"] <= 1000
