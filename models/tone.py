"""The print's tone before reading: light print on a dark ground turned to dark on light, and
faint print on a washed-out page given the full range of greys.

The PP-OCR models were trained mostly on dark print on a light ground, in good contrast:
- A dark-mode screenshot or a negative scan reads better turned. Only a flat ground is turned
  (most of the image one dark grey, as a page or a screen is): a photo's dark scene, a blue
  licence plate or a night sign is read as it is (turned, the shared set's scene photos read
  worse: 13.07 -> 15.37 % order-free CER).
- A faded receipt or a light scan, whose greys span less than half the range, reads better
  with them stretched over all of it (from its 0.5th to its 99.5th percentile).
Both are judged on every n-th pixel (~1 ms a page). See README "Light text on a dark ground"
and "Faint print".
"""

from __future__ import annotations

import cv2
import numpy as np

DARK_GROUND = 100  # the image's median grey below this: a dark ground
GROUND_SPREAD = 24  # grey levels either side of the median that count as the ground
FLAT_GROUND_SHARE = 0.8  # a flat ground: this share of the image within GROUND_SPREAD of it
# Greys spanning less than this (0.5th to 99.5th percentile) are stretched over 0-255; under
# MIN_SPAN they are left alone (a blank page's paper texture must not become print).
LOW_CONTRAST_SPAN = 128
MIN_SPAN = 32
_SAMPLE_SIDE = 512  # judged on every n-th pixel, about this many a side


def grey_counts(img: np.ndarray) -> np.ndarray:
    """How many of a sample of the image's pixels have each grey (256 counts)."""
    step = max(1, -(-max(img.shape[:2]) // _SAMPLE_SIDE))
    sample = np.ascontiguousarray(img[::step, ::step])  # every pixel counts as it is: no blur into the ground
    gray = cv2.cvtColor(sample, cv2.COLOR_BGR2GRAY) if sample.ndim == 3 else sample
    return np.bincount(gray.ravel(), minlength=256)


def _grey_at(cumulative: np.ndarray, share: float) -> int:
    """The grey at `share` of the way through the sample (its percentile)."""
    return int(np.searchsorted(cumulative, share * cumulative[-1]))


def on_dark_flat_ground(counts: np.ndarray) -> bool:
    """Whether an image (its grey_counts) is light print on a dark, flat ground."""
    median = _grey_at(np.cumsum(counts), 0.5)
    if median >= DARK_GROUND:
        return False
    ground = counts[max(0, median - GROUND_SPREAD) : median + GROUND_SPREAD + 1].sum()
    return bool(ground >= FLAT_GROUND_SHARE * counts.sum())


def faint_span(counts: np.ndarray) -> tuple[int, int] | None:
    """(low, high) greys to stretch over 0-255 when an image's greys span too little, else None."""
    cumulative = np.cumsum(counts)
    low, high = _grey_at(cumulative, 0.005), _grey_at(cumulative, 0.995)
    return (low, high) if MIN_SPAN <= high - low < LOW_CONTRAST_SPAN else None


def readable_tone(img: np.ndarray, invert_dark_ground: bool = True, stretch_faint: bool = True) -> np.ndarray:
    """The image to read: `img` itself, or a copy turned and/or stretched in one pass (same
    size: boxes found on it are the image's own)."""
    if not (invert_dark_ground or stretch_faint):
        return img
    counts = grey_counts(img)
    levels = np.arange(256, dtype=np.float32)  # each grey's new value
    turned = invert_dark_ground and on_dark_flat_ground(counts)
    if turned:
        levels, counts = 255.0 - levels, counts[::-1]
    span = faint_span(counts) if stretch_faint else None
    if span is not None:
        low, high = span
        levels = (levels - low) * (255.0 / (high - low))
    if not turned and span is None:
        return img
    return cv2.LUT(img, np.clip(levels, 0, 255).round().astype(np.uint8))
