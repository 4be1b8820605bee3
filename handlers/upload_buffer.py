"""Buffers for large uploaded files: sized once from the request's Content-Length, and reused.

Grown chunk by chunk, a 20 MiB bytearray is reallocated about 25 times on the event loop
(each a remap of everything so far plus room to grow: the slowest of the 320 chunk copies,
~0.8 ms against ~0.15 ms measured here). Sized up front, every copy is a plain memcpy.
`bytearray(n)` would zero all n bytes at once (5,000 page faults in one callback);
PyByteArray_Resize on an empty bytearray takes memory from the allocator and writes nothing.

Fresh memory still costs a page fault per 4 KiB as the copies first touch it (~5 us each
on this virtual machine: 25 ms of event-loop time per 20 MiB) and unmapping it when the
buffer is freed (1.5-2 ms in one callback). So the last few large buffers are kept and
handed to the next large upload once nothing references them any more: their pages stay
mapped. A kept buffer is only ever read up to what the new upload wrote into it.
"""

from __future__ import annotations

import ctypes
import sys

# Below this a file part grows as usual: the reallocations only matter for megabytes.
LARGE_PART_BYTES = 4 * 1024 * 1024
# Large buffers kept for reuse (each up to web_server.max_body_bytes): the memory the main
# process holds on to after large uploads, in exchange for no faults and no unmapping.
KEPT_BUFFERS = 4

_resize = ctypes.pythonapi.PyByteArray_Resize
_resize.argtypes = [ctypes.py_object, ctypes.c_ssize_t]
_resize.restype = ctypes.c_int


def _references(buffer: bytearray) -> int:
    return sys.getrefcount(buffer)


def _idle_reference_count() -> int:
    """What _references() says of a buffer held only by a BufferPool's list."""
    kept = [bytearray()]
    return _references(kept[0])


_IDLE = _idle_reference_count()


def sized_buffer(size: int, buffer: bytearray | None = None) -> bytearray:
    """`buffer` (a new bytearray by default) resized to `size` bytes without writing to it:
    its content is unspecified until written. Fill it by slice assignment, then
    `del buf[n:]` what is left over."""
    buffer = bytearray() if buffer is None else buffer
    if _resize(buffer, size) != 0:
        raise MemoryError(f"cannot allocate {size} bytes")
    return buffer


class BufferPool:
    def __init__(self, keep: int = KEPT_BUFFERS) -> None:
        self.keep = keep
        self._kept: list[bytearray] = []
        self.reused = 0

    def take(self, size: int) -> bytearray:
        """A bytearray of `size` bytes (content unspecified): a kept one nobody uses, else a new one."""
        for index in range(len(self._kept)):
            if _references(self._kept[index]) == _IDLE:
                self.reused += 1
                return sized_buffer(size, self._kept[index])
        buffer = sized_buffer(size)
        if len(self._kept) < self.keep:
            self._kept.append(buffer)
        return buffer

    def __len__(self) -> int:
        return len(self._kept)


UPLOAD_BUFFERS = BufferPool()
