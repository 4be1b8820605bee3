"""The OCR service end to end: real server, real worker processes, real PP-OCR models."""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from bench.common import bag_cer, cer, normalize_lines
from tests.conftest import (
    GT_DIR,
    REPO,
    RunningServer,
    base_config,
    gt_entry,
    metric,
    random_word,
    start_server,
    text_image,
)


def ocr_text(body: dict) -> list[str]:
    return [line["text"] for line in body["text_lines"]]


def test_upload_reads_rendered_text(ocr_server: RunningServer) -> None:
    word = random_word()
    response = ocr_server.ocr_upload(text_image(f"TOTAL {word}"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "done"
    assert body["cached"] is False
    assert len(body["image_hash"]) == 64
    assert word in " ".join(ocr_text(body))
    line = body["text_lines"][0]
    assert 0.0 <= line["confidence"] <= 1.0
    assert len(line["box"]) == 4 and all(len(point) == 2 for point in line["box"])
    assert set(body["timing"]) >= {"det", "rec", "queue_wait", "request"}


def test_upload_reads_a_real_receipt(ocr_server: RunningServer) -> None:
    entry = gt_entry(lambda e: e["source"].lower().startswith("sroie"))
    data = (GT_DIR / entry["image"]).read_bytes()
    response = ocr_server.ocr_upload(data)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["image_size"] == [entry["width"], entry["height"]]
    # This receipt measured 24.6% case-folded sorted-line CER (mostly lines split
    # differently from the ground truth) and ~3% order-free character error on the
    # bench (bench/RESULTS-engine.md); the bounds leave room, a wrong engine fails both.
    assert cer(normalize_lines(entry["lines"], True), normalize_lines(ocr_text(body), True)) < 0.35
    edits, chars = bag_cer(entry["lines"], ocr_text(body))
    assert edits / chars < 0.08


def test_a_receipt_in_the_middle_of_a_large_blank_scan_reads_like_the_receipt_alone(ocr_server: RunningServer) -> None:
    # A receipt on a scanner's glass at 600 dpi: an A4 page (4961 x 7016) of white around it.
    # Shrunk whole to the detector's 1280 px its text would be 2-3 px high.
    import io

    from PIL import Image

    entry = gt_entry(lambda e: e["image"].endswith("sroie_020.jpg"))
    receipt = Image.open(GT_DIR / entry["image"]).convert("RGB")
    page = Image.new("RGB", (4961, 7016), "white")
    left, top = (page.width - receipt.width) // 2, (page.height - receipt.height) // 2
    page.paste(receipt, (left, top))
    buffer = io.BytesIO()
    page.save(buffer, "PNG")
    alone, scanned = (
        ocr_server.ocr_upload(data).json() for data in ((GT_DIR / entry["image"]).read_bytes(), buffer.getvalue())
    )
    assert scanned["image_size"] == [4961, 7016]
    alone_edits, chars = bag_cer(entry["lines"], ocr_text(alone))
    scanned_edits, _ = bag_cer(entry["lines"], ocr_text(scanned))
    assert scanned_edits / chars <= alone_edits / chars + 0.02, (alone_edits, scanned_edits, chars)
    # Boxes are in the page's pixels, on the receipt (a box around text at its edge may
    # reach a little past it).
    for line in scanned["text_lines"]:
        xs, ys = [x for x, _ in line["box"]], [y for _, y in line["box"]]
        assert left - 20 <= min(xs) and max(xs) <= left + receipt.width + 20, line
        assert top - 20 <= min(ys) and max(ys) <= top + receipt.height + 20, line


@pytest.mark.parametrize("degrees", [180, 90, 270])
def test_a_page_scanned_upside_down_or_sideways_reads_like_the_page_and_in_its_order(
    ocr_server: RunningServer, degrees: int
) -> None:
    import io

    from PIL import Image

    entry = gt_entry(lambda e: e["image"].endswith("sroie_260.jpg"))
    upright = (GT_DIR / entry["image"]).read_bytes()
    turned = io.BytesIO()
    Image.open(GT_DIR / entry["image"]).rotate(degrees, expand=True).save(turned, "PNG")  # counter-clockwise
    alone, scanned = (ocr_server.ocr_upload(data).json() for data in (upright, turned.getvalue()))
    alone_edits, chars = bag_cer(entry["lines"], ocr_text(alone))
    turned_edits, _ = bag_cer(entry["lines"], ocr_text(scanned))
    # Read line by line, this receipt measured 14 % order-free CER upside down, 6 % sideways.
    assert turned_edits / chars <= alone_edits / chars + 0.02, (alone_edits, turned_edits, chars)
    # The page's first line comes first, boxed where the page's top went.
    first = scanned["text_lines"][0]
    assert first["text"].split()[0] == alone["text_lines"][0]["text"].split()[0], (first, alone["text_lines"][0])
    width, height = scanned["image_size"]
    centre_x = sum(x for x, _ in first["box"]) / 4
    centre_y = sum(y for _, y in first["box"]) / 4
    where = {180: centre_y > height / 2, 90: centre_x < width / 2, 270: centre_x > width / 2}
    assert where[degrees], (first, scanned["image_size"])


def test_chinese_document_comes_back_as_utf8_json(ocr_server: RunningServer) -> None:
    entry = gt_entry(lambda e: e["image"].endswith("pp_00059985.jpg"))
    response = ocr_server.ocr_upload((GT_DIR / entry["image"]).read_bytes())
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "application/json; charset=UTF-8"
    lines = ocr_text(response.json())
    # Characters are sent as UTF-8, not as \u escapes: a plain-text reader sees them too.
    assert lines[0].encode() in response.content
    assert any("\u4e00" <= char <= "\u9fff" for char in "".join(lines))
    # This page measured 6 of 171 characters wrong (3.5%, order-free); a wrong dictionary
    # or a mangled encoding gets nearly every character wrong.
    edits, chars = bag_cer(entry["lines"], lines)
    assert edits / chars < 0.10, f"{edits}/{chars} characters wrong: {lines}"


def test_filename_mode_with_original_client_bodies(ocr_server: RunningServer) -> None:
    assert ocr_server.images_dir is not None
    word = random_word()
    path = ocr_server.images_dir / f"{word}.png"
    path.write_bytes(text_image(f"NO {word}"))
    url = f"{ocr_server.url}/ocr_service"
    # The original project's clients: JSON with a real boolean, and form fields with "True".
    as_json = requests.post(url, json={"file_type": "filename", "filename": str(path), "block_flag": True}, timeout=120)
    as_form = requests.post(
        url, data={"file_type": "filename", "filename": str(path), "block_flag": "True"}, timeout=120
    )
    for response in (as_json, as_form):
        assert response.status_code == 200, response.text
        assert word in " ".join(ocr_text(response.json()))
    assert as_form.json()["cached"] is True
    assert as_json.json()["image_hash"] == as_form.json()["image_hash"]


def test_filename_change_on_disk_is_not_served_stale(ocr_server: RunningServer) -> None:
    assert ocr_server.images_dir is not None
    path = ocr_server.images_dir / "changing.png"
    first, second = random_word(), random_word()
    path.write_bytes(text_image(first))
    body1 = requests.post(f"{ocr_server.url}/ocr_service", data={"filename": str(path)}, timeout=120).json()
    path.write_bytes(text_image(second))
    body2 = requests.post(f"{ocr_server.url}/ocr_service", data={"filename": str(path)}, timeout=120).json()
    assert first in " ".join(ocr_text(body1))
    assert second in " ".join(ocr_text(body2))
    assert body2["cached"] is False


def test_block_flag_false_then_poll(ocr_server: RunningServer) -> None:
    word = random_word()
    started = time.monotonic()
    response = ocr_server.ocr_upload(text_image(word), block_flag="False")
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] in ("queued", "running")
    assert body["status_url"] == f"/ocr_service/tasks/{body['task_id']}"
    while True:
        polled = requests.get(ocr_server.url + body["status_url"], timeout=10)
        assert polled.status_code == 200
        if polled.json()["status"] == "done":
            break
        assert polled.json()["status"] in ("queued", "running")
        assert time.monotonic() - started < 60, "task did not finish"
        time.sleep(0.1)
    done = polled.json()
    assert word in " ".join(ocr_text(done))
    assert done["task_id"] == body["task_id"]
    # The same image again, fire-and-forget: already cached, so the answer is complete at once.
    again = ocr_server.ocr_upload(text_image(word), block_flag="false").json()
    assert again["status"] == "done" and again["cached"] is True and again["text_lines"] == done["text_lines"]
    missing = requests.get(f"{ocr_server.url}/ocr_service/tasks/{'0' * 32}", timeout=10)
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "task_not_found"


def test_task_poll_with_wait_answers_when_done(ocr_server: RunningServer) -> None:
    word = random_word()
    submitted = ocr_server.ocr_upload(text_image(word), block_flag="false")
    assert submitted.status_code == 202
    # One long-poll instead of a polling loop: it returns as soon as the task is done.
    polled = requests.get(ocr_server.url + submitted.json()["status_url"], params={"wait": 60}, timeout=90)
    assert polled.status_code == 200 and polled.json()["status"] == "done"
    assert word in " ".join(ocr_text(polled.json()))
    bad_wait = requests.get(ocr_server.url + submitted.json()["status_url"], params={"wait": "soon"}, timeout=10)
    assert bad_wait.status_code == 400 and bad_wait.json()["error"]["code"] == "invalid_field"


def test_second_request_is_a_cache_hit_without_ocr(ocr_server: RunningServer) -> None:
    data = text_image(random_word())
    first = ocr_server.ocr_upload(data).json()
    runs_before = ocr_server.health()["ocr_runs"]
    second = ocr_server.ocr_upload(data).json()
    assert first["cached"] is False and second["cached"] is True
    assert second["text_lines"] == first["text_lines"]
    assert ocr_server.health()["ocr_runs"] == runs_before


def test_concurrent_identical_requests_run_ocr_once(ocr_server: RunningServer) -> None:
    data = text_image(random_word())
    runs_before = ocr_server.health()["ocr_runs"]
    with concurrent.futures.ThreadPoolExecutor(max_workers=50) as pool:
        responses = list(pool.map(lambda _: ocr_server.ocr_upload(data), range(50)))
    assert [r.status_code for r in responses] == [200] * 50
    assert len({tuple(map(str, r.json()["text_lines"])) for r in responses}) == 1
    assert ocr_server.health()["ocr_runs"] - runs_before == 1


def wait_for(predicate, timeout: float = 60, message: str = "condition not reached") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, message
        time.sleep(0.05)


def watch_ready_workers(server: RunningServer, seen: list[int], expected_recycles: int) -> None:
    """Record /health's ready worker count until `expected_recycles` recycles are done (bounded)."""
    deadline = time.monotonic() + 110
    while time.monotonic() < deadline:
        workers = server.health()["workers"]
        seen.append(workers["ready"])
        if workers["restarts"].get("recycled", 0) >= expected_recycles and workers["ready"] == 2:
            return
        time.sleep(0.02)


def test_recycling_after_max_tasks_loses_no_request(server_factory) -> None:
    server = server_factory(base_config(number=2, max_task_number=3), name="recycle")
    pids_before = {w["pid"] for w in server.health()["workers"]["workers"]}
    ready_seen: list[int] = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as watcher_thread:
        watcher = watcher_thread.submit(watch_ready_workers, server, ready_seen, expected_recycles=2)
        with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
            responses = list(pool.map(lambda i: server.ocr_upload(text_image(f"R{i} {random_word(4)}")), range(30)))
        watcher.result(timeout=120)
    assert [r.status_code for r in responses] == [200] * 30
    # Each replacement loads its models while the worker it replaces still serves.
    assert min(ready_seen) == 2, ready_seen

    # One worker reloads at a time, so a worker may serve a few tasks past its limit
    # while another reloads, and the second first-generation worker's successor may
    # still be loading when the first one's is ready (2 ready, one of them old): wait
    # for both first-generation workers to be gone and the pool back to full strength.
    def replaced() -> bool:
        workers = server.health()["workers"]
        return workers["ready"] == 2 and pids_before.isdisjoint({w["pid"] for w in workers["workers"]})

    wait_for(replaced, timeout=120, message="first-generation workers not replaced")
    health = server.health()
    assert health["workers"]["restarts"].get("recycled", 0) >= 2
    assert "crashed" not in health["workers"]["restarts"]
    assert pids_before.isdisjoint({w["pid"] for w in health["workers"]["workers"]})
    assert server.stop() == 0


# ---- errors ----------------------------------------------------------------------


def error_of(response: requests.Response) -> str:
    assert response.headers["Content-Type"].startswith("application/json")
    return response.json()["error"]["code"]


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        ({"data": b"{not json", "headers": {"Content-Type": "application/json"}}, 400, "malformed_body"),
        ({"json": {"file_type": "url", "filename": "x.png"}}, 400, "invalid_field"),
        ({"json": {"file_type": "filename", "filename": "x.png", "block_flag": "maybe"}}, 400, "invalid_field"),
        ({"json": {"file_type": "filename"}}, 400, "missing_field"),
        ({"data": {"file_type": "file"}}, 400, "missing_field"),
        ({"json": {"file_type": "filename", "filename": "/etc/passwd"}}, 403, "forbidden_path"),
        ({"json": {"file_type": "filename", "filename": "/proc/self/environ"}}, 403, "forbidden_path"),
        ({"data": b"<xml/>", "headers": {"Content-Type": "text/xml"}}, 415, "unsupported_content_type"),
    ],
)
def test_malformed_requests_get_json_errors(ocr_server: RunningServer, kwargs: dict, status: int, code: str) -> None:
    response = requests.post(f"{ocr_server.url}/ocr_service", timeout=30, **kwargs)
    assert response.status_code == status, response.text
    assert error_of(response) == code


def test_missing_file_inside_roots_is_404(ocr_server: RunningServer) -> None:
    assert ocr_server.images_dir is not None
    response = requests.post(
        f"{ocr_server.url}/ocr_service", json={"filename": str(ocr_server.images_dir / "nope.png")}, timeout=30
    )
    assert response.status_code == 404
    assert error_of(response) == "file_not_found"


def test_image_errors_from_the_engine(ocr_server: RunningServer) -> None:
    text_file = b"this is a text file, not an image\n" * 10
    runs_before = ocr_server.health()["ocr_runs"]
    not_image = ocr_server.ocr_upload(text_file)
    assert not_image.status_code == 415 and error_of(not_image) == "unsupported_image"
    # A failure is not cached: the same bytes again go to a worker again.
    again = ocr_server.ocr_upload(text_file)
    assert again.status_code == 415 and ocr_server.health()["ocr_runs"] == runs_before + 2
    # A PDF is read as a document (test_documents.py); a broken one says it is a corrupt PDF.
    pdf = ocr_server.ocr_upload(b"%PDF-1.7\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF\n")
    assert pdf.status_code == 415 and error_of(pdf) == "corrupt_document"
    assert "PDF" in pdf.json()["error"]["message"]
    # A PNG header that declares 20000 x 20000 pixels: refused before decoding.
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)
    bomb = (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b"")
    )
    too_large = ocr_server.ocr_upload(bomb)
    assert too_large.status_code == 413 and error_of(too_large) == "image_too_large"
    empty = ocr_server.ocr_upload(b"")
    assert empty.status_code == 400 and error_of(empty) == "empty_file"
    # Errors are not cached and did not break anything: a good image still works.
    assert ocr_server.ocr_upload(text_image(random_word())).status_code == 200


def test_upload_over_the_byte_limit_is_413(ocr_server: RunningServer) -> None:
    response = ocr_server.ocr_upload(b"\0" * (21 * 1024 * 1024))
    assert response.status_code == 413
    assert error_of(response) == "body_too_large"


def test_unknown_endpoint_is_json_404(ocr_server: RunningServer) -> None:
    response = requests.get(f"{ocr_server.url}/nope", timeout=10)
    assert response.status_code == 404 and error_of(response) == "not_found"


def test_full_queue_gets_503_with_retry_after(server_factory) -> None:
    server = server_factory(base_config(number=1, queue_size=1), name="queue")
    images = [text_image(" ".join(random_word() for _ in range(6))) for _ in range(12)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=12) as pool:
        responses = list(pool.map(server.ocr_upload, images))
    statuses = sorted(r.status_code for r in responses)
    assert 200 in statuses and 503 in statuses, statuses
    assert set(statuses) <= {200, 503}
    refused = next(r for r in responses if r.status_code == 503)
    assert error_of(refused) == "queue_full"
    assert int(refused.headers["Retry-After"]) >= 1


def test_overload_drops_queued_tasks_without_killing_a_worker(server_factory) -> None:
    # One worker, 2 s per task from submission, and more queued work than 2 s can clear:
    # late tasks must be answered 503 queue_timeout unrun, and no worker killed for a task that
    # spent its time in the queue (it used to be killed mid-OCR when its submission deadline hit).
    server = server_factory(base_config(number=1, task_timeout=2.0), name="overload")
    pid = server.health()["workers"]["workers"][0]["pid"]
    images = [text_image(" ".join(random_word() for _ in range(6))) for _ in range(24)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(images)) as pool:
        responses = list(pool.map(lambda data: server.ocr_upload(data, det="on"), images))
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 503} and 200 in statuses and 503 in statuses, statuses
    expired = [r for r in responses if r.status_code == 503]
    assert {error_of(r) for r in expired} == {"queue_timeout"}
    assert all(int(r.headers["Retry-After"]) >= 1 for r in expired)
    health = server.health()
    assert health["workers"]["restarts"] == {}, health["workers"]
    assert [w["pid"] for w in health["workers"]["workers"]] == [pid]
    assert health["queue"]["expired"] == len(expired)
    metrics = requests.get(f"{server.url}/metrics", timeout=10).text
    assert metric(metrics, "ocr_tasks_expired_total") == len(expired)
    assert metric(metrics, "ocr_worker_restarts_total", reason="timeout") == 0


@pytest.fixture(scope="module")
def timeout_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One worker, 0.2 s a task: a large image costs it once. Shared by the two tests below,
    each sending bytes of its own (never remembered by the other) and counting from its start."""
    server = start_server(tmp_path_factory.mktemp("timeout"), base_config(number=1, task_timeout=0.2))
    yield server
    server.stop()


def large_image_of_its_own() -> bytes:
    """A scan of over 1.5 MP (seconds of reading, far past 0.2 s), its bytes made unique (the
    decoder ignores what follows the JPEG's end): no earlier failure of it is remembered."""
    entry = gt_entry(lambda e: e["width"] * e["height"] > 1_500_000)
    return (GT_DIR / entry["image"]).read_bytes() + os.urandom(8)


def test_task_past_timeout_gets_504_and_the_worker_is_replaced(timeout_server: RunningServer) -> None:
    server = timeout_server
    before = server.health()
    pid_before = before["workers"]["workers"][0]["pid"]
    response = server.ocr_upload(large_image_of_its_own())
    assert response.status_code == 504, response.text
    assert error_of(response) == "timeout"
    wait_for(
        lambda: (
            [w["pid"] for w in server.health()["workers"]["workers"] if w["state"] == "idle"] not in ([], [pid_before])
        ),
        message="worker not replaced",
    )
    health = server.health()
    assert health["workers"]["restarts"]["timeout"] == before["workers"]["restarts"].get("timeout", 0) + 1
    assert health["workers"]["workers"][0]["pid"] != pid_before


def test_image_past_timeout_is_remembered_and_not_run_again(timeout_server: RunningServer) -> None:
    data = large_image_of_its_own()
    server = timeout_server
    restarts_before = server.health()["workers"]["restarts"]
    first = server.ocr_upload(data)
    assert first.status_code == 504 and error_of(first) == "timeout"
    wait_for(lambda: server.health()["workers"]["ready"] == 1, message="worker not replaced")
    health = server.health()
    runs, answered = health["ocr_runs"], health["cache"]["failures_answered"]
    # The same image again: the same error at once, saying why, and no worker killed for it.
    started = time.monotonic()
    again = server.ocr_upload(data)
    assert again.status_code == 504 and error_of(again) == "timeout", again.text
    assert "remembered from an earlier attempt" in again.json()["error"]["message"]
    assert time.monotonic() - started < 1.0
    as_task = server.ocr_upload(data, block_flag="false")
    assert as_task.status_code == 504 and error_of(as_task) == "timeout"
    health = server.health()
    assert health["workers"]["restarts"] == {"timeout": restarts_before.get("timeout", 0) + 1}
    assert health["ocr_runs"] == runs and health["cache"]["failures_answered"] == answered + 2


def _start_with_config(tmp_path: Path, config: dict, *args: str) -> subprocess.CompletedProcess:
    """Run server.py on a config that must stop it at start; its exit status and stderr."""
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return subprocess.run(
        [sys.executable, str(REPO / "server.py"), "--config", str(path), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_failure_ttl_must_not_be_negative(tmp_path: Path) -> None:
    result = _start_with_config(tmp_path, {"service": {"failure_ttl": -1}})
    assert result.returncode == 2 and "service.failure_ttl must be >= 0" in result.stderr


@pytest.mark.parametrize("broken", ["missing_det", "garbage_det.onnx"])
def test_broken_model_path_fails_at_start_naming_the_path(tmp_path: Path, broken: str) -> None:
    if broken.endswith(".onnx"):
        (tmp_path / broken).write_bytes(b"not a model at all\n" * 100)
    config = {"ocr": {"predict_system": {"det_model_dir": str(tmp_path / broken)}}}
    result = _start_with_config(tmp_path, config, "--port", "0")
    assert result.returncode != 0
    assert broken in result.stderr


def test_bad_config_fails_at_start_with_the_key(tmp_path: Path) -> None:
    result = _start_with_config(tmp_path, {"ocr": {"process": {"number": "two"}}})
    assert result.returncode == 2
    assert "ocr.process.number" in result.stderr


@pytest.mark.parametrize(
    ("config", "message"),
    [
        # JSON's Infinity and 1e999 passed "> 0" and broke timers and Redis TTLs later.
        ({"service": {"time": float("inf")}}, "service.time: expected float"),
        ({"ocr": {"process": {"task_timeout": 1e999}}}, "ocr.process.task_timeout: expected float"),
        ({"ocr": {"process": {"max_task_number": 10**400}}}, "ocr.process.max_task_number: expected int"),
        ({"web_server": {"shutdown_grace": -5}}, "web_server.shutdown_grace must be >= 0"),
        ({"web_server": {"host": ""}}, "web_server.host must name an address"),
        ({"ocr": {"process": {"number": 1000}}}, "ocr.process.number must be 1..256"),
        ({"ocr": {"predict_system": {"max_image_pixels": 0}}}, "max_image_pixels must be >= 64"),
        ({"ocr": {"predict_system": {"min_image_side": 100_000}}}, "min_image_side must be 1..1024"),
        ([], "must be a JSON object, got list"),
        ([["ocr", {}]], "must be a JSON object, got list"),
        ("abc", "must be a JSON object, got str"),
        (None, "must be a JSON object, got NoneType"),
        # Accepted before, then every answer came back empty (every line under the floor) or
        # the threshold silently meant something else; cpu_threads 0 failed without its key.
        ({"ocr": {"predict_system": {"drop_score": 7}}}, "ocr.predict_system.drop_score must be 0..1, got 7"),
        ({"ocr": {"predict_system": {"det_db_thresh": -1}}}, "ocr.predict_system.det_db_thresh must be 0..1"),
        ({"ocr": {"predict_system": {"det_db_box_thresh": 1.5}}}, "ocr.predict_system.det_db_box_thresh must be 0..1"),
        ({"ocr": {"predict_system": {"det_db_unclip_ratio": 0}}}, "ocr.predict_system.det_db_unclip_ratio must be > 0"),
        ({"ocr": {"predict_system": {"det_min_side_len": -5}}}, "ocr.predict_system.det_min_side_len must be >= 0"),
        ({"ocr": {"predict_system": {"cpu_threads": 0}}}, "ocr.predict_system.cpu_threads must be 1..1024, got 0"),
        # Accepted before: 2^53 threads stopped the workers with a traceback; an unclip ratio of
        # 1e12 hung every worker until task_timeout; a minimum side whose square is over the
        # pixel limit refused every image; 1e300 s broke Redis's expiry arguments; a database
        # path that is no number was read as database 0 (two deployments sharing one cache).
        ({"ocr": {"predict_system": {"cpu_threads": 2**53}}}, "ocr.predict_system.cpu_threads must be 1..1024"),
        ({"ocr": {"predict_system": {"det_db_unclip_ratio": 1e12}}}, "det_db_unclip_ratio must be > 0 and <= 10"),
        (
            {"ocr": {"predict_system": {"min_image_side": 1024, "max_image_pixels": 64}}},
            "min_image_side (1024) squared is more than max_image_pixels (64)",
        ),
        ({"service": {"time": 1e300}}, "service.time: expected float"),
        (
            {"service": {"backend": "redis", "redis_url": "redis://127.0.0.1:6379/abc"}},
            "service.redis_url: the database must be a number",
        ),
        (
            {"service": {"backend": "redis", "redis_url": "redis://127.0.0.1:6379x/0"}},
            "service.redis_url: Port could not be cast to integer",
        ),
    ],
)
def test_configs_that_would_break_the_server_later_are_refused_naming_the_key(config: object, message: str) -> None:
    from settings import ConfigError, settings_from_dict

    with pytest.raises(ConfigError, match=re.escape(message)):
        settings_from_dict(config)  # type: ignore[arg-type]


def test_a_config_that_is_no_object_or_no_text_and_a_port_out_of_range_stop_the_server(tmp_path: Path) -> None:
    result = _start_with_config(tmp_path, ["ocr", {}])
    assert result.returncode == 2 and "config error: the configuration must be a JSON object" in result.stderr
    assert "Traceback" not in result.stderr
    binary = tmp_path / "binary.json"
    binary.write_bytes(b'{"ocr": "\xff"}')  # Latin-1, not UTF-8
    result = subprocess.run(
        [sys.executable, str(REPO / "server.py"), "--config", str(binary)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2 and "is not UTF-8 text" in result.stderr, result.stderr
    result = _start_with_config(tmp_path, {}, "--port", "70000")
    assert result.returncode == 2 and "web_server.port must be 0..65535" in result.stderr


def test_config_files_read_as_written(tmp_path: Path) -> None:
    from settings import ConfigError, load_settings

    # A section written twice: the first was dropped without a word.
    twice = tmp_path / "twice.json"
    twice.write_text('{"ocr": {"process": {"number": 1}}, "ocr": {"engine": "onnxruntime"}}')
    with pytest.raises(ConfigError, match='the key "ocr" appears twice'):
        load_settings(twice)
    # A byte-order mark was refused; a nesting 100,000 deep stopped with a traceback.
    marked = tmp_path / "bom.json"
    marked.write_bytes(b"\xef\xbb\xbf" + b'{"ocr": {"process": {"number": 1}}}')
    assert load_settings(marked).ocr.process.number == 1
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ConfigError, match="nests too deeply"):
        load_settings(deep)
    huge = tmp_path / "huge.json"
    huge.write_text('{"x": "' + "a" * (2 * 1024 * 1024) + '"}')
    with pytest.raises(ConfigError, match="larger than"):
        load_settings(huge)
    # Relative paths are the neighbours of the config where it is found, also through a
    # symlink (a Kubernetes ConfigMap): they resolved next to the link's target.
    (tmp_path / "real").mkdir()
    (tmp_path / "mounted").mkdir()
    (tmp_path / "real" / "config.json").write_text('{"ocr": {"predict_system": {"rec_model_dir": "rec.onnx"}}}')
    (tmp_path / "mounted" / "config.json").symlink_to(tmp_path / "real" / "config.json")
    linked = load_settings(tmp_path / "mounted" / "config.json")
    assert linked.base_dir == str(tmp_path / "mounted")
    assert linked.engine_options(2).rec_model_dir == str(tmp_path / "mounted" / "rec.onnx")
    # ~ is the user's home, not a folder named "~" beside the config.
    tilde = tmp_path / "tilde.json"
    tilde.write_text('{"ocr": {"predict_system": {"rec_model_dir": "~/models/rec.onnx"}}}')
    assert load_settings(tilde).engine_options(2).rec_model_dir == str(Path.home() / "models" / "rec.onnx")


def test_a_redis_url_the_client_cannot_parse_stops_the_server_naming_the_key(tmp_path: Path) -> None:
    # It stopped the server with a ValueError traceback from inside the Redis client.
    result = _start_with_config(tmp_path, {"service": {"backend": "redis", "redis_url": "localhost:6379"}})
    assert result.returncode == 2 and "config error: service.redis_url:" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    # The memory backend never uses it: not checked.
    from settings import settings_from_dict

    assert settings_from_dict({"service": {"redis_url": "localhost:6379"}}).service.backend == "memory"
    # A Unix socket's path and a percent-encoded database number are not refused.
    for url in ("unix:///var/run/redis/redis.sock?db=1", "redis://127.0.0.1:6379/%31"):
        assert settings_from_dict({"service": {"backend": "redis", "redis_url": url}}).service.redis_url == url


def test_repo_config_json_matches_the_embedded_defaults() -> None:
    from settings import REPO_DIR, load_settings

    from_file = load_settings(REPO_DIR / "config.json")
    embedded = load_settings(None)
    assert from_file.web_server == embedded.web_server
    assert from_file.ocr.process == embedded.ocr.process
    assert from_file.service == embedded.service
    assert from_file.documents == embedded.documents
    assert from_file.engine_options() == embedded.engine_options()


def test_sigterm_stops_workers_and_exits_zero(server_factory) -> None:
    import psutil

    server = server_factory(base_config(number=2), name="sigterm")
    worker_pids = [w["pid"] for w in server.health()["workers"]["workers"]]
    assert server.stop() == 0
    time.sleep(0.5)
    assert not any(
        psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in worker_pids
    )


def test_embedded_defaults_serve_the_original_client_flow() -> None:
    """`python server.py` with no config: bundled models, ./imgs root, original client body."""
    import subprocess
    import sys

    from bench.launch import free_port
    from tests.conftest import REPO

    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(REPO / "server.py"), "--port", str(port)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None and time.monotonic() < deadline, "server did not become ready"
            try:
                if requests.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.05)
        body = {"file_type": "filename", "filename": "./imgs/sample_invoice.png", "block_flag": True}
        response = requests.post(f"{url}/ocr_service", json=body, timeout=120)
        assert response.status_code == 200, response.text
        text = " ".join(ocr_text(response.json()))
        assert "INVOICE" in text and "91.50" in text and "Thank you for your business" in text
    finally:
        process.terminate()
        assert process.wait(timeout=60) == 0


def test_port_in_use_fails_with_a_clear_message(ocr_server: RunningServer) -> None:
    import subprocess
    import sys

    from tests.conftest import REPO

    port = ocr_server.url.rsplit(":", 1)[1]
    result = subprocess.run(
        [sys.executable, str(REPO / "server.py"), "--port", port],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_unknown_log_level_stops_the_server_with_a_usage_error_not_a_traceback() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "server.py"), "--log-level", "verbose"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2 and "--log-level: unknown level 'verbose'" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    from server import parse_args

    assert parse_args(["--log-level", "warning"]).log_level == "WARNING"
