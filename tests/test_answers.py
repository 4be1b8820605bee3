"""Cache hits answer from kept JSON bytes: the same bytes as encoding the whole answer."""

from __future__ import annotations

import asyncio
import json

import orjson
import pytest
import requests

from cache.result_store import MemoryResultStore
from handlers.answers import EncodedAnswers, new_task_id, splices
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


def test_encoded_answers_hold_no_result_the_cache_let_go_and_stay_within_their_bytes() -> None:
    # They held the last 256 hits' results alive past the cache's byte budget (215 MB held
    # with service.img_bytes at 2 MiB, none of it in /health).
    async def check() -> None:
        results = MemoryResultStore(capacity=100, ttl=60, max_bytes=200_000)
        answers = EncodedAnswers(max_bytes=100_000)
        results.drop_listeners.append(answers.discard)
        big = LINES * 300  # ~74 KB of JSON a result: the cache holds 2, the answers 1
        for index in range(20):
            key = f"key{index}"
            await results.put(key, {"text_lines": big, "image_size": [index, 1], "det_used": True, "timing": {}})
            cached = await results.get(key)
            assert cached is not None
            answers.hit_answer(key, cached, "t" * 32, "h" * 64, 1.0)
            assert all(f"key{i}" in results.cache for i in range(index + 1) if f"key{i}" in answers)
            assert answers.bytes <= answers.max_bytes
        assert 0 < len(answers) < len(results.cache) < 20
        for key in [f"key{i}" for i in range(20)]:
            answers.discard(key)
        assert (len(answers), answers.bytes) == (0, 0)

    asyncio.run(check())


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


def test_a_hit_task_id_is_a_random_uuid4_in_hex() -> None:
    import uuid

    ids = {new_task_id() for _ in range(2000)}
    assert len(ids) == 2000
    for task_id in ids:
        parsed = uuid.UUID(hex=task_id)
        assert parsed.hex == task_id and parsed.version == 4 and parsed.variant == uuid.RFC_4122


def test_hits_for_each_det_mode_answer_from_their_own_result(ocr_server: RunningServer) -> None:
    # One image, two det modes: two cache entries, each hit spliced from its own result, with
    # its own task id, never the other mode's encoded answer.
    image = text_image(random_word())
    misses = {det: ocr_server.ocr_upload(image, det=det).json() for det in ("on", "off")}
    assert misses["on"]["det_used"] is True and misses["off"]["det_used"] is False
    for det in ("off", "on", "off"):
        hit = ocr_server.ocr_upload(image, det=det)
        body = hit.json()
        assert body["cached"] is True and hit.content == orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS)
        for field in ("image_hash", "text_lines", "image_size", "det_used"):
            assert body[field] == misses[det][field]
        assert body["task_id"] not in (misses["on"]["task_id"], misses["off"]["task_id"])


def test_an_upload_answered_as_a_task_is_read_by_a_worker_and_then_hit(ocr_server: RunningServer) -> None:
    # A small upload arrives in one chunk and is kept as a view of it; a miss hands the worker
    # its own copy, also when the request is a fire-and-forget task.
    word = random_word()
    image = text_image(word)
    queued = ocr_server.ocr_upload(image, block_flag="false")
    assert queued.status_code == 202
    task = requests.get(f"{ocr_server.url}{queued.json()['status_url']}?wait=30", timeout=60).json()
    assert task["status"] == "done"
    read = " ".join(line["text"] for line in task["text_lines"]).replace(" ", "")
    assert word in read
    again = ocr_server.ocr_upload(image, block_flag="false")
    assert again.status_code == 202 and again.json()["cached"] is True
    assert again.json()["text_lines"] == task["text_lines"]


def test_json_answers_carry_tornados_headers_then_ours_in_the_same_order() -> None:
    # JsonHandler.clear() builds the headers in one go; they must be what Tornado's clear()
    # plus set_header() for each of ours gave: names, values and order, errors included.
    import time as clock

    from tornado import httputil, web

    from handlers.base import JsonHandler

    class Connection:
        def set_close_callback(self, callback: object) -> None:
            pass

    class Stock(web.RequestHandler):
        def set_default_headers(self) -> None:
            self.set_header("Content-Type", "application/json; charset=UTF-8")
            self.set_header("Cache-Control", "no-store")
            self.set_header("X-Content-Type-Options", "nosniff")
            request_id = self.request.headers.get("X-Request-ID")
            if request_id:
                self.set_header("X-Request-ID", request_id)

    app = web.Application()
    for sent in ({"Host": "x"}, {"Host": "x", "X-Request-ID": "r-7"}):
        request = httputil.HTTPServerRequest(
            headers=httputil.HTTPHeaders(sent),
            connection=Connection(),  # type: ignore[arg-type]
            start_line=httputil.RequestStartLine("POST", "/ocr_service", "HTTP/1.1"),
        )
        second = int(clock.time())
        ours, stock = JsonHandler(app, request), Stock(app, request)
        if int(clock.time()) != second:
            continue  # the Date may differ across a second boundary; the other case checks it
        assert list(ours._headers.get_all()) == list(stock._headers.get_all())
        ours.clear()  # as an error answer does: the same again
        assert list(ours._headers.get_all()) == list(stock._headers.get_all())
