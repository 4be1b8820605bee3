"""What an operator relies on: probes, metrics, access log."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from bench.launch import free_port
from tests.conftest import REPO, RunningServer, base_config, metric, random_word, text_image


def test_readyz_is_503_until_a_worker_has_loaded(tmp_path: Path) -> None:
    # The paddle backend takes a few seconds to import and load: a window to observe.
    config = base_config(number=1)
    config["ocr"]["engine"] = "paddle"
    (tmp_path / "config.json").write_text(json.dumps(config))
    port = free_port()
    with open(tmp_path / "server.log", "wb") as log:
        process = subprocess.Popen(
            [sys.executable, str(REPO / "server.py"), "--config", str(tmp_path / "config.json"), "--port", str(port)],
            stdout=log, stderr=subprocess.STDOUT,
        )
    server = RunningServer(f"http://127.0.0.1:{port}", process.pid, tmp_path / "config.json", tmp_path / "server.log",
                           process)
    try:
        seen: list[tuple[int, int, int]] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                probe = requests.head(f"{server.url}/readyz", timeout=2)  # load balancers probe with HEAD too
                ready = requests.get(f"{server.url}/readyz", timeout=2)
                live = requests.get(f"{server.url}/livez", timeout=2)
            except requests.ConnectionError:
                time.sleep(0.05)
                continue
            assert probe.content == b""
            seen.append((ready.status_code, live.status_code, probe.status_code))
            if ready.status_code == 200:
                break
            assert ready.json()["workers_ready"] == 0
            # The worker may finish loading between the two calls: /health must agree with itself.
            health = server.health()
            assert health["status"] == ("ok" if health["workers"]["ready"] else "degraded")
            time.sleep(0.05)
        assert seen[0] == (503, 200, 503), "the service must answer (live, not ready) while models load"
        assert seen[-1][:2] == (200, 200)
        assert requests.head(f"{server.url}/readyz", timeout=2).status_code == 200
        assert server.health()["engine"] == "paddle"
        # The paddle backend reads as well as the default one.
        word = random_word()
        assert word in " ".join(t["text"] for t in server.ocr_upload(text_image(word)).json()["text_lines"])
    finally:
        assert server.stop() == 0


def test_metrics_count_requests_tasks_cache_and_workers(ocr_server: RunningServer) -> None:
    before = requests.get(f"{ocr_server.url}/metrics", timeout=10).text
    image = text_image(random_word())
    for _ in range(3):
        assert ocr_server.ocr_upload(image).status_code == 200
    assert ocr_server.ocr_upload(b"not an image").status_code == 415
    response = requests.get(f"{ocr_server.url}/metrics", timeout=10)
    assert response.headers["Content-Type"].startswith("text/plain")
    after = response.text

    def delta(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    assert delta("ocr_http_requests_total", endpoint="/ocr_service", method="POST", status="200") == 3
    assert delta("ocr_http_requests_total", endpoint="/ocr_service", method="POST", status="415") == 1
    assert delta("ocr_http_request_duration_seconds_count", endpoint="/ocr_service") == 4
    assert delta("ocr_cache_hits_total") == 2
    assert delta("ocr_tasks_run_total") == 2  # one image OCR'd, one refused by the engine
    assert delta("ocr_task_duration_seconds_count") == 2
    assert delta("ocr_queue_wait_seconds_count") == 2
    for reason in ("recycled", "crashed", "timeout"):
        assert f'ocr_worker_restarts_total{{reason="{reason}"}}' in after
    for pid in (w["pid"] for w in ocr_server.health()["workers"]["workers"]):
        assert metric(after, "ocr_worker_rss_bytes", pid=str(pid)) > 50e6
    assert "ocr_queue_depth " in after and "ocr_tasks_in_flight " in after and "ocr_cache_evictions_total" in after
    # The byte budgets (service.img_bytes, task_bytes: defaults) and what is held, as /health says.
    assert metric(after, "ocr_cache_max_bytes") == metric(after, "ocr_task_records_max_bytes") == 256 * 1024 * 1024
    assert metric(after, "ocr_cache_bytes") > 0 and "ocr_task_records_bytes " in after
    cache = ocr_server.health()["cache"]
    assert cache["max_bytes"] == cache["tasks_max_bytes"] == 256 * 1024 * 1024 and cache["bytes"] > 0


def test_access_log_has_one_line_per_request_with_task_and_cache(ocr_server: RunningServer) -> None:
    image = text_image(random_word())
    first = ocr_server.ocr_upload(image).json()
    hit = ocr_server.ocr_upload(image).json()
    time.sleep(0.2)
    lines = [line for line in ocr_server.log_text().splitlines() if "ocr_server.access" in line]
    mine = [line for line in lines if first["image_hash"][:12] in line]
    assert len(mine) == 2
    assert re.search(r"POST /ocr_service 200 [0-9.]+ms .*task_id=" + first["task_id"] + r".*cached=False", mine[0])
    # A hit's line names the task id its answer carries too (it had none).
    assert re.search(r"POST /ocr_service 200 [0-9.]+ms .*task_id=" + hit["task_id"] + r".*cached=True", mine[1])


def test_request_id_is_echoed_and_logged(ocr_server: RunningServer) -> None:
    image = text_image(random_word())
    answered = requests.post(
        f"{ocr_server.url}/ocr_service",
        data={"file_type": "file"},
        files={"file": ("a.png", image)},
        headers={"X-Request-ID": "billing-42 retry\t1"},
        timeout=120,
    )
    assert answered.status_code == 200
    # Spaces and controls would split a log line: they become "_".
    assert answered.headers["X-Request-ID"] == "billing-42_retry_1"
    missing = requests.get(f"{ocr_server.url}/ocr_service/tasks/nope", headers={"X-Request-ID": "r-7"}, timeout=10)
    assert missing.status_code == 404 and missing.headers["X-Request-ID"] == "r-7"
    long_id = requests.get(f"{ocr_server.url}/livez", headers={"X-Request-ID": "x" * 500}, timeout=10)
    assert long_id.headers["X-Request-ID"] == "x" * 128
    assert "X-Request-ID" not in requests.get(f"{ocr_server.url}/livez", timeout=10).headers
    # The WebUI's files too, found or not (they are Tornado's static handler, not the API's).
    for path, status, request_id in (("/", 200, "ui-1"), ("/static/app.js", 200, "ui-2"), ("/static/no.js", 404, "ui-3")):
        page = requests.get(f"{ocr_server.url}{path}", headers={"X-Request-ID": request_id}, timeout=10)
        assert page.status_code == status and page.headers["X-Request-ID"] == request_id, path
    time.sleep(0.2)
    log = ocr_server.log_text()
    assert re.search(r"POST /ocr_service 200 .*request_id=billing-42_retry_1 .*task_id=" + answered.json()["task_id"], log)
    assert re.search(r"GET /ocr_service/tasks/nope 404 .*request_id=r-7", log)
    assert re.search(r"GET /static/no.js 404 .*request_id=ui-3", log)


def test_a_client_that_leaves_before_its_answer_is_logged_and_counted_as_499(server_factory) -> None:
    # Its run went on (already on a worker) or was cancelled for it (queued): the answer
    # reached nobody. It was logged as a WARNING 503 `cancelled` and counted as a 503.
    server = server_factory(base_config(number=1), name="client-gone")
    (worker_pid,) = [w["pid"] for w in server.health()["workers"]["workers"]]
    os.kill(worker_pid, signal.SIGSTOP)
    try:
        for word in (random_word(), random_word()):  # the first runs (stopped), the second queues
            with pytest.raises(requests.exceptions.ReadTimeout):
                server.ocr_upload(text_image(word), timeout=1.5)
    finally:
        os.kill(worker_pid, signal.SIGCONT)
    deadline = time.monotonic() + 60
    while len(re.findall(r"POST /ocr_service 499 ", server.log_text())) < 2:
        assert time.monotonic() < deadline, server.log_text()[-2000:]
        time.sleep(0.2)
    lines = [line for line in server.log_text().splitlines() if "POST /ocr_service 499 " in line]
    assert all(" INFO " in line and "client_gone=True" in line for line in lines), lines
    metrics = requests.get(f"{server.url}/metrics", timeout=10).text
    assert metric(metrics, "ocr_http_requests_total", endpoint="/ocr_service", method="POST", status="499") == 2
    assert 'status="503"' not in metrics


def test_metrics_method_label_stays_bounded(ocr_server: RunningServer) -> None:
    # Any token is a valid HTTP method: each used to become a new time series in /metrics.
    methods = [f"X{random_word()}" for _ in range(5)] + ["DELETE", "PROPFIND"]
    before = requests.get(f"{ocr_server.url}/metrics", timeout=10).text
    for method in methods:
        assert requests.request(method, f"{ocr_server.url}/metrics", timeout=10).status_code == 405
    after = requests.get(f"{ocr_server.url}/metrics", timeout=10).text
    labels = set(re.findall(r'^ocr_http_requests_total\{.*method="([^"]*)"', after, re.MULTILINE))
    assert labels <= {"GET", "HEAD", "POST", "DELETE", "other"}, labels
    counted = metric(after, "ocr_http_requests_total", endpoint="/metrics", method="other", status="405")
    assert counted - metric(before, "ocr_http_requests_total", endpoint="/metrics", method="other", status="405") == 6
    # DELETE, served by the task endpoint, has its own label wherever it is sent.
    deleted = metric(after, "ocr_http_requests_total", endpoint="/metrics", method="DELETE", status="405")
    assert deleted - metric(before, "ocr_http_requests_total", endpoint="/metrics", method="DELETE", status="405") == 1


def test_unsupported_methods_get_a_json_405_with_allow(ocr_server: RunningServer) -> None:
    cases = [
        ("POST", "/metrics", "GET"),
        ("FOOBAR", "/metrics", "GET"),
        ("GET", "/ocr_service", "POST"),
        ("DELETE", "/ocr_service", "POST"),
        ("PATCH", "/ocr_service/tasks/abc", "GET, DELETE"),
        ("POST", "/health", "GET"),
        ("OPTIONS", "/readyz", "GET, HEAD"),
        ("PUT", "/livez", "GET, HEAD"),
        ("POST", "/openapi.json", "GET"),
        ("POST", "/", "GET, HEAD"),
        ("DELETE", "/static/app.js", "GET, HEAD"),
        ("FOOBAR", "/static/app.js", "GET, HEAD"),
    ]
    for method, path, allow in cases:
        answer = requests.request(method, f"{ocr_server.url}{path}", timeout=10)
        assert answer.status_code == 405, (method, path, answer.status_code)
        assert answer.headers["Content-Type"].startswith("application/json"), (method, path, answer.text[:100])
        assert answer.json()["error"]["code"] == "method_not_allowed", (method, path)
        assert method in answer.json()["error"]["message"]
        assert answer.headers["Allow"] == allow, (method, path)
    # An unknown path is unknown whatever the method.
    unknown = requests.request("FOOBAR", f"{ocr_server.url}/no-such-page", timeout=10)
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"


def test_worker_threads_follow_the_cpus_the_server_may_use(server_factory) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs two CPUs to give the server one")
    # A child inherits the CPU affinity of the thread that starts it (as taskset or a cpuset would set it).
    os.sched_setaffinity(0, cpus[:1])
    try:
        server = server_factory(base_config(number=1), name="one-cpu")
    finally:
        os.sched_setaffinity(0, cpus)
    # Before, the host's core count decided: 2 threads for the one worker on this 2-CPU machine.
    assert server.health()["cpus"] == {"usable": 1, "threads_per_worker": 1}
    word = random_word()
    assert word in " ".join(t["text"] for t in server.ocr_upload(text_image(word)).json()["text_lines"])


def test_an_allowed_root_that_is_not_a_folder_is_named_in_a_warning_at_start(server_factory, tmp_path) -> None:
    # It is not fatal (a share may be mounted later), but every `filename` under it was refused
    # and nothing in the log said why.
    missing = tmp_path / "not-mounted-yet"
    present = tmp_path / "present"
    present.mkdir()
    config = base_config(number=1)
    config["web_server"]["allowed_roots"] = [str(missing), str(present)]
    server = server_factory(config, name="missing-root")
    log = server.log_text()
    assert f"web_server.allowed_roots: {missing} is not a folder" in log, log[-2000:]
    assert f"{present} is not a folder" not in log
    response = requests.post(f"{server.url}/ocr_service", data={"filename": str(missing / "a.png")}, timeout=30)
    assert response.status_code == 404 and response.json()["error"]["code"] == "file_not_found"
