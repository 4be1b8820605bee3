"""The sha256 of recently seen small uploads, found again by comparing bytes.

Hashing the upload is the largest part of a cache hit's own work (sha256 runs at ~1.8 GB/s
here: ~60 us of the ~400 us a hit of a 111 KB receipt costs the event loop). A client that
sends the same image again gets the same bytes: those are compared with a kept copy
(memcmp, ~3 us for 111 KB) and the hash computed then is reused. Only byte-for-byte equal
uploads share a hash, so a hash found here is the hash of the bytes; a sample of the bytes
only picks which kept copy to compare with.

Kept: the uploads hashed on the event loop (at most `max_image_bytes` each), the most recent
`max_entries` of them within `max_bytes` in all, each for `ttl` seconds (the server passes
service.time: no copy outlives the results it helps find; nothing is kept with the cache off).
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable

# Above this, sha256 runs in a thread, off the event loop (hashlib releases the GIL), and its
# upload is not kept here.
HASH_OFF_LOOP_BYTES = 512 * 1024
# Bytes of the upload taken from its middle and from its end to find the kept copy to compare
# with: a file's first bytes are often the same header for every image of one format.
SAMPLE_BYTES = 32
MAX_ENTRIES = 64
MAX_BYTES = 8 * 1024 * 1024

Sample = tuple[int, bytes, bytes]


def sample_of(data: bytes | bytearray | memoryview) -> Sample:
    """The length and two small windows of an upload: equal uploads have equal samples."""
    size = len(data)
    middle = size // 2
    return size, bytes(data[middle : middle + SAMPLE_BYTES]), bytes(data[-SAMPLE_BYTES:])


class RecentHashes:
    def __init__(
        self,
        max_image_bytes: int = HASH_OFF_LOOP_BYTES,
        max_entries: int = MAX_ENTRIES,
        max_bytes: int = MAX_BYTES,
        ttl: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_image_bytes = max_image_bytes
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.ttl = ttl
        self.clock = clock
        self.kept_bytes = 0
        # sample -> (a copy of the upload, its sha256 as hex, when it was kept), least recently used first
        self._entries: OrderedDict[Sample, tuple[bytes, str, float]] = OrderedDict()

    def sha256_hex(self, data: bytes | bytearray | memoryview) -> str:
        """hashlib.sha256(data).hexdigest(), from the kept copy when these bytes were seen lately."""
        if len(data) > self.max_image_bytes or len(data) > self.max_bytes or self.ttl <= 0:
            return hashlib.sha256(data).hexdigest()
        sample = sample_of(data)
        entry = self._entries.get(sample)
        # startswith on equal lengths is a memcmp with any buffer (== on a memoryview is not).
        if entry is not None and entry[0].startswith(data) and self.clock() - entry[2] < self.ttl:
            self._entries.move_to_end(sample)
            return entry[1]
        digest = hashlib.sha256(data).hexdigest()
        self._keep(sample, bytes(data), digest)
        return digest

    def _keep(self, sample: Sample, copy: bytes, digest: str) -> None:
        now = self.clock()
        old = self._entries.pop(sample, None)
        if old is not None:
            self.kept_bytes -= len(old[0])
        self._entries[sample] = (copy, digest, now)
        self.kept_bytes += len(copy)
        # Past the bounds, or past their time: the least recently used go first.
        while self._entries and (
            len(self._entries) > self.max_entries
            or self.kept_bytes > self.max_bytes
            or now - next(iter(self._entries.values()))[2] >= self.ttl
        ):
            _, (dropped, _, _) = self._entries.popitem(last=False)
            self.kept_bytes -= len(dropped)

    def __len__(self) -> int:
        return len(self._entries)
