"""Small print on large images: what detection's closer look (`det_look_closer`) reads.

The shared set holds no image whose text is too small for the detection size, so this
benchmark renders its own (Pillow's built-in font, random words, the ground truth known):

- `page-N`: a 2400 x 3200 page (an A4 scan at ~290 DPI) filled with N px print, shrunk to
  0.4 for detection;
- `screen-N`: a 3840 x 2160 screenshot (4K at 100 %) of N px interface text: a menu bar, a
  side list, a text panel and a status bar, shrunk to 0.33;
- `block-N`: a 3200 x 1000 page with a heading, a page number and a block of N px print.

For each image, the engine with the closer look off and on, one after the other in the same
process: order-free CER, English word F1, lines, seconds, and the process's peak RSS.

    python bench/fine_print.py [--engine openvino] [--model PP-OCRv6-small] [--cases page-8,screen-12]
"""

from __future__ import annotations

import argparse
import io
import random
import resource
import sys
import time
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.common import bag_cer, f1, word_counts
from models import EngineOptions, create_engine

WORDS = [
    *("invoice", "total", "amount", "payment", "account", "number", "customer", "address", "delivery"),
    *("order", "quantity", "price", "balance", "reference", "statement", "period", "interest", "charge"),
    *("service", "contract", "file", "edit", "view", "window", "help", "settings", "network", "display"),
    *("project", "build", "debug", "terminal", "search", "source", "control", "output"),
]
DEFAULT_CASES = "page-8,page-10,page-12,screen-11,screen-12,screen-13,block-11,block-12"


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def page(size: int, rng: random.Random) -> tuple[bytes, list[str]]:
    image = Image.new("RGB", (2400, 3200), "white")
    draw, font = ImageDraw.Draw(image), ImageFont.load_default(size=size)
    lines, y = [], 100
    while y < 3100 - size:
        line = " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14)))
        draw.text((100, y), line, fill="black", font=font)
        lines.append(line)
        y += round(size * 1.5)
    return _png(image), lines


def screen(size: int, rng: random.Random) -> tuple[bytes, list[str]]:
    image = Image.new("RGB", (3840, 2160), (246, 246, 246))
    draw, font = ImageDraw.Draw(image), ImageFont.load_default(size=size)
    lines = []
    for i, word in enumerate(rng.sample(WORDS, 8)):
        draw.text((20 + i * size * 8, 10), word.capitalize(), fill=(30, 30, 30), font=font)
        lines.append(word.capitalize())
    for i in range(60):
        line = " ".join(rng.choice(WORDS) for _ in range(2))
        draw.text((30, 80 + i * round(size * 1.8)), line, fill=(40, 40, 40), font=font)
        lines.append(line)
    for i in range(70):
        line = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12)))
        draw.text((700, 80 + i * round(size * 1.6)), line, fill=(20, 20, 20), font=font)
        lines.append(line)
    status = "Ln 42, Col 7 Spaces: 4 UTF-8 Python"
    draw.text((3240, 2120), status, fill=(0, 0, 0), font=font)
    return _png(image), [*lines, status]


def block(size: int, rng: random.Random) -> tuple[bytes, list[str]]:
    image = Image.new("RGB", (3200, 1000), "white")
    draw, font = ImageDraw.Draw(image), ImageFont.load_default(size=size)
    draw.text((60, 40), "Terms of sale", fill="black", font=ImageFont.load_default(size=64))
    draw.text((2780, 900), "Page 2 of 2", fill="black", font=ImageFont.load_default(size=48))
    lines = [" ".join(rng.choice(WORDS) for _ in range(8)) for _ in range(24)]
    for i, line in enumerate(lines):
        draw.text((900, 300 + round(size * 1.5) * i), line, fill="black", font=font)
    return _png(image), ["Terms of sale", *lines, "Page 2 of 2"]


MAKERS = {"page": page, "screen": screen, "block": block}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", default="openvino", choices=["openvino", "onnxruntime", "paddle"])
    ap.add_argument("--model", default=None, help="model family (default: the engine's default)")
    ap.add_argument("--cases", default=DEFAULT_CASES)
    args = ap.parse_args(argv)
    family = {"model": args.model} if args.model else {}
    engines = {
        on: create_engine(EngineOptions(engine=args.engine, det_look_closer=on, **family)) for on in (False, True)
    }
    print("| image | closer look | order-free CER % | English word F1 | lines read / written | seconds | peak RSS so far, MB |")
    print("|---|---|---|---|---|---|---|")
    for case in args.cases.split(","):
        kind, size = case.rsplit("-", 1)
        data, truth = MAKERS[kind](int(size), random.Random(case))
        for on, engine in engines.items():
            started = time.perf_counter()
            lines = [line["text"] for line in engine.recognize(data)["text_lines"]]
            seconds = time.perf_counter() - started
            errors, chars = bag_cer(truth, lines)
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(
                f"| {case} | {'on' if on else 'off'} | {100 * errors / chars:.1f} | {f1(*word_counts(truth, lines)):.3f}"
                f" | {len(lines)} / {len(truth)} | {seconds:.1f} | {peak:.0f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
