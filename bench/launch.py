"""Start and stop a real server for benchmarks (loopback, free port, own config)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get_json(url: str, timeout: float = 10) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


@dataclass
class BenchServer:
    url: str
    process: subprocess.Popen[bytes]
    workdir: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def health(self) -> dict[str, Any]:
        return get_json(f"{self.url}/health")

    def stop(self, grace: float = 60.0) -> int:
        """SIGTERM by PID; if it does not exit in time, SIGKILL its own process group
        (it was started in a session of its own, so that reaches its workers too)."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                return self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
        return self.process.wait(timeout=10)

    def log_tail(self, chars: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return (self.workdir / "server.log").read_text(errors="replace")[-chars:]
        return ""


def start_server(
    config: dict[str, Any],
    ready_timeout: float = 180,
    log_level: str = "WARNING",
    workdir: Path | None = None,
    new_session: bool = True,
    repo: Path = REPO,
) -> BenchServer:
    """Start server.py with `config` on a free loopback port and wait until it is ready.

    new_session: run it in a session of its own (benchmarks: stop() can then reach its
    workers by process group); tests keep it in theirs, so a Ctrl-C reaches it too.
    repo: the source tree whose server.py runs (another checkout, to compare versions).
    """
    workdir = workdir or Path(tempfile.mkdtemp(prefix="ocr-bench-"))
    config_path = workdir / "config.json"
    config_path.write_text(json.dumps(config, indent=2))
    port = free_port()
    argv = [str(repo / "server.py"), "--config", str(config_path), "--port", str(port), "--log-level", log_level]
    return start_process(argv, port, workdir, ready_timeout, new_session, cwd=repo)


def start_process(
    argv: list[str],
    port: int,
    workdir: Path,
    ready_timeout: float = 180,
    new_session: bool = True,
    python: str = sys.executable,
    cwd: Path = REPO,
    ready_path: str | None = "/readyz",
) -> BenchServer:
    """Run `python argv...` (a server listening on 127.0.0.1:port) and wait until /readyz says
    ready (ready_path None: return at once; the caller knows how to tell the server is up)."""
    with open(workdir / "server.log", "wb") as log:
        process = subprocess.Popen(
            [python, *argv], cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=new_session
        )
    server = BenchServer(f"http://127.0.0.1:{port}", process, workdir)
    if ready_path is None:
        return server
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{server.log_tail()}")
        try:
            if get_json(f"{server.url}{ready_path}", timeout=2).get("status") == "ready":
                return server
        except OSError:
            pass
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"server not ready within {ready_timeout:g} s:\n{server.log_tail()}")
