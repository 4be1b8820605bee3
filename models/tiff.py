"""A TIFF's pages from its IFD chain, without decoding anything: their count (header
arithmetic only, cheap enough for the event loop: the walk stops one page past the limit and
at any loop) and each page's content identity (hashing, for a thread).

Classic TIFF (32-bit offsets, 12-byte IFD entries) and BigTIFF (64-bit offsets, 20-byte
entries) alike.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice

CLASSIC_MAGIC = (b"II*\x00", b"MM\x00*")
BIGTIFF_MAGIC = (b"II+\x00", b"MM\x00+")
TIFF_MAGIC = CLASSIC_MAGIC + BIGTIFF_MAGIC


def is_tiff(data: bytes) -> bool:
    return data[:4] in TIFF_MAGIC


@dataclass(frozen=True)
class _Layout:
    """How one TIFF flavour lays out its IFDs."""

    order: str  # "<" or ">"
    big: bool

    @property
    def count_fmt(self) -> str:  # entries in an IFD
        return "Q" if self.big else "H"

    @property
    def offset_fmt(self) -> str:  # next IFD, out-of-line values, entry counts
        return "Q" if self.big else "I"

    @property
    def count_size(self) -> int:
        return 8 if self.big else 2

    @property
    def entry_size(self) -> int:
        return 20 if self.big else 12

    @property
    def offset_size(self) -> int:  # also the most bytes a value stored in its entry has
        return 8 if self.big else 4


def _layout(data: bytes) -> tuple[_Layout, int] | None:
    """The file's layout and its first IFD's offset; None for no (readable) TIFF header."""
    if len(data) < 8 or not is_tiff(data):
        return None
    order = "<" if data[:2] == b"II" else ">"
    if data[:4] in CLASSIC_MAGIC:
        return _Layout(order, False), struct.unpack_from(order + "I", data, 4)[0]
    if len(data) < 16:
        return None
    offset_size, zero = struct.unpack_from(order + "HH", data, 4)
    if offset_size != 8 or zero != 0:
        return None
    return _Layout(order, True), struct.unpack_from(order + "Q", data, 8)[0]


def _ifds(data: bytes, layout: _Layout, offset: int) -> Iterator[tuple[int, int, bool]]:
    """(offset, entries, complete) of each IFD in the chain. The chain ends where it points
    outside the file or back into itself; a truncated IFD (complete False) is the last."""
    seen: set[int] = set()
    while offset and offset not in seen and offset + layout.count_size <= len(data):
        seen.add(offset)
        (entries,) = struct.unpack_from(layout.order + layout.count_fmt, data, offset)
        next_at = offset + layout.count_size + layout.entry_size * entries
        if next_at + layout.offset_size > len(data):
            yield offset, entries, False
            return
        yield offset, entries, True
        (offset,) = struct.unpack_from(layout.order + layout.offset_fmt, data, next_at)


def count_tiff_pages(data: bytes, stop_after: int) -> int:
    """Pages in the IFD chain, counting at most `stop_after` + 1.

    A chain that points outside the file or back into itself ends there: the pages read so
    far are what a decoder could reach (at least 1, so a damaged file still goes to the
    decoder and gets its own error; a truncated last IFD counts, the decoder will say what
    is wrong with it).
    """
    found = _layout(data)
    if found is None:
        return 1
    pages = sum(1 for _ in islice(_ifds(data, *found), stop_after + 1))
    return max(pages, 1)


# Tags that decide how a page's stored bytes become pixels: with the bytes themselves, they
# are the page's content identity (its place in the file, dates and software names are not).
# 700 is the XMP packet: the decoder turns a page by a tiff:Orientation it finds there.
PIXEL_TAGS = frozenset(
    {
        256, 257, 258, 259, 262, 266, 274, 277, 278, 284, 292, 293, 317, 318, 319, 320,
        322, 323, 338, 339, 347, 529, 530, 531, 532, 700, 34675,
    }
)  # fmt: skip
STRIP_TAGS = ((273, 279), (324, 325))  # (offsets, byte counts): strips, or tiles
TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4}
BIG_TYPE_SIZES = {**TYPE_SIZES, 16: 8, 17: 8, 18: 8}  # BigTIFF adds LONG8, SLONG8, IFD8
_UNSIGNED = {3: "H", 4: "I", 16: "Q"}  # SHORT, LONG, LONG8
# A page's identity is given up (None: it is keyed by its document and number) past these.
MAX_ENTRIES = 1000
MAX_STRIPS = 100_000


def page_fingerprints(data: bytes, max_pages: int) -> list[str | None]:
    """For each page of a TIFF (in IFD order), the sha256 of its pixel data and of the tags
    that decode it, so the same page inside another TIFF is known as the same; None for a
    page whose structure does not add up (it is then known by its document and number).
    A page stored in a BigTIFF has the same identity as in a classic TIFF when its tags
    have the same types.

    Header arithmetic and hashing only, nothing decoded; all the pages together hash at
    most twice the file's bytes. Meant for a thread, off the event loop (hashlib releases
    the GIL on large buffers).
    """
    found = _layout(data)
    if found is None:
        return []
    layout = found[0]
    budget = [2 * len(data), MAX_STRIPS]
    prints: list[str | None] = []
    for offset, entries, complete in islice(_ifds(data, *found), max_pages):
        if not complete:
            prints.append(None)
            break
        prints.append(_fingerprint(data, layout, offset, entries, budget))
    return prints


def _entries(data: bytes, layout: _Layout, offset: int, entries: int) -> Iterator[tuple[int, int, int, int]]:
    """(tag, type, count, where its value is) of each entry of a complete IFD."""
    order, count_fmt = layout.order, layout.offset_fmt
    start = offset + layout.count_size
    for at in range(start, start + layout.entry_size * entries, layout.entry_size):
        tag, kind = struct.unpack_from(order + "HH", data, at)
        (count,) = struct.unpack_from(order + count_fmt, data, at + 4)
        yield tag, kind, count, at + 4 + layout.offset_size


def _value_bytes(data: bytes, layout: _Layout, kind: int, count: int, value_at: int) -> bytes | None:
    """An entry's raw value (inline or out of line); None when it lies outside the file."""
    size = (BIG_TYPE_SIZES if layout.big else TYPE_SIZES).get(kind, 0) * count
    if size <= layout.offset_size:
        return data[value_at : value_at + size]
    (where,) = struct.unpack_from(layout.order + layout.offset_fmt, data, value_at)
    if where + size > len(data):
        return None
    return data[where : where + size]


def _fingerprint(data: bytes, layout: _Layout, offset: int, entries: int, budget: list[int]) -> str | None:
    if entries > MAX_ENTRIES:
        return None
    order = layout.order
    digest = hashlib.sha256(order.encode())
    arrays: dict[int, tuple[int, ...]] = {}
    for tag, kind, count, value_at in _entries(data, layout, offset, entries):
        raw = _value_bytes(data, layout, kind, count, value_at)
        if raw is None:
            return None
        if tag == 259 and raw[:2] in (b"\x06\x00", b"\x00\x06"):
            return None  # old-style JPEG: its data hangs off other tags
        if tag in PIXEL_TAGS:
            if count >= 2**32:
                return None
            digest.update(struct.pack("<HHI", tag, kind, count) + raw)
        elif any(tag in pair for pair in STRIP_TAGS):
            if kind not in (3, 4, 16) or (kind == 16 and not layout.big) or count > budget[1]:
                return None
            arrays[tag] = struct.unpack(order + _UNSIGNED[kind] * count, raw)
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
            digest.update(struct.pack("<Q" if length >= 2**32 else "<I", length))
            digest.update(memoryview(data)[start : start + length])
        return digest.hexdigest()
    return None  # no pixel data at all


def page_tags(data: bytes, index: int, wanted: tuple[int, ...]) -> dict[int, tuple[int, ...]]:
    """The integer values (SHORT, LONG, LONG8; a few at most) of the `wanted` tags of page
    `index` (0: the first), for saying why a page cannot be read; {} when it cannot be found."""
    found = _layout(data)
    if found is None:
        return {}
    layout = found[0]
    for offset, entries, complete in islice(_ifds(data, *found), index, index + 1):
        if not complete or entries > MAX_ENTRIES:
            return {}
        values: dict[int, tuple[int, ...]] = {}
        for tag, kind, count, value_at in _entries(data, layout, offset, entries):
            if tag not in wanted or kind not in _UNSIGNED or not 0 < count <= 16:
                continue
            raw = _value_bytes(data, layout, kind, count, value_at)
            if raw is not None:
                values[tag] = struct.unpack(layout.order + _UNSIGNED[kind] * count, raw)
        return values
    return {}
