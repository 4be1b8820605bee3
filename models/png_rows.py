"""Whether a PNG's pixel data holds every row its header declares.

A PNG whose zlib stream ends early but cleanly (a writer that stopped, a copy cut at a chunk
boundary and its IEND put back) decodes in Pillow without an error: the rows never written
stay black. Reading one means inflating the pixel data a second time, so the decoder asks
only when the decoded image's last pixel is black (see models.image_io).
"""

from __future__ import annotations

import struct
import zlib

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> samples a pixel
# Adam7: each pass's first column, first row, column step, row step.
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
_INFLATE_STEP = 1 << 20  # bytes inflated at a time: memory stays small whatever the image


def _chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, body) of each whole chunk, in order; stops at IEND or where the file ends."""
    out, pos = [], len(_SIGNATURE)
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        if kind == b"IEND" or pos + 12 + length > len(data):
            break
        out.append((kind, data[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    return out


def _row_bytes(width: int, bits_per_pixel: int) -> int:
    """A row's bytes in the inflated data: its filter byte and its packed samples."""
    return 1 + (width * bits_per_pixel + 7) // 8


def expected_size(width: int, height: int, bit_depth: int, colour_type: int, interlaced: bool) -> int:
    """The inflated pixel data's length for this header: every row of every pass, with the
    filter byte that starts each."""
    bits = bit_depth * _CHANNELS.get(colour_type, 1)
    if not interlaced:
        return height * _row_bytes(width, bits)
    total = 0
    for x0, y0, dx, dy in _ADAM7:
        columns, rows = max(0, -(-(width - x0) // dx)), max(0, -(-(height - y0) // dy))
        if columns and rows:
            total += rows * _row_bytes(columns, bits)
    return total


def inflated_size(stream: bytes, enough: int) -> int:
    """How many bytes the zlib `stream` inflates to, counting no further than `enough`."""
    inflater, total = zlib.decompressobj(), 0
    try:
        while total < enough and not inflater.eof:
            out = inflater.decompress(stream, _INFLATE_STEP)
            stream = inflater.unconsumed_tail
            total += len(out)
            if not out and not stream:
                break  # all the input read, and nothing more held back
    except zlib.error:
        pass  # a broken stream is the decoder's to report; count what came out before it
    return total


def missing_rows(data: bytes) -> tuple[int, int] | None:
    """(rows the pixel data holds, rows the header declares) when a PNG's data stops short,
    else None (complete, or not a PNG whose header can be read here). For an interlaced
    image the rows held are counted as if it were not interlaced: a share of the whole."""
    if not data.startswith(_SIGNATURE):
        return None
    chunks = _chunks(data)
    if not chunks or chunks[0][0] != b"IHDR" or len(chunks[0][1]) < 13:
        return None
    width, height, bit_depth, colour_type, _method, _filter, interlace = struct.unpack(">IIBBBBB", chunks[0][1][:13])
    expected = expected_size(width, height, bit_depth, colour_type, interlace == 1)
    got = inflated_size(b"".join(body for kind, body in chunks if kind == b"IDAT"), expected)
    if got >= expected:
        return None
    return got * height // expected, height
