"""CRNN/SVTR text-line recognition with CTC decoding (PP-OCR rec, any family)."""

from __future__ import annotations

import numpy as np

from .cls import resize_norm
from .ctc import decode_batch, space_classes_of
from .errors import ModelLoadError
from .sessions import Session

# Input shape (C, H, W) of every PP-OCR recogniser; a model that declares another
# height in its ONNX input gets that height.
_SHAPE = (3, 48, 320)
# Short crops (a price, a field label) are padded only to this width/height ratio, not
# to the 320 px training width: every padded column costs compute. With crops sorted by
# width, batches of 3 keep padding low; on forms and receipts this reads the same text as
# 6 x 320 px (order-free CER 2.30 vs 2.31 %) with 26 % less recognition time.
_MIN_RATIO = 160 / 48
_BATCH = 3
# Longest line (width/height) fed to the recogniser unsqueezed.  UW-III lines
# reach ~41; beyond 160 (7680 px at height 48) a pathological 20000x8 input
# would otherwise build a huge tensor, so such lines are squeezed instead.
_MAX_RATIO = 160.0


def read_char_dict(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as fh:
            return [line.rstrip("\r\n") for line in fh]
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"cannot read rec char dict {path}: {exc}") from exc


class TextRecognizer:
    def __init__(self, session: Session, characters: list[str], gap_spaces: bool = True) -> None:
        self.session = session
        # Class 0 is the CTC blank; PP-OCR models append a space class after the dictionary.
        self.characters = ["", *characters, " "]
        self.num_classes = len(self.characters)
        self.gap_spaces = gap_spaces
        self._space_classes = space_classes_of(self.characters)
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
        results: list[tuple[str, float]] = [("", 0.0)] * len(crops)
        # Similar widths in one batch => little padding => less wasted compute.
        order = np.argsort([c.shape[1] / float(c.shape[0]) for c in crops])
        h = self.shape[1]
        for start in range(0, len(crops), _BATCH):
            idx = order[start : start + _BATCH]
            ratio = max([_MIN_RATIO] + [crops[i].shape[1] / float(crops[i].shape[0]) for i in idx])
            ratio = min(ratio, _MAX_RATIO)
            width = -(-int(h * ratio) // self.width_step) * self.width_step
            batch = np.stack([resize_norm(crops[i], self.shape, width) for i in idx])
            probs = self.session.run(batch)[0]
            for i, (text, score) in zip(idx, decode_batch(probs, self.characters, self.gap_spaces, self._space_classes)):
                results[i] = (text, float(score))
        return results
