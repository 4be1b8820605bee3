"""Greedy CTC decoding of a recogniser's per-frame class probabilities (pure functions).

Plain greedy decoding takes the most likely class in each frame, so a word gap where
the model spreads its belief over several frames ("space" at 0.45 in three frames,
"blank" at 0.55 in each) comes out as no space at all: "THANKYOU", "201812:07:10".
Between two characters of a non-CJK script that a space may separate (letters and
digits, or punctuation that a space follows or precedes) we ask instead whether the
model expects a space anywhere in the gap: 1 - prod(1 - p_space(frame)) over the
frames between them, and write one when that is more likely than not. Chinese and
Japanese are written without spaces, so a gap next to a CJK character stays closed.
"""

from __future__ import annotations

import numpy as np

BLANK = 0
# First code point of the CJK radicals block; everything from here up (CJK, kana,
# Hangul, full-width forms) is written without spaces between words.
_CJK_START = 0x2E80


# Typesetting puts a space after these and never inside a number or a word joined by
# "-" or "/"; nor before closing punctuation: "TOTAL:" stays, "ARENOT" becomes "ARE NOT".
_SPACE_MAY_FOLLOW = set(':;,!?)]}%"&')
_SPACE_MAY_PRECEDE = set('([{"&')


def _spaced_script(char: str) -> bool:
    return char.isalnum() and ord(char) < _CJK_START


def word_gap(before: str, after: str) -> bool:
    """Whether a space may stand between these two characters."""
    if ord(before) >= _CJK_START or ord(after) >= _CJK_START:
        return False
    return (_spaced_script(before) or before in _SPACE_MAY_FOLLOW) and (
        _spaced_script(after) or after in _SPACE_MAY_PRECEDE
    )


def greedy_decode(probs: np.ndarray, characters: list[str], space_classes: list[int]) -> tuple[str, float]:
    """(text, mean confidence of the emitted characters) for one line's (frames, classes) probabilities."""
    best = probs.argmax(axis=1)
    best_prob = probs[np.arange(len(best)), best]
    emitted = np.ones(len(best), dtype=bool)
    emitted[1:] = best[1:] != best[:-1]
    emitted &= best != BLANK
    frames = np.flatnonzero(emitted)
    if not len(frames):
        return "", 0.0
    space_prob = probs[:, space_classes].sum(axis=1) if space_classes else None
    chars: list[str] = []
    confidences: list[float] = []
    previous = -1
    for frame in frames:
        char = characters[best[frame]]
        gap = space_prob is not None and previous >= 0 and frame - previous > 1
        if gap and len(char) == len(chars[-1]) == 1 and word_gap(chars[-1], char):
            p_space = 1.0 - float(np.prod(1.0 - space_prob[previous + 1 : frame]))
            if p_space > 0.5:
                chars.append(" ")
                confidences.append(p_space)
        chars.append(char)
        confidences.append(float(best_prob[frame]))
        previous = frame
    return "".join(chars), float(np.mean(confidences))


def space_classes_of(characters: list[str]) -> list[int]:
    """The classes that write a space (a scan of the whole dictionary: 18,710 entries for
    PP-OCRv6, ~2 ms, so a recogniser does it once, not per batch)."""
    return [i for i, c in enumerate(characters) if c == " "]


def decode_batch(
    probs: np.ndarray, characters: list[str], gap_spaces: bool = True, space_classes: list[int] | None = None
) -> list[tuple[str, float]]:
    """Decode a batch; `characters[class]` (class 0, the blank, is never written).
    gap_spaces False: plain greedy decoding. space_classes: space_classes_of(characters),
    when the caller has it already."""
    if not gap_spaces:
        space_classes = []
    elif space_classes is None:
        space_classes = space_classes_of(characters)
    return [greedy_decode(line, characters, space_classes) for line in probs]
