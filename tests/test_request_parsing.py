"""Request parsing is pure: every accepted and rejected body, without a server."""

from __future__ import annotations

import json

import pytest

from handlers.errors import ApiError
from handlers.request_parsing import FIELDS_BODY_LIMIT, MAX_TASK_WAIT_S, parse_ocr_request, parse_wait

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
    request = parse(json.dumps({"file_type": "filename", "filename": "./imgs/a.png", "block_flag": False}),
                    "application/json")
    assert (request.file_type, request.filename, request.block) == ("filename", "./imgs/a.png", False)


def test_defaults_block_and_auto_detection() -> None:
    request = parse("filename=a.png")
    assert request.file_type == "filename" and request.block is True and request.det == "auto"


def test_multipart_file_part_named_file_or_image() -> None:
    for name in ("file", "image"):
        body = (
            f'--B\r\nContent-Disposition: form-data; name="{name}"; filename="x.png"\r\n\r\nPNGDATA\r\n--B--\r\n'
        )
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
        ("<x/>", "text/xml", 415, "unsupported_content_type"),
        (b"filename=\xff\xfe", FORM, 400, "invalid_field"),
        ("--B\r\n", "multipart/form-data", 400, "malformed_body"),
    ],
)
def test_rejected_bodies(body: bytes | str, content_type: str, status: int, code: str) -> None:
    with pytest.raises(ApiError) as error:
        parse(body, content_type)
    assert (error.value.status, error.value.code) == (status, code)


def test_query_string_fields_are_accepted_body_wins() -> None:
    request = parse("filename=a.png&block_flag=true", query={"block_flag": [b"false"], "det": [b"off"]})
    assert request.block is True and request.det == "off"


@pytest.mark.parametrize(("value", "seconds"), [(None, 0.0), ("", 0.0), ("0", 0.0), ("2.5", 2.5), ("30", 30.0), ("600", 30.0)])
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
