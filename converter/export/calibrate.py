"""Activation ranges for full-integer exports, measured by running the model on calibration inputs.

A full-integer model stores each activation as 8-bit integers at one scale per tensor: the range
that scale spans is chosen from the values the activation takes on the inputs. `minmax` spans
everything seen (no clipping, coarse steps where a few values stand out); `percentile` clips to the
99.99th percentile of |x| beyond zero; `mse` picks the clip with the least squared quantization
error over a histogram of the values (what ranges with long tails want). All three read the same
histograms: one pass for each tensor's extremes, a second for 2,048-bin histograms between them.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray

from qpack.converter.datasets import Inputs, check_shapes
from qpack.formats.errors import OptionError, QpackError

BINS = 2048
LEVELS = 255  # uint8 activations
PERCENTILE = 99.99
CHECK_INPUTS = 16  # calibration inputs an export's fidelity check runs
# the share of the error --min-cosine allows (1 - cosine) that the calibration inputs may use: ranges fitted
# to them are tighter there than on other inputs (silero's VAD kept 0.9900 on its calibration draw and 0.9838
# on another), so 0.99 is kept as 0.995 where it is checked
CALIBRATION_SHARE = 0.5
# the share of a cosine goal's error (1 - cosine) the weights may use in a file made --for a full-integer
# target; the rest is the export's, whose activations add their own error to the weights': the goal holds
# for the exported model, not the container alone (split_cosine)
WEIGHT_SHARE = 0.5
K = TypeVar("K", bound=Hashable)  # what names an activation: an ONNX value's name, a TFLite tensor's index


@dataclass(frozen=True)
class Range:
    """One activation's calibrated range, always holding 0 (so zero is exact), as uint8 scale and zero point."""

    low: float
    high: float
    sqnr_db: float = math.inf  # the activation's energy over its expected error at this range (rounding and clipping)

    @property
    def scale(self) -> float:
        span = self.high - self.low
        return span / LEVELS if span > 0 else 1.0

    @property
    def zero_point(self) -> int:
        return int(np.clip(np.round(-self.low / self.scale), 0, LEVELS))


@dataclass(frozen=True)
class Grid:
    """The integers an activation is quantized to: `levels` steps over [lo, hi] (uint8, int8), or symmetric
    ones, zero at zero, over [-peak, peak] with peak = max(-lo, hi) (int16 in TFLite's 16x8)."""

    levels: int
    symmetric: bool = False

    def step(self, lo: float, hi: float) -> float:
        span = 2 * max(-lo, hi) if self.symmetric else hi - lo
        return span / self.levels if span > 0 else 0.0


UINT8 = Grid(LEVELS)


def _minmax(hist: NDArray[np.int64], edges: NDArray[np.float64], grid: Grid) -> tuple[float, float]:
    return float(edges[0]), float(edges[-1])


def _percentile(hist: NDArray[np.int64], edges: NDArray[np.float64], grid: Grid) -> tuple[float, float]:
    cdf = np.cumsum(hist) / max(int(hist.sum()), 1)
    cut = (100 - PERCENTILE) / 100 / 2
    lo = edges[int(np.searchsorted(cdf, cut, side="left"))]
    hi = edges[int(np.searchsorted(cdf, 1 - cut, side="left")) + 1]
    return float(lo), float(hi)


def _mse(hist: NDArray[np.int64], edges: NDArray[np.float64], grid: Grid) -> tuple[float, float]:
    """The clip [lo, hi] (both ends shrunk together toward 0, 64 candidates) with the least expected
    squared error: rounding noise step^2 / 12 inside, the distance to the end outside."""
    lo0, hi0 = float(edges[0]), float(edges[-1])
    clips = [(min(lo0 * f, 0.0), max(hi0 * f, 0.0)) for f in np.linspace(1.0, 0.05, 64)]
    return min(clips, key=lambda c: _error(hist, edges, c[0], c[1], grid))


def _error(hist: NDArray[np.int64], edges: NDArray[np.float64], lo: float, hi: float, grid: Grid) -> float:
    """The histogram's expected squared error quantized on `grid` over [lo, hi]: rounding noise
    step^2 / 12 for the values inside, the distance to the nearer end for those outside."""
    centers = (edges[:-1] + edges[1:]) / 2
    step = grid.step(lo, hi)
    outside = np.where(centers < lo, centers - lo, np.where(centers > hi, centers - hi, 0.0))
    inside = (centers >= lo) & (centers <= hi)
    return float((hist * outside**2).sum() + hist[inside].sum() * step**2 / 12)


METHODS: dict[str, Callable[[NDArray[np.int64], NDArray[np.float64], Grid], tuple[float, float]]] = {
    "minmax": _minmax, "percentile": _percentile, "mse": _mse}


def check_method(method: str) -> None:
    if method not in METHODS:
        raise OptionError(f"--calibration must be one of {', '.join(METHODS)}, not {method!r}")


@dataclass(frozen=True)
class Calibration:
    """How activation ranges are found: the inputs (loaded against the float model, given its path) and the method."""

    load: Callable[[Path], Inputs]
    method: str  # a key of METHODS
    min_cosine: float | None = -1.0  # the least output cosine on the inputs the integer nodes must keep (-1: any;
    # None: the container's recorded one, see export.export)
    integer_io: bool = False  # the model's inputs and outputs int8 too, where the target offers it (Target.integer_io)

    @property
    def floor(self) -> float:
        """The cosine checked on the calibration inputs: min_cosine less the share kept for other inputs."""
        assert self.min_cosine is not None, "resolved by export.export"
        return 1 - (1 - self.min_cosine) * CALIBRATION_SHARE if self.min_cosine > -1 else -1.0


def split_cosine(goal: float) -> tuple[float, float]:
    """A cosine goal for a full-integer export, as (what the container's weights keep against the float model,
    what the export's integer activations keep against the container). 1 - cosine adds for errors in
    unrelated directions, as rounding errors of weights and of activations are; errors that line up would
    add as angles and could end below the goal (bench_deploy checks the exported files against it)."""
    error = 1 - goal
    return 1 - error * WEIGHT_SHARE, 1 - error * (1 - WEIGHT_SHARE)


def feeds(inputs: Inputs) -> Iterator[dict[str, NDArray]]:
    """One sample at a time (the shapes a model takes are whatever its inputs say), constants beside it."""
    for i in range(inputs.count):
        out = {k: np.ascontiguousarray(v[i : i + 1]) for k, v in inputs.arrays.items()}
        out.update(inputs.constants)
        yield out


Batches = Callable[[], Iterator[list[NDArray]]]  # a fresh pass over the inputs: the named activations of each


def measure(batches: Batches, names: list[K], method: str, grid: Grid = UINT8) -> dict[K, Range]:
    """Each activation's range over two passes of `batches` (extremes, then histograms), as `method` chooses it
    for `grid` (its SQNR on it too)."""
    check_method(method)
    lows = dict.fromkeys(names, np.inf)
    highs = dict.fromkeys(names, -np.inf)
    for outs in batches():
        for n, x in zip(names, outs):
            if x.size:
                lows[n], highs[n] = min(lows[n], float(x.min())), max(highs[n], float(x.max()))
    edges = {n: np.linspace(min(lows[n], 0.0), max(highs[n], 0.0), BINS + 1) for n in names if np.isfinite(lows[n])}
    hists = {n: np.zeros(BINS, np.int64) for n in edges}
    if edges:  # every method reports each range's SQNR from the histograms
        for outs in batches():
            for n, x in zip(names, outs):
                if n in hists and x.size:
                    hists[n] += np.histogram(x, edges[n])[0]
    out = {}
    for n in names:
        if n not in edges or not np.isfinite(highs[n]):
            out[n] = Range(0.0, 0.0)
            continue
        lo, hi = METHODS[method](hists[n], edges[n], grid)
        lo, hi = min(lo, 0.0), max(hi, 0.0)
        out[n] = Range(lo, hi, _sqnr_db(hists[n], edges[n], lo, hi, grid))
    return out


def ranges(model: Path, names: list[str], inputs: Inputs, method: str) -> dict[str, Range]:
    """Each named float activation of an ONNX model, its range over the inputs as `method` chooses it.

    Raises:
        QpackError: the inputs do not fit the model, or onnxruntime cannot run it.
    """
    import onnx
    import onnxruntime as ort
    from onnx import helper

    from qpack.converter.runtime import open_runner

    check_method(method)
    check_shapes(inputs, open_runner(model).inputs)
    m = onnx.load(str(model))
    known = {o.name for o in m.graph.output}
    m.graph.output.extend(helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in names if n not in known)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.intra_op_num_threads = 2
    opts.log_severity_level = 4
    try:
        session = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise QpackError(f"{model}: onnxruntime cannot load it for calibration ({str(e).splitlines()[0]})") from e
    del m

    def batches() -> Iterator[list[NDArray]]:
        for f in feeds(inputs):
            yield [np.asarray(o) for o in session.run(names, f)]

    try:
        return measure(batches, names, method)
    except QpackError:
        raise
    except Exception as e:
        raise QpackError(f"onnxruntime failed while calibrating: {str(e).splitlines()[0]}") from e


@contextmanager
def restored_as(container: Path, restored: Path) -> Iterator[None]:
    """Errors about the float model restored from `container` into a scratch file name the container's model
    instead: the scratch path means nothing to the user, and is gone when they read it."""
    try:
        yield
    except QpackError as e:
        raise type(e)(str(e).replace(str(restored), f"{container} (its float model)")) from e


def tflite_ranges(model: Path, tensors: list[int], inputs: Inputs, method: str, grid: Grid = UINT8) -> dict[int, Range]:
    """Each numbered float tensor of a TFLite model's first subgraph, its range over the inputs as `method`
    chooses it for `grid` (LiteRT's reference kernels keep every intermediate tensor readable).

    Raises:
        QpackError: the inputs do not fit the model, or LiteRT cannot run it.
    """
    from ai_edge_litert.interpreter import Interpreter

    from qpack.converter.runtime import TfliteRunner

    check_method(method)
    check_shapes(inputs, TfliteRunner(model).inputs)
    try:
        with warnings.catch_warnings():  # that keeping every tensor costs memory: what calibration wants
            warnings.simplefilter("ignore")
            interp = Interpreter(model_path=str(model), num_threads=2, experimental_preserve_all_tensors=True)
        interp.allocate_tensors()
    except Exception as e:
        raise QpackError(f"{model}: LiteRT cannot load it for calibration ({_line(e)})") from e
    details = interp.get_input_details()

    def batches() -> Iterator[list[NDArray]]:
        for f in feeds(inputs):
            for d in details:
                interp.set_tensor(d["index"], np.asarray(f[d["name"]], d["dtype"]))
            interp.invoke()
            yield [interp.get_tensor(t) for t in tensors]

    try:
        return measure(batches, tensors, method, grid)
    except QpackError:
        raise
    except Exception as e:
        raise QpackError(f"LiteRT failed while calibrating: {_line(e)}") from e


def _line(e: Exception) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def least_cosine(pairs: Iterator[tuple[list[NDArray], list[NDArray]]]) -> float:
    """The least output cosine between two models over runs (one input each), as a cosine goal measures
    it (allocate.least_cosine): each output over all the runs together and over each single run, the
    lowest of them. A small output (a detector's scores beside its boxes) counts as much as a large one."""
    from qpack.converter.evaluate import output_fidelity

    runs = list(pairs)
    if not runs:
        return 1.0
    count = len(runs)

    def stacked(side: int, k: int) -> NDArray:
        parts = [np.asarray(r[side][k]) for r in runs]
        if all(p.shape == parts[0].shape and p.ndim and p.shape[0] == 1 for p in parts):
            return np.concatenate(parts)  # a row per run: worst_input_cosine reads each run's own
        return np.concatenate([p.ravel() for p in parts])

    outputs = range(min(len(runs[0][0]), len(runs[0][1])))
    rows = output_fidelity([stacked(0, k) for k in outputs], [stacked(1, k) for k in outputs], [str(k) for k in outputs], count)
    return min((min(r["cosine"], r.get("worst_input_cosine", 1.0)) for r in rows), default=1.0)


def by_harm(items: list[K], alone: Callable[[K], float]) -> list[K]:
    """`items` (integer candidates) ordered by the harm each does alone, the worst first: `alone(item)` is
    the outputs' cosine with that one integer and every other float. An estimate from the activations'
    own quantization error misses how much the layers after an activation amplify it; this measures it
    (one trial per candidate), so the fewest go back to float. Ties keep the items' order."""
    harm = {i: 1.0 - alone(item) for i, item in enumerate(items)}
    return [items[i] for i in sorted(range(len(items)), key=lambda i: -harm[i])]


def fewest_in_float(count: int, cosine: Callable[[int], float], calibration: Calibration, notes: list[str]) -> int:
    """How many of `count` integer candidates (in the order they go back to float) must stay float for the
    outputs to keep calibration.floor: a bisection over `cosine(k)`, the outputs' cosine with the first k in
    float. 0 when all-integer keeps it, or when even all in float would not (the weights' own error; noted)."""
    floor = calibration.floor
    if count == 0 or cosine(0) >= floor:
        return 0
    low, high = 0, count  # cosine(low) misses; find the fewest back in float that meet it
    if cosine(high) < floor:
        notes.append(f"with every node in float the outputs keep {cosine(high):.6f} on these inputs, below "
                     f"{floor:.6g} (--min-cosine {calibration.min_cosine:g} with a margin for other inputs): "
                     "the weights' own error; every integer node kept")
        return 0
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if cosine(mid) >= floor else (mid, high)
    return high


def _sqnr_db(hist: NDArray[np.int64], edges: NDArray[np.float64], lo: float, hi: float, grid: Grid) -> float:
    """The histogram's energy over its expected error quantized on `grid` over [lo, hi]."""
    err = _error(hist, edges, lo, hi, grid)
    signal = float((hist * ((edges[:-1] + edges[1:]) / 2) ** 2).sum())
    return 10 * math.log10(signal / err) if err > 0 and signal > 0 else math.inf
