"""Supervised pool of OCR worker processes (see pool.py for the design)."""

from ocr_pool.errors import (
    NoWorkerError,
    PoolClosedError,
    PoolError,
    QueueFullError,
    TaskCancelledError,
    TaskFailedError,
    TaskTimeoutError,
    WorkerCrashedError,
    WorkerStartError,
)
from ocr_pool.pool import Job, WorkerPool

__all__ = [
    "Job",
    "NoWorkerError",
    "PoolClosedError",
    "PoolError",
    "QueueFullError",
    "TaskCancelledError",
    "TaskFailedError",
    "TaskTimeoutError",
    "WorkerCrashedError",
    "WorkerPool",
    "WorkerStartError",
]
