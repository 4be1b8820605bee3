"""PDFs and multi-page TIFFs made in the tests: scans from images, born-digital text, hostile files.

Born-digital pages are written by hand (a standard Type1 font, one text object per line), so
the text layer is known exactly.
"""

from __future__ import annotations

import hashlib
import io
import struct
from collections.abc import Callable, Iterable

from PIL import Image

from multirequest import write_pdf

PAGE_WIDTH, PAGE_HEIGHT = 612, 792  # US Letter, points


def image_pdf(images: Iterable[Image.Image], dpi: float = 200) -> bytes:
    """A scanned document: one image per page, the page sized so `dpi` gives the image's pixels back."""
    pages = [image.convert("RGB") for image in images]
    out = io.BytesIO()
    pages[0].save(out, "PDF", save_all=True, append_images=pages[1:], resolution=dpi)
    return out.getvalue()


def multipage_tiff(images: Iterable[Image.Image]) -> bytes:
    pages = [image.convert("RGB") for image in images]
    out = io.BytesIO()
    pages[0].save(out, "TIFF", save_all=True, append_images=pages[1:], compression="tiff_lzw")
    return out.getvalue()


def _escape(text: str) -> bytes:
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)").encode("latin-1")


def text_pdf(
    pages: list[list[str]],
    *,
    font_size: int = 28,
    media_box: tuple[float, float] = (PAGE_WIDTH, PAGE_HEIGHT),
    media_boxes: dict[int, tuple[float, float]] | None = None,
    declared_count: int | None = None,
    trailer_extra: bytes = b"",
    encrypt: Callable[[int, bytes], bytes] | None = None,
) -> bytes:
    """A born-digital PDF: each page's lines in Helvetica, top to bottom.

    media_boxes: other sizes for some pages (by index); declared_count: a /Count that lies;
    encrypt: applied to each content stream with its object number (see password_pdf).
    """
    font = 3 + 2 * len(pages)
    kids = " ".join(f"{3 + 2 * i} 0 R" for i in range(len(pages))).encode()
    count = len(pages) if declared_count is None else declared_count
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [%s] /Count %d >>" % (kids, count)]
    for index, lines in enumerate(pages):
        width, height = (media_boxes or {}).get(index, media_box)
        content = b"BT /F1 %d Tf 72 %d Td " % (font_size, int(height) - 100)
        content += b" ".join(b"(%s) Tj 0 -%d Td" % (_escape(line), 2 * font_size) for line in lines) + b" ET"
        if encrypt is not None:
            content = encrypt(4 + 2 * index, content)
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 %.2f %.2f] /Contents %d 0 R"
            b" /Resources << /Font << /F1 %d 0 R >> >> >>" % (width, height, 4 + 2 * index, font)
        )
        objects.append(b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream")
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    return write_pdf(objects, trailer_extra=trailer_extra)


def nested_text_forms_pdf(pages: int, runs: int = 100, fanout: int = 10, levels: int = 3) -> bytes:
    """A text-layer bomb: each page draws a form that draws another `fanout` times, `levels`
    deep, around `runs` short text objects: runs x fanout**levels text runs a page from a
    file of a few KB."""
    leaf = b"".join(b"BT /F1 4 Tf %d %d Td (Ab%d) Tj ET\n" % (5 + i % 10 * 50, 5 + i // 10 * 5, i % 10) for i in range(runs))
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b"", b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    form = b"<< /Type /XObject /Subtype /Form /BBox [0 0 600 800] /Resources << %s >> /Length %d >>\nstream\n%s\nendstream"
    objects.append(form % (b"/Font << /F1 3 0 R >>", len(leaf), leaf))
    for level in range(levels):
        draws = b"".join(b"q 1 0 0 1 %d %d cm /X Do Q\n" % (i % 3, i // 3) for i in range(fanout))
        objects.append(form % (b"/XObject << /X %d 0 R >>" % (4 + level), len(draws), draws))
    top = len(objects)
    kids = []
    for _ in range(pages):
        number = len(objects) + 1
        kids.append(b"%d 0 R" % number)
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents %d 0 R"
            b" /Resources << /XObject << /X %d 0 R >> >> >>" % (number + 1, top)
        )
        objects.append(b"<< /Length 5 >>\nstream\n/X Do\nendstream")
    objects[1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (b" ".join(kids), pages)
    return write_pdf(objects)


def encrypted_pdf(handler: bytes = b"Custom") -> bytes:
    """A PDF encrypted by a security handler PDFium does not have (`Standard`: one whose
    password nobody has)."""
    encrypt = b"/Encrypt << /Filter /%s /V 1 /R 2 /O <%s> /U <%s> /P -4 >> /ID [<%s> <%s>] " % (
        handler,
        b"ab" * 32,
        b"cd" * 32,
        b"01" * 16,
        b"01" * 16,
    )
    return text_pdf([["SECRET TEXT"]], trailer_extra=encrypt)


# The standard security handler's password padding (PDF 32000-1, 7.6.3.3).
PASSWORD_PAD = bytes.fromhex("28BF4E5E4E758A4164004E56FFFA01082E2E00B6D0683E802F0CA9FE6453697A")


def _rc4(key: bytes, data: bytes) -> bytes:
    state = list(range(256))
    j = 0
    for i in range(256):
        j = (j + state[i] + key[i % len(key)]) % 256
        state[i], state[j] = state[j], state[i]
    out = bytearray()
    i = j = 0
    for byte in data:
        i = (i + 1) % 256
        j = (j + state[i]) % 256
        state[i], state[j] = state[j], state[i]
        out.append(byte ^ state[(state[i] + state[j]) % 256])
    return bytes(out)


def _padded(password: str) -> bytes:
    return (password.encode("latin-1") + PASSWORD_PAD)[:32]


def password_pdf(pages: list[list[str]], user_password: str, owner_password: str = "owner") -> bytes:
    """A born-digital PDF encrypted as PDF writers do (standard handler, RC4 40-bit, revision 2).

    user_password "" makes a PDF that opens without one (only an owner password protects it).
    """
    permissions = -4
    file_id = hashlib.md5(repr(pages).encode()).digest()
    owner = _rc4(hashlib.md5(_padded(owner_password)).digest()[:5], _padded(user_password))
    key = hashlib.md5(_padded(user_password) + owner + struct.pack("<i", permissions) + file_id).digest()[:5]
    user = _rc4(key, PASSWORD_PAD)

    def encrypt(number: int, data: bytes) -> bytes:
        return _rc4(hashlib.md5(key + struct.pack("<i", number)[:3] + b"\0\0").digest()[:10], data)

    trailer = b"/Encrypt << /Filter /Standard /V 1 /R 2 /O <%s> /U <%s> /P %d >> /ID [<%s> <%s>] " % (
        owner.hex().encode(),
        user.hex().encode(),
        permissions,
        file_id.hex().encode(),
        file_id.hex().encode(),
    )
    return text_pdf(pages, trailer_extra=trailer, encrypt=encrypt)


def garbled_first_page_pdf(pages: list[list[str]]) -> bytes:
    """A damaged PDF (at least 2 pages): the first page's dictionary ends in garbage, so the
    parser reads on into the next object. PDFium loads that page once, then refuses it in the
    same open document after it was rendered; a fresh open reads it again."""
    assert len(pages) >= 2
    good = text_pdf(pages)
    damaged = good.replace(b" >> >> >>\nendobj", b" >> 5> >>Tendobj", 1)
    assert damaged != good
    return damaged
