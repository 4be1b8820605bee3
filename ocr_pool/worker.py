"""The worker process: load one engine, then serve tasks from a pipe until told to stop.

Protocol (parent <-> child over one duplex multiprocessing Connection):
  child  -> ("ready", {"pid", "identity", "load_ms"})  | ("load_failed", message)
  parent -> (task_id, params), then the image bytes     | None  (finish and exit)
            (the image is a raw send_bytes message: the parent writes it without pickling)
  child  -> ("done", task_id, result) | ("error", task_id, code, message)
The engine is created here, in the child, so no model state ever crosses a fork and
each process owns exactly one (not thread-safe) inference engine.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import multiprocessing
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from typing import Any

# Libraries read these at import time; one value per worker keeps N workers from
# oversubscribing the cores with N x cores threads.
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


# Signals a terminal (Ctrl-C) or a service manager (systemd's KillMode=control-group,
# `kill -- -PGID`) sends to the whole process group. The parent alone decides when a worker
# stops: it lets the running task finish, then closes the pipe or, past a grace period, kills.
SHUTDOWN_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# prctl(2) option: the signal the kernel sends this process when its parent dies.
PR_SET_PDEATHSIG = 1


@contextlib.contextmanager
def shutdown_signals_blocked() -> Iterator[None]:
    """Block SHUTDOWN_SIGNALS in this thread: a process started meanwhile inherits the mask
    through fork and exec, so a group signal cannot kill it before worker_main ignores them.
    A signal meant for this process stays pending and is handled when unblocked."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, SHUTDOWN_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def ignore_shutdown_signals() -> None:
    for signum in SHUTDOWN_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)  # also discards one pending since the start
    signal.pthread_sigmask(signal.SIG_UNBLOCK, SHUTDOWN_SIGNALS)


def die_with_parent() -> None:
    """Have the kernel SIGKILL this worker when the server dies, however it dies (SIGKILL, OOM).

    A worker notices a closed pipe only between tasks: one busy with, or hung in, a task ran on
    as an orphan (for ever, if hung), holding its CPU share and hundreds of MB. (The kernel
    watches the thread that started the worker: the pool's event loop thread, which lives as
    long as the pool.)
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    parent = multiprocessing.parent_process()
    if parent is not None and not parent.is_alive():
        os._exit(1)  # it died before prctl took effect: no signal will come


def load_factory(path: str) -> Callable[[Any], Any]:
    """Resolve "package.module:function" to the engine factory."""
    module_name, _, attr = path.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def worker_main(conn: Connection, factory_path: str, options: Any, threads: int) -> None:
    die_with_parent()
    ignore_shutdown_signals()
    for name in THREAD_ENV_VARS:
        os.environ[name] = str(threads)
    started = time.perf_counter()
    try:
        engine = load_factory(factory_path)(options)
    except BaseException as exc:  # noqa: BLE001 - any load failure is reported, then the child exits
        conn.send(("load_failed", f"{type(exc).__name__}: {exc}"))
        conn.close()
        return
    load_ms = round((time.perf_counter() - started) * 1000, 1)
    conn.send(("ready", {"pid": os.getpid(), "identity": getattr(engine, "identity", ""), "load_ms": load_ms}))
    serve(conn, engine)


def serve(conn: Connection, engine: Any) -> None:
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return  # parent went away
        if message is None:
            return
        task_id, params = message
        try:
            image_bytes = conn.recv_bytes()
        except (EOFError, OSError):
            return
        try:
            result = engine.recognize(image_bytes, **params)
        except Exception as exc:  # noqa: BLE001 - one bad task must not kill the worker
            code = getattr(exc, "code", None)
            if isinstance(code, str):
                reply: tuple[Any, ...] = ("error", task_id, code, str(exc))
            else:
                traceback.print_exc()
                reply = ("error", task_id, "ocr_failed", f"OCR failed: {type(exc).__name__}: {exc}")
        else:
            reply = ("done", task_id, result)
        try:
            conn.send(reply)
        except (BrokenPipeError, OSError):
            return
