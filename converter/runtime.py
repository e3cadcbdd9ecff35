"""Run models in real runtimes (onnxruntime, LiteRT) to compare original and restored outputs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from qpack.formats.errors import QpackError, UnsupportedError

_ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
              "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8,
              "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_}


@dataclass(frozen=True)
class InputSpec:
    name: str
    shape: tuple[int | None, ...]  # None for a symbolic dimension
    dtype: np.dtype


class Runner:
    """A loaded model: its input specs and a run() from named arrays to a list of outputs."""

    inputs: list[InputSpec]
    output_names: list[str]

    def run(self, feeds: dict[str, NDArray]) -> list[NDArray]:
        raise NotImplementedError


class OnnxRunner(Runner):
    """onnxruntime at basic graph optimization, so the numbers measure weights, not fused kernels
    (`deployed`: as users run it, every optimization on, `threads` threads, sequential)."""

    def __init__(self, path: Path, threads: int = 2, deployed: bool = False) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        level = ort.GraphOptimizationLevel
        opts.graph_optimization_level = level.ORT_ENABLE_ALL if deployed else level.ORT_ENABLE_BASIC
        opts.intra_op_num_threads = threads
        if deployed:
            opts.inter_op_num_threads = 1
            opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 4  # its errors reach the user as qpack's one line, not as its own log
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise QpackError(f"{path}: onnxruntime cannot load it ({str(e).splitlines()[0]})") from e
        self.inputs = []
        for i in self.session.get_inputs():
            if i.type not in _ORT_TYPES:
                raise UnsupportedError(f"input '{i.name}' has type {i.type}")
            shape = tuple(d if isinstance(d, int) and d > 0 else None for d in (i.shape or []))
            self.inputs.append(InputSpec(i.name, shape, np.dtype(_ORT_TYPES[i.type])))
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, feeds):
        try:
            return [np.asarray(o) for o in self.session.run(None, feeds)]
        except Exception as e:
            raise QpackError(f"onnxruntime failed: {str(e).splitlines()[0]}") from e


class TfliteRunner(Runner):
    """LiteRT's interpreter (ai-edge-litert), or tflite_runtime where only that is installed."""

    def __init__(self, path: Path, threads: int = 2, deployed: bool = False) -> None:
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:  # pragma: no cover - depends on the machine
            from tflite_runtime.interpreter import Interpreter  # type: ignore[no-redef]
        try:  # (the default delegate, XNNPACK, either way: `deployed` changes nothing here)
            self.interp = Interpreter(model_path=str(path), num_threads=threads)
            self.interp.allocate_tensors()
        except Exception as e:
            raise QpackError(f"{path}: LiteRT cannot load it ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from e
        self._in = self.interp.get_input_details()
        self._out = self.interp.get_output_details()
        self.inputs = [InputSpec(d["name"], tuple(int(n) for n in d["shape"]), np.dtype(d["dtype"])) for d in self._in]
        self.output_names = [d["name"] for d in self._out]

    def run(self, feeds):
        try:
            for d in self._in:
                x = np.asarray(feeds[d["name"]], dtype=d["dtype"])
                if tuple(x.shape) != tuple(d["shape"]):
                    self.interp.resize_tensor_input(d["index"], x.shape)
                    self.interp.allocate_tensors()
                self.interp.set_tensor(d["index"], x)
            self.interp.invoke()
            return [np.array(self.interp.get_tensor(d["index"])) for d in self._out]
        except KeyError as e:
            raise QpackError(f"no input given for '{e.args[0]}'") from None
        except Exception as e:
            raise QpackError(f"LiteRT failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from e


def open_runner(path: Path, threads: int = 2, deployed: bool = False) -> Runner:
    """A runner for an .onnx or .tflite file (`deployed`: the runtime's default optimizations, see OnnxRunner)."""
    from qpack.formats.registry import sniff

    return (TfliteRunner if sniff(path) == "tflite" else OnnxRunner)(path, threads, deployed)


def random_inputs(specs: list[InputSpec], seed: int = 0, dynamic: int = 1) -> dict[str, NDArray]:
    """Deterministic stand-in inputs: floats ~ N(0, 1), integers 0, symbolic dims set to `dynamic`."""
    rng = np.random.default_rng(seed)
    out = {}
    for s in specs:
        shape = tuple(dynamic if d is None else d for d in s.shape)
        if np.issubdtype(s.dtype, np.floating):
            out[s.name] = rng.standard_normal(shape).astype(s.dtype)
        else:
            out[s.name] = np.zeros(shape, dtype=s.dtype)
    return out
