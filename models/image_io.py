"""Bytes -> 8-bit BGR ndarray, with all the validation the server needs.

Pure functions only.  Every failure mode surfaces as an ``ImageError``
subclass; PIL/OpenCV exceptions never escape.  Size limits are enforced from
the header (``Image.open`` is lazy) *before* any pixel buffer is allocated.
"""

from __future__ import annotations

import contextlib
import io
import warnings

import cv2
import numpy as np
from PIL import Image, ImageFile, ImageOps

from .errors import ImageDecodeError, ImageTooLargeError, ImageTooSmallError

# The formats read here (for GIF and multi-page TIFF, the first frame), as people write them;
# PIL's names are the same in capitals.
SUPPORTED_NAMES = ("JPEG", "PNG", "WebP", "BMP", "TIFF", "GIF")
ALLOWED_FORMATS = tuple(name.upper() for name in SUPPORTED_NAMES)
SUPPORTED_TEXT = ", ".join(SUPPORTED_NAMES[:-1]) + " or " + SUPPORTED_NAMES[-1]

# Leading bytes -> what the file is, to name it in an error instead of "cannot identify".
_SIGNATURES: tuple[tuple[bytes, int, str], ...] = (
    (b"\xff\xd8\xff", 0, "JPEG"),
    (b"\x89PNG\r\n\x1a\n", 0, "PNG"),
    (b"GIF87a", 0, "GIF"),
    (b"GIF89a", 0, "GIF"),
    (b"II*\x00", 0, "TIFF"),
    (b"MM\x00*", 0, "TIFF"),
    (b"%PDF-", 0, "a PDF document"),
    (b"PK\x03\x04", 0, "a ZIP archive (or an Office document)"),
    (b"\x00\x00\x00\x0cjP  ", 0, "JPEG 2000"),
    (b"\xff\x4f\xff\x51", 0, "JPEG 2000"),
    (b"ftypheic", 4, "HEIC"),
    (b"ftypheix", 4, "HEIC"),
    (b"ftypmif1", 4, "HEIF"),
    (b"ftypavif", 4, "AVIF"),
    (b"\x00\x00\x01\x00", 0, "an ICO icon"),
)

# Truncated files must fail, not be silently padded with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False


def _set_pil_limit(max_pixels: int) -> None:
    # Keep PIL's own bomb guard in line with ours.  PIL only *errors* above
    # 2x this value; we reject above 1x ourselves, so PIL's check is a backstop.
    Image.MAX_IMAGE_PIXELS = max_pixels


def probe_size(data: bytes, max_pixels: int = 50_000_000) -> tuple[int, int, str]:
    """Return (width, height, format) from the header only."""
    img = _open(data, max_pixels)
    try:
        return img.size[0], img.size[1], img.format or ""
    finally:
        img.close()


def _open(data: bytes, max_pixels: int) -> Image.Image:
    if not data:
        raise ImageDecodeError("empty request body")
    _set_pil_limit(max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(str(exc)) from exc
    except Exception as exc:  # UnidentifiedImageError, SyntaxError, struct.error...
        raise ImageDecodeError(unreadable_message(data)) from exc


def sniff_kind(data: bytes) -> str | None:
    """What the leading bytes say the file is (None when they match nothing known)."""
    for magic, offset, kind in _SIGNATURES:
        if data[offset : offset + len(magic)] == magic:
            return kind
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    if data[:2] == b"BM" and data[6:10] == b"\x00\x00\x00\x00":  # "BM", file size, reserved zeros
        return "BMP"
    head = data[:256].lstrip().lower()
    if head.startswith(b"<svg") or (head.startswith(b"<?xml") and b"<svg" in data[:4096].lower()):
        return "an SVG drawing"
    if head.startswith((b"<!doctype html", b"<html")):
        return "an HTML page"
    return None


def unreadable_message(data: bytes) -> str:
    """Why `data` cannot be opened, naming what it looks like."""
    kind = sniff_kind(data)
    if kind in SUPPORTED_NAMES:
        return f"corrupt {kind} image: its header cannot be read"
    if kind == "a PDF document":
        return f"the file is a PDF document, which is not supported: send its pages as images ({SUPPORTED_TEXT})"
    if kind is not None:
        return f"the file is {kind}, which is not supported: send {SUPPORTED_TEXT}"
    return f"the file is not an image in a supported format: send {SUPPORTED_TEXT}"


def decode_image(data: bytes, *, max_pixels: int = 50_000_000, min_side: int = 8, frame: int = 0) -> np.ndarray:
    """Decode ``data`` into a contiguous uint8 HxWx3 BGR array (EXIF-upright).

    frame: the page of a multi-page TIFF (0: the first, as for every other format).
    """
    src = img = _open(data, max_pixels)
    try:
        if frame:
            try:
                img.seek(frame)
            except (EOFError, ValueError, OSError) as exc:
                raise ImageDecodeError(f"page {frame + 1} of the {img.format} image cannot be read: {exc}") from exc
        w, h = img.size
        if w * h > max_pixels:
            raise ImageTooLargeError(f"image declares {w}x{h} = {w * h} pixels > limit {max_pixels}")
        if min(w, h) < min_side:
            raise ImageTooSmallError(f"image is {w}x{h}; both sides must be >= {min_side}")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                img.load()
        except Image.DecompressionBombError as exc:
            raise ImageTooLargeError(str(exc)) from exc
        except Exception as exc:  # OSError("image file is truncated"), zlib errors...
            raise ImageDecodeError(f"corrupt or truncated {img.format} image: {exc}") from exc
        img = _upright(img)
        try:
            arr = _to_bgr(img)
        except Exception as exc:
            raise ImageDecodeError(f"unsupported pixel mode {img.mode!r}: {exc}") from exc
    finally:
        img.close()
        src.close()
    return arr


def _upright(img: Image.Image) -> Image.Image:
    # In place: otherwise every image is copied whole, turned or not (~4 ms per 10 MP).
    # A malformed EXIF block is no reason to reject good pixels.
    with contextlib.suppress(Exception):
        ImageOps.exif_transpose(img, in_place=True)
    return img


def _to_bgr(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        # 16/32-bit greyscale: PIL's convert("L") clips at 255, which turns
        # most 16-bit scans white.  Rescale to the 8-bit range instead.
        a = np.asarray(img, dtype=np.float64)
        top = float(a.max()) if a.size else 0.0
        if top > 255.0:
            a = a * (255.0 / max(65535.0, top))
        gray = np.clip(a, 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))

    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode in ("RGBA", "LA", "La", "PA", "RGBa") or (mode == "L" and "transparency" in img.info):
        img = img.convert("RGBA")
    elif mode != "RGB":
        # 1-bit, L, CMYK (PIL inverts Adobe CMYK JPEGs), YCbCr, LAB, HSV...
        img = img.convert("RGB")

    if img.mode == "RGBA":
        # Transparent areas become white: dark text on a transparent canvas
        # would otherwise turn into black-on-black.
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, img).convert("RGB")

    rgb = np.asarray(img, dtype=np.uint8)
    # cvtColor: the same bytes as a reversed-stride numpy copy, ~10x faster on large pages.
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
