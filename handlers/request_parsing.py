"""Turn a POST /ocr_service body (form, multipart or JSON) into an OcrRequest.

Pure functions: no I/O, so every malformed-input case is unit-testable.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from tornado.httputil import HTTPFile, HTTPInputError, parse_body_arguments

from handlers.errors import ApiError
from handlers.files import is_encodable
from handlers.multipart import UPLOAD_NAMES, MultipartError, MultipartParser, boundary_of

FILE_FIELDS = UPLOAD_NAMES
TRUE_WORDS = {"true", "1", "yes", "on"}
FALSE_WORDS = {"false", "0", "no", "off"}
DET_MODES = ("on", "off", "auto")
# `auto` by default: detection for pages and photos, skipped for images shaped like a
# single text line (which detection would lose); `on`/`off` force either way.
DEFAULT_DET = "auto"
# PDFs: "layer" answers from the page's own text, "ocr" reads its pixels, "auto" takes the
# layer where a page has real text and OCRs the scans.
PDF_TEXT_MODES = ("auto", "ocr", "layer")
# A PDF password longer than this is a mistake (PDF's own limit is 127 bytes).
MAX_PASSWORD_CHARS = 1024


@dataclass(frozen=True)
class OcrRequest:
    file_type: str  # "filename" | "file"
    filename: str | None
    # A multipart upload's bytes stay where they were parsed into (no copy): a bytearray, or a
    # read-only view of the body chunk it arrived in whole.
    file_body: bytes | bytearray | memoryview | None
    block: bool
    det: str
    pdf_text: str = "auto"
    page_images: bool = False  # documents: a JPEG preview of each page, linked from the answer
    password: str | None = field(default=None, repr=False)  # a protected PDF's; never logged


def parse_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
    raise ApiError(400, "invalid_field", f"{name} must be true or false, got {describe_value(value)}")


def describe_value(value: Any) -> str:
    """A client's value, short, for an error message: scalars as JSON, anything else by its kind.

    Never serialises a list or an object: one nested nearly as deep as the JSON parser allows
    would overflow the stack here (a 500), and could be 64 KiB long anyway.
    """
    if isinstance(value, str):
        return json.dumps(value[:60]) + ("..." if len(value) > 60 else "")
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 200:
        return "a very long integer"  # str() of a huge int is slow, and refused past 4,300 digits
    if value is None or isinstance(value, (bool, int, float)):
        return json.dumps(value)
    return {dict: "an object", list: "an array"}.get(type(value), f"a {type(value).__name__}")


# JSON and urlencoded bodies carry fields only (the image travels as a multipart upload),
# so they are kept small: parsing megabytes of JSON would hold up the event loop.
FIELDS_BODY_LIMIT = 64 * 1024
FIELDS_ONLY_MEDIA_TYPES = ("application/json", "application/x-www-form-urlencoded")


def media_type_of(content_type: str) -> str:
    """The media type alone, lower-case: "Multipart/Form-Data; boundary=x" -> "multipart/form-data"."""
    return content_type.split(";")[0].strip().lower()


def fields_body_too_large() -> ApiError:
    return ApiError(
        413,
        "body_too_large",
        f"a JSON or form body holds only fields, at most {FIELDS_BODY_LIMIT} bytes; "
        "upload images as multipart/form-data",
    )


# Longest long-poll on GET /ocr_service/tasks/<id>?wait=N; longer values are capped.
MAX_TASK_WAIT_S = 30.0
# Task ids and preview tokens as this server makes them: up to 64 lower-case hex digits.
_HEX_ID = re.compile(r"[0-9a-f]{1,64}")


def is_hex_id(value: str) -> bool:
    """Whether `value` can name a task or a preview (any other is unknown without a lookup)."""
    return _HEX_ID.fullmatch(value) is not None



def parse_wait(value: str | None) -> float:
    """Seconds a task poll may wait for the task to finish (0 = answer at once)."""
    if value is None or value == "":
        return 0.0
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < float("inf"):  # also refuses nan
        raise ApiError(400, "invalid_field", f"wait must be a number of seconds from 0 to {MAX_TASK_WAIT_S:g}")
    return min(seconds, MAX_TASK_WAIT_S)


def parse_det(value: Any) -> str:
    if value in DET_MODES:  # as most clients send it (or the default)
        return str(value)
    if isinstance(value, str) and value.strip().lower() in DET_MODES:
        return value.strip().lower()
    try:
        return "on" if parse_bool("det", value) else "off"
    except ApiError:
        raise ApiError(400, "invalid_field", "det must be on, off or auto (or true or false)") from None


def _single(name: str, values: list[Any]) -> Any:
    if len(values) > 1:
        raise ApiError(400, "duplicate_field", f"field {name} was given {len(values)} times")
    return values[0]


def _decode_text(name: str, value: Any) -> Any:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise ApiError(400, "invalid_field", f"field {name} is not UTF-8 text") from None
    return value


def _malformed(exc: Exception) -> ApiError:
    return ApiError(400, "malformed_body", f"cannot parse the request body: {exc}")


def parse_form_body(content_type: str, body: bytes, headers: Any = None) -> tuple[dict[str, Any], list[HTTPFile]]:
    """Fields (single values) and uploaded files of a form or multipart body."""
    if media_type_of(content_type) == "multipart/form-data":
        parser = start_multipart(content_type, headers)
        feed_multipart(parser, body)
        return multipart_fields(parser)
    arguments: dict[str, list[bytes]] = {}
    files: dict[str, list[HTTPFile]] = {}
    try:
        # Media types are case-insensitive, Tornado's match is not: give it the lower-case type
        # ("Application/x-www-form-urlencoded" would otherwise parse as no fields at all).
        parse_body_arguments(media_type_of(content_type), body, arguments, files, headers)
    except HTTPInputError as exc:
        raise _malformed(exc) from None
    return _form_fields(arguments, files)


def _form_fields(
    arguments: dict[str, list[bytes]], files: dict[str, list[HTTPFile]]
) -> tuple[dict[str, Any], list[HTTPFile]]:
    fields = {name: _decode_text(name, _single(name, values)) for name, values in arguments.items()}
    uploads = [f for name in FILE_FIELDS for f in files.get(name, [])]
    return fields, uploads


def start_multipart(content_type: str, headers: Any = None, declared: str | None = None) -> MultipartParser:
    """A parser for a multipart body that is fed chunk by chunk as it arrives. `declared`: the
    Content-Length header's value when the caller has already read it from `headers`."""
    if headers and "Content-Encoding" in headers:
        raise _malformed(ValueError(f"unsupported Content-Encoding: {headers['Content-Encoding']}"))
    if declared is None and headers:
        declared = headers.get("Content-Length")
    try:
        return MultipartParser(boundary_of(content_type), _declared_length(declared))
    except MultipartError as exc:
        raise _malformed(exc) from None


def _declared_length(value: str | None) -> int | None:
    """The body's Content-Length when it is a plain number (Tornado reads exactly that many bytes)."""
    return int(value) if value is not None and value.isdigit() else None


def feed_multipart(parser: MultipartParser, chunk: bytes) -> None:
    try:
        parser.feed(chunk)
    except MultipartError as exc:
        raise _malformed(exc) from None


def multipart_fields(parser: MultipartParser) -> tuple[dict[str, Any], list[HTTPFile]]:
    """Fields and files of a multipart body that was fed whole."""
    try:
        parts = parser.close()
    except MultipartError as exc:
        raise _malformed(exc) from None
    arguments: dict[str, list[bytes]] = {}
    files: dict[str, list[HTTPFile]] = {}
    for part in parts:
        if not part.is_upload:  # a field; filename="" is an (unnamed) upload, and so is a bare `file` part
            arguments.setdefault(part.name, []).append(bytes(part.data))
        else:
            upload = HTTPFile(filename=part.filename or "", body=part.data, content_type=part.content_type)
            files.setdefault(part.name, []).append(upload)
    return _form_fields(arguments, files)


class _RepeatedKey(Exception):
    pass


def _refuse_repeated_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for key, value in pairs:  # one pass: the body (up to 64 KiB of keys) is parsed on the event loop
        if key in data:
            raise _RepeatedKey(key)
        data[key] = value
    return data


def _refuse_constant(name: str) -> Any:
    # NaN, Infinity and -Infinity: Python's json reads them, JSON (RFC 8259) has no such values.
    raise ApiError(400, "malformed_body", f"the body is not valid JSON: {name} is not a JSON value")


def parse_json_body(body: bytes) -> tuple[dict[str, Any], list[HTTPFile]]:
    try:
        # A repeated key is refused as a repeated form field is: json.loads keeps the last,
        # a proxy or filter in front may have read the first.
        data = json.loads(body, object_pairs_hook=_refuse_repeated_keys, parse_constant=_refuse_constant)
    except _RepeatedKey as exc:
        raise ApiError(400, "duplicate_field", f"the JSON body repeats the key {str(exc)[:100]!r}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, "malformed_body", f"the body is not valid JSON: {exc}") from None
    except RecursionError:
        raise ApiError(400, "malformed_body", "the JSON body is nested too deeply") from None
    except ValueError:
        # Python refuses to convert an integer of over 4,300 digits (sys.int_info.default_max_str_digits).
        raise ApiError(400, "malformed_body", "the JSON body holds a number with too many digits") from None
    if not isinstance(data, dict):
        raise ApiError(400, "malformed_body", "the JSON body must be an object")
    return data, []


def parse_ocr_request(content_type: str, body: bytes, query: dict[str, list[bytes]], headers: Any = None) -> OcrRequest:
    media_type = media_type_of(content_type)
    is_json = media_type == "application/json" or (not media_type and body.lstrip()[:1] == b"{")
    if (is_json or media_type in FIELDS_ONLY_MEDIA_TYPES) and len(body) > FIELDS_BODY_LIMIT:
        raise fields_body_too_large()
    if is_json:
        fields, uploads = parse_json_body(body)
    elif media_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        fields, uploads = parse_form_body(content_type, body, headers)
    elif not body:
        fields, uploads = {}, []
    else:
        raise unsupported_content_type(media_type)
    return build_ocr_request(fields, uploads, query)


def unsupported_content_type(media_type: str) -> ApiError:
    return ApiError(
        415 if media_type else 400,
        "unsupported_content_type",
        "send multipart/form-data, application/x-www-form-urlencoded or application/json",
    )


def readable_media_type(media_type: str) -> bool:
    """Whether a request body of this type can hold an OCR request (untyped: read as JSON)."""
    return not media_type or media_type == "multipart/form-data" or media_type in FIELDS_ONLY_MEDIA_TYPES


_FILE_TYPE_ONLY = {"file_type"}


def build_ocr_request(fields: dict[str, Any], uploads: list[HTTPFile], query: dict[str, list[bytes]]) -> OcrRequest:
    """The request from a parsed body's fields and files, plus the query string's fields."""
    if "password" in query:
        # URLs end up in proxies' and browsers' logs: a password travels in the body only.
        raise ApiError(400, "invalid_field", "send password in the request body, never in the URL")
    # Query-string fields are accepted too; the body wins.
    for name, values in query.items():
        if name not in fields and name not in FILE_FIELDS:
            fields[name] = _decode_text(name, _single(name, values))

    if len(uploads) > 1:
        raise ApiError(400, "duplicate_field", "send exactly one file part (named file or image)")
    file_type = fields.get("file_type")
    if file_type is None:
        file_type = "file" if uploads else "filename" if "filename" in fields else None
    if file_type not in ("filename", "file"):
        if file_type is None and ("file" in fields or "image" in fields):
            raise ApiError(
                400, "invalid_field", "upload the image as a multipart/form-data file part named file: a JSON or"
                " urlencoded body carries fields only"
            )  # fmt: skip
        if file_type is None:
            raise ApiError(400, "missing_field", "file_type is required: filename or file")
        raise ApiError(400, "invalid_field", "file_type must be filename or file")
    if file_type == "file" and uploads and fields.keys() <= _FILE_TYPE_ONLY:
        # An upload with no option (the usual request): every option at its default, as below.
        return OcrRequest("file", None, uploads[0].body, block=True, det=DEFAULT_DET)

    block = parse_bool("block_flag", fields.get("block_flag", True))
    det = parse_det(fields.get("det", DEFAULT_DET))
    pdf_text = fields.get("pdf_text", "auto")
    if pdf_text not in PDF_TEXT_MODES:  # else already as it must be (the default, mostly)
        if not isinstance(pdf_text, str) or pdf_text.strip().lower() not in PDF_TEXT_MODES:
            raise ApiError(400, "invalid_field", "pdf_text must be auto, ocr or layer")
        pdf_text = pdf_text.strip().lower()
    options = {
        "pdf_text": pdf_text,
        "page_images": parse_bool("page_images", fields.get("page_images", False)),
        "password": parse_password(fields.get("password")),
    }
    if file_type == "filename":
        filename = fields.get("filename")
        if filename is None or filename == "":
            raise ApiError(400, "missing_field", "filename is required when file_type is filename")
        if not isinstance(filename, str):
            raise ApiError(
                400, "invalid_field", f"filename must be a string (a path on the server), got {describe_value(filename)}"
            )
        return OcrRequest("filename", filename, None, block, det, **options)
    if not uploads:
        raise ApiError(400, "missing_field", "upload the image as a multipart file part named file")
    return OcrRequest("file", None, uploads[0].body, block, det, **options)


def parse_password(value: Any) -> str | None:
    """A PDF's password (None when absent or empty). Errors never repeat the value."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ApiError(400, "invalid_field", "password must be a string")
    if len(value) > MAX_PASSWORD_CHARS or "\x00" in value:
        raise ApiError(400, "invalid_field", f"password must be at most {MAX_PASSWORD_CHARS} characters, without NUL")
    if not is_encodable(value):
        # JSON can carry "\ud800", which no PDF password can hold (PDFium takes UTF-8).
        raise ApiError(400, "invalid_field", "password holds a lone surrogate (not valid Unicode text)")
    return value
