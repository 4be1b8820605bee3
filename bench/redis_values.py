"""How long the event loop stalls while a large result goes into Redis and comes back.

    python bench/redis_values.py [--tree before=/tmp/before --tree after=.]

For each source tree (default: this one), in a process of its own: a private redis-server on
a free loopback port (stopped at the end), that tree's RedisStore, and a document result at
the text-layer bound (100 pages of 3,000 runs, ~25 MB of JSON) stored with put_result and read
back with get_result, while a 5 ms timer on the same loop records how late it wakes. The
result is built as the server holds it: each page's lines as the worker's JSON bytes where the
tree has them (models.text_layers.EncodedLayer), else as Python objects. Needs Debian's
redis-server (./test.sh installs it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PAGES, RUNS = 100, 3000


def document_result(encoded: bool) -> dict[str, Any]:
    import orjson

    def page(index: int) -> dict[str, Any]:
        lines = [
            {"text": f"cell {index}.{run}", "confidence": 1.0, "box": [[run, index], [run + 9, index], [run + 9, index + 9], [run, index + 9]]}
            for run in range(RUNS)
        ]  # fmt: skip
        body = orjson.Fragment(orjson.dumps(lines)) if encoded else lines
        return {"page": index + 1, "image_size": [1700, 2200], "text_lines": body, "source": "layer", "timing": {}, "cached": False}

    return {"document": {"type": "pdf", "pages": PAGES}, "timing": {"total": 1.0}, "pages": [page(i) for i in range(PAGES)]}


async def measure(port: int) -> dict[str, Any]:
    from cache import redis_store

    try:  # the tree's workers send text layers encoded (a tree from before them does not)
        from models.text_layers import EncodedLayer  # noqa: F401

        encoded = True
    except ImportError:
        encoded = False
    result = document_result(encoded)
    store = redis_store.RedisStore(f"redis://127.0.0.1:{port}/0", prefix="bench:", result_ttl=600, max_results=10,
                                   task_ttl=900, claim_ttl=125)  # fmt: skip
    gaps: list[float] = []
    running = True

    async def ticker() -> None:
        last = time.perf_counter()
        while running:
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            gaps.append(now - last - 0.005)
            last = now

    timer = asyncio.ensure_future(ticker())
    await asyncio.sleep(0.1)
    row: dict[str, Any] = {"pages_encoded": encoded}
    for name, call in (("put", lambda: store.put_result("doc", result)), ("get", lambda: store.get_result("doc"))):
        gaps.clear()
        began = time.perf_counter()
        value = await call()
        row[f"{name}_ms"] = round((time.perf_counter() - began) * 1000)
        await asyncio.sleep(0.05)
        row[f"{name}_max_stall_ms"] = round(max(gaps) * 1000)
        if name == "get":
            assert value is not None and len(value["pages"]) == PAGES
    running = False
    await timer
    await store.close()
    return row


def run_here() -> dict[str, Any]:
    redis = shutil.which("redis-server")
    if redis is None:
        raise SystemExit("redis-server is not installed (./test.sh installs it)")
    from bench.launch import free_port

    port = free_port()
    workdir = tempfile.mkdtemp(prefix="redis-values-")
    process = subprocess.Popen([redis, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                                "--dir", workdir], stdout=subprocess.DEVNULL)  # fmt: skip
    try:
        time.sleep(0.5)
        return asyncio.run(measure(port))
    finally:
        process.terminate()
        process.wait(10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", action="append", default=[], metavar="NAME=PATH")
    parser.add_argument("--here", type=Path, help=argparse.SUPPRESS)  # measure this tree, in this process
    args = parser.parse_args(argv)
    if args.here:
        sys.path[:0] = [str(args.here), str(REPO)]
        print(json.dumps(run_here()))
        return 0
    for name, path in [t.split("=", 1) for t in args.tree] or [["this", str(REPO)]]:
        tree = Path(path).resolve()
        argv = [sys.executable, str(Path(__file__).resolve()), "--here", str(tree)]
        out = subprocess.run(argv, check=False, cwd=tree, capture_output=True, text=True, timeout=600)
        if out.returncode != 0:
            print(f"{name}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
            return 1
        print(f"{name}: {out.stdout.strip()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
