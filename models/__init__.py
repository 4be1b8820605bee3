"""PP-OCR engine (v4, v5, v6 model families) with onnxruntime and paddle backends.

Importing this package is cheap: paddle/onnxruntime are imported only by
``create_engine`` (i.e. inside worker processes).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import (
    ImageDecodeError,
    ImageError,
    ImageTooLargeError,
    ImageTooSmallError,
    ModelLoadError,
)
from .families import DEFAULT_FAMILY, FAMILIES, default_family, families_for
from .options import EngineOptions, check_model_files, model_identity

if TYPE_CHECKING:
    from .pipeline import OcrEngine


def create_engine(options: EngineOptions) -> OcrEngine:
    from .pipeline import create_engine as _create

    return _create(options)


def __getattr__(name: str) -> Any:
    # OcrEngine lives with the cv2/numpy heavy pipeline; load it on demand.
    if name == "OcrEngine":
        from .pipeline import OcrEngine

        return OcrEngine
    raise AttributeError(name)


__all__ = [
    "DEFAULT_FAMILY",
    "FAMILIES",
    "EngineOptions",
    "ImageDecodeError",
    "ImageError",
    "ImageTooLargeError",
    "ImageTooSmallError",
    "ModelLoadError",
    "OcrEngine",
    "check_model_files",
    "create_engine",
    "default_family",
    "families_for",
    "model_identity",
]
