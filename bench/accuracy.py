"""Accuracy benchmark: every model family and backend on the shared ground truth, in one run.

    python bench/accuracy.py [--models PP-OCRv4,PP-OCRv6-small] [--engines onnxruntime,paddle]
                             [--set det_min_side_len=736] [--peer-python /path/to/venv/bin/python]
                             [--paddleocr-python /path/to/venv/bin/python]

Each image is read the way the server reads it by default (det=auto). Per kind and overall:
CER (lines normalised and sorted, spaces count; line splits that differ from the ground truth's
cost a lot on multi-line images), order-free CER (bag of characters, case and whitespace
ignored: reading order, line splits and word spaces cost nothing), English bag-of-words F1
(glued or split words count as wrong; also with words split at hyphens and colons, which
forgives transcriptions such as FUNSD's "212- 450- 4000" for "212-450-4000" but still charges
glued words) and the median ms per image. All micro-averaged.

Runs in the pool's shape: two processes with one inference thread each, both working on the
same variant at once (each takes half the images), one variant after the other.
`--peer-python` names an interpreter with `rapidocr==3.10.0` installed (its own virtualenv);
rapidocr then runs on its defaults, one thread, as a reference row. `--paddleocr-python` names
one with `paddleocr` 3.x: PaddleOCR's own pipeline then runs on the paddle backend's PP-OCRv5
weights (bench/peer_paddleocr.py), one thread. Each variant's two processes are fresh, and the
resident memory of the larger one after its half is reported with the images per second.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.common import OCR_GT, bag_cer, f1, load_manifest, page_cer, rss_mb, word_counts

PEER = "rapidocr-3.10.0"
PADDLEOCR = "paddleocr pipeline, PP-OCRv5"
KINDS = ("document", "form", "receipt", "scene", "line")


def _run_ours(options: dict[str, Any], root: str, images: list[str]) -> dict[str, Any]:
    from models import EngineOptions, ImageError, create_engine

    engine = create_engine(EngineOptions(cpu_threads=1, **options))
    out = {}
    for name in images:
        data = (Path(root) / name).read_bytes()
        t0 = time.perf_counter()
        try:
            result = engine.recognize(data, det="auto")
            lines = [x["text"] for x in result["text_lines"]]
        except ImageError as exc:
            lines = [f"<{exc.code}>"]
        out[name] = {"lines": lines, "ms": (time.perf_counter() - t0) * 1000}
    return {"images": out, "rss_mb": rss_mb()}


def _paddleocr_args() -> list[str]:
    """PaddleOCR runs the paddle backend's own PP-OCRv5 directories: the same weights."""
    from models import EngineOptions
    from models.options import resolve_model_paths

    paths = resolve_model_paths(EngineOptions(engine="paddle", model="PP-OCRv5"))
    return [str(paths.det), str(paths.rec)]


def _run_peer(python: str, root: str, images: list[str], script: str = "peer_rapidocr.py", extra: tuple = ()) -> dict:
    proc = subprocess.run(
        [python, str(Path(__file__).with_name(script)), root, *extra],
        input=json.dumps(images),
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{script} failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout)


def run_variant(pool: ProcessPoolExecutor, variant: dict[str, Any], root: str, images: list[str]) -> tuple[dict, float]:
    """Both halves at once; the merged per-image results and the larger process's RSS in MB."""
    halves = [images[0::2], images[1::2]]
    if variant.get("peer"):
        futures = [pool.submit(_run_peer, variant["peer"], root, half, *variant.get("script", ())) for half in halves]
    else:
        futures = [pool.submit(_run_ours, variant["options"], root, half) for half in halves]
    merged: dict[str, Any] = {}
    rss = 0.0
    for future in futures:
        result = future.result()
        merged.update(result["images"])
        rss = max(rss, result["rss_mb"])
    return merged, rss


def score(rows: list[dict], results: dict[str, Any]) -> dict[str, dict[str, float]]:
    groups: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        groups[row["kind"]].append(row)
        groups["all"].append(row)
    table = {}
    for kind, members in groups.items():
        cer_e = cer_n = of_e = of_n = judged_e = 0
        matched = ref_w = hyp_w = 0
        loose = [0, 0, 0]
        punct = [0, 0, 0]
        for row in members:
            lines = results[row["image"]]["lines"]
            e, n = page_cer(row["lines"], lines, casefold=True)
            cer_e, cer_n = cer_e + e, cer_n + n
            e, n = bag_cer(row["lines"], lines)
            of_e, of_n = of_e + e, of_n + n
            judged_e += bag_cer(row["lines"], lines, partial_gt=row.get("ignored_regions", 0) > 0)[0]
            if row["lang"] == "en":
                m, r, h = word_counts(row["lines"], lines)
                matched, ref_w, hyp_w = matched + m, ref_w + r, hyp_w + h
                loose = [a + b for a, b in zip(loose, word_counts(row["lines"], lines, loose=True))]
                punct = [a + b for a, b in zip(punct, word_counts(row["lines"], lines, punct=True))]
        table[kind] = {
            "n": len(members),
            "cer": 100 * cer_e / max(cer_n, 1),
            "orderfree_cer": 100 * of_e / max(of_n, 1),
            "orderfree_cer_judged": 100 * judged_e / max(of_n, 1),
            "en_word_f1": f1(matched, ref_w, hyp_w) if ref_w else float("nan"),
            "en_word_f1_loose": f1(*loose) if loose[1] else float("nan"),
            "en_word_f1_punct": f1(*punct) if punct[1] else float("nan"),
            "median_ms": statistics.median(results[r["image"]]["ms"] for r in members),
        }
    return table


def print_table(scores: dict[str, dict[str, dict[str, float]]], metric: str, title: str) -> None:
    kinds = [k for k in (*KINDS, "all") if any(k in s for s in scores.values())]
    print(f"\n{title}")
    print(f"| variant | {' | '.join(kinds)} |")
    print(f"|---|{'---|' * len(kinds)}")
    for name, table in scores.items():
        cells = []
        for kind in kinds:
            value = table.get(kind, {}).get(metric)
            if value is None or math.isnan(value):
                cells.append("-")
            else:
                cells.append(f"{value:.3f}" if metric.startswith("en_word_f1") else f"{value:.2f}")
        print(f"| {name} | {' | '.join(cells)} |")


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=OCR_GT)
    ap.add_argument("--models", default="", help="model families (default: every family the backend has)")
    ap.add_argument("--engines", default="openvino", help="backends, comma-separated (openvino,onnxruntime,paddle)")
    ap.add_argument(
        "--precisions",
        default="auto",
        help="auto, fp32, bf16 (openvino) and/or int8 (python -m models.quantize builds INT8), comma-separated",
    )
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="engine option for every variant")
    ap.add_argument("--peer-python", help="python of a virtualenv with rapidocr==3.10.0: adds the reference row")
    ap.add_argument(
        "--paddleocr-python", help="python of a virtualenv with paddleocr 3.x: adds PaddleOCR's own pipeline"
    )
    ap.add_argument("--limit", type=int, default=0, help="only the first N manifest rows")
    ap.add_argument("--kinds", default="", help="only these kinds, comma-separated (document,form,receipt,scene,line)")
    ap.add_argument(
        "--rotate",
        type=int,
        choices=(0, 90, 180, 270),
        default=0,
        help="read every image turned by this many degrees counter-clockwise (a page scanned upside down or sideways)",
    )
    ap.add_argument("--json", type=Path, help="write every variant's raw results and scores here")
    ap.add_argument("--rescore", type=Path, nargs="+", help="score earlier --json dumps instead of running OCR")
    args = ap.parse_args(argv)

    from models import FAMILIES, EngineOptions
    from models.families import families_for

    rows = load_manifest(args.data)
    if args.kinds:
        rows = [row for row in rows if row["kind"] in args.kinds.split(",")]
    if args.limit:
        rows = rows[: args.limit]
    overrides = {key: _parse_value(value) for key, value in (item.split("=", 1) for item in args.set)}
    variants: dict[str, dict[str, Any]] = {}
    for engine in [e.strip() for e in args.engines.split(",") if e.strip()]:
        families = [m.strip() for m in args.models.split(",") if m.strip()] or list(FAMILIES)
        for family in families:
            if family not in families_for(engine):
                continue
            for asked in [p.strip() for p in args.precisions.split(",") if p.strip()]:
                precision = EngineOptions(engine=engine, precision=asked).precision  # "auto" resolved
                if precision == "bf16" and engine != "openvino":
                    continue  # an OpenVINO inference precision
                name = f"{family} {engine}" + ("" if precision == "fp32" else f" {precision}")
                options = {"engine": engine, "model": family, "precision": precision, **overrides}
                variants[name] = {"options": options}
    if args.peer_python:
        variants[f"{PEER} (defaults)"] = {"peer": args.peer_python}
    if args.paddleocr_python:
        variants[PADDLEOCR] = {
            "peer": args.paddleocr_python,
            "script": ("peer_paddleocr.py", tuple(_paddleocr_args())),
        }
    suffix = f"; options {overrides}" if overrides else ""
    suffix += f"; every image turned {args.rotate} degrees" if args.rotate else ""
    print(f"{len(rows)} images from {args.data}; det=auto; 2 processes x 1 thread{suffix}")

    images = [row["image"] for row in rows]
    with tempfile.TemporaryDirectory(prefix="accuracy-turned-") as turned:
        data = turned_copies(args.data, images, args.rotate, Path(turned)) if args.rotate else args.data
        return _run(args, rows, images, variants, data)


def turned_copies(root: Path, images: list[str], degrees: int, into: Path) -> Path:
    """Lossless copies of `images` turned by `degrees` (EXIF orientation applied first), under `into`."""
    from PIL import Image, ImageOps

    for name in images:
        target = into / name
        target.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(root / name) as image:
            upright = ImageOps.exif_transpose(image)
            if upright.mode not in ("1", "L", "LA", "P", "RGB", "RGBA"):
                upright = upright.convert("RGB")  # CMYK, 16-bit: what PNG cannot hold
            upright.rotate(degrees, expand=True).save(target, format="PNG")
    return into


def _run(args: argparse.Namespace, rows: list[dict], images: list[str], variants: dict[str, dict], data: Path) -> int:
    raw, scores, process = {}, {}, {}
    if args.rescore:
        for dump in args.rescore:
            for name, results in json.loads(dump.read_text(encoding="utf-8"))["raw"].items():
                name = f"{name} [{dump.stem}]" if name in raw else name
                raw[name], scores[name] = results, score(rows, results)
        variants = {}
    # A fresh process for every half, so that each variant's memory is its own.
    with ProcessPoolExecutor(max_workers=2, mp_context=get_context("spawn"), max_tasks_per_child=1) as pool:
        for name, variant in variants.items():
            t0 = time.perf_counter()
            raw[name], rss = run_variant(pool, variant, str(data), images)
            scores[name] = score(rows, raw[name])
            wall = time.perf_counter() - t0
            process[name] = {"wall_s": wall, "images_per_s": len(images) / wall, "rss_mb": rss}
            print(f"  {name}: {wall:.0f} s", flush=True)

    print_table(scores, "cer", "CER % (sorted lines, case ignored, spaces count)")
    print_table(scores, "orderfree_cer", "order-free CER % (bag of characters, case and whitespace ignored)")
    print_table(
        scores,
        "orderfree_cer_judged",
        "order-free CER %, charging only what the ground truth can judge (on images whose ground truth"
        " leaves regions out, ICDAR's `###`, text read beyond it is not counted; missed text is)",
    )
    print_table(scores, "en_word_f1", "English bag-of-words F1")
    print_table(scores, "en_word_f1_loose", "English bag-of-words F1, words also split at '-' and ':'")
    print_table(scores, "en_word_f1_punct", "English bag-of-words F1, words split at every punctuation mark")
    print_table(scores, "median_ms", "median ms per image (2 processes x 1 thread)")
    if process:
        print("\n| variant | images/s (2 processes, model loading included) | worker RSS MB after the run |")
        print("|---|---|---|")
        for name, row in process.items():
            print(f"| {name} | {row['images_per_s']:.2f} | {row['rss_mb']:.0f} |")
    if args.json:
        args.json.write_text(
            json.dumps({"scores": scores, "process": process, "raw": raw}, ensure_ascii=False, indent=1),
            encoding="utf-8",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
