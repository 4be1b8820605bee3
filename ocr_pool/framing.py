"""Worker replies decoded from whatever bytes have arrived, so the event loop never waits.

multiprocessing's Connection.recv() reads a whole message before it returns: called on the
loop as soon as a reply's first bytes arrive, it waited for the rest, and a worker stopped
half-way through writing (SIGSTOP, a cgroup freezer, a debugger, memory pressure) held the
loop, and with it every request, timer and signal handler, for as long as it stayed stopped.
The pool now reads only what is there (one os.read per readiness event) and feeds it here.

The frames are Connection's own (Python 3.8+): a 4-byte big-endian signed length, or -1 and
then an 8-byte unsigned length for messages of 2 GiB or more, then the pickled message.
"""

from __future__ import annotations

import logging
import pickle
import struct
from typing import Any

log = logging.getLogger("ocr_pool")

_SHORT = struct.Struct("!i")
_LONG = struct.Struct("!Q")


class MessageReader:
    """Collects a connection's bytes and hands back each message once it is complete."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    @property
    def pending_bytes(self) -> int:
        """Bytes of a message not complete yet."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Any]:
        """Add bytes as they came off the pipe; return the messages they completed, in order."""
        self._buffer += data
        messages = []
        while True:
            frame = self._next_frame()
            if frame is None:
                return messages
            start, end = frame
            try:
                with memoryview(self._buffer) as view, view[start:end] as body:
                    messages.append(pickle.loads(body))
            except Exception:
                log.exception("dropped a worker message of %d bytes that does not decode", end - start)
            finally:
                del self._buffer[:end]  # cheap: CPython moves the start of a bytearray forward

    def _next_frame(self) -> tuple[int, int] | None:
        """(start, end) of the first message's pickle if all of it is here."""
        buffer = self._buffer
        if len(buffer) < _SHORT.size:
            return None
        (size,) = _SHORT.unpack_from(buffer)
        start = _SHORT.size
        if size == -1:
            if len(buffer) < _SHORT.size + _LONG.size:
                return None
            (size,) = _LONG.unpack_from(buffer, _SHORT.size)
            start += _LONG.size
        end = start + max(size, 0)  # a negative length is no message: an empty frame, dropped
        return (start, end) if len(buffer) >= end else None
