"""Supervised pool of OCR worker processes (see pool.py for the design)."""

from ocr_pool.cpus import CgroupFiles, read_usable_cpus, usable_cpus
from ocr_pool.errors import (
    NoWorkerError,
    PoolClosedError,
    PoolError,
    QueueFullError,
    QueueTimeoutError,
    RememberedFailureError,
    TaskCancelledError,
    TaskFailedError,
    TaskTimeoutError,
    WorkerCrashedError,
    WorkerStartError,
)
from ocr_pool.pool import Job, WorkerPool

__all__ = [
    "CgroupFiles",
    "Job",
    "NoWorkerError",
    "PoolClosedError",
    "PoolError",
    "QueueFullError",
    "QueueTimeoutError",
    "RememberedFailureError",
    "TaskCancelledError",
    "TaskFailedError",
    "TaskTimeoutError",
    "WorkerCrashedError",
    "WorkerPool",
    "WorkerStartError",
    "read_usable_cpus",
    "usable_cpus",
]
