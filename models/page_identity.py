"""A PDF page's content identity, read from what PDFium parsed (the probe), never by rendering.

Two pages with the same identity render to the same pixels, so the OCR of one answers for
the other (the same page inside another PDF is not OCR'd again). Two forms:

- a scan (one image, nothing else drawn): the image's stored bytes, filters, colour space,
  size and placement;
- any other page: every object drawn, in order, with all that decides its pixels (type,
  matrix, colours, line style, clip path; a text object's glyph outlines (or, where they
  cannot be read, its font program), size, render mode and text; a path's segments and fill
  mode; an image's stored bytes and colour space), plus each character's origin as PDFium
  lays the text out.

An image's pixels also depend on entries PDFium's API does not show (/Decode, /DecodeParms,
the colour space's parameters: an ICC profile, a tint transform; masks), so each image is
also decoded and drawn at its own pixel size and those pixels hashed (FPDFImageObj_
GetRenderedBitmap applies all of them); only images with filters whose decoders are simple
(Flate, DCT, LZW, RunLength, ASCII) and at most MAX_IMAGE_PIXELS are read so.

What PDFium's object API does not show at all (optional content set on an image or a form,
a transfer function, a Type 3 glyph's drawing, an uncoloured pattern's cell, the miter limit)
can still change the page: so the identity also holds the page as PDFium draws it, small
(LOOK_DPI, at most LOOK_PIXELS): two pages that read alike and look different never share
an identity (a hidden scan answered with a visible one's text, a blank page with another's).

A page with something this does not read exactly (annotations, transparency or blending,
masked images, clip paths around a scan, shadings, patterns (or a colour PDFium reports for
one: white or 191 grey), optional-content layers, palette images,
JPX or JBIG2 images, an object PDFium cannot describe) has no identity (None): it is then
known by its document and number only. So has a page past the work budget (objects,
characters, segments, pixels; a deadline shared by the whole document): a tiny PDF can draw
10^5 objects from nested forms. Runs in the workers (PDFium is native code reading untrusted
bytes).
"""

from __future__ import annotations

import ctypes
import hashlib
import re
import time
from typing import Any

from .pdf import FORM, IMAGE, PATH, TEXT, count_text_objects

MAX_FORM_DEPTH = 8
# Glyph outlines are compared at this size (font units per em, as most fonts have).
GLYPH_SIZE = 1000.0
SUBSET_TAG = re.compile(rb"^[A-Z]{6}\+")

# The work one page's identity may take, and the time all the pages of one document may take
# together; past either the page has no identity (keyed by document and number: still right).
# Measured here (a shared 2-core machine, pypdfium2 5.15 / PDFium 159): an object costs ~65 us
# (the review's bomb, 1e5 squares drawn by nested forms from 3 KB: 6.5-7 s a page unbounded,
# while the page loads in 0.43 s and renders in 0.5 s); a dense page of 50 lines x 60
# characters (50 objects, 6000 character reads: its text objects and the text layout) 43-46 ms
# here (25 ms in the README's measurement), so ~7 us a character read; a 2500 x 3300 JPEG
# scan is drawn and hashed in 65-76 ms (its page renders at 200 dpi in 79 ms). At these
# limits the bomb's page stops after 0.48 s (about its render time); a normal page is far
# below all of them; the deadline bounds a document of many costly pages.
MAX_OBJECTS = 10_000  # objects visited, form children included (a per-glyph writer: 1 per character)
MAX_CHARACTERS = 100_000  # character reads: ~50 dense pages' worth of text on one page
MAX_SEGMENTS = 200_000  # path, clip and glyph-outline segments read
MAX_IMAGE_PIXELS = 16_000_000  # one image drawn for its pixels (64 MB ARGB), as max_page_pixels
MAX_PAGE_PIXELS = 32_000_000  # all the images of one page
DOCUMENT_SECONDS = 5.0  # all the fingerprints of one document's probe
# The page's look, drawn small: 2-8 ms a page (a 932 x 2852 scan 6 ms, a page of 50 lines of
# text 2 ms, against 30-50 ms for the rest of its identity).
LOOK_DPI = 50.0
LOOK_PIXELS = 1_500_000
# Filters whose decoders are run in the probe to read an image's pixels (simple and bounded by
# MAX_IMAGE_PIXELS); JPX and JBIG2 images are left to the page's own task.
SAFE_FILTERS = frozenset(
    (b"FlateDecode", b"Fl", b"DCTDecode", b"DCT", b"LZWDecode", b"LZW", b"RunLengthDecode", b"RL")
    + (b"ASCIIHexDecode", b"AHx", b"ASCII85Decode", b"A85")
)


class _Unreadable(Exception):
    """Something on the page this identity does not capture exactly."""


class _OverBudget(_Unreadable):
    """The page (or the document) took more work than its identity is worth."""


class FingerprintBudget:
    """The work budget of one document's fingerprints: per-page limits and a shared deadline.

    `spent` counts every unit of work read (objects, characters, segments) over the document,
    `pages_over` the pages left without an identity for lack of budget.
    """

    def __init__(self, seconds: float = DOCUMENT_SECONDS) -> None:
        self.deadline = time.monotonic() + seconds
        self.spent = 0
        self.pixels = 0
        self.pages_over = 0
        self._page: dict[str, int] = {}

    def start_page(self) -> None:
        self._page = {"objects": 0, "characters": 0, "segments": 0, "pixels": 0}
        self.check_time()

    def check_time(self) -> None:
        if time.monotonic() > self.deadline:
            raise _OverBudget("the document's fingerprint deadline")

    def spend(self, kind: str, units: int = 1) -> None:
        used = self._page[kind] = self._page[kind] + units
        if kind == "pixels":
            self.pixels += units
            if used > MAX_PAGE_PIXELS:
                raise _OverBudget(kind)
        else:
            self.spent += units
            limit = MAX_OBJECTS if kind == "objects" else MAX_CHARACTERS if kind == "characters" else MAX_SEGMENTS
            if used > limit:
                raise _OverBudget(kind)
        self.check_time()


def page_fingerprint(page: Any, budget: FingerprintBudget | None = None) -> str | None:
    """The page's content identity (sha256 hex), or None when it cannot be read exactly or
    within `budget` (one per document: its deadline is shared by all its pages)."""
    budget = budget if budget is not None else FingerprintBudget()
    try:
        budget.start_page()
        layout = (page.get_size(), page.get_mediabox(), page.get_cropbox(), page.get_rotation())
        content = _scan_fingerprint(page, layout, budget) or _drawn_fingerprint(page, layout, budget)
        if content is None:
            return None
        return hashlib.sha256(f"{content}|".encode() + _look(page)).hexdigest()
    except _OverBudget:
        budget.pages_over += 1
        return None
    except _Unreadable:
        return None


def _look(page: Any) -> bytes:
    """sha256 of the page drawn small (as render_page draws it for OCR: on white, forms and
    annotations included), at LOOK_DPI or less, to LOOK_PIXELS at most."""
    from .pdf import RenderLimits, render_page

    pixels, _scale = render_page(page, RenderLimits(dpi=LOOK_DPI, max_side=4000, max_pixels=LOOK_PIXELS))
    return hashlib.sha256(repr(pixels.shape).encode() + pixels.tobytes()).digest()


def _scan_fingerprint(page: Any, layout: tuple[Any, ...], budget: FingerprintBudget) -> str | None:
    from pypdfium2 import raw

    if raw.FPDFPage_CountObjects(page.raw) != 1:
        return None
    obj = raw.FPDFPage_GetObject(page.raw, 0)
    if raw.FPDFPageObj_GetType(obj) != IMAGE:
        return None
    if raw.FPDFPageObj_HasTransparency(obj):
        return None  # a blend mode, soft mask or constant alpha of the graphics state
    r, g, b, a = (ctypes.c_uint() for _ in range(4))
    ok = raw.FPDFPageObj_GetFillColor(obj, r, g, b, a)
    _check_pattern(page, obj, IMAGE, [(ok, r.value, g.value, b.value, a.value), (1, 0, 0, 0, 255)])
    clip = raw.FPDFPageObj_GetClipPath(obj)
    if clip and raw.FPDFClipPath_CountPaths(clip) != -1:
        # A clip PDFium kept (one covering the page is dropped when the page is parsed, and
        # then counts -1): not read here, its fill rule cannot be.
        return None
    matrix = raw.FS_MATRIX()
    raw.FPDFPageObj_GetMatrix(obj, matrix)
    placement = (matrix.a, matrix.b, matrix.c, matrix.d, matrix.e, matrix.f)
    image = _image_identity(page, obj, budget)
    digest = hashlib.sha256(b"scan|" + image)
    digest.update(repr((placement, *layout)).encode())
    return digest.hexdigest()


def _image_identity(page: Any, obj: Any, budget: FingerprintBudget) -> bytes:
    """An image's stored bytes, filters, size and colour space, and the pixels PDFium draws of
    it at its own size (its /Decode, /DecodeParms, colour-space parameters, colour-key mask,
    a stencil's fill colour applied): an identity of what it paints. Raises _Unreadable for a
    palette image, a masked one (alpha below opaque; not a stencil), one too large or behind
    a decoder not run here."""
    from pypdfium2 import raw

    meta = raw.FPDF_IMAGEOBJ_METADATA()
    raw.FPDFImageObj_GetImageMetadata(obj, page.raw, meta)
    if meta.colorspace == raw.FPDF_COLORSPACE_INDEXED:
        raise _Unreadable("palette image")  # as the README says: no identity
    filters = []
    for index in range(raw.FPDFImageObj_GetImageFilterCount(obj)):
        name = ctypes.create_string_buffer(64)
        raw.FPDFImageObj_GetImageFilter(obj, index, name, ctypes.sizeof(name))
        filters.append(name.value)
    if any(name not in SAFE_FILTERS for name in filters):
        raise _Unreadable("image filter")
    pixels = meta.width * meta.height
    if not 0 < pixels <= MAX_IMAGE_PIXELS:
        raise _Unreadable("image size")
    budget.spend("pixels", pixels)
    length = raw.FPDFImageObj_GetImageDataRaw(obj, None, 0)
    data = (ctypes.c_ubyte * max(1, length))()
    raw.FPDFImageObj_GetImageDataRaw(obj, data, length)
    digest = hashlib.sha256(memoryview(data)[:length])
    stencil = meta.colorspace == raw.FPDF_COLORSPACE_UNKNOWN and meta.bits_per_pixel == 1
    digest.update(repr((meta.width, meta.height, meta.bits_per_pixel, meta.colorspace, filters, stencil)).encode())
    digest.update(_drawn_pixels(page, obj, meta.width, meta.height, stencil))
    budget.check_time()
    return digest.digest()


def _drawn_pixels(page: Any, obj: Any, width: int, height: int, stencil: bool) -> bytes:
    """sha256 of the image drawn by PDFium at width x height pixels (BGRA), everything applied
    but its placement; the object is moved there for the call and put back."""
    from pypdfium2 import raw

    placed = raw.FS_MATRIX()
    if not raw.FPDFPageObj_GetMatrix(obj, placed):
        raise _Unreadable("image matrix")
    raw.FPDFPageObj_SetMatrix(obj, raw.FS_MATRIX(float(width), 0.0, 0.0, float(height), 0.0, 0.0))
    try:
        bitmap = raw.FPDFImageObj_GetRenderedBitmap(page.pdf.raw, page.raw, obj)
    finally:
        raw.FPDFPageObj_SetMatrix(obj, placed)
    if not bitmap:
        raise _Unreadable("image not drawn")
    try:
        drawn = (raw.FPDFBitmap_GetWidth(bitmap), raw.FPDFBitmap_GetHeight(bitmap), raw.FPDFBitmap_GetFormat(bitmap))
        stride = raw.FPDFBitmap_GetStride(bitmap)
        if drawn != (width, height, raw.FPDFBitmap_BGRA) or stride != 4 * width:
            raise _Unreadable(f"image drawn as {drawn}")
        address = ctypes.cast(raw.FPDFBitmap_GetBuffer(bitmap), ctypes.c_void_p).value
        if not address:
            raise _Unreadable("image not drawn")
        buffer = (ctypes.c_ubyte * (stride * height)).from_address(address)
        if not stencil:
            import numpy as np

            # A soft mask or a /Mask: drawn here at the image's size, while the page draws it at
            # its own (it may be finer): not read. A stencil is its own mask, at its own size.
            if int(np.frombuffer(buffer, np.uint8)[3::4].min()) != 255:
                raise _Unreadable("masked image")
        return hashlib.sha256(buffer).digest()
    finally:
        raw.FPDFBitmap_Destroy(bitmap)


def _drawn_fingerprint(page: Any, layout: tuple[Any, ...], budget: FingerprintBudget) -> str | None:
    from pypdfium2 import raw

    if raw.FPDFPage_GetAnnotCount(page.raw) > 0:
        return None  # annotations are drawn too, from appearance streams not read here
    if not count_text_objects(page, MAX_OBJECTS, walk_limit=MAX_OBJECTS)[1]:
        # Over the objects budget, known from a walk of them (MAX_OBJECTS + 1 visited: what
        # is spent) before PDFium lays out the page's text: seconds for 10^5 text runs.
        budget.spend("objects", MAX_OBJECTS + 1)  # raises _OverBudget
    digest = hashlib.sha256(b"drawn|" + repr(layout).encode())
    textpage = page.get_textpage()
    try:
        reader = _ObjectReader(digest, page, textpage.raw, budget)
        for index in range(raw.FPDFPage_CountObjects(page.raw)):
            reader.read(raw.FPDFPage_GetObject(page.raw, index), 0)
        # Where each glyph lands and how far it reaches (spacing, kerning, scaling, a ligature's
        # glyph against its letters'): PDFium's own text layout.
        x, y = ctypes.c_double(), ctypes.c_double()
        box = [ctypes.c_double() for _ in range(4)]
        count = raw.FPDFText_CountChars(textpage.raw)
        budget.spend("characters", max(0, count))
        for index in range(count):
            if index % 512 == 511:
                budget.check_time()
            raw.FPDFText_GetCharOrigin(textpage.raw, index, x, y)
            raw.FPDFText_GetCharBox(textpage.raw, index, *box)
            code = raw.FPDFText_GetUnicode(textpage.raw, index)
            size = raw.FPDFText_GetFontSize(textpage.raw, index)
            digest.update(repr((code, x.value, y.value, [side.value for side in box], size)).encode())
    finally:
        textpage.close()
    return digest.hexdigest()


# What FPDFPageObj_GetFillColor (GetStrokeColor) reports for a colour of the /Pattern space: a
# shading pattern reads white, a coloured tiling pattern this grey (PDFium 159: the pattern's own
# colours are not described, nor is the colour space). A plain fill of one of these colours
# reads the same, so one painted in them cannot be told from a pattern: no identity.
PATTERN_COLOURS = frozenset(((255, 255, 255), (191, 191, 191)))


def _check_pattern(page: Any, obj: Any, kind: int, colours: list[tuple[int, int, int, int, int]]) -> None:
    """Raise _Unreadable when a colour the object paints with may be a pattern (PATTERN_COLOURS)."""
    from pypdfium2 import raw

    fill, stroke = colours
    if kind == PATH:
        fill_mode, stroked = ctypes.c_int(), ctypes.c_int()
        raw.FPDFPath_GetDrawMode(obj, fill_mode, stroked)
        painted = [fill] if fill_mode.value else []
        painted += [stroke] if stroked.value else []
    elif kind == TEXT:
        mode = raw.FPDFTextObj_GetTextRenderMode(obj)
        painted = [fill] if mode in (0, 2, 4, 6) else []
        painted += [stroke] if mode in (1, 2, 5, 6) else []
    elif kind == IMAGE:
        painted = [fill]  # a stencil mask is painted in the fill colour; another image: none
    else:
        return  # a form's children carry their own colours
    if any(not ok or (r, g, b) in PATTERN_COLOURS for ok, r, g, b, _ in painted):
        if kind == IMAGE and not _is_stencil(page, obj):
            return
        raise _Unreadable("a pattern colour, or one PDFium reports for a pattern")


def _is_stencil(page: Any, obj: Any) -> bool:
    from pypdfium2 import raw

    meta = raw.FPDF_IMAGEOBJ_METADATA()
    raw.FPDFImageObj_GetImageMetadata(obj, page.raw, meta)
    return meta.colorspace == raw.FPDF_COLORSPACE_UNKNOWN and meta.bits_per_pixel == 1


class _ObjectReader:
    def __init__(self, digest: Any, page: Any, textpage: Any, budget: FingerprintBudget) -> None:
        self.digest = digest
        self.pdf_page = page
        self.textpage = textpage
        self.budget = budget
        self.fonts: dict[tuple[int, bool], bytes] = {}  # (font handle, program read) -> identity
        self.glyphs: dict[tuple[int, str], bytes] = {}  # (font handle, character) -> its outline

    def put(self, *values: Any) -> None:
        self.digest.update(repr(values).encode())

    def read(self, obj: Any, depth: int) -> None:
        from pypdfium2 import raw

        self.budget.spend("objects")
        kind = raw.FPDFPageObj_GetType(obj)
        if kind not in (TEXT, PATH, IMAGE, FORM) or depth > MAX_FORM_DEPTH:
            raise _Unreadable(f"object type {kind}")
        self._marks(obj)
        active = ctypes.c_int(1)
        raw.FPDFPageObj_GetIsActive(obj, active)
        matrix = raw.FS_MATRIX()
        raw.FPDFPageObj_GetMatrix(obj, matrix)
        self.put("object", kind, active.value, (matrix.a, matrix.b, matrix.c, matrix.d, matrix.e, matrix.f))
        colours = self._style(obj)
        opaque = all(alpha == 255 for _, _, _, _, alpha in colours)
        _check_pattern(self.pdf_page, obj, kind, colours)
        if raw.FPDFPageObj_HasTransparency(obj) and (opaque or kind in (IMAGE, FORM)):
            # Not a constant alpha (that is in the colours read above): a blend mode, a soft
            # mask or a transparency group, none of which PDFium describes.
            raise _Unreadable("transparency")
        self._clip(obj)
        if kind == TEXT:
            self._text(obj)
        elif kind == PATH:
            self._path(obj)
        elif kind == IMAGE:
            self._image(obj)
        else:
            for index in range(raw.FPDFFormObj_CountObjects(obj)):
                self.read(raw.FPDFFormObj_GetObject(obj, index), depth + 1)
            self.put("end form")

    def _marks(self, obj: Any) -> None:
        from pypdfium2 import raw

        for index in range(raw.FPDFPageObj_CountMarks(obj)):
            mark = raw.FPDFPageObj_GetMark(obj, index)
            size = ctypes.c_ulong()
            buffer = (ctypes.c_ushort * 64)()
            raw.FPDFPageObjMark_GetName(mark, buffer, ctypes.sizeof(buffer), size)
            name = bytes(buffer)[: max(0, size.value - 2)].decode("utf-16-le", errors="replace")
            if name == "OC":
                raise _Unreadable("optional content")  # shown or hidden by the document's layers

    def _style(self, obj: Any) -> list[tuple[int, int, int, int, int]]:
        """Put the colours (with their alpha) and line style; the (ok, r, g, b, a) of the fill and
        the stroke colours."""
        from pypdfium2 import raw

        colours = []
        for getter in (raw.FPDFPageObj_GetFillColor, raw.FPDFPageObj_GetStrokeColor):
            r, g, b, a = (ctypes.c_uint() for _ in range(4))
            ok = getter(obj, r, g, b, a)
            colours.append((ok, r.value, g.value, b.value, a.value))
        width = ctypes.c_float()
        raw.FPDFPageObj_GetStrokeWidth(obj, width)
        dashes = max(0, raw.FPDFPageObj_GetDashCount(obj))
        dash_array = (ctypes.c_float * max(1, dashes))()
        if dashes:
            raw.FPDFPageObj_GetDashArray(obj, dash_array, dashes)
        phase = ctypes.c_float()
        raw.FPDFPageObj_GetDashPhase(obj, phase)
        line = (raw.FPDFPageObj_GetLineJoin(obj), raw.FPDFPageObj_GetLineCap(obj))
        self.put("style", colours, width.value, list(dash_array)[:dashes], phase.value, line)
        return colours

    def _segments(self, count: int, segment_at: Any) -> list[tuple[Any, ...]]:
        from pypdfium2 import raw

        self.budget.spend("segments", max(0, count))
        x, y = ctypes.c_float(), ctypes.c_float()
        segments = []
        for index in range(count):
            segment = segment_at(index)
            raw.FPDFPathSegment_GetPoint(segment, x, y)
            segments.append(
                (raw.FPDFPathSegment_GetType(segment), raw.FPDFPathSegment_GetClose(segment), x.value, y.value)
            )
        return segments

    def _clip(self, obj: Any) -> None:
        from pypdfium2 import raw

        clip = raw.FPDFPageObj_GetClipPath(obj)
        if not clip:
            self.put("no clip")
            return
        for path in range(raw.FPDFClipPath_CountPaths(clip)):
            count = raw.FPDFClipPath_CountPathSegments(clip, path)
            if count < 0:
                raise _Unreadable("clip path")  # a text clip: not described by segments
            self.put(
                "clip",
                self._segments(count, lambda index, path=path: raw.FPDFClipPath_GetPathSegment(clip, path, index)),
            )

    def _text(self, obj: Any) -> None:
        from pypdfium2 import raw

        size = ctypes.c_float()
        raw.FPDFTextObj_GetFontSize(obj, size)
        length = raw.FPDFTextObj_GetText(obj, self.textpage, None, 0)
        buffer = (ctypes.c_ushort * max(1, length // 2))()
        raw.FPDFTextObj_GetText(obj, self.textpage, buffer, length)
        text = bytes(buffer)[: max(0, length - 2)].decode("utf-16-le", errors="surrogatepass")
        self.budget.spend("characters", len(text))
        font = raw.FPDFTextObj_GetFont(obj)
        if not font:
            raise _Unreadable("text without a font")
        # The outlines of the glyphs drawn, not the font program: a font subset differs from one
        # PDF to the next (it holds the glyphs that document uses) while the page looks the same.
        glyphs = self._glyphs(font, text)
        font_id = self._font(font, with_program=glyphs is None)
        self.put("text", font_id, glyphs, size.value, raw.FPDFTextObj_GetTextRenderMode(obj), text)

    def _glyphs(self, font: Any, text: str) -> list[bytes] | None:
        """Each visible character's outline (hashed), or None when one has no outline to read
        (a Type 3 font draws with content streams; no Unicode mapping: no glyph to look up)."""
        from pypdfium2 import raw

        handle = ctypes.cast(font, ctypes.c_void_p).value or 0
        outlines = []
        for char in text:
            if char.isspace():
                continue
            key = (handle, char)
            if key not in self.glyphs:
                path = raw.FPDFFont_GetGlyphPath(font, ord(char), GLYPH_SIZE)
                if not path:
                    return None
                count = raw.FPDFGlyphPath_CountGlyphSegments(path)
                segments = self._segments(
                    count, lambda index, path=path: raw.FPDFGlyphPath_GetGlyphPathSegment(path, index)
                )
                self.glyphs[key] = hashlib.sha256(repr(segments).encode()).digest()
            outlines.append(self.glyphs[key])
        return outlines

    def _font(self, font: Any, with_program: bool) -> bytes:
        from pypdfium2 import raw

        handle = ctypes.cast(font, ctypes.c_void_p).value or 0
        if (handle, with_program) in self.fonts:
            return self.fonts[handle, with_program]
        name_length = raw.FPDFFont_GetBaseFontName(font, None, 0)
        name = ctypes.create_string_buffer(max(1, name_length))
        raw.FPDFFont_GetBaseFontName(font, name, name_length)
        base = SUBSET_TAG.sub(b"", name.value)  # "ABCDEF+Helvetica": the tag is per subset
        identity = hashlib.sha256(base + repr(raw.FPDFFont_GetFlags(font)).encode())
        if with_program and raw.FPDFFont_GetIsEmbedded(font):
            size = ctypes.c_ulong()
            raw.FPDFFont_GetFontData(font, None, 0, size)
            data = (ctypes.c_ubyte * max(1, size.value))()
            if not raw.FPDFFont_GetFontData(font, data, size.value, size):
                raise _Unreadable("font data")
            identity.update(memoryview(data)[: size.value])
        self.fonts[handle, with_program] = identity.digest()
        return self.fonts[handle, with_program]

    def _path(self, obj: Any) -> None:
        from pypdfium2 import raw

        fill, stroke = ctypes.c_int(), ctypes.c_int()
        raw.FPDFPath_GetDrawMode(obj, fill, stroke)
        count = raw.FPDFPath_CountSegments(obj)
        self.put(
            "path",
            fill.value,
            stroke.value,
            self._segments(count, lambda index: raw.FPDFPath_GetPathSegment(obj, index)),
        )

    def _image(self, obj: Any) -> None:
        """As a scan's image is read (stored bytes and the pixels drawn of them); a palette
        image, a masked one or one past the limits has no identity."""
        self.put("image", _image_identity(self.pdf_page, obj, self.budget).hex())
