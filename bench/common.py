"""Shared helpers for benchmarks and tests: data location, text normalisation, CER.

Kept free of any ``models`` import so tests and bench scripts can use it
without loading an engine.
"""

from __future__ import annotations

import json
import re
import sys
import time
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
OCR_GT = SHARED / "data" / "ocr-gt"
LOAD_DIR = SHARED / "data" / "load"

# CJK / typographic punctuation that NFKC leaves alone but that OCR output and
# hand-typed ground truth spell inconsistently.
_PUNCT = str.maketrans(
    {
        "。": ".",
        "、": ",",
        "‘": "'",
        "’": "'",
        "‚": "'",
        "‛": "'",
        "`": "'",
        "´": "'",
        "“": '"',
        "”": '"',
        "„": '"',
        "「": '"',
        "」": '"',
        "『": '"',
        "』": '"',
        "【": "[",
        "】": "]",
        "《": "<",
        "》": ">",
        "〈": "<",
        "〉": ">",
        "–": "-",
        "—": "-",
        "−": "-",
        "‐": "-",
        "·": ".",
        "•": ".",
    }
)
_WS = re.compile(r"\s+")


def rss_mb() -> float:
    """This process's resident memory in MB (Linux), for benchmarks that report it."""
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def run_peer_images(root: Path, images: list[str], read: Callable[[bytes], list[str]]) -> None:
    """A peer script's loop: each image timed from its bytes to its lines; JSON on stdout."""
    out = {}
    for name in images:
        data = (root / name).read_bytes()
        t0 = time.perf_counter()
        try:
            lines = read(data)
        except Exception as exc:  # noqa: BLE001 - the peer failing on one image is a result, not a crash
            lines = [f"<{type(exc).__name__}>"]
        out[name] = {"lines": lines, "ms": (time.perf_counter() - t0) * 1000}
    json.dump({"images": out, "rss_mb": rss_mb()}, sys.stdout, ensure_ascii=False)


def normalize_line(text: str, casefold: bool = False) -> str:
    """NFKC (full-width -> half-width), unify punctuation, fold whitespace."""
    text = unicodedata.normalize("NFKC", text).translate(_PUNCT)
    text = _WS.sub(" ", text).strip()
    return text.casefold() if casefold else text


def normalize_lines(lines: Iterable[str], casefold: bool = False) -> str:
    """Order-independent page text: normalised non-empty lines, sorted, '\\n'-joined.

    Sorting removes reading-order disagreements between detector and ground
    truth; line *splits* that differ still cost a few characters.
    ``casefold`` is for ground truth typed in capitals (SROIE receipts).
    """
    return "\n".join(sorted(n for n in (normalize_line(x, casefold) for x in lines) if n))


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (unit costs), O(len(a)*len(b)) time, O(len(b)) memory."""
    if a == b:
        return 0
    if len(a) < len(b):
        a, b = b, a
    if not b:
        return len(a)
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def cer(reference: str, hypothesis: str) -> float:
    """Character error rate = edits / len(reference); empty reference: 0 or 1."""
    if not reference:
        return 0.0 if not hypothesis else 1.0
    return edit_distance(reference, hypothesis) / len(reference)


def page_cer(gt_lines: Iterable[str], ocr_lines: Iterable[str], casefold: bool = False) -> tuple[int, int]:
    """(edits, reference chars) after normalisation, for micro-averaging."""
    ref, hyp = normalize_lines(gt_lines, casefold), normalize_lines(ocr_lines, casefold)
    return edit_distance(ref, hyp), len(ref)


def bag_cer(gt_lines: Iterable[str], ocr_lines: Iterable[str], partial_gt: bool = False) -> tuple[int, int]:
    """Order-free error: multiset difference of characters (case and whitespace ignored).

    Reading order, line splits and word spaces cost nothing (word F1 judges spacing),
    so this is the error a reader of the extracted characters sees. A lower bound
    of the edit distance. `partial_gt`: the ground truth leaves some of the image's text
    out (ICDAR 2015's `###` regions), so characters read beyond it cannot be judged and
    only ground-truth characters missing from the reading count (a misread one is missing).
    """

    def chars(lines: Iterable[str]) -> Counter:
        return Counter("".join(normalize_line(x, True) for x in lines).replace(" ", ""))

    ref, hyp = chars(gt_lines), chars(ocr_lines)
    missing, extra = sum((ref - hyp).values()), sum((hyp - ref).values())
    return missing if partial_gt else max(missing, extra), sum(ref.values())


_WORD_EDGE = re.compile(r"^[^\w]+|[^\w]+$")


# Hyphens and colons also separate words: the FUNSD transcriptions write a phone number as
# "212- 450- 4000" and a label as "No: 12", where the image (and a correct reading) has
# "212-450-4000" and "No:12". Glued words ("TAXINVOICE") still match nothing.
_LOOSE_SEPARATORS = re.compile(r"[\s:\-]+")


# Every punctuation mark separates words too: also forgives FUNSD's "Acceptance/ Merchandising"
# and "P. O. S." for the page's "Acceptance/Merchandising" and "P.O.S."; glued words still
# match nothing.
_PUNCT_SEPARATORS = re.compile(r"[^\w]+")


def words(lines: Iterable[str], loose: bool = False, punct: bool = False) -> Counter:
    """Bag of case-folded words, punctuation trimmed from their ends (``loose``: split at
    hyphens and colons too; ``punct``: at every punctuation mark)."""
    out: Counter = Counter()
    splitter = _PUNCT_SEPARATORS if punct else _LOOSE_SEPARATORS if loose else None
    for line in lines:
        text = normalize_line(line, casefold=True)
        for token in splitter.split(text) if splitter else text.split(" "):
            token = _WORD_EDGE.sub("", token)
            if token:
                out[token] += 1
    return out


def word_counts(
    gt_lines: Iterable[str], ocr_lines: Iterable[str], loose: bool = False, punct: bool = False
) -> tuple[int, int, int]:
    """(matched, reference words, hypothesis words) for a micro-averaged bag-of-words F1.

    Words glued together ("TAXINVOICE") or split apart match nothing, which is how a
    search index or a field extractor would see them."""
    ref, hyp = words(gt_lines, loose, punct), words(ocr_lines, loose, punct)
    return sum((ref & hyp).values()), sum(ref.values()), sum(hyp.values())


def f1(matched: int, ref: int, hyp: int) -> float:
    return 2 * matched / (ref + hyp) if ref + hyp else 1.0


def load_manifest(root: Path = OCR_GT) -> list[dict]:
    with open(root / "manifest.jsonl", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def load_files(root: Path = LOAD_DIR) -> list[dict]:
    with open(root / "load_manifest.jsonl", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]
