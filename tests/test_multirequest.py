"""multirequest.py: pure helpers, and short real runs against the real server."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import multirequest as mr

REPO = Path(__file__).resolve().parents[1]
LOAD_DIR = REPO.parent / "shared" / "data" / "load"
# Small, quick images from the shared load set (each well under 0.3 s of OCR).
SMALL_IMAGES = (
    "ocrmypdf__resources_crom.png",
    "paddleocr_doc_imgs__ch_word_5.jpg",
    "rapidocr_tests__test_files_short.png",
    "rapidocr_tests__test_files_img_exif_orientation.jpg",
)


# ---------------------------------------------------------------- pure helpers


@pytest.mark.parametrize("q", [0, 1, 25, 50, 90, 95, 99, 100])
@pytest.mark.parametrize("n", [1, 2, 7, 100])
def test_percentile_matches_numpy_linear(q: float, n: int) -> None:
    values = sorted(np.random.default_rng(n).exponential(size=n).tolist())
    assert mr.percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_percentile_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        mr.percentile([], 50)
    with pytest.raises(ValueError):
        mr.percentile([1.0], 101)


def test_summarize_latencies_ordered_and_empty() -> None:
    stats = mr.summarize_latencies([0.5, 0.1, 2.0, 0.3, 0.2])
    assert stats["min"] == 0.1 and stats["max"] == 2.0 and stats["p50"] == 0.3
    assert stats["mean"] == pytest.approx(0.62)
    chain = [stats[k] for k in ("min", "p50", "p95", "p99", "max")]
    assert chain == sorted(chain)
    assert mr.summarize_latencies([]) == dict.fromkeys(("min", "mean", "p50", "p95", "p99", "max"))


def test_summarize_scenario_counts_add_up() -> None:
    outcomes = [
        mr.Outcome(0, "ok", latency_s=1.0, cached=False),
        mr.Outcome(1, "ok", latency_s=0.01, cached=True),
        mr.Outcome(2, "503", detail="busy"),
        mr.Outcome(3, "timeout"),
        mr.Outcome(4, "503"),
    ]
    s = mr.summarize_scenario("distinct", outcomes, planned=7, wall_s=2.0, ocr_runs=1)
    assert (s["requests"], s["sent"], s["ok"], s["error_count"], s["not_sent"]) == (7, 5, 2, 3, 2)
    assert s["errors"] == {"503": 2, "timeout": 1}
    assert s["throughput_rps"] == 1.0
    assert s["cache_hits"] == 1 and s["cache_hit_share"] == 0.5
    assert s["latency_s"]["max"] == 1.0
    assert s["error_samples"] == ["busy"]
    text = mr.format_report(s)
    assert "7 planned, 5 sent, 2 ok, 3 errors, 2 not sent" in text
    assert "503: 2, timeout: 1" in text


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("http://127.0.0.1:8888", True),
        ("http://127.3.2.1", True),
        ("http://localhost:1", True),
        ("http://[::1]:8888", True),
        ("http://10.0.0.5:8888", False),
        ("http://192.168.1.2", False),
        ("https://example.com", False),
        ("not a url", False),
    ],
)
def test_is_loopback_url(url: str, ok: bool) -> None:
    assert mr.is_loopback_url(url) is ok


def _encoded(fmt: str, mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(40, 60, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(out, format=fmt)
    return out.getvalue()


@pytest.mark.parametrize(("fmt", "mode"), [("PNG", "RGB"), ("PNG", "L"), ("JPEG", "RGB"), ("BMP", "RGB")])
def test_unique_image_bytes_changes_bytes_not_pixels(fmt: str, mode: str) -> None:
    data = _encoded(fmt, mode)
    a, b = mr.unique_image_bytes(data, "run-1"), mr.unique_image_bytes(data, "run-2")
    assert len({data, a, b}) == 3
    for variant in (a, b):
        with Image.open(io.BytesIO(data)) as original, Image.open(io.BytesIO(variant)) as changed:
            assert changed.format == original.format
            changed.load()  # a broken chunk CRC or segment length would raise here
            assert np.array_equal(np.asarray(original), np.asarray(changed))


def test_build_multipart_shape() -> None:
    body, content_type = mr.build_multipart({"file_type": "file"}, "file", 'a"b.png', b"\x00\x01", "XYZ")
    assert content_type == "multipart/form-data; boundary=XYZ"
    assert body.startswith(b'--XYZ\r\nContent-Disposition: form-data; name="file_type"\r\n\r\nfile\r\n')
    assert b'name="file"; filename="a_b.png"' in body
    assert body.endswith(b"\x00\x01\r\n--XYZ--\r\n")


def test_plan_scenario_shapes(tmp_path: Path) -> None:
    images = [tmp_path / f"{i}.png" for i in range(3)]
    same = images[1]
    distinct, warm = mr.plan_scenario("distinct", images, 5, same, "r")
    assert warm is None and len({s.tag for s in distinct}) == 5
    assert [s.path for s in distinct] == [images[i % 3] for i in range(5)]
    uncached, warm = mr.plan_scenario("same-uncached", images, 4, same, "r")
    assert warm is None and len(set(uncached)) == 1 and uncached[0].path == same
    cached, warm = mr.plan_scenario("same-cached", images, 4, same, "r")
    assert warm is not None and set(cached) == {warm}
    assert warm.tag != uncached[0].tag  # the uncached image stays uncached
    mixed, warm = mr.plan_scenario("mixed", images, 6, same, "r")
    assert mixed[1::2] == [warm] * 3 and len({s.tag for s in mixed[::2]}) == 3
    with pytest.raises(ValueError):
        mr.plan_scenario("bogus", images, 1, same, "r")
    documents, warm = mr.plan_scenario("documents", images, 2, same, "r", pages=2)
    assert warm is None and [s.pages for s in documents] == [(images[0], images[1]), (images[2], images[0])]
    assert len({s.tag for s in documents}) == 2


def test_documents_are_pdfs_of_the_images_with_their_own_bytes() -> None:
    import pypdfium2

    png = io.BytesIO()
    Image.new("L", (300, 120), 255).save(png, "PNG")
    jpeg = io.BytesIO()
    Image.new("RGB", (200, 100), (255, 0, 0)).save(jpeg, "JPEG")
    pages = [mr.jpeg_page(png.getvalue()), mr.jpeg_page(jpeg.getvalue())]
    assert pages[1][0] == jpeg.getvalue()  # a baseline JPEG goes in as it is
    one, two = mr.jpeg_pdf(pages, "run-a"), mr.jpeg_pdf(pages, "run-b")
    assert one != two
    document = pypdfium2.PdfDocument(one)
    assert len(document) == 2
    rendered = document[1].render(scale=200 / 72).to_pil()
    assert rendered.size == (200, 100) and rendered.getpixel((100, 50))[0] > 200
    document.close()


def test_refuses_remote_url_without_flag() -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "multirequest.py"), "--url", "http://10.1.2.3:8888", "--quiet"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "refusing non-loopback URL" in proc.stderr


# ---------------------------------------------------------------- real server


def _require_load_dir() -> None:
    missing = [name for name in SMALL_IMAGES if not (LOAD_DIR / name).is_file()]
    if missing:
        pytest.skip(f"shared load images not found in {LOAD_DIR} (expected ../shared beside the repo): {missing}")


def _run_tool(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "multirequest.py"), "--quiet", "--timeout", "120", "--deadline", "240", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


def _check_summary(s: dict, requests: int) -> None:
    assert s["requests"] == requests
    assert s["sent"] == requests and s["ok"] == requests
    assert s["error_count"] == 0 and s["errors"] == {} and s["not_sent"] == 0
    assert s["ok"] + s["error_count"] + s["not_sent"] == s["requests"]
    lat = s["latency_s"]
    chain = [lat[k] for k in ("min", "p50", "p95", "p99", "max")]
    assert all(v is not None and v > 0 for v in chain)
    assert chain == sorted(chain)
    assert lat["min"] <= lat["mean"] <= lat["max"]
    assert s["throughput_rps"] > 0 and s["wall_s"] > 0
    assert 0.0 <= s["cache_hit_share"] <= 1.0


@pytest.fixture
def small_images(tmp_path: Path) -> Path:
    """A folder holding copies of a few quick images from the shared load set."""
    _require_load_dir()
    images = tmp_path / "imgs"
    images.mkdir()
    for name in SMALL_IMAGES:
        shutil.copy(LOAD_DIR / name, images / name)
    return images


def test_tool_all_scenarios_against_real_server(ocr_server, small_images: Path, tmp_path: Path) -> None:
    images = small_images
    out_json, out_png = tmp_path / "out.json", tmp_path / "out.png"
    proc = _run_tool(
        "--url", ocr_server.url, "--images", str(images), "--image", SMALL_IMAGES[0],
        "--scenario", "all", "--concurrency", "4", "--requests", "4",
        "--json", str(out_json), "--plot", str(out_png),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr

    # Printed output: one block per scenario with counts, no errors, and the comparison table.
    for name in mr.ALL_SCENARIOS:
        assert f"== {name} (upload, blocking, concurrency 4) ==" in proc.stdout
    assert proc.stdout.count("4 planned, 4 sent, 4 ok, 0 errors, 0 not sent") == 3
    assert proc.stdout.count("errors      none") == 3
    assert re.search(r"^throughput  \d+\.\d+ req/s over \d+\.\d+ s$", proc.stdout, re.MULTILINE)
    assert "compared with the original project's published figures" in proc.stdout

    doc = json.loads(out_json.read_text())
    assert doc["concurrency"] == 4 and doc["mode"] == "upload" and doc["block"] is True
    by_name = {s["scenario"]: s for s in doc["scenarios"]}
    assert list(by_name) == list(mr.ALL_SCENARIOS)
    for s in by_name.values():
        _check_summary(s, 4)
    assert by_name["distinct"]["cache_hits"] == 0  # fresh bytes every request
    assert by_name["same-cached"]["cache_hit_share"] == 1.0
    if by_name["same-uncached"]["ocr_runs"] is not None:
        assert by_name["same-uncached"]["ocr_runs"] == 1  # identical requests share one run
        assert by_name["same-cached"]["ocr_runs"] == 0
    assert out_png.read_bytes().startswith(b"\x89PNG")


def test_tool_no_block_polls_to_result(ocr_server, small_images: Path, tmp_path: Path) -> None:
    out_json = tmp_path / "out.json"
    proc = _run_tool(
        "--url", ocr_server.url, "--images", str(small_images), "--image", SMALL_IMAGES[1],
        "--scenario", "mixed", "--concurrency", "4", "--requests", "4", "--no-block", "--json", str(out_json),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "== mixed (upload, no-block, concurrency 4) ==" in proc.stdout
    assert "submit      min" in proc.stdout
    (s,) = json.loads(out_json.read_text())["scenarios"]
    _check_summary(s, 4)
    sub = s["submit_latency_s"]
    assert sub["max"] <= s["latency_s"]["max"] + 1e-9
    assert s["cache_hits"] >= 2  # the odd requests ask for the warmed-up image


def test_tool_filename_mode(ocr_server, tmp_path: Path) -> None:
    _require_load_dir()
    out_json = tmp_path / "out.json"
    proc = _run_tool(
        "--url", ocr_server.url, "--images", str(LOAD_DIR), "--image", SMALL_IMAGES[2],
        "--scenario", "same-cached", "--mode", "filename", "--concurrency", "4", "--requests", "4",
        "--json", str(out_json),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (s,) = json.loads(out_json.read_text())["scenarios"]
    _check_summary(s, 4)
    assert s["cache_hit_share"] == 1.0
