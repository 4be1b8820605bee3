"""Image decoding defects: a TIFF page whose IFD PIL rejects, BigTIFF documents, float and
16/32-bit greyscale, alpha and memory, and the messages for what cannot be read.

Files are made here (Pillow, numpy, or TIFF bytes written by hand); everything but the last
test calls the models functions directly.
"""

from __future__ import annotations

import io
import re
import struct
import tracemalloc
import zlib
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from handlers.documents import document_kind
from handlers.errors import ApiError
from models import image_io
from models.errors import DocumentCorruptError, ImageDecodeError, ImageError
from models.image_io import decode_image, sniff_kind
from models.pdf import open_pdf
from models.tiff import count_tiff_pages, page_fingerprints
from multirequest import write_pdf
from tests.conftest import RunningServer, random_word, text_image


def text_page(text: str, size: tuple[int, int] = (240, 60)) -> Image.Image:
    image = Image.new("RGB", size, "white")
    ImageDraw.Draw(image).text((10, 10), text, fill="black", font=ImageFont.load_default(size=32))
    return image


def tiff_bytes(pages: list[Image.Image], **options: Any) -> bytes:
    out = io.BytesIO()
    pages[0].save(out, "TIFF", save_all=True, append_images=pages[1:], **options)
    return out.getvalue()


# --- a page past the first whose IFD PIL rejects --------------------------------------------


def patch_ifd(data: bytes, page: int, tag: int, *, value: int | None = None, new_tag: int | None = None) -> bytes:
    """A classic little-endian TIFF with one entry of one page's IFD rewritten."""
    out = bytearray(data)
    (offset,) = struct.unpack_from("<I", out, 4)
    for _ in range(page):
        (entries,) = struct.unpack_from("<H", out, offset)
        (offset,) = struct.unpack_from("<I", out, offset + 2 + 12 * entries)
    (entries,) = struct.unpack_from("<H", out, offset)
    for at in range(offset + 2, offset + 2 + 12 * entries, 12):
        if struct.unpack_from("<H", out, at)[0] == tag:
            if value is not None:
                struct.pack_into("<HHIHH", out, at, tag, 3, 1, value, 0)
            if new_tag is not None:
                struct.pack_into("<H", out, at, new_tag)
            return bytes(out)
    raise AssertionError(f"tag {tag} not on page {page + 1}")


BAD_IFDS = {
    # PIL: KeyError(9999), SyntaxError("unknown data organization" / "Invalid value for samples
    # per pixel" / "unknown pixel mode"): they used to escape as an untyped 500.
    "compression_9999": ({"tag": 259, "value": 9999}, "compression (9999) is not supported"),
    "no_strip_offsets": ({"tag": 273, "new_tag": 65000}, "header is corrupt"),
    "samples_per_pixel_7": ({"tag": 277, "value": 7}, "pixel format (7 x 8-bit"),
    "photometric_99": ({"tag": 262, "value": 99}, "photometric interpretation 99) is not supported"),
}


@pytest.mark.parametrize("case", sorted(BAD_IFDS))
def test_tiff_page_with_an_ifd_pil_rejects_gets_a_typed_unsupported_image_error(case: str) -> None:
    patch, words = BAD_IFDS[case]
    data = patch_ifd(tiff_bytes([text_page("ONE"), text_page("TWO"), text_page("SIX")]), 1, **patch)
    assert decode_image(data, frame=0).shape == (60, 240, 3)
    assert decode_image(data, frame=2).shape == (60, 240, 3)
    with pytest.raises(ImageDecodeError) as raised:
        decode_image(data, frame=1)
    assert raised.value.code == "unsupported_image"
    assert str(raised.value).startswith("page 2 of the TIFF image cannot be read: ")
    assert words in str(raised.value)
    # The same damage on the first page is the same kind of error.
    first = patch_ifd(tiff_bytes([text_page("ONE"), text_page("TWO")]), 0, **patch)
    with pytest.raises(ImageDecodeError):
        decode_image(first)


def test_a_page_past_the_end_of_the_chain_is_still_a_typed_error() -> None:
    with pytest.raises(ImageDecodeError, match="page 3 of the TIFF image cannot be read"):
        decode_image(tiff_bytes([text_page("ONE"), text_page("TWO")]), frame=2)


# --- BigTIFF ----------------------------------------------------------------------------


def bigtiff_by_hand(pages: list[np.ndarray], order: str = "<") -> bytes:
    """Uncompressed 8-bit greyscale pages as a BigTIFF: a 16-byte header, IFDs with an 8-byte
    entry count, 20-byte entries (values left-justified in 8 bytes) and 8-byte offsets."""
    out = bytearray((b"II" if order == "<" else b"MM") + struct.pack(order + "HHHQ", 43, 8, 0, 0))
    link = 8  # where the offset of the next IFD goes
    for pixels in pages:
        height, width = pixels.shape
        data_at = len(out)
        out += pixels.astype(np.uint8).tobytes()
        out += b"\0" * (len(out) % 2)
        struct.pack_into(order + "Q", out, link, len(out))
        entries = [
            (256, 4, "I", width),
            (257, 4, "I", height),
            (258, 3, "H", 8),
            (259, 3, "H", 1),
            (262, 3, "H", 1),
            (273, 16, "Q", data_at),
            (277, 3, "H", 1),
            (278, 4, "I", height),
            (279, 16, "Q", width * height),
        ]
        out += struct.pack(order + "Q", len(entries))
        for tag, kind, fmt, value in entries:
            out += struct.pack(order + "HHQ", tag, kind, 1) + struct.pack(order + fmt, value).ljust(8, b"\0")
        link = len(out)
        out += struct.pack(order + "Q", 0)
    return bytes(out)


def grey_pages(count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [rng.integers(0, 256, (40, 64), dtype=np.uint8) for _ in range(count)]


@pytest.mark.parametrize("order", ["<", ">"])
def test_bigtiff_is_a_document_read_page_by_page(order: str) -> None:
    pages = grey_pages(3)
    data = bigtiff_by_hand(pages, order)
    assert data[:4] == (b"II+\x00" if order == "<" else b"MM\x00+")
    assert sniff_kind(data) == "TIFF"
    assert count_tiff_pages(data, 100) == 3 and count_tiff_pages(data, 1) == 2
    assert document_kind(data, 100) == ("tiff", 3)
    for index, pixels in enumerate(pages):
        if order == ">":  # Pillow reads a big-endian BigTIFF's IFDs as a classic TIFF's
            with pytest.raises(ImageDecodeError, match="big-endian"):
                decode_image(data, frame=index)
            continue
        decoded = decode_image(data, frame=index)
        assert np.array_equal(decoded, np.repeat(pixels[:, :, None], 3, axis=2))
    prints = page_fingerprints(data, 3)
    assert len(prints) == 3 and None not in prints and len(set(prints)) == 3
    # The same page inside another BigTIFF is known as the same.
    assert page_fingerprints(bigtiff_by_hand([pages[2], pages[0]], order), 2) == [prints[2], prints[0]]


def test_bigtiff_pages_have_the_identity_of_the_same_pages_in_a_classic_tiff() -> None:
    pages = [text_page(word) for word in ("ONE", "TWO", "SIX")]
    big = tiff_bytes(pages, big_tiff=True)  # uncompressed: Pillow writes compressed ones as classic TIFF
    classic = tiff_bytes(pages)
    assert big[:4] == b"II+\x00" and document_kind(big, 100) == ("tiff", 3)
    assert page_fingerprints(big, 3) == page_fingerprints(classic, 3)
    assert None not in page_fingerprints(big, 3)


def test_bigtiff_over_the_page_limit_is_refused_and_damaged_ones_do_not_raise() -> None:
    data = bigtiff_by_hand(grey_pages(3))
    with pytest.raises(ApiError) as refused:
        document_kind(data, 2)
    assert (refused.value.status, refused.value.code) == (413, "too_many_pages")
    # "%PDF-" in a BigTIFF's first KiB does not make it a PDF.
    pixels = np.frombuffer(b"%PDF-1.7 " * 320, dtype=np.uint8)[: 40 * 64].reshape(40, 64)
    assert document_kind(bigtiff_by_hand([pixels, pixels]), 100) == ("tiff", 2)
    for damaged in (data[:12], data[: len(data) // 2], data[:4] + b"\x04\x00" + data[6:]):
        assert count_tiff_pages(damaged, 100) >= 1
        assert len(page_fingerprints(damaged, 100)) <= 3
    with pytest.raises(ImageDecodeError):
        decode_image(data[:12])


# --- float and 16/32-bit greyscale ------------------------------------------------------


def float_page() -> np.ndarray:
    """A white page with black text, as float32 in 0..1."""
    return np.asarray(text_page("FLOAT").convert("L"), dtype=np.float32) / 255.0


def tiff_of(values: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(values).save(out, "TIFF")
    return out.getvalue()


def test_float_tiff_in_0_to_1_is_scaled_not_black() -> None:
    page = float_page()
    decoded = decode_image(tiff_of(page))
    expected = np.clip(page * 255.0, 0, 255).astype(np.uint8)
    assert np.abs(decoded[:, :, 0].astype(int) - expected).max() <= 1
    assert decoded[2, 2].tolist() == [255, 255, 255] and decoded.min() < 50


def test_one_nan_or_inf_does_not_blank_a_float_image() -> None:
    page = float_page()
    page[0, 0], page[0, 1], page[0, 2] = np.nan, np.inf, -np.inf
    decoded = decode_image(tiff_of(page))
    assert decoded[5:, 5:].mean() > 200 and decoded.min() == 0  # still a white page with text
    assert decoded[0, 1].tolist() == [255, 255, 255]  # +inf: the brightest finite value


def test_float_outside_0_to_255_is_stretched_by_its_finite_range() -> None:
    values = float_page() * 4000.0 - 1000.0  # -1000 .. 3000
    decoded = decode_image(tiff_of(values))
    assert decoded.max() == 255 and decoded.min() == 0
    assert decoded[2, 2, 0] == 255
    kept = decode_image(tiff_of(float_page() * 200.0))  # already in 0..255: kept as it is
    assert kept.max() == 200


def test_16_bit_is_scaled_by_its_largest_value() -> None:
    values = np.array([[0, 257, 25700, 65535] * 4] * 16, dtype=np.uint16)
    out = io.BytesIO()
    Image.fromarray(values).save(out, "PNG")
    decoded = decode_image(out.getvalue())
    assert decoded[0, :4, 0].tolist() == [0, 1, 100, 255]


def _deep_text_page(ink: int, paper: int, dtype: str, fmt: str) -> bytes:
    """Black-on-white text whose greys are ink and paper, as a 16- or 32-bit greyscale file."""
    page = np.asarray(Image.open(io.BytesIO(text_image("TEN BIT SCAN"))).convert("L"), dtype=np.float64) / 255.0
    values = np.rint(ink + page * (paper - ink)).astype(dtype)
    out = io.BytesIO()
    Image.fromarray(values).save(out, fmt)
    return out.getvalue()


@pytest.mark.parametrize(
    ("ink", "paper", "dtype", "fmt"),
    [(0, 1023, "uint16", "PNG"), (0, 4095, "uint16", "TIFF"), (-255, 0, "int32", "TIFF"), (-5000, 20000, "int32", "TIFF")],
    ids=["10-bit in 16", "12-bit in 16", "negative int32", "int32 across 0"],
)
def test_deep_integer_greys_are_stretched_over_their_own_range(ink: int, paper: int, dtype: str, fmt: str) -> None:
    # 10-bit data in a 16-bit PNG came out in greys 0..3, negative int32 all black: nothing read.
    decoded = decode_image(_deep_text_page(ink, paper, dtype, fmt))[:, :, 0]
    expected = decode_image(text_image("TEN BIT SCAN"))[:, :, 0]  # the same page in 8 bits
    low = min(0, ink)
    assert decoded.max() == 255 and decoded.min() == round((ink - low) * 255 / (paper - low))
    assert np.abs(decoded.astype(int) - np.rint(low_to(expected, ink, paper, low))).max() <= 2


def low_to(page: np.ndarray, ink: int, paper: int, low: int) -> np.ndarray:
    """An 8-bit page's greys as they come back from ink..paper stretched from low..paper."""
    values = ink + page / 255.0 * (paper - ink)
    return (values - low) * 255.0 / (paper - low)


# --- memory: no whole-image float64 arrays or RGBA copies ---------------------------------


def image_of(mode: str, size: tuple[int, int]) -> bytes:
    width, height = size
    ramp = np.tile(np.arange(width, dtype=np.uint32) % 256, (height, 1))
    if mode == "I;16":
        image = Image.fromarray((ramp * 257).astype(np.uint16))
    elif mode == "I":
        image = Image.fromarray((ramp * 100_000).astype(np.int32))
    elif mode == "F":
        image = Image.fromarray((ramp / 255.0).astype(np.float32))
    else:
        image = Image.fromarray(ramp.astype(np.uint8)).convert(mode)
        if mode in ("RGBA", "LA"):
            image.putalpha(Image.fromarray((255 - ramp).astype(np.uint8)))
    out = io.BytesIO()
    image.save(out, "TIFF" if mode in ("I", "F") else "PNG")
    return out.getvalue()


@pytest.mark.parametrize("mode", ["RGBA", "LA", "I;16", "I", "F"])
def test_decoding_allocates_little_beyond_its_output(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(image_io, "BAND_PIXELS", 1 << 16, raising=False)
    data = image_of(mode, (2000, 1500))
    decode_image(data)  # imports and caches out of the measurement
    tracemalloc.start()
    try:
        decoded = decode_image(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Before: a whole-image float64 array (8 bytes a pixel, twice) or full-size RGB copies.
    assert peak < decoded.nbytes + 4_000_000, (peak, decoded.nbytes)


def test_alpha_composite_is_pil_alpha_composite_on_its_ground_to_the_bit() -> None:
    colour, alpha = np.meshgrid(np.arange(256), np.arange(256))
    rgba = np.stack([colour, 255 - colour, (colour * 7) % 256, alpha], axis=2).astype(np.uint8)
    for image in (Image.fromarray(rgba, "RGBA"), Image.fromarray(np.stack([colour, alpha], axis=2).astype(np.uint8), "LA")):
        ground = image_io.ground_of(image)
        canvas = Image.new("RGBA", image.size, (ground, ground, ground, 255))
        expected = np.asarray(Image.alpha_composite(canvas, image.convert("RGBA")).convert("RGB"))[:, :, ::-1]
        out = io.BytesIO()
        image.save(out, "PNG")
        assert np.array_equal(decode_image(out.getvalue()), expected)


def _text_on_transparency(ink: int, hidden: int, mode: str = "RGBA") -> Image.Image:
    """Text of grey `ink` drawn with alpha on a transparent canvas whose hidden colour is `hidden`."""
    mask = Image.new("L", (240, 60), 0)
    ImageDraw.Draw(mask).text((10, 10), "SALE 42", fill=255, font=ImageFont.load_default(size=36))
    image = Image.new(mode, mask.size, (hidden,) * (len(mode) - 1) + (0,))
    image.paste(Image.new(mode, mask.size, (ink,) * (len(mode) - 1) + (255,)), mask=mask)
    return image


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
@pytest.mark.parametrize(("ink", "hidden"), [(0, 0), (0, 255), (255, 0), (255, 255), (40, 0), (230, 255)])
def test_text_on_a_transparent_canvas_keeps_its_contrast(mode: str, ink: int, hidden: int) -> None:
    # Dark text on transparency is read on white; white text (a logo, a dark-mode asset)
    # was put on white too, and vanished: it is read on black.
    out = io.BytesIO()
    _text_on_transparency(ink, hidden, mode).save(out, "PNG")
    pixels = decode_image(out.getvalue())
    ground, text = int(pixels[2, 2, 0]), int(pixels[:, :, 0].min() if ink < 128 else pixels[:, :, 0].max())
    assert abs(ground - text) > 150, (ground, text)


def test_text_on_an_opaque_light_panel_is_read_on_the_panel_whatever_the_ground() -> None:
    # Dark text on a white badge, transparent around it: the badge's edge is light.
    image = Image.new("RGBA", (240, 60), (0, 0, 0, 0))
    ImageDraw.Draw(image).rectangle((5, 5, 235, 55), fill=(255, 255, 255, 255))
    ImageDraw.Draw(image).text((20, 12), "SALE 42", fill=(0, 0, 0, 255), font=ImageFont.load_default(size=30))
    out = io.BytesIO()
    image.save(out, "PNG")
    pixels = decode_image(out.getvalue())
    assert pixels[30, 12].tolist() == [255, 255, 255] and pixels[:, :, 0].min() < 60


@pytest.mark.parametrize("mode", ["RGB", "I;16", "1"])
def test_a_colour_keyed_png_is_transparent_where_the_key_is(mode: str) -> None:
    # tRNS with one colour (optimisers write it for alpha that is only 0 or 255): near-black
    # ink on a black key read as black on black, as if there were no transparency.
    mask = Image.new("L", (240, 60), 0)
    ImageDraw.Draw(mask).text((10, 10), "SALE 42", fill=255, font=ImageFont.load_default(size=36))
    ink = {"RGB": (3, 3, 3), "I;16": 3 * 257, "1": 1}[mode]
    image = Image.new(mode, mask.size, 0)
    image.paste(ink, mask=mask)
    out = io.BytesIO()
    image.save(out, "PNG", transparency=(0, 0, 0) if mode == "RGB" else 0)
    pixels = decode_image(out.getvalue())
    # (The 16-bit ink, the largest value there, is stretched to white: it is read on black.)
    ground, text = int(pixels[2, 2, 0]), int(np.median(pixels[:, :, 0][np.asarray(mask) > 200]))
    assert abs(ground - text) > 150, (mode, ground, text)


# --- messages ---------------------------------------------------------------------------


def raw_tiff(pixels: np.ndarray, sample_format: int, photometric: int) -> bytes:
    """An uncompressed little-endian classic TIFF of `pixels` (H x W or H x W x samples)."""
    height, width = pixels.shape[:2]
    samples = 1 if pixels.ndim == 2 else pixels.shape[2]
    bits = pixels.dtype.itemsize * 8
    arrays = struct.pack("<" + "H" * samples, *[bits] * samples) + struct.pack(
        "<" + "H" * samples, *[sample_format] * samples
    )
    entries = 10
    arrays_at = 8 + 2 + 12 * entries + 4
    data_at = arrays_at + len(arrays)

    body = struct.pack("<H", entries)
    for tag, kind, count, value in (
        (256, 4, 1, width),
        (257, 4, 1, height),
        (258, 3, samples, arrays_at if samples > 2 else bits),
        (259, 3, 1, 1),
        (262, 3, 1, photometric),
        (273, 4, 1, data_at),
        (277, 3, 1, samples),
        (278, 4, 1, height),
        (279, 4, 1, pixels.nbytes),
        (339, 3, samples, arrays_at + 2 * samples if samples > 2 else sample_format),
    ):
        body += struct.pack("<HHII", tag, kind, count, value)
    return (
        b"II*\x00"
        + struct.pack("<I", 8)
        + body
        + b"\0\0\0\0"
        + arrays
        + pixels.astype("<" + pixels.dtype.str[1:]).tobytes()
    )


@pytest.mark.parametrize(
    ("pixels", "photometric", "words"),
    [
        (np.random.default_rng(1).random((40, 64)), 1, "1 x 64-bit floating-point sample per pixel, greyscale"),
        (np.random.default_rng(1).random((40, 64, 3)).astype(np.float32), 2, "3 x 32-bit floating-point samples"),
    ],
)
def test_a_valid_tiff_in_an_unsupported_pixel_format_says_so(pixels: np.ndarray, photometric: int, words: str) -> None:
    data = raw_tiff(pixels, 3, photometric)
    with pytest.raises(ImageDecodeError) as raised:
        decode_image(data)
    message = str(raised.value)
    assert raised.value.code == "unsupported_image"
    assert "pixel format" in message and words in message and "header cannot be read" not in message


def test_a_tiff_with_a_bad_header_is_still_called_corrupt() -> None:
    data = tiff_bytes([text_page("ONE")])
    with pytest.raises(ImageDecodeError, match="corrupt TIFF image: its header cannot be read"):
        decode_image(data[:8] + b"\xff" * 16)


def test_a_pdf_without_pages_says_so() -> None:
    data = write_pdf([b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [] /Count 0 >>"])
    with pytest.raises(DocumentCorruptError) as raised:
        open_pdf(data)
    assert str(raised.value) == "the PDF has no pages" and raised.value.code == "corrupt_document"
    with pytest.raises(DocumentCorruptError, match="corrupt or truncated PDF"):
        open_pdf(data[:40])


def test_decoding_errors_are_all_typed() -> None:
    page = tiff_bytes([text_page("ONE"), text_page("TWO")])
    for damaged in (page[: len(page) // 2], page[:20], page[:4] + b"\xff\xff\xff\x7f" + page[8:]):
        for frame in (0, 1):
            try:
                decode_image(damaged, frame=frame)
            except ImageError:
                pass


ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def png_by_hand(pixels: np.ndarray, interlaced: bool = False, rows_dropped: int = 0) -> bytes:
    """An 8-bit RGB PNG of `pixels` written here (Pillow writes no interlaced PNG), rows
    unfiltered, whose zlib stream leaves out the last `rows_dropped` rows of its pixel data
    (of the last passes, interlaced) and ends cleanly there, as a writer that stopped early
    leaves it. (Cut inside a row, Pillow itself finds the file truncated.)"""
    passes = [pixels[y0::dy, x0::dx] for x0, y0, dx, dy in ADAM7] if interlaced else [pixels]
    rows = [b"\0" + row.tobytes() for part in passes if part.size for row in part]
    height, width = pixels.shape[:2]
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, int(interlaced))
    idat = zlib.compress(b"".join(rows[: len(rows) - rows_dropped]))
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def page_pixels(text: str, size: tuple[int, int] = (241, 67)) -> np.ndarray:
    return np.array(text_page(text, size))


@pytest.mark.parametrize("interlaced", [False, True], ids=["rows in order", "interlaced"])
def test_a_png_whose_pixel_data_stops_short_is_refused_not_padded_with_black(interlaced: bool) -> None:
    # Pillow decodes such a file without a word: the rows never written come out black, and
    # the text they held was silently missing from the answer.
    pixels = page_pixels(random_word())
    for dropped in (1, 33):
        with pytest.raises(ImageDecodeError) as raised:
            decode_image(png_by_hand(pixels, interlaced, dropped))
        assert re.fullmatch(
            r"corrupt or truncated PNG image: its pixel data ends after (\d+) of its 67 rows", str(raised.value)
        ), str(raised.value)
    whole = decode_image(png_by_hand(pixels, interlaced))
    assert np.array_equal(whole, pixels[:, :, ::-1])


@pytest.mark.parametrize("mode", ["1", "L", "P", "RGB", "RGBA", "LA", "I;16", "interlaced RGB"])
def test_a_whole_png_that_ends_in_black_is_read_as_it_is(mode: str) -> None:
    # A black last pixel is what makes the decoder count the pixel data: every pixel format's
    # rows (bits, bytes, samples) must add up to a whole image.
    pixels = page_pixels(random_word())
    pixels[-9:, -31:] = 0
    if mode == "interlaced RGB":
        data = png_by_hand(pixels, interlaced=True)
    else:
        image = Image.fromarray(pixels).convert(mode if mode != "I;16" else "L")
        if mode == "I;16":
            image = Image.fromarray(np.asarray(image).astype(np.uint16) * 257)
        out = io.BytesIO()
        image.save(out, "PNG")
        data = out.getvalue()
    decoded = decode_image(data)
    assert decoded.shape == (67, 241, 3) and not decoded[-9:, -31:].any() and decoded[:9].any()


# --- end to end -------------------------------------------------------------------------


def test_a_bigtiff_document_is_answered_with_all_its_pages(ocr_server: RunningServer) -> None:
    words = [random_word(8) for _ in range(3)]
    pages = [Image.open(io.BytesIO(text_image(word))).convert("RGB") for word in words]
    data = tiff_bytes(pages, big_tiff=True)  # uncompressed: Pillow writes compressed ones as classic TIFF
    assert data[:4] == b"II+\x00"
    response = ocr_server.ocr_upload(data, timeout=300)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["document"] == {"type": "tiff", "pages": 3}
    assert body["pages_failed"] == 0
    assert [page["text_lines"][0]["text"] for page in body["pages"]] == words
