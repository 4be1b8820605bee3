"""Word gaps seen in the line image itself (pure functions).

A recogniser sometimes reads two words with no space between them although the image
shows a clear gap: "TEL : 03-7731" read "TEL:03-7731", "GST ID : 0020..." read "GSID:0020...".
It was not sure there: the gap's space probability is under one half but not small
(models.ctc.UNSURE_SPACE). Where, in addition, the two characters stand apart by a run of
blank columns much wider than the gaps between the letters of the line, the space is
written. Either cue alone is wrong too often: a wide blank run also lies beside a narrow
"1" or ":", and an unsure space inside a word ("identi fication").

The ink of a line crop is what differs from its background (the median grey of its edges)
by more than half the contrast of its darkest (or lightest, for light text) pixels; only the
crop's middle rows count, so that the descenders and ascenders of neighbouring lines caught
at its edges do not fill the gaps. A gap must be wider than _SPACE_OF_HEIGHT of the text's height
and _SPACE_OF_LETTER_GAP times the line's typical gap between letters: letter-spaced
capitals ("T O T A L") and monospaced digits keep their text.
"""

from __future__ import annotations

from itertools import pairwise
from typing import NamedTuple

import cv2
import numpy as np

from .det import border_grey

# Below this contrast (grey levels) the crop's ink cannot be told from its background: no
# spaces are added from it.
_MIN_CONTRAST = 48
# Rows of the crop looked at: its middle, where a line's own letters are.
_BAND = (0.2, 0.8)
# A word space is at least this share of the text's height wide (a typeset space is about
# 0.25 em, 0.35 of the capitals' height; most gaps between letters are under 0.15)...
_SPACE_OF_HEIGHT = 0.35
# ...and this many times the line's median gap between letters.
_SPACE_OF_LETTER_GAP = 2.5


class LineInk(NamedTuple):
    blank: np.ndarray  # per column of the crop: no ink in its middle rows
    text_height: int  # rows the text's ink spans


def line_ink(crop: np.ndarray) -> LineInk | None:
    """The blank columns and text height of a line crop, or None when its ink is too faint
    to tell from the background."""
    gray = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY) if crop.ndim == 3 else crop
    gray = gray.astype(np.int16)
    # The ground is what lines the crop's edges (detection leaves a margin round the text):
    # in a tight crop of heavy type the median pixel can be ink.
    background = border_grey(gray)
    dark, light = background - int(np.percentile(gray, 1)), int(np.percentile(gray, 99)) - background
    contrast = max(dark, light)
    if contrast < _MIN_CONTRAST:
        return None
    ink = (background - gray if dark >= light else gray - background) > contrast // 2
    rows = ink.sum(axis=1)
    text_rows = np.flatnonzero(rows >= max(1, 0.1 * rows.max()))
    if not len(text_rows):
        return None
    h = gray.shape[0]
    top, bottom = int(_BAND[0] * h), max(int(_BAND[1] * h), int(_BAND[0] * h) + 1)
    return LineInk(~ink[top:bottom].any(axis=0), int(text_rows[-1] - text_rows[0] + 1))


def widest_blank_run(blank: np.ndarray, start: int, end: int) -> int:
    """Columns in the longest run of blank columns within [start, end)."""
    segment = blank[max(0, start) : max(0, end)]
    if not segment.any():
        return 0
    padded = np.concatenate(([False], segment, [False])).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return int((edges[1::2] - edges[::2]).max())


def gap_spaces(centres: list[float], ink: LineInk) -> list[bool]:
    """For each pair of neighbouring characters (x of their centres, in crop columns, left to
    right), whether the blank gap between them is a word space."""
    gaps = [widest_blank_run(ink.blank, round(a), round(b)) for a, b in pairwise(centres)]
    if not gaps:
        return []
    letter_gap = float(np.median(gaps))
    least = max(_SPACE_OF_HEIGHT * ink.text_height, _SPACE_OF_LETTER_GAP * letter_gap, 2.0)
    return [gap >= least for gap in gaps]
