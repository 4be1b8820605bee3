"""CLI: ``python -m models IMAGE [--engine paddle|onnxruntime] [--det on|off|auto]``."""

from __future__ import annotations

import argparse
import json
import sys

from . import EngineOptions, ImageError, ModelLoadError, create_engine


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m models", description=__doc__)
    ap.add_argument("image")
    ap.add_argument("--engine", choices=["onnxruntime", "openvino", "paddle"], default="onnxruntime")
    ap.add_argument("--det", choices=["on", "off", "auto"], default="on")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-cls", action="store_true", help="skip the 180-degree classifier")
    args = ap.parse_args(argv)
    try:
        with open(args.image, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        engine = create_engine(
            EngineOptions(engine=args.engine, cpu_threads=args.threads, use_angle_cls=not args.no_cls)
        )
        result = engine.recognize(data, det=args.det)
    except ImageError as exc:
        print(json.dumps({"error": exc.code, "detail": str(exc)}), file=sys.stderr)
        return 1
    except ModelLoadError as exc:
        print(f"model load error: {exc}", file=sys.stderr)
        return 3
    print(json.dumps(result, ensure_ascii=False, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
