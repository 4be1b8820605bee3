"""What the kernel's scheduler did to a worker: stopped it, or kept it waiting for a CPU.

A task that outruns task_timeout is usually the image's doing, and the image is then
remembered as failing (service.failure_ttl). Not when the worker could not run: stopped
(SIGSTOP, a debugger) or starved by other work on the machine. The parsers are pure;
the readers take /proc (Linux) and answer None where it cannot be read.
"""

from __future__ import annotations

import os

STOPPED_STATES = ("T", "t")  # stopped by a signal, or by a tracer
# A run that one of the worker's threads spent more than this share of waiting for a CPU (and
# at least STARVED_MIN_S: sub-second scheduling noise says nothing) was starved by the machine.
STARVED_SHARE = 0.5
STARVED_MIN_S = 1.0


def state_from_stat(stat: str) -> str:
    """The state letter of a /proc/<pid>/stat line (the name before it may hold spaces and ')')."""
    return stat[stat.rindex(")") + 2]


def run_delay_from_schedstat(schedstat: str) -> float:
    """Seconds a thread was runnable but not running: the second field of its schedstat (ns)."""
    return int(schedstat.split()[1]) / 1e9


def is_stopped(pid: int) -> bool | None:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return state_from_stat(fh.read()) in STOPPED_STATES
    except (OSError, ValueError, IndexError):
        return None


def cpu_waits(pid: int) -> dict[str, float] | None:
    """Seconds each of the process's threads has waited for a CPU so far, by thread id."""
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    waits = {}
    for tid in threads:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as fh:
                waits[tid] = run_delay_from_schedstat(fh.read())
        except (OSError, ValueError, IndexError):
            continue  # the thread ended meanwhile, or no schedstat
    return waits


def longest_wait_between(before: dict[str, float], after: dict[str, float]) -> float:
    """The longest any one thread waited for a CPU between two cpu_waits() readings.

    The longest, not the sum: with several inference threads one starved thread holds up the
    run, and idle threads of a pool never wait. A thread started meanwhile counts from 0."""
    return max((waited - before.get(tid, 0.0) for tid, waited in after.items()), default=0.0)


def hindrance(
    pid: int, waits_at_start: dict[str, float] | None, ran_s: float, count_waits: bool = True
) -> str | None:
    """Why the worker `pid` could not run for much of the last `ran_s` seconds (a phrase for
    an error message), or None when it could, or /proc cannot tell. `count_waits`: whether
    waiting for a CPU counts (not when the pool's own workers oversubscribe its CPUs)."""
    if is_stopped(pid):
        return "its worker was stopped (SIGSTOP, or a debugger)"
    waits_now = cpu_waits(pid) if count_waits else None
    if waits_at_start is None or waits_now is None:
        return None
    waited = longest_wait_between(waits_at_start, waits_now)
    if waited >= max(STARVED_SHARE * ran_s, STARVED_MIN_S):
        return f"its worker waited {waited:.1f} s of them for a CPU that other work held"
    return None
