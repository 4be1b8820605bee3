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

A page with something this does not read exactly (annotations, transparency or blending,
shadings, optional-content layers, palette images, an object PDFium cannot describe) has no
identity (None): it is then known by its document and number only. Runs in the workers
(PDFium is native code reading untrusted bytes); no image decoder runs for it.
"""

from __future__ import annotations

import ctypes
import hashlib
import re
from typing import Any

TEXT, PATH, IMAGE, SHADING, FORM = 1, 2, 3, 4, 5
MAX_FORM_DEPTH = 8
# Glyph outlines are compared at this size (font units per em, as most fonts have).
GLYPH_SIZE = 1000.0
SUBSET_TAG = re.compile(rb"^[A-Z]{6}\+")


def page_fingerprint(page: Any) -> str | None:
    """The page's content identity (sha256 hex), or None when it cannot be read exactly."""
    layout = (page.get_size(), page.get_mediabox(), page.get_cropbox(), page.get_rotation())
    scan = _scan_fingerprint(page, layout)
    if scan is not None:
        return scan
    return _drawn_fingerprint(page, layout)


def _scan_fingerprint(page: Any, layout: tuple[Any, ...]) -> str | None:
    import pypdfium2 as pdfium

    objects = list(page.get_objects(max_depth=1))
    if len(objects) != 1 or not isinstance(objects[0], pdfium.PdfImage):
        return None
    image = objects[0]
    meta = image.get_metadata()
    digest = hashlib.sha256(bytes(image.get_data(decode_simple=False)))
    described = (
        image.get_filters(),
        image.get_matrix().get(),
        (meta.width, meta.height, meta.bits_per_pixel, meta.colorspace),
        *layout,
    )
    digest.update(repr(described).encode())
    return digest.hexdigest()


class _Unreadable(Exception):
    """Something on the page this identity does not capture exactly."""


def _drawn_fingerprint(page: Any, layout: tuple[Any, ...]) -> str | None:
    from pypdfium2 import raw

    if raw.FPDFPage_GetAnnotCount(page.raw) > 0:
        return None  # annotations are drawn too, from appearance streams not read here
    digest = hashlib.sha256(b"drawn|" + repr(layout).encode())
    textpage = page.get_textpage()
    try:
        reader = _ObjectReader(digest, page.raw, textpage.raw)
        for index in range(raw.FPDFPage_CountObjects(page.raw)):
            reader.read(raw.FPDFPage_GetObject(page.raw, index), 0)
        # Where each glyph lands and how far it reaches (spacing, kerning, scaling, a ligature's
        # glyph against its letters'): PDFium's own text layout.
        x, y = ctypes.c_double(), ctypes.c_double()
        box = [ctypes.c_double() for _ in range(4)]
        for index in range(raw.FPDFText_CountChars(textpage.raw)):
            raw.FPDFText_GetCharOrigin(textpage.raw, index, x, y)
            raw.FPDFText_GetCharBox(textpage.raw, index, *box)
            code = raw.FPDFText_GetUnicode(textpage.raw, index)
            size = raw.FPDFText_GetFontSize(textpage.raw, index)
            digest.update(repr((code, x.value, y.value, [side.value for side in box], size)).encode())
    except _Unreadable:
        return None
    finally:
        textpage.close()
    return digest.hexdigest()


class _ObjectReader:
    def __init__(self, digest: Any, page: Any, textpage: Any) -> None:
        self.digest = digest
        self.page = page
        self.textpage = textpage
        self.fonts: dict[tuple[int, bool], bytes] = {}  # (font handle, program read) -> identity
        self.glyphs: dict[tuple[int, str], bytes] = {}  # (font handle, character) -> its outline

    def put(self, *values: Any) -> None:
        self.digest.update(repr(values).encode())

    def read(self, obj: Any, depth: int) -> None:
        from pypdfium2 import raw

        kind = raw.FPDFPageObj_GetType(obj)
        if kind not in (TEXT, PATH, IMAGE, FORM) or depth > MAX_FORM_DEPTH:
            raise _Unreadable(f"object type {kind}")
        self._marks(obj)
        active = ctypes.c_int(1)
        raw.FPDFPageObj_GetIsActive(obj, active)
        matrix = raw.FS_MATRIX()
        raw.FPDFPageObj_GetMatrix(obj, matrix)
        self.put("object", kind, active.value, (matrix.a, matrix.b, matrix.c, matrix.d, matrix.e, matrix.f))
        opaque = self._style(obj)
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

    def _style(self, obj: Any) -> bool:
        """Put the colours (with their alpha) and line style; whether both alphas are opaque."""
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
        return all(alpha == 255 for _, _, _, _, alpha in colours)

    def _segments(self, count: int, segment_at: Any) -> list[tuple[Any, ...]]:
        from pypdfium2 import raw

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
            self.put("clip", self._segments(count, lambda index, path=path: raw.FPDFClipPath_GetPathSegment(clip, path, index)))

    def _text(self, obj: Any) -> None:
        from pypdfium2 import raw

        size = ctypes.c_float()
        raw.FPDFTextObj_GetFontSize(obj, size)
        length = raw.FPDFTextObj_GetText(obj, self.textpage, None, 0)
        buffer = (ctypes.c_ushort * max(1, length // 2))()
        raw.FPDFTextObj_GetText(obj, self.textpage, buffer, length)
        text = bytes(buffer)[: max(0, length - 2)].decode("utf-16-le", errors="surrogatepass")
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
        self.put("path", fill.value, stroke.value, self._segments(count, lambda index: raw.FPDFPath_GetPathSegment(obj, index)))

    def _image(self, obj: Any) -> None:
        """The image's stored bytes, filters, size and colour space, as a scan's are read (no
        decoder runs in the probe: a decoder crash costs a page's task, not the document).
        A palette image has no identity: its palette is not read."""
        from pypdfium2 import raw

        meta = raw.FPDF_IMAGEOBJ_METADATA()
        raw.FPDFImageObj_GetImageMetadata(obj, self.page, meta)
        if meta.colorspace == raw.FPDF_COLORSPACE_INDEXED:
            raise _Unreadable("palette image")
        length = raw.FPDFImageObj_GetImageDataRaw(obj, None, 0)
        data = (ctypes.c_ubyte * max(1, length))()
        raw.FPDFImageObj_GetImageDataRaw(obj, data, length)
        filters = []
        for index in range(raw.FPDFImageObj_GetImageFilterCount(obj)):
            name = ctypes.create_string_buffer(64)
            raw.FPDFImageObj_GetImageFilter(obj, index, name, ctypes.sizeof(name))
            filters.append(name.value)
        described = (meta.width, meta.height, meta.bits_per_pixel, meta.colorspace, filters)
        self.put("image", hashlib.sha256(memoryview(data)[:length]).hexdigest(), described)
