"""Engine speed / memory benchmark (not a test).

    python bench/engine.py [--engines openvino,onnxruntime,paddle+mkldnn] [--n 100] [--rss-images 200]
    python bench/engine.py --engines "onnxruntime@PP-OCRv4,onnxruntime@PP-OCRv6-small;det_limit_side_len=960"
    python bench/engine.py --tree before=../checkout-of-main --engines "openvino,before:onnxruntime"

For each engine spec ("openvino", "onnxruntime", "paddle", "paddle+mkldnn") it measures,
each in a fresh spawned process so RSS numbers are clean:

* 1 process x 1 thread (also model load time incl. warm-up);
* 1 process x 2 threads;
* 2 processes x 1 thread (both pull images from one shared counter, timing
  starts when both have loaded; img/s = images / slower worker's wall time).

Then a memory soak: one 1-thread worker per engine (run side by side, so
their speed is not reported) recognises ``--rss-images`` images by cycling
the same list; RSS is sampled after load, after the first pass over the list
and at the end.  Growth after the first pass is a leak, not new shapes.

Images: every file of shared/data/ocr-gt and shared/data/load, shuffled with a
fixed seed; the first ``--n`` are used.  ms/image is the wall time of
``OcrEngine.recognize`` (decode + det + cls + rec), det="auto".
Default run: about 10 minutes on 2 cores; ``--n 20 --rss-images 60`` ~3 min.

On a shared machine two runs of the same engine a few minutes apart can differ by 10 %,
more than the difference between two close variants. ``--rounds R`` repeats every setup
R times with the engines in alternating order (A B, then B A, ...) and prints, per engine,
the median img/s and, against the first engine, the median of the per-round ratios: each
ratio comes from two runs back to back, so a drift in the machine's load cancels out. Each
run also reports the CPU time its workers used per image (all their threads): what the
engine costs, which a VM's stolen time and other load move much less than img/s.

``--tree NAME=PATH`` makes the engines of another source tree (e.g. a checkout of the code
before a change) available as ``NAME:SPEC``: their workers import ``models`` from PATH.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import statistics
import sys
import time
from multiprocessing import get_context
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.common import LOAD_DIR, OCR_GT, load_files, load_manifest


def _options(spec: str, threads: int):
    """ENGINE[+mkldnn][@FAMILY][;key=value...] -> EngineOptions (values parsed as JSON)."""
    import json

    from models import EngineOptions

    spec, *pairs = spec.split(";")
    spec, _, family = spec.partition("@")
    engine, _, flag = spec.partition("+")
    extra = {key: json.loads(value) for key, value in (pair.split("=", 1) for pair in pairs)}
    return EngineOptions(
        engine=engine, model=family, cpu_threads=threads, enable_mkldnn=flag == "mkldnn", **extra
    )


def split_tree(spec: str, trees: dict[str, str]) -> tuple[str | None, str]:
    """"NAME:SPEC" -> (the tree's path, SPEC); a plain SPEC -> (None, SPEC) (this tree)."""
    name, sep, rest = spec.partition(":")
    if not sep or not re.fullmatch(r"[\w.-]+", name):  # a colon inside an option's JSON value
        return None, spec
    if name not in trees:
        raise ValueError(f"engine {spec!r} names tree {name!r}; given: {sorted(trees) or 'none'} (--tree NAME=PATH)")
    return trees[name], rest


def _worker(
    spec: str, threads: int, paths: list[str], total: int, barrier, queue, counter=None, tree: str | None = None
) -> None:
    import psutil

    if tree is not None:
        sys.path.insert(0, tree)  # this spawned process has not imported models yet
    from models import create_engine

    proc = psutil.Process()
    blobs = [Path(p).read_bytes() for p in paths]
    t = time.perf_counter()
    eng = create_engine(_options(spec, threads))
    load_s = time.perf_counter() - t
    rss_load = proc.memory_info().rss
    if barrier is not None:
        barrier.wait()
    ms: list[float] = []
    rss_pass = 0
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    i = -1
    while True:
        if counter is None:
            i += 1
        else:
            # Shared work queue, like the server's pool: no static shards,
            # so one worker drawing all the big receipts cannot skew img/s.
            with counter.get_lock():
                i = counter.value
                counter.value += 1
        if i >= total:
            break
        t = time.perf_counter()
        eng.recognize(blobs[i % len(blobs)], det="auto")
        ms.append((time.perf_counter() - t) * 1000)
        if i + 1 == len(blobs):
            rss_pass = proc.memory_info().rss
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0  # every thread of this worker
    queue.put(
        {
            "load_s": load_s,
            "rss_load": rss_load,
            "rss_pass": rss_pass or proc.memory_info().rss,
            "rss_end": proc.memory_info().rss,
            "ms": ms,
            "wall": wall,
            "cpu": cpu,
            "n_first": min(len(blobs), total) if counter is None else len(ms),
        }
    )


def _soak(specs: list[str], paths: list[str], total: int, trees: dict[str, str]) -> dict[str, dict]:
    ctx = get_context("spawn")
    queues = {s: ctx.Queue() for s in specs}
    workers = []
    for s in specs:
        tree, engine = split_tree(s, trees)
        workers.append(ctx.Process(target=_worker, args=(engine, 1, paths, total, None, queues[s], None, tree)))
    for w in workers:
        w.start()
    out = {s: queues[s].get() for s in specs}
    for w in workers:
        w.join()
    return out


def _run(spec: str, threads: int, procs: int, paths: list[str], trees: dict[str, str]) -> dict:
    tree, spec = split_tree(spec, trees)
    ctx = get_context("spawn")
    queue = ctx.Queue()
    barrier = ctx.Barrier(procs) if procs > 1 else None
    counter = ctx.Value("i", 0)
    workers = [
        ctx.Process(target=_worker, args=(spec, threads, paths, len(paths), barrier, queue, counter, tree))
        for _ in range(procs)
    ]
    for w in workers:
        w.start()
    results = [queue.get() for _ in workers]
    for w in workers:
        w.join()
    all_ms = [m for r in results for m in r["ms"]]
    return {
        "median_ms": statistics.median(all_ms),
        "mean_ms": statistics.fmean(all_ms),
        "ips": len(all_ms) / max(r["wall"] for r in results),
        # CPU time the workers used per image: what the engine costs, much less moved than
        # wall time by other load or a VM's stolen time.
        "cpu_ms": 1000 * sum(r["cpu"] for r in results) / len(all_ms),
        "load_s": max(r["load_s"] for r in results),
        "rss_end": max(r["rss_end"] for r in results),
        "n": len(all_ms),
    }


def round_order(specs: list[str], round_index: int) -> list[str]:
    """The engines' order in one round: as given, then reversed, alternately."""
    return list(specs) if round_index % 2 == 0 else list(reversed(specs))


def round_summary(ips: dict[str, list[float]], baseline: str) -> dict[str, dict[str, float]]:
    """Per engine: median, lowest and highest img/s over the rounds, and the median of its
    per-round ratio to ``baseline`` (round i of each engine ran beside round i of the other)."""
    return {
        spec: {
            "median": statistics.median(values),
            "low": min(values),
            "high": max(values),
            "ratio": statistics.median(v / b for v, b in zip(values, ips[baseline], strict=True)),
        }
        for spec, values in ips.items()
    }


def _print_rounds(figure: str, table: dict[tuple[int, int], dict[str, list[float]]], baseline: str) -> None:
    print(f"{'engine':40s} {'setup':10s} {figure:>12s} {'low':>6s} {'high':>6s} {'ratio':>6s}")
    for (procs, threads), per_spec in table.items():
        for spec, summary in round_summary(per_spec, baseline).items():
            label = f"{procs}p x {threads}t"
            figures = " ".join(f"{summary[key]:6.2f}" for key in ("low", "high", "ratio"))
            print(f"{spec:40s} {label:10s} {summary['median']:12.2f} {figures}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--engines",
        default="openvino,onnxruntime,paddle+mkldnn",
        help="comma list of ENGINE[+mkldnn][@FAMILY][;option=value...], e.g. onnxruntime@PP-OCRv6-small",
    )
    ap.add_argument("--n", type=int, default=50, help="images per speed setup")
    ap.add_argument("--rss-images", type=int, default=200, help="images per worker in the memory soak (0: skip)")
    ap.add_argument("--setups", default="1x1,1x2,2x1", help="PROCSxTHREADS list")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--rounds", type=int, default=1, help="repeat each setup, engines in alternating order; summary per engine"
    )
    ap.add_argument("--tree", action="append", default=[], metavar="NAME=PATH",
                    help="another source tree whose engines are named NAME:SPEC in --engines")  # fmt: skip
    args = ap.parse_args(argv)
    if args.rounds < 1:
        ap.error("--rounds must be >= 1")
    trees = dict(tree.split("=", 1) for tree in args.tree)
    for name, path in trees.items():
        if not (Path(path) / "models" / "__init__.py").is_file():
            ap.error(f"--tree {name}={path}: no models/ package there")

    paths = [str(OCR_GT / r["image"]) for r in load_manifest(OCR_GT)]
    paths += [str(LOAD_DIR / r["image"]) for r in load_files(LOAD_DIR)]
    random.Random(args.seed).shuffle(paths)
    paths = paths[: args.n]
    specs = [s.strip() for s in args.engines.split(",") if s.strip()]
    for spec in specs:  # an unknown tree name fails now, not after other engines have run
        try:
            split_tree(spec, trees)
        except ValueError as exc:
            ap.error(str(exc))
    mb = 1 / 2**20
    print(f"{len(paths)} images/setup, det=auto, {os.cpu_count()} CPUs")
    print(
        f"{'engine':40s} {'setup':10s} {'median ms':>9s} {'mean ms':>8s} {'img/s':>6s} {'CPU ms/img':>10s} "
        f"{'load s':>6s} {'RSS end':>8s}"
    )
    setups = [tuple(int(v) for v in setup.split("x")) for setup in args.setups.split(",")]
    ips: dict[tuple[int, int], dict[str, list[float]]] = {setup: {spec: [] for spec in specs} for setup in setups}
    per_cpu_s: dict[tuple[int, int], dict[str, list[float]]] = {setup: {spec: [] for spec in specs} for setup in setups}
    for round_index in range(args.rounds):
        if args.rounds > 1:
            print(f"round {round_index + 1} of {args.rounds}")
        for spec in round_order(specs, round_index):
            for procs, threads in setups:
                r = _run(spec, threads, procs, paths, trees)
                ips[(procs, threads)][spec].append(r["ips"])
                per_cpu_s[(procs, threads)][spec].append(1000 / r["cpu_ms"])
                label = f"{procs}p x {threads}t"
                print(
                    f"{spec:40s} {label:10s} {r['median_ms']:9.1f} {r['mean_ms']:8.1f} {r['ips']:6.2f} {r['cpu_ms']:10.0f} "
                    f"{r['load_s']:6.2f} {r['rss_end'] * mb:7.0f}M",
                    flush=True,
                )
    if args.rounds > 1:
        print(f"\nover {args.rounds} rounds, ratios against {specs[0]}, each from the same round")
        _print_rounds("img/s median", ips, specs[0])
        print(f"\nthe same by CPU time: images per CPU second of the workers, ratios against {specs[0]}")
        _print_rounds("img/CPU s", per_cpu_s, specs[0])
    if args.rss_images:
        print(f"\nmemory soak: {args.rss_images} images per worker, cycling the {len(paths)} images above")
        print(f"{'engine':40s} {'RSS load':>9s} {'RSS pass1':>9s} {'RSS end':>9s} {'growth after pass1':>19s}")
        for spec, r in _soak(specs, paths, args.rss_images, trees).items():
            grow = (r["rss_end"] - r["rss_pass"]) * mb
            print(
                f"{spec:40s} {r['rss_load'] * mb:8.0f}M {r['rss_pass'] * mb:8.0f}M {r['rss_end'] * mb:8.0f}M "
                f"{grow:+17.1f}M"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
