"""OcrEngine: decode -> detect -> classify -> recognise, with timings."""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .cls import TextClassifier, flip_suspects, page_upside_down
from .det import (
    TextDetector,
    box_in_image,
    crop_box,
    is_blank,
    is_vertical,
    line_extent,
    line_length,
    page_sideways,
    reading_order,
)
from .documents import jpeg_preview, page_pixels, run_preview, run_probe
from .errors import ModelLoadError
from .image_io import decode_image
from .options import EngineOptions, check_model_files, det_settings, model_identity, resolve_model_paths
from .rec import TextRecognizer, read_char_dict
from .sessions import OrtSession, OvSession, PaddleSession, Session
from .tone import readable_tone

DET_MODES = ("on", "off", "auto")

# det="auto" treats an image as a single text line when it is short and wide.
# From the shared data: every line crop (UW-III lines 32-54 px high, licence
# plates 94x24, COCO-Text word crops 17-30 px, PaddleOCR/RapidOCR line crops
# 30-78 px) is <= 80 px high, while the smallest multi-line image (a 4-line
# paragraph screenshot) is 132 px high with ~33 px per line.  Two lines need
# at least ~2x the ~40 px a readable line takes, so 80 px separates the two
# groups; the aspect floor keeps small square icons/logos on the det path.
AUTO_MAX_LINE_HEIGHT = 80
AUTO_MIN_ASPECT = 1.5
# Lines compared both ways up to settle whether a page is upside down: the longest ones,
# which the recogniser judges best.
ORIENTATION_SAMPLE = 8


def _load_malloc_trim():
    # glibc keeps freed image/tensor buffers in its arenas; every new image
    # size then leaves RSS at the high-water mark (onnxruntime worker: ~580 MB
    # after 40 images vs ~140 MB with trimming, for ~1-3 ms per call).
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):  # musl or no libc symbol
        return None


_malloc_trim = _load_malloc_trim()


def resident_mb() -> float:
    """This process's resident memory (Linux; 0 elsewhere)."""
    try:
        with open("/proc/self/statm", "rb") as fh:
            pages = int(fh.read().split()[1])
    except (OSError, IndexError, ValueError):
        return 0.0
    return pages * _PAGE_BYTES / 2**20


_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def looks_like_single_line(width: int, height: int) -> bool:
    return height <= AUTO_MAX_LINE_HEIGHT and width >= AUTO_MIN_ASPECT * height


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 2)


@dataclasses.dataclass(frozen=True)
class _Reading:
    """An image's kept lines (API dicts), whether detection found them, and the seconds spent."""

    lines: list[dict[str, Any]]
    det_used: bool
    det_seconds: float
    cls_seconds: float
    rec_seconds: float

    @property
    def confidence(self) -> float:
        """Mean confidence of the kept lines, each weighted by its characters; 0 without any."""
        chars = sum(len(line["text"]) for line in self.lines)
        return sum(len(line["text"]) * line["confidence"] for line in self.lines) / chars if chars else 0.0

    def plus_time_of(self, other: _Reading) -> _Reading:
        """This reading, charged with the time another (discarded) reading took too."""
        return dataclasses.replace(
            self,
            det_seconds=self.det_seconds + other.det_seconds,
            cls_seconds=self.cls_seconds + other.cls_seconds,
            rec_seconds=self.rec_seconds + other.rec_seconds,
        )


class OcrEngine:
    def __init__(
        self,
        options: EngineOptions,
        det: Session,
        cls: Session | None,
        rec: Session,
        characters: list[str],
        identity: str,
        line_recognizer: TextRecognizer | None = None,
        fast_recognizer: TextRecognizer | None = None,
        sessions: list[OvSession] | None = None,
    ) -> None:
        self.options = options
        self.identity = identity
        # OpenVINO sessions keep buffers between runs, given back after a task (release_memory_mb);
        # the other runtimes free theirs as each run ends.
        self._sessions = sessions or []
        self.detector = TextDetector(
            det,
            det_settings(options),
            max_side=options.det_limit_side_len,
            min_side=options.det_min_side_len,
            rescue_low_score=options.det_rescue_low_score,
            look_closer=options.det_look_closer,
        )
        self.classifier = TextClassifier(cls) if cls is not None else None
        self.recognizer = TextRecognizer(rec, characters, options.rec_gap_spaces, options.rec_lookalikes)
        # A second recogniser (another family's) for whole-image single lines: the more
        # confident of the two readings wins (see EngineOptions.line_rec_model).
        self.line_recognizer = line_recognizer
        # A faster family's recogniser that reads detected lines first (see
        # EngineOptions.fast_rec_model); the main one rereads only its unsure lines.
        self.fast_recognizer = fast_recognizer

    def warm_up(self) -> None:
        """First inference pays for graph optimisation; do it at load time."""
        self.recognizer.check()
        for extra in (self.line_recognizer, self.fast_recognizer):
            if extra is not None:
                extra.check()
        img = np.full((64, 256, 3), 255, dtype=np.uint8)
        img[24:40, 16:240] = 0
        self.detector(img)
        if self.classifier is not None:
            self.classifier([img])

    def recognize(self, image_bytes: bytes, det: str = "on", document: dict[str, Any] | None = None) -> dict[str, Any]:
        """OCR one image; with `document`, a PDF's probe or one page of a PDF or multi-page
        TIFF (see models.documents)."""
        try:
            if document is not None and document.get("op") == "probe":
                return run_probe(image_bytes, document)
            if document is not None and document.get("op") == "preview":
                return run_preview(image_bytes, document, self.options.max_image_pixels, self.options.min_image_side)
            return self._recognize(image_bytes, det, document)
        finally:
            self._release_memory()
            if _malloc_trim is not None:
                _malloc_trim(0)

    def _release_memory(self) -> None:
        limit = self.options.release_memory_mb
        if not self._sessions or limit < 0 or (limit > 0 and resident_mb() <= limit):
            return
        try:
            for session in self._sessions:
                session.release_memory()
        except Exception as exc:  # noqa: BLE001 - memory kept is no reason to lose the task's answer
            print(f"releasing the models' buffers failed: {type(exc).__name__}: {exc}", file=sys.stderr)

    def _recognize(self, image_bytes: bytes, det: str, document: dict[str, Any] | None = None) -> dict[str, Any]:
        if det not in DET_MODES:
            raise ValueError(f"det must be one of {DET_MODES}, got {det!r}")
        t0 = time.perf_counter()
        max_pixels, min_side = self.options.max_image_pixels, self.options.min_image_side
        if document is None:
            img = decode_image(image_bytes, max_pixels=max_pixels, min_side=min_side)
        else:
            img = page_pixels(image_bytes, document, max_pixels, min_side)
        t_decode = time.perf_counter()
        h, w = img.shape[:2]
        use_det = det == "on" or (det == "auto" and not looks_like_single_line(w, h))
        # A blank page or strip: no model is asked (a 6000 x 8 blank strip read as a line
        # took seconds, in wide pieces and both ways up, to find nothing).
        # Read as dark print on a light ground, in good contrast; boxes stay where they are
        # (the preview, below, shows the page as it came).
        if is_blank(img):
            reading = _Reading([], use_det, 0.0, 0.0, 0.0)
        else:
            view = readable_tone(img, self.options.invert_dark_ground, self.options.stretch_faint)
            reading = self._read_auto(view, det, use_det)
        t_rec = time.perf_counter()

        preview = None
        if document is not None and document.get("preview"):
            preview = jpeg_preview(img, document["preview"])  # from the pixels just read: no second render
        t_preview = time.perf_counter()

        result = {
            "text_lines": reading.lines,
            "image_size": [int(w), int(h)],
            "timing": {
                "decode": _ms(t_decode - t0),
                "det": _ms(reading.det_seconds),
                "cls": _ms(reading.cls_seconds),
                "rec": _ms(reading.rec_seconds),
                "total": _ms(t_rec - t0),
            },
            "det_used": reading.det_used,
        }
        if preview is not None:
            result["preview"] = preview
            result["timing"]["preview"] = _ms(t_preview - t_rec)
        return result

    def _read_auto(self, img: np.ndarray, det: str, use_det: bool) -> _Reading:
        """The image read with detection or as one line, as `det` and its shape say."""
        reading = self._read(img, use_det)
        if det == "auto" and not use_det and reading.confidence < self.options.auto_det_min_confidence:
            # Shaped like a line but read with little confidence: it may be a small image of
            # several lines. If detection finds several there, and reads them with more
            # confidence, they are the answer. (One line found is the line already read:
            # detection would only cut it differently, or read a lone tall "I" as a vertical
            # line.)
            detected = self._read(img, True)
            if len(detected.lines) > 1 and detected.confidence > reading.confidence:
                return detected.plus_time_of(reading)
            return reading.plus_time_of(detected)
        return reading

    def _read(self, img: np.ndarray, use_det: bool) -> _Reading:
        """The image's lines, with detection or as one line, and the time each stage took."""
        started = time.perf_counter()
        h, w = img.shape[:2]
        read: dict[int, tuple[str, float]] = {}  # lines already read while settling the page's orientation
        if use_det:
            boxes, crops, upside_down, cls_seconds, read, vertical = self._find_lines(img)
        else:
            # Which way the line runs is the image's shape, not its text's: a lone "I" cut
            # from a wide image is taller than wide, and still upright.
            vertical = [is_vertical(np.array([[0, 0], [w, 0], [w, h], [0, h]], dtype=np.float32))]
            x0, y0, x1, y1 = line_extent(img) or (0, 0, w, h)
            boxes = [np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float32)]
            line = img[y0:y1, x0:x1]
            crops = [np.ascontiguousarray(np.rot90(line)) if vertical[0] else line]
            upside_down, cls_seconds = self._upside_down(crops)
        flipped = flip_suspects(upside_down)
        t_cls = time.perf_counter()

        texts = self._read_lines(crops, use_det, read)
        if not use_det and self.line_recognizer is not None:
            for i, (text, score) in enumerate(self.line_recognizer(crops)):
                if score > texts[i][1]:
                    texts[i] = (text, score)
        # A vertical line was turned a quarter one way to be read, which is right for text
        # running down and upside down for text running up: it is read both ways too.
        suspects = [i for i in range(len(crops)) if (flipped and flipped[i]) or vertical[i]]
        if suspects:
            # The mobile cls model flips short upright lines ("8.90 S" read as
            # "S068") with >0.9 confidence on receipts.  Recognise both ways
            # and keep the more confident reading; costs rec time only for the
            # few flagged crops.
            alt = self.recognizer([cv2.rotate(crops[i], cv2.ROTATE_180) for i in suspects])
            for i, (text, score) in zip(suspects, alt):
                if score > texts[i][1]:
                    texts[i] = (text, score)
        t_rec = time.perf_counter()

        lines = []
        for box, (text, score) in zip(boxes, texts):
            if score < self.options.drop_score or not text.strip():
                continue
            lines.append(
                {
                    "text": text.strip(),  # a space read at either end is no part of the line
                    "confidence": round(float(score), 4),
                    "box": [[round(float(x)), round(float(y))] for x, y in box],
                }
            )
        return _Reading(lines, use_det, t_cls - started - cls_seconds, cls_seconds, t_rec - t_cls)

    def _find_lines(
        self, img: np.ndarray
    ) -> tuple[list[np.ndarray], list[np.ndarray], list[float], float, dict[int, tuple[str, float]], list[bool]]:
        """The image's text lines in reading order: boxes in its pixels, crops, each crop's
        probability of being upside down, the seconds the classifier took, the readings
        of the lines the recogniser has already read (by position in that order), and
        which crops were turned a quarter from vertical boxes.

        The page's orientation is settled first, so that a page scanned sideways or upside
        down is cut into lines and ordered as it reads: when most of the text (by length) runs
        up or down, detection runs again on the page turned a quarter clockwise; when its lines
        taken together are upside down, again on it turned round.
        """
        h, w = img.shape[:2]
        view, quarter_turns = img, 0  # view: img turned clockwise by quarter_turns
        boxes = self.detector(view)
        if page_sideways(boxes):
            turned = cv2.rotate(img, cv2.ROTATE_90_CLOCKWISE)
            turned_boxes = self.detector(turned)
            if not page_sideways(turned_boxes):  # else not a turned page (columns of vertical text)
                view, quarter_turns, boxes = turned, 1, turned_boxes
        crops = [crop_box(view, b) for b in boxes]
        upside_down, cls_seconds = self._upside_down(crops)
        read: dict[int, tuple[str, float]] = {}
        if page_upside_down(upside_down, crops):
            turned = cv2.rotate(view, cv2.ROTATE_180)
            turned_boxes = self.detector(turned)
            turned_crops = [crop_box(turned, b) for b in turned_boxes]
            # The classifier's vote can be near even on lines that look alike either way up
            # ("[06]", "[82-03]"); the recogniser settles it: the page turns only if its
            # longest lines read better turned. The turned page is read whole, in the
            # batches the main pass would make (so the same text), and when it is kept,
            # which is nearly always, that reading is the page's (by the main recogniser,
            # even with a fast one configured); as it came, only its longest lines are read.
            turned_read = dict(enumerate(self.recognizer(turned_crops)))
            turned_longest = {i: turned_read[i] for i in _longest(turned_crops)}
            as_it_came = _longest(crops)
            if _confidence(turned_longest, turned_crops) > _confidence(
                dict(zip(as_it_came, self.recognizer([crops[i] for i in as_it_came]))), crops
            ):
                view, quarter_turns, boxes, crops = turned, quarter_turns + 2, turned_boxes, turned_crops
                upside_down, seconds = self._upside_down(crops)
                cls_seconds += seconds
                read = turned_read  # the main pass need not read them again
        order = reading_order(boxes)
        return (
            [box_in_image(boxes[i], quarter_turns, w, h) for i in order],
            [crops[i] for i in order],
            [upside_down[i] for i in order] if upside_down else [],
            cls_seconds,
            {position: read[i] for position, i in enumerate(order) if i in read},
            [is_vertical(boxes[i]) for i in order],
        )

    def _upside_down(self, crops: list[np.ndarray]) -> tuple[list[float], float]:
        """Each crop's probability of being upside down ([] without a classifier), and the seconds it took."""
        started = time.perf_counter()
        upside_down = self.classifier.upside_down(crops) if self.classifier is not None and crops else []
        return upside_down, time.perf_counter() - started

    def _read_lines(
        self, crops: list[np.ndarray], detected: bool, read: dict[int, tuple[str, float]] | None = None
    ) -> list[tuple[str, float]]:
        """Every crop's reading; `read` holds main-recogniser readings already made."""
        read = read or {}
        texts: list[tuple[str, float]] = [read.get(i, ("", 0.0)) for i in range(len(crops))]
        todo = [i for i in range(len(crops)) if i not in read]
        if not todo:
            return texts
        if self.fast_recognizer is None or not detected:
            for i, reading in zip(todo, self.recognizer([crops[i] for i in todo])):
                texts[i] = reading
            return texts
        # The fast recogniser is right when it is sure; what it is unsure of (rare
        # characters outside its dictionary, hard crops) the main recogniser reads again.
        limit = self.options.fast_rec_min_confidence
        unsure = []
        for i, reading in zip(todo, self.fast_recognizer([crops[i] for i in todo])):
            texts[i] = reading
            if reading[1] < limit:
                unsure.append(i)
        if unsure:
            for i, reading in zip(unsure, self.recognizer([crops[i] for i in unsure])):
                texts[i] = reading
        return texts


def _longest(crops: list[np.ndarray], sample: int = ORIENTATION_SAMPLE) -> list[int]:
    """Indices of the `sample` longest crops (in line heights)."""
    return sorted(range(len(crops)), key=lambda i: line_length(crops[i]), reverse=True)[:sample]


def _confidence(readings: dict[int, tuple[str, float]], crops: list[np.ndarray]) -> float:
    """Mean recogniser confidence of `readings`, each weighted by its line's length in line heights."""
    if not readings:
        return 0.0
    weights = [line_length(crops[i]) for i in readings]
    scores = [score for _text, score in readings.values()]
    return float(np.dot(weights, scores) / sum(weights))


def create_engine(options: EngineOptions) -> OcrEngine:
    """Load the three models (worker process only) and warm them up."""
    check_model_files(options)
    paths = resolve_model_paths(options)
    threads = options.cpu_threads
    # OpenCV's own pool (resize, perspective crops) would start one thread per host core.
    cv2.setNumThreads(threads)

    kept_memory: list[OvSession] = []  # sessions that keep buffers between runs

    def load(path) -> Session:
        if options.engine == "onnxruntime":
            return OrtSession(path, threads)
        if options.engine == "openvino":
            session = OvSession(path, threads, options.precision)
            kept_memory.append(session)
            return session
        return PaddleSession(path, threads, options.enable_mkldnn)

    det = load(paths.det)
    cls = load(paths.cls) if options.use_angle_cls else None
    rec = load(paths.rec)
    line_recognizer = None
    if options.line_rec_model and options.line_rec_model != options.model and not options.rec_model_dir:
        line_recognizer = _family_recognizer(options, options.line_rec_model, load)
    fast_recognizer = None
    if options.fast_rec_model and options.fast_rec_model != options.model and not options.rec_model_dir:
        fast_recognizer = _family_recognizer(options, options.fast_rec_model, load)
    characters = _characters(rec, paths.rec, paths.rec_dict)
    engine = OcrEngine(
        options, det, cls, rec, characters, model_identity(options), line_recognizer, fast_recognizer, kept_memory
    )
    try:
        engine.warm_up()
    except ModelLoadError:
        raise
    except Exception as exc:
        # Broken-but-loadable files (wrong model in the det slot, ...) fail here.
        raise ModelLoadError(f"model smoke test failed for {paths.det} / {paths.rec}: {exc}") from exc
    return engine


def _family_recognizer(options: EngineOptions, family: str, load: Callable[[Path], Session]) -> TextRecognizer:
    """Another family's recogniser beside the main one. Always that family's own files (the
    options' dictionary belongs to the main recogniser), fp32 files (only the main family's
    det and rec have INT8 variants), computed in bf16 when the engine is."""
    paths = resolve_model_paths(dataclasses.replace(options, model=family, rec_char_dict_path=None, precision="fp32"))
    session = load(paths.rec)
    characters = _characters(session, paths.rec, paths.rec_dict)
    return TextRecognizer(session, characters, options.rec_gap_spaces, options.rec_lookalikes)


def _characters(rec: Session, rec_path: Path, rec_dict: Path | None) -> list[str]:
    if rec_dict is not None:
        return read_char_dict(str(rec_dict))
    chars = rec.character_list()
    if not chars:
        raise ModelLoadError(f"rec model {rec_path} has no embedded 'character' metadata; set rec_char_dict_path")
    return chars
