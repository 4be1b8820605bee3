"""Hashes of recent uploads are reused only for byte-for-byte equal uploads."""

from __future__ import annotations

import hashlib
import io
import struct
import zlib

import pytest
from PIL import Image

from handlers import upload_hashes
from handlers.upload_hashes import RecentHashes, sample_of
from tests.conftest import RunningServer, random_word, text_image

REAL_SHA256 = hashlib.sha256  # the tests' own hashing, not counted below


def sha(data: bytes | bytearray | memoryview) -> str:
    return REAL_SHA256(data).hexdigest()


@pytest.fixture
def counted_hashing(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many times RecentHashes runs sha256 (a list with one counter)."""
    calls = [0]

    def counting(data: bytes | bytearray | memoryview) -> hashlib._Hash:
        calls[0] += 1
        return REAL_SHA256(data)

    monkeypatch.setattr(upload_hashes.hashlib, "sha256", counting)
    return calls


def twins(size: int = 4000) -> tuple[bytes, bytes]:
    """Two different uploads with the same length, middle and end (the same sample)."""
    first = bytearray(b"z" * size)
    second = bytearray(first)
    first[10] = 1
    second[10] = 2
    return bytes(first), bytes(second)


def test_a_repeated_upload_gets_its_hash_without_hashing_again(counted_hashing: list[int]) -> None:
    hashes = RecentHashes()
    data = bytes(range(256)) * 400
    assert hashes.sha256_hex(data) == sha(data)
    # The same bytes again, as the buffers the multipart parser hands over.
    assert hashes.sha256_hex(bytearray(data)) == sha(data)
    assert hashes.sha256_hex(memoryview(data)) == sha(data)
    assert hashes.sha256_hex(memoryview(b"head" + data)[4:]) == sha(data)
    assert counted_hashing[0] == 1


def test_uploads_with_the_same_sample_but_other_bytes_get_their_own_hash(counted_hashing: list[int]) -> None:
    first, second = twins()
    assert sample_of(first) == sample_of(second) and first != second
    hashes = RecentHashes()
    assert hashes.sha256_hex(first) == sha(first)
    assert hashes.sha256_hex(second) == sha(second)
    assert hashes.sha256_hex(memoryview(first)) == sha(first)
    assert hashes.sha256_hex(bytearray(second)) == sha(second)
    assert counted_hashing[0] == 4  # each compare found other bytes: hashed every time


def test_the_kept_copy_does_not_follow_a_buffer_changed_after_hashing() -> None:
    hashes = RecentHashes()
    buffer = bytearray(b"a" * 5000)
    assert hashes.sha256_hex(buffer) == sha(b"a" * 5000)
    buffer[0] = ord("b")  # the same sample, other bytes
    assert hashes.sha256_hex(buffer) == sha(buffer)
    assert hashes.sha256_hex(b"a" * 5000) == sha(b"a" * 5000)


def test_kept_uploads_are_bounded_by_count_bytes_and_size(counted_hashing: list[int]) -> None:
    hashes = RecentHashes(max_image_bytes=3000, max_entries=4, max_bytes=5000)
    big = b"b" * 3001
    for _ in range(2):
        assert hashes.sha256_hex(big) == sha(big)
    assert len(hashes) == 0 and counted_hashing[0] == 2  # too big to keep: hashed each time
    uploads = [bytes([n]) * 1000 for n in range(6)]
    for data in uploads:
        assert hashes.sha256_hex(data) == sha(data)
    assert len(hashes) == 4 and hashes.kept_bytes == 4000
    for data in (b"x" * 2500, b"y" * 2500):
        hashes.sha256_hex(data)
    assert len(hashes) == 2 and hashes.kept_bytes == 5000
    # The oldest were let go: hashing them again runs sha256 again, and answers right.
    counted_hashing[0] = 0
    assert hashes.sha256_hex(uploads[0]) == sha(uploads[0]) and counted_hashing[0] == 1


def test_kept_uploads_last_their_time_and_none_are_kept_with_no_time(counted_hashing: list[int]) -> None:
    now = [0.0]
    hashes = RecentHashes(ttl=10.0, clock=lambda: now[0])
    data = b"q" * 4000
    hashes.sha256_hex(data)
    now[0] = 9.0
    assert hashes.sha256_hex(data) == sha(data) and counted_hashing[0] == 1  # still kept
    now[0] = 10.0
    assert hashes.sha256_hex(data) == sha(data) and counted_hashing[0] == 2  # its time is over
    now[0] = 25.0
    hashes.sha256_hex(b"r" * 4000)  # keeping another lets the outdated copy go
    assert len(hashes) == 1 and hashes.kept_bytes == 4000
    off = RecentHashes(ttl=0.0)  # the result cache off: nothing to find, nothing kept
    for _ in range(2):
        assert off.sha256_hex(data) == sha(data)
    assert len(off) == 0 and counted_hashing[0] == 5


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_twins(first: bytes, second: bytes) -> tuple[bytes, bytes]:
    """The two PNGs padded to one length whose middle and end bytes are the same: a text chunk
    of one repeated letter after the image data, then a fixed one before IEND."""

    def padded(png: bytes, pad: int) -> bytes:
        body, iend = png[:-12], png[-12:]
        assert iend[4:8] == b"IEND"
        filler = _chunk(b"tEXt", b"Comment\0" + b"x" * pad)
        return body + filler + _chunk(b"tEXt", b"Author\0" + b"y" * 40) + iend

    size = max(len(first), len(second))
    pad = 3 * size  # the middle of the file falls inside the filler
    a = padded(first, pad + size - len(first))
    b = padded(second, pad + size - len(second))
    assert len(a) == len(b) and sample_of(a) == sample_of(b) and a != b
    return a, b


def test_two_images_with_the_same_sample_are_each_read_for_themselves(ocr_server: RunningServer) -> None:
    words = [random_word(), random_word()]
    first, second = png_twins(*(text_image(word) for word in words))
    for png in (first, second):
        assert Image.open(io.BytesIO(png)).text["Author"] == "y" * 40  # a PNG Pillow reads whole
    answers = [ocr_server.ocr_upload(png).json() for png in (first, second, first, second)]
    for answer, png, word in zip(answers, (first, second) * 2, words * 2, strict=True):
        assert answer["image_hash"] == sha(png)
        assert word in "".join(line["text"] for line in answer["text_lines"]).replace(" ", "")
    assert [answer["cached"] for answer in answers] == [False, False, True, True]
