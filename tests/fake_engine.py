"""A stand-in engine for fast unit tests of the pool: behaviour is chosen by the payload.

b"sleep:S"  sleeps S seconds, then answers
b"spin:S"   keeps a CPU busy for S seconds (a slow image), then answers
b"crash"    kills its own process (as a segfault or OOM kill would)
b"bad"      raises an input error with a code, as models.ImageDecodeError does
b"env"      answers {"env": the worker's thread environment variables}
b"exit-after:S"  answers, and its process exits S seconds later (as a crash right after a reply)
b"stall-reply"  answers 2 MB of text, but its process stops itself (SIGSTOP) after writing the
           first 100 kB of the reply (as a cgroup freezer, a debugger or memory pressure would)
b"pages:crash=I,hang=J,sleep=S"  a document: page I kills its worker, page J sleeps an
           hour, every other page sleeps S seconds (each part optional)
b"pages:count=N,probe_crash=I,probe_hang=J,probe_sleep=S"  a PDF of N pages, each with a text
           layer: probing page I kills its worker, page J hangs (in a whole-document probe as
           well), every page's probe takes S seconds
anything else answers {"text_lines": [{"text": payload}], "pid": worker pid}
Options: {"fail_load": True} fails to load; {"load_delay": S} loads in S seconds;
{"die_after_load": S} loads, then its process exits S seconds later (a runtime that crashes once loaded).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from multiprocessing import connection
from typing import Any

from models.text_layers import EncodedLayer
from ocr_pool.worker import THREAD_ENV_VARS

STALLED_REPLY_BYTES = 2_000_000


class CodedError(Exception):
    code = "unsupported_image"


class FakeEngine:
    identity = "fake"

    def recognize(self, image_bytes: bytes, **params: Any) -> dict[str, Any]:
        document = params.get("document")
        if document is not None and image_bytes.startswith(b"pages:"):
            return self._page(image_bytes, document)
        if image_bytes.startswith(b"sleep:"):
            time.sleep(float(image_bytes[6:]))
        elif image_bytes.startswith(b"spin:"):
            until = time.monotonic() + float(image_bytes[5:].split()[0])
            while time.monotonic() < until:
                pass
        elif image_bytes == b"crash":
            os.kill(os.getpid(), signal.SIGKILL)
        elif image_bytes == b"bad":
            raise CodedError("not an image")
        elif image_bytes.startswith(b"exit-after:"):
            threading.Timer(float(image_bytes[11:]), os._exit, (0,)).start()
        elif image_bytes == b"stall-reply":
            _stop_during_next_large_write()
            return {"text_lines": [{"text": "x" * STALLED_REPLY_BYTES}], "pid": os.getpid()}
        elif image_bytes == b"env":
            return {"env": {name: os.environ.get(name) for name in THREAD_ENV_VARS}}
        return {"text_lines": [{"text": image_bytes.decode(errors="replace")}], "pid": os.getpid(), "params": params}

    def _page(self, image_bytes: bytes, document: dict[str, Any]) -> dict[str, Any]:
        plan = dict(part.split("=") for part in image_bytes[6:].decode().split(",") if part)
        if document.get("op") == "probe":
            return self._probe(plan, document)
        index = document["index"]
        if plan.get("crash") == str(index):
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(3600 if plan.get("hang") == str(index) else float(plan.get("sleep", 0)))
        text = f"page {index + 1}"
        return {"text_lines": [{"text": text}], "image_size": [10, 10], "timing": {}, "pid": os.getpid()}


    def _probe(self, plan: dict[str, str], document: dict[str, Any]) -> dict[str, Any]:
        count = int(plan.get("count", 1))
        wanted = document.get("probe_pages")
        pages = []
        for index in range(count) if wanted is None else wanted:
            if plan.get("probe_crash") == str(index):
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(3600 if plan.get("probe_hang") == str(index) else float(plan.get("probe_sleep", 0)))
            layer = [{"text": f"layer {index + 1}", "confidence": 1.0, "box": [[0, 0], [9, 0], [9, 9], [0, 9]]}]
            pages.append({"image_size": [10, 10], "layer": EncodedLayer.of(layer), "error": None, "fingerprint": None})
        return {"pages_total": count, "pages": pages, "protected": False, "timing": {"probe": 0.0}, "pid": os.getpid()}


def _stop_during_next_large_write() -> None:
    """The worker's next write of over 1 MB sends its first 100 kB, then the process stops."""
    original = connection.Connection._send

    def send(self: connection.Connection, buf: bytes, *args: Any) -> None:
        if len(buf) <= 1_000_000:
            return original(self, buf, *args)
        connection.Connection._send = original  # type: ignore[method-assign]
        original(self, buf[:100_000], *args)
        os.kill(os.getpid(), signal.SIGSTOP)
        original(self, buf[100_000:], *args)

    connection.Connection._send = send  # type: ignore[method-assign]


def create_engine(options: Any) -> FakeEngine:
    if isinstance(options, dict) and options.get("fail_load"):
        raise FileNotFoundError("/models/missing/inference.pdmodel")
    if isinstance(options, dict) and options.get("load_delay"):
        time.sleep(options["load_delay"])
    if isinstance(options, dict) and options.get("die_after_load"):
        threading.Timer(options["die_after_load"], os._exit, (1,)).start()
    return FakeEngine()
