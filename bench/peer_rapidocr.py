"""Run rapidocr 3.x on its defaults (one thread) over images named on stdin; JSON on stdout.

Executed by the peer's own interpreter (`bench/accuracy.py --peer-python`), so from this project
it imports only bench/common.py (standard library only; the script's folder is on sys.path):

    python peer_rapidocr.py ROOT < images.json

Output: {"images": {name: {"lines", "ms"}}, "rss_mb": this process's resident memory after the run}.
"""

import json
import logging
import sys
import time
from pathlib import Path

from common import rss_mb
from rapidocr import RapidOCR


def main() -> int:
    root = Path(sys.argv[1])
    images = json.load(sys.stdin)
    engine = RapidOCR(
        params={
            "EngineConfig.onnxruntime.intra_op_num_threads": 1,
            "EngineConfig.onnxruntime.inter_op_num_threads": 1,
        }
    )
    logging.disable(logging.CRITICAL)
    out = {}
    for name in images:
        data = (root / name).read_bytes()
        t0 = time.perf_counter()
        try:
            result = engine(data)
            lines = list(result.txts or ())
        except Exception as exc:  # noqa: BLE001 - the peer failing on one image is a result, not a crash
            lines = [f"<{type(exc).__name__}>"]
        out[name] = {"lines": lines, "ms": (time.perf_counter() - t0) * 1000}
    json.dump({"images": out, "rss_mb": rss_mb()}, sys.stdout, ensure_ascii=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
