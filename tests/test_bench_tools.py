"""The cache-hit benchmark's tools: the wrk report parser, the Tornado floor server, a short real run."""

from __future__ import annotations

import shutil
import signal
import time
from pathlib import Path

import psutil
import pytest
import requests

from bench import hit_latency
from bench.launch import free_port, start_process
from tests.conftest import RunningServer, text_image

REPO = Path(__file__).resolve().parents[1]

# A report as wrk 4.1 prints it with --latency (the layout the parser must read).
WRK_REPORT = """\
Running 5s test @ http://127.0.0.1:8890/ocr_service
  2 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    20.81ms  812.44us  31.22ms   93.10%
    Req/Sec     1.20k    45.31     1.29k    71.00%
  Latency Distribution
     50%   20.78ms
     75%   20.97ms
     90%   21.17ms
     99%   21.73ms
  11953 requests in 5.00s, 37.60MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:   2389.21
Transfer/sec:      7.52MB
"""


def test_parse_wrk_reads_percentiles_counts_and_failures() -> None:
    figures = hit_latency.parse_wrk(WRK_REPORT)
    assert figures["requests"] == 11953
    assert figures["duration_s"] == pytest.approx(5.0)
    assert figures["requests_per_s"] == pytest.approx(2389.21)
    assert figures["latency_s"] == pytest.approx({"p50": 0.02078, "p75": 0.02097, "p90": 0.02117, "p99": 0.02173})
    assert figures["non_2xx"] == 4
    assert figures["socket_errors"] == 3


def test_parse_wrk_reads_microseconds_and_refuses_other_text() -> None:
    fast = WRK_REPORT.replace("20.78ms", "544.00us").replace("  Socket errors: connect 0, read 2, write 0, timeout 1\n", "")
    figures = hit_latency.parse_wrk(fast)
    assert figures["latency_s"]["p50"] == pytest.approx(544e-6)
    assert figures["socket_errors"] == 0
    with pytest.raises(ValueError, match="unrecognised wrk output"):
        hit_latency.parse_wrk("unable to connect to 127.0.0.1:1 Connection refused")


@pytest.mark.parametrize("layer", ["web", "http"])
def test_tornado_floor_answers_the_given_bytes_and_stops_its_children(tmp_path: Path, layer: str) -> None:
    answer = tmp_path / "answer.json"
    answer.write_bytes('{"text_lines": [{"text": "合计 42"}]}'.encode())
    port = free_port()
    argv = [str(REPO / "bench" / "tornado_floor.py"), "--port", str(port), "--response", str(answer), "--processes", "2",
            "--layer", layer]  # fmt: skip
    floor = start_process(argv, port, tmp_path, ready_timeout=30)
    try:
        children = psutil.Process(floor.pid).children()
        assert len(children) == 1
        for _ in range(4):
            response = requests.post(f"{floor.url}/ocr_service", data=b"x" * 100_000, timeout=10)
            assert response.status_code == 200
            assert response.content == answer.read_bytes()
    finally:
        floor.process.send_signal(signal.SIGTERM)
        assert floor.process.wait(timeout=10) == 0
    deadline = time.monotonic() + 5
    while any(child.is_running() and child.status() != psutil.STATUS_ZOMBIE for child in children):
        assert time.monotonic() < deadline, "floor child still running after the parent stopped"
        time.sleep(0.05)


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (Debian package wrk; test.sh installs it)")
def test_short_wrk_comparison_against_the_real_server(ocr_server: RunningServer, tmp_path: Path) -> None:
    image = tmp_path / "hit.png"
    image.write_bytes(text_image("HIT 4711"))
    result = hit_latency.compare(ocr_server, image, [2], 1.0, tmp_path, floor_processes=2)  # type: ignore[arg-type]
    assert result is not None
    [ours] = result["server"]
    assert ours["requests"] > 0 and ours["non_2xx"] == 0 and ours["socket_errors"] == 0
    # Every request wrk saw answered was a cache hit (requests cut off at the end may hit too).
    assert ours["hits"] >= ours["requests"]
    assert b"4711" in (tmp_path / "hit-answer.json").read_bytes()
    assert sorted(result["floor"]) == ["http-1", "http-2", "web-1", "web-2"]
    lines = hit_latency.report(result)
    assert any("this server / 1-process web floor" in line for line in lines)


def _round(rate: float, cpu: float, p99: float = 0.02) -> dict:
    return {
        "requests_per_s": rate,
        "cpu_us_per_request": cpu,
        "latency_s": {"p99": p99},
        "non_2xx": 0,
        "socket_errors": 0,
    }


def test_interleaved_report_divides_each_round_by_the_floors_same_round() -> None:
    # The machine halves every figure in round 2: the ratio to the floor of the same round holds.
    floor = hit_latency.FLOOR_TARGET
    result = {
        "image": "a.jpg", "upload_bytes": 10, "answer_bytes": 5, "rounds": 3, "duration_s": 4.0,
        "load_average": [(0.5, 0, 0), (2.0, 0, 0), (0.7, 0, 0), (0.6, 0, 0)],
        "runs": {"50": {
            "this server": [_round(600, 500), _round(300, 1000), _round(620, 480)],
            floor: [_round(1000, 300), _round(500, 600), _round(1000, 300)],
        }},
    }  # fmt: skip
    lines = hit_latency.interleaved_report(result)
    assert "0.50 2.00 0.70 0.60" in lines[1]

    def columns(name: str) -> list[str]:
        return next(line for line in lines if line.startswith(name))[len(name) :].split()

    # conns; hits/s median 600, low 300, high 620; vs floor: median of 0.6, 0.6, 0.62; CPU 500 us; 300/500
    assert columns("this server")[:7] == ["50", "600", "300", "620", "0.60", "500", "us"]
    assert columns("this server")[7] == "0.60"
    assert columns(floor)[4] == "1.00" and columns(floor)[7] == "1.00"


def test_loop_stall_reads_probe_lines_with_and_without_the_cpu_column(tmp_path: Path) -> None:
    from bench.loop_stall import stalls

    probe = tmp_path / "probe.txt"
    probe.write_text("100.0 6.0 1.0\n101.0 8.0 0.5 7.25\n102.0 9.0 0.0 0.2\n200.0 50.0 0.0 40.0\n")
    seen, own, cpu = stalls(probe, 99.0, 150.0)
    assert seen == [6.0, 8.0, 9.0]
    assert own == [5.0, 7.5, 9.0]
    assert cpu == [7.25, 0.2]  # the older 3-column line has no CPU figure


def test_engine_rounds_alternate_the_order_and_pair_ratios_by_round() -> None:
    from bench.engine import round_order, round_summary

    assert [round_order(["a", "b", "c"], i) for i in range(3)] == [["a", "b", "c"], ["c", "b", "a"], ["a", "b", "c"]]
    # The machine slows down between rounds: every engine's figure drops, the ratio does not.
    ips = {"base": [1.0, 0.5, 0.8], "fast": [1.5, 0.75, 1.2]}
    summary = round_summary(ips, "base")
    assert summary["fast"]["ratio"] == pytest.approx(1.5)
    assert summary["base"]["ratio"] == pytest.approx(1.0)
    assert (summary["fast"]["low"], summary["fast"]["median"], summary["fast"]["high"]) == (0.75, 1.2, 1.5)
    # The ratio of medians would mix rounds; the median of per-round ratios does not.
    uneven = round_summary({"base": [1.0, 2.0, 3.0], "other": [3.0, 2.2, 3.3]}, "base")
    assert uneven["other"]["ratio"] == pytest.approx(1.1)
    with pytest.raises(ValueError):
        round_summary({"base": [1.0, 2.0], "short": [1.0]}, "base")


def test_engine_tree_prefix_runs_the_other_trees_models(tmp_path: Path) -> None:
    from bench.engine import _run, split_tree

    trees = {"before": str(tmp_path / "tree")}
    assert split_tree("before:onnxruntime@PP-OCRv4", trees) == (trees["before"], "onnxruntime@PP-OCRv4")
    assert split_tree("openvino", trees) == (None, "openvino")
    # A colon inside an option's JSON value names no tree.
    assert split_tree('onnxruntime;x={"a":1}', trees) == (None, 'onnxruntime;x={"a":1}')
    with pytest.raises(ValueError, match="after"):
        split_tree("after:openvino", trees)

    # A stand-in models package in the other tree: the worker must import it, not ours.
    package = tmp_path / "tree" / "models"
    package.mkdir(parents=True)
    marker = tmp_path / "loaded-from-other-tree"
    (package / "__init__.py").write_text(
        "from pathlib import Path\n"
        "class EngineOptions:\n"
        "    def __init__(self, **kw):\n"
        "        self.kw = kw\n"
        "class _Engine:\n"
        "    def recognize(self, data, det):\n"
        "        return {}\n"
        "def create_engine(options):\n"
        f"    Path({str(marker)!r}).write_text(options.kw['engine'])\n"
        "    return _Engine()\n"
    )
    image = tmp_path / "img.bin"
    image.write_bytes(b"x")
    result = _run("before:onnxruntime", 1, 1, [str(image)] * 3, trees)
    assert result["n"] == 3
    assert marker.read_text() == "onnxruntime"
