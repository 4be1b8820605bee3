"""Bytes -> 8-bit BGR ndarray, with all the validation the server needs.

Pure functions only.  Every failure mode surfaces as an ``ImageError``
subclass; PIL/OpenCV exceptions never escape.  Size limits are enforced from
the header (``Image.open`` is lazy) *before* any pixel buffer is allocated.
"""

from __future__ import annotations

import contextlib
import io
import re
import warnings
from collections.abc import Iterator

import cv2
import numpy as np
from PIL import Image, ImageFile, ImageOps, TiffImagePlugin

from .errors import ImageDecodeError, ImageError, ImageTooLargeError, ImageTooSmallError
from .png_rows import missing_rows
from .tiff import is_tiff, page_tags

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
    (b"II+\x00", 0, "TIFF"),  # BigTIFF
    (b"MM\x00+", 0, "TIFF"),
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

# The longest side read (JPEG's own limit). Detection works along a strip in tiles: a
# 300000 x 16 strip of 5 KB took 11 s, a 48-megapixel one past any task timeout.
MAX_SIDE = 65_535

# Truncated files must fail, not be silently padded with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False


def _set_pil_limit(max_pixels: int) -> None:
    # Keep PIL's own bomb guard in line with ours.  PIL only *errors* above
    # 2x this value; we reject above 1x ourselves, so PIL's check is a backstop.
    Image.MAX_IMAGE_PIXELS = max_pixels


def _bomb_error(exc: Exception, max_pixels: int) -> ImageTooLargeError:
    """PIL's own refusal (past twice its limit) in our words, with our limit: its text named
    twice the configured one."""
    found = re.search(r"\((\d+) pixels\)", str(exc))
    size = f"{found.group(1)} pixels" if found else "more pixels"
    return ImageTooLargeError(f"image declares {size} > limit {max_pixels}")


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
        raise _bomb_error(exc, max_pixels) from exc
    except Exception as exc:  # UnidentifiedImageError, SyntaxError, struct.error...
        if data[:4] == b"MM\x00+":
            # Pillow (12.x) reads a big-endian BigTIFF's IFDs as a classic TIFF's.
            raise ImageDecodeError(
                "unsupported TIFF image: a big-endian (MM) BigTIFF cannot be read; send a little-endian one "
                "or a classic TIFF"
            ) from exc
        reason = _tiff_reason(data, 0, _tiff_open_error(data, exc)) if is_tiff(data) else None
        if reason is not None:
            raise ImageDecodeError(f"unsupported TIFF image: {reason}") from exc
        raise ImageDecodeError(unreadable_message(data)) from exc


def _tiff_open_error(data: bytes, exc: Exception) -> Exception:
    """Why PIL cannot open this TIFF: Image.open hides it behind "cannot identify"."""
    if not isinstance(exc, Image.UnidentifiedImageError):
        return exc
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            TiffImagePlugin.TiffImageFile(io.BytesIO(data)).close()
    except Exception as cause:  # noqa: BLE001 - it is only looked at
        return cause
    return exc


# PIL's words for a page whose samples it has no decoder for.
_PIXEL_FORMAT_ERRORS = ("unknown pixel mode", "samples per pixel")
_SAMPLE_KINDS = {1: "unsigned integer", 2: "signed integer", 3: "floating-point"}
_PHOTOMETRIC = {0: "greyscale", 1: "greyscale", 2: "RGB", 3: "palette", 4: "mask", 5: "CMYK", 6: "YCbCr", 8: "CIELab"}


def _tiff_reason(data: bytes, frame: int, exc: Exception) -> str | None:
    """What about this TIFF page PIL cannot read, when it is an unsupported pixel format or
    compression (rather than a corrupt header); None otherwise."""
    try:
        tags = page_tags(data, frame, (258, 259, 262, 277, 339))
        if isinstance(exc, KeyError) and 259 in tags and tags[259][0] not in TiffImagePlugin.COMPRESSION_INFO:
            return f"its compression ({tags[259][0]}) is not supported"
        if isinstance(exc, SyntaxError) and any(words in str(exc) for words in _PIXEL_FORMAT_ERRORS):
            return f"its pixel format ({_pixel_format(tags)}) is not supported"
    except Exception:  # noqa: BLE001 - a reason is a courtesy: the error stays typed without it
        return None
    return None


def _pixel_format(tags: dict[int, tuple[int, ...]]) -> str:
    samples = tags.get(277, (1,))[0]
    bits = "/".join(str(b) for b in sorted(set(tags.get(258, (1,)))))
    kind = _SAMPLE_KINDS.get(tags.get(339, (1,))[0], "unknown-type")
    photometric = tags.get(262, (None,))[0]
    colour = _PHOTOMETRIC.get(photometric, f"photometric interpretation {photometric}")  # type: ignore[arg-type]
    return f"{samples} x {bits}-bit {kind} sample{'s' if samples != 1 else ''} per pixel, {colour}"


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
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    img.seek(frame)
            except Image.DecompressionBombError as exc:
                raise _bomb_error(exc, max_pixels) from exc
            except Exception as exc:  # EOFError; SyntaxError, KeyError...: a page's IFD PIL rejects
                raise _page_error(data, frame, img.format, exc) from exc
        w, h = img.size
        if w * h > max_pixels:
            raise ImageTooLargeError(f"image declares {w}x{h} = {w * h} pixels > limit {max_pixels}")
        if min(w, h) < min_side:
            raise ImageTooSmallError(f"image is {w}x{h}; both sides must be >= {min_side}")
        if max(w, h) > MAX_SIDE:
            raise ImageTooLargeError(f"image is {w}x{h}; a side over {MAX_SIDE} px is not read")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                img.load()
        except Image.DecompressionBombError as exc:
            raise _bomb_error(exc, max_pixels) from exc
        except Exception as exc:  # OSError("image file is truncated"), zlib errors...
            raise ImageDecodeError(f"corrupt or truncated {img.format} image: {exc}") from exc
        if img.format == "PNG" and _tail_unset(img):
            short = missing_rows(data)
            if short is not None:
                raise ImageDecodeError(
                    f"corrupt or truncated PNG image: its pixel data ends after {short[0]} of its {short[1]} rows"
                )
        img = _upright(img)
        try:
            arr = _to_bgr(img)
        except Exception as exc:
            raise ImageDecodeError(f"unsupported pixel mode {img.mode!r}: {exc}") from exc
    finally:
        img.close()
        src.close()
    return arr


def _tail_unset(img: Image.Image) -> bool:
    """Whether a decoded PNG ends in a pixel of all zeros, where pixel data that stops short
    leaves the ones it never wrote (only then is it checked: that costs a second inflate).
    Rows come in order, so the last pixel is the last one written; an interlaced image's
    last pass fills every other row, so any pixel of its last two rows may be."""
    w, h = img.size
    if not img.info.get("interlace"):
        pixel = img.getpixel((w - 1, h - 1))
        return not any(pixel) if isinstance(pixel, tuple) else not pixel
    tail = np.asarray(img.crop((0, max(0, h - 2), w, h)))
    return bool((tail.reshape(tail.shape[0], w, -1) == 0).all(axis=2).any())


def _page_error(data: bytes, frame: int, fmt: str | None, exc: Exception) -> ImageError:
    """The typed error for a page past the first that cannot be opened, as the first would get."""
    where = f"page {frame + 1} of the {fmt} image cannot be read"
    reason = _tiff_reason(data, frame, exc) if is_tiff(data) else None
    if reason is not None:
        return ImageDecodeError(f"{where}: {reason}")
    if isinstance(exc, (EOFError, ValueError, OSError)):
        return ImageDecodeError(f"{where}: {exc}")
    return ImageDecodeError(f"{where}: its header is corrupt ({type(exc).__name__}: {exc})")


# EXIF orientation -> the turn that displays the image upright.
_TURNS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def exif_orientation(img: Image.Image) -> int:
    """The orientation (1-8) of the image's own EXIF block, as browsers and OpenCV read it;
    1 when there is none or it cannot be read. Pillow's getexif() also takes one from an XMP
    packet or a PNG text chunk holding a copy of EXIF (ImageMagick's "Raw profile type
    exif"), which viewers ignore: an upright image with a stale copy came back turned, its
    boxes in a frame its user never sees."""
    raw = img.info.get("exif")
    if not raw:
        return 1
    exif = Image.Exif()
    exif.load(raw)
    orientation = exif.get(0x0112, 1)
    return orientation if orientation in _TURNS else 1


def _upright(img: Image.Image) -> Image.Image:
    # A malformed EXIF block is no reason to reject good pixels.
    with contextlib.suppress(Exception):
        if img.format == "TIFF":
            # Orientation is one of a TIFF page's own tags (or its XMP packet's, which the
            # page's identity follows too). In place: else every page is copied, turned or not.
            ImageOps.exif_transpose(img, in_place=True)
        elif (orientation := exif_orientation(img)) != 1:
            return img.transpose(_TURNS[orientation])
    return img


# Pixels per band of rows in the 16/32-bit and alpha conversions: their wider temporaries
# stay a few MB. np.asarray(img) would copy the whole image, twice over at its peak (PIL's
# tobytes joins a list of chunks).
BAND_PIXELS = 1 << 20


def _band_images(img: Image.Image) -> Iterator[tuple[int, Image.Image]]:
    """(top row, crop) of each band of rows of the image, top to bottom."""
    width, height = img.size
    step = max(1, BAND_PIXELS // max(width, 1))
    for top in range(0, height, step):
        yield top, img.crop((0, top, width, min(height, top + step)))


def _bands(img: Image.Image) -> Iterator[tuple[int, np.ndarray]]:
    """(top row, pixels) of each band of rows of the image, top to bottom."""
    for top, band in _band_images(img):
        yield top, np.asarray(band)


def _to_bgr(img: Image.Image) -> np.ndarray:
    mode = img.mode
    # A PNG may mark one colour transparent (tRNS; optimisers write it for RGBA images whose
    # alpha is only 0 or 255): such pixels are transparency, whatever colour they hold.
    keyed = "transparency" in img.info and mode != "P"
    if mode.startswith("I;16") or mode in ("I", "F"):
        # 16/32-bit greyscale: PIL's convert("L") clips at 255, which turns
        # most 16-bit scans white.  Rescale to the 8-bit range instead.
        grey = _deep_grey_to_bgr(img)
        return _keyed_deep_grey(img, grey) if keyed else grey
    if mode in ("RGBA", "LA"):
        return _on_ground(img)

    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode in ("La", "PA", "RGBa") or keyed:
        img = img.convert("RGBA")
    elif mode != "RGB":
        # 1-bit, L, CMYK (PIL inverts Adobe CMYK JPEGs), YCbCr, LAB, HSV...
        img = img.convert("RGB")

    if img.mode == "RGBA":
        return _on_ground(img)

    rgb = np.asarray(img, dtype=np.uint8)
    # cvtColor: the same bytes as a reversed-stride numpy copy, ~10x faster on large pages.
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)


def _keyed_deep_grey(img: Image.Image, grey: np.ndarray) -> np.ndarray:
    """A 16/32-bit greyscale image whose key value is transparent: `grey` (its pixels
    rescaled to 8 bits) with those pixels made transparency, then grounded as alpha is."""
    key = np.asarray(img) == img.info["transparency"]
    alpha = np.where(key, 0, 255).astype(np.uint8)
    return _on_ground(Image.fromarray(np.dstack((grey[:, :, 0], alpha)), "LA"))


# The alpha from which a pixel counts as drawn, when choosing the ground.
DRAWN_ALPHA = 128


def ground_of(img: Image.Image) -> int:
    """The grey that transparent areas of an RGBA or LA image become: white (255), unless
    most of what is drawn where the image turns transparent is light (0, black): white text
    on a transparent canvas would otherwise become white on white. Only the drawn pixels
    next to transparent ones count: they are what the ground will touch (text on an opaque
    light panel is read on its panel whatever the ground)."""
    edge_pixels = light = 0
    for _, band in _band_images(img):
        if band.getextrema()[-1][0] == 255:
            continue  # opaque: no ground shows here
        grey_alpha = np.asarray(band.convert("LA"))
        drawn = grey_alpha[:, :, 1] >= DRAWN_ALPHA
        clear = np.logical_not(drawn).astype(np.uint8)
        edges = drawn & (cv2.dilate(clear, np.ones((3, 3), np.uint8)) > 0)
        edge_pixels += int(np.count_nonzero(edges))
        light += int(np.count_nonzero(grey_alpha[:, :, 0][edges] >= 128))
    return 0 if light * 2 > edge_pixels else 255


def _on_ground(img: Image.Image) -> np.ndarray:
    """An RGBA or LA image composited on an opaque ground (see ground_of), as BGR.

    Transparent areas become white for dark text (black-on-black otherwise), black for
    light text. PIL's alpha_composite over the ground, a band of rows at a time: its C loop
    at its speed, without a ground, composite and RGB copy of the whole image at once.
    """
    width, height = img.size
    out = np.empty((height, width, 3), dtype=np.uint8)
    ground: int | None = None  # decided at the first band that is not opaque
    for top, band in _band_images(img):
        rows = slice(top, top + band.size[1])
        if band.getextrema()[-1][0] == 255:
            # Opaque (screenshots are often RGBA with no transparency): the colours as they are.
            pixels = np.asarray(band.convert("RGB"))
        else:
            if ground is None:
                ground = ground_of(img)
            canvas = Image.new("RGBA", band.size, (ground, ground, ground, 255))
            pixels = np.asarray(Image.alpha_composite(canvas, band.convert("RGBA")).convert("RGB"))
        out[rows] = cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)
    return out


def _deep_grey_to_bgr(img: Image.Image) -> np.ndarray:
    """16/32-bit integer or float greyscale as 8-bit BGR.

    Integers: kept when they lie in 0..255, else stretched from min(0, smallest) .. largest
    to 0..255: a 10- or 12-bit scan in a 16-bit file (0..1023) was divided by 257 into the
    four darkest greys, and negative values were clipped to black. Floats: NaN -> 0 and
    +-inf -> the largest / smallest finite value, then 0..1 data scaled by 255, 0..255 data
    kept, anything else stretched from min(0, smallest) .. largest to 0..255.
    """
    width, height = img.size
    out = np.empty((height, width, 3), dtype=np.uint8)
    if not out.size:
        return out
    if img.mode != "F":
        low, top = _integer_range(img)
        low = min(0, low)
        span = top - low if low < 0 or top > 255 else 0
        for row, band in _bands(img):
            values = band.astype(np.int64)
            if span:
                values -= low
                values *= 255
                values //= span
            np.clip(values, 0, 255, out=values)
            out[row : row + band.shape[0]] = values[:, :, None]
        return out

    low, high = _finite_range(img)
    if low >= 0.0 and high <= 1.0:
        offset, scale = 0.0, 255.0
    elif low >= 0.0 and high <= 255.0:
        offset, scale = 0.0, 1.0
    else:
        offset = min(low, 0.0)
        scale = 255.0 / (high - offset) if high > offset else 0.0
    for row, band in _bands(img):
        values = np.nan_to_num(band.astype(np.float32), copy=False, nan=0.0, posinf=high, neginf=low)
        values -= offset
        values *= scale
        np.clip(values, 0.0, 255.0, out=values)
        out[row : row + band.shape[0]] = values[:, :, None]
    return out


def _integer_range(img: Image.Image) -> tuple[int, int]:
    """The smallest and largest values of an integer image, in one pass over its bands."""
    low, high = 0, 0
    for top, band in _bands(img):
        band_low, band_high = int(band.min()), int(band.max())
        low, high = (band_low, band_high) if top == 0 else (min(low, band_low), max(high, band_high))
    return low, high


def _finite_range(img: Image.Image) -> tuple[float, float]:
    """The smallest and largest finite values of a float image (0, 0 when it has none)."""
    low, high = np.inf, -np.inf
    for _, band in _bands(img):
        finite = band[np.isfinite(band)]
        if finite.size:
            low, high = min(low, float(finite.min())), max(high, float(finite.max()))
    return (low, high) if low <= high else (0.0, 0.0)
