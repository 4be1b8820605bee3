"""Run rapidocr 3.x on its defaults (one thread) over images named on stdin; JSON on stdout.

Executed by the peer's own interpreter (`bench/accuracy.py --peer-python`), so from this project
it imports only bench/common.py (standard library only; the script's folder is on sys.path):

    python peer_rapidocr.py ROOT < images.json

Output: {"images": {name: {"lines", "ms"}}, "rss_mb": this process's resident memory after the run}.
"""

import json
import logging
import sys
from pathlib import Path

from common import run_peer_images
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
    run_peer_images(root, images, lambda data: list(engine(data).txts or ()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
