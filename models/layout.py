"""Reading order of a page's text lines, columns included (pure functions).

Lines sorted top to bottom and left to right interleave a page set in two columns: the
first line of the left column, then the first of the right, and so on. A page is read
column by column instead where it is plainly set in columns: a clean vertical gap (no line
crosses it) at least half a line high wide, with at least _MIN_COLUMN_LINES lines of running
text on each side (a median line over _MIN_COLUMN_LENGTH line heights long) standing side
by side. Tables and receipts, whose columns hold short cells (a price, a quantity), keep
row by row order: a row of a table is read across. A title or footer across both columns
is read where it stands: the page is cut across at its widest clean horizontal gap first,
and each part is ordered the same way.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

_MIN_COLUMN_LINES = 3
_MIN_COLUMN_LENGTH = 8.0
# The gap between columns, in line heights (the detector's boxes include a margin round the
# text, so a typeset gutter of a line height or more comes out narrower).
_MIN_GUTTER = 0.5

Rects = np.ndarray  # (n, 4): x0, y0, x1, y1


def column_order(rects: Rects, rows: Callable[[list[int]], list[int]]) -> list[int]:
    """Indices of the lines (axis-aligned `rects`) in reading order; `rows(indices)` orders
    a part that is not in columns (top to bottom, left to right)."""
    if not len(rects):
        return []
    height = float(np.median(rects[:, 3] - rects[:, 1]))
    out: list[int] = []
    # An explicit stack, not recursion: a page cut across at many gaps must not reach
    # Python's recursion limit.
    stack = [list(range(len(rects)))]
    while stack:
        part = stack.pop()
        cut = None
        if may_have_columns(rects, part, height):
            cut = column_cut(rects, part, height) or band_cut(rects, part)
        if cut is None:
            out += rows(part)
        else:
            stack += [cut[1], cut[0]]  # the first part is read first
    return out


def may_have_columns(rects: Rects, idx: list[int], height: float) -> bool:
    """A cheap test that rules out most pages: columns of running text need at least two long
    lines on each side, and a long line entirely left of another."""
    long = [i for i in idx if rects[i, 2] - rects[i, 0] >= _MIN_COLUMN_LENGTH * height]
    if len(long) < 4:
        return False
    return float(rects[long, 2].min()) + _MIN_GUTTER * height <= float(rects[long, 0].max())


def clean_gaps(starts: np.ndarray, ends: np.ndarray) -> list[tuple[float, float]]:
    """(start, end) of every gap between intervals that none of them covers, in order."""
    order = np.argsort(starts)
    gaps: list[tuple[float, float]] = []
    reach = float(ends[order[0]])
    for i in order[1:]:
        if starts[i] > reach:
            gaps.append((reach, float(starts[i])))
        reach = max(reach, float(ends[i]))
    return gaps


def _text_column(rects: Rects, idx: list[int], height: float) -> bool:
    if len(idx) < _MIN_COLUMN_LINES:
        return False
    return float(np.median(rects[idx, 2] - rects[idx, 0])) >= _MIN_COLUMN_LENGTH * height


def _side_by_side(rects: Rects, left: list[int], right: list[int]) -> bool:
    """The two sides share most of their height (columns, not a staircase of blocks)."""
    top = max(rects[left, 1].min(), rects[right, 1].min())
    bottom = min(rects[left, 3].max(), rects[right, 3].max())
    shorter = min(np.ptp(rects[left][:, [1, 3]]), np.ptp(rects[right][:, [1, 3]]))
    return bottom - top >= 0.5 * shorter


def column_cut(rects: Rects, idx: list[int], height: float) -> tuple[list[int], list[int]] | None:
    """The lines left and right of the widest clean vertical gap (at least _MIN_GUTTER line
    heights wide) with running text on both sides, or None."""
    gaps = [g for g in clean_gaps(rects[idx, 0], rects[idx, 2]) if g[1] - g[0] >= _MIN_GUTTER * height]
    for start, end in sorted(gaps, key=lambda g: g[0] - g[1]):
        middle = (start + end) / 2
        left = [i for i in idx if rects[i, 2] <= middle]
        right = [i for i in idx if rects[i, 0] >= middle]
        if (
            _text_column(rects, left, height)
            and _text_column(rects, right, height)
            and _side_by_side(rects, left, right)
        ):
            return left, right
    return None


def band_cut(rects: Rects, idx: list[int]) -> tuple[list[int], list[int]] | None:
    """The lines above and below the widest clean horizontal gap, or None."""
    gaps = clean_gaps(rects[idx, 1], rects[idx, 3])
    if not gaps:
        return None
    start, end = max(gaps, key=lambda g: g[1] - g[0])
    middle = (start + end) / 2
    return [i for i in idx if rects[i, 3] <= middle], [i for i in idx if rects[i, 1] >= middle]
