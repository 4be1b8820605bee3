"""How long the server's event loop stalls while 20 MiB uploads flow, and what hits see then.

One run, on this machine, for each source tree given (e.g. the code before a change and
the working tree):

1. start that tree's server.py (2 workers) with bench/loop_probe.py inside it: a 1 ms
   sleep loop on the server's own event loop records every late wake-up;
2. upload one small image once (the later hits) and rest a moment (the idle window);
3. --uploads uploads of ~20 MiB (the small image with a private PNG chunk padding it to
   just under web_server.max_body_bytes, unique per upload, so each one is hashed, sent
   to a worker and read), --upload-concurrency at a time, while one client re-sends the
   cached small image in a loop (hit latency during the uploads);
4. then --layer-pages pages of a PDF whose text layers are at their bound (pdf_text=layer),
   alone: a few KB that answer ~25 MB at 30 pages (the document's bound), built in the
   workers; what the loop does with it is the measure;
5. prints, per tree: the largest loop stall in the idle and upload windows, as seen, the
   server's own part (without the time the loop's thread waited for a CPU other processes
   held, see bench/loop_probe.py) and the CPU the loop's thread used during it (the work
   the server did; "own" beyond it is the thread blocked, e.g. a virtual CPU not running),
   how many wake-ups were more than 5 ms late, hit latency p50/p99/max during the uploads,
   the largest stall while the text-layer PDF was answered, and (when the server exports
   it) the server's own ocr_event_loop_lag_max_seconds.

    git archive <commit> | tar -x -C /tmp/before
    python bench/loop_stall.py --tree before=/tmp/before --tree after=.
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import struct
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
import zlib
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import multirequest as mr
from bench.launch import BenchServer, free_port, start_process
from tests.pdf_builder import nested_text_forms_pdf

SMALL_IMAGE = REPO / "imgs" / "sample_invoice.png"
MAX_BODY_BYTES = 20 * 1024 * 1024
STALL_GOAL_MS = 5.0


def padded_png(png: bytes, total: int, tag: str) -> bytes:
    """`png` grown to `total` bytes by a private ancillary chunk before IEND (decoders skip it)."""
    iend = png.rfind(b"IEND") - 4
    size = total - len(png) - 12
    data = tag.encode().ljust(size, b"\0")
    chunk = struct.pack(">I", size) + b"pdDa" + data + struct.pack(">I", zlib.crc32(b"pdDa" + data) & 0xFFFFFFFF)
    return png[:iend] + chunk + png[iend:]


def post(port: int, body: bytes, content_type: str, timeout: float = 300) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", "/ocr_service", body=body, headers={"Content-Type": content_type})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def start_tree(tree: Path, workdir: Path, probe_file: Path) -> BenchServer:
    config = {"ocr": {"process": {"number": 2}}, "web_server": {"max_body_bytes": MAX_BODY_BYTES}}
    config_path = workdir / "config.json"
    config_path.write_text(json.dumps(config))
    port = free_port()
    argv = [str(REPO / "bench" / "loop_probe.py"), str(probe_file), str(tree / "server.py"),
            "--config", str(config_path), "--port", str(port), "--log-level", "WARNING"]  # fmt: skip
    return start_process(argv, port, workdir, cwd=tree)


def stalls(probe_file: Path, start: float, end: float) -> tuple[list[float], list[float], list[float]]:
    """Lateness of the wake-ups in [start, end] (ms): as seen, without the time the loop's
    thread waited for a CPU that other processes held (the server's own share), and the CPU
    time the thread used meanwhile (the server's work; older probes did not record it)."""
    seen, own, cpu = [], [], []
    if probe_file.exists():
        for line in probe_file.read_text().splitlines():
            stamp, late, waited, *used = (float(x) for x in line.split())
            if start <= stamp <= end:
                seen.append(late)
                own.append(max(0.0, late - waited))
                cpu.extend(used)
    return seen, own, cpu


def server_lag_gauge(url: str) -> float | None:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        text = response.read().decode()
    match = re.search(r"^ocr_event_loop_lag_max_seconds ([0-9.e+-]+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else None


def measure(name: str, tree: Path, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    probe_file = workdir / "probe.txt"
    server = start_tree(tree, workdir, probe_file)
    port = int(server.url.rsplit(":", 1)[1])
    small = SMALL_IMAGE.read_bytes()
    hit_body, hit_type = mr.build_multipart({"file_type": "file"}, "file", "small.png", small, "hb" + uuid.uuid4().hex)
    try:
        status, _ = post(port, hit_body, hit_type)
        assert status == 200, status
        time.sleep(1.0)  # let start-up settle
        idle_start = time.time()
        time.sleep(args.idle)
        idle_end = time.time()

        bodies = []
        for index in range(args.uploads):
            image = padded_png(small, MAX_BODY_BYTES - 1024, f"{name}-{index}-{uuid.uuid4().hex}")
            bodies.append(mr.build_multipart({"file_type": "file"}, "file", "big.png", image, "ub" + uuid.uuid4().hex))
        statuses: list[int] = []
        hit_ms: list[float] = []
        done = threading.Event()

        def uploader(mine: list[tuple[bytes, str]]) -> None:
            for body, content_type in mine:
                statuses.append(post(port, body, content_type)[0])

        def hitter() -> None:
            while not done.is_set():
                began = time.perf_counter()
                status, _ = post(port, hit_body, hit_type)
                hit_ms.append((time.perf_counter() - began) * 1000)
                assert status == 200, status
                time.sleep(0.002)

        threads = [threading.Thread(target=uploader, args=(bodies[i :: args.upload_concurrency],))
                   for i in range(args.upload_concurrency)]  # fmt: skip
        hit_thread = threading.Thread(target=hitter)
        upload_start = time.time()
        hit_thread.start()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        done.set()
        hit_thread.join()
        upload_end = time.time()
        layer_start = time.time()
        layer_status, layer_s = layer_document(port, args.layer_pages) if args.layer_pages else (None, None)
        layer_end = time.time()
        time.sleep(0.7)  # the probe flushes twice a second
        gauge = server_lag_gauge(server.url)
    finally:
        server.stop()
    idle, idle_own, idle_cpu = stalls(probe_file, idle_start, idle_end)
    busy, busy_own, busy_cpu = stalls(probe_file, upload_start, upload_end)
    layer, layer_own, _ = stalls(probe_file, layer_start, layer_end)
    hit_ms.sort()
    return {
        "tree": name,
        "uploads": len(statuses),
        "upload_ok": sum(1 for s in statuses if s == 200),
        "upload_s": round(upload_end - upload_start, 2),
        "idle_max_stall_ms": max(idle, default=0.0),
        "idle_max_own_ms": max(idle_own, default=0.0),
        "idle_max_cpu_ms": max(idle_cpu, default=0.0),
        "upload_max_stall_ms": max(busy, default=0.0),
        "upload_max_own_ms": max(busy_own, default=0.0),
        "upload_max_cpu_ms": max(busy_cpu, default=0.0),
        "upload_stalls_over_goal": sum(1 for x in busy if x > STALL_GOAL_MS),
        "upload_own_over_goal": sum(1 for x in busy_own if x > STALL_GOAL_MS),
        "upload_cpu_over_goal": sum(1 for x in busy_cpu if x > STALL_GOAL_MS),
        "hits": len(hit_ms),
        "hit_p50_ms": mr.percentile(hit_ms, 50) if hit_ms else None,
        "hit_p99_ms": mr.percentile(hit_ms, 99) if hit_ms else None,
        "hit_max_ms": hit_ms[-1] if hit_ms else None,
        "layer_status": layer_status,
        "layer_answer_s": layer_s,
        "layer_max_stall_ms": max(layer, default=0.0) if args.layer_pages else None,
        "layer_max_own_ms": max(layer_own, default=0.0) if args.layer_pages else None,
        "server_lag_gauge_ms": None if gauge is None else gauge * 1000,
    }


def layer_document(port: int, pages: int) -> tuple[int, float]:
    """POST a PDF of `pages` pages whose text layers reach the per-page bound (10,000 runs
    each; 30 pages: the document's bound of 300,000) with pdf_text=layer, alone; its status
    and the seconds it took. A few KB of PDF, and ~25 MB of answer at 30 pages."""
    pdf = nested_text_forms_pdf(pages, runs=10, fanout=10, levels=3) + uuid.uuid4().hex.encode()  # never cached
    body, content_type = mr.build_multipart({"file_type": "file", "pdf_text": "layer"}, "file", "layer.pdf", pdf,
                                            "lb" + uuid.uuid4().hex)  # fmt: skip
    began = time.perf_counter()
    status, _ = post(port, body, content_type)
    return status, round(time.perf_counter() - began, 2)


def report(rows: list[dict[str, Any]]) -> str:
    def fmt(value: Any) -> str:
        return "-" if value is None else f"{value:.1f}" if isinstance(value, float) else str(value)

    cols = ["tree", "uploads", "upload_ok", "upload_s", "idle_max_stall_ms", "idle_max_own_ms", "idle_max_cpu_ms",
            "upload_max_stall_ms", "upload_max_own_ms", "upload_max_cpu_ms", "upload_stalls_over_goal",
            "upload_own_over_goal", "upload_cpu_over_goal", "hits", "hit_p50_ms", "hit_p99_ms", "hit_max_ms",
            "layer_status", "layer_answer_s", "layer_max_stall_ms", "layer_max_own_ms", "server_lag_gauge_ms"]  # fmt: skip
    lines = [" | ".join(cols)]
    lines += [" | ".join(fmt(row[c]) for c in cols) for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", action="append", default=[], metavar="NAME=PATH",
                        help="a source tree holding server.py (repeatable; default: this one)")  # fmt: skip
    parser.add_argument("--uploads", type=int, default=12)
    parser.add_argument("--upload-concurrency", type=int, default=2)
    parser.add_argument("--idle", type=float, default=3.0, help="seconds of the idle window")
    parser.add_argument("--layer-pages", type=int, default=30,
                        help="then a PDF of this many pages of 10,000 text runs each, read from its text layer (0: none)")  # fmt: skip
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    trees = [t.split("=", 1) for t in args.tree] or [["this", str(REPO)]]
    rows = []
    for name, path in trees:
        workdir = Path(tempfile.mkdtemp(prefix=f"loop-stall-{name}-"))
        rows.append(measure(name, Path(path).resolve(), args, workdir))
        print(json.dumps(rows[-1]), flush=True)
    print(report(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
