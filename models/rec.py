"""CRNN/SVTR text-line recognition with CTC decoding (PP-OCR rec, any family)."""

from __future__ import annotations

import math

import cv2
import numpy as np

from .cls import resize_norm, resized_width
from .ctc import (
    UNSURE_SPACE,
    Emitted,
    greedy_chars,
    lookalikes_of,
    settle_lookalikes,
    space_classes_of,
    spaced_text,
    spacing_classes,
    word_gap,
)
from .errors import ModelLoadError
from .sessions import Session
from .spacing import gap_spaces, line_ink

# Input shape (C, H, W) of every PP-OCR recogniser; a model that declares another
# height in its ONNX input gets that height.
_SHAPE = (3, 48, 320)
# Short crops (a price, a field label) are padded only to this width/height ratio, not
# to the 320 px training width: every padded column costs compute. With crops sorted by
# width, batches of 3 keep padding low; on forms and receipts this reads the same text as
# 6 x 320 px (order-free CER 2.30 vs 2.31 %) with 26 % less recognition time.
_MIN_RATIO = 160 / 48
_BATCH = 3
# Longest line (width/height) fed to the recogniser at once.  UW-III lines
# reach ~41; beyond 160 (7680 px at height 48) a pathological 20000x8 input
# would otherwise build a huge tensor, so such lines are read in pieces.
_MAX_RATIO = 160.0
# A longer line is cut in the last quarter of each piece, at its widest blank gap: squeezed
# into one input instead, a 13000 x 48 px receipt line read "i d q q q qq". A gap at least
# this share of the line's height (letter gaps are narrower) is a word space, written back
# between the pieces' texts.
_CUT_SEARCH = 0.25
_CUT_SPACE = 0.1
# At most this many pieces a line: lines up to ~1480 heights long read unsqueezed, up to ~2200
# squeezed a little (every line 30 px or higher within the 65,535 px side limit; 4 pieces
# read a 64658 x 40 line squeezed whole, not one word right); the work stays bounded on a
# 20000 x 8 strip (2500 heights), whose pieces would be squeezed past reading anyway.
_MAX_PIECES = 12
# Pieces squeezed up to this much still read (a 35156 x 48 line in 4 pieces of ~180 heights:
# 22 of 2694 characters wrong); a line whose pieces would be squeezed more is read whole.
_MAX_SQUEEZE = 1.5
# Ink: what differs from the line's median grey by more than this (as models.det does).
_INK_CONTRAST = 40


def line_pieces(
    crop: np.ndarray, max_ratio: float = _MAX_RATIO, max_pieces: int = _MAX_PIECES
) -> list[tuple[int, int, bool]]:
    """(x0, x1, space after) of the pieces a line crop is read in: the whole crop when it is
    at most `max_ratio` heights long, else pieces that long or less (longer when it would
    take more than `max_pieces`), each cut in the middle of the widest run of the least
    inked columns in its last _CUT_SEARCH; `space after` says the cut lies in a gap wide
    enough to be a word space."""
    h, w = crop.shape[:2]
    # Every piece but the last is at least (1 - _CUT_SEARCH) * longest: this many fit.
    longest = max(1, int(max_ratio * h), math.ceil(w / (1 + (1 - _CUT_SEARCH) * (max_pieces - 1))))
    if w <= longest or longest > _MAX_SQUEEZE * max_ratio * h:
        # Short enough to read whole, or so long that even its pieces would be squeezed past
        # reading (a 20000 x 8 strip): one squeezed input reads as much at a quarter of the work.
        return [(0, w, False)]
    gray = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY) if crop.ndim == 3 else crop
    ink = (np.abs(gray.astype(np.int16) - int(np.median(gray))) > _INK_CONTRAST).sum(axis=0)
    pieces: list[tuple[int, int, bool]] = []
    x0 = 0
    while w - x0 > longest:
        lo = x0 + max(1, int((1 - _CUT_SEARCH) * longest))
        cut, run = _quietest_run(ink[lo : x0 + longest])
        pieces.append((x0, lo + cut, bool(run >= _CUT_SPACE * h and ink[lo + cut] == 0)))
        x0 = lo + cut
    pieces.append((x0, w, False))
    return pieces


def _quietest_run(ink: np.ndarray) -> tuple[int, int]:
    """(middle, length) of the longest run of columns holding the least ink (the last of
    equals: the fewer pieces, the fewer cuts)."""
    quiet = np.concatenate(([False], ink == ink.min(), [False])).astype(np.int8)
    edges = np.flatnonzero(np.diff(quiet))
    starts, ends = edges[::2], edges[1::2]
    longest = len(starts) - 1 - int(np.argmax((ends - starts)[::-1]))
    return int((starts[longest] + ends[longest]) // 2), int(ends[longest] - starts[longest])


def join_pieces(readings: list[tuple[str, float]], spaces: list[bool]) -> tuple[str, float]:
    """One line's reading from its pieces' (text, confidence): the texts joined, with a space
    at a cut in a word gap between characters a space may separate; the confidence is the
    pieces' mean weighted by their characters."""
    text = ""
    for (piece, _score), space in zip(readings, [False, *spaces]):
        piece = piece.strip()
        if space and text and piece and word_gap(text[-1], piece[0]):
            text += " "
        text += piece
    chars = sum(len(piece) for piece, _score in readings)
    if not chars:
        return text, 0.0
    return text, sum(len(piece) * score for piece, score in readings) / chars


def read_char_dict(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as fh:
            return [line.rstrip("\r\n") for line in fh]
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"cannot read rec char dict {path}: {exc}") from exc


def batches(ratios: list[float]) -> list[list[int]]:
    """The recogniser's batches of lines (indices), by their width/height `ratios`: similar
    widths together (little padding, little wasted compute), _BATCH at most, and no more
    columns than one line _MAX_RATIO long (a batch of three such lines was three times the
    memory: its output alone is ~70 MB a line with PP-OCRv6's 18,710 classes)."""
    order = [int(i) for i in np.argsort(ratios)]
    out: list[list[int]] = []
    while order:
        size = 1
        while size < min(_BATCH, len(order)) and (size + 1) * min(ratios[order[size]], _MAX_RATIO) <= _MAX_RATIO:
            size += 1
        out.append(order[:size])
        order = order[size:]
    return out


class TextRecognizer:
    def __init__(
        self, session: Session, characters: list[str], gap_spaces: bool = True, lookalikes: bool = True
    ) -> None:
        self.session = session
        # Class 0 is the CTC blank; PP-OCR models append a space class after the dictionary.
        self.characters = ["", *characters, " "]
        self.num_classes = len(self.characters)
        self.gap_spaces = gap_spaces
        self._space_classes = space_classes_of(self.characters)
        self._lookalikes = lookalikes_of(self.characters) if lookalikes else None
        height = session.input_height() or _SHAPE[1]
        self.shape = (_SHAPE[0], height, round(_SHAPE[2] * height / _SHAPE[1]))
        # Batches are padded to a multiple of this width where the runtime is faster on shapes
        # it has seen before (OpenVINO compiles kernels per input shape).
        self.width_step: int = getattr(session, "width_step", 1)

    def check(self) -> None:
        """Run one dummy line; the class count must match the dictionary."""
        probs = self.session.run(np.zeros((1, *self.shape), dtype=np.float32))[0]
        if probs.shape[-1] != self.num_classes:
            raise ModelLoadError(
                f"rec model {self.session.path} predicts {probs.shape[-1]} classes but the "
                f"character dict gives {self.num_classes} (dict + blank + space)"
            )

    def __call__(self, crops: list[np.ndarray]) -> list[tuple[str, float]]:
        """Each line crop's (text, confidence); a line longer than _MAX_RATIO in pieces."""
        cuts = [line_pieces(crop) for crop in crops]
        if all(len(pieces) == 1 for pieces in cuts):
            return self._read(crops)
        readings = iter(self._read([crop[:, x0:x1] for crop, pieces in zip(crops, cuts) for x0, x1, _s in pieces]))
        return [
            join_pieces([next(readings) for _ in pieces], [space for _x0, _x1, space in pieces[:-1]])
            for pieces in cuts
        ]

    def _read(self, crops: list[np.ndarray]) -> list[tuple[str, float]]:
        results: list[tuple[str, float]] = [("", 0.0)] * len(crops)
        # Similar widths in one batch => little padding => less wasted compute.
        ratios = [c.shape[1] / float(c.shape[0]) for c in crops]
        h = self.shape[1]
        for idx in batches(ratios):
            ratio = max([_MIN_RATIO] + [ratios[i] for i in idx])
            ratio = min(ratio, _MAX_RATIO)
            width = -(-int(h * ratio) // self.width_step) * self.width_step
            batch = np.stack([resize_norm(crops[i], self.shape, width) for i in idx])
            probs = self.session.run(batch)[0]
            space_classes = spacing_classes(self.characters, self.gap_spaces, self._space_classes)
            for i, line in zip(idx, probs):
                chars = greedy_chars(line, self.characters, space_classes)
                if self._lookalikes is not None:
                    chars = settle_lookalikes(chars, line, self._lookalikes)
                # Crop columns per output frame: the crop fills resized_width of the input's columns.
                scale = width / len(line) * crops[i].shape[1] / resized_width(crops[i], h, width)
                results[i] = spaced_text(chars, wide_gaps(crops[i], chars, scale))
        return results


def wide_gaps(crop: np.ndarray, chars: list[Emitted], columns_per_frame: float) -> list[bool] | None:
    """Whether the image shows a word gap between each two neighbouring characters read from
    `crop` (`columns_per_frame` of its columns per output frame), or None when no gap needs it
    (no unsure space) or the crop's ink is too faint to tell."""
    if not any(0.5 >= c.space_before >= UNSURE_SPACE for c in chars):
        return None
    ink = line_ink(crop)
    if ink is None:
        return None
    return gap_spaces([(c.frame + 0.5) * columns_per_frame for c in chars], ink)
