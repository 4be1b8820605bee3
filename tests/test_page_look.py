"""A page's content identity never joins two pages that look different.

The identity (models.page_identity) is read from what PDFium parses; some things change a
page without showing there (an image or a form hidden by an optional-content layer set on
the object itself, a transfer function, a Type 3 glyph's drawing, an uncoloured pattern's
cell). Two such pages shared one identity, so the second was answered from the cache with
the first's text (a hidden scan with the visible one's, or the other way round). The page
as PDFium draws it, small, is part of the identity now. A TIFF page's XMP packet (the
decoder turns a page by the orientation it finds there) is part of a TIFF page's identity.
"""

from __future__ import annotations

import io
import zlib
from typing import Any

import requests
from PIL import Image, ImageDraw, ImageFont, TiffImagePlugin

from models.image_io import decode_image
from models.tiff import page_fingerprints
from multirequest import write_pdf
from tests.conftest import RunningServer, random_word
from tests.test_documents import _first_page_identity as fingerprint


def word_image(text: str) -> Image.Image:
    font = ImageFont.load_default(size=48)
    left, top, right, bottom = font.getbbox(text)
    image = Image.new("L", (right - left + 60, bottom - top + 60), 255)
    ImageDraw.Draw(image).text((30 - left, 30 - top), text, fill=0, font=font)
    return image


def stream(body: bytes, entries: bytes = b"") -> bytes:
    return b"<< /Length %d %s>>\nstream\n" % (len(body), entries) + body + b"\nendstream"


def scan_pdf(image: Image.Image, image_entries: bytes = b"", catalog_entries: bytes = b"", extra: tuple[bytes, ...] = ()) -> bytes:
    """One page holding one greyscale scan (object 5); `extra` objects are numbered from 6."""
    width, height = image.size
    pt_w, pt_h = width * 72 // 200, height * 72 // 200
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R %s>>" % catalog_entries,
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 %d %d] /Contents 4 0 R"
        b" /Resources << /XObject << /Im1 5 0 R >> >> >>" % (pt_w, pt_h),
        stream(b"q %d 0 0 %d 0 0 cm /Im1 Do Q" % (pt_w, pt_h)),
        stream(
            zlib.compress(image.tobytes()),
            b"/Type /XObject /Subtype /Image /Width %d /Height %d /BitsPerComponent 8 /ColorSpace /DeviceGray"
            b" /Filter /FlateDecode %s" % (width, height, image_entries),
        ),
        *extra,
    ]
    return write_pdf(objects)


def text_page_pdf(content: bytes, font: bytes, resources: bytes = b"", extra: tuple[bytes, ...] = ()) -> bytes:
    """One page drawing `content` with `font` as /F1 (object 5); `extra` objects from 6."""
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 400 200] /Contents 4 0 R"
        b" /Resources << /Font << /F1 5 0 R >> %s >> >>" % resources,
        stream(content),
        font,
        *extra,
    ]
    return write_pdf(objects)


HELVETICA = b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"
HIDDEN_LAYER = b"/OCProperties << /OCGs [6 0 R] /D << /OFF [6 0 R] >> >>"
LAYER = b"<< /Type /OCG /Name (layer) >>"


def type3_font(glyph: bytes) -> tuple[bytes, bytes]:
    font = (
        b"<< /Type /Font /Subtype /Type3 /FontBBox [0 0 1000 1000] /FontMatrix [0.001 0 0 0.001 0 0]"
        b" /CharProcs << /a 6 0 R >> /Encoding << /Type /Encoding /Differences [65 /a] >>"
        b" /FirstChar 65 /LastChar 65 /Widths [1000] >>"
    )
    return font, stream(b"1000 0 0 0 1000 1000 d1 " + glyph)


def pairs_that_read_alike_and_look_different() -> dict[str, tuple[bytes, bytes]]:
    scan = word_image("INVOICE 4711 PAID")
    text = b"BT /F1 40 Tf 20 80 Td (TRANSFER TEXT) Tj ET"
    white = b"<< /Type /ExtGState /TR << /FunctionType 2 /Domain [0 1] /C0 [1] /C1 [1] /N 1 >> >>"
    cross, box = type3_font(b"100 w 0 0 m 1000 1000 l S 0 1000 m 1000 0 l S"), type3_font(b"100 w 100 100 900 900 re S")
    pattern = b"/Pattern << /P1 6 0 R >> /ColorSpace << /CsP [/Pattern /DeviceRGB] >>"
    tiles = b"/Type /Pattern /PatternType 1 /PaintType 2 /TilingType 1 /BBox [0 0 40 40] /XStep 40 /YStep 40 /Resources << >> "
    fill = b"/CsP cs 0 0 0 /P1 scn 20 20 360 160 re f"
    return {
        "a scan, and the same scan on a hidden layer": (
            scan_pdf(scan),
            scan_pdf(scan, b"/OC 6 0 R", HIDDEN_LAYER, (LAYER,)),
        ),
        "text, and the same text through a transfer function to white": (
            text_page_pdf(text, HELVETICA),
            text_page_pdf(b"/GS1 gs " + text, HELVETICA, b"/ExtGState << /GS1 6 0 R >>", (white,)),
        ),
        "a Type 3 glyph drawn as a cross, and as a box": (
            text_page_pdf(b"BT /F1 60 Tf 20 80 Td (AAAA) Tj ET", cross[0], extra=(cross[1],)),
            text_page_pdf(b"BT /F1 60 Tf 20 80 Td (AAAA) Tj ET", box[0], extra=(box[1],)),
        ),
        "an uncoloured pattern of crosses, and of boxes": (
            text_page_pdf(fill, HELVETICA, pattern, (stream(b"4 w 5 5 m 35 35 l S 5 35 m 35 5 l S", tiles),)),
            text_page_pdf(fill, HELVETICA, pattern, (stream(b"4 w 5 5 30 30 re S", tiles),)),
        ),
    }


def test_pages_that_read_alike_and_look_different_never_share_an_identity() -> None:
    for case, (first, second) in pairs_that_read_alike_and_look_different().items():
        identities = fingerprint(first), fingerprint(second)
        assert identities[0] != identities[1] or identities[0] is None, case


def test_the_same_page_written_twice_keeps_one_identity() -> None:
    # What the identity is for: the same scan in another PDF (other objects, another layer
    # that is shown) is the same page, and is not read again.
    scan = word_image(f"SAME {random_word(5)}")
    shown = b"/OCProperties << /OCGs [6 0 R] /D << /ON [6 0 R] >> >>"
    plain, layered = scan_pdf(scan), scan_pdf(scan, b"", shown, (LAYER,))
    assert plain != layered
    assert fingerprint(plain) is not None and fingerprint(plain) == fingerprint(layered)


def xmp_tiff(pages: list[Image.Image], orientation: int | None) -> bytes:
    info = TiffImagePlugin.ImageFileDirectory_v2()
    if orientation is not None:
        info[700] = (
            b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
            b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="%d"/>'
            b"</rdf:RDF></x:xmpmeta>" % orientation
        )
        info.tagtype[700] = 1
    out = io.BytesIO()
    pages[0].save(out, "TIFF", save_all=True, append_images=pages[1:], compression="tiff_lzw", tiffinfo=info)
    return out.getvalue()


def test_a_tiff_page_turned_by_its_xmp_packet_is_another_page() -> None:
    pages = [word_image("TURNED BY XMP").convert("RGB"), word_image("SECOND").convert("RGB")]
    upright, turned = xmp_tiff(pages, None), xmp_tiff(pages, 6)
    assert decode_image(upright).shape[:2] != decode_image(turned).shape[:2]  # the decoder turns it
    assert page_fingerprints(upright, 10)[0] != page_fingerprints(turned, 10)[0]


def post_document(server: RunningServer, data: bytes, **fields: Any) -> dict[str, Any]:
    response = requests.post(
        f"{server.url}/ocr_service",
        data={"file_type": "file", **fields},
        files={"file": ("doc.pdf", data)},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    return response.json()


def test_a_hidden_scan_is_not_answered_with_the_visible_ones_text(ocr_server: RunningServer) -> None:
    word = random_word(6)
    scan = word_image(f"PAID {word}")
    visible = post_document(ocr_server, scan_pdf(scan))
    assert word in visible["pages"][0]["text_lines"][0]["text"]
    hidden = post_document(ocr_server, scan_pdf(scan, b"/OC 6 0 R", HIDDEN_LAYER, (LAYER,)))
    # A blank page: nothing read, and not the visible page's answer from the cache.
    assert [(page.get("cached"), page["text_lines"]) for page in hidden["pages"]] == [(False, [])], hidden
