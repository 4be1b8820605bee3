"""DB text detection: image -> quadrilaterals in original pixel coordinates."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import cv2
import numpy as np

from . import _upstream
from .families import DetDefaults
from .layout import column_order
from .sessions import Session

# The DB net wants sides that are multiples of 32 and sees too little context
# on very flat inputs; such images get letterboxed before detection.
_MIN_SIDE = 32
_MAX_ASPECT = 8.0


# Normalisation of the detector input (RGB-order constants applied to BGR pixels, as
# PaddleOCR does): every PP-OCR DB detector was trained with ImageNet statistics.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def detection_scale(h: int, w: int, max_side: int, min_side: int) -> float:
    """Scale for the detector input: shrink so the longest side fits ``max_side``;
    enlarge small images until the shortest side reaches ``min_side`` (never past
    ``max_side``). ``min_side=0`` never enlarges."""
    scale = min(1.0, max_side / max(h, w))
    if min_side and min(h, w) * scale < min_side:
        scale = min(min_side / min(h, w), max_side / max(h, w))
    return scale


def resize_for_detection(img: np.ndarray, scale: float) -> np.ndarray:
    """Resize by ``scale`` to sides that are multiples of 32 (the DB net's stride)."""
    h, w = img.shape[:2]
    new_h = max(32, round(h * scale / 32) * 32)
    new_w = max(32, round(w * scale / 32) * 32)
    if (new_h, new_w) == (h, w):
        return img
    shrinking = new_h * new_w < h * w
    return cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def normalize_for_detection(img: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """HWC uint8 -> NCHW float32, (x/255 - mean) / std.

    Written plane by plane into the output: the same float32 operations in the same order
    (identical values) as normalising the HWC image and transposing it, without four
    intermediate images and a strided copy (a 1280 x 960 page: 38 -> 5 ms).
    """
    h, w, channels = img.shape
    out = np.empty((1, channels, h, w), dtype=np.float32)
    scale = np.float32(1.0 / 255.0)
    for c in range(channels):
        plane = out[0, c]
        np.multiply(img[:, :, c], scale, out=plane, dtype=np.float32)
        plane -= np.float32(mean[c])
        plane /= np.float32(std[c])
    return out


class TextDetector:
    def __init__(
        self,
        session: Session,
        settings: DetDefaults,
        max_side: int,
        min_side: int = 0,
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
        rescue_low_score: bool = False,
        look_closer: bool = False,
    ) -> None:
        du = _upstream.det_utils()
        self.session = session
        self.max_side = max_side
        self.min_side = min_side
        self.thresh = settings.thresh
        self.look_closer = look_closer
        self.mean, self.std = mean, std

        def db_pass(thresh: float, box_thresh: float) -> Any:
            return du.DBPostProcess(
                thresh=thresh,
                box_thresh=box_thresh,
                max_candidates=settings.max_candidates,
                unclip_ratio=settings.unclip_ratio,
                score_mode="fast",
                use_dilation=settings.use_dilation,
            )

        self.post = db_pass(settings.thresh, settings.box_thresh)
        # A second look at what the first pass left, stricter on both counts: pixels halfway
        # from the pixel threshold to the box threshold (which splits a label from a faint
        # line it touches), regions halfway from the box threshold to certainty (a part
        # kept must be plainly text, not a fragment of the line or of a stamp).
        self.rescue = (
            db_pass((settings.thresh + settings.box_thresh) / 2, (settings.box_thresh + 1.0) / 2)
            if rescue_low_score
            else None
        )

    def __call__(self, img: np.ndarray) -> list[np.ndarray]:
        """Return float32 (4, 2) boxes, clockwise from top-left."""
        h, w = img.shape[:2]
        spans = detection_tiles(h, w, self.max_side)
        if spans:
            tall = h > w
            found = []
            for start, end in spans:
                tile = img[start:end] if tall else img[:, start:end]
                offset = np.array([0, start] if tall else [start, 0], dtype=np.float32)
                found.append([box + offset for box in self._detect_whole(tile)])
            return merge_tile_boxes(found)
        return self._detect_whole(img)

    def _detect_whole(self, img: np.ndarray) -> list[np.ndarray]:
        """Boxes in `img`'s pixels, found on the whole image at once."""
        h, w = img.shape[:2]
        scale = detection_scale(h, w, self.max_side, self.min_side)
        if scale < 1.0 and not _needs_letterbox(h, w):
            resized = resize_for_detection(img, scale)
            region = content_region(resized, (h, w))
            if region is not None:
                # Only part of the image is content (a receipt on a scanner's glass):
                # detect on that part, shrunk less or not at all.
                x0, y0, x1, y1 = region
                offset = np.array([x0, y0], dtype=np.float32)
                return [box + offset for box in self._detect_closely(img[y0:y1, x0:x1])]
            return self._detect_closely(img, resized)
        return self._detect(img)[0]

    def _detect_closely(self, img: np.ndarray, resized: np.ndarray | None = None) -> list[np.ndarray]:
        """Boxes in `img`'s pixels, looking again at CLOSER_ZOOM times the scale where the
        shrunk image's text map shows text that no box explains: lines too small for that
        scale run together into blobs the post-processing rejects (a page of 8 px print
        shrunk to 0.4 gave no box at all), and only more pixels separate them."""
        scale = detection_scale(*img.shape[:2], self.max_side, self.min_side)
        boxes, unseen = self._detect(img, resized, find_unseen=self.look_closer and scale < 1.0)
        h, w = img.shape[:2]
        if sum((x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in unseen) > WHOLE_SHARE * h * w:
            # A page of unresolved print: its text map is a smear that may not even lie
            # over the ink, so the whole image is looked at.
            unseen = [(0, 0, w, h)]
        found: list[np.ndarray] = []
        for x0, y0, x1, y1 in unseen:
            offset = np.array([x0, y0], dtype=np.float32)
            for box in self._detect_at(img[y0:y1, x0:x1], min(1.0, CLOSER_ZOOM * scale)):
                if not cut_by_part_edge(box, (x0, y0, x1, y1), (h, w)):  # the first pass's box stands for it
                    found.append(box + offset)
        if not found:
            return boxes
        # Where the closer look found text, it decides: a first-pass box over the same text
        # (often two lines run together) gives way.
        stale = same_text(_rects(boxes), _rects(found)).any(axis=1)
        return [box for box, gone in zip(boxes, stale) if not gone] + found

    def _detect_at(self, img: np.ndarray, scale: float) -> list[np.ndarray]:
        """Boxes in `img`'s pixels found at `scale`, in strips across its long side when that
        is over the detector's limit there (so no input is much larger than a whole page's)."""
        h, w = img.shape[:2]
        long = max(h, w)
        if long * scale <= self.max_side:
            return self._detect(img, scale=scale)[0]
        tall = h >= w
        length = max(_MIN_SIDE, int(self.max_side / scale))
        overlap = min(length // 2, round(STRIP_OVERLAP / scale))
        found = []
        for start, end in even_spans(long, length, overlap):
            strip = img[start:end] if tall else img[:, start:end]
            offset = np.array([0, start] if tall else [start, 0], dtype=np.float32)
            found.append([box + offset for box in self._detect(strip, scale=scale)[0]])
        return merge_tile_boxes(found)

    def _detect(
        self,
        img: np.ndarray,
        resized: np.ndarray | None = None,
        scale: float | None = None,
        find_unseen: bool = False,
    ) -> tuple[list[np.ndarray], list[tuple[int, int, int, int]]]:
        """Boxes in `img`'s pixels (`resized`: img already resized for detection; `scale`:
        the detection scale, else chosen from the image's size) and, with `find_unseen`, the
        parts of `img` where the text map shows text outside them (see unseen_text)."""
        h, w = img.shape[:2]
        if scale is None:
            scale = detection_scale(h, w, self.max_side, self.min_side)
        shrink = 1.0
        src = img
        if _needs_letterbox(h, w) and scale < 1.0:
            # Shrink *before* padding: letterboxing a 20000x8 strip at full
            # size would allocate a 20000x2500 canvas.
            shrink, scale = scale, 1.0
            size = (max(1, round(w * shrink)), max(1, round(h * shrink)))
            src = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
        padded, (top, left) = _letterbox(src)
        ph, pw = padded.shape[:2]
        if resized is None or padded is not img:
            resized = resize_for_detection(padded, scale)
        pred = self.session.run(normalize_for_detection(resized, self.mean, self.std))[0]
        boxes, _scores = self.post(pred, (ph, pw))
        if self.rescue is not None:
            boxes = [*boxes, *self.rescue(outside_boxes(pred, boxes, (ph, pw)), (ph, pw))[0]]
        unseen = []
        if find_unseen and padded is img:  # a letterboxed image's map is not in its pixels
            unseen = unseen_text(pred, [np.asarray(box, dtype=np.float32) for box in boxes], (h, w), self.thresh)
        out: list[np.ndarray] = []
        for box in boxes:
            b = _order_clockwise(np.asarray(box, dtype=np.float32))
            b[:, 0] = np.clip((b[:, 0] - left) / shrink, 0, w - 1)
            b[:, 1] = np.clip((b[:, 1] - top) / shrink, 0, h - 1)
            if np.linalg.norm(b[0] - b[1]) <= 3 or np.linalg.norm(b[0] - b[3]) <= 3:
                continue  # slivers left after clipping to the real image
            out.append(b)
        return out, unseen


# The closer look (TextDetector._detect_closely): twice the first pass's scale (at most the
# image's own pixels), when at least UNSEEN_SHARE of the text map lies outside every box
# found; text-map regions under UNSEEN_MIN_AREA pixels of the map are specks, not text; each region is widened by UNSEEN_MARGIN pixels of the map (the map marks the
# middle of a line, not its whole height); strips of the closer look overlap by STRIP_OVERLAP
# pixels of its input (several lines of the small text it is for); parts covering over
# WHOLE_SHARE of the image make it look at all of it.
CLOSER_ZOOM = 2.0
UNSEEN_MIN_AREA = 100
UNSEEN_SHARE = 0.1
UNSEEN_MARGIN = 16
STRIP_OVERLAP = 64
MERGE_SLACK = 1.25
WHOLE_SHARE = 0.5


def unseen_text(
    pred: np.ndarray, boxes: list[np.ndarray], size: tuple[int, int], thresh: float
) -> list[tuple[int, int, int, int]]:
    """The parts (x0, y0, x1, y1 in pixels of an image of `size` (h, w)) where the detector's
    text map `pred` is over `thresh` outside every box found (`boxes`, in the same pixels):
    text it saw and could not box. Overlapping parts are one. None when that is under
    UNSEEN_SHARE of all it saw: a rule or a stamp left unboxed on a page read well."""
    h, w = size
    mask = (outside_boxes(pred, boxes, size) > thresh).astype(np.uint8).reshape(pred.shape[-2:])
    _count, _labels, stats, _centroids = cv2.connectedComponentsWithStats(mask)
    parts = stats[1:][stats[1:, cv2.CC_STAT_AREA] >= UNSEEN_MIN_AREA]
    if parts[:, cv2.CC_STAT_AREA].sum() < UNSEEN_SHARE * np.count_nonzero(pred > thresh):
        return []
    fx, fy = w / mask.shape[1], h / mask.shape[0]
    rects = [
        rect_in_image((x, y, x + cw, y + ch), (fx, fy), (UNSEEN_MARGIN * fx, UNSEEN_MARGIN * fy), size)
        for x, y, cw, ch, _area in parts.tolist()
    ]
    return merge_overlapping(rects)


def rect_in_image(
    rect: tuple[int, int, int, int], factor: tuple[float, float], pad: tuple[float, float], size: tuple[int, int]
) -> tuple[int, int, int, int]:
    """`rect` (x0, y0, x1, y1) on a shrunk map scaled by `factor` (fx, fy) to an image of `size`
    (h, w), widened by `pad` (x, y) image pixels, rounded outwards and kept inside the image."""
    (x0, y0, x1, y1), (fx, fy), (px, py), (h, w) = rect, factor, pad, size
    return (
        max(0, int(x0 * fx - px)),
        max(0, int(y0 * fy - py)),
        min(w, int(np.ceil(x1 * fx + px))),
        min(h, int(np.ceil(y1 * fy + py))),
    )


def cut_by_part_edge(box: np.ndarray, part: tuple[int, int, int, int], size: tuple[int, int]) -> bool:
    """Whether `box` (in the pixels of `part`, x0, y0, x1, y1 of an image of `size` (h, w))
    reaches a side where the part was cut from the image: text cut in two there. A side that is
    the image's own edge cuts nothing."""
    x0, y0, x1, y1 = part
    h, w = size
    bx0, by0 = box.min(axis=0)
    bx1, by1 = box.max(axis=0)
    return bool(
        (x0 > 0 and bx0 <= 1)
        or (y0 > 0 and by0 <= 1)
        or (x1 < w and bx1 >= x1 - x0 - 2)
        or (y1 < h and by1 >= y1 - y0 - 2)
    )


def merge_overlapping(rects: list[tuple[int, int, int, int]]) -> list[tuple[int, int, int, int]]:
    """(x0, y0, x1, y1) rectangles with every two that overlap, or that the rectangle round
    both covers with little else (MERGE_SLACK: a line's start and its rest seen apart), as one."""

    def area(r: tuple[int, int, int, int]) -> int:
        return max(0, r[2] - r[0]) * max(0, r[3] - r[1])

    merged = list(rects)
    changed = True
    while changed:
        changed = False
        out: list[tuple[int, int, int, int]] = []
        for r in merged:
            for i, o in enumerate(out):
                both = (min(r[0], o[0]), min(r[1], o[1]), max(r[2], o[2]), max(r[3], o[3]))
                overlap = r[0] < o[2] and o[0] < r[2] and r[1] < o[3] and o[1] < r[3]
                if overlap or area(both) <= MERGE_SLACK * (area(r) + area(o)):
                    out[i] = both
                    changed = True
                    break
            else:
                out.append(r)
        merged = out
    return merged


def _rects(boxes: list[np.ndarray]) -> np.ndarray:
    """(x0, y0, x1, y1) round each box, one row a box."""
    return np.array([[*box.min(axis=0), *box.max(axis=0)] for box in boxes], dtype=np.float32).reshape(-1, 4)


# A page over TILE_ASPECT times longer than wide (a scrolling screenshot, a long receipt, a
# strip) whose long side is over the detector's limit is detected in tiles along that side,
# each TILE_ASPECT / 2 times longer than wide (at least the limit), overlapping by a quarter of
# the width: shrunk whole to the limit, a 1080 x 10000 screenshot's 28 px text came out 3 px
# high and nothing at all was found.
TILE_ASPECT = 4.0


def detection_tiles(h: int, w: int, max_side: int) -> list[tuple[int, int]]:
    """The (start, end) spans along an image's long side of the tiles it is detected in, or []
    to detect it whole."""
    long, short = max(h, w), min(h, w)
    if long <= max_side or long <= TILE_ASPECT * short:
        return []
    return even_spans(long, max(round(TILE_ASPECT / 2 * short), max_side), max(short // 4, _MIN_SIDE))


def even_spans(long: int, length: int, overlap: int) -> list[tuple[int, int]]:
    """(start, end) spans of at most `length` covering 0..`long`, neighbours overlapping by at
    least `overlap`, spread evenly so that the last is no sliver."""
    count = max(1, -(-(long - overlap) // (length - overlap)))
    stride = (long - overlap) / count
    return [(round(i * stride), min(long, round(i * stride) + length)) for i in range(count)]


def merge_tile_boxes(tiles: list[list[np.ndarray]]) -> list[np.ndarray]:
    """Boxes found in overlapping tiles (in image pixels, tile by tile along the long side) as
    one set: a box found in two neighbouring tiles, whole or cut at a tile's edge, is one."""
    boxes = [box for found in tiles for box in found]
    parent = list(range(len(boxes)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    rects = _rects(boxes)
    first = np.cumsum([0, *(len(found) for found in tiles)])
    for t in range(len(tiles) - 1):
        pairs = np.argwhere(same_text(rects[first[t] : first[t + 1]], rects[first[t + 1] : first[t + 2]]))
        for i, j in pairs + [first[t], first[t + 1]]:
            parent[root(int(j))] = root(int(i))
    groups: dict[int, list[np.ndarray]] = {}
    for i, box in enumerate(boxes):
        groups.setdefault(root(i), []).append(box)
    return [_union_box(group) for group in groups.values()]


def same_text(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Which of the (x0, y0, x1, y1) rectangles `a` (rows) and `b` (columns) are the same
    text: they overlap, across the way their text runs, by at least half the thinner one
    (lines next to each other touch by less)."""
    a, b = a[:, None, :], b[None, :, :]
    across_x = np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0])
    across_y = np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1])
    wa, wb, ha, hb = a[..., 2] - a[..., 0], b[..., 2] - b[..., 0], a[..., 3] - a[..., 1], b[..., 3] - b[..., 1]
    runs_across = np.maximum(wa, wb) >= np.maximum(ha, hb)
    enough = np.where(runs_across, across_y >= 0.5 * np.minimum(ha, hb), across_x >= 0.5 * np.minimum(wa, wb))
    return (across_x > 0) & (across_y > 0) & enough


def _union_box(group: list[np.ndarray]) -> np.ndarray:
    """One box for the same text found in several tiles: the biggest, when it holds nearly all
    of the others (the text whole in one tile), else the smallest rectangle round them all."""
    biggest = max(group, key=lambda box: cv2.contourArea(box))
    inside = cv2.convexHull(biggest.astype(np.float32))
    if all(cv2.pointPolygonTest(inside, (float(x), float(y)), True) >= -2 for box in group for x, y in box):
        return biggest
    return _order_clockwise(cv2.boxPoints(cv2.minAreaRect(np.concatenate(group).astype(np.float32))))


def outside_boxes(pred: np.ndarray, boxes: Iterable[np.ndarray], size: tuple[int, int]) -> np.ndarray:
    """The probability map with the regions of ``boxes`` (in pixels of an image of ``size``
    (h, w)) set to zero: what a second pass may still find."""
    h, w = size
    scale = np.array([pred.shape[-1] / w, pred.shape[-2] / h], dtype=np.float32)
    left = np.array(pred, dtype=np.float32)  # a contiguous copy: the first pass's map stays
    polygons = [np.round(np.asarray(box, dtype=np.float32) * scale).astype(np.int32) for box in boxes]
    if polygons:
        cv2.fillPoly(left.reshape(left.shape[-2:]), polygons, 0.0)
    return left


# Content region: pixels further than this from the background's grey level are content,
# the region is widened by this share of the image's longest side (never cut a glyph), and
# used only when it makes the detector's input at least this much sharper.
_CONTENT_CONTRAST = 40
_CONTENT_MARGIN = 0.02
_CONTENT_MIN_GAIN = 1.25


def content_region(small: np.ndarray, full_size: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) in full-size pixels of the part of an image that is not blank margin,
    found on `small` (the image shrunk for detection); None when the content fills so much of
    the image that cropping to it would not enlarge the text by _CONTENT_MIN_GAIN.

    The background is the median grey of the border; a speck of dust is lost in the shrink,
    and an isolated pixel that survives it is ignored.
    """
    sh, sw = small.shape[:2]
    h, w = full_size
    gray = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY) if small.ndim == 3 else small
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    background = int(np.median(border))
    content = (np.abs(gray.astype(np.int16) - background) > _CONTENT_CONTRAST).astype(np.uint8)
    _count, _labels, stats, _centroids = cv2.connectedComponentsWithStats(
        cv2.dilate(content, np.ones((3, 3), np.uint8))
    )
    marks = stats[1:][stats[1:, cv2.CC_STAT_AREA] > 9]  # a lone pixel dilates to exactly 9
    if not len(marks):
        return None
    left, top = marks[:, cv2.CC_STAT_LEFT].min(), marks[:, cv2.CC_STAT_TOP].min()
    right = (marks[:, cv2.CC_STAT_LEFT] + marks[:, cv2.CC_STAT_WIDTH]).max()
    bottom = (marks[:, cv2.CC_STAT_TOP] + marks[:, cv2.CC_STAT_HEIGHT]).max()
    margin = _CONTENT_MARGIN * max(h, w)
    x0, y0, x1, y1 = rect_in_image((left, top, right, bottom), (w / sw, h / sh), (margin, margin), full_size)
    if max(h, w) < _CONTENT_MIN_GAIN * max(x1 - x0, y1 - y0, 1):
        return None
    return x0, y0, x1, y1


# A line image read without detection is cut to its ink plus this share of the ink's height
# on every side (the recogniser reads text that fills its crop, as detection's crops do), but
# only when that takes away more than _LINE_MIN_CUT of its height or width: crops that are
# already tight are read as they are.
_LINE_MARGIN = 0.5
_LINE_MIN_CUT = 0.1


def is_blank(img: np.ndarray) -> bool:
    """True for an image of one flat grey, every pixel the same (a blank page or strip):
    nothing to detect or read. Exactly flat: the recogniser still reads text one grey level
    off its ground ("Involce 2024").

    One pass over the bytes, all channels together (a flat colour that is not a grey is not
    caught, and is read as usual): ~0.2 ms for an A4 page at 300 dpi."""
    flat = np.ascontiguousarray(img).reshape(img.shape[0], -1)
    low, high, _, _ = cv2.minMaxLoc(flat)
    return high == low


def border_grey(gray: np.ndarray) -> int:
    """The median grey of an image's edges: its ground, where the text has a margin round it."""
    return int(np.median(np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])))


def line_extent(img: np.ndarray) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) of a one-line image's text with a margin, or None to read it whole.

    Ink is what differs from the border's median grey by more than _CONTENT_CONTRAST; single
    pixels (noise) do not count. A photo's textured background leaves the image whole."""
    h, w = img.shape[:2]
    gray = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY) if img.ndim == 3 else img
    ink = (np.abs(gray.astype(np.int16) - border_grey(gray)) > _CONTENT_CONTRAST).astype(np.uint8)
    _count, _labels, stats, _centroids = cv2.connectedComponentsWithStats(ink)
    marks = stats[1:][stats[1:, cv2.CC_STAT_AREA] > 1]
    if not len(marks):
        return None
    left, top = int(marks[:, cv2.CC_STAT_LEFT].min()), int(marks[:, cv2.CC_STAT_TOP].min())
    right = int((marks[:, cv2.CC_STAT_LEFT] + marks[:, cv2.CC_STAT_WIDTH]).max())
    bottom = int((marks[:, cv2.CC_STAT_TOP] + marks[:, cv2.CC_STAT_HEIGHT]).max())
    margin = max(2, round(_LINE_MARGIN * (bottom - top)))
    x0, y0, x1, y1 = max(0, left - margin), max(0, top - margin), min(w, right + margin), min(h, bottom + margin)
    if (y1 - y0) > (1 - _LINE_MIN_CUT) * h and (x1 - x0) > (1 - _LINE_MIN_CUT) * w:
        return None
    return x0, y0, x1, y1


def _needs_letterbox(h: int, w: int) -> bool:
    return h < _MIN_SIDE or w < _MIN_SIDE or w > _MAX_ASPECT * h


def _letterbox(img: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """Pad tiny or very flat images with their own border colour."""
    h, w = img.shape[:2]
    if not _needs_letterbox(h, w):
        return img, (0, 0)
    want_h = max(h, _MIN_SIDE, int(w / _MAX_ASPECT))
    want_w = max(w, _MIN_SIDE)
    top = (want_h - h) // 2
    left = (want_w - w) // 2
    edge = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
    colour = [int(v) for v in np.median(edge, axis=0)]
    padded = cv2.copyMakeBorder(img, top, want_h - h - top, left, want_w - w - left, cv2.BORDER_CONSTANT, value=colour)
    return padded, (top, left)


def _order_clockwise(pts: np.ndarray) -> np.ndarray:
    """tl, tr, br, bl: left pair / right pair by x, then each pair by y."""
    by_x = pts[np.argsort(pts[:, 0], kind="stable")]
    left = by_x[:2][np.argsort(by_x[:2, 1], kind="stable")]
    right = by_x[2:][np.argsort(by_x[2:, 1], kind="stable")]
    return np.array([left[0], right[0], right[1], left[1]], dtype=np.float32)


def sort_reading_order(boxes: list[np.ndarray]) -> list[int]:
    """Indices of ``boxes`` top-to-bottom, then left-to-right within a line.

    Boxes join the current line when their vertical centre lies inside the
    line's running vertical extent (shrunk a little), which copes with slightly
    skewed lines better than a fixed pixel tolerance.
    """
    if not boxes:
        return []
    info = []
    for i, b in enumerate(boxes):
        ys, xs = b[:, 1], b[:, 0]
        info.append((float(ys.min()), float(ys.max()), float(xs.min()), i))
    info.sort(key=lambda t: ((t[0] + t[1]) / 2, t[2]))
    lines: list[list[tuple[float, float, float, int]]] = []
    cur_top = cur_bot = 0.0
    for item in info:
        top, bot = item[0], item[1]
        centre = (top + bot) / 2
        if lines:
            band = (cur_bot - cur_top) * 0.25
            if cur_top + band <= centre <= cur_bot - band:
                lines[-1].append(item)
                cur_top, cur_bot = min(cur_top, top), max(cur_bot, bot)
                continue
        lines.append([item])
        cur_top, cur_bot = top, bot
    order: list[int] = []
    for line in lines:
        order += [it[3] for it in sorted(line, key=lambda t: t[2])]
    return order


def reading_order(boxes: list[np.ndarray]) -> list[int]:
    """Indices of ``boxes`` in reading order: column by column where the page is set in
    columns of running text (models.layout), else top-to-bottom, left-to-right."""
    if not boxes:
        return []
    rects = _rects(boxes)

    def rows(idx: list[int]) -> list[int]:
        return [idx[j] for j in sort_reading_order([boxes[i] for i in idx])]

    return column_order(rects, rows)


# A page's orientation is judged from at least this many lines: on fewer, one short line
# that looks turned (a label, "8.90 S" that the classifier reads as "S068") would turn it.
PAGE_MIN_LINES = 3


def line_length(crop: np.ndarray) -> float:
    """A line crop's length in line heights: what a page's orientation votes are weighted by."""
    return crop.shape[1] / max(1, crop.shape[0])


def page_sideways(boxes: list[np.ndarray]) -> bool:
    """Whether most of the detected text (by length) runs up or down the page: a page scanned
    or photographed a quarter turn round. Fewer than PAGE_MIN_LINES boxes do not decide."""
    if len(boxes) < PAGE_MIN_LINES:
        return False
    across = np.array([np.linalg.norm(b[1] - b[0]) for b in boxes])
    down = np.array([np.linalg.norm(b[3] - b[0]) for b in boxes])
    tall = down >= 1.5 * across  # the boxes crop_box turns to read
    return float(np.maximum(across, down)[tall].sum()) > 0.5 * float(np.maximum(across, down).sum())


def quarter_turned_back(box: np.ndarray, h: int) -> np.ndarray:
    """A box found in an image of height `h` turned a quarter clockwise, in the image's own
    pixels, clockwise from its top-left corner."""
    back = np.stack([box[:, 1], h - box[:, 0]], axis=1).astype(np.float32)
    return np.roll(back, -1, axis=0)


def box_in_image(box: np.ndarray, quarter_turns: int, w: int, h: int) -> np.ndarray:
    """A box found in the w x h image turned clockwise by `quarter_turns`, in the image's own pixels."""
    for turns in range(quarter_turns, 0, -1):
        box = quarter_turned_back(box, h if (turns - 1) % 2 == 0 else w)
    return box


# A crop this many times taller than wide is a line running up or down the image.
VERTICAL_RATIO = 1.5


def _box_size(box: np.ndarray) -> tuple[int, int]:
    w = int(max(np.linalg.norm(box[0] - box[1]), np.linalg.norm(box[2] - box[3])))
    h = int(max(np.linalg.norm(box[0] - box[3]), np.linalg.norm(box[1] - box[2])))
    return max(w, 1), max(h, 1)


def is_vertical(box: np.ndarray) -> bool:
    """Whether crop_box turns this box's crop a quarter to read it (which way is a guess)."""
    w, h = _box_size(box)
    return h / w >= VERTICAL_RATIO


# OpenCV warps images under 32767 px a side (SHRT_MAX) only: a crop is warped from the part of
# the page it comes from (a long screenshot is taller than that), a longer crop in pieces.
WARP_PIECE = 16384
# Source pixels beyond a crop's own that its interpolation (cubic: 2 a side) may read.
WARP_MARGIN = 4


def crop_box(img: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Perspective-rectify one quadrilateral; tall crops are turned to horizontal."""
    w, h = _box_size(box)
    crop = _aligned_crop(img, box, w, h)
    if crop is None:
        crop = _warped_crop(img, box, w, h)
    if h / w >= VERTICAL_RATIO:
        # Vertical text column: the recogniser reads left-to-right only.
        crop = np.ascontiguousarray(np.rot90(crop))
    return crop


def _warped_crop(img: np.ndarray, box: np.ndarray, w: int, h: int) -> np.ndarray:
    """The quadrilateral `box` warped to a w x h rectangle, in pieces OpenCV can warp."""
    dst = np.array([[0, 0], [w, 0], [w, h], [0, h]], dtype=np.float32)
    m = cv2.getPerspectiveTransform(box.astype(np.float32), dst)
    if w <= WARP_PIECE and h <= WARP_PIECE:
        return _warp_piece(img, m, 0, 0, w, h)
    crop = np.empty((h, w, *img.shape[2:]), dtype=img.dtype)
    for top in range(0, h, WARP_PIECE):
        for left in range(0, w, WARP_PIECE):
            right, bottom = min(w, left + WARP_PIECE), min(h, top + WARP_PIECE)
            crop[top:bottom, left:right] = _warp_piece(img, m, left, top, right, bottom)
    return crop


def _aligned_crop(img: np.ndarray, box: np.ndarray, w: int, h: int) -> np.ndarray | None:
    """The crop of an upright rectangle with whole-pixel corners, cut straight from `img`
    (a copy), or None for any other box. The warp maps it by a whole-pixel shift, and a
    cubic sample at a whole pixel is that pixel: the same crop as warping it, without the
    warp (most boxes on scans and screenshots are such rectangles)."""
    (x0, y0), (x1, y1) = box[0].tolist(), box[2].tolist()
    if box[1].tolist() != [x1, y0] or box[3].tolist() != [x0, y1]:
        return None
    if not (x0.is_integer() and y0.is_integer() and x1 - x0 == w and y1 - y0 == h):
        return None
    left, top = int(x0), int(y0)
    height, width = img.shape[:2]
    if left < 0 or top < 0 or left + w > width or top + h > height:
        return None
    return img[top : top + h, left : left + w].copy()


def _warp_piece(img: np.ndarray, m: np.ndarray, left: int, top: int, right: int, bottom: int) -> np.ndarray:
    """Columns left..right and rows top..bottom of cv2.warpPerspective(img, m, ...) with
    replicated borders, read from the part of `img` they come from: the same pixels, but for
    OpenCV's fixed-point rounding of a few samples' positions (1/32 px)."""
    corners = np.array([[[left, top], [right, top], [right, bottom], [left, bottom]]], dtype=np.float64)
    src = cv2.perspectiveTransform(corners, np.linalg.inv(m))[0]
    height, width = img.shape[:2]
    x0 = min(width - 1, max(0, int(np.floor(src[:, 0].min())) - WARP_MARGIN))
    y0 = min(height - 1, max(0, int(np.floor(src[:, 1].min())) - WARP_MARGIN))
    x1 = max(x0 + 1, min(width, int(np.ceil(src[:, 0].max())) + WARP_MARGIN + 1))
    y1 = max(y0 + 1, min(height, int(np.ceil(src[:, 1].max())) + WARP_MARGIN + 1))
    to_piece = np.array([[1, 0, -left], [0, 1, -top], [0, 0, 1]], dtype=np.float64)
    from_region = np.array([[1, 0, x0], [0, 1, y0], [0, 0, 1]], dtype=np.float64)
    return cv2.warpPerspective(
        img[y0:y1, x0:x1],
        to_piece @ m @ from_region,
        (right - left, bottom - top),
        borderMode=cv2.BORDER_REPLICATE,
        flags=cv2.INTER_CUBIC,
    )
