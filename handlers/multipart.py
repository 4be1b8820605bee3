"""An incremental multipart/form-data parser, fed the body chunk by chunk as it arrives.

Why not Tornado's parse_body_arguments: it needs the whole body as one bytes object (a
join of every chunk) and then splits and slices it again, three full copies of a 20 MiB
upload made on the event loop at once, tens of milliseconds in which nothing else is
answered. Here each chunk is scanned and appended to its part as it arrives (a few
microseconds per 64 KiB chunk), and a file part's bytes are copied once, into the
bytearray the handler hands on. Pure: no I/O, so every malformed shape is unit-testable.

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
    data: bytearray = field(default_factory=bytearray)

    @property
    def is_upload(self) -> bool:
        """An uploaded file: a filename parameter, or the name of the image's part."""
        return self.filename is not None or self.name in UPLOAD_NAMES


def boundary_of(content_type: str) -> bytes:
    """The boundary parameter of a multipart/form-data Content-Type."""
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
        self._buffer += chunk
        while self._step():
            pass

    def close(self) -> list[Part]:
        """The parts, once the whole body was fed; raises if it ended early."""
        if self._state != "done":
            raise MultipartError("no final boundary found")
        return self.parts

    def _step(self) -> bool:
        """Consume what the buffer allows; True when the state moved on and there may be more."""
        buffer = self._buffer
        if self._state == "preamble":
            start = buffer.find(self._first)
            if start < 0:
                # Keep only what could be the start of the delimiter.
                del buffer[: max(0, len(buffer) - len(self._first) + 1)]
                return False
            del buffer[: start + len(self._first)]
            self._state = "after_delimiter"
            return True
        if self._state == "after_delimiter":
            if len(buffer) < 2:
                return False
            if buffer[:2] == b"--":
                self._state = "done"
                buffer.clear()
                return False
            if buffer[:2] != b"\r\n":
                raise MultipartError("a delimiter is not followed by a line break")
            del buffer[:2]
            self._state = "headers"
            return True
        if self._state == "headers":
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > MAX_HEADER_BYTES:
                    raise MultipartError("a part's headers are too large")
                return False
            if end > MAX_HEADER_BYTES:
                raise MultipartError("a part's headers are too large")
            self._start_part(bytes(buffer[:end]))
            del buffer[: end + 4]
            self._state = "data"
            return True
        if self._state == "data":
            assert self._part is not None
            end = buffer.find(self._delimiter)
            if end < 0:
                # All but a possible delimiter start belongs to the part.
                keep = len(self._delimiter) - 1
                if len(buffer) > keep:
                    self._append(memoryview(buffer)[: len(buffer) - keep])
                    del buffer[: len(buffer) - keep]
                return False
            self._append(memoryview(buffer)[:end])
            del buffer[: end + len(self._delimiter)]
            if self._sized:
                del self._part.data[self._filled :]  # the sized buffer's unused tail
                self._sized = False
            self._part = None
            self._state = "after_delimiter"
            return True
        return False

    def _start_part(self, raw_headers: bytes) -> None:
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
            room = self._body_size - self._fed + len(self._buffer)
            if room >= LARGE_PART_BYTES:
                self._part.data, self._sized, self._filled = UPLOAD_BUFFERS.take(room), True, 0
        self.parts.append(self._part)

    def _append(self, data: memoryview) -> None:
        assert self._part is not None
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
