"""Request parsing is pure: every accepted and rejected body, without a server."""

from __future__ import annotations

import json
import sys

import pytest

from handlers.errors import ApiError
from handlers.multipart import MultipartParser
from handlers.request_parsing import (
    FIELDS_BODY_LIMIT,
    MAX_TASK_WAIT_S,
    build_ocr_request,
    parse_bool,
    parse_ocr_request,
    parse_password,
    parse_wait,
)

FORM = "application/x-www-form-urlencoded"


def parse(body: bytes | str, content_type: str = FORM, query: dict | None = None):  # type: ignore[no-untyped-def]
    data = body.encode() if isinstance(body, str) else body
    return parse_ocr_request(content_type, data, query or {})


@pytest.mark.parametrize(
    ("flag", "expected"),
    [("True", True), ("true", True), ("1", True), ("False", False), ("false", False), ("0", False)],
)
def test_block_flag_words_of_the_original_clients(flag: str, expected: bool) -> None:
    request = parse(f"file_type=filename&filename=a.png&block_flag={flag}")
    assert request.block is expected


def test_json_body_with_real_booleans() -> None:
    request = parse(
        json.dumps({"file_type": "filename", "filename": "./imgs/a.png", "block_flag": False}), "application/json"
    )
    assert (request.file_type, request.filename, request.block) == ("filename", "./imgs/a.png", False)


def test_defaults_block_and_auto_detection() -> None:
    request = parse("filename=a.png")
    assert request.file_type == "filename" and request.block is True and request.det == "auto"


def test_multipart_file_part_named_file_or_image() -> None:
    for name in ("file", "image"):
        body = f'--B\r\nContent-Disposition: form-data; name="{name}"; filename="x.png"\r\n\r\nPNGDATA\r\n--B--\r\n'
        request = parse(body, "multipart/form-data; boundary=B")
        assert request.file_type == "file" and request.file_body == b"PNGDATA"


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code"),
    [
        ("{", "application/json", 400, "malformed_body"),
        ("[1]", "application/json", 400, "malformed_body"),
        ("file_type=ftp&filename=a", FORM, 400, "invalid_field"),
        ("file_type=filename", FORM, 400, "missing_field"),
        ("file_type=file", FORM, 400, "missing_field"),
        ("", FORM, 400, "missing_field"),
        ("filename=a&block_flag=2", FORM, 400, "invalid_field"),
        ("filename=a&det=sideways", FORM, 400, "invalid_field"),
        ("filename=a&filename=b", FORM, 400, "duplicate_field"),
        ('{"filename": "a", "filename": "b"}', "application/json", 400, "duplicate_field"),
        ('{"det": {"x": 1, "x": 2}, "filename": "a"}', "application/json", 400, "duplicate_field"),
        ("<x/>", "text/xml", 415, "unsupported_content_type"),
        (b"filename=\xff\xfe", FORM, 400, "invalid_field"),
        ("--B\r\n", "multipart/form-data", 400, "malformed_body"),
    ],
)
def test_rejected_bodies(body: bytes | str, content_type: str, status: int, code: str) -> None:
    with pytest.raises(ApiError) as error:
        parse(body, content_type)
    assert (error.value.status, error.value.code) == (status, code)


@pytest.mark.parametrize(
    ("body", "code", "message"),
    [
        ('{"filename": 5}', "invalid_field", "filename must be a string (a path on the server), got 5"),
        ('{"file_type": "filename", "filename": ["a.png"]}', "invalid_field", "filename must be a string (a path on the server), got an array"),
        ('{"filename": true}', "invalid_field", "filename must be a string (a path on the server), got true"),
        ('{"filename": null}', "missing_field", "filename is required when file_type is filename"),
        ('{"filename": NaN}', "malformed_body", "the body is not valid JSON: NaN is not a JSON value"),
        ('{"filename": "a.png", "det": -Infinity}', "malformed_body", "the body is not valid JSON: -Infinity is not a JSON value"),
        ('{"file": "aGVsbG8="}', "invalid_field", "upload the image as a multipart/form-data file part named file: a JSON or urlencoded body carries fields only"),
    ],
)  # fmt: skip
def test_a_json_field_of_the_wrong_kind_is_named_as_such(body: str, code: str, message: str) -> None:
    # A filename of another type was answered "filename is required", and NaN was read as a value.
    with pytest.raises(ApiError) as error:
        parse(body, "application/json")
    assert (error.value.status, error.value.code, error.value.message) == (400, code, message)


def test_query_string_fields_are_accepted_body_wins() -> None:
    request = parse("filename=a.png&block_flag=true", query={"block_flag": [b"false"], "det": [b"off"]})
    assert request.block is True and request.det == "off"


@pytest.mark.parametrize(
    ("value", "seconds"), [(None, 0.0), ("", 0.0), ("0", 0.0), ("2.5", 2.5), ("30", 30.0), ("600", 30.0)]
)
def test_task_wait_is_seconds_capped_at_the_maximum(value: str | None, seconds: float) -> None:
    assert parse_wait(value) == seconds
    assert MAX_TASK_WAIT_S == 30.0


@pytest.mark.parametrize("value", ["-1", "soon", "nan", "inf", "1e999"])
def test_task_wait_refuses_what_is_not_a_duration(value: str) -> None:
    with pytest.raises(ApiError) as info:
        parse_wait(value)
    assert info.value.status_code == 400 and info.value.code == "invalid_field"


@pytest.mark.parametrize(
    "body",
    [b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 100_000 + b"1" + b"}" * 100_000],
    ids=["nested-lists", "nested-objects"],
)
def test_deeply_nested_json_is_a_400_not_a_crash(body: bytes) -> None:
    with pytest.raises(ApiError) as info:
        parse_ocr_request("application/json", body[:FIELDS_BODY_LIMIT], {})
    assert info.value.status_code == 400 and info.value.code == "malformed_body"


@pytest.mark.parametrize("content_type", ["application/json", "application/x-www-form-urlencoded", ""])
def test_fields_only_bodies_are_small(content_type: str) -> None:
    big = b'{"file_type": "filename", "filename": "' + b"a" * FIELDS_BODY_LIMIT + b'"}'
    if "urlencoded" in content_type:
        big = b"file_type=filename&filename=" + b"a" * FIELDS_BODY_LIMIT
    with pytest.raises(ApiError) as info:
        parse_ocr_request(content_type, big, {})
    assert info.value.status_code == 413 and info.value.code == "body_too_large"
    assert "multipart/form-data" in info.value.message


# ---- client mistakes that used to be 500s or wrong 400s -------------------------------------


def test_json_integer_too_long_to_convert_is_malformed_not_a_crash() -> None:
    # Python refuses int("1" * 5000) with a plain ValueError, not a JSONDecodeError.
    body = b'{"file_type":"filename","filename":"x","anything":' + b"1" * 5000 + b"}"
    with pytest.raises(ApiError) as info:
        parse(body, "application/json")
    assert (info.value.status_code, info.value.code) == (400, "malformed_body")
    assert "set_int_max_str_digits" not in info.value.message  # no advice about our interpreter


def test_json_integers_of_ordinary_length_still_parse() -> None:
    request = parse(b'{"file_type":"filename","filename":"x","anything":' + b"1" * 4000 + b"}", "application/json")
    assert request.filename == "x"


def _nested(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("depth", [1, 50, 100_000])
def test_a_nested_det_or_flag_is_a_400_whatever_its_depth(depth: int) -> None:
    for name, value in [
        ("det", _nested(depth)),
        ("block_flag", _nested(depth)),
        ("page_images", {"a": _nested(depth)}),
    ]:
        fields = {"file_type": "filename", "filename": "x", name: value}
        with pytest.raises(ApiError) as info:
            build_ocr_request(fields, [], {})
        assert (info.value.status_code, info.value.code) == (400, "invalid_field")


def test_json_det_nested_just_under_the_parsers_limit_is_a_400() -> None:
    # json.loads accepts nesting up to about the recursion limit; serialising the value again
    # one frame deeper (for the error message) used to overflow: a 500 in a narrow band of depths.
    limit = sys.getrecursionlimit()
    for depth in range(limit - 400, limit + 10):
        body = b'{"filename":"a","det":' + b"[" * depth + b"]" * depth + b"}"
        with pytest.raises(ApiError) as info:
            parse(body, "application/json")
        assert info.value.status_code == 400 and info.value.code in ("invalid_field", "malformed_body"), depth


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("maybe", '"maybe"'),
        (2, "2"),
        (1.5, "1.5"),
        (None, "null"),
        ([1, 2], "an array"),
        ({"a": 1}, "an object"),
        ("x" * 1000, '"' + "x" * 50),
    ],
)
def test_flag_errors_describe_the_value_without_serialising_containers(value: object, shown: str) -> None:
    with pytest.raises(ApiError) as info:
        parse_bool("block_flag", value)
    assert info.value.code == "invalid_field" and shown in info.value.message
    assert len(info.value.message) < 200


@pytest.mark.parametrize("escaped", [b"\\ud800", b"\\udfff", b"ab\\udc80cd"])
def test_a_password_with_a_lone_surrogate_is_refused_without_repeating_it(escaped: bytes) -> None:
    body = b'{"file_type":"filename","filename":"doc.pdf","password":"' + escaped + b'"}'
    with pytest.raises(ApiError) as info:
        parse(body, "application/json")
    assert (info.value.status_code, info.value.code) == (400, "invalid_field")
    assert "password" in info.value.message and "\\u" not in info.value.message
    assert not any("\ud800" <= char <= "\udfff" for char in info.value.message)


def test_a_non_ascii_password_is_still_accepted() -> None:
    assert parse_password("pässwörd-\U0001f511") == "pässwörd-\U0001f511"


@pytest.mark.parametrize(
    "content_type",
    [
        "Application/x-www-form-urlencoded",
        "APPLICATION/X-WWW-FORM-URLENCODED; charset=UTF-8",
        " application/x-www-form-urlencoded ;charset=utf-8",
    ],
)
def test_form_media_type_is_case_insensitive(content_type: str) -> None:
    request = parse("file_type=filename&filename=a.png&det=off", content_type)
    assert (request.file_type, request.filename, request.det) == ("filename", "a.png", "off")


PNG_START = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"


def _multipart(*parts: tuple[str, bytes]) -> bytes:
    body = b"".join(b"--B\r\n" + headers.encode() + b"\r\n\r\n" + data + b"\r\n" for headers, data in parts)
    return body + b"--B--\r\n"


@pytest.mark.parametrize(
    "disposition",
    [
        'Content-Disposition: form-data; name="file"; filename=""',
        'Content-Disposition: form-data; name="file"; filename=""; size=4',  # Tornado's general parser
        'Content-Disposition: form-data; name="file"; filename=""\r\nContent-Type: application/octet-stream',
        'content-disposition: form-data;name="image";filename=""',
        'Content-Disposition: form-data; name="file"; filename=',
    ],
)
def test_a_part_with_an_empty_filename_is_an_upload(disposition: str) -> None:
    body = _multipart(('Content-Disposition: form-data; name="file_type"', b"file"), (disposition, PNG_START))
    request = parse(body, "multipart/form-data; boundary=B")
    assert request.file_type == "file" and request.file_body == PNG_START


def test_an_empty_file_input_is_an_empty_upload() -> None:
    # What a browser sends for a file input left empty: the handler answers 400 empty_file.
    body = _multipart(
        ('Content-Disposition: form-data; name="file"; filename=""\r\nContent-Type: application/octet-stream', b"")
    )
    request = parse(body, "multipart/form-data; boundary=B")
    assert request.file_type == "file" and request.file_body == b""


@pytest.mark.parametrize("name", ["file", "image"])
def test_the_image_part_without_a_filename_is_the_upload(name: str) -> None:
    # `curl -F 'file=<img.png'` sends the bytes as a plain field: it was refused as "not UTF-8 text".
    for fields in ((), (('Content-Disposition: form-data; name="file_type"', b"file"),)):
        body = _multipart(*fields, (f'Content-Disposition: form-data; name="{name}"', PNG_START))
        request = parse(body, "multipart/form-data; boundary=B")
        assert request.file_type == "file" and request.file_body == PNG_START


def test_a_bare_image_part_beside_a_named_upload_is_a_second_file() -> None:
    body = _multipart(
        ('Content-Disposition: form-data; name="file"; filename="a.png"', PNG_START),
        ('Content-Disposition: form-data; name="image"', PNG_START),
    )
    with pytest.raises(ApiError) as info:
        parse(body, "multipart/form-data; boundary=B")
    assert (info.value.status_code, info.value.code) == (400, "duplicate_field")


def test_multipart_parts_keep_an_empty_filename_apart_from_none() -> None:
    parser = MultipartParser(b"B")
    parser.feed(
        _multipart(
            ('Content-Disposition: form-data; name="a"', b"text"),
            ('Content-Disposition: form-data; name="b"; filename=""', b"\xff"),
            ('Content-Disposition: form-data; name="c"; filename="c.png"', b"\xfe"),
        )
    )
    assert [(p.name, p.filename) for p in parser.close()] == [("a", None), ("b", ""), ("c", "c.png")]


@pytest.mark.parametrize(
    "disposition",
    [
        'Content-Disposition: Form-Data; name="{name}"',
        'Content-Disposition: FORM-DATA; name="{name}"',
        'CONTENT-DISPOSITION: form-Data;name="{name}"',
        'Content-Disposition: Form-Data; Name="{name}"',  # parameter names are case-insensitive too
        "Content-Disposition: Form-Data; name*=UTF-8''{name}",  # the general parser's path
    ],
)
def test_form_data_disposition_is_case_insensitive(disposition: str) -> None:
    upload = disposition.format(name="file") + '; filename="a.png"'
    body = _multipart((disposition.format(name="file_type"), b"file"), (upload, PNG_START))
    request = parse(body, "multipart/form-data; boundary=B")
    assert request.file_type == "file" and request.file_body == PNG_START


@pytest.mark.parametrize("disposition", ['attachment; name="file_type"', 'form-datax; name="file_type"', "form-data"])
def test_other_dispositions_are_still_refused(disposition: str) -> None:
    with pytest.raises(ApiError) as info:
        parse(_multipart(("Content-Disposition: " + disposition, b"file")), "multipart/form-data; boundary=B")
    assert (info.value.status_code, info.value.code) == (400, "malformed_body")


def _upload_request(fields: dict, query: dict | None = None):  # type: ignore[no-untyped-def]
    from tornado.httputil import HTTPFile

    return build_ocr_request(
        dict(fields), [HTTPFile(filename="a.png", body=b"img", content_type="image/png")], query or {}
    )


@pytest.mark.parametrize("fields", [{}, {"file_type": "file"}])
def test_an_upload_without_options_is_the_request_with_every_default(fields: dict) -> None:
    from handlers.request_parsing import OcrRequest

    # The short path for the usual upload gives exactly what the full reading gives.
    assert _upload_request(fields) == OcrRequest("file", None, b"img", True, "auto", "auto", False, None)
    spelled_out = {**fields, "block_flag": "true", "det": "auto", "pdf_text": "auto", "page_images": "false"}
    assert _upload_request(spelled_out) == _upload_request(fields)


@pytest.mark.parametrize(
    ("fields", "query", "changed"),
    [
        ({"det": "off"}, {}, {"det": "off"}),
        ({"det": " On "}, {}, {"det": "on"}),
        ({"det": True}, {}, {"det": "on"}),
        ({}, {"det": [b"off"]}, {"det": "off"}),
        ({"block_flag": "0"}, {}, {"block": False}),
        ({"pdf_text": "OCR "}, {}, {"pdf_text": "ocr"}),
        ({"pdf_text": "layer"}, {}, {"pdf_text": "layer"}),
        ({"page_images": "1"}, {}, {"page_images": True}),
        ({"password": "pw"}, {}, {"password": "pw"}),
    ],
)
def test_any_option_given_takes_the_full_reading(fields: dict, query: dict, changed: dict) -> None:
    import dataclasses

    defaults = _upload_request({})
    assert _upload_request({"file_type": "file", **fields}, query) == dataclasses.replace(defaults, **changed)


@pytest.mark.parametrize("value", ["", "AUTO ", "sometimes", 2, [], {}])
def test_det_and_pdf_text_values_off_the_short_path_are_still_checked(value: object) -> None:
    from handlers.request_parsing import parse_det

    if value == "AUTO ":
        assert parse_det(value) == "auto"
    else:
        with pytest.raises(ApiError):
            parse_det(value)
    if value != "AUTO ":
        with pytest.raises(ApiError) as refused:
            _upload_request({"pdf_text": value})
        assert "pdf_text" in refused.value.message


@pytest.mark.parametrize(
    "content_type",
    [
        "multipart/form-data; boundary=abc123",
        "multipart/form-data; boundary=----WebKitFormBoundary7MA4YWxkTrZu0gW",
        "multipart/form-data; boundary=a=b'()+_,./:?-",
        'multipart/form-data; boundary="quoted value"',
        "multipart/form-data;boundary=tight",
        "Multipart/Form-Data; BOUNDARY=upper",
        "multipart/form-data; charset=utf-8; boundary=second",
        "multipart/form-data; boundary=",
        "multipart/form-data; boundary=a b",
        "multipart/form-data; boundary=x;",
        "multipart/form-data",
        "text/plain; boundary=x",
    ],
)
def test_the_boundary_is_read_as_the_general_reading_reads_it(content_type: str) -> None:
    # boundary_of reads the usual Content-Type with one regular expression, anything else the
    # general way: both must agree on every value, and on what they refuse.
    from handlers.multipart import MultipartError, boundary_of, read_boundary

    try:
        expected: bytes | None = read_boundary(content_type)
    except MultipartError:
        expected = None
    if expected is None:
        with pytest.raises(MultipartError):
            boundary_of(content_type)
    else:
        assert boundary_of(content_type) == expected


def test_part_headers_read_again_give_the_same_answer_and_errors_are_not_kept() -> None:
    from handlers.multipart import MultipartError, read_part_headers

    raw = b'Content-Disposition: form-data; name="file"; filename="a.png"\r\nContent-Type: image/png'
    assert read_part_headers(raw) == read_part_headers(bytes(raw)) == ("file", "a.png", "image/png")
    for _ in range(2):  # a refusal is raised every time, never remembered as an answer
        with pytest.raises(MultipartError):
            read_part_headers(b'Content-Disposition: attachment; name="a"')
