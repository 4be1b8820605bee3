"""Why a pool task did not produce a result.

Each error carries a stable `code`; the HTTP layer maps codes to status codes.
"""

from __future__ import annotations


class PoolError(Exception):
    code = "pool_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class QueueFullError(PoolError):
    """The bounded queue is full: the caller should retry later."""

    code = "queue_full"


class NoWorkerError(PoolError):
    """No worker is alive and the last attempt to start one failed."""

    code = "no_worker"


class PoolClosedError(PoolError):
    """The pool is shutting down and takes no new work."""

    code = "shutting_down"


class TaskTimeoutError(PoolError):
    code = "timeout"

    def __init__(self, message: str, killed_worker: bool = False, worker_hindered: bool = False) -> None:
        super().__init__(message)
        # True when the task was running and its worker was killed: the image itself was slow,
        # not a queue that was long...
        self.killed_worker = killed_worker
        # ... unless the worker could not run for much of that time (stopped, or starved of CPU).
        self.worker_hindered = worker_hindered


class QueueTimeoutError(PoolError):
    """The task waited past its deadline, or could no longer finish by it, and never ran:
    the server was overloaded, the image says nothing (no worker was touched)."""

    code = "queue_timeout"


class WorkerCrashedError(PoolError):
    """The task's worker died on every attempt (it may be a poison input)."""

    code = "worker_crashed"


class TaskCancelledError(PoolError):
    code = "cancelled"


class TaskFailedError(PoolError):
    """The engine rejected the input or failed; `code` comes from the worker."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class RememberedFailureError(PoolError):
    """An earlier run of the same image crashed or timed out recently: answered without OCR."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class WorkerStartError(PoolError):
    """A worker could not load its engine (for example, broken model files)."""

    code = "worker_start_failed"
