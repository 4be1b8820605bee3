"""0/180 degree text-line orientation classifier (PP-OCR mobile v2 cls)."""

from __future__ import annotations

import math

import cv2
import numpy as np

from . import _upstream
from .det import PAGE_MIN_LINES, line_length
from .sessions import Session

_SHAPE = (3, 48, 192)
_BATCH = 6
_THRESH = 0.9  # flip only when confident; false flips destroy a line


def resized_width(img: np.ndarray, target_h: int, target_w: int) -> int:
    """Columns `img` takes in an input `target_h` high and `target_w` wide: its aspect kept,
    squeezed only when longer than the input."""
    h, w = img.shape[:2]
    return min(target_w, max(1, math.ceil(target_h * w / float(h))))


def resize_norm(img: np.ndarray, shape: tuple[int, int, int], width: int | None = None) -> np.ndarray:
    """Height-normalise to shape[1], keep aspect, right-pad to ``width`` (CHW, [-1, 1]).

    Shared by the classifier and the recogniser (same normalisation).
    """
    c, target_h, target_w = shape
    target_w = width or target_w
    resized_w = resized_width(img, target_h, target_w)
    resized = cv2.resize(img, (resized_w, target_h)).astype(np.float32)
    resized = resized.transpose((2, 0, 1)) / 127.5 - 1.0
    out = np.zeros((c, target_h, target_w), dtype=np.float32)
    out[:, :, :resized_w] = resized
    return out


class TextClassifier:
    def __init__(self, session: Session) -> None:
        self.session = session
        self.post = _upstream.cls_utils().ClsPostProcess(["0", "180"])

    def __call__(self, crops: list[np.ndarray]) -> list[bool]:
        """Flag crops that look upside down (the caller decides what to do)."""
        return flip_suspects(self.upside_down(crops))

    def upside_down(self, crops: list[np.ndarray]) -> list[float]:
        """Each crop's probability of being upside down."""
        out = [0.0] * len(crops)
        order = np.argsort([c.shape[1] / float(c.shape[0]) for c in crops])
        for start in range(0, len(crops), _BATCH):
            idx = order[start : start + _BATCH]
            batch = np.stack([resize_norm(crops[i], _SHAPE) for i in idx])
            for i, (label, score) in zip(idx, self.post(self.session.run(batch)[0])):
                out[i] = float(score) if label == "180" else 1.0 - float(score)
        return out


def flip_suspects(upside_down: list[float]) -> list[bool]:
    """Lines the classifier is confident are upside down (read both ways by the caller)."""
    return [p > _THRESH for p in upside_down]


def page_upside_down(upside_down: list[float], crops: list[np.ndarray]) -> bool:
    """Whether a page's lines, taken together, are upside down (a page scanned upside down).

    Each line's probability counts by its length in line heights: long lines are the ones
    the classifier judges well, and one line alone does not decide a page.
    """
    if len(upside_down) < PAGE_MIN_LINES:
        return False
    weights = np.array([line_length(c) for c in crops], dtype=np.float64)
    return float(np.dot(weights, upside_down) / weights.sum()) > 0.5
