"""Cache hits answer from kept JSON bytes: the same bytes as encoding the whole answer."""

from __future__ import annotations

import json

import orjson
import pytest
import requests

from handlers.answers import EncodedAnswers, splices
from handlers.base import encode_json
from handlers.ocr import result_body
from tests.conftest import RunningServer, random_word, text_image

LINES = [
    {"text": "Total 12,50 €", "confidence": 0.9598, "box": [[147, 41], [364, 43], [363, 87], [147, 84]]},
    {"text": 'quote " and \\ backslash\n', "confidence": 1.0, "box": [[0, 0], [1, 0], [1, 1], [0, 1]]},
    {"text": "收据", "confidence": 0.5, "box": [[2, 2], [9, 2], [9, 9], [2, 9]]},
]


def expected(task_id: str, image_hash: str, result: dict, request_ms: float) -> bytes:
    """What the generic path writes for a hit (handlers/ocr.py: result_body + timing.request)."""
    body = result_body(task_id, image_hash, result, True)
    body["timing"]["request"] = request_ms
    return encode_json(body)


@pytest.mark.parametrize(
    "result",
    [
        {"text_lines": LINES, "image_size": [463, 605], "det_used": True, "timing": {"decode": 7.3, "total": 1077.1}},
        {"text_lines": [], "image_size": [10, 10], "det_used": False, "timing": {}},
        {"text_lines": LINES[:1], "image_size": [1, 2]},  # no det_used, no timing (older cache entries)
        {"text_lines": LINES, "image_size": [3, 4], "det_used": None, "timing": {"rec": 1e-7, "det": 12345678.9}},
    ],
)
def test_a_spliced_hit_answer_is_the_encoded_answer_byte_for_byte(result: dict) -> None:
    answers = EncodedAnswers()
    assert splices(result)
    for task_id, request_ms in (("a" * 32, 0.42), ("b" * 32, 1234.5), ("c" * 32, 0.0)):
        got = answers.hit_answer("key", result, task_id, "f" * 64, request_ms)
        assert got == expected(task_id, "f" * 64, result, request_ms)
        assert json.loads(got)["timing"]["request"] == request_ms


def test_a_new_result_under_the_same_key_is_encoded_again() -> None:
    answers = EncodedAnswers()
    old = {"text_lines": LINES[:1], "image_size": [1, 1], "det_used": True, "timing": {}}
    new = {"text_lines": LINES[1:], "image_size": [2, 2], "det_used": False, "timing": {"total": 1.0}}
    answers.hit_answer("key", old, "t" * 32, "h" * 64, 1.0)
    assert answers.hit_answer("key", new, "t" * 32, "h" * 64, 1.0) == expected("t" * 32, "h" * 64, new, 1.0)


def test_encoded_answers_are_bounded() -> None:
    answers = EncodedAnswers(capacity=3)
    for index in range(10):
        result = {"text_lines": [], "image_size": [index, index], "timing": {}}
        answers.hit_answer(f"key{index}", result, "t" * 32, "h" * 64, 1.0)
    assert len(answers) == 3


def test_documents_and_answers_with_a_request_time_take_the_general_path() -> None:
    assert not splices({"pages": [], "document": {}})
    assert not splices({"text_lines": [], "image_size": [1, 1], "timing": {"request": 3.0}})


def test_a_cache_hit_answers_the_first_answer_as_encoded_json(ocr_server: RunningServer) -> None:
    image = text_image(random_word())
    first = ocr_server.ocr_upload(image)
    hits = [ocr_server.ocr_upload(image) for _ in range(2)]
    assert first.status_code == 200 and first.json()["cached"] is False
    miss = first.json()
    for hit in hits:
        assert hit.status_code == 200 and hit.headers["Content-Type"] == "application/json; charset=UTF-8"
        body = hit.json()
        # Exactly the bytes the server's JSON encoder gives for this answer...
        assert hit.content == orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS)
        # ...and the first answer's result, marked cached, with its own task id and request time.
        assert list(body) == list(miss) and body["cached"] is True and body["task_id"] != miss["task_id"]
        for field in ("status", "image_hash", "text_lines", "image_size", "det_used"):
            assert body[field] == miss[field]
        worker_timing = {k: v for k, v in miss["timing"].items() if k not in ("queue_wait", "request")}
        assert body["timing"] == {**worker_timing, "request": body["timing"]["request"]}
    assert hits[0].json()["task_id"] != hits[1].json()["task_id"]
    assert requests.get(f"{ocr_server.url}/health", timeout=10).json()["cache"]["hits"] >= 2
