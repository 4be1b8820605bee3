"""Accuracy benchmark: CER of each backend on the shared ground truth.

    python bench/accuracy.py --data ../shared/data/ocr-gt [--engines onnxruntime,paddle] [--limit N]

Reports micro-averaged CER (sum of edits / sum of reference chars, after
``bench.common.normalize_lines``) per source, per language and overall, for
every backend; CER with det=auto on kind=="line" images; and the character
agreement between the backends' raw outputs.  Each backend runs in its own
process (1 thread) so the two share the machine's 2 cores.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.common import OCR_GT, bag_cer, edit_distance, load_manifest, page_cer


def _run_engine(engine: str, root: str, rows: list[dict], mkldnn: bool) -> dict:
    from models import EngineOptions, ImageError, create_engine

    t = time.perf_counter()
    eng = create_engine(EngineOptions(engine=engine, enable_mkldnn=mkldnn, cpu_threads=1))
    load_s = time.perf_counter() - t
    out: dict[str, dict] = {}
    for row in rows:
        data = (Path(root) / row["image"]).read_bytes()
        rec: dict = {}
        modes = ["on", "auto", "off"] if row["kind"] == "line" else ["on"]
        for det in modes:
            try:
                r = eng.recognize(data, det=det)
                rec[det] = {
                    "lines": [x["text"] for x in r["text_lines"]],
                    "ms": r["timing"]["total"],
                    "det_used": r["det_used"],
                }
            except ImageError as exc:
                rec[det] = {"lines": [], "ms": 0.0, "error": exc.code, "det_used": False}
        out[row["image"]] = rec
    return {"load_s": load_s, "results": out}


def _micro(pairs: list[tuple[int, int]]) -> float:
    edits = sum(e for e, _ in pairs)
    chars = sum(n for _, n in pairs)
    return edits / chars if chars else 0.0


def _metrics(gt: list[str], ocr: list[str]) -> tuple[tuple[int, int], ...]:
    """(CER, case-insensitive CER, bag-of-characters error) as (edits, chars) pairs."""
    return page_cer(gt, ocr), page_cer(gt, ocr, casefold=True), bag_cer(gt, ocr)


def _fmt(items: list[tuple[tuple[int, int], ...]]) -> str:
    return "  ".join(f"{_micro([m[i] for m in items]) * 100:6.2f}%" for i in range(3))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=OCR_GT)
    ap.add_argument("--engines", default="onnxruntime,paddle")
    ap.add_argument("--limit", type=int, default=0, help="only the first N manifest rows")
    ap.add_argument("--no-mkldnn", action="store_true", help="paddle without oneDNN (2-3x slower)")
    ap.add_argument("--json", type=Path, help="also dump raw per-image results here")
    ap.add_argument("--from-json", type=Path, help="re-report a --json dump instead of running OCR")
    ap.add_argument("--worst", type=int, default=5, help="print the N worst images per backend")
    args = ap.parse_args(argv)

    rows = load_manifest(args.data)
    if args.limit:
        rows = rows[: args.limit]
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    print(f"{len(rows)} images from {args.data}; engines: {engines}; paddle mkldnn={not args.no_mkldnn}")

    t0 = time.perf_counter()
    if args.from_json:
        runs = json.loads(args.from_json.read_text(encoding="utf-8"))
    else:
        with ProcessPoolExecutor(max_workers=len(engines), mp_context=get_context("spawn")) as pool:
            futs = {e: pool.submit(_run_engine, e, str(args.data), rows, not args.no_mkldnn) for e in engines}
            runs = {e: f.result() for e, f in futs.items()}
        print(f"wall time {time.perf_counter() - t0:.1f}s")
    if args.json and not args.from_json:
        args.json.write_text(json.dumps(runs, ensure_ascii=False, indent=1), encoding="utf-8")

    for eng in engines:
        res = runs[eng]["results"]
        by_src: dict[str, list] = defaultdict(list)
        by_lang: dict[str, list] = defaultdict(list)
        by_kind: dict[str, list] = defaultdict(list)
        allp, per_img = [], []
        line_modes: dict[str, list] = defaultdict(list)
        for row in rows:
            r = res[row["image"]]
            p = _metrics(row["lines"], r["on"]["lines"])
            by_src[row["source"]].append(p)
            by_lang[row["lang"]].append(p)
            by_kind[row["kind"]].append(p)
            allp.append(p)
            per_img.append((p[0][0] / max(p[0][1], 1), row["image"]))
            if row["kind"] == "line":
                for mode in ("on", "auto", "off"):
                    line_modes[mode].append(_metrics(row["lines"], r[mode]["lines"]))
                line_modes[row["source"] + " det=on"].append(p)
                line_modes[row["source"] + " det=auto"].append(_metrics(row["lines"], r["auto"]["lines"]))
        ms = sorted(r["on"]["ms"] for r in res.values())
        print(f"\n== {eng}: load {runs[eng]['load_s']:.2f}s, median {ms[len(ms) // 2]:.0f} ms/image (det=on)")
        print("  columns: CER | CER ignoring case | order-free char error (bench.common.bag_cer)")
        print(f"  {'overall':28s} n={len(allp):3d}  {_fmt(allp)}  ({sum(m[0][1] for m in allp)} ref chars)")
        for title, groups in (("source", by_src), ("lang", by_lang), ("kind", by_kind)):
            print(f"  by {title}:")
            for k in sorted(groups):
                print(f"    {k:26s} n={len(groups[k]):3d}  {_fmt(groups[k])}")
        if line_modes:
            auto_used = sum(not res[r["image"]]["auto"]["det_used"] for r in rows if r["kind"] == "line")
            n_line = sum(r["kind"] == "line" for r in rows)
            print(f"  kind=line images (n={n_line}; det=auto skipped detection on {auto_used}):")
            for k in sorted(line_modes, key=lambda k: (" " in k, k)):
                label = k if " " in k else f"all lines det={k}"
                print(f"    {label:32s} {_fmt(line_modes[k])}")
        print(
            f"  worst {args.worst}: "
            + ", ".join(f"{Path(n).name} {c * 100:.0f}%" for c, n in sorted(per_img)[::-1][: args.worst])
        )

    if len(engines) >= 2:
        a, b = engines[:2]
        edits = total = 0
        diffs = []
        for row in rows:
            for mode in runs[a]["results"][row["image"]]:
                ta = "\n".join(runs[a]["results"][row["image"]][mode]["lines"])
                tb = "\n".join(runs[b]["results"][row["image"]][mode]["lines"])
                e = edit_distance(ta, tb)
                edits += e
                total += max(len(ta), len(tb))
                if e:
                    diffs.append((e, row["image"], mode))
        agree = 1 - edits / total if total else 1.0
        print(
            f"\n== agreement {a} vs {b}: {agree * 100:.3f}% of {total} chars identical "
            f"({len(diffs)} image/mode pairs differ)"
        )
        for e, img, mode in sorted(diffs, reverse=True)[:8]:
            print(f"    {e:4d} edits  {img} det={mode}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
