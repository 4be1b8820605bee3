"""Count the pages of a TIFF from its IFD chain: header arithmetic only, cheap enough for the
event loop (no pixel is decoded, the walk stops one page past the limit and at any loop)."""

from __future__ import annotations

import struct

TIFF_MAGIC = (b"II*\x00", b"MM\x00*")


def is_tiff(data: bytes) -> bool:
    return data[:4] in TIFF_MAGIC


def count_tiff_pages(data: bytes, stop_after: int) -> int:
    """Pages in the IFD chain, counting at most `stop_after` + 1.

    A chain that points outside the file or back into itself ends there: the pages read so
    far are what a decoder could reach (at least 1, so a damaged file still goes to the
    decoder and gets its own error).
    """
    if not is_tiff(data) or len(data) < 8:
        return 1
    order = "<" if data[:2] == b"II" else ">"
    (offset,) = struct.unpack_from(order + "I", data, 4)
    seen: set[int] = set()
    pages = 0
    while offset and offset not in seen and pages <= stop_after:
        if offset + 2 > len(data):
            break
        seen.add(offset)
        (entries,) = struct.unpack_from(order + "H", data, offset)
        next_at = offset + 2 + 12 * entries
        if next_at + 4 > len(data):
            pages += 1  # a truncated last IFD: the decoder will say what is wrong with it
            break
        pages += 1
        (offset,) = struct.unpack_from(order + "I", data, next_at)
    return max(pages, 1)
