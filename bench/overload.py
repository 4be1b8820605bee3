"""Overload benchmark: offer several times the server's capacity and measure what gets done.

    python bench/overload.py [--duration 60] [--factor 3] [--workers 2] [--task-timeout 20]

Starts its own server on 127.0.0.1 (a free port), then:
1. capacity: a closed loop at concurrency = workers over every image once (each request a
   cache miss), so the pool is always busy and never queued: images per second it can do;
2. overload: open-loop arrivals at factor x capacity for `duration` seconds, each a cache miss.
Prints offered load, goodput (200 answers per second completed within the overload window)
against the capacity of step 1, the 503 and 504 answers by code, tasks dropped unrun, and
workers killed. With task_timeout shorter than the queue's wait (64 tasks at ~1 s each on
2 workers is ~30 s), queued tasks pass their deadline: they must be dropped without costing
a worker, and the workers must keep running tasks that can finish.
Exit code 0 when goodput is at least 90% of capacity and no worker was killed.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import itertools
import os
import random
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.launch import start_server

DEFAULT_IMAGES = Path(__file__).resolve().parents[2] / "shared" / "data" / "load"


def load_images(folder: Path, max_pixels: int) -> list[bytes]:
    from PIL import Image

    images = []
    for path in sorted(folder.glob("*")):
        try:
            with Image.open(path) as image:
                if image.width * image.height <= max_pixels:
                    images.append(path.read_bytes())
        except OSError:
            continue
    return images


@dataclass
class Answer:
    outcome: str  # "200" or "<status> <error code>"
    at: float  # monotonic time the answer arrived
    ocr_s: float = 0.0  # the worker's time on the image (200 only)
    sent: float = 0.0


class Client:
    """Uploads with unique bytes (decoders ignore a tail after the image): every one a miss."""

    def __init__(self, url: str, connections: int) -> None:
        self.url = url
        self.session = requests.Session()
        self.session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=connections))

    def post(self, data: bytes, timeout: float) -> Answer:
        try:
            response = self.session.post(
                f"{self.url}/ocr_service", files={"file": ("i", data + uuid.uuid4().bytes)}, timeout=timeout
            )
        except requests.RequestException as exc:
            return Answer(f"error {type(exc).__name__}", time.monotonic())
        try:
            body = response.json()
        except ValueError:
            body = {}
        if response.status_code == 200:
            return Answer("200", time.monotonic(), body["timing"]["total"] / 1000)
        code = (body.get("error") or {}).get("code", "?")
        return Answer(f"{response.status_code} {code}", time.monotonic())


def measure_capacity(
    client: Client, images: list[bytes], workers: int, timeout: float
) -> tuple[float, float, collections.Counter[str]]:
    """With exactly `workers` requests in flight (no queueing): images per second, worker
    OCR seconds per second, and failures."""
    feed = iter(images)
    lock = threading.Lock()
    answers: list[Answer] = []

    def loop() -> None:
        while True:
            with lock:
                data = next(feed, None)
            if data is None:
                return
            answer = client.post(data, timeout)
            with lock:
                answers.append(answer)

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in range(workers):
            pool.submit(loop)
    elapsed = time.monotonic() - started
    ok = [a for a in answers if a.outcome == "200"]
    failed = collections.Counter(a.outcome for a in answers if a.outcome != "200")
    return len(ok) / elapsed, sum(a.ocr_s for a in ok) / elapsed, failed


def overload(
    client: Client, images: list[bytes], rate: float, duration: float, timeout: float
) -> tuple[list[Answer], float]:
    """Send at `rate` per second for `duration` s; every answer, and the start time."""
    results: list[Answer] = []
    lock = threading.Lock()
    # Random order (fixed seed): a cycle would beat against the arrival period and the
    # dispatch times, and favour some images.
    pick = random.Random(0)

    def one(data: bytes, sent: float) -> None:
        answer = client.post(data, timeout)
        answer.sent = sent
        with lock:
            results.append(answer)

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max_workers=512) as pool:
        for index in itertools.count():
            due = started + index / rate
            if due >= started + duration:
                break
            time.sleep(max(0.0, due - time.monotonic()))
            pool.submit(one, pick.choice(images), time.monotonic())
    return results, started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=60, help="seconds of overload (default 60)")
    parser.add_argument("--factor", type=float, default=3.0, help="offered load / measured capacity (default 3)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--task-timeout", type=float, default=20, help="ocr.process.task_timeout (default 20)")
    parser.add_argument("--queue-size", type=int, default=64, help="ocr.process.queue_size (default 64)")
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    parser.add_argument("--max-pixels", type=int, default=2_000_000, help="skip larger images (default 2 Mpx)")
    args = parser.parse_args()

    images = load_images(args.images, args.max_pixels)
    if not images:
        print(f"no images under {args.images}", file=sys.stderr)
        return 2
    config = {
        "ocr": {
            "process": {
                "number": args.workers,
                "task_timeout": args.task_timeout,
                "queue_size": args.queue_size,
                "max_task_number": 100_000,  # recycling is not what this measures
            }
        }
    }
    server = start_server(config)  # 127.0.0.1, a free port
    request_timeout = 2 * args.task_timeout + 30
    client = Client(server.url, 512)
    try:
        print(
            f"server pid {server.pid}: {args.workers} workers, task_timeout {args.task_timeout:g} s, "
            f"queue_size {args.queue_size}; {len(images)} images"
        )
        capacity, busy, failed = measure_capacity(client, images, args.workers, request_timeout)
        print(
            f"capacity (closed loop, concurrency {args.workers}, every image once): {capacity:.2f} img/s, "
            f"{busy:.2f} worker-seconds of OCR per second (failed: {dict(failed) or 0})"
        )
        before = server.health()
        rate = args.factor * capacity
        print(f"overload: {rate:.2f} req/s offered for {args.duration:g} s ...", flush=True)
        results, started = overload(client, images, rate, args.duration, request_timeout)
        after = server.health()
    finally:
        exit_code = server.stop()

    window_end = started + args.duration
    done = [a for a in results if a.outcome == "200" and a.at <= window_end]
    goodput = len(done) / args.duration
    useful = sum(a.ocr_s for a in done) / args.duration
    outcomes = collections.Counter(a.outcome for a in results)
    restarts_before = collections.Counter(before["workers"]["restarts"])
    kills = collections.Counter(after["workers"]["restarts"])
    kills.subtract(restarts_before)
    expired = after["queue"].get("expired", 0) - before["queue"].get("expired", 0)
    slowest_ok = max((a.at - a.sent for a in results if a.outcome == "200"), default=0.0)
    print(f"offered: {len(results)} requests in {args.duration:g} s = {len(results) / args.duration:.2f} req/s")
    print(f"answers: {dict(sorted(outcomes.items()))}")
    print(f"goodput: {goodput:.2f} img/s answered 200 within the window = {goodput / capacity:.0%} of capacity")
    # Images differ in cost (ms to seconds): the OCR time behind those 200s, against the same
    # measure at capacity, does not depend on which images happened to be answered.
    print(f"goodput in OCR work: {useful:.2f} worker-seconds per second = {useful / busy:.0%} of capacity's {busy:.2f}")
    print(f"slowest 200: {slowest_ok:.1f} s from sending")
    print(f"tasks dropped unrun (queue.expired): {expired}")
    print(f"workers killed or restarted during overload: {dict(+kills) or 0}; server exit code {exit_code}")
    return 0 if min(goodput / capacity, useful / busy) >= 0.9 and not +kills else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
