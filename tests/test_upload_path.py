"""The upload path: multipart parsed as it streams in, images handed to workers off the event loop."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import pytest
import requests

from handlers.multipart import MultipartError, MultipartParser
from handlers.upload_buffer import LARGE_PART_BYTES, BufferPool
from tests.conftest import RunningServer, metric, random_word, text_image

MAX_BODY_BYTES = 20 * 1024 * 1024
REPO = Path(__file__).resolve().parents[1]


def padded_png(png: bytes, total: int) -> bytes:
    """`png` grown to `total` bytes by a private ancillary chunk (decoders skip it)."""
    iend = png.rfind(b"IEND") - 4
    size = total - len(png) - 12
    data = os.urandom(64) + bytes(size - 64)
    chunk = struct.pack(">I", size) + b"pdDa" + data + struct.pack(">I", zlib.crc32(b"pdDa" + data) & 0xFFFFFFFF)
    return png[:iend] + chunk + png[iend:]


def texts(response: requests.Response) -> str:
    return " ".join(line["text"] for line in response.json()["text_lines"])


def body_of(parts: list[tuple[str, str | None, bytes]], boundary: bytes = b"XyZ") -> bytes:
    out = b"preamble to ignore\r\n"
    for name, filename, value in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += b"--" + boundary + f"\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + value + b"\r\n"
    return out + b"--" + boundary + b"--\r\nepilogue"


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64, 65536])
def test_multipart_parser_gives_the_same_parts_whatever_the_chunking(chunk: int) -> None:
    image = b"\r\n--XyA \r\n-- \r\n--Xy\r\n-XyZ--XyZ" * 50 + b"\x00\xff" * 100
    body = body_of([("file_type", None, b"file"), ("file", "a.png", image), ("det", None, b"")])
    parser = MultipartParser(b"XyZ")
    chunks = [body[start : start + chunk] for start in range(0, len(body), chunk)]
    for piece in chunks:
        parser.feed(piece)
    parts = parser.close()
    assert [(p.name, p.filename, bytes(p.data)) for p in parts] == [
        ("file_type", None, b"file"),
        ("file", "a.png", image),
        ("det", None, b""),
    ]
    # Handed on as is, never copied into bytes: the bytearray it was parsed into, or, when the
    # whole part came in one chunk, a view of that chunk (no copy at all).
    if len(chunks) == 1:
        assert isinstance(parts[1].data, memoryview) and parts[1].data.obj is chunks[0]
    else:
        assert isinstance(parts[1].data, bytearray)


@pytest.mark.parametrize("seed", range(3))
def test_multipart_parser_agrees_with_itself_over_random_chunkings_and_lookalikes(seed: int) -> None:
    # Parts full of delimiter lookalikes ("\r\n--XyA", a bare "--XyZ"...), cut at random places:
    # the chunk scanned in place, the end carried over to the next chunk, a delimiter split
    # across chunks, all must give the parts that were put in.
    import random

    rng = random.Random(seed)
    pieces = [b"\r\n", b"--", b"XyZ", b"\r\n--Xy", b"\r\n--XyA", b"-", b"\r", b"\n", b"x"]
    for _ in range(2000):
        parts = []
        for index in range(rng.randint(1, 4)):
            value = b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 30))).replace(b"\r\n--XyZ", b"\r\n--XyA")
            parts.append((f"f{index}", rng.choice([None, "a.png"]), value))
        body = body_of(parts)
        parser = MultipartParser(b"XyZ", rng.choice([None, len(body)]))
        start = 0
        while start < len(body):
            size = rng.choice([1, 2, 5, 7, 8, 13, 64, 4096])
            parser.feed(body[start : start + size])
            start += size
        assert [(p.name, p.filename, bytes(p.data)) for p in parser.close()] == [
            (name, filename or None, value) for name, filename, value in parts
        ]


def test_only_a_file_part_whole_in_one_bytes_chunk_is_a_view() -> None:
    body = body_of([("file_type", None, b"file"), ("file", "a.png", b"\x89PNG" + b"\x00" * 100)])
    one = MultipartParser(b"XyZ")
    one.feed(body)
    fields, upload = one.close()
    assert isinstance(fields.data, bytearray)  # a field is always copied out of the chunk
    assert isinstance(upload.data, memoryview) and upload.data.readonly
    mutable = MultipartParser(b"XyZ")
    mutable.feed(bytearray(body))  # a chunk that could change later is never viewed
    assert isinstance(mutable.close()[1].data, bytearray)


def _buffer_address(data: bytearray) -> int:
    import ctypes

    return ctypes.addressof(ctypes.c_char.from_buffer(data))


def test_a_large_file_part_fills_one_buffer_sized_from_the_declared_length() -> None:
    # Grown chunk by chunk, a 20 MiB part was reallocated (and remapped) ~25 times on the
    # event loop; with the body's length known it is written into one buffer, in place.
    image = os.urandom(LARGE_PART_BYTES + 123_457)
    body = body_of([("file_type", None, b"file"), ("file", "a.png", image), ("det", None, b"on")])
    parser = MultipartParser(b"XyZ", len(body))
    addresses = set()
    for start in range(0, len(body), 65536):
        parser.feed(body[start : start + 65536])
        if len(parser.parts) >= 2 and parser.parts[1].data:
            addresses.add(_buffer_address(parser.parts[1].data))
    parts = parser.close()
    assert [(p.name, p.filename, bytes(p.data)) for p in parts] == [
        ("file_type", None, b"file"),
        ("file", "a.png", image),
        ("det", None, b"on"),
    ]
    assert isinstance(parts[1].data, bytearray) and len(parts[1].data) == len(image)
    assert len(addresses) == 1, "the file part's buffer moved while it was filled"


def test_a_kept_buffer_is_reused_only_once_nothing_holds_it() -> None:
    pool = BufferPool(keep=1)
    first = pool.take(LARGE_PART_BYTES)
    first[:3] = b"old"
    assert pool.take(LARGE_PART_BYTES) is not first  # still held by `first`: never handed out twice
    kept_id = id(first)
    del first
    again = pool.take(LARGE_PART_BYTES + 10)  # the same bytearray, resized (its memory may move)
    assert id(again) == kept_id and len(again) == LARGE_PART_BYTES + 10
    assert pool.reused == 1 and len(pool) == 1


def test_an_upload_in_a_reused_buffer_holds_its_own_bytes_only(monkeypatch: pytest.MonkeyPatch) -> None:
    import handlers.multipart

    monkeypatch.setattr(handlers.multipart, "UPLOAD_BUFFERS", BufferPool(keep=1))
    for fill, size in ((b"\xaa", LARGE_PART_BYTES + 3_000_000), (b"\x55", LARGE_PART_BYTES + 7)):
        image = fill * size
        body = body_of([("file", "a.png", image)])
        parser = MultipartParser(b"XyZ", len(body))
        for start in range(0, len(body), 65536):
            parser.feed(body[start : start + 65536])
        data = parser.close()[0].data
        assert len(data) == size and data == image  # no byte of the earlier, longer upload
        del data, parser
    assert handlers.multipart.UPLOAD_BUFFERS.reused == 1


@pytest.mark.parametrize("declared_short_by", [1, 1024 * 1024])
def test_a_file_part_longer_than_the_declared_length_is_still_read_whole(declared_short_by: int) -> None:
    # Tornado reads exactly Content-Length bytes, so this cannot come from a client; the parser
    # must still never lose or invent a byte if its size hint is wrong.
    image = os.urandom(LARGE_PART_BYTES + 2 * 1024 * 1024)
    body = body_of([("file", "a.png", image)])
    parser = MultipartParser(b"XyZ", len(body) - declared_short_by)
    for start in range(0, len(body), 65536):
        parser.feed(body[start : start + 65536])
    assert bytes(parser.close()[0].data) == image


@pytest.mark.parametrize(
    "body",
    [
        b'--XyZ\r\nContent-Disposition: form-data; name="a"\r\n\r\nvalue',  # no final delimiter
        b'--XyZ\r\nContent-Disposition: attachment; name="a"\r\n\r\nv\r\n--XyZ--\r\n',  # not form-data
        b"--XyZ\r\nContent-Disposition: form-data\r\n\r\nv\r\n--XyZ--\r\n",  # no name
        b'--XyZ\r\nContent-Disposition: form-data; name="\xff"\r\n\r\nv\r\n--XyZ--\r\n',  # not UTF-8
        b"--XyZ\r\nX: " + b"h" * 20000 + b"\r\n\r\nv\r\n--XyZ--\r\n",  # headers too large
        b"--XyZjunk\r\n",  # a delimiter not followed by a line break
    ],
)
def test_multipart_parser_refuses_malformed_bodies(body: bytes) -> None:
    parser = MultipartParser(b"XyZ")
    with pytest.raises(MultipartError):
        parser.feed(body)
        parser.close()


def test_a_20_mib_upload_is_read_correctly(ocr_server: RunningServer) -> None:
    word = random_word()
    image = padded_png(text_image(word), MAX_BODY_BYTES - 1024)
    response = ocr_server.ocr_upload(image, timeout=180)
    assert response.status_code == 200, response.text
    assert word in texts(response).replace(" ", "")


def test_metrics_export_the_event_loop_lag(ocr_server: RunningServer) -> None:
    text = requests.get(f"{ocr_server.url}/metrics", timeout=10).text
    assert "ocr_event_loop_lag_max_seconds " in text
    assert metric(text, "ocr_event_loop_lag_seconds_count") > 0
    assert metric(text, "ocr_event_loop_lag_seconds_bucket", le="+Inf") == metric(
        text, "ocr_event_loop_lag_seconds_count"
    )


def wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_hits_are_answered_while_a_worker_takes_its_time_reading_a_20_mib_upload(
    one_worker_server: RunningServer,
) -> None:
    """The worker is stopped (SIGSTOP) just as a 20 MiB image is handed to it, so it cannot
    read its pipe: the server must keep answering cache hits and probes meanwhile (it used to
    block its event loop in the write), and the image is read once the worker goes on."""
    server = one_worker_server
    hit_image = text_image(random_word())
    assert server.ocr_upload(hit_image).status_code == 200  # cached from now on
    (worker_pid,) = [w["pid"] for w in server.health()["workers"]["workers"]]
    word = random_word()
    big = padded_png(text_image(word), MAX_BODY_BYTES - 1024)
    answers: dict[str, requests.Response] = {}
    uploader = threading.Thread(target=lambda: answers.setdefault("big", server.ocr_upload(big, timeout=300)))
    os.kill(worker_pid, signal.SIGSTOP)
    try:
        uploader.start()
        wait_for(lambda: server.health()["workers"]["busy"] == 1, 60, "the upload to reach the worker")
        for _ in range(5):
            hit = server.ocr_upload(hit_image, timeout=10)
            assert hit.status_code == 200 and hit.json()["cached"] is True
            assert requests.get(f"{server.url}/livez", timeout=10).status_code == 200
    finally:
        os.kill(worker_pid, signal.SIGCONT)
    uploader.join(timeout=300)
    assert answers["big"].status_code == 200, answers["big"].text
    assert word in texts(answers["big"]).replace(" ", "")


@pytest.mark.parametrize(
    "raw",
    [
        b'Content-Disposition: form-data; name="file"; filename="a.png"\r\nContent-Type: image/png',
        b'Content-Disposition: form-data; name="file_type"',
        b'content-disposition: form-data;name="f";filename="x y.png"',
        b'Content-Disposition: form-data; name="f"; filename=""',
        b"Content-Disposition: form-data; name=\"x\"; filename*=UTF-8''%E2%82%AC.png",
        b'Content-Disposition: form-data; name="a\\"b"',
        b'Content-Disposition: form-data; name="n*"',
    ],
)
def test_part_headers_read_like_tornado_reads_them(raw: bytes) -> None:
    """The one-regex fast path for common part headers gives what Tornado's general parser gives
    (an empty filename stays "": the part is still a file)."""
    from tornado.httputil import HTTPHeaders, _parse_header

    from handlers.multipart import read_part_headers

    headers = HTTPHeaders.parse(raw.decode())
    _, params = _parse_header(headers.get("Content-Disposition", ""))
    expected = (params["name"], params.get("filename"), headers.get("Content-Type", "application/unknown"))
    assert read_part_headers(raw) == expected


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_small_buffers_are_reused_without_page_faults() -> None:
    # What a cache hit does with its ~100 KB upload: take buffers, free them, again and again.
    # Freed at the top of the heap they were given back and faulted in anew every time.
    code = """
import resource, sys
from http_listener import keep_freed_heap, map_large_buffers
map_large_buffers()
if sys.argv[1] == "keep" and not keep_freed_heap():
    print("unsupported"); sys.exit()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    b = bytearray(300_000); b[::4096] = bytes(len(b[::4096])); del b
before = faults()
for _ in range(100):
    b = bytearray(300_000); b[::4096] = bytes(len(b[::4096])); del b
print((faults() - before) / 100)
"""
    per_buffer = {}
    for mode in ("default", "keep"):
        done = subprocess.run(
            [sys.executable, "-c", code, mode], cwd=REPO, capture_output=True, text=True, timeout=60, check=True
        )
        if done.stdout.strip() == "unsupported":
            pytest.skip("not glibc")
        per_buffer[mode] = float(done.stdout)
    assert per_buffer["default"] > 10  # ~73 pages of 4 KiB faulted in for every buffer
    assert per_buffer["keep"] < 1
