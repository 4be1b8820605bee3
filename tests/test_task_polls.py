"""Task polls: a long poll whose client leaves stops waiting; a dropped finished task answers 410, not 404."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, cast
from urllib.parse import urlsplit

import pytest
import requests
from PIL import Image
from tornado import httpclient, netutil, web

from cache import OcrService, TTLLRUCache, task_store
from cache.redis_store import SharedStoreUnavailableError
from cache.task_store import DROPPED_PER_TASK, TaskRecord, TaskStore, record_size
from handlers.context import AppContext
from handlers.ocr import TaskHandler
from handlers.upload_budget import UploadBudget
from http_listener import GuardedHTTPServer
from settings import settings_from_dict
from tests.conftest import RunningServer, base_config, metric, random_word, text_image
from tests.pdf_builder import image_pdf
from tests.test_cache import FakeClock, fake_service
from tests.test_scaleout import REDIS, FakePool, make_store, redis_url, service_node

__all__ = ["redis_url"]  # the fixture, imported for its use by name here


class Running:
    """A computation that runs until the test ends it."""

    state = "running"

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.future: asyncio.Future[dict[str, Any]] = loop.create_future()


def finished_record(text: str = "read") -> TaskRecord:
    record = TaskRecord("a" * 64)
    record.result = {"text_lines": [{"text": text}], "image_size": [1, 1]}
    return record


# ---- the stores, with a fake clock ----------------------------------------------------------


def test_the_cache_says_which_entries_it_dropped_and_why() -> None:
    clock, dropped = FakeClock(), []
    cache: TTLLRUCache[str] = TTLLRUCache(
        2, 10, clock, max_bytes=10, on_drop=lambda key, value, why: dropped.append((key, value, why))
    )
    for key in "abc":  # 3 bytes of JSON each
        cache.set(key, key)  # "c": past capacity 2, the least recently used goes
    cache.set("d", "d" * 6)  # "b" goes for the count, then "c" for the bytes (3 + 8 > 10)
    assert dropped == [("a", "a", "count"), ("b", "b", "count"), ("c", "c", "bytes")]
    cache.pop("d")  # taken out on purpose: not a drop
    cache.set("e", "e")
    clock.now = 10
    assert cache.get("e") is None
    assert dropped[3:] == [("e", "e", "expired")]


def test_a_dropped_finished_record_is_remembered_with_why_and_when() -> None:
    async def scenario() -> None:
        clock = FakeClock()
        store = TaskStore(capacity=2, ttl=100, clock=clock)
        first, second, third = finished_record(), finished_record(), finished_record()
        await store.add(first)
        clock.now = 5
        await store.add(second)
        clock.now = 7
        await store.add(third)  # the third of two: the first is pushed out
        clock.now = 9
        evicted = store.dropped(first.task_id)
        assert evicted is not None and (evicted.reason, evicted.kept_s, evicted.ago_s) == ("count", 7, 2)
        clock.now = 500  # both others expired long ago: noticed on this read, dated to their TTL
        assert await store.view(second.task_id) is None
        expired = store.dropped(second.task_id)
        assert expired is not None and (expired.reason, expired.kept_s, expired.ago_s) == ("expired", 100, 395)
        assert store.dropped("0" * 32) is None  # never seen: nothing to say
        unfinished = TaskRecord("b" * 64)
        unfinished.computation = Running(asyncio.get_running_loop())  # type: ignore[assignment]
        await store.add(unfinished)
        clock.now = 10_000  # an unfinished record neither expires nor is dropped
        assert await store.view(unfinished.task_id) is not None and store.dropped(unfinished.task_id) is None

    asyncio.run(scenario())


def test_the_bytes_bound_is_named_and_the_remembered_ids_are_bounded() -> None:
    async def scenario() -> None:
        first = finished_record()
        store = TaskStore(capacity=100, ttl=100, max_bytes=int(record_size(first) * 1.5), clock=FakeClock())
        await store.add(first)
        await store.add(finished_record())
        dropped = store.dropped(first.task_id)
        assert dropped is not None and dropped.reason == "bytes"
        small = TaskStore(capacity=2, ttl=100, clock=FakeClock())
        records = [finished_record(str(index)) for index in range(50)]
        for record in records:
            await small.add(record)
        remembered = [record for record in records if small.dropped(record.task_id) is not None]
        # The last DROPPED_PER_TASK * capacity dropped, the oldest forgotten (two are still kept).
        assert remembered == records[-2 - DROPPED_PER_TASK * 2 : -2]

    asyncio.run(scenario())


def test_a_cancelled_long_poll_stops_waiting_and_leaves_the_task_and_other_polls_alone() -> None:
    async def scenario() -> None:
        store = TaskStore(capacity=10, ttl=60)
        record = TaskRecord("a" * 64)
        running = Running(asyncio.get_running_loop())
        record.computation = running  # type: ignore[assignment]
        await store.add(record)
        leaving = asyncio.ensure_future(store.view(record.task_id, wait=30))
        staying = asyncio.ensure_future(store.view(record.task_id, wait=30))
        await asyncio.sleep(0.05)
        assert store.polls_waiting == 2
        leaving.cancel()
        await asyncio.sleep(0.01)
        assert store.polls_waiting == 1 and not running.future.cancelled() and not staying.done()
        running.future.set_result({"text_lines": [], "image_size": [1, 1]})
        view = await asyncio.wait_for(staying, 5)
        assert view is not None and view.status == "done" and store.polls_waiting == 0

    asyncio.run(scenario())


# ---- the poll's answer over HTTP: the handler on an in-process server -----------------------


async def poll_answers(service: OcrService, config: dict[str, Any], polls: Callable[[Any], Any]) -> None:
    """TaskHandler over `service` on an in-process server; `polls(fetch)` fetches task ids."""
    ctx = AppContext(settings_from_dict(config), service, cast(Any, None), "fake", [], UploadBudget(1))
    server = GuardedHTTPServer(web.Application([(r"/ocr_service/tasks/([^/]+)", TaskHandler, {"ctx": ctx})]))
    sockets = netutil.bind_sockets(0, "127.0.0.1")
    server.add_sockets(sockets)
    base = f"http://127.0.0.1:{sockets[0].getsockname()[1]}/ocr_service/tasks/"
    client = httpclient.AsyncHTTPClient()
    try:
        await polls(lambda task_id: client.fetch(base + task_id, raise_error=False))
    finally:
        server.stop()
        await server.close_all_connections()


def memory_service(task_ttl: float = 60, task_bytes: int | None = None) -> OcrService:
    return OcrService(
        cast(Any, None),
        engine_identity="fake",
        cache_capacity=1,
        cache_ttl=1,
        task_capacity=5,
        task_ttl=task_ttl,
        task_bytes=task_bytes,
    )


def json_error(body: bytes) -> dict[str, str]:
    return cast(dict[str, str], json.loads(body)["error"])


def test_a_poll_of_an_expired_task_is_410_naming_service_time() -> None:
    # The server keeps finished tasks at least 300 s (server.build_context): a real server
    # would take minutes to show an expiry, so the handler runs here over a store with 0.3 s.
    service = memory_service(task_ttl=0.3)

    async def polls(fetch: Any) -> None:
        record = finished_record()
        await service.tasks.add(record)
        assert (await fetch(record.task_id)).code == 200
        await asyncio.sleep(0.5)
        expired = await fetch(record.task_id)
        assert expired.code == 410, expired.body
        error = json_error(expired.body)
        assert error["code"] == "task_expired" and "service.time is 0.2 s" in error["message"], error
        unknown = await fetch("0" * 32)
        assert unknown.code == 404 and json_error(unknown.body)["code"] == "task_not_found"

    asyncio.run(poll_answers(service, {"service": {"time": 0.2}}, polls))


def test_a_poll_of_a_task_pushed_out_past_the_byte_budget_is_410_naming_service_task_bytes() -> None:
    first = finished_record()
    budget = int(record_size(first) * 1.5)
    service = memory_service(task_bytes=budget)

    async def polls(fetch: Any) -> None:
        await service.tasks.add(first)
        await service.tasks.add(finished_record())  # one record fits the budget: the first goes
        evicted = await fetch(first.task_id)
        assert evicted.code == 410, evicted.body
        error = json_error(evicted.body)
        assert error["code"] == "task_evicted" and f"service.task_bytes is {budget} " in error["message"], error

    asyncio.run(poll_answers(service, {"service": {"task_bytes": budget}}, polls))


@pytest.mark.skipif(REDIS is None, reason="needs Debian's redis-server (.ci/run installs it)")
def test_with_redis_the_node_that_ran_a_task_answers_its_expiry_and_others_do_not_know_it(redis_url: str) -> None:
    def node() -> OcrService:
        return OcrService(
            cast(Any, FakePool(0.05)),
            engine_identity="fake",
            cache_capacity=10,
            cache_ttl=60,
            task_capacity=1,
            task_ttl=1.0,
            shared=make_store(redis_url, task_ttl=1.0),
        )

    async def scenario() -> None:
        node_a, node_b = node(), node()
        first = await node_a.submit_task("k1", "h", b"x", {})
        assert (await node_a.task_view(first.task_id, wait=5)).status == "done"  # type: ignore[union-attr]
        second = await node_a.submit_task("k2", "h", b"x", {})
        assert (await node_a.task_view(second.task_id, wait=5)).status == "done"  # type: ignore[union-attr]
        # Pushed out of node A's memory (service.task_number 1), still in Redis: still answered.
        assert node_a.tasks.dropped(first.task_id) is not None
        assert (await node_a.task_view(first.task_id)) is not None
        await asyncio.sleep(1.5)  # Redis's copy expired too
        for record in (first, second):
            assert await node_a.task_view(record.task_id) is None
            dropped = node_a.tasks.dropped(record.task_id)
            assert dropped is not None and dropped.reason == "expired", dropped
            assert await node_b.task_view(record.task_id) is None and node_b.tasks.dropped(record.task_id) is None
        for service in (node_a, node_b):
            await service.shared.close()  # type: ignore[union-attr]

    asyncio.run(asyncio.wait_for(scenario(), timeout=30))


# ---- the real server ------------------------------------------------------------------------


def until(condition: Callable[[], bool], within: float, what: str) -> float:
    """Seconds it took `condition` to hold (AssertionError past `within`)."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > within:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - started


def polls_waiting(server: RunningServer) -> int:
    return int(server.health()["cache"]["task_polls_waiting"])


def test_a_long_poll_whose_client_left_stops_waiting_and_the_task_runs_on(one_worker_server: RunningServer) -> None:
    server = one_worker_server
    log_mark = len(server.log_text())
    (worker_pid,) = [w["pid"] for w in server.health()["workers"]["workers"]]
    word = random_word()
    os.kill(worker_pid, signal.SIGSTOP)  # the task stays running until the test lets it go on
    try:
        submitted = server.ocr_upload(text_image(word), block_flag="false")
        assert submitted.status_code == 202, submitted.text
        path = submitted.json()["status_url"]
        until(lambda: server.health()["workers"]["busy"] == 1, 30, "the task to reach the worker")
        address = urlsplit(server.url)
        leaving = socket.create_connection((address.hostname, address.port), timeout=10)
        leaving.sendall(f"GET {path}?wait=60 HTTP/1.1\r\nHost: {address.netloc}\r\n\r\n".encode())
        until(lambda: polls_waiting(server) == 1, 10, "the long poll to wait")
        answers: dict[str, requests.Response] = {}
        staying = threading.Thread(
            target=lambda: answers.setdefault("poll", requests.get(server.url + path, params={"wait": 30}, timeout=90))
        )
        staying.start()
        until(lambda: polls_waiting(server) == 2, 10, "the second long poll to wait")
        leaving.close()
        assert until(lambda: polls_waiting(server) == 1, 3, "the left poll to stop waiting") < 2.5
        assert metric(requests.get(f"{server.url}/metrics", timeout=10).text, "ocr_task_polls_waiting") == 1
        assert server.health()["workers"]["busy"] == 1  # the task was not touched
    finally:
        os.kill(worker_pid, signal.SIGCONT)
    staying.join(timeout=60)
    assert answers["poll"].status_code == 200 and answers["poll"].json()["status"] == "done", answers["poll"].text
    assert word in " ".join(line["text"] for line in answers["poll"].json()["text_lines"])
    polled = requests.get(server.url + path, timeout=10)
    assert polled.status_code == 200 and polled.json()["status"] == "done"
    assert polls_waiting(server) == 0
    assert "Traceback" not in server.log_text()[log_mark:]


def test_a_poll_of_a_task_pushed_out_by_newer_tasks_is_410_naming_service_task_number(server_factory: Any) -> None:
    config = base_config(number=1)
    config["service"]["task_number"] = 1
    server: RunningServer = server_factory(config)
    paths = []
    for _ in range(2):
        submitted = server.ocr_upload(text_image(random_word()), block_flag="false")
        assert submitted.status_code == 202, submitted.text
        paths.append(submitted.json()["status_url"])
        done = requests.get(server.url + paths[-1], params={"wait": 30}, timeout=60)
        assert done.status_code == 200 and done.json()["status"] == "done", done.text
    evicted = requests.get(server.url + paths[0], timeout=10)  # it answered 404 task_not_found
    assert evicted.status_code == 410, evicted.text
    error = evicted.json()["error"]
    assert error["code"] == "task_evicted" and "service.task_number is 1 " in error["message"], error
    assert requests.get(server.url + paths[1], timeout=10).status_code == 200
    unknown = requests.get(f"{server.url}/ocr_service/tasks/{'0' * 32}", timeout=10)
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "task_not_found"


def _text_page(words: list[str]) -> Image.Image:
    """A page of a few lines of text (a second or so of OCR)."""
    page = Image.new("L", (1240, 1754), 255)
    for row, word in enumerate(words):
        page.paste(Image.open(io.BytesIO(text_image(f"{word} {row}"))), (80, 100 + row * 140))
    return page


def test_a_cancelled_document_task_fails_as_cancelled_and_drops_its_pages_not_started(
    ocr_server: RunningServer,
) -> None:
    pages = 16
    runs_before = ocr_server.health()["ocr_runs"]
    pdf = image_pdf([_text_page([random_word() for _ in range(8)]) for _ in range(pages)], dpi=150)
    submitted = requests.post(
        f"{ocr_server.url}/ocr_service",
        data={"file_type": "file", "block_flag": "false"},
        files={"file": ("doc.pdf", pdf)},
        timeout=60,
    ).json()
    status_url = f"{ocr_server.url}{submitted['status_url']}"
    deadline = time.monotonic() + 120
    while (requests.get(status_url, timeout=30).json().get("pages_done") or 0) < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    cancelled = requests.delete(status_url, timeout=30)
    assert cancelled.status_code == 200, cancelled.text
    body = cancelled.json()
    assert body["status"] == "failed" and body["error"]["code"] == "cancelled", body
    assert body["pages_total"] == pages and 1 <= body["pages_done"] < pages  # how far it got
    assert "cancelled by its client" in body["error"]["message"]
    assert body["error"]["http_status"] == 503 and body["error"]["retry_after"] == 1  # as a blocking answer's header
    # From then on a poll says so (a long poll has nothing to wait for)...
    polled = requests.get(f"{status_url}?wait=20", timeout=60).json()
    assert polled["status"] == "failed" and polled["error"]["code"] == "cancelled"
    # ...and the pages that had not started are not read: the workers fall idle early.
    deadline = time.monotonic() + 60
    while ocr_server.health()["workers"]["busy"] and time.monotonic() < deadline:
        time.sleep(0.1)
    runs = ocr_server.health()["ocr_runs"]
    time.sleep(1.5)
    assert ocr_server.health()["ocr_runs"] == runs
    assert runs - runs_before < 1 + pages  # its probe and every page would have been
    # Cancelling it again answers it as it is.
    again = requests.delete(status_url, timeout=30)
    assert again.status_code == 200 and again.json()["error"]["code"] == "cancelled"


def test_cancelling_a_finished_an_unknown_or_a_malformed_task(ocr_server: RunningServer) -> None:
    word = random_word()
    queued = ocr_server.ocr_upload(text_image(word), block_flag="false").json()
    status_url = f"{ocr_server.url}{queued['status_url']}"
    done = requests.get(f"{status_url}?wait=30", timeout=60).json()
    assert done["status"] == "done"
    kept = requests.delete(status_url, timeout=30)
    assert kept.status_code == 200 and kept.json()["status"] == "done"
    assert kept.json()["text_lines"] == done["text_lines"]
    for task_id in ("0" * 32, "not-a-task"):
        missing = requests.delete(f"{ocr_server.url}/ocr_service/tasks/{task_id}", timeout=30)
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "task_not_found"
    assert "DELETE" in requests.post(status_url, timeout=30).headers["Allow"]


@pytest.mark.skipif(REDIS is None, reason="redis-server is not installed (test.sh installs it)")
def test_a_task_cancelled_on_another_node_is_cancelled_by_the_node_that_runs_it(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(task_store, "HEARTBEAT_S", 0.25)

    async def scenario() -> None:
        node_a = service_node(redis_url, FakePool(None, task_timeout=60.0))
        node_b = service_node(redis_url, FakePool(None, task_timeout=60.0))
        record = await node_a.submit_task("k", "h", b"x", {})
        await asyncio.sleep(0.1)
        view, elsewhere = await node_b.cancel_task(record.task_id)
        assert elsewhere and view is not None and view.status == "queued"
        deadline = time.monotonic() + 10
        while record.status != "failed" and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert record.error is not None and record.error.code == "cancelled"
        assert record.task_id not in node_a.tasks.unfinished
        await asyncio.sleep(0.3)  # the outcome reaches Redis
        seen_from_b = await node_b.task_view(record.task_id)
        assert seen_from_b is not None and seen_from_b.status == "failed" and seen_from_b.error is not None
        assert seen_from_b.error.code == "cancelled"
        # Redis not taking the request: nothing was cancelled, and the answer says so (503).
        other = await node_a.submit_task("k2", "h2", b"x", {})
        assert node_b.shared is not None

        async def unreachable(task_id: str) -> bool:
            return False

        node_b.shared.request_cancel = unreachable  # type: ignore[method-assign]
        with pytest.raises(SharedStoreUnavailableError, match="nothing was cancelled"):
            await node_b.cancel_task(other.task_id)
        assert other.status == "queued"
        for node in (node_a, node_b):
            assert node.shared is not None
            await node.shared.close()

    asyncio.run(asyncio.wait_for(scenario(), timeout=30))


def test_a_long_poll_of_a_task_answers_when_the_task_is_cancelled() -> None:
    # The poll waited for the run, which went on for another request or on its worker: 8-14 s
    # after the DELETE on a busy node, until the image was read.
    async def scenario() -> None:
        service = fake_service(FakePool(None, task_timeout=60.0))  # type: ignore[arg-type]  # never ends
        record = await service.submit_task("k", "h", b"x", {})
        polling = asyncio.ensure_future(service.task_view(record.task_id, wait=30))
        await asyncio.sleep(0.2)
        assert not polling.done()
        view, elsewhere = await service.cancel_task(record.task_id)
        assert view is not None and view.status == "failed" and not elsewhere
        polled = await asyncio.wait_for(polling, timeout=5)  # long before its 30 s
        assert polled is not None and polled.status == "failed" and polled.error is not None
        assert polled.error.code == "cancelled"

    asyncio.run(asyncio.wait_for(scenario(), timeout=30))
