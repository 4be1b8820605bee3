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

from typing import NamedTuple

import numpy as np

BLANK = 0
# First code point of the CJK radicals block; everything from here up (CJK, kana,
# Hangul, full-width forms) is written without spaces between words.
_CJK_START = 0x2E80


# Typesetting puts a space after these and never inside a number or a word joined by
# "-" or "/"; nor before closing punctuation: "TOTAL:" stays, "ARENOT" becomes "ARE NOT".
# A space may precede a currency sign, "#", "@" or "+" (an amount, a number, a phone number).
_SPACE_MAY_FOLLOW = set(':;,!?)]}%"&')
_SPACE_MAY_PRECEDE = set('([{"&$€£¥₹#@+')


def _spaced_script(char: str) -> bool:
    return char.isalnum() and ord(char) < _CJK_START


def word_gap(before: str, after: str) -> bool:
    """Whether a space may stand between these two characters."""
    if ord(before) >= _CJK_START or ord(after) >= _CJK_START:
        return False
    return (_spaced_script(before) or before in _SPACE_MAY_FOLLOW) and (
        _spaced_script(after) or after in _SPACE_MAY_PRECEDE
    )


# A gap whose space the model is this sure of, though not sure, is a space when the line's
# image shows a word gap there (models/spacing.py).
UNSURE_SPACE = 0.05


class Emitted(NamedTuple):
    char: str
    frame: int  # where it was read
    confidence: float
    space_before: float  # probability of a space in the gap before it (0 where none may stand)


def greedy_chars(probs: np.ndarray, characters: list[str], space_classes: list[int]) -> list[Emitted]:
    """The characters one line's (frames, classes) probabilities decode to, where each was
    read, and how likely a space is in the gap before each."""
    best = probs.argmax(axis=1)
    best_prob = probs[np.arange(len(best)), best]
    emitted = np.ones(len(best), dtype=bool)
    emitted[1:] = best[1:] != best[:-1]
    emitted &= best != BLANK
    frames = np.flatnonzero(emitted)
    space_prob = probs[:, space_classes].sum(axis=1) if space_classes and len(frames) else None
    out: list[Emitted] = []
    previous = -1
    for frame in frames:
        char = characters[best[frame]]
        p_space = 0.0
        gap = space_prob is not None and previous >= 0 and frame - previous > 1
        if gap and len(char) == len(out[-1].char) == 1 and word_gap(out[-1].char, char):
            p_space = 1.0 - float(np.prod(1.0 - space_prob[previous + 1 : frame]))
        out.append(Emitted(char, int(frame), float(best_prob[frame]), p_space))
        previous = frame
    return out


# A zero and a capital (or small) O are drawn alike in many fonts, a monospaced one above all:
# the recogniser reads "CUST0MER", "0RDER", "INV0ICE" there, with O as its next guess. Inside
# a word otherwise of letters, a 0 whose frame gives O (or o) at least LOOKALIKE_FLOOR is that
# letter (the more likely case of the two); inside a number otherwise of digits, an O or o
# whose frame gives 0 that much is a zero. A word is a run of ASCII letters and digits with no
# possible space in it; its other zeros and Os do not count either way, and the rule needs at
# least MIN_WORD_LETTERS other letters (or one other digit), so "0x", "A0" and mixed codes
# ("G30", "B0X2") stay as read, and so does a 0 that ends a word of letters ("RM0.00").
LOOKALIKE_FLOOR = 0.01
MIN_WORD_LETTERS = 2


class Lookalikes(NamedTuple):
    """The classes of "0", "O" and "o" in a recogniser's dictionary."""

    zero: int
    upper: int
    lower: int


def lookalikes_of(characters: list[str]) -> Lookalikes | None:
    """The lookalike classes, or None when the dictionary lacks one of them."""
    index = {c: i for i, c in enumerate(characters) if c in ("0", "O", "o")}
    if len(index) < 3:
        return None
    return Lookalikes(index["0"], index["O"], index["o"])


def _word_char(char: str) -> bool:
    return char.isascii() and char.isalnum()


def settle_lookalikes(chars: list[Emitted], probs: np.ndarray, classes: Lookalikes) -> list[Emitted]:
    """`chars` with each 0 / O that its word reads as the other (see LOOKALIKE_FLOOR) written
    as that other; `probs` is the line's (frames, classes) probabilities."""
    out = list(chars)
    start = 0
    while start < len(out):
        end = start
        while end < len(out) and _word_char(out[end].char) and (end == start or out[end].space_before < UNSURE_SPACE):
            end += 1
        if end == start:
            start += 1
            continue
        # The word's other characters, its other zeros and Os left out: "B00K", "1OO".
        others = [c.char for c in out[start:end] if c.char not in "0Oo"]
        for i in range(start, end):
            frame = probs[out[i].frame]
            # Never the word's last character: a letter code glued to a number ends in its
            # first digit ("RM0.00", "SR0" on receipts).
            last = i == end - 1
            if out[i].char == "0" and not last and len(others) >= MIN_WORD_LETTERS and all(c.isalpha() for c in others):
                upper, lower = float(frame[classes.upper]), float(frame[classes.lower])
                if upper + lower >= LOOKALIKE_FLOOR:
                    out[i] = out[i]._replace(char="O" if upper >= lower else "o")
            elif (
                out[i].char in "Oo"
                and others
                and all(c.isdigit() for c in others)
                and frame[classes.zero] >= LOOKALIKE_FLOOR
            ):
                out[i] = out[i]._replace(char="0")
        start = end
    return out


def spaced_text(chars: list[Emitted], wide_gaps: list[bool] | None = None) -> tuple[str, float]:
    """(text, mean confidence of its characters and spaces): a space where one is more likely
    than not, or (`wide_gaps[i]`: the image shows a word gap between chars[i] and
    chars[i + 1]) at least UNSURE_SPACE likely. A space the image decides adds nothing to
    the confidence: the line reads as surely as without it (a low score would lose it to
    another reading, or drop it)."""
    if not chars:
        return "", 0.0
    text: list[str] = []
    confidences: list[float] = []
    for i, c in enumerate(chars):
        if c.space_before > 0.5:
            text.append(" ")
            confidences.append(c.space_before)
        elif c.space_before >= UNSURE_SPACE and wide_gaps and wide_gaps[i - 1]:
            text.append(" ")
        text.append(c.char)
        confidences.append(c.confidence)
    return "".join(text), float(np.mean(confidences))


def greedy_decode(probs: np.ndarray, characters: list[str], space_classes: list[int]) -> tuple[str, float]:
    """(text, mean confidence of the emitted characters) for one line's (frames, classes) probabilities."""
    return spaced_text(greedy_chars(probs, characters, space_classes))


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
    return [greedy_decode(line, characters, spacing_classes(characters, gap_spaces, space_classes)) for line in probs]


def spacing_classes(characters: list[str], gap_spaces: bool, space_classes: list[int] | None = None) -> list[int]:
    """The space classes gap decoding sums ([]: plain greedy decoding)."""
    if not gap_spaces:
        return []
    return space_classes_of(characters) if space_classes is None else space_classes
