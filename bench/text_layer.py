"""A PDF page's text layer (models.pdf.text_layer): time, and the same lines as PDFium's text by rectangle.

    python bench/text_layer.py [--big-lines 3000] [--old-big] [PDF ...]

Times text_layer on built pages (tests/pdf_builder.py: a typical page of 90 lines of ~115
characters, a dense page of --big-lines short text objects) and on every page of the PDFs
given, against `by_rect`, the earlier algorithm kept here as the reference: for each text
rectangle, PDFium's FPDFText_GetBoundedText, which scans every character of the page per
rectangle (quadratic; --old-big times it on the dense page too, ~17 s for 3000 lines).

Then compares the two answers line by line (text and box) on the built PDFs and the PDFs
given, and prints each kind of difference with examples.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.pdf import (
    MIN_GOOD_CHAR_SHARE,
    MIN_LAYER_CHARS,
    RenderLimits,
    _good_char,
    layer_lines,
    open_pdf,
    rendered_size,
    text_layer,
)
from tests.pdf_builder import garbled_first_page_pdf, password_pdf, text_pdf

LOREM = "lorem ipsum dolor sit amet, consectetur adipiscing elit (sed do) eiusmod tempor incididunt ut labore "


def by_rect(page: Any, size: tuple[int, int]) -> tuple[list[dict[str, Any]], bool]:
    """The earlier text_layer: each rectangle's text by FPDFText_GetBoundedText (the reference)."""
    textpage = page.get_textpage()
    try:
        if textpage.count_chars() <= 0:
            return [], False
        rects = [textpage.get_rect(index) for index in range(textpage.count_rects())]
        lines, texts = layer_lines(page, size, ((rect, textpage.get_text_bounded(*rect)) for rect in rects))
        return lines, old_has_real_text(" ".join(texts))
    finally:
        textpage.close()


def old_has_real_text(text: str) -> bool:
    """The earlier has_real_text (one Python call per character), for the earlier timing."""
    visible = [c for c in text if not c.isspace()]
    if len(visible) < MIN_LAYER_CHARS:
        return False
    return sum(map(_good_char, visible)) >= MIN_GOOD_CHAR_SHARE * len(visible)


def page_lines(count: int, width: int = 115, start: int = 0) -> list[str]:
    return [f"line {start + i:05d} " + (LOREM * 3)[: width - 11] for i in range(count)]


def built_pdfs(big_lines: int) -> dict[str, tuple[bytes, str | None]]:
    """Name -> (PDF bytes, password) of the builder's PDFs (a name ending in "/Rotate 90":
    each page turned by PDFium before it is read)."""
    pages = [page_lines(40, 60, 100 * i) for i in range(4)]
    return {
        "text_pdf 4 pages": (text_pdf(pages, font_size=10), None),
        "text_pdf typical (90 lines, 4 pt)": (text_pdf([page_lines(90)], font_size=4), None),
        "text_pdf rotated media boxes": (
            text_pdf(pages, font_size=10, media_boxes={1: (792, 612), 2: (300, 900)}),
            None,
        ),
        "text_pdf short cells (font 1)": (text_pdf([[f"c{i}" for i in range(2000)]], font_size=1), None),
        f"text_pdf {big_lines} lines (font 1)": (text_pdf([page_lines(big_lines)], font_size=1), None),
        "text_pdf 4 pages /Rotate 90": (text_pdf(pages, font_size=10), None),
        "password_pdf": (password_pdf(pages[:2], "secret"), "secret"),
        "garbled_first_page_pdf": (garbled_first_page_pdf(pages[:2]), None),
    }


def each_page(data: bytes, password: str | None, rotate: int = 0):
    document = open_pdf(data, password)
    try:
        for index in range(len(document)):
            try:
                page = document[index]
            except Exception as exc:  # noqa: BLE001 - a page PDFium refuses: skipped, said
                print(f"    page {index + 1}: cannot be loaded ({exc})")
                continue
            try:
                if rotate:
                    page.set_rotation(rotate)
                yield index, page, rendered_size(page, RenderLimits())
            finally:
                page.close()
    finally:
        document.close()


def timed(function: Any, page: Any, size: tuple[int, int], repeat: int = 1) -> tuple[Any, float]:
    best = float("inf")
    for _ in range(repeat):
        began = time.perf_counter()
        result = function(page, size)
        best = min(best, time.perf_counter() - began)
    return result, best


def kind_of(old: str, new: str) -> str:
    if " ".join(old.split()) == " ".join(new.split()):
        return "whitespace only"
    if new in old:
        return "old has more (new is part of old)"
    if old in new:
        return "new has more (old is part of new)"
    return "other"


def compare(name: str, data: bytes, password: str | None, skip_old_over: int, stats: dict[str, Any]) -> None:
    old_total = new_total = 0.0
    old_skipped = False
    rotate = 90 if name.endswith("/Rotate 90") else 0
    for index, page, size in each_page(data, password, rotate):
        chars = page.get_textpage()
        count = chars.count_chars()
        chars.close()
        (new_lines, new_real), new_time = timed(text_layer, page, size, 3)
        new_total += new_time
        if count > skip_old_over:
            print(f"    page {index + 1}: {count} chars, new {new_time * 1000:.1f} ms (old not run)")
            old_skipped = True
            continue
        (old_lines, old_real), old_time = timed(by_rect, page, size, 3 if count <= 20_000 else 1)
        old_total += old_time
        stats["pages"] += 1
        stats["real_differs"] += old_real != new_real
        old_by_box: dict[tuple, list[str]] = defaultdict(list)
        new_by_box: dict[tuple, list[str]] = defaultdict(list)
        for line in old_lines:
            old_by_box[str(line["box"])].append(line["text"])
        for line in new_lines:
            new_by_box[str(line["box"])].append(line["text"])
        stats["old_lines"] += len(old_lines)
        stats["new_lines"] += len(new_lines)
        for box in old_by_box.keys() | new_by_box.keys():
            olds, news = old_by_box.get(box, []), new_by_box.get(box, [])
            for old, new in zip(olds, news):
                if old == new:
                    stats["same"] += 1
                    continue
                kind = kind_of(old, new)
                stats["kinds"][kind] += 1
                if len(stats["examples"][kind]) < 6:
                    stats["examples"][kind].append((name, index + 1, box, old, new))
            for old in olds[len(news) :]:
                stats["kinds"]["only old"] += 1
                if len(stats["examples"]["only old"]) < 6:
                    stats["examples"]["only old"].append((name, index + 1, box, old, None))
            for new in news[len(olds) :]:
                stats["kinds"]["only new"] += 1
                if len(stats["examples"]["only new"]) < 6:
                    stats["examples"]["only new"].append((name, index + 1, box, None, new))
        if old_lines and [line["text"] for line in old_lines] != [line["text"] for line in new_lines]:
            stats["pages_differ"] += 1
    old = "not run on every page" if old_skipped else f"{old_total * 1000:.1f} ms"
    print(
        f"  {name}: old {old}, new {new_total * 1000:.1f} ms (all pages; each page the best of 3 runs but a long old one)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pdfs", nargs="*", type=Path)
    parser.add_argument("--big-lines", type=int, default=3000)
    parser.add_argument("--old-big", action="store_true", help="also run the old algorithm on the dense page")
    args = parser.parse_args()
    skip_old_over = 10**9 if args.old_big else 100_000
    stats: dict[str, Any] = {
        "pages": 0,
        "same": 0,
        "old_lines": 0,
        "new_lines": 0,
        "pages_differ": 0,
        "real_differs": 0,
        "kinds": Counter(),
        "examples": defaultdict(list),
    }
    print("built PDFs:")
    for name, (data, password) in built_pdfs(args.big_lines).items():
        compare(name, data, password, skip_old_over, stats)
    if args.pdfs:
        print("PDFs given:")
    for path in args.pdfs:
        compare(str(path), path.read_bytes(), None, skip_old_over, stats)
    print(
        f"\n{stats['pages']} pages compared: old {stats['old_lines']} lines, new {stats['new_lines']} lines, "
        f"{stats['same']} the same; pages whose line texts differ: {stats['pages_differ']}; "
        f"has_real_text differs on {stats['real_differs']} pages"
    )
    for kind, count in stats["kinds"].most_common():
        print(f"  {kind}: {count}")
        for name, page, box, old, new in stats["examples"][kind]:
            print(f"    {Path(name).name} p{page} {box}\n      old: {old!r}\n      new: {new!r}")


if __name__ == "__main__":
    main()
