"""An incremental multipart/form-data parser, fed the body chunk by chunk as it arrives.

Why not Tornado's parse_body_arguments: it needs the whole body as one bytes object (a
join of every chunk) and then splits and slices it again, three full copies of a 20 MiB
upload made on the event loop at once, tens of milliseconds in which nothing else is
answered. Here each chunk is scanned and appended to its part as it arrives (a few
microseconds per 64 KiB chunk), and a file part's bytes are copied once, into the
bytearray the handler hands on; not at all when the part arrives whole in one chunk (a
small upload, a cache hit's): it is then a read-only view of that chunk. A chunk is scanned
where it is, not appended to a buffer first: only the few bytes at its end that could be
the start of a delimiter are carried over. Pure: no I/O, so every malformed shape is
unit-testable.

Accepted like Tornado accepts it: a boundary quoted or not, a preamble before the first
delimiter is ignored (as RFC 2046 says), RFC 2231 `filename*=` names; refused: a part
without headers, a name or a Content-Disposition other than form-data, header bytes that
are not UTF-8, over MAX_PARTS parts or MAX_HEADER_BYTES of part headers, no final delimiter.
Unlike Tornado: the disposition type is case-insensitive ("Form-Data", RFC 7578/2183), and a
part with a filename parameter is a file even when the name is empty (`filename=""`, what
browsers send for an empty file input and some clients for unnamed uploads), and a part named
`file` or `image` is the upload even without one (`curl -F 'file=<img.png'` sends the image
as a plain field).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field

from tornado.httputil import HTTPHeaders, _parse_header

from handlers.upload_buffer import LARGE_PART_BYTES, UPLOAD_BUFFERS

# The parts that carry the image (POST /ocr_service's `file`, or `image`).
UPLOAD_NAMES = ("file", "image")

# The same bounds as Tornado's own multipart parser.
MAX_PARTS = 100
MAX_HEADER_BYTES = 10 * 1024


# What browsers, curl and requests send: read with one regex match instead of the email
# package's general parameter decoding (a third of a small upload's parsing time). Anything
# else (RFC 2231 `filename*=`, escapes, folded lines) takes Tornado's general parser.
_SIMPLE_DISPOSITION = re.compile(r'form-data; ?name="([^"\\*]+)"(?:; ?filename="([^"\\]*)")?', re.IGNORECASE)
_SIMPLE_HEADER = re.compile(r"([A-Za-z0-9-]+): ?([^\r\n]*)")


def _simple_headers(text: str) -> dict[str, str] | None:
    """{lower-case name: value} of a header block of plain one-line headers, else None."""
    headers: dict[str, str] = {}
    for line in text.split("\r\n"):
        match = _SIMPLE_HEADER.fullmatch(line)
        if match is None or match.group(1).lower() in headers:
            return None
        headers[match.group(1).lower()] = match.group(2).strip()
    return headers


# A client sends the same few header blocks again and again (the boundary is not part of
# them): each is read once. Bounded, and the answers are tuples of strings (immutable).
@functools.lru_cache(maxsize=256)
def read_part_headers(raw_headers: bytes) -> tuple[str, str | None, str]:
    """(name, filename, content type) of a part's header block.

    filename is None when the Content-Disposition has no filename parameter (a form field),
    and a string, maybe empty, when it has one (an uploaded file).
    """
    text = raw_headers.decode("utf-8")
    simple = _simple_headers(text)
    if simple is not None:
        match = _SIMPLE_DISPOSITION.fullmatch(simple.get("content-disposition", ""))
        if match is not None:
            return match.group(1), match.group(2), simple.get("content-type", "application/unknown")
    headers = HTTPHeaders.parse(text)
    disposition, params = _parse_header(headers.get("Content-Disposition", ""))
    if disposition.lower() != "form-data":
        raise MultipartError("a part is not form-data")
    name = params.get("name")
    if not name:
        raise MultipartError("a part has no name")
    return name, params.get("filename"), headers.get("Content-Type", "application/unknown")


class MultipartError(ValueError):
    """The body is not valid multipart/form-data."""


@dataclass
class Part:
    name: str
    filename: str | None  # None: no filename parameter; a string (maybe empty): an uploaded file
    content_type: str
    # A file part that arrived whole in one chunk is a read-only view of that chunk.
    data: bytearray | memoryview = field(default_factory=bytearray)

    @property
    def is_upload(self) -> bool:
        """An uploaded file: a filename parameter, or the name of the image's part."""
        return self.filename is not None or self.name in UPLOAD_NAMES


# The Content-Type that curl, requests and browsers send: one regular expression instead of
# splitting and stripping each parameter. Anything else takes the general reading below.
_PLAIN_BOUNDARY = re.compile(r"multipart/form-data; boundary=([0-9A-Za-z'()+_,./:=?-]+)")


def boundary_of(content_type: str) -> bytes:
    """The boundary parameter of a multipart/form-data Content-Type."""
    plain = _PLAIN_BOUNDARY.fullmatch(content_type)
    if plain is not None:
        return plain.group(1).encode("ascii")
    return read_boundary(content_type)


def read_boundary(content_type: str) -> bytes:
    """boundary_of's general reading: any case, spacing, quoting and order of parameters."""
    fields = content_type.split(";")
    if fields[0].strip().lower() != "multipart/form-data":
        raise MultipartError("not multipart/form-data")
    for item in fields[1:]:
        key, _, value = item.strip().partition("=")
        if key.strip().lower() == "boundary" and value:
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            if value:
                return value.encode("latin-1", "replace")
    raise MultipartError("multipart boundary not found")


class MultipartParser:
    def __init__(self, boundary: bytes, body_size: int | None = None) -> None:
        self._first = b"--" + boundary  # the first delimiter may start the body
        self._delimiter = b"\r\n--" + boundary  # every later one follows a line break
        self._buffer = bytearray()  # bytes not yet consumed: at most a delimiter's length in "data"
        self._state = "preamble"  # preamble | after_delimiter | headers | data | done
        self._part: Part | None = None
        self.parts: list[Part] = []
        # The body's declared length (Content-Length), if any: a large file part is then
        # written into one buffer sized up front (handlers/upload_buffer.py) instead of grown.
        self._body_size = body_size
        self._fed = 0
        self._sized = False  # the current part's data is a sized buffer...
        self._filled = 0  # ... of which this many bytes are written

    def feed(self, chunk: bytes | bytearray | memoryview) -> None:
        if self._state == "done":
            return  # the epilogue after the final delimiter is ignored
        self._fed += len(chunk)
        if isinstance(chunk, memoryview):
            chunk = chunk.tobytes()  # a memoryview has no find()
        if self._buffer and self._state == "data" and len(chunk) >= len(self._delimiter):
            chunk = self._settle_carried(chunk)
        if self._buffer:
            # A short chunk, or part headers or a delimiter split across chunks: join them.
            self._buffer += chunk
            del self._buffer[: self._consume(self._buffer)]
            return
        # Nothing carried over (a small upload arrives in one chunk): the chunk is scanned
        # where it is, and only what it ends with that cannot be parsed yet is kept.
        used = self._consume(chunk)
        if used < len(chunk):
            self._buffer += memoryview(chunk)[used:]

    def close(self) -> list[Part]:
        """The parts, once the whole body was fed; raises if it ended early."""
        if self._state != "done":
            raise MultipartError("no final boundary found")
        return self.parts

    def _settle_carried(self, chunk: bytes | bytearray) -> bytes | bytearray:
        """In a part's data, with the end of the last chunk carried over (shorter than a
        delimiter): decide it against the start of `chunk` alone, not by copying all of
        `chunk` behind it. Returns what of `chunk` is left to parse."""
        carried = len(self._buffer)
        joined = self._buffer + chunk[: len(self._delimiter) - 1]
        end = joined.find(self._delimiter)
        if 0 <= end < carried:
            # A delimiter starts in the carried bytes: it is the first one (any later one
            # starts in `chunk`), and `joined` holds all of it.
            self._buffer = joined  # _consume ends the part at `end` and goes on from there
            used = self._consume(self._buffer, len(chunk) - (len(self._delimiter) - 1))
            rest = used - carried  # how far into `chunk` that got (at least the delimiter's end)
            self._buffer = bytearray()
            return chunk[rest:]
        self._append(memoryview(self._buffer))  # no delimiter starts in it: it is data
        self._buffer = bytearray()
        return chunk

    def _consume(self, data: bytes | bytearray, fed_after: int = 0) -> int:
        """Parse `data` from its start as far as it allows; returns how many bytes were used
        (the rest must be fed again with what follows). `fed_after`: bytes already fed that
        follow `data` (for the size of a part that starts in it)."""
        pos = 0
        size = len(data)
        delimiter = self._delimiter
        state = self._state
        try:
            while True:
                if state == "data":
                    part = self._part
                    assert part is not None
                    end = data.find(delimiter, pos)
                    if end < 0:
                        # All but a possible delimiter start belongs to the part.
                        keep = len(delimiter) - 1
                        if size - pos > keep:
                            self._append(memoryview(data)[pos : size - keep])
                            pos = size - keep
                        return pos
                    if isinstance(data, bytes) and not part.data and not self._sized and part.is_upload:
                        # The whole file part is in this chunk, an immutable bytes object of the
                        # body's: a view of it, not a copy (a cache hit only hashes it).
                        part.data = memoryview(data)[pos:end]
                    else:
                        self._append(memoryview(data)[pos:end])
                    pos = end + len(delimiter)
                    if self._sized:
                        del part.data[self._filled :]  # the sized buffer's unused tail
                        self._sized = False
                    self._part = None
                    state = "after_delimiter"
                elif state == "after_delimiter":
                    if size - pos < 2:
                        return pos
                    follows = data[pos : pos + 2]
                    if follows == b"--":
                        state = "done"
                        return size  # the epilogue is ignored
                    if follows != b"\r\n":
                        raise MultipartError("a delimiter is not followed by a line break")
                    pos += 2
                    state = "headers"
                elif state == "headers":
                    end = data.find(b"\r\n\r\n", pos)
                    if end < 0:
                        if size - pos > MAX_HEADER_BYTES:
                            raise MultipartError("a part's headers are too large")
                        return pos
                    if end - pos > MAX_HEADER_BYTES:
                        raise MultipartError("a part's headers are too large")
                    self._start_part(bytes(data[pos:end]), size - pos + fed_after)
                    pos = end + 4
                    state = "data"
                elif state == "preamble":
                    start = data.find(self._first, pos)
                    if start < 0:
                        # Keep only what could be the start of the delimiter.
                        return max(pos, size - len(self._first) + 1)
                    pos = start + len(self._first)
                    state = "after_delimiter"
                else:
                    return size
        finally:
            self._state = state  # where the next chunk goes on (the state is kept in a local here)

    def _start_part(self, raw_headers: bytes, unparsed: int) -> None:
        """`unparsed`: the bytes fed but not parsed yet, from the start of these headers."""
        if len(self.parts) >= MAX_PARTS:
            raise MultipartError("too many parts")
        try:
            name, filename, content_type = read_part_headers(raw_headers)
        except MultipartError:
            raise
        except Exception as exc:  # noqa: BLE001 - any header Tornado cannot read is a malformed body
            raise MultipartError(f"unreadable part headers: {exc}") from None
        self._part = Part(name, filename, content_type)
        if self._part.is_upload and self._body_size is not None:
            # The part's bytes are at most what is left of the body after its headers.
            room = self._body_size - self._fed + unparsed
            if room >= LARGE_PART_BYTES:
                self._part.data, self._sized, self._filled = UPLOAD_BUFFERS.take(room), True, 0
        self.parts.append(self._part)

    def _append(self, data: memoryview) -> None:
        assert self._part is not None and isinstance(self._part.data, bytearray)
        if not self._sized:
            self._part.data += data
            return
        end = self._filled + len(data)
        if end > len(self._part.data):  # more than the declared length: grow as usual
            del self._part.data[self._filled :]
            self._sized = False
            self._part.data += data
            return
        self._part.data[self._filled : end] = data
        self._filled = end
