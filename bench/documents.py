"""Documents: pages/s of a scanned and a born-digital PDF, the pool against one worker.

    python bench/documents.py [--pages 20] [--json out.json]

Starts the real server three times on free loopback ports, each fresh (nothing cached):
the pool (2 workers x 1 thread, the default shape on 2 CPUs), one worker x 1 thread (the
same pages one after another on one of the pool's workers), and one worker x 2 threads
(the whole machine on one page at a time). Each gets the same documents, one blocking
request each:

- scanned: --pages ground-truth images (receipts, forms, documents in turn) as a PDF at
  200 DPI, read by OCR;
- born-digital, auto: a PDF of the same pages' ground-truth text, answered from its text layer;
- born-digital, ocr: the same PDF with pdf_text=ocr (its pages rendered and OCR'd).

Also checks the order-free CER of each scanned page against its ground truth (bench.common.bag_cer).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import multirequest as mr
from bench.common import OCR_GT, bag_cer, load_manifest
from bench.launch import start_server

KINDS = ("receipt", "form", "document")
SETUPS = (("pool: 2 workers x 1 thread", 2, 1), ("1 worker x 1 thread", 1, 1), ("1 worker x 2 threads", 1, 2))


def scanned_pages(count: int) -> list[dict[str, Any]]:
    """English ground-truth pages of the document kinds, taken from each kind in turn."""
    rows = [row for row in load_manifest(OCR_GT) if row["kind"] in KINDS and row["lang"] == "en"]
    by_kind = {kind: [row for row in rows if row["kind"] == kind] for kind in KINDS}
    picked: list[dict[str, Any]] = []
    while len(picked) < count:
        for kind in KINDS:
            if by_kind[kind] and len(picked) < count:
                picked.append(by_kind[kind].pop(0))
    return picked


def _escape(text: str) -> bytes:
    clean = text.encode("latin-1", "replace").decode("latin-1")
    return clean.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)").encode("latin-1")


def text_pdf(pages: list[list[str]], tag: str) -> bytes:
    """Born-digital: each page's lines in Helvetica 11 pt on US Letter."""
    font = 3 + 2 * len(pages)
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b""]
    kids = []
    for lines in pages:
        first = len(objects) + 1
        shown = b" ".join(b"(%s) Tj 0 -14 Td" % _escape(line) for line in lines[:50])
        content = b"BT /F1 11 Tf 54 740 Td " + shown + b" ET"
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents %d 0 R"
            b" /Resources << /Font << /F1 %d 0 R >> >> >>" % (first + 1, font)
        )
        objects.append(b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream")
        kids.append(b"%d 0 R" % first)
    objects[1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (b" ".join(kids), len(kids))
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    return mr.write_pdf(objects, comment=tag.encode())


def read(url: str, pdf: bytes, **fields: str) -> tuple[float, dict[str, Any]]:
    started = time.perf_counter()
    response = requests.post(
        f"{url}/ocr_service", data={"file_type": "file", **fields}, files={"file": ("doc.pdf", pdf)}, timeout=1800
    )
    elapsed = time.perf_counter() - started
    response.raise_for_status()
    body = response.json()
    assert body["pages_failed"] == 0, body
    return elapsed, body


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pages", type=int, default=20)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--setups", default="2x1,1x1,1x2", help="workers x threads to run, comma-separated (1x1 is the baseline)"
    )
    args = parser.parse_args(argv)
    rows = scanned_pages(args.pages)
    jpegs = [mr.jpeg_page((OCR_GT / row["image"]).read_bytes()) for row in rows]
    texts = [row["lines"] for row in rows]
    results: list[dict[str, Any]] = []
    wanted = set(args.setups.split(","))
    setups = [setup for setup in SETUPS if f"{setup[1]}x{setup[2]}" in wanted]
    if not any(setup[1:] == (1, 1) for setup in setups):
        parser.error("--setups must include 1x1, the baseline")
    for label, workers, threads in setups:
        config = {
            "ocr": {"process": {"number": workers}, "predict_system": {"cpu_threads": threads}},
            "documents": {"max_pdf_pages": max(100, args.pages)},
        }
        server = start_server(config)
        try:
            row: dict[str, Any] = {"setup": label, "workers": workers, "threads": threads}
            for name, pdf, fields in (
                ("scanned", mr.jpeg_pdf(jpegs, f"{label}-scan"), {}),
                ("born-digital (text layer)", text_pdf(texts, f"{label}-layer"), {}),
                ("born-digital (pdf_text=ocr)", text_pdf(texts, f"{label}-ocr"), {"pdf_text": "ocr"}),
            ):
                elapsed, body = read(server.url, pdf, **fields)
                row[name] = {"seconds": round(elapsed, 2), "pages_per_s": round(args.pages / elapsed, 3)}
                if name == "scanned":
                    edits = chars = 0
                    for gt, page in zip(rows, body["pages"]):
                        e, c = bag_cer(gt["lines"], [line["text"] for line in page["text_lines"]])
                        edits, chars = edits + e, chars + c
                    row[name]["order_free_cer_pct"] = round(100 * edits / max(chars, 1), 2)
                print(label, name, row[name], flush=True)
            results.append(row)
        finally:
            server.stop()
    baseline = next(row for row in results if row["workers"] == row["threads"] == 1)
    print(f"\n{args.pages} pages per document; speed-up = pages/s against one worker x 1 thread\n")
    print(f"| setup | {' | '.join(name for name in results[0] if isinstance(results[0][name], dict))} |")
    for row in results:
        cells = []
        for name, figures in row.items():
            if isinstance(figures, dict):
                speedup = figures["pages_per_s"] / baseline[name]["pages_per_s"]
                cells.append(f"{figures['pages_per_s']:.2f} pages/s ({speedup:.2f}x)")
        print(f"| {row['setup']} | {' | '.join(cells)} |")
    if args.json is not None:
        args.json.write_text(json.dumps({"pages": args.pages, "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
