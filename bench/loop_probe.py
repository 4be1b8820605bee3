"""Run a server.py with an event-loop lateness probe inside it (for bench/loop_stall.py).

    python bench/loop_probe.py OUT_FILE PATH/TO/server.py [server args...]

A coroutine started on the server's own loop sleeps INTERVAL again and again and records
how late each wake-up is: the time the loop could not run anything else. Lateness of at
least REPORT_MS is appended to OUT_FILE as "unix_time lateness_ms runqueue_ms cpu_ms" lines
(flushed twice a second), so the benchmark can take the largest stall inside any time
window. runqueue_ms is how long, in that interval, the loop's thread was ready to run but
waiting for a CPU (Linux schedstat): on a machine shared with other CPU-heavy work, that
part of a stall is the machine's, the rest (running, blocked in a syscall, waiting for the
GIL) is the server's own. cpu_ms is the CPU time the loop's thread used in the interval:
the work the server did then; an "own" stall much longer than it is the thread blocked
(on a virtual machine: woken late with no work and no queue, the vCPU not running). Injected from outside (asyncio.run is wrapped) so the same probe
measures any version of server.py.
"""

from __future__ import annotations

import asyncio
import os
import runpy
import sys
import time
from pathlib import Path

INTERVAL_S = 0.001
REPORT_MS = 0.5
FLUSH_EVERY_S = 0.5


def runqueue_ns(fd: int) -> int:
    """Nanoseconds this thread has spent runnable but not running (schedstat's 2nd field)."""
    return int(os.pread(fd, 128, 0).split()[1])


async def probe(out: Path) -> None:
    pending: list[str] = []
    last_flush = time.monotonic()
    fd = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
    while True:
        before = time.perf_counter()
        waited_before = runqueue_ns(fd)
        cpu_before = time.thread_time()
        await asyncio.sleep(INTERVAL_S)
        late_ms = (time.perf_counter() - before - INTERVAL_S) * 1000
        if late_ms >= REPORT_MS:
            waited_ms = (runqueue_ns(fd) - waited_before) / 1e6
            cpu_ms = (time.thread_time() - cpu_before) * 1000
            pending.append(f"{time.time():.4f} {late_ms:.3f} {waited_ms:.3f} {cpu_ms:.3f}\n")
        if pending and time.monotonic() - last_flush >= FLUSH_EVERY_S:
            with out.open("a") as handle:
                handle.writelines(pending)
            pending.clear()
            last_flush = time.monotonic()


def main() -> None:
    out = Path(sys.argv[1])
    server_py = Path(sys.argv[2]).resolve()
    sys.argv = [str(server_py), *sys.argv[3:]]
    sys.path.insert(0, str(server_py.parent))
    real_run = asyncio.run

    def run_with_probe(main_coro, **kwargs):  # type: ignore[no-untyped-def]
        async def wrapped():  # type: ignore[no-untyped-def]
            # With PYTHONASYNCIODEBUG=1, asyncio logs each callback that ran longer than this:
            # which code held the loop (a diagnosis aid; debug mode slows everything down).
            asyncio.get_running_loop().slow_callback_duration = INTERVAL_S * 4
            task = asyncio.ensure_future(probe(out))
            try:
                return await main_coro
            finally:
                task.cancel()

        return real_run(wrapped(), **kwargs)

    asyncio.run = run_with_probe  # type: ignore[assignment]
    runpy.run_path(str(server_py), run_name="__main__")


if __name__ == "__main__":
    main()
