"""0/180 degree text-line orientation classifier (PP-OCR mobile v2 cls)."""

from __future__ import annotations

import math

import cv2
import numpy as np

from . import _upstream
from .sessions import Session

_SHAPE = (3, 48, 192)
_BATCH = 6
_THRESH = 0.9  # flip only when confident; false flips destroy a line


def resize_norm(img: np.ndarray, shape: tuple[int, int, int], width: int | None = None) -> np.ndarray:
    """Height-normalise to shape[1], keep aspect, right-pad to ``width`` (CHW, [-1, 1]).

    Shared by the classifier and the recogniser (same normalisation).
    """
    c, target_h, target_w = shape
    target_w = width or target_w
    h, w = img.shape[:2]
    resized_w = min(target_w, max(1, math.ceil(target_h * w / float(h))))
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
        out = [False] * len(crops)
        order = np.argsort([c.shape[1] / float(c.shape[0]) for c in crops])
        for start in range(0, len(crops), _BATCH):
            idx = order[start : start + _BATCH]
            batch = np.stack([resize_norm(crops[i], _SHAPE) for i in idx])
            for i, (label, score) in zip(idx, self.post(self.session.run(batch)[0])):
                out[i] = label == "180" and float(score) > _THRESH
        return out
