"""The JSON of recently answered cached results, kept encoded: a cache hit splices its own
task id, hash and request time around the stored bytes instead of re-encoding the result.

Encoding a result's text lines (a box and a score per line) is the largest part of the
JSON work of a hit: 11 us for a 34-line receipt measured here, and it grows with the
lines. The bytes written are the same as encoding the whole answer (tests compare them).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Any

from handlers.base import encode_json

# Results kept encoded, most recently answered first out last, at most this many and this many
# bytes of JSON. Each holds its result alive, so one leaves as soon as the result cache drops
# its result (discard): the results this keeps are the cache's, within its budget.
CAPACITY = 256
MAX_BYTES = 16 * 1024 * 1024


class EncodedAnswers:
    def __init__(self, capacity: int = CAPACITY, max_bytes: int = MAX_BYTES) -> None:
        self.capacity = capacity
        self.max_bytes = max_bytes
        self.bytes = 0
        # cache key -> (the result object, its lines/size/det as JSON members, its timing object unclosed)
        self._entries: OrderedDict[str, tuple[dict[str, Any], bytes, bytes]] = OrderedDict()

    def hit_answer(self, key: str, result: dict[str, Any], task_id: str, image_hash: str, request_ms: float) -> bytes:
        """The bytes of encode_json(result_body(task_id, image_hash, result, cached=True)) with
        timing.request = request_ms, for a single image's result (not a document)."""
        entry = self._entries.get(key)
        if entry is None or entry[0] is not result:
            entry = self._encode(key, result)
        else:
            self._entries.move_to_end(key)
        _, members, timing = entry
        head = encode_json({"task_id": task_id, "status": "done", "image_hash": image_hash, "cached": True})
        separator = b"," if len(timing) > 1 else b""
        return b"".join(
            (head[:-1], b",", members, b',"timing":', timing, separator, b'"request":', encode_json(request_ms), b"}}")
        )

    def _encode(self, key: str, result: dict[str, Any]) -> tuple[dict[str, Any], bytes, bytes]:
        members = encode_json(
            {"text_lines": result["text_lines"], "image_size": result["image_size"], "det_used": result.get("det_used")}
        )[1:-1]
        timing = encode_json(dict(result.get("timing", {})))[:-1]
        entry = (result, members, timing)
        self.discard(key)
        size = len(members) + len(timing)
        if size > self.max_bytes:
            return entry  # answered, not kept
        self._entries[key] = entry
        self.bytes += size
        while len(self._entries) > self.capacity or self.bytes > self.max_bytes:
            _, (_result, old_members, old_timing) = self._entries.popitem(last=False)
            self.bytes -= len(old_members) + len(old_timing)
        return entry

    def discard(self, key: str) -> None:
        """Forget a key's answer (its result left the cache)."""
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.bytes -= len(entry[1]) + len(entry[2])

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries


def new_task_id() -> str:
    """uuid.uuid4().hex (random, version 4, RFC 4122 variant), without building a UUID object:
    the id a cache hit answers with."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # variant 10xx
    return raw.hex()


def splices(result: dict[str, Any]) -> bool:
    """Whether a result's answer can be spliced: a single image whose timing has no `request` yet."""
    return "pages" not in result and "request" not in result.get("timing", {})
