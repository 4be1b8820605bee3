"""Bytes -> 8-bit BGR ndarray, with all the validation the server needs.

Pure functions only.  Every failure mode surfaces as an ``ImageError``
subclass; PIL/OpenCV exceptions never escape.  Size limits are enforced from
the header (``Image.open`` is lazy) *before* any pixel buffer is allocated.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageFile, ImageOps

from .errors import ImageDecodeError, ImageTooLargeError, ImageTooSmallError

ALLOWED_FORMATS = ("JPEG", "PNG", "BMP", "TIFF", "WEBP")

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
        raise ImageDecodeError(f"cannot identify image: {type(exc).__name__}") from exc


def decode_image(data: bytes, *, max_pixels: int = 50_000_000, min_side: int = 8) -> np.ndarray:
    """Decode ``data`` into a contiguous uint8 HxWx3 BGR array (EXIF-upright)."""
    src = img = _open(data, max_pixels)
    try:
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
    try:
        return ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001 - a malformed EXIF block is no reason to reject good pixels
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
    return np.ascontiguousarray(rgb[:, :, ::-1])
