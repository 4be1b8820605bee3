"""Cache-hit latency measured with wrk: this server against the least Tornado can do.

A Python load client on a 2-core machine takes a core from the server it measures, so
this benchmark drives the hits with wrk (a C load generator; Debian package `wrk`). One
run, on this machine:

1. start the real server (one worker: after the first upload every request is a hit);
2. upload the image once (the one miss) and keep the answer;
3. wrk posts that same multipart upload over C keep-alive connections for D seconds, for
   each C in --connections: p50 / p90 / p99 latency and requests/s; the /health hit
   counter must grow by exactly the number of requests wrk completed;
4. the same wrk runs against bench/tornado_floor.py, which only reads the upload and
   answers the same bytes, as a web.Application handler and as a bare delegate of
   Tornado's HTTP server: each with one process (like this server's one event loop) and
   with one process per core;
5. prints our figures beside the floor's and the ratios.

In a closed loop of C connections, latency = C / throughput (Little's law): p99 under
5 ms at 50 connections needs at least 10,000 requests/s; the floor shows what Tornado
on this machine can reach at all.

    python bench/hit_latency.py                       # ~1.5 min
    python bench/hit_latency.py --connections 1,8,50 --duration 10 --json hits.json
    python bench/hit_latency.py --tree before=/tmp/before --rounds 6 --duration 4
    python bench/hit_latency.py --tree before=/tmp/before --floor-tree before=/tmp/before --rounds 8

--rounds N runs the servers and the 1-process web floor side by side instead (all started
once), N rounds of one wrk run each, the order reversed every other round: on a machine
other jobs share, a figure drifts by tens of percent within a minute, and only ratios taken
in the same round (seconds apart) are worth comparing. It reports, per version, the median
hits/s and CPU per answer over the rounds and the median of the per-round ratios to the
floor, with the load average before each round. --floor-tree NAME=PATH adds the floor of
another source tree to the rounds (when the floor itself changed).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import multirequest as mr
from bench.engine import round_order, round_summary
from bench.launch import BenchServer, free_port, start_process, start_server

DEFAULT_IMAGES = REPO.parent / "shared" / "data" / "load"
FALLBACK_IMAGE = REPO / "imgs" / "sample_invoice.png"
TARGET_P99_S = 0.005
# bench/tornado_floor.py --layer: a web.Application handler, and Tornado's HTTP server alone.
FLOOR_LAYERS = ("web", "http")
FLOOR_NAMES = {"web": "Tornado web floor", "http": "Tornado HTTP floor"}

WRK_SCRIPT = """\
local f = assert(io.open(os.getenv("HIT_BODY"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*all")
f:close()
wrk.headers["Content-Type"] = os.getenv("HIT_CONTENT_TYPE")
"""

_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def _seconds(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text.strip())
    if match is None:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_wrk(output: str) -> dict[str, Any]:
    """The figures of a `wrk --latency` report: percentiles (s), requests, req/s, failures."""
    percentiles = {
        f"p{m.group(1)}": _seconds(m.group(2)) for m in re.finditer(r"^\s+(\d+)%\s+(\S+)\s*$", output, re.MULTILINE)
    }
    done = re.search(r"^\s*(\d+) requests in ([\d.]+\w+),", output, re.MULTILINE)
    rate = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.MULTILINE)
    if done is None or rate is None or "p50" not in percentiles:
        raise ValueError(f"unrecognised wrk output:\n{output}")
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    return {
        "requests": int(done.group(1)),
        "duration_s": _seconds(done.group(2)),
        "requests_per_s": float(rate.group(1)),
        "latency_s": percentiles,
        "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
        "socket_errors": sum(int(x) for x in socket_errors.groups()) if socket_errors else 0,
    }


def run_wrk(wrk: str, url: str, script: Path, env: dict[str, str], connections: int, duration: float) -> dict[str, Any]:
    threads = max(1, min(connections, os.cpu_count() or 1))
    argv = [wrk, f"-t{threads}", f"-c{connections}", f"-d{duration:g}s", "--latency", "-s", str(script), url]
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=duration + 60, env={**os.environ, **env}, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    figures = parse_wrk(done.stdout)
    figures["connections"] = connections
    return figures


def post_once(url: str, body: bytes, content_type: str) -> bytes:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type}, method="POST")
    with urllib.request.urlopen(request, timeout=300) as response:
        return response.read()


def hit_count(server: BenchServer) -> int:
    return int(server.health()["cache"]["hits"])


def _processes(pid: int, children: bool) -> list[Any]:
    """The process `pid` and, with `children`, all its descendants (psutil.Process objects)."""
    import psutil

    process = psutil.Process(pid)
    return [process, *(process.children(recursive=True) if children else [])]


def cpu_seconds(pid: int, children: bool) -> float:
    """CPU time (user + system) of a process (and its children): the HTTP processes' own work,
    which on a shared machine says more than req/s (other load takes the CPU away)."""
    import psutil

    total = 0.0
    for proc in _processes(pid, children):
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


def minor_faults(pid: int, children: bool) -> int:
    """Minor page faults of a process (and its children) so far: memory it touches fresh
    (~5 us a page on a VM). Linux only; 0 elsewhere."""
    import psutil

    total = 0
    for proc in _processes(pid, children):
        with contextlib.suppress(OSError, psutil.Error):
            stat = Path(f"/proc/{proc.pid}/stat").read_text()
            total += int(stat.rsplit(")", 1)[1].split()[7])  # field 10, minflt
    return total


def measure_wrk_series(
    wrk: str, url: str, script: Path, env: dict[str, str], connections: list[int], duration: float,
    server: BenchServer | None = None, cpu_pid: int | None = None, warm_up: bool = True,
) -> list[dict[str, Any]]:  # fmt: skip
    """One wrk run per connection count (after a short warm-up); with `server`, checks every request hit.
    With `cpu_pid`: the CPU time spent per answer by that process, and by its children unless it
    is `server` (whose children are its idle OCR workers)."""
    with_children = server is None
    if warm_up:
        run_wrk(wrk, url, script, env, max(connections), 1.0)  # warm-up: connections, caches, branch predictors
    series = []
    for count in connections:
        before = hit_count(server) if server is not None else None
        cpu_before = cpu_seconds(cpu_pid, with_children) if cpu_pid is not None else None
        faults_before = minor_faults(cpu_pid, with_children) if cpu_pid is not None else None
        figures = run_wrk(wrk, url, script, env, count, duration)
        if cpu_pid is not None and cpu_before is not None and faults_before is not None and figures["requests"]:
            spent = cpu_seconds(cpu_pid, with_children) - cpu_before
            figures["cpu_us_per_request"] = spent / figures["requests"] * 1e6
            faults = minor_faults(cpu_pid, with_children) - faults_before
            figures["faults_per_request"] = faults / figures["requests"]
        if server is not None and before is not None:
            # wrk counts only completed responses; requests cut off at the end may still hit.
            figures["hits"] = hit_count(server) - before
        series.append(figures)
    return series


def hit_upload(image: Path, workdir: Path) -> tuple[bytes, str, Path, dict[str, str]]:
    """The multipart upload of `image` wrk re-sends, its Content-Type, the wrk script posting it
    and the environment that script reads (both written into `workdir`)."""
    boundary = f"hit{uuid.uuid4().hex}"
    body, content_type = mr.build_multipart({"file_type": "file"}, "file", image.name, image.read_bytes(), boundary)
    body_path = workdir / "hit-body.bin"
    body_path.write_bytes(body)
    script = workdir / "hit.lua"
    script.write_text(WRK_SCRIPT)
    return body, content_type, script, {"HIT_BODY": str(body_path), "HIT_CONTENT_TYPE": content_type}


def compare(
    server: BenchServer,
    image: Path,
    connections: list[int],
    duration: float,
    workdir: Path,
    floor_processes: int,
    others: dict[str, BenchServer] | None = None,
) -> dict[str, Any] | None:
    """wrk against `server`, the `others` (other versions) and the Tornado floor; None without wrk."""
    wrk = shutil.which("wrk")
    if wrk is None:
        return None
    body, content_type, script, env = hit_upload(image, workdir)
    answer = post_once(f"{server.url}/ocr_service", body, content_type)  # the one miss; fills the cache
    answer_path = workdir / "hit-answer.json"
    answer_path.write_bytes(answer)

    out: dict[str, Any] = {
        "client": subprocess.run([wrk, "--version"], capture_output=True, text=True, check=False).stdout.split(
            " Copyright"
        )[0],
        "image": image.name,
        "upload_bytes": len(body),
        "answer_bytes": len(answer),
        "server": measure_wrk_series(
            wrk, f"{server.url}/ocr_service", script, env, connections, duration, server, server.pid
        ),
        "others": {},
        "floor": {},
    }
    for name, other in (others or {}).items():
        post_once(f"{other.url}/ocr_service", body, content_type)  # its one miss
        out["others"][name] = measure_wrk_series(
            wrk, f"{other.url}/ocr_service", script, env, connections, duration, other, other.pid
        )
    for layer in FLOOR_LAYERS:
        for processes in sorted({1, floor_processes}):
            port = free_port()
            floor_dir = Path(tempfile.mkdtemp(prefix=f"floor-{layer}{processes}-", dir=workdir))
            argv = [str(REPO / "bench" / "tornado_floor.py"), "--port", str(port), "--response", str(answer_path),
                    "--processes", str(processes), "--layer", layer]  # fmt: skip
            floor = start_process(argv, port, floor_dir, ready_timeout=30)
            try:
                out["floor"][f"{layer}-{processes}"] = measure_wrk_series(
                    wrk, f"{floor.url}/ocr_service", script, env, connections, duration, cpu_pid=floor.pid
                )
            finally:
                floor.stop(grace=10)
    return out


FLOOR_TARGET = "web floor, 1 proc"


def interleaved(
    server: BenchServer,
    image: Path,
    connections: list[int],
    duration: float,
    workdir: Path,
    rounds: int,
    others: dict[str, BenchServer] | None = None,
    other_floors: dict[str, Path] | None = None,
) -> dict[str, Any] | None:
    """`rounds` rounds of one wrk run per target (this server, the `others`, the 1-process web
    floor, and the floors of `other_floors`: name -> source tree) and connection count, the
    targets' order reversed every other round; None without wrk. Per round: req/s, CPU per
    answer and the load average before it, so that each version's figures can be divided by
    the floor's of the same round."""
    wrk = shutil.which("wrk")
    if wrk is None:
        return None
    body, content_type, script, env = hit_upload(image, workdir)
    servers = {"this server": server, **(others or {})}
    answer = b""
    for other in servers.values():
        answer = post_once(f"{other.url}/ocr_service", body, content_type)  # each one's one miss
    answer_path = workdir / "hit-answer.json"
    answer_path.write_bytes(answer)
    targets: dict[str, tuple[BenchServer, bool]] = {name: (srv, True) for name, srv in servers.items()}
    floors = {FLOOR_TARGET: REPO, **{f"{name} floor": tree for name, tree in (other_floors or {}).items()}}
    for name, tree in floors.items():
        port = free_port()
        floor_dir = Path(tempfile.mkdtemp(prefix="floor-web1-", dir=workdir))
        argv = [str(tree / "bench" / "tornado_floor.py"), "--port", str(port), "--response", str(answer_path),
                "--processes", "1", "--layer", "web"]  # fmt: skip
        targets[name] = (start_process(argv, port, floor_dir, ready_timeout=30), False)
    runs: dict[int, dict[str, list[dict[str, Any]]]] = {c: {name: [] for name in targets} for c in connections}
    load: list[tuple[float, float, float]] = []
    try:
        for srv, _ in targets.values():  # warm-up: connections, caches, branch predictors
            run_wrk(wrk, f"{srv.url}/ocr_service", script, env, max(connections), 1.0)
        for index in range(rounds):
            load.append(os.getloadavg())
            for count in connections:
                for name in round_order(list(targets), index):
                    srv, is_server = targets[name]
                    [figures] = measure_wrk_series(
                        wrk, f"{srv.url}/ocr_service", script, env, [count], duration,
                        server=srv if is_server else None, cpu_pid=srv.pid, warm_up=False,
                    )  # fmt: skip
                    runs[count][name].append(figures)
    finally:
        for name in floors:
            targets[name][0].stop(grace=10)
    load.append(os.getloadavg())
    return {
        "image": image.name,
        "upload_bytes": len(body),
        "answer_bytes": len(answer),
        "rounds": rounds,
        "duration_s": duration,
        "load_average": load,
        "runs": {str(count): per_target for count, per_target in runs.items()},
    }


def interleaved_report(result: dict[str, Any]) -> list[str]:
    """Medians over the rounds and the medians of per-round ratios to the 1-process web floor."""
    loads = [f"{one:.2f}" for one, _, _ in result["load_average"]]
    title = (
        f"{result['image']} ({result['upload_bytes']} B upload, {result['answer_bytes']} B answer), "
        f"{result['rounds']} interleaved rounds of {result['duration_s']:g} s"
    )
    header = (
        f"{'':22} {'conns':>5} {'hits/s':>8} {'low':>7} {'high':>7} {'vs floor':>9} "
        f"{'CPU/answer':>11} {'floor CPU/its CPU':>18} {'p99':>9} {'errors':>6}"
    )
    lines = [title, f"load average (1 min) before each round and at the end: {' '.join(loads)}", header]
    for count, per_target in result["runs"].items():
        rate = {name: [r["requests_per_s"] for r in rs] for name, rs in per_target.items()}
        cpu = {name: [r.get("cpu_us_per_request", float("nan")) for r in rs] for name, rs in per_target.items()}
        # CPU ratio as floor / target, so that (like hits/s) higher is better for the target.
        inverse_cpu = {name: [1e6 / c for c in values] for name, values in cpu.items()}
        rates = round_summary(rate, FLOOR_TARGET)
        cpus = round_summary(inverse_cpu, FLOOR_TARGET)
        for name, rs in per_target.items():
            errors = sum(r["non_2xx"] + r["socket_errors"] for r in rs)
            p99 = statistics.median(r["latency_s"]["p99"] for r in rs)
            summary = rates[name]
            lines.append(
                f"{name:22} {count:>5} {summary['median']:>8.0f} {summary['low']:>7.0f} {summary['high']:>7.0f} "
                f"{summary['ratio']:>9.2f} {statistics.median(cpu[name]):>8.0f} us {cpus[name]['ratio']:>18.2f} "
                f"{_ms(p99):>9} {errors:>6}"
            )
    return lines


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def report(result: dict[str, Any]) -> list[str]:
    lines = [
        (
            f"cache hits with {result['client']}: {result['image']} ({result['upload_bytes']} B upload, "
            f"{result['answer_bytes']} B answer)"
        ),
        f"{'':28} {'conns':>5} {'req/s':>8} {'p50':>10} {'p90':>10} {'p99':>10}  notes",
    ]
    rows = [("this server (1 loop)", result["server"])]
    rows += [(f"{name} (1 loop)", series) for name, series in result.get("others", {}).items()]
    for key, series in result["floor"].items():
        layer, processes = key.split("-")
        rows.append((f"{FLOOR_NAMES[layer]}, {processes} proc", series))
    for name, series in rows:
        for s in series:
            lat = s["latency_s"]
            notes = []
            if "cpu_us_per_request" in s:
                notes.append(f"CPU {s['cpu_us_per_request']:.0f} us/answer")
            if "faults_per_request" in s:
                notes.append(f"{s['faults_per_request']:.2f} page faults/answer")
            if "hits" in s:
                notes.append(f"hits {s['hits']} for {s['requests']} answered")
            if s["non_2xx"] or s["socket_errors"]:
                notes.append(f"non-2xx {s['non_2xx']}, socket errors {s['socket_errors']}")
            lines.append(
                f"{name:28} {s['connections']:>5} {s['requests_per_s']:>8.0f} {_ms(lat['p50']):>10} "
                f"{_ms(lat.get('p90', float('nan'))):>10} {_ms(lat['p99']):>10}  {'; '.join(notes)}"
            )
    floor1 = {s["connections"]: s for s in result["floor"].get("web-1", [])}
    compared = [("this server", s) for s in result["server"]]
    compared += [(name, s) for name, series in result.get("others", {}).items() for s in series]
    for who, s in compared:
        f = floor1.get(s["connections"])
        if f is None:
            continue
        cpu = ""
        if "cpu_us_per_request" in s and f.get("cpu_us_per_request"):
            cpu = f", floor CPU / its CPU per answer = {f['cpu_us_per_request'] / s['cpu_us_per_request']:.2f}"
        lines.append(
            f"at {s['connections']} connections: {who} / 1-process web floor = "
            f"{s['requests_per_s'] / f['requests_per_s']:.2f} x throughput, "
            f"{s['latency_s']['p99'] / f['latency_s']['p99']:.2f} x p99{cpu}"
        )
    for key, series in result["floor"].items():
        layer, processes = key.split("-")
        for s in series:
            if s["connections"] == 50:
                met = "below" if s["latency_s"]["p99"] < TARGET_P99_S else "above"
                lines.append(
                    f"{FLOOR_NAMES[layer]}, {processes} process(es), 50 connections: {s['requests_per_s']:.0f} req/s, "
                    f"p50 {_ms(s['latency_s']['p50'])}, p99 {_ms(s['latency_s']['p99'])} ({met} the 5 ms target)"
                )
    lines.append(
        f"(closed loop, Little's law: p99 < {_ms(TARGET_P99_S)} at 50 connections needs at least "
        f"{50 / TARGET_P99_S:.0f} req/s, and a tail no longer than the median)"
    )
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--image", type=Path, default=None, help="image to upload (default: the load set's same-image)")
    p.add_argument("--connections", default="1,50", help="comma-separated wrk connection counts")
    p.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    p.add_argument("--floor-processes", type=int, default=os.cpu_count() or 1)
    p.add_argument("--json", dest="json_path", type=Path, default=None)
    p.add_argument("--tree", action="append", default=[], metavar="NAME=PATH",
                   help="also measure the server.py of another source tree (e.g. the code before a change)")  # fmt: skip
    p.add_argument("--rounds", type=int, default=0,
                   help="interleaved rounds beside the 1-process web floor instead of one run each")  # fmt: skip
    p.add_argument("--floor-tree", action="append", default=[], metavar="NAME=PATH",
                   help="with --rounds: also the 1-process web floor of another source tree")  # fmt: skip
    args = p.parse_args(argv)
    connections = [int(x) for x in args.connections.split(",") if x.strip()]
    image = args.image
    if image is None:
        image = mr.default_same_image(mr.list_images(DEFAULT_IMAGES)) if DEFAULT_IMAGES.is_dir() else FALLBACK_IMAGE
    if shutil.which("wrk") is None:
        print("wrk is not installed (Debian: apt-get install wrk)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-hits-") as tmp:
        workdir = Path(tmp)
        config = {"web_server": {"host": "127.0.0.1"}, "ocr": {"process": {"number": 1}}}
        # INFO: the access log stays on, as in production.
        server = start_server(config, log_level="INFO", workdir=workdir)
        others: dict[str, BenchServer] = {}
        started = time.monotonic()
        try:
            for name, path in (tree.split("=", 1) for tree in args.tree):
                other_dir = workdir / f"tree-{name}"
                other_dir.mkdir()
                others[name] = start_server(config, log_level="INFO", workdir=other_dir, repo=Path(path).resolve())
            if args.rounds > 0:
                other_floors = {name: Path(path).resolve() for name, path in (t.split("=", 1) for t in args.floor_tree)}
                result = interleaved(
                    server, image, connections, args.duration, workdir, args.rounds, others, other_floors
                )
            else:
                result = compare(server, image, connections, args.duration, workdir, args.floor_processes, others)
        finally:
            for other in others.values():
                other.stop()
            server.stop()
    assert result is not None
    for line in interleaved_report(result) if args.rounds > 0 else report(result):
        print(line)
    print(f"({time.monotonic() - started:.0f} s)")
    if args.json_path is not None:
        args.json_path.write_text(json.dumps(result, indent=2) + "\n")
    ours = result["server"] if args.rounds <= 0 else [r for rs in result["runs"].values() for r in rs["this server"]]
    failures = sum(s["non_2xx"] + s["socket_errors"] for s in ours)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
