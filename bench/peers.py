"""This server beside rapidocr-api, the nearest peer: same images, same concurrency, one run.

Installs nothing. Given a Python that has `rapidocr_api` (its own virtualenv, see the
README: rapidocr_api==0.2.0, rapidocr==3.10.0, onnxruntime), it starts both servers on
127.0.0.1 -- this one on its defaults (2 workers), the peer on its defaults with 2 workers
(`rapidocr_api -workers 2`) -- and drives them in turn with the same distinct real images
(from ../shared/data/ocr-gt, spread over every kind) at each concurrency: every upload is
new to the server (same pixels, a unique metadata tail, so no cache answers it). Ours runs
on its defaults but for task_timeout, raised to the client's timeout as the peer has none. Prints,
per server and concurrency: images/s, p50/p95/p99 latency, errors, and our/peer ratios.

    python bench/peers.py --peer-python /tmp/venv-peer/bin/python              # concurrency 8 and 50
    python bench/peers.py --peer-python ... --images 48 --concurrency 8,50 --json peers.json

Both servers stay up for the whole run (idle while the other is measured), so the runs
alternate: ours at 8, the peer at 8, ours at 50, the peer at 50.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import multirequest as mr
from bench.common import OCR_GT
from bench.launch import BenchServer, free_port, get_json, start_process, start_server

TIMEOUT_S = 600.0


def pick_images(count: int) -> list[Path]:
    """`count` ground-truth images, taken in turn from each kind (deterministic)."""
    rows = [json.loads(line) for line in (OCR_GT / "manifest.jsonl").read_text(encoding="utf-8").splitlines() if line]
    by_kind: dict[str, list[Path]] = {}
    for row in sorted(rows, key=lambda r: r["image"]):
        by_kind.setdefault(row["kind"], []).append(OCR_GT / row["image"])
    picked: list[Path] = []
    while len(picked) < count and any(by_kind.values()):
        for kind in sorted(by_kind):
            if by_kind[kind] and len(picked) < count:
                picked.append(by_kind[kind].pop(0))
    return picked


def peer_has_rapidocr_api(python: str) -> bool:
    probe = subprocess.run([python, "-c", "import rapidocr_api"], capture_output=True, check=False)
    return probe.returncode == 0


def start_peer(python: str, workdir: Path, workers: int) -> BenchServer:
    port = free_port()
    code = (
        "import sys; from rapidocr_api.main import main; "
        f"sys.argv = ['rapidocr_api', '--ip', '127.0.0.1', '--port', '{port}', '--workers', '{workers}']; main()"
    )
    process_dir = workdir / "peer"
    process_dir.mkdir()
    # The peer has no /readyz: its GET / answers once uvicorn serves.
    server = start_process(["-c", code], port, process_dir, ready_timeout=5, python=python, ready_path=None)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            get_json(f"{server.url}/", timeout=2)
            return server
        except OSError:
            if server.process.poll() is not None:
                raise RuntimeError(f"rapidocr_api exited:\n{server.log_tail()}") from None
            time.sleep(0.3)
    server.stop()
    raise RuntimeError("rapidocr_api did not answer within 180 s")


def build_request(kind: str, url: str, path: Path, tag: str) -> HTTPRequest:
    data = mr.unique_image_bytes(path.read_bytes(), tag)
    if kind == "ours":
        fields, file_field, endpoint = {"file_type": "file"}, "file", "/ocr_service"
    else:
        fields, file_field, endpoint = {}, "image_file", "/ocr"
    body, content_type = mr.build_multipart(fields, file_field, path.name, data, uuid.uuid4().hex)
    return HTTPRequest(
        url + endpoint, method="POST", body=body, headers={"Content-Type": content_type}, request_timeout=TIMEOUT_S,
        connect_timeout=30,
    )  # fmt: skip


async def drive(kind: str, url: str, images: list[Path], concurrency: int) -> dict[str, Any]:
    client = AsyncHTTPClient(force_instance=True, max_clients=concurrency)
    run_tag = uuid.uuid4().hex[:8]
    pending = list(enumerate(images))
    latencies: list[float] = []
    errors: dict[str, int] = {}

    async def one_client() -> None:
        while pending:
            index, path = pending.pop(0)
            request = build_request(kind, url, path, f"peers-{run_tag}-{index}")
            began = time.perf_counter()
            try:
                response = await client.fetch(request, raise_error=False)
                status = str(response.code)
            except (HTTPClientError, OSError, asyncio.TimeoutError) as exc:
                status = type(exc).__name__
            if status == "200":
                latencies.append(time.perf_counter() - began)
            else:
                errors[status] = errors.get(status, 0) + 1

    started = time.perf_counter()
    await asyncio.gather(*(one_client() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    client.close()
    latencies.sort()
    return {
        "server": kind,
        "concurrency": concurrency,
        "images": len(images),
        "ok": len(latencies),
        "errors": errors,
        "wall_s": round(wall, 2),
        "images_per_s": round(len(latencies) / wall, 3),
        "p50_s": mr.percentile(latencies, 50) if latencies else None,
        "p95_s": mr.percentile(latencies, 95) if latencies else None,
        "p99_s": mr.percentile(latencies, 99) if latencies else None,
    }


def report(rows: list[dict[str, Any]]) -> list[str]:
    def sec(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f} s"

    lines = [f"{'server':12} {'conc':>4} {'img/s':>7} {'p50':>9} {'p95':>9} {'p99':>9}  errors"]
    for row in rows:
        errors = ", ".join(f"{k}: {v}" for k, v in row["errors"].items()) or "0"
        lines.append(
            f"{row['server']:12} {row['concurrency']:>4} {row['images_per_s']:>7.3f} {sec(row['p50_s']):>9} "
            f"{sec(row['p95_s']):>9} {sec(row['p99_s']):>9}  {errors}"
        )
    by = {(r["server"], r["concurrency"]): r for r in rows}
    for concurrency in sorted({r["concurrency"] for r in rows}):
        ours, peer = by.get(("ours", concurrency)), by.get(("rapidocr_api", concurrency))
        if ours and peer and peer["images_per_s"] and ours["p99_s"] and peer["p99_s"]:
            lines.append(
                f"concurrency {concurrency}: throughput ours / peer = {ours['images_per_s'] / peer['images_per_s']:.2f}, "
                f"p99 ours / peer = {ours['p99_s'] / peer['p99_s']:.2f}"
            )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peer-python", required=True, help="a Python that has rapidocr_api installed")
    parser.add_argument("--images", type=int, default=48, help="distinct images per run (default: %(default)s)")
    parser.add_argument("--concurrency", default="8,50", help="comma-separated (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=2, help="workers of each server (default: %(default)s)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if not (OCR_GT / "manifest.jsonl").is_file():
        print(f"the shared ground-truth images are not at {OCR_GT}", file=sys.stderr)
        return 2
    if not peer_has_rapidocr_api(args.peer_python):
        print(f"{args.peer_python} cannot import rapidocr_api (see the README for its virtualenv)", file=sys.stderr)
        return 2
    images = pick_images(args.images)
    workdir = Path(tempfile.mkdtemp(prefix="bench-peers-"))
    ours_dir = workdir / "ours"
    ours_dir.mkdir()
    # The peer has no task deadline; ours (60 s by default) is raised to the client's, so that on
    # a slow or shared machine a queue of 50 heavy images is measured, not cut off with 504s.
    ours = start_server({"ocr": {"process": {"number": args.workers, "task_timeout": TIMEOUT_S}}}, workdir=ours_dir)
    peer: BenchServer | None = None
    rows: list[dict[str, Any]] = []
    try:
        peer = start_peer(args.peer_python, workdir, args.workers)
        for concurrency in (int(x) for x in args.concurrency.split(",")):
            for kind, server in (("ours", ours), ("rapidocr_api", peer)):
                rows.append(asyncio.run(drive(kind, server.url, images, concurrency)))
                print(json.dumps(rows[-1]), flush=True)
    finally:
        ours.stop()
        if peer is not None:
            peer.stop()
    for line in report(rows):
        print(line)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
