"""A TIFF's pages from its IFD chain, without decoding anything: their count (header
arithmetic only, cheap enough for the event loop: the walk stops one page past the limit and
at any loop) and each page's content identity (hashing, for a thread)."""

from __future__ import annotations

import hashlib
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


# Tags that decide how a page's stored bytes become pixels: with the bytes themselves, they
# are the page's content identity (its place in the file, dates and software names are not).
PIXEL_TAGS = frozenset(
    {
        256, 257, 258, 259, 262, 266, 274, 277, 278, 284, 292, 293, 317, 318, 319, 320,
        322, 323, 338, 339, 347, 529, 530, 531, 532, 34675,
    }
)  # fmt: skip
STRIP_TAGS = ((273, 279), (324, 325))  # (offsets, byte counts): strips, or tiles
TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4}
# A page's identity is given up (None: it is keyed by its document and number) past these.
MAX_ENTRIES = 1000
MAX_STRIPS = 100_000


def page_fingerprints(data: bytes, max_pages: int) -> list[str | None]:
    """For each page of a TIFF (in IFD order), the sha256 of its pixel data and of the tags
    that decode it, so the same page inside another TIFF is known as the same; None for a
    page whose structure does not add up (it is then known by its document and number).

    Header arithmetic and hashing only, nothing decoded; all the pages together hash at
    most twice the file's bytes. Meant for a thread, off the event loop (hashlib releases
    the GIL on large buffers).
    """
    order = "<" if data[:2] == b"II" else ">"
    (offset,) = struct.unpack_from(order + "I", data, 4)
    budget = [2 * len(data), MAX_STRIPS]
    prints: list[str | None] = []
    seen: set[int] = set()
    while offset and offset not in seen and len(prints) < max_pages and offset + 2 <= len(data):
        seen.add(offset)
        (entries,) = struct.unpack_from(order + "H", data, offset)
        next_at = offset + 2 + 12 * entries
        if next_at + 4 > len(data):
            prints.append(None)
            break
        prints.append(_fingerprint(data, order, offset, entries, budget))
        (offset,) = struct.unpack_from(order + "I", data, next_at)
    return prints


def _fingerprint(data: bytes, order: str, offset: int, entries: int, budget: list[int]) -> str | None:
    if entries > MAX_ENTRIES:
        return None
    digest = hashlib.sha256(order.encode())
    arrays: dict[int, tuple[int, ...]] = {}
    for at in range(offset + 2, offset + 2 + 12 * entries, 12):
        tag, kind, count = struct.unpack_from(order + "HHI", data, at)
        size = TYPE_SIZES.get(kind, 0) * count
        if size <= 4:
            raw = data[at + 8 : at + 8 + size]
        else:
            (where,) = struct.unpack_from(order + "I", data, at + 8)
            if where + size > len(data):
                return None
            raw = data[where : where + size]
        if tag == 259 and raw[:2] in (b"\x06\x00", b"\x00\x06"):
            return None  # old-style JPEG: its data hangs off other tags
        if tag in PIXEL_TAGS:
            digest.update(struct.pack("<HHI", tag, kind, count) + raw)
        elif any(tag in pair for pair in STRIP_TAGS):
            if kind not in (3, 4) or count > budget[1]:
                return None
            arrays[tag] = struct.unpack(order + ("H" if kind == 3 else "I") * count, raw)
    for offsets_tag, counts_tag in STRIP_TAGS:
        starts, lengths = arrays.get(offsets_tag), arrays.get(counts_tag)
        if starts is None and lengths is None:
            continue
        if starts is None or lengths is None or len(starts) != len(lengths):
            return None
        budget[1] -= len(starts)
        for start, length in zip(starts, lengths):
            budget[0] -= length
            if start + length > len(data) or budget[0] < 0 or budget[1] < 0:
                return None
            digest.update(struct.pack("<I", length))
            digest.update(memoryview(data)[start : start + length])
        return digest.hexdigest()
    return None  # no pixel data at all
