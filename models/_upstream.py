"""Access to RapidOCR's pure pre/post-processing helpers.

We reuse (not copy) ``DetPreProcess``/``DBPostProcess`` and ``ClsPostProcess``
(CTC decoding is our own, models/ctc.py).  Importing them the normal way executes the package
``__init__``, which imports onnxruntime and builds a RapidOCR logger; a paddle
worker would then carry both runtimes.  The helper modules themselves only
need numpy/cv2/shapely/pyclipper, so they are loaded straight from their
files under a private module name.
"""

from __future__ import annotations

import importlib.util
import sys
from functools import cache
from types import ModuleType

from .errors import ModelLoadError

_PACKAGES = ("rapidocr_onnxruntime", "rapidocr_paddle")


@cache
def _helper(subpath: str) -> ModuleType:
    for pkg in _PACKAGES:
        spec = importlib.util.find_spec(pkg)
        if spec is None or not spec.submodule_search_locations:
            continue
        base = next(iter(spec.submodule_search_locations))
        path = f"{base}/{subpath}.py"
        name = f"_models_upstream_{pkg}_{subpath.replace('/', '_')}"
        mod_spec = importlib.util.spec_from_file_location(name, path)
        if mod_spec is None or mod_spec.loader is None:
            continue
        try:
            mod = importlib.util.module_from_spec(mod_spec)
            sys.modules[name] = mod
            mod_spec.loader.exec_module(mod)
        except FileNotFoundError:
            sys.modules.pop(name, None)
            continue
        return mod
    raise ModelLoadError(f"RapidOCR helper {subpath}.py not found in {_PACKAGES}")


def det_utils() -> ModuleType:
    return _helper("ch_ppocr_det/utils")


def cls_utils() -> ModuleType:
    return _helper("ch_ppocr_cls/utils")
