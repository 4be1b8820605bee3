"""Worker pool protocol with a fake engine: fast checks of crash, timeout, recycle, queue."""

from __future__ import annotations

import asyncio
import errno
import gc
import os
import pickle
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from multiprocessing.context import SpawnProcess
from pathlib import Path
from typing import Any

import psutil
import pytest

from ocr_pool import (
    CgroupFiles,
    NoWorkerError,
    QueueFullError,
    QueueTimeoutError,
    TaskCancelledError,
    TaskFailedError,
    TaskTimeoutError,
    WorkerCrashedError,
    WorkerPool,
    WorkerStartError,
    usable_cpus,
)
from ocr_pool.framing import MessageReader
from ocr_pool.pool import SILENT_START_FAILURES_TO_REFUSE
from tests.conftest import REPO


def make_pool(**overrides: Any) -> WorkerPool:
    options = {
        "size": 2,
        "max_tasks": 100,
        "queue_size": 50,
        "task_timeout": 20.0,
        "start_timeout": 30.0,
        "engine_options": {},
        "factory": "tests.fake_engine:create_engine",
    }
    options.update(overrides)
    return WorkerPool(**options)


def run(test: Callable[[WorkerPool], Awaitable[None]], **overrides: Any) -> None:
    async def main() -> None:
        pool = make_pool(**overrides)
        await pool.start()
        try:
            await asyncio.wait_for(test(pool), timeout=60)
        finally:
            await pool.close(grace=1)
        assert pool.worker_pids() == []

    asyncio.run(main())


async def wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def test_results_come_back_from_worker_processes() -> None:
    async def check(pool: WorkerPool) -> None:
        jobs = [pool.submit(f"text {i}".encode(), {"det": "on"}) for i in range(10)]
        results = await asyncio.gather(*(job.future for job in jobs))
        assert [r["text_lines"][0]["text"] for r in results] == [f"text {i}" for i in range(10)]
        assert {r["pid"] for r in results} <= set(pool.worker_pids())
        assert os.getpid() not in {r["pid"] for r in results}
        assert pool.tasks_run == 10

    run(check)


def test_engine_errors_keep_their_code_and_the_worker() -> None:
    async def check(pool: WorkerPool) -> None:
        pids = set(pool.worker_pids())
        with pytest.raises(TaskFailedError) as error:
            await pool.submit(b"bad", {}).future
        assert error.value.code == "unsupported_image"
        assert set(pool.worker_pids()) == pids

    run(check)


def test_crashed_worker_task_is_retried_once_then_fails_cleanly() -> None:
    async def check(pool: WorkerPool) -> None:
        with pytest.raises(WorkerCrashedError) as crashed:
            await pool.submit(b"crash", {}).future
        assert pool.restarts["crashed"] == 2
        # How it died is said: a SIGKILL (the OOM killer, a kill -9) is not a segfault.
        assert str(crashed.value).endswith("died while processing this image (killed by SIGKILL)")
        # The pool heals and keeps serving.
        result = await pool.submit(b"after", {}).future
        assert result["text_lines"][0]["text"] == "after"

    run(check)


def test_killed_worker_in_flight_task_succeeds_on_retry() -> None:
    async def check(pool: WorkerPool) -> None:
        job = pool.submit(b"sleep:1.0", {})
        await asyncio.sleep(0.3)
        assert job.state == "running" and job.worker is not None
        os.kill(job.worker.pid, signal.SIGKILL)
        result = await job.future
        assert result["text_lines"][0]["text"] == "sleep:1.0"
        assert job.attempts == 2

    run(check)


def test_recycled_workers_leave_no_descriptors_or_processes_behind() -> None:
    # A dead worker's process object held two pipe descriptors until it was closed or
    # collected, and every finished job (kept for polling, or in a cycle that only the rare
    # full collection frees) held its worker's: 140 descriptors over 70 recycles in a soak.
    async def check(pool: WorkerPool) -> None:
        await pool.submit(b"first", {}).future
        await wait_for(lambda: pool.restarts["recycled"] == 1 and pool.ready_count == 1)
        before = len(os.listdir("/proc/self/fd"))
        finished = []
        for index in range(6):
            job = pool.submit(f"task {index}".encode(), {})
            await job.future
            finished.append(job)
            await wait_for(lambda recycled=index + 2: pool.restarts["recycled"] == recycled and pool.ready_count == 1)
        assert all(job.worker is None for job in finished)
        assert len(os.listdir("/proc/self/fd")) - before < 4  # was 2 more per recycled worker

    gc.disable()  # what is freed must be freed without a collection
    try:
        run(check, size=1, max_tasks=1)
    finally:
        gc.enable()


def test_a_reply_sent_just_before_its_worker_exited_is_not_lost() -> None:
    # A worker's pipe and its exit become readable together. Handling the exit first dropped
    # the reply still in the pipe: the task ran again (worker_crashed on its last attempt).
    async def check(pool: WorkerPool) -> None:
        job = pool.submit(b"exit-after:0.3", {})
        worker = job.worker
        assert worker is not None  # dispatched at once to the idle worker
        time.sleep(1.5)  # noqa: ASYNC251 - the loop blocked on purpose: the reply and the exit both wait
        pool._on_exit(worker)  # the loop sees the exit first
        result = await asyncio.wait_for(job.future, timeout=10)
        assert result["text_lines"][0]["text"] == "exit-after:0.3"
        assert job.attempts == 1 and pool.tasks_retried == 0

    run(check, size=1)


def test_timeout_kills_only_that_worker() -> None:
    async def check(pool: WorkerPool) -> None:
        slow = pool.submit(b"sleep:30", {})
        fast = pool.submit(b"fast", {})
        with pytest.raises(TaskTimeoutError):
            await slow.future
        assert (await fast.future)["text_lines"][0]["text"] == "fast"
        while pool.ready_count < 2:
            await asyncio.sleep(0.05)
        assert pool.restarts["timeout"] == 1

    run(check, task_timeout=1.0)


def test_a_worker_stopped_half_way_through_its_reply_holds_up_only_its_own_task() -> None:
    # Connection.recv() on the loop read a whole reply before it returned: a worker stopped
    # half-way through writing one (SIGSTOP, a cgroup freezer) held the loop, and every
    # request, timer and signal handler with it, for as long as it stayed stopped.
    async def check(pool: WorkerPool) -> None:
        stalled = pool.submit(b"stall-reply", {})
        assert stalled.worker is not None and stalled.worker.pid is not None
        stalled_pid = stalled.worker.pid
        # If the loop is held after all, let the worker go on in 10 s rather than hang the
        # suite: the timings below then fail.
        safety = threading.Timer(10.0, lambda: os.kill(stalled_pid, signal.SIGCONT))
        safety.start()
        try:
            stopped = lambda: psutil.Process(stalled_pid).status() == psutil.STATUS_STOPPED
            await wait_for(stopped, timeout=5)
            await asyncio.sleep(0.2)  # the first 100 kB of its reply reach the pipe
            started = time.monotonic()
            other = await pool.submit(b"other", {}).future
            assert other["text_lines"][0]["text"] == "other"
            assert time.monotonic() - started < 5.0
            with pytest.raises(TaskTimeoutError):
                await stalled.future
            assert time.monotonic() - started < 5.0
        finally:
            safety.cancel()
        await wait_for(lambda: pool.ready_count == 2 and stalled_pid not in pool.worker_pids())
        assert pool.restarts["timeout"] == 1
        assert (await pool.submit(b"after", {}).future)["text_lines"][0]["text"] == "after"

    run(check, task_timeout=2.0)


def test_replies_are_decoded_however_their_bytes_arrive() -> None:
    messages = [("ready", {"pid": 1}), ("done", "a", {"text": "x" * 70_000}), ("error", "b", "code", "why")]
    wire = b"".join(struct.pack("!i", len(p)) + p for p in map(pickle.dumps, messages))
    # The long header a message of 2 GiB or more gets (-1, then 8 bytes of length).
    long_form = pickle.dumps(("done", "c", {}))
    wire += struct.pack("!i", -1) + struct.pack("!Q", len(long_form)) + long_form
    expected = [*messages, ("done", "c", {})]
    for piece in (1, 3, 4, 5, 7, 1000, len(wire)):
        reader = MessageReader()
        got = []
        for at in range(0, len(wire), piece):
            got += reader.feed(wire[at : at + piece])
        assert got == expected and reader.pending_bytes == 0
    reader = MessageReader()
    assert reader.feed(wire[:-1]) == expected[:-1] and reader.pending_bytes > 0
    # A frame that does not decode is dropped, and what follows it still reads.
    broken = struct.pack("!i", 3) + b"\x80\x05X"
    reader = MessageReader()
    assert reader.feed(broken + wire) == expected and reader.pending_bytes == 0


def test_full_queue_refuses_new_work() -> None:
    async def check(pool: WorkerPool) -> None:
        running = pool.submit(b"sleep:0.5", {})
        queued = pool.submit(b"queued", {})
        with pytest.raises(QueueFullError):
            pool.submit(b"refused", {})
        await asyncio.gather(running.future, queued.future)

    run(check, size=1, queue_size=1)


def test_cancel_drops_a_queued_task_only() -> None:
    async def check(pool: WorkerPool) -> None:
        running = pool.submit(b"sleep:0.5", {})
        queued = pool.submit(b"queued", {})
        await asyncio.sleep(0.1)
        assert pool.cancel(running) is False
        assert pool.cancel(queued) is True
        with pytest.raises(TaskCancelledError):
            await queued.future
        await running.future
        assert pool.tasks_run == 1

    run(check, size=1)


def fresh(data: bytes) -> bytes:
    """A bytes object of our own (not a shared constant), so its reference count means something."""
    return bytes(bytearray(data))


def test_ended_jobs_let_go_of_their_image_bytes() -> None:
    async def check(pool: WorkerPool) -> None:
        payloads = {
            name: fresh(data)
            for name, data in [
                ("timeout", b"sleep:30"),
                ("cancel", b"q"),
                ("crash", b"crash"),
                ("bad", b"bad"),
                ("ok", b"ok"),
            ]
        }
        baseline = {name: sys.getrefcount(data) for name, data in payloads.items()}
        timed_out = pool.submit(payloads["timeout"], {})
        cancelled = pool.submit(payloads["cancel"], {})
        assert pool.cancel(cancelled)
        jobs = [timed_out, cancelled]
        for name in ("crash", "bad", "ok"):
            jobs.append(pool.submit(payloads[name], {}))
        await asyncio.gather(*(job.future for job in jobs), return_exceptions=True)
        assert [job.payload for job in jobs] == [None] * 5
        # Nothing else in the pool holds them either.
        assert {name: sys.getrefcount(data) for name, data in payloads.items()} == baseline

    run(check, size=1, task_timeout=1.0)


def test_workers_recycle_one_at_a_time_without_failures() -> None:
    async def check(pool: WorkerPool) -> None:
        # A worker past its limit keeps serving until its replacement has loaded, so how
        # many tasks pass before each recycle depends on how fast processes start on a
        # busy machine: keep the work coming (bounded) until five recycles have happened.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 120
        done = 0
        while pool.restarts["recycled"] < 5 and loop.time() < deadline:
            jobs = [pool.submit(b"sleep:0.02", {}) for _ in range(8)]
            done += len(await asyncio.gather(*(job.future for job in jobs)))
        assert pool.restarts["recycled"] >= 5, f"{pool.restarts['recycled']} recycles after {done} tasks"
        assert "crashed" not in pool.restarts

    run(check, max_tasks=4)


def test_first_generation_limits_are_staggered() -> None:
    async def check(pool: WorkerPool) -> None:
        limits = sorted(w["task_limit"] for w in pool.stats()["workers"])
        assert limits == [50, 100]

    run(check)


def test_engine_that_cannot_load_fails_start_with_its_message() -> None:
    async def main() -> None:
        pool = make_pool(engine_options={"fail_load": True}, size=1)
        with pytest.raises(WorkerStartError, match="inference.pdmodel"):
            await pool.start()
        with pytest.raises(NoWorkerError):
            pool.submit(b"x", {})
        await pool.close(grace=0)

    asyncio.run(main())


def test_workers_thread_variables_use_the_pool_thread_count() -> None:
    async def check(pool: WorkerPool) -> None:
        result = await pool.submit(b"env", {}).future
        assert result["env"] == {"OMP_NUM_THREADS": "3", "MKL_NUM_THREADS": "3", "OPENBLAS_NUM_THREADS": "3"}

    run(check, size=1, threads=3)


def test_workers_ignore_sigterm_and_sigint_and_close_still_stops_them() -> None:
    async def check(pool: WorkerPool) -> None:
        job = pool.submit(b"sleep:1.0", {})
        await wait_for(lambda: job.state == "running")
        assert job.worker is not None and job.worker.pid is not None
        pid = job.worker.pid
        # What systemd (KillMode=control-group), `kill -- -PGID` or Ctrl-C send to every process of the group.
        os.kill(pid, signal.SIGTERM)
        os.kill(pid, signal.SIGINT)
        result = await job.future
        assert result["pid"] == pid and job.attempts == 1
        assert sum(pool.restarts.values()) == 0
        # Stopping the workers is the parent's job: one busy past the grace period is killed.
        stuck = pool.submit(b"sleep:60", {})
        await wait_for(lambda: stuck.state == "running")
        started = time.monotonic()
        await pool.close(grace=0.2)
        assert pool.worker_pids() == [] and time.monotonic() - started < 15
        assert not psutil.pid_exists(pid)

    run(check)


# A script that runs a pool of two fake workers as a server would (argv[1]: the repo), then `body`.
POOL_SCRIPT = """
import asyncio, sys
sys.path.insert(0, sys.argv[1])
from ocr_pool import WorkerPool

async def main():
    pool = WorkerPool(size=2, max_tasks=10, queue_size=5, task_timeout=600, start_timeout=30, engine_options={},
                      factory="tests.fake_engine:create_engine")
    await pool.start()
{body}
if __name__ == "__main__":
    asyncio.run(main())
"""


def pool_script(tmp_path: Path, name: str, body: str) -> Path:
    script = tmp_path / f"{name}.py"
    script.write_text(POOL_SCRIPT.replace("{body}", body))
    return script


EXIT_WITHOUT_CLOSE = """
    print(*pool.worker_pids(), flush=True)
    raise RuntimeError("an unexpected error before close()")
"""


def test_exit_without_close_kills_the_workers_instead_of_waiting(tmp_path: Path) -> None:
    # multiprocessing's exit handler SIGTERMs daemonic children, then joins them: workers that
    # ignore SIGTERM would keep the process waiting for ever.
    script = pool_script(tmp_path, "exit_without_close", EXIT_WITHOUT_CLOSE)
    done = subprocess.run(
        [sys.executable, str(script), str(REPO)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 1 and "an unexpected error before close()" in done.stderr
    worker_pids = [int(pid) for pid in done.stdout.split()]
    assert len(worker_pids) == 2 and not any(psutil.pid_exists(pid) for pid in worker_pids)


@pytest.mark.parametrize(
    ("affinity", "cgroup", "expected"),
    [
        (64, CgroupFiles(cpu_max=["max 100000"]), 64),  # no quota: the affinity mask
        (64, CgroupFiles(cpu_max=["200000 100000"]), 2),  # docker --cpus=2 on a 64-core host
        (64, CgroupFiles(cpu_max=["150000 100000"]), 1),  # 1.5 CPUs: a second thread would be throttled
        (64, CgroupFiles(cpu_max=["50000 100000"]), 1),  # under one CPU: still one thread
        (4, CgroupFiles(cpu_max=["800000 100000"]), 4),  # taskset/cpuset to 4 CPUs: the mask wins
        (64, CgroupFiles(cpu_max=["max 100000", "300000 100000", "max 100000"]), 3),  # a parent's limit counts
        (64, CgroupFiles(cfs=[("200000", "100000")]), 2),  # cgroup v1
        (64, CgroupFiles(cfs=[("-1", "100000")]), 64),  # cgroup v1, no quota
        (64, CgroupFiles(cpu_max=["garbage", ""], cfs=[("x", "0")]), 64),  # unreadable values are ignored
        (0, CgroupFiles(), 1),  # never fewer than one
    ],
)
def test_usable_cpus_is_the_tighter_of_affinity_and_cgroup_quota(
    affinity: int, cgroup: CgroupFiles, expected: int
) -> None:
    assert usable_cpus(affinity, cgroup) == expected


def test_tasks_that_cannot_finish_in_time_are_dropped_unrun_not_killed() -> None:
    async def check(pool: WorkerPool) -> None:
        pid = pool.worker_pids()[0]
        # Four tasks of 0.8 s on one worker, each allowed 2 s from submission: two fit.
        jobs = [pool.submit(b"sleep:0.8", {}) for _ in range(4)]
        outcomes = await asyncio.gather(*(job.future for job in jobs), return_exceptions=True)
        assert [job.attempts for job in jobs] == [1, 1, 0, 0]
        assert all(isinstance(o, dict) for o in outcomes[:2]), outcomes
        for late in outcomes[2:]:
            assert isinstance(late, QueueTimeoutError) and late.code == "queue_timeout", late
        # No worker was killed for a task that never ran on it.
        assert sum(pool.restarts.values()) == 0 and pool.worker_pids() == [pid]
        assert pool.tasks_expired == 2

    run(check, size=1, task_timeout=2.0)


def test_a_running_task_is_timed_from_its_dispatch_not_its_submission() -> None:
    async def check(pool: WorkerPool) -> None:
        for i in range(5):  # quick runs: the expected run time is small
            await pool.submit(f"quick {i}".encode(), {}).future
        first = pool.submit(b"sleep:1.0", {})
        second = pool.submit(b"sleep:1.0", {})
        # The second starts about 1 s after submission with 0.5 s of its deadline left; it runs
        # 1 s, within its own 1.5 s budget, and must not be killed when its deadline passes.
        results = await asyncio.gather(first.future, second.future)
        assert [r["text_lines"][0]["text"] for r in results] == ["sleep:1.0", "sleep:1.0"]
        assert second.queue_wait_ms is not None and second.queue_wait_ms > 500
        assert sum(pool.restarts.values()) == 0

    run(check, size=1, task_timeout=1.5)


def fail_next_starts(monkeypatch: pytest.MonkeyPatch, count: int) -> list[str]:
    """Make the next `count` worker process starts fail as an exhausted OS would (EMFILE)."""
    original = SpawnProcess.start
    refused: list[str] = []

    def start(process: SpawnProcess) -> None:
        if len(refused) < count:
            refused.append(process.name)
            raise OSError(errno.EMFILE, "Too many open files")
        original(process)

    monkeypatch.setattr(SpawnProcess, "start", start)
    return refused


def test_a_worker_the_os_refuses_to_start_is_retried_and_the_pool_recovers(monkeypatch: pytest.MonkeyPatch) -> None:
    async def check(pool: WorkerPool) -> None:
        gc.collect()  # pipes of earlier tests' pools, closed by a collection mid-test, would count
        descriptors = psutil.Process().num_fds()
        refused = fail_next_starts(monkeypatch, 1)
        os.kill(pool.worker_pids()[0], signal.SIGKILL)  # its replacement cannot start, once
        await wait_for(lambda: refused and pool.restarts["start_failed"] == 1)
        await wait_for(lambda: pool.ready_count == 2)  # retried after a back-off
        assert "could not start a worker process" in (pool.stats()["last_start_error"] or "")
        # The failed attempt's pipe pair was closed: as many descriptors as with two workers before.
        gc.collect()
        assert psutil.Process().num_fds() == descriptors
        results = await asyncio.gather(*(pool.submit(b"after", {}).future for _ in range(4)))
        assert {r["text_lines"][0]["text"] for r in results} == {"after"}

    run(check)


def test_a_task_whose_worker_died_fails_with_no_worker_when_no_replacement_can_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The task goes back to the queue for a second attempt; if the OS then refuses every new
    # process, it must fail (no_worker) rather than wait for a worker that never comes.
    async def check(pool: WorkerPool) -> None:
        job = pool.submit(b"sleep:2", {})
        await wait_for(lambda: job.state == "running")
        fail_next_starts(monkeypatch, 100)
        os.kill(job.worker.pid, signal.SIGKILL)
        with pytest.raises(NoWorkerError) as failed:
            await asyncio.wait_for(job.future, timeout=10)
        assert "could not start a worker process" in str(failed.value)
        monkeypatch.undo()  # the OS recovers: so does the pool
        await wait_for(lambda: pool.ready_count == 1)

    run(check, size=1, task_timeout=3.0)


def test_a_worker_killed_while_loading_does_not_turn_work_away() -> None:
    # One replacement killed as it loaded (an operator, the OOM killer) made every request a
    # 503 no_worker "no OCR worker could start", queued ones too, while the next was seconds
    # from ready.
    async def check(pool: WorkerPool) -> None:
        first = pool.stats()["workers"][0]["pid"]
        os.kill(first, signal.SIGKILL)
        await wait_for(lambda: any(w["state"] == "starting" for w in pool.stats()["workers"]), timeout=10)
        loading = next(w["pid"] for w in pool.stats()["workers"] if w["state"] == "starting")
        os.kill(loading, signal.SIGKILL)
        await wait_for(lambda: pool.restarts["start_failed"] == 1, timeout=10)
        assert pool.ready_count == 0
        job = pool.submit(b"waited", {})  # queued, not refused
        result = await asyncio.wait_for(job.future, timeout=20)
        assert result["text_lines"][0]["text"] == "waited"
        # Starts that keep dying without a word: refused once SILENT_START_FAILURES_TO_REFUSE
        # in a row have.
        os.kill(pool.worker_pids()[0], signal.SIGKILL)
        for failed in range(1, SILENT_START_FAILURES_TO_REFUSE + 1):
            await wait_for(lambda: any(w["state"] == "starting" for w in pool.stats()["workers"]), timeout=20)
            os.kill(pool.worker_pids()[0], signal.SIGKILL)
            await wait_for(lambda failed=failed: pool.restarts["start_failed"] == 1 + failed, timeout=10)
            if failed < SILENT_START_FAILURES_TO_REFUSE:
                assert pool.cancel(pool.submit(b"queued", {}))  # taken, then withdrawn
        with pytest.raises(NoWorkerError, match="while loading the engine"):
            pool.submit(b"refused", {})
        await wait_for(lambda: pool.ready_count == 1, timeout=40)  # left alone, it comes back
        assert (await pool.submit(b"again", {}).future)["text_lines"][0]["text"] == "again"

    run(check, size=1, engine_options={"load_delay": 1.0}, task_timeout=20.0)


async def min_ready_while(pool: WorkerPool, work: Awaitable[None]) -> int:
    """The fewest ready workers seen (checked every couple of milliseconds) while `work` runs."""
    fewest = pool.ready_count
    task = asyncio.ensure_future(work)
    while not task.done():
        fewest = min(fewest, pool.ready_count)
        await asyncio.sleep(0.002)
    await task
    return fewest


async def keep_busy_until_recycled(pool: WorkerPool, recycles: int) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while pool.restarts["recycled"] < recycles and loop.time() < deadline:
        await asyncio.gather(*(pool.submit(b"sleep:0.02", {}).future for _ in range(4)))
    assert pool.restarts["recycled"] >= recycles


def test_recycling_starts_the_successor_first_so_ready_workers_never_drop_below_size() -> None:
    async def check(pool: WorkerPool) -> None:
        # Each replacement takes 0.5 s to load; the worker it replaces serves until it is ready.
        assert await min_ready_while(pool, keep_busy_until_recycled(pool, 4)) >= 2
        assert set(pool.restarts) == {"recycled"}

    run(check, max_tasks=4, engine_options={"load_delay": 0.5})


def test_a_successor_the_os_refuses_to_start_leaves_the_old_worker_serving(monkeypatch: pytest.MonkeyPatch) -> None:
    async def check(pool: WorkerPool) -> None:
        refused = fail_next_starts(monkeypatch, 1)
        # The first recycle's successor cannot start (from inside a pipe reader callback): the
        # worker past its limit keeps serving, and the recycle is tried again after a back-off.
        assert await min_ready_while(pool, keep_busy_until_recycled(pool, 2)) >= 2
        assert refused and pool.restarts["start_failed"] == 1

    run(check, max_tasks=4)


def test_a_recycle_whose_successor_cannot_start_waits_for_the_back_off_not_every_reply(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The worker past its limit tried to start its successor again after each task it ran,
    # bypassing the back-off: a process start (a model load, with real engines) per reply.
    async def check(pool: WorkerPool) -> None:
        refused = fail_next_starts(monkeypatch, 1000)
        replies = 40
        for i in range(replies):
            await pool.submit(f"quick {i}".encode(), {}).future
        assert 1 <= len(refused) <= replies // 4, f"{len(refused)} starts tried for {replies} replies"
        assert pool.restarts["start_failed"] == len(refused)
        monkeypatch.undo()  # the OS recovers: the recycle completes on the back-off timer
        await wait_for(lambda: pool.restarts["recycled"] == 1, timeout=40)
        assert (await pool.submit(b"after", {}).future)["text_lines"][0]["text"] == "after"

    run(check, size=1, max_tasks=2)


KILLED_WITH_A_HUNG_TASK = """
    hung = pool.submit(b"sleep:3600", {})
    while hung.state != "running":
        await asyncio.sleep(0.01)
    print(*pool.worker_pids(), flush=True)
    await asyncio.sleep(3600)
"""


def test_workers_die_with_a_server_killed_outright_even_one_hung_in_a_task(tmp_path: Path) -> None:
    # SIGKILL or the OOM killer gives the server no chance to stop its workers. An idle worker
    # saw its pipe close and left; one busy with (or hung in) a task ran on as an orphan.
    script = pool_script(tmp_path, "killed_with_a_hung_task", KILLED_WITH_A_HUNG_TASK)
    server = subprocess.Popen(
        [sys.executable, str(script), str(REPO)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        assert server.stdout is not None
        worker_pids = [int(pid) for pid in server.stdout.readline().split()]
        assert len(worker_pids) == 2
    finally:
        server.kill()
        server.wait(timeout=30)

    def alive(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    deadline = time.monotonic() + 20
    while any(alive(pid) for pid in worker_pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    orphans = [pid for pid in worker_pids if alive(pid)]
    for pid in orphans:  # the old code's orphan: do not leave it running after the test
        os.kill(pid, signal.SIGKILL)
    assert orphans == []


def test_a_worker_that_dies_during_the_shutdown_drain_is_replaced_while_accepted_work_waits() -> None:
    # At shutdown a dead worker was not replaced: its retried task and the queue behind it
    # waited out the whole grace, then all failed with shutting_down.
    async def check(pool: WorkerPool) -> None:
        running = pool.submit(b"sleep:1", {})
        queued = [pool.submit(f"queued {i}".encode(), {}) for i in range(3)]
        await wait_for(lambda: running.state == "running")
        closing = asyncio.ensure_future(pool.close(grace=30))
        await wait_for(lambda: pool._closing)
        assert running.worker is not None and running.worker.pid is not None
        os.kill(running.worker.pid, signal.SIGKILL)
        results = await asyncio.gather(running.future, *(job.future for job in queued))
        assert [r["text_lines"][0]["text"] for r in results] == ["sleep:1"] + [f"queued {i}" for i in range(3)]
        assert running.attempts == 2 and pool.restarts["crashed"] == 1
        await closing
        assert pool.worker_pids() == []

    run(check, size=1)


def test_workers_that_die_right_after_loading_are_replaced_with_back_off_not_in_a_loop() -> None:
    # A worker that loaded and then died with no task in hand was replaced at once, every
    # time: with real models, a model load after another, several a second, for ever.
    async def main() -> None:
        pool = make_pool(size=1, engine_options={"die_after_load": 0.05})
        await pool.start(wait=False)
        try:
            await asyncio.sleep(4)  # back-off 0.5, 1, 2 s: a few replacements, not dozens
            deaths = pool.restarts["crashed"]
            assert 1 <= deaths <= 6, f"{deaths} workers started and died in 4 s"
            assert set(pool.restarts) == {"crashed"}
        finally:
            await pool.close(grace=0)
        assert pool.worker_pids() == []

    asyncio.run(main())


def test_a_worker_serving_again_ends_the_back_off_of_early_deaths() -> None:
    async def check(pool: WorkerPool) -> None:
        pool._early_deaths = 3  # as after three replacements that died once loaded
        os.kill(pool.worker_pids()[0], signal.SIGKILL)  # idle, and it served nothing yet
        await wait_for(lambda: pool.restarts["crashed"] == 1)
        assert pool._restart_delay() == 4.0  # the fourth in a row waits 4 s
        await wait_for(lambda: pool.ready_count == 1, timeout=30)
        await pool.submit(b"served", {}).future
        assert pool._restart_delay() == 0.0

    run(check, size=1)
