"""Throughput benchmark: the engine alone vs the HTTP server, cache hits, in-flight sharing.

One run measures, on this machine:

1. single-process engine throughput (no HTTP): ``create_engine(EngineOptions(cpu_threads=1))``
   and ``recognize`` over every image once, sequentially, timing each image;
2. the server's throughput on distinct, uncached images at several concurrency levels
   (default 1, 2, 8, 50) with ``ocr.process.number`` = cores.  The server is started here
   on a free 127.0.0.1 port with a temporary config, and stopped by PID at the end;
3. the ratio server / (cores x single engine).  Because a level's request list need not
   be one exact pass over the images, the ratio is computed for the exact mix sent:
   ``sum(engine seconds of each image sent) / (cores x wall seconds)``;
4. cache-hit latency p50/p99 at concurrency 50 (and at 1, for reference), with the Python
   client and, when installed, with wrk beside the Tornado floor (see bench/hit_latency.py);
5. the number of OCR runs (``/health`` ``ocr_runs`` delta) for 50 concurrent identical
   uncached requests (must be 1).

"Uncached" uses multirequest's method: every upload gets unique metadata (a PNG tEXt
chunk / JPEG COM segment), so its content hash is new while its pixels, and therefore
the OCR work, are those of the original file.

    python bench/throughput.py                      # full run, ~6 min on 2 cores
    python bench/throughput.py --max-images 8 --passes 1 --levels 1,2 --cached-requests 200
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import multiprocessing as mp
import os
import platform
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import multirequest as mr
from bench import hit_latency
from bench.launch import BenchServer, start_server

DEFAULT_IMAGES = REPO.parent / "shared" / "data" / "load"


# ---------------------------------------------------------------- machine


def describe_machine() -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gib = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    versions: dict[str, str] = {}
    for name in ("openvino", "onnxruntime", "tornado", "numpy", "cv2"):
        with contextlib.suppress(Exception):
            module = __import__(name)
            versions[name] = str(getattr(module, "__version__", getattr(module, "version", "?")))
    return {
        "cpu": cpu or platform.processor(),
        "cores": os.cpu_count() or 1,
        "memory_gib": mem_gib,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
    }


# ---------------------------------------------------------------- engine alone


def measure_engine(images: list[Path], deadline: float) -> dict[str, Any]:
    """Sequential recognize() over each image once: seconds per image, images/s."""
    from models import EngineOptions, create_engine

    t0 = time.perf_counter()
    engine = create_engine(EngineOptions(cpu_threads=1))
    load_s = time.perf_counter() - t0
    per_image: dict[str, float] = {}
    for path in images:
        if time.monotonic() >= deadline:
            break
        data = path.read_bytes()
        start = time.perf_counter()
        engine.recognize(data)
        per_image[path.name] = time.perf_counter() - start
    del engine
    gc.collect()
    total = sum(per_image.values())
    return {
        "load_s": load_s,
        "images": len(per_image),
        "total_s": total,
        "images_per_s": len(per_image) / total if total > 0 else 0.0,
        "per_image_s": per_image,
    }


def _engine_worker(paths: list[str], barrier: Any, out: Any) -> None:
    from models import EngineOptions, create_engine

    engine = create_engine(EngineOptions(cpu_threads=1))
    barrier.wait()
    start = time.perf_counter()
    times: dict[str, float] = {}
    for path in paths:
        data = Path(path).read_bytes()
        t0 = time.perf_counter()
        engine.recognize(data)
        times[Path(path).name] = time.perf_counter() - t0
    out.put((start, time.perf_counter(), times))


def measure_parallel_engines(images: list[Path], processes: int, single_s: dict[str, float]) -> dict[str, Any]:
    """``processes`` engine processes (no HTTP), each over every image once, started
    together, each from a different offset so heavy images do not coincide.  The work
    rate is single-engine seconds of images done per wall second: ``processes`` on
    hardware that runs them fully in parallel, less when the CPUs are shared."""
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(processes), ctx.Queue()
    n = len(images)
    procs = []
    for k in range(processes):
        offset = k * n // processes
        order = [str(p) for p in images[offset:] + images[:offset]]
        proc = ctx.Process(target=_engine_worker, args=(order, barrier, queue), daemon=True)
        proc.start()
        procs.append(proc)
    results = [queue.get(timeout=3600) for _ in procs]
    for proc in procs:
        proc.join(timeout=60)
    wall = max(end for _, end, _ in results) - min(start for start, _, _ in results)
    done = sum(len(times) for _, _, times in results)
    work = sum(single_s[name] for _, _, times in results for name in times)
    slowdown = sum(sum(times.values()) for _, _, times in results) / work if work else None
    return {
        "processes": processes,
        "images": done,
        "wall_s": wall,
        "images_per_s": done / wall,
        "work_rate": work / wall,
        "per_image_slowdown": slowdown,
    }


# ---------------------------------------------------------------- server measurements


async def measure_server(
    server: BenchServer,
    images: list[Path],
    engine_s: dict[str, float],
    parallel_rate: float | None,
    args: argparse.Namespace,
    deadline: float,
) -> dict[str, Any]:
    cores = args.workers
    max_c = max([*args.levels, args.identical, 50])
    client = mr.OcrClient(server.url, mode="upload", block=True, timeout=args.timeout, max_clients=max_c + 2)
    out: dict[str, Any] = {"levels": [], "cache_hit": [], "identical": None}
    try:
        if not await client.wait_ready(min(180.0, deadline - time.monotonic())):
            raise RuntimeError(f"server not ready:\n{server.log_tail()}")
        base_count = len(images) * args.passes
        same = mr.default_same_image(images)
        for level in args.levels:
            if time.monotonic() >= deadline:
                print(f"deadline reached; skipping concurrency {level}", file=sys.stderr)
                break
            run_id = f"bench-{uuid.uuid4().hex[:10]}"
            summary, outcomes = await mr.run_scenario(
                client, "distinct", images, count=max(base_count, level), concurrency=level, same_image=same,
                deadline=deadline, run_id=run_id, progress=not args.quiet,
            )  # fmt: skip
            sent = [images[o.index % len(images)].name for o in outcomes if o.ok]
            work = sum(engine_s[name] for name in sent if name in engine_s)
            rate = work / summary["wall_s"] if summary["wall_s"] > 0 else 0.0
            summary["concurrency"] = level
            summary["work_rate"] = rate  # single-engine seconds of images served per wall second
            summary["ratio_vs_cores_x_engine"] = rate / cores
            summary["ratio_vs_parallel_engines"] = rate / parallel_rate if parallel_rate else None
            out["levels"].append(summary)
            print(
                f"server c={level:<3} {summary['ok']}/{summary['requests']} ok, "
                f"{summary['throughput_rps']:.3f} img/s, ratio {summary['ratio_vs_cores_x_engine']:.3f} vs cores x engine, "
                f"{_fmt_ratio(summary['ratio_vs_parallel_engines'])} vs parallel engines, "
                f"latency mean {mr.fmt_seconds(summary['latency_s']['mean'])} "
                f"max {mr.fmt_seconds(summary['latency_s']['max'])}, errors {summary['errors'] or 'none'}",
                flush=True,
            )

        run_id = f"bench-{uuid.uuid4().hex[:10]}"
        for level, n in ((50, args.cached_requests), (1, max(50, args.cached_requests // 5))):
            if time.monotonic() >= deadline:
                break
            summary, _ = await mr.run_scenario(
                client, "same-cached", images, count=n, concurrency=level, same_image=same,
                deadline=deadline, run_id=run_id, progress=not args.quiet,
            )  # fmt: skip
            summary["concurrency"] = level
            out["cache_hit"].append(summary)
            lat = summary["latency_s"]
            print(
                f"cache hit c={level:<3} n={n}: p50 {mr.fmt_seconds(lat['p50'])} p99 {mr.fmt_seconds(lat['p99'])} "
                f"max {mr.fmt_seconds(lat['max'])}, {summary['throughput_rps']:.0f} req/s, "
                f"hits {summary['cache_hits']}/{summary['ok']}",
                flush=True,
            )

        if time.monotonic() < deadline:
            summary, _ = await mr.run_scenario(
                client, "same-uncached", images, count=args.identical, concurrency=args.identical, same_image=same,
                deadline=deadline, run_id=f"bench-{uuid.uuid4().hex[:10]}", progress=not args.quiet,
            )  # fmt: skip
            summary["concurrency"] = args.identical
            out["identical"] = summary
            print(
                f"{args.identical} identical uncached ({same.name}): ocr_runs delta {summary['ocr_runs']}, "
                f"{summary['ok']} ok, latency mean {mr.fmt_seconds(summary['latency_s']['mean'])} "
                f"max {mr.fmt_seconds(summary['latency_s']['max'])}",
                flush=True,
            )
    finally:
        client.close()
    return out


# ---------------------------------------------------------------- report


def _fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def headline(engine: dict[str, Any], parallel: dict[str, Any] | None, server: dict[str, Any], cores: int) -> list[str]:
    lines = [
        "",
        "== summary ==",
        (
            f"engine alone (1 process, 1 thread): {engine['images_per_s']:.3f} img/s "
            f"over {engine['images']} images ({engine['total_s']:.1f} s)"
        ),
        (
            f"cores x engine = {cores} x {engine['images_per_s']:.3f} = "
            f"{cores * engine['images_per_s']:.3f} img/s (work rate {cores:.2f} engine-s/s)"
        ),
    ]
    if parallel is not None:
        lines.append(
            f"{parallel['processes']} engine processes in parallel, no HTTP: {parallel['images_per_s']:.3f} img/s, "
            f"work rate {parallel['work_rate']:.2f} engine-s/s (what this machine's {cores} CPUs deliver)"
        )
    lines.append(
        f"{'concurrency':>11} {'img/s':>8} {'vs c x e':>9} {'vs par':>7} {'mean':>10} {'p50':>10} {'p99':>10} {'max':>10}"
    )
    for s in server["levels"]:
        lat = s["latency_s"]
        lines.append(
            f"{s['concurrency']:>11} {s['throughput_rps']:>8.3f} {s['ratio_vs_cores_x_engine']:>9.3f} "
            f"{_fmt_ratio(s['ratio_vs_parallel_engines']):>7} "
            f"{mr.fmt_seconds(lat['mean']):>10} {mr.fmt_seconds(lat['p50']):>10} "
            f"{mr.fmt_seconds(lat['p99']):>10} {mr.fmt_seconds(lat['max']):>10}"
        )
    multi = [s for s in server["levels"] if s["concurrency"] >= cores]
    if multi:
        best = max(s["ratio_vs_cores_x_engine"] for s in multi)
        at50 = [s["ratio_vs_cores_x_engine"] for s in multi if s["concurrency"] == 50]
        lines.append(
            f"ratio server / (cores x engine): best {best:.3f} at concurrency >= cores"
            + (f", {at50[0]:.3f} at 50" if at50 else "")
            + f" (target >= 0.9: {'MET' if best >= 0.9 else 'NOT MET'})"
        )
        par = [s["ratio_vs_parallel_engines"] for s in multi if s["ratio_vs_parallel_engines"] is not None]
        if par:
            lines.append(f"ratio server / (parallel engine processes, no HTTP): best {max(par):.3f}")
    for s in server["cache_hit"]:
        lat = s["latency_s"]
        target = f" (target p99 < 5 ms: {'MET' if lat['p99'] < 0.005 else 'NOT MET'})" if s["concurrency"] == 50 else ""
        lines.append(
            f"cache-hit latency at concurrency {s['concurrency']}: p50 {mr.fmt_seconds(lat['p50'])}, "
            f"p99 {mr.fmt_seconds(lat['p99'])}{target}"
        )
    if server.get("wrk_hits"):
        lines += hit_latency.report(server["wrk_hits"])
    ident = server["identical"]
    if ident is not None:
        lines.append(
            f"OCR runs for {ident['concurrency']} concurrent identical uncached requests: {ident['ocr_runs']} "
            f"(must be 1: {'MET' if ident['ocr_runs'] == 1 else 'NOT MET'})"
        )
    return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    cores = os.cpu_count() or 1
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="directory of images")
    p.add_argument("--max-images", type=int, default=0, help="use only the first N images by name (0: all)")
    p.add_argument(
        "--passes", type=int, default=1, help="passes over the images per level (at least `level` requests are sent)"
    )
    p.add_argument("--skip-parallel", action="store_true", help="skip the parallel engine-processes baseline")
    p.add_argument("--levels", default="1,2,8,50", help="comma-separated concurrency levels")
    p.add_argument("--workers", type=int, default=cores, help="ocr.process.number (default: cores)")
    p.add_argument("--cached-requests", type=int, default=1000, help="cache-hit requests at concurrency 50")
    p.add_argument("--skip-wrk", action="store_true", help="skip the cache-hit comparison driven by wrk")
    p.add_argument("--identical", type=int, default=50, help="concurrent identical uncached requests")
    p.add_argument("--timeout", type=float, default=600.0, help="per-request timeout, seconds")
    p.add_argument("--deadline", type=float, default=1500.0, help="overall time limit, seconds")
    p.add_argument("--json", dest="json_path", type=Path, default=None, help="write all figures as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    try:
        args.levels = [int(x) for x in args.levels.split(",") if x.strip()]
    except ValueError:
        p.error("--levels must be comma-separated integers")
    if not args.levels or min(args.levels) < 1 or args.passes < 1 or args.workers < 1:
        p.error("--levels, --passes and --workers must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    deadline = time.monotonic() + args.deadline
    if not args.images.is_dir():
        print(f"image directory not found: {args.images} (expected ../shared beside the repo)", file=sys.stderr)
        return 2
    images = mr.list_images(args.images)
    if args.max_images:
        images = images[: args.max_images]
    if not images:
        print(f"no images in {args.images}", file=sys.stderr)
        return 2
    machine = describe_machine()
    print(f"machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory_gib']} GiB, "
          f"Python {machine['python']}, {machine['versions']}", flush=True)  # fmt: skip
    print(f"images: {len(images)} from {args.images}; {args.passes} pass(es) per level; workers {args.workers}")

    engine = measure_engine(images, deadline)
    print(f"engine alone: {engine['images_per_s']:.3f} img/s ({engine['images']} images in {engine['total_s']:.1f} s, "
          f"model load {engine['load_s']:.2f} s)", flush=True)  # fmt: skip
    images = [p for p in images if p.name in engine["per_image_s"]]
    parallel = None
    if args.workers > 1 and not args.skip_parallel:
        parallel = measure_parallel_engines(images, args.workers, engine["per_image_s"])
        print(f"{args.workers} engines in parallel: {parallel['images_per_s']:.3f} img/s, work rate "
              f"{parallel['work_rate']:.2f} engine-s/s, per-image slowdown x{parallel['per_image_slowdown']:.2f}",
              flush=True)  # fmt: skip

    with tempfile.TemporaryDirectory(prefix="bench-throughput-") as tmp:
        config = {
            "web_server": {"host": "127.0.0.1", "allowed_roots": [str(args.images.resolve())]},
            "ocr": {
                "process": {
                    "number": args.workers,
                    "queue_size": max(256, 2 * max(args.levels)),
                    # Long enough that queueing at concurrency 50 measures throughput, not 504s.
                    "task_timeout": max(60.0, args.timeout),
                }
            },
            "service": {"time": 3600, "img_number": 10000},
        }
        # INFO: the access log stays on, as in production.
        server = start_server(
            config, ready_timeout=max(1.0, min(180.0, deadline - time.monotonic())), log_level="INFO", workdir=Path(tmp)
        )
        try:
            measured = asyncio.run(
                measure_server(
                    server, images, engine["per_image_s"], parallel and parallel["work_rate"], args, deadline
                )
            )
            # The same hits driven by wrk (C client) beside the least Tornado can do, when installed.
            if not args.skip_wrk and time.monotonic() < deadline:
                measured["wrk_hits"] = hit_latency.compare(
                    server, mr.default_same_image(images), [1, 50], 5.0, Path(tmp), args.workers
                )
                if measured["wrk_hits"] is None:
                    print("wrk not installed: cache hits measured with the Python client only", file=sys.stderr)
        finally:
            code = server.stop()
            print(f"server (pid {server.pid}) stopped, exit code {code}")

    for line in headline(engine, parallel, measured, args.workers):
        print(line)
    if args.json_path is not None:
        doc = {"machine": machine, "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
               "engine": engine, "parallel_engines": parallel, "server": measured, "original_published": mr.ORIGINAL_PUBLISHED}  # fmt: skip
        args.json_path.write_text(json.dumps(doc, indent=2) + "\n")
    errors = sum(s["error_count"] + s["not_sent"] for s in measured["levels"] + measured["cache_hit"])
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
