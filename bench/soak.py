"""Soak benchmark: steady OCR load for a while, printing memory of every process over time.

    python bench/soak.py [--duration 600] [--concurrency 4] [--workers 2] [--max-task-number 50]

Each request uploads a shared image with a unique tail appended (decoders ignore bytes
after the image's end), so every request is a cache miss and really runs OCR. Prints RSS
of the main process and of each worker generation, recycling events and errors, and for
each worker generation the RSS growth between its first and last sample: that growth
must stay flat (noise), because recycling bounds what a worker can accumulate.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import itertools
import os
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path

import psutil
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.launch import start_server

DEFAULT_IMAGES = Path(__file__).resolve().parents[2] / "shared" / "data" / "load"
MB = 1024 * 1024


def rss_mb(pid: int) -> float | None:
    try:
        return psutil.Process(pid).memory_info().rss / MB
    except psutil.Error:
        return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=600, help="seconds of load (default 600)")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--max-task-number", type=int, default=50)
    parser.add_argument("--interval", type=float, default=10, help="seconds between memory samples")
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    parser.add_argument("--max-pixels", type=int, default=4_000_000, help="skip larger images to keep pace")
    args = parser.parse_args()

    from PIL import Image

    images = []
    for path in sorted(args.images.glob("*")):
        try:
            with Image.open(path) as image:
                if image.width * image.height <= args.max_pixels:
                    images.append(path.read_bytes())
        except OSError:
            continue
    if not images:
        print(f"no images under {args.images}", file=sys.stderr)
        return 2

    config = {"ocr": {"process": {"number": args.workers, "max_task_number": args.max_task_number}}}
    server = start_server(config)
    print(
        f"server pid {server.pid}, {args.workers} workers, max_task_number {args.max_task_number}, "
        f"{len(images)} images, concurrency {args.concurrency}, {args.duration:g} s"
    )
    stop_at = time.monotonic() + args.duration
    counts = {"ok": 0, "errors": 0}
    lock = threading.Lock()
    feed = itertools.cycle(images)
    session = requests.Session()
    session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=args.concurrency))

    def client() -> None:
        while time.monotonic() < stop_at:
            with lock:
                data = next(feed) + uuid.uuid4().bytes  # unique bytes: always a cache miss
            try:
                status = session.post(f"{server.url}/ocr_service", files={"file": ("i", data)}, timeout=120).status_code
            except requests.RequestException:
                status = 0
            with lock:
                counts["ok" if status == 200 else "errors"] += 1

    samples: dict[int, list[float]] = {}
    print(f"{'t(s)':>6} {'main MB':>8} {'workers (pid:MB)':<40} {'recycled':>8} {'ok':>6} {'err':>4}")
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=args.concurrency) as pool:
            for _ in range(args.concurrency):
                pool.submit(client)
            started = time.monotonic()
            while time.monotonic() < stop_at:
                time.sleep(min(args.interval, max(0.0, stop_at - time.monotonic())))
                health = server.health()
                workers = [w["pid"] for w in health["workers"]["workers"] if w["state"] in ("idle", "busy")]
                cells = []
                for pid in workers:
                    value = rss_mb(pid)
                    if value is not None:
                        samples.setdefault(pid, []).append(value)
                        cells.append(f"{pid}:{value:.0f}")
                print(
                    f"{time.monotonic() - started:6.0f} {rss_mb(server.pid) or 0:8.0f} {' '.join(cells):<40} "
                    f"{health['workers']['restarts'].get('recycled', 0):>8} {counts['ok']:>6} {counts['errors']:>4}",
                    flush=True,
                )
    finally:
        health = server.health()
        exit_code = server.stop()

    growth = [s[-1] - s[0] for s in samples.values() if len(s) >= 2]
    print("\nsummary")
    print(f"  requests ok {counts['ok']}, errors {counts['errors']}, server exit code {exit_code}")
    print(f"  worker restarts: {health['workers']['restarts']}")
    print(
        f"  worker generations sampled: {len(samples)}; peak worker RSS {max(max(s) for s in samples.values()):.0f} MB"
    )
    if growth:
        print(
            f"  RSS growth within a generation (last - first sample): median {statistics.median(growth):+.1f} MB, "
            f"max {max(growth):+.1f} MB"
        )
    return 0 if counts["errors"] == 0 else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
