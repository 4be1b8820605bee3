"""Inference backends with one interface: ``run(batch) -> list[ndarray]``.

paddle / onnxruntime are imported inside the constructors so that importing
this module (or anything in ``models``) stays cheap for the parent process.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .errors import ModelLoadError
from .options import PADDLE_PARAMS_FILE, paddle_model_file


class Session(Protocol):
    path: Path

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        """The model's outputs for batch x; they may be views valid only until the next run."""
        ...

    def character_list(self) -> list[str] | None: ...

    def input_height(self) -> int | None: ...


class OrtSession:
    def __init__(self, path: Path, cpu_threads: int = 1) -> None:
        import onnxruntime as ort

        self.path = path
        so = ort.SessionOptions()
        so.intra_op_num_threads = cpu_threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        # Det input shapes change with every image; the CPU arena keeps the
        # peak for each shape and RSS creeps up.  Plain malloc keeps it flat.
        so.enable_cpu_mem_arena = False
        # Spinning worker threads burn the other core that a sibling worker
        # process needs.
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self._sess = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ModelLoadError(f"cannot load ONNX model {path}: {exc}") from exc
        self._input = self._sess.get_inputs()[0].name

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        return self._sess.run(None, {self._input: x})

    def input_height(self) -> int | None:
        """The fixed input height the model declares (NCHW), if any."""
        shape = self._sess.get_inputs()[0].shape
        return shape[2] if len(shape) == 4 and isinstance(shape[2], int) else None

    def character_list(self) -> list[str] | None:
        meta = self._sess.get_modelmeta().custom_metadata_map
        chars = meta.get("character")
        return chars.splitlines() if chars else None


# Compiled kernels OpenVINO keeps per input shape. Measured on 40 pages (one worker, bf16):
# RSS 1650 MB and growing with the default 5000; 778 MB at 100, same speed; 735 MB at 0, 6 % slower.
OV_SHAPE_CACHE_ENTRIES = 100


class OvSession:
    """The same ONNX file, run by OpenVINO's CPU plugin (reads ONNX directly, no conversion step)."""

    # A recogniser input of a width not seen before costs ~50 % more (kernels are compiled
    # for it): padding line batches to a multiple of 64 px made 40 pages ~10 % faster.
    width_step = 64

    def __init__(self, path: Path, cpu_threads: int = 1, precision: str = "fp32") -> None:
        import openvino as ov

        self.path = path
        core = ov.Core()
        config = {
            "INFERENCE_NUM_THREADS": cpu_threads,
            # One request at a time per worker: one stream, tuned for latency.
            "NUM_STREAMS": 1,
            "PERFORMANCE_HINT": "LATENCY",
            # Always said: left alone, the plugin picks bf16 on some CPUs and f32 on others.
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
            # The workers share the cores; pinning threads to cores would fight the other worker.
            "ENABLE_CPU_PINNING": False,
            # Kernels compiled per input shape are kept (default 5000 entries): every page size
            # and line width adds some, and the worker grew by ~35 MB an image without a bound.
            "CPU_RUNTIME_CACHE_CAPACITY": OV_SHAPE_CACHE_ENTRIES,
        }
        try:
            model = core.read_model(str(path))
            self._characters = _ov_characters(model)
            self._shape = model.inputs[0].get_partial_shape()
            self._compiled = core.compile_model(model, "CPU", config)
            self._request = self._compiled.create_infer_request()
        except Exception as exc:
            raise ModelLoadError(f"cannot load ONNX model {path} with OpenVINO: {exc}") from exc

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        """The outputs are views of the request's own buffers, valid until the next run: a
        recogniser batch's output is 18,710 classes per frame (~10 MB), and copying it cost
        as much as decoding it. Every caller reads them before running the model again."""
        # share_inputs: the request reads x where it lies (it is not written to, and is alive
        # until the synchronous run returns); the default copied every input into the
        # request's own tensor first (a 1280 x 960 page: 15 MB, ~3 ms).
        self._request.infer({0: np.ascontiguousarray(x)}, share_inputs=True)
        return [t.data for t in self._request.output_tensors]

    def input_height(self) -> int | None:
        if self._shape.rank.get_length() == 4 and self._shape[2].is_static:
            return self._shape[2].get_length()
        return None

    def character_list(self) -> list[str] | None:
        return self._characters.splitlines() if self._characters else None

    def release_memory(self) -> None:
        """The intermediate buffers, sized for the largest input run so far, are freed (the
        outputs of the last run with them); the next run allocates for its own input."""
        self._compiled.release_memory()


def _ov_characters(model: Any) -> str | None:
    """The ONNX metadata entry "character", which OpenVINO keeps under rt_info framework."""
    if not model.has_rt_info(["framework", "character"]):
        return None
    return model.get_rt_info(["framework", "character"]).astype(str)


class PaddleSession:
    def __init__(self, model_dir: Path, cpu_threads: int = 1, enable_mkldnn: bool = False) -> None:
        # glog chatter goes to stderr of every worker otherwise.
        os.environ.setdefault("GLOG_minloglevel", "2")
        os.environ.setdefault("FLAGS_call_stack_level", "0")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "No ccache found" on import
            from paddle import inference

        self.path = model_dir
        program = paddle_model_file(model_dir)
        cfg = inference.Config(str(program), str(model_dir / PADDLE_PARAMS_FILE))
        cfg.disable_gpu()
        cfg.disable_glog_info()
        cfg.set_cpu_math_library_num_threads(cpu_threads)
        if enable_mkldnn:
            cfg.enable_mkldnn()
            # oneDNN caches a kernel per input shape; without a cap a long-lived
            # worker that sees many image sizes grows without bound.
            cfg.set_mkldnn_cache_capacity(10)
        else:
            cfg.disable_mkldnn()
        if program.suffix != ".json":
            # The memory-reuse pass exists for the old program format only; Paddle 3's
            # PIR programs (inference.json) fail to load with it.
            cfg.enable_memory_optim()
        cfg.switch_ir_optim(True)
        try:
            self._pred = inference.create_predictor(cfg)
        except Exception as exc:
            raise ModelLoadError(f"cannot load paddle model {model_dir}: {exc}") from exc
        self._in = self._pred.get_input_handle(self._pred.get_input_names()[0])
        self._outs = [self._pred.get_output_handle(n) for n in self._pred.get_output_names()]

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        self._in.reshape(list(x.shape))
        self._in.copy_from_cpu(np.ascontiguousarray(x))
        self._pred.run()
        return [o.copy_to_cpu() for o in self._outs]

    def input_height(self) -> int | None:
        return None  # not declared by Paddle inference models: the recogniser's default

    def character_list(self) -> list[str] | None:
        return None  # paddle inference models carry no metadata
