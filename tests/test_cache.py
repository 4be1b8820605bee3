"""TTL + LRU cache semantics, with an injected clock; task long-polls over a fake-engine pool."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import time

import pytest

from cache import OcrService, TTLLRUCache
from cache.redis_store import RedisStore
from ocr_pool import PoolError, WorkerPool
from tests.test_pool import fresh, run, wait_for


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_ttl_is_enforced_on_read() -> None:
    clock = FakeClock()
    cache: TTLLRUCache[str] = TTLLRUCache(capacity=10, ttl=5, clock=clock)
    cache.set("a", "A")
    clock.now = 4.9
    assert cache.get("a") == "A"
    clock.now = 5.0
    assert cache.get("a") is None
    assert len(cache) == 0 and cache.expirations == 1


def test_a_read_is_one_lookup_that_still_expires_refreshes_and_misses() -> None:
    # TTLLRUCache.get reads the entry once (no `in` first): an expired entry is still a miss
    # that is dropped and counted, a replaced one answers its new value, a read refreshes LRU.
    clock = FakeClock()
    cache: TTLLRUCache[dict] = TTLLRUCache(capacity=2, ttl=5, clock=clock)
    first, second = {"v": 1}, {"v": 2}
    cache.set("a", first)
    cache.set("a", second)
    assert cache.get("a") is second
    assert cache.get("missing") is None and cache.expirations == 0
    cache.set("b", {"v": 3})
    assert cache.get("a") is second  # "a" read last: "b" is the one pushed out next
    cache.set("c", {"v": 4})
    assert cache.get("b") is None and cache.get("a") is second
    clock.now = 5.0
    assert cache.get("a") is None and cache.get("c") is None
    assert len(cache) == 0 and cache.expirations == 2


@pytest.mark.parametrize("value", ["auto", "on", "off", True, 1, 1.0, 0, None, "x\u00e9"])
def test_a_single_parameter_encodes_as_sorted_json_and_keeps_types_apart(value: object) -> None:
    import json

    from cache.service import params_text

    assert params_text({"det": value}) == json.dumps({"det": value}, sort_keys=True)
    assert params_text({"det": value, "pdf_text": "ocr"}) == json.dumps(
        {"det": value, "pdf_text": "ocr"}, sort_keys=True
    )
    # 1, 1.0 and True are equal as dict keys but must not share a memoised text.
    assert len({params_text({"det": v}) for v in (1, 1.0, True)}) == 3


def test_eviction_is_least_recently_used_not_oldest() -> None:
    cache: TTLLRUCache[int] = TTLLRUCache(capacity=2, ttl=100, clock=FakeClock())
    cache.set("a", 1)
    cache.set("b", 2)
    assert cache.get("a") == 1  # "a" is now the most recently used
    cache.set("c", 3)
    assert cache.get("b") is None
    assert cache.get("a") == 1 and cache.get("c") == 3
    assert cache.evictions == 1


def test_listing_the_entries_leaves_their_recency_alone() -> None:
    # The list is what a node writes to Redis again after Redis lost its data; reading each
    # entry through the cache made every one "recently used" in insertion order.
    clock = FakeClock()
    cache: TTLLRUCache[int] = TTLLRUCache(capacity=3, ttl=100, clock=clock)
    for key, value in (("a", 1), ("b", 2), ("c", 3)):
        cache.set(key, value)
    cache.get("a")  # "b" is now the least recently used
    assert sorted(cache.values()) == [1, 2, 3]
    cache.set("d", 4)
    assert cache.get("b") is None and cache.get("a") == 1
    clock.now += 101
    assert cache.values() == []


def test_zero_capacity_or_ttl_disables_caching() -> None:
    assert len(_filled(TTLLRUCache(capacity=0, ttl=10))) == 0
    assert len(_filled(TTLLRUCache(capacity=10, ttl=0))) == 0


def test_purge_frees_expired_entries() -> None:
    clock = FakeClock()
    cache: TTLLRUCache[int] = TTLLRUCache(capacity=10, ttl=1, clock=clock)
    for key in "abc":
        cache.set(key, 1)
    clock.now = 2
    assert cache.purge_expired() == 3 and len(cache) == 0


def _filled(cache: TTLLRUCache[int]) -> TTLLRUCache[int]:
    cache.set("a", 1)
    return cache


def test_task_long_poll_answers_when_the_task_finishes() -> None:
    async def check(pool: WorkerPool) -> None:
        service = OcrService(
            pool, engine_identity="fake", cache_capacity=10, cache_ttl=60, task_capacity=10, task_ttl=60
        )
        record = await service.submit_task("slow", "h1", b"sleep:0.5", {})
        early = await service.task_view(record.task_id, wait=0.05)
        assert early is not None and early.status in ("queued", "running")
        started = time.monotonic()
        done = await service.task_view(record.task_id, wait=30)
        # It answered when the task finished, not when the 30 s ran out.
        assert done is not None and done.status == "done" and time.monotonic() - started < 15
        assert done.result is not None and done.result["text_lines"][0]["text"] == "sleep:0.5"
        failing = await service.submit_task("bad", "h2", b"bad", {})
        failed = await service.task_view(failing.task_id, wait=30)
        assert failed is not None and failed.status == "failed"
        assert failed.error is not None and failed.error.code == "unsupported_image"
        assert await service.task_view("no-such-task", wait=0.1) is None

    run(check)


def test_a_task_polled_as_it_finishes_never_goes_back_to_queued() -> None:
    # The job ends a few loop turns before the record copies its outcome; polled in between,
    # a task read "running", then "queued", then "done".
    order = {"queued": 0, "running": 1, "done": 2, "failed": 2}

    async def check(pool: WorkerPool) -> None:
        service = OcrService(
            pool, engine_identity="fake", cache_capacity=10, cache_ttl=60, task_capacity=10, task_ttl=60
        )
        for index, payload in enumerate((b"sleep:0.2", b"bad")):
            record = await service.submit_task(f"k{index}", "h", payload, {})
            seen = [record.status]
            while seen[-1] not in ("done", "failed"):
                await asyncio.sleep(0)  # every loop turn, as a poll could land on any
                view = await service.task_view(record.task_id)
                assert view is not None
                seen.append(view.status)
            ranks = [order[status] for status in seen]
            assert ranks == sorted(ranks), [status for i, status in enumerate(seen) if i == 0 or status != seen[i - 1]]

    run(check)


def test_finished_task_records_keep_the_result_not_the_image() -> None:
    async def check(pool: WorkerPool) -> None:
        service = OcrService(
            pool, engine_identity="fake", cache_capacity=10, cache_ttl=60, task_capacity=10, task_ttl=60
        )
        for key, payload in (("ok", fresh(b"some text")), ("bad", fresh(b"bad"))):
            baseline = sys.getrefcount(payload)
            record = await service.submit_task(key, key, payload, {})
            assert record.computation is not None and record.computation.job is not None
            job = record.computation.job
            view = await service.task_view(record.task_id, wait=30)
            assert view is not None and view.status in ("done", "failed")
            await wait_for(lambda record=record: record.computation is None)
            assert job.payload is None and sys.getrefcount(payload) == baseline
            assert (await service.task_view(record.task_id)) == view  # still pollable, same answer

    run(check)


def test_request_after_the_last_waiter_left_a_queued_run_gets_the_result() -> None:
    async def check(pool: WorkerPool) -> None:
        service = OcrService(
            pool, engine_identity="fake", cache_capacity=10, cache_ttl=60, task_capacity=10, task_ttl=60
        )
        busy = await service.join("busy", b"sleep:1", {})  # the only worker is taken
        queued = await service.join("x", b"image x", {})
        assert queued.state == "queued"
        service.release(queued)  # its only client disconnected: the queued run is dropped
        # The same image again, before the cancellation has travelled anywhere (two requests
        # handled in one event-loop turn): it must get a run of its own, not the doomed one.
        again = await service.join("x", b"image x", {})
        result = await again.future
        assert result["text_lines"][0]["text"] == "image x"
        assert pool.tasks_cancelled == 1
        await busy.future

    run(check, size=1)


def fake_service(
    pool: WorkerPool, failure_ttl: float = 0.0, shared: RedisStore | None = None, task_capacity: int = 10
) -> OcrService:
    """A small service over `pool` (10 results and tasks, 60 s each), optionally sharing `shared`."""
    return OcrService(
        pool,
        engine_identity="fake",
        cache_capacity=10,
        cache_ttl=60,
        task_capacity=task_capacity,
        task_ttl=60,
        failure_ttl=failure_ttl,
        shared=shared,
    )


async def run_to_end(service: OcrService, key: str, payload: bytes) -> PoolError:
    """Join the run for `key` and return how it failed (join itself may refuse at once)."""
    with pytest.raises(PoolError) as failure:
        computation = await service.join(key, payload, {})
        try:
            await computation.future
        finally:
            service.release(computation)
    return failure.value


def test_an_image_that_crashes_workers_is_remembered_not_retried() -> None:
    async def check(pool: WorkerPool) -> None:
        service = fake_service(pool, failure_ttl=60)
        first = await run_to_end(service, "poison", b"crash")
        assert first.code == "worker_crashed" and pool.restarts["crashed"] == 2
        runs = pool.tasks_run
        again = await run_to_end(service, "poison", b"crash")
        assert again.code == "worker_crashed" and "remembered from an earlier attempt" in again.message
        await asyncio.sleep(0.5)  # room for a worker death to be seen, were one caused
        assert pool.restarts["crashed"] == 2 and pool.tasks_run == runs
        # Other images are not affected.
        fine = await service.join("fine", b"fine", {})
        assert (await fine.future)["text_lines"][0]["text"] == "fine"

    run(check)


def test_a_result_the_store_fails_to_keep_is_still_answered(monkeypatch: pytest.MonkeyPatch) -> None:
    # A store that raised anything but a Redis error left the run's future unsettled: its
    # clients waited until they gave up, and every later request for the image joined it.
    async def check(pool: WorkerPool) -> None:
        service = fake_service(pool)

        async def failing_put(key: str, result: object) -> None:
            raise TypeError("Type is not JSON serializable")

        monkeypatch.setattr(service.results, "put", failing_put)
        for _ in range(2):  # and the image is not left in flight
            computation = await service.join("unstorable", b"unstorable", {})
            result = await asyncio.wait_for(computation.future, timeout=10)
            assert result["text_lines"][0]["text"] == "unstorable"
            service.release(computation)
        assert pool.tasks_run == 2  # nothing was cached

    run(check)


def test_failure_ttl_zero_retries_the_image_every_time() -> None:
    async def check(pool: WorkerPool) -> None:
        service = fake_service(pool, failure_ttl=0)
        for _ in range(2):
            assert (await run_to_end(service, "poison", b"crash")).code == "worker_crashed"
        assert pool.restarts["crashed"] == 4

    run(check)


def test_a_timeout_that_killed_a_worker_is_remembered_a_queued_one_is_not() -> None:
    async def check(pool: WorkerPool) -> None:
        service = fake_service(pool, failure_ttl=60)
        slow = asyncio.ensure_future(run_to_end(service, "slow", b"sleep:30"))
        await asyncio.sleep(0)  # the slow image takes the only worker first
        queued = await run_to_end(service, "waiting", b"waiting")  # timed out in the queue, behind it
        assert (await slow).code == "timeout" and queued.code == "queue_timeout"
        await wait_for(lambda: pool.restarts["timeout"] == 1 and pool.ready_count == 1)
        again = await run_to_end(service, "slow", b"sleep:30")
        assert again.code == "timeout" and "remembered" in again.message and "send it again" not in again.message
        assert pool.restarts["timeout"] == 1
        # Waiting in a queue says nothing about the image: it is tried again and read.
        retried = await service.join("waiting", b"waiting", {})
        assert (await retried.future)["text_lines"][0]["text"] == "waiting"

    run(check, size=1, task_timeout=1.0)


def test_a_timeout_of_a_worker_that_could_not_run_is_not_remembered() -> None:
    """A worker stopped (SIGSTOP, a frozen cgroup) or starved of CPU by other work past
    task_timeout says nothing about its image: the error says why, and the image is read
    when sent again (it was answered the remembered timeout for failure_ttl seconds)."""

    async def check(pool: WorkerPool) -> None:
        service = fake_service(pool, failure_ttl=60)

        def busy_pids() -> list[int]:
            return [w["pid"] for w in pool.stats()["workers"] if w["state"] == "busy"]

        # Stopped: SIGSTOP as soon as the image is on its worker.
        stopped = asyncio.ensure_future(run_to_end(service, "stopped", b"sleep:0.5"))
        await wait_for(lambda: busy_pids() != [])
        (pid,) = busy_pids()
        os.kill(pid, signal.SIGSTOP)
        error = await stopped
        assert error.code == "timeout" and "stopped" in error.message and "send it again" in error.message
        await wait_for(lambda: pool.ready_count == 1)
        again = await service.join("stopped", b"sleep:0.5", {})
        assert (await again.future)["text_lines"][0]["text"] == "sleep:0.5"
        service.release(again)
        # Starved: its CPU shared with two busy processes, it waits two thirds of the run.
        cpu = min(os.sched_getaffinity(0))
        spin = "import time\nt = time.monotonic() + 8\nwhile time.monotonic() < t: pass"
        spinners = [await asyncio.create_subprocess_exec(sys.executable, "-c", spin) for _ in range(2)]
        try:
            for spinner in spinners:
                os.sched_setaffinity(spinner.pid, {cpu})
            starved = asyncio.ensure_future(run_to_end(service, "starved", b"spin:10"))
            await wait_for(lambda: busy_pids() != [])
            os.sched_setaffinity(busy_pids()[0], {cpu})
            error = await starved
        finally:
            for spinner in spinners:
                spinner.kill()
                await spinner.wait()
        assert error.code == "timeout" and "for a CPU" in error.message, error.message
        await wait_for(lambda: pool.ready_count == 1)
        assert service.flight.remembered_failure("starved") is None

    run(check, size=1, task_timeout=3.0)


def test_workers_that_keep_each_other_waiting_for_a_cpu_still_blame_the_image() -> None:
    """Three slow images in three workers on one CPU: each waits two thirds of its run for the
    CPU, but its own pool holds it: the timeouts are the images', remembered as such."""

    async def check(pool: WorkerPool) -> None:
        service = fake_service(pool, failure_ttl=60)
        cpu = min(os.sched_getaffinity(0))
        for pid in pool.worker_pids():
            os.sched_setaffinity(pid, {cpu})
        errors = await asyncio.gather(*(run_to_end(service, f"slow {n}", f"spin:10 {n}".encode()) for n in range(3)))
        assert all(error.code == "timeout" and "for a CPU" not in error.message for error in errors), errors
        assert all(service.flight.remembered_failure(f"slow {n}") is not None for n in range(3))

    run(check, size=3, task_timeout=3.0, cpus=1)


def test_remote_polling_backs_off_and_stops_at_its_deadline() -> None:
    from cache.remote_poll import poll_pauses

    async def pauses(deadline: float | None, max_pause: float, limit: int) -> list[float]:
        seen, last = [], time.monotonic()
        async for _ in poll_pauses(deadline, first_pause=0.01, max_pause=max_pause):
            now = time.monotonic()
            seen.append(now - last)
            last = now
            if len(seen) == limit:
                break
        return seen

    growing = asyncio.run(pauses(None, max_pause=0.04, limit=6))
    # 0.01, 0.015, 0.0225, 0.03375, then capped at 0.04: each pause at least what it should be.
    assert [round(p, 3) >= want for p, want in zip(growing, [0.01, 0.015, 0.022, 0.033, 0.04, 0.04])] == [True] * 6
    started = time.monotonic()
    bounded = asyncio.run(pauses(started + 0.2, max_pause=0.05, limit=1000))
    assert time.monotonic() - started < 2 and 3 <= len(bounded) < 1000  # ended by the deadline, not the limit


def test_unfinished_task_records_are_never_pushed_out_and_the_count_is_bounded() -> None:
    # service.task_number 1: a second task used to evict the first while it still ran (its
    # poll answered 404), and a record whose TTL passed mid-run vanished until it finished.
    from cache.task_store import TaskRecord, TaskStore
    from ocr_pool import QueueFullError

    class Running:
        state = "running"

        def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
            self.future: asyncio.Future[dict] = loop.create_future()

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        store = TaskStore(capacity=1, ttl=0.05)
        first = TaskRecord("a" * 64)
        first.computation = Running(loop)  # type: ignore[assignment]
        await store.add(first)
        with pytest.raises(QueueFullError):
            store.refuse_if_full()  # one unfinished task is the bound here
        cached = TaskRecord("b" * 64)
        cached.result = {"text_lines": []}
        await store.add(cached)  # an answer from the cache: finished at once
        await asyncio.sleep(0.1)  # past the TTL
        view = await store.view(first.task_id)
        assert view is not None and view.status == "running"
        first.computation.future.set_result({"text_lines": [], "image_size": [1, 1]})  # type: ignore[union-attr]
        await asyncio.sleep(0.01)
        view = await store.view(first.task_id)
        assert view is not None and view.status == "done"  # kept a TTL from the end, not the start
        store.refuse_if_full()  # room again
        assert (store.stats()["tasks_kept"], store.stats()["tasks_unfinished"]) == (1, 0)

    asyncio.run(scenario())


# ---- byte budgets: results and task records are bounded by their JSON size, not only by count ----


def _json_len(value: object) -> int:
    import orjson

    return len(orjson.dumps(value))


def _text(size: int) -> str:
    """A string whose JSON encoding is `size` bytes (the two quotes included)."""
    return "x" * (size - 2)


def test_byte_budget_evicts_least_recently_used_until_it_holds() -> None:
    cache: TTLLRUCache[str] = TTLLRUCache(capacity=10, ttl=100, clock=FakeClock(), max_bytes=100)
    cache.set("a", _text(40))
    cache.set("b", _text(40))
    assert cache.bytes == 80 and len(cache) == 2
    assert cache.get("a") is not None  # "a" is now the most recently used
    cache.set("c", _text(40))  # 120 bytes: "b" goes, not "a"
    assert cache.get("b") is None and cache.get("a") is not None and cache.get("c") is not None
    assert cache.bytes == 80 and cache.evictions == 1
    cache.set("d", _text(90))  # both others must go to make room
    assert len(cache) == 1 and cache.bytes == 90 and cache.evictions == 3
    cache.set("d", _text(30))  # a replaced entry's bytes are not counted twice
    assert cache.bytes == 30 and len(cache) == 1


def test_an_entry_larger_than_the_whole_byte_budget_is_not_kept() -> None:
    cache: TTLLRUCache[str] = TTLLRUCache(capacity=10, ttl=100, clock=FakeClock(), max_bytes=100)
    cache.set("small", _text(50))
    cache.set("huge", _text(101))
    assert cache.get("huge") is None
    assert cache.get("small") is not None and cache.bytes == 50  # nothing was evicted for it
    assert cache.evictions == 0 and cache.too_large == 1
    cache.set("small", _text(500))  # a key re-stored too large: its older value is not served either
    assert cache.get("small") is None and cache.bytes == 0 and len(cache) == 0


def test_expiry_and_pop_release_the_bytes() -> None:
    clock = FakeClock()
    cache: TTLLRUCache[str] = TTLLRUCache(capacity=10, ttl=5, clock=clock, max_bytes=100)
    cache.set("a", _text(30))
    cache.set("b", _text(40))
    assert cache.pop("a") is not None and cache.bytes == 40
    clock.now = 5
    assert cache.get("b") is None and cache.bytes == 0 and cache.expirations == 1
    cache.set("c", _text(60))
    clock.now = 20
    assert cache.purge_expired() == 1 and cache.bytes == 0


def test_bytes_leave_out_entries_expired_on_an_idle_cache() -> None:
    # /metrics reads `bytes` on a node no request touches: expired entries must not count.
    clock = FakeClock()
    cache: TTLLRUCache[str] = TTLLRUCache(capacity=10, ttl=5, clock=clock, max_bytes=100)
    cache.set("a", _text(30))
    assert cache.bytes == 30
    clock.now = 6
    assert cache.bytes == 0 and cache.expirations == 1


def test_an_entry_is_measured_once_when_stored_not_on_reads() -> None:
    measured: list[object] = []

    def size_of(value: dict) -> int:
        measured.append(value)
        return _json_len(value)

    cache: TTLLRUCache[dict] = TTLLRUCache(capacity=10, ttl=100, clock=FakeClock(), max_bytes=1000, size_of=size_of)
    result = {"text_lines": [{"text": "hello", "confidence": 0.99, "box": [[1, 2], [3, 4]]}]}
    cache.set("a", result)
    for _ in range(5):
        assert cache.get("a") is result
    assert len(measured) == 1 and cache.bytes == _json_len(result)


def test_byte_budget_stats_and_zero_budget() -> None:
    cache: TTLLRUCache[str] = TTLLRUCache(capacity=10, ttl=60, clock=FakeClock(), max_bytes=100)
    cache.set("a", _text(60))
    cache.set("b", _text(60))
    cache.set("c", _text(200))
    counts = (len(cache), cache.bytes, cache.max_bytes, cache.evictions, cache.expirations, cache.too_large)
    assert counts == (1, 60, 100, 1, 0, 1)
    # A budget of 0 keeps nothing, as a capacity of 0 does (and nothing is "too large" then).
    off: TTLLRUCache[str] = TTLLRUCache(capacity=10, ttl=60, max_bytes=0)
    off.set("a", "A")
    assert len(off) == 0 and off.too_large == 0
    # Without a byte budget (the failure memory) entries are not measured at all.
    unbounded: TTLLRUCache[object] = TTLLRUCache(capacity=10, ttl=60)
    unbounded.set("a", object())  # not JSON: would fail to measure
    assert len(unbounded) == 1 and unbounded.max_bytes is None and unbounded.bytes == 0


def _result(text: str, lines: int = 10) -> dict:
    line = {"text": text, "confidence": 0.98765, "box": [[100, 200], [900, 200], [900, 240], [100, 240]]}
    return {"text_lines": [dict(line) for _ in range(lines)], "image_size": [1700, 2200], "timing": {"total": 812.5}}


def test_result_store_honours_its_byte_budget() -> None:
    from cache.result_store import MemoryResultStore

    size = _json_len(_result("first page"))
    store = MemoryResultStore(capacity=100, ttl=60, max_bytes=int(size * 1.5))

    async def scenario() -> None:
        await store.put("k1", _result("first page"))
        await store.put("k2", _result("other page"))  # both do not fit: the first goes
        assert await store.get("k1") is None and await store.get("k2") is not None
        await store.put("k3", _result("a whole document", lines=100))  # larger than the budget
        assert await store.get("k3") is None and await store.get("k2") is not None

    asyncio.run(scenario())
    stats = store.stats()
    assert stats["size"] == 1 and stats["bytes"] == size and stats["max_bytes"] == int(size * 1.5)
    assert stats["evictions"] == 1 and stats["too_large"] == 1


def test_task_store_honours_its_byte_budget_for_finished_records_only() -> None:
    from cache.task_store import TaskRecord, TaskStore

    class Running:
        state = "running"

        def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
            self.future: asyncio.Future[dict] = loop.create_future()

    def finished(text: str) -> TaskRecord:
        record = TaskRecord("a" * 64)
        record.result = _result(text)
        return record

    record_size = _json_len(finished("first").view().to_json())

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        store = TaskStore(capacity=100, ttl=60, max_bytes=int(record_size * 1.5))
        unfinished = TaskRecord("b" * 64)
        unfinished.computation = Running(loop)  # type: ignore[assignment]
        await store.add(unfinished)
        first, second = finished("first"), finished("other")
        await store.add(first)
        await store.add(second)  # the budget holds one finished record: the first goes
        assert await store.view(first.task_id) is None
        assert (await store.view(second.task_id)) is not None
        # An unfinished record is never pushed out, whatever the budget.
        assert (await store.view(unfinished.task_id)) is not None
        assert store.stats()["tasks_bytes"] == record_size
        # When it ends it is kept under the same rule, and pushes out the least recently used.
        unfinished.computation.future.set_result(_result("third"))  # type: ignore[union-attr]
        await wait_for(lambda: not store.unfinished)
        assert (await store.view(unfinished.task_id)) is not None and await store.view(second.task_id) is None
        huge = TaskRecord("c" * 64)
        huge.result = _result("a whole document", lines=100)  # larger than the budget: not kept
        await store.add(huge)
        # Its poll says so (it answered 404, as for an unknown id, seconds after the task began).
        gone = await store.view(huge.task_id)
        assert gone is not None and gone.status == "failed" and gone.result is None
        assert gone.error is not None and gone.error.code == "result_too_large"
        assert store.stats() == {
            "tasks_kept": 2,
            "tasks_unfinished": 0,
            "tasks_bytes": _json_len(unfinished.view().to_json()) + _json_len(gone.to_json()),
            "tasks_max_bytes": int(record_size * 1.5),
            "tasks_evictions": 2,
            "tasks_too_large": 1,
        }

    asyncio.run(scenario())


def test_service_wires_the_byte_budgets_into_both_stores() -> None:
    service = OcrService(
        None,  # type: ignore[arg-type]  # no pool needed to read the stores' settings
        engine_identity="fake",
        cache_capacity=10,
        cache_ttl=60,
        cache_bytes=1000,
        task_capacity=10,
        task_ttl=60,
        task_bytes=2000,
    )
    stats = service.stats()
    assert (stats["bytes"], stats["max_bytes"]) == (0, 1000)
    assert (stats["tasks_bytes"], stats["tasks_max_bytes"]) == (0, 2000)


def test_byte_budget_settings_defaults_and_validation() -> None:
    from settings import ConfigError, settings_from_dict

    service = settings_from_dict({}).service
    assert service.img_bytes == 256 * 1024 * 1024 and service.task_bytes == 256 * 1024 * 1024
    assert settings_from_dict({"service": {"img_bytes": 0}}).service.img_bytes == 0  # as img_number 0: keep none
    refused = [
        ({"img_bytes": -1}, "service.img_bytes must be >= 0"),
        ({"task_bytes": 0}, "service.task_bytes must be >= 1"),  # as task_number: a task must be pollable
        ({"img_bytes": "256MB"}, "service.img_bytes: expected int"),
        ({"task_bytes": 1.5e8}, "service.task_bytes: expected int"),
        ({"img_bytes": 10**400}, "service.img_bytes: expected int"),
    ]
    for service_keys, message in refused:
        with pytest.raises(ConfigError, match=re.escape(message)):
            settings_from_dict({"service": service_keys})


class _RecordingShared:
    """A shared store that takes every write, for the task store's re-sharing."""

    def __init__(self) -> None:
        self.on_data_lost: list = []
        self.written: list[tuple[str, str]] = []

    async def put_task(self, task_id: str, view: dict) -> bool:
        self.written.append((task_id, view["status"]))
        return True

    async def beat_task(self, task_id: str, view: dict) -> bool:
        await self.put_task(task_id, view)
        return False

    def keep_alive(self, renew, interval: float) -> asyncio.Task:
        async def loop() -> None:
            while await renew():
                await asyncio.sleep(interval)

        return asyncio.ensure_future(loop())


def test_after_redis_lost_its_data_every_finished_record_is_written_again() -> None:
    # Unfinished records were queued for the rewrite too, and the bounded retry list then
    # pushed finished ones out: they read 404 on other nodes for good.
    from cache.task_store import TaskRecord, TaskStore

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        shared = _RecordingShared()
        store = TaskStore(capacity=4, ttl=600, shared=shared)  # type: ignore[arg-type]
        finished = []
        for index in range(4):
            record = TaskRecord(f"done-{index}")
            record.result = {"text_lines": [], "image_size": [1, 1]}
            await store.add(record)
            finished.append(record.task_id)
        pending = []
        for index in range(2):
            record = TaskRecord(f"running-{index}")
            computation = type("Run", (), {"job": None, "state": "queued"})()
            computation.future = loop.create_future()
            computation.task_id = f"run-{index}"
            record.computation = computation  # type: ignore[assignment]
            await store.add(record)
            pending.append(computation.future)
        shared.written.clear()
        for lost in shared.on_data_lost:
            lost()
        await asyncio.sleep(0.1)
        assert {task_id for task_id, status in shared.written if status == "done"} == set(finished)
        for future in pending:
            future.cancel()
        for beat in list(store._heartbeats.values()):
            beat.cancel()
        if store._resharing is not None:
            store._resharing.cancel()

    asyncio.run(scenario())
