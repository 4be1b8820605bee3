"""Shared test fixtures: the real server on a free loopback port, real images."""

from __future__ import annotations

import io
import json
import os
import random
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from PIL import Image, ImageDraw, ImageFont

from bench import launch
from ocr_pool.cpus import read_usable_cpus

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
GT_DIR = SHARED / "data" / "ocr-gt"
LOAD_DIR = SHARED / "data" / "load"
ARTIFACTS = REPO / "artifacts"


# Threads for the engines the tests build in this process (tests/test_models.py,
# tests/test_runtimes.py): what a one-worker server gives its worker, the CPUs this process
# may use. Nothing else reads meanwhile, and the reading does not depend on it: on ten
# ground-truth images each engine (onnxruntime, paddle, openvino) answered the same text and
# confidences with 1 and 2 threads; only the time differs (a third to a half less on 2 CPUs).
ENGINE_THREADS = read_usable_cpus()


def require_shared() -> None:
    if not (GT_DIR / "manifest.jsonl").is_file():
        pytest.skip(f"shared test data not found at {SHARED} (expected ../shared beside the repo)")


def gt_manifest() -> list[dict[str, Any]]:
    require_shared()
    with open(GT_DIR / "manifest.jsonl", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def gt_entry(predicate: Any) -> dict[str, Any]:
    for entry in gt_manifest():
        if predicate(entry):
            return entry
    pytest.skip("no matching image in the shared ground-truth set")


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (0 if absent)."""
    label_text = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.escape(name) + (r"\{" + re.escape(label_text) + r"\}" if labels else "") + r" ([0-9.e+-]+)\n"
    match = re.search(pattern, text)
    return float(match.group(1)) if match else 0.0


def text_image(text: str, size: int = 48) -> bytes:
    """A PNG of `text` in black on white: OCR-able, and unique bytes per text."""
    font = ImageFont.load_default(size=size)
    left, top, right, bottom = font.getbbox(text)
    image = Image.new("RGB", (right - left + 2 * size, bottom - top + 2 * size), "white")
    ImageDraw.Draw(image).text((size - left, size - top), text, fill="black", font=font)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


# No look-alike pairs (0/O, 1/I, 5/S, 8/B, 2/Z): a misread must mean a real failure.
UNAMBIGUOUS = "ACDEFHKLMNPRTUWXY34679"


def random_word(length: int = 8) -> str:
    return "".join(random.choices(UNAMBIGUOUS, k=length))


@dataclass
class RunningServer:
    url: str
    pid: int
    config_path: Path
    log_path: Path
    process: subprocess.Popen[bytes]
    # A folder inside the server's allowed roots that tests may write to.
    images_dir: Path | None = None

    def health(self) -> dict[str, Any]:
        return requests.get(f"{self.url}/health", timeout=10).json()

    def ocr_upload(self, data: bytes, timeout: float = 120, **fields: Any) -> requests.Response:
        form = {"file_type": "file", **fields}
        return requests.post(
            f"{self.url}/ocr_service", data=form, files={"file": ("image.png", data)}, timeout=timeout
        )

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM the server we started (by its PID) and wait for a clean exit."""
        if self.process.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                return self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
                raise
        return self.process.returncode

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


def base_config(**process: Any) -> dict[str, Any]:
    roots = [str(p) for p in (LOAD_DIR, GT_DIR) if p.is_dir()]
    return {
        "web_server": {"allowed_roots": roots or ["./imgs"]},
        "ocr": {"process": {"number": 2, **process}},
        "service": {"time": 600, "img_number": 1000},
    }


def start_server(workdir: Path, config: dict[str, Any], ready_timeout: float = 180) -> RunningServer:
    """server.py with `config` on a free loopback port (as the benchmarks' launcher starts it),
    ready to serve."""
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "config.json"
    config_path.write_text(json.dumps(config, indent=2))
    port = launch.free_port()
    argv = [str(REPO / "server.py"), "--config", str(config_path), "--port", str(port), "--log-level", "INFO"]
    # Readiness is polled here, every 20 ms (the launcher's own wait polls /readyz every 200 ms).
    launched = launch.start_process(argv, port, workdir, ready_timeout, new_session=False, ready_path=None)
    server = RunningServer(launched.url, launched.pid, config_path, workdir / "server.log", launched.process)
    # /readyz answers once one worker is ready; tests reason about the configured pool
    # (which pages run at once, how many workers are replaced), so wait for all of it.
    deadline = time.monotonic() + ready_timeout
    workers: dict[str, Any] = {}
    while True:
        try:
            workers = server.health()["workers"]
        except requests.ConnectionError:  # not listening yet
            pass
        else:
            if workers["ready"] >= workers["configured"]:
                return server
        if time.monotonic() > deadline or server.process.poll() is not None:
            if server.process.poll() is None:
                server.stop()
            raise RuntimeError(f"pool never full: {workers}\n{server.log_text()[-3000:]}")
        time.sleep(0.02)


@pytest.fixture(scope="session")
def ocr_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One real server (2 real workers, real models) shared by the read-only tests."""
    workdir = tmp_path_factory.mktemp("ocr_server")
    config = base_config()
    images = workdir / "imgs"
    images.mkdir()
    config["web_server"]["allowed_roots"].append(str(images))
    server = start_server(workdir, config)
    server.images_dir = images
    yield server
    assert server.stop() == 0, server.log_text()[-3000:]


@pytest.fixture(scope="session")
def one_worker_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One real server of base_config(number=1) (one real worker; the default engine, OpenVINO),
    shared by the tests that need just that and leave it as they found it: a worker they stop
    (SIGSTOP) they let go on, and what they count they count from their own start."""
    server = start_server(tmp_path_factory.mktemp("one_worker_server"), base_config(number=1))
    yield server
    assert server.stop() == 0, server.log_text()[-3000:]


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Any]:
    """Start extra servers with their own config; each is stopped by PID afterwards."""
    started: list[RunningServer] = []

    def factory(config: dict[str, Any], name: str = "server") -> RunningServer:
        server = start_server(tmp_path / f"{name}-{len(started)}", config)
        started.append(server)
        return server

    yield factory
    for server in started:
        if server.process.poll() is None:
            server.stop()
