"""INT8 variants of a family's detector and recogniser, built once: ``python -m models.quantize``.

Static quantization (onnxruntime.quantization, QDQ format, per-channel INT8 weights, UINT8
activations) calibrated on real images: the fp32 engine reads each calibration image and
the exact tensors its detector and recogniser receive are recorded, so the activation
ranges are those of real pages, receipts and photos at the sizes the server feeds. QDQ
files run on onnxruntime and on OpenVINO alike. The angle classifier is tiny and stays fp32.
In the recogniser only the convolutions are quantized (three quarters of its time): its
attention and the classifier over the whole dictionary stay fp32, which is where INT8
cost the most text (spaces between words among it).

The files are written to a cache folder the user can write to (the bundled models sit in
site-packages): $OCR_MODEL_CACHE, else ~/.cache/ocr-web-server; each is named after the
sha256 of the fp32 file it came from, so a model update never picks a stale INT8 file.
`ocr.predict_system.precision: int8` then loads them; a missing one stops the server at
start naming this command. Nothing is quantized at request time.

    python -m models.quantize                              # PP-OCRv6-small, ../shared/data/load images
    python -m models.quantize --model PP-OCRv6-tiny --images DIR --limit 30

Importing this module is cheap (no onnxruntime) so the parent process can resolve paths.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ModelLoadError

CACHE_ENV = "OCR_MODEL_CACHE"
DEFAULT_IMAGES = Path(__file__).resolve().parents[2] / "shared" / "data" / "load"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif"}
# Recogniser calibration batches kept per image: enough lines of every width, bounded time.
MAX_REC_BATCHES_PER_IMAGE = 6
# Operators quantized in each model (None: every one onnxruntime can).
QUANTIZED_OPS: dict[str, list[str] | None] = {"det": None, "rec": ["Conv"]}
# In the file names: files built by an earlier recipe are not picked up as this one's.
RECIPE = 2


def cache_dir() -> Path:
    root = os.environ.get(CACHE_ENV)
    return Path(root).expanduser() if root else Path.home() / ".cache" / "ocr-web-server"


def int8_path(source: Path, role: str) -> Path:
    """Where the INT8 variant of the fp32 model `source` lives (it may not exist yet)."""
    from .options import _file_digest  # content hash, memoised per (path, size, mtime)

    try:
        digest = _file_digest(source)[:16]
    except OSError as exc:
        raise ModelLoadError(f"{role} model: cannot read {source}: {exc}") from exc
    return cache_dir() / "int8" / f"{role}-{digest}-r{RECIPE}.onnx"


def missing_message(path: Path, family: str) -> str:
    return (
        f"INT8 model {path} has not been built; build it once with: "
        f"python -m models.quantize --model {family} (needs the onnx package: pip install -r requirements-quantize.txt)"
    )


class _Recorder:
    """A session that records every input it is given (the calibration tensors)."""

    def __init__(self, session: Any, keep: int | None = None) -> None:
        self._session = session
        self.path = session.path
        self.inputs: list[np.ndarray] = []
        self._keep = keep
        self._seen_this_image = 0

    def new_image(self) -> None:
        self._seen_this_image = 0

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        if self._keep is None or self._seen_this_image < self._keep:
            self.inputs.append(np.array(x, copy=True))
        self._seen_this_image += 1
        return self._session.run(x)

    def character_list(self) -> list[str] | None:
        return self._session.character_list()

    def input_height(self) -> int | None:
        return self._session.input_height()


class _Reader:
    """onnxruntime.quantization's CalibrationDataReader protocol over recorded tensors."""

    def __init__(self, name: str, tensors: list[np.ndarray]) -> None:
        self._items: Iterator[dict[str, np.ndarray]] = iter([{name: t} for t in tensors])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._items, None)


def calibration_images(folder: Path, limit: int) -> list[Path]:
    images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise SystemExit(f"no calibration images in {folder}")
    return images[:limit]


def record_inputs(family: str, images: list[Path]) -> tuple[list[np.ndarray], list[np.ndarray], Path, Path]:
    """Run the fp32 engine over `images`; the tensors its det and rec sessions received."""
    from .options import EngineOptions, model_identity, resolve_model_paths
    from .pipeline import OcrEngine, _characters
    from .sessions import OrtSession

    options = EngineOptions(model=family, line_rec_model="")
    paths = resolve_model_paths(options)
    det = _Recorder(OrtSession(paths.det, 1))
    rec_session = OrtSession(paths.rec, 1)
    rec = _Recorder(rec_session, keep=MAX_REC_BATCHES_PER_IMAGE)
    cls = OrtSession(paths.cls, 1)
    characters = _characters(rec_session, paths.rec, paths.rec_dict)
    engine = OcrEngine(options, det, cls, rec, characters, model_identity(options))  # type: ignore[arg-type]
    for image in images:
        rec.new_image()
        try:
            engine.recognize(image.read_bytes(), det="on")
        except Exception as exc:  # noqa: BLE001 - an unreadable image is skipped, not fatal
            print(f"  skipped {image.name}: {exc}", file=sys.stderr)
    return det.inputs, rec.inputs, paths.det, paths.rec


# Per-channel DequantizeLinear (an `axis` attribute) needs opset 13.
MIN_OPSET = 13


def quantize_model(source: Path, target: Path, tensors: list[np.ndarray], ops: list[str] | None = None) -> None:
    import onnx
    from onnx import version_converter
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    model = onnx.load(str(source))
    name = model.graph.input[0].name
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), MIN_OPSET)
    if opset < MIN_OPSET:
        model = version_converter.convert_version(model, MIN_OPSET)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as work:
        upgraded = Path(work) / "opset.onnx"
        onnx.save(model, str(upgraded))
        prepared = Path(work) / "prepared.onnx"
        # Shape inference only: onnxruntime's graph optimisation here would write its own
        # operators (com.microsoft.nchwc...) that OpenVINO cannot read; each runtime
        # optimises the plain QDQ graph itself when it loads it.
        quant_pre_process(str(upgraded), str(prepared), skip_optimization=True, skip_symbolic_shape=True)
        partial = Path(work) / "int8.onnx"
        quantize_static(
            str(prepared),
            str(partial),
            _Reader(name, tensors),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            weight_type=QuantType.QInt8,
            activation_type=QuantType.QUInt8,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={"CalibTensorRangeSymmetric": False},
            **({"op_types_to_quantize": ops} if ops else {}),
        )
        partial.replace(target)  # whole file or nothing: a crash never leaves half a model


def build(family: str, images: list[Path], force: bool = False) -> dict[str, Path]:
    from .options import EngineOptions, resolve_model_paths

    fp32 = resolve_model_paths(EngineOptions(model=family, line_rec_model=""))
    targets = {"det": int8_path(fp32.det, "det"), "rec": int8_path(fp32.rec, "rec")}
    if not force and all(p.is_file() for p in targets.values()):
        return targets
    started = time.perf_counter()
    det_inputs, rec_inputs, det_path, rec_path = record_inputs(family, images)
    print(f"recorded {len(det_inputs)} det and {len(rec_inputs)} rec tensors from {len(images)} images "
          f"in {time.perf_counter() - started:.0f} s")  # fmt: skip
    for role, source, tensors in (("det", det_path, det_inputs), ("rec", rec_path, rec_inputs)):
        began = time.perf_counter()
        quantize_model(source, targets[role], tensors, QUANTIZED_OPS[role])
        print(f"{role}: {source} -> {targets[role]} ({time.perf_counter() - began:.0f} s)")
    return targets


def main(argv: list[str] | None = None) -> int:
    from .families import DEFAULT_FAMILY

    parser = argparse.ArgumentParser(prog="python -m models.quantize", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEFAULT_FAMILY, help="model family (default: %(default)s)")
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="calibration images (default: %(default)s)")
    parser.add_argument("--limit", type=int, default=44, help="at most this many images (default: %(default)s)")
    parser.add_argument("--force", action="store_true", help="rebuild even if the files exist")
    args = parser.parse_args(argv)
    try:
        targets = build(args.model, calibration_images(args.images, args.limit), args.force)
    except ModelLoadError as exc:
        print(f"model error: {exc}", file=sys.stderr)
        return 2
    for role, path in targets.items():
        print(f"{role} INT8: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
