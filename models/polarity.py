"""Light text on a dark, flat ground is read as dark text on a light one.

A dark-mode screenshot or a negative scan: the PP-OCR models, trained mostly on print, read
its text better turned to dark on light. Only a flat ground is turned (most of the image one
dark grey, as a page or a screen is): a photo's dark scene, a blue licence plate or a night
sign is read as it is (turned, the shared set's scene photos read worse: 13.07 -> 15.37 %
order-free CER). See README "Light text on a dark ground".
"""

from __future__ import annotations

import cv2
import numpy as np

DARK_GROUND = 100  # the image's median grey below this: a dark ground
GROUND_SPREAD = 24  # grey levels either side of the median that count as the ground
FLAT_GROUND_SHARE = 0.8  # a flat ground: this share of the image within GROUND_SPREAD of it
_SAMPLE_SIDE = 512  # judged on every n-th pixel, about this many a side (a 35 MP scan: ~1 ms)


def on_dark_flat_ground(img: np.ndarray) -> bool:
    """Whether a BGR image is light print on a dark, flat ground."""
    step = max(1, -(-max(img.shape[:2]) // _SAMPLE_SIDE))
    sample = np.ascontiguousarray(img[::step, ::step])  # every pixel counts as it is: no blur into the ground
    gray = cv2.cvtColor(sample, cv2.COLOR_BGR2GRAY) if sample.ndim == 3 else sample
    counts = np.bincount(gray.ravel(), minlength=256)
    median = int(np.searchsorted(np.cumsum(counts), (gray.size + 1) // 2))
    if median >= DARK_GROUND:
        return False
    ground = counts[max(0, median - GROUND_SPREAD) : median + GROUND_SPREAD + 1].sum()
    return bool(ground >= FLAT_GROUND_SHARE * gray.size)
