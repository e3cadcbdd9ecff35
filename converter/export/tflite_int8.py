"""`--to tflite-int8`, `tflite-int8-fast` and `tflite-16x8`: full-integer TFLite, so LiteRT and TensorFlow Lite Micro
run integer kernels.

`--to tflite` keeps activations float (hybrid kernels quantize them on the fly). Here every op that
TFLite runs in int8 reads and writes int8 activations: asymmetric, one scale per tensor, calibrated
on inputs (export.calibrate, LiteRT running the container's float model); weights int8, symmetric,
per output channel (the container's codes where they are so, else its values requantized); biases
int32 at input scale x weight scale[c], zero point 0. The model's float inputs go through QUANTIZE
and its outputs come back through DEQUANTIZE, so callers feed and read what they did before.

TFLite's int8 kernels constrain the parameters (its quantization spec): pooling, reshaping, padding
and resizing ops write at their input's scale and zero point; CONCATENATION reads every input at its
output's (an input elsewhere is requantized by an int8 QUANTIZE); LOGISTIC and SOFTMAX write at
1/256, -128, TANH at 1/128, 0; PRELU's alpha is int8 per tensor. An op without an int8 kernel here
stays float between a DEQUANTIZE and a QUANTIZE (a float island), so every model exports. Float16
weights behind DEQUANTIZE ops become int8 weights the integer op reads directly; sparse ones behind
DENSIFY are spread out first (formats.tflite_model.densify). Only the first
subgraph is made integer. Where the outputs' cosine on the calibration inputs falls below the goal,
the ops that harm the outputs most go back to float (a bisection), as onnx-int8 does.

`tflite-int8-fast` is tflite-int8 with PRELU float (XNNPACK has no int8 PRELU; float between DEQUANTIZE and
QUANTIZE, the graph stays one XNNPACK partition): LiteRT's fastest, where TFLM wants tflite-int8.

`tflite-16x8` is the same with int16 activations (symmetric, zero point 0; LOGISTIC, SOFTMAX and TANH
write at 1/32768) and int64 biases beside the int8 weights: TFLite's 16x8 mode, for models whose outputs
int8 activations move too far. Its kernels are fewer (no PRELU or HARD_SWISH: those stay float), XNNPACK
runs none of them (LiteRT uses its reference kernels; TFLM its own), and an op type the installed LiteRT
will not prepare in int16 stays float, found by loading the file.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from numpy.typing import NDArray

from qpack.converter.datasets import Inputs
from qpack.converter.export.calibrate import (
    CHECK_INPUTS,
    UINT8,
    Calibration,
    Grid,
    Range,
    by_harm,
    feeds,
    fewest_in_float,
    least_cosine,
    restored_as,
    tflite_ranges,
)
from qpack.converter.export.intform import IntForm, int_form
from qpack.converter.export.tflite_int import litert_schema, load, op_names, serialize
from qpack.formats.atomic import atomic_output, scratch_folder
from qpack.formats.errors import QpackError, UnsupportedError
from qpack.formats.qpk import QpkReader, TensorEntry
from qpack.formats.tflite_model import Level, densify

_WEIGHTED = {"CONV_2D": 0, "DEPTHWISE_CONV_2D": 3, "FULLY_CONNECTED": 0}  # op -> the filter's output-channel axis
# ops whose integer kernels write at their input's parameters (they move, pick, interpolate or clamp values:
# TFLM's RELU kernels clamp the input's integers without requantizing, so a RELU writes at its input's too)
_SAME = {"MAX_POOL_2D", "AVERAGE_POOL_2D", "RESHAPE", "PAD", "SQUEEZE", "EXPAND_DIMS", "STRIDED_SLICE", "SLICE",
         "DEPTH_TO_SPACE", "SPACE_TO_DEPTH", "TRANSPOSE", "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR", "GATHER",
         "RELU", "RELU6", "RELU_N1_TO_1"}
# ops writing at their own calibrated range (they requantize); float constant inputs integer per tensor
_OWN = {"ADD", "SUB", "MUL", "LEAKY_RELU", "PRELU", "HARD_SWISH", "MEAN", "CONCATENATION"}
# activations an integer op applies itself (its fused_activation_function): XNNPACK has no int8 kernel of
# them alone, so an op each between two delegated ones would split LiteRT's graph there
_FUSED = {"RELU": "RELU", "RELU6": "RELU6", "RELU_N1_TO_1": "RELU_N1_TO_1"}
_FUSING = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "ADD", "SUB", "MUL"}


@dataclass(frozen=True)
class Activations:
    """What the integer ops read and write, and which ops TFLite has such kernels for: int8 (asymmetric,
    TFLite's full-integer default, what XNNPACK accelerates) or int16 (symmetric, zero point 0: TFLite's
    16x8 mode, int8 weights and int64 biases, for models whose outputs int8 moves too far; LiteRT runs it on
    its reference kernels, TFLM on its own)."""

    target: str  # the `--to` name
    name: str
    dtype: str  # the activations' TensorType
    bias: str  # the weighted ops' bias TensorType
    grid: Grid  # the integers a calibrated range is fitted to (symmetric: zero points 0)
    same: frozenset[str]
    fixed: dict[str, tuple[float, int]]  # op -> the output scale and zero point its kernel writes at
    own: frozenset[str]
    versions: dict[str, int]  # the op version announcing the type (TFLite's op_version rules); others 1
    from_float: int  # the version of a QUANTIZE from float into the type (`versions` has the requantizing one)
    micro: bool = False  # a TFLite Micro format: an op type TFLM (where installed) will not run in it stays float

    @property
    def low(self) -> int:
        return int(np.iinfo(_NUMPY[self.dtype]).min)

    @property
    def high(self) -> int:
        return int(np.iinfo(_NUMPY[self.dtype]).max)

    def params(self, r: Range) -> Params:
        if not self.grid.symmetric:  # calibrate's uint8 range, moved to int8
            return Params((float(np.float32(r.scale)),), (r.zero_point - 128,))
        peak = max(-r.low, r.high)
        return Params((float(np.float32(peak / self.high)) if peak > 0 else 1.0,), (0,))

    def runs(self, op: str) -> bool:
        return op in _WEIGHTED or op in self.same or op in self.fixed or op in self.own


INT8_ACTS = Activations(
    "tflite-int8", "int8", "INT8", "INT32", UINT8, frozenset(_SAME),
    {"LOGISTIC": (1 / 256, -128), "SOFTMAX": (1 / 256, -128), "TANH": (1 / 128, 0)},
    frozenset(_OWN),
    {"CONV_2D": 3, "DEPTHWISE_CONV_2D": 3, "FULLY_CONNECTED": 4, "ADD": 2, "SUB": 2, "MUL": 2, "MAX_POOL_2D": 2,
     "AVERAGE_POOL_2D": 2, "PAD": 2, "CONCATENATION": 2, "LOGISTIC": 2, "SOFTMAX": 2, "TANH": 2, "RELU": 2,
     "RELU6": 2, "LEAKY_RELU": 2, "MEAN": 2, "STRIDED_SLICE": 2, "SLICE": 2, "DEPTH_TO_SPACE": 2, "SPACE_TO_DEPTH": 2,
     "TRANSPOSE": 2, "RESIZE_BILINEAR": 2, "RESIZE_NEAREST_NEIGHBOR": 2, "GATHER": 2, "QUANTIZE": 2, "DEQUANTIZE": 2}, 1)
# as LiteRT's XNNPACK runs a full-integer graph fastest: it has no int8 PRELU, so an int8 one splits the graph
# and runs on the reference kernels (23 on the face landmark model: 6.1x float); float between DEQUANTIZE and
# QUANTIZE, which XNNPACK runs, the graph stays one partition
_XNNPACK_FLOAT = frozenset({"PRELU"})
INT8_FAST_ACTS = replace(INT8_ACTS, target="tflite-int8-fast", own=frozenset(_OWN - _XNNPACK_FLOAT))
# int16 kernels both LiteRT and TFLM run: no PRELU (TFLM takes an int8 alpha only), HARD_SWISH, RELU_N1_TO_1,
# DEPTH_TO_SPACE or SPACE_TO_DEPTH, nor GATHER and RESIZE_BILINEAR (TFLM); the fixed-range ones write at 1/32768
INT16_ACTS = Activations(
    "tflite-16x8", "int16", "INT16", "INT64", Grid(2 * 32767, symmetric=True),
    frozenset(_SAME - {"DEPTH_TO_SPACE", "SPACE_TO_DEPTH", "RELU_N1_TO_1", "GATHER", "RESIZE_BILINEAR"}),
    {"LOGISTIC": (1 / 32768, 0), "SOFTMAX": (1 / 32768, 0), "TANH": (1 / 32768, 0)},
    frozenset(_OWN - {"PRELU", "HARD_SWISH"}),
    {"CONV_2D": 4, "DEPTHWISE_CONV_2D": 5, "FULLY_CONNECTED": 7, "ADD": 3, "SUB": 5, "MUL": 4, "MAX_POOL_2D": 3,
     "AVERAGE_POOL_2D": 3, "PAD": 3, "CONCATENATION": 3, "LOGISTIC": 3, "SOFTMAX": 3, "TANH": 3, "RELU": 3, "RELU6": 3,
     "LEAKY_RELU": 2, "MEAN": 3, "STRIDED_SLICE": 2, "SLICE": 4, "TRANSPOSE": 5, "RESIZE_NEAREST_NEIGHBOR": 4,
     "QUANTIZE": 2, "DEQUANTIZE": 3}, 2, micro=True)
_CONVERSIONS = ("QUANTIZE", "DEQUANTIZE", "DENSIFY")  # ops with no effect but their output: dropped when nothing reads it
_NUMPY = {"FLOAT32": np.float32, "FLOAT16": np.float16, "INT32": np.int32, "INT64": np.int64, "INT8": np.int8, "UINT8": np.uint8,
          "INT16": np.int16, "BOOL": np.bool_}
TFLM_ARENA = 1 << 22  # the first arena TFLM is given; doubled until it fits, up to TFLM_ARENA_MAX
TFLM_ARENA_MAX = 1 << 29


@dataclass(frozen=True)
class Params:
    """An integer tensor's quantization: one scale and zero point, or per-channel scales on `axis` (zero points 0)."""

    scale: tuple[float, ...]
    zero_point: tuple[int, ...]
    axis: int = 0


class _Graph:
    """What the first subgraph holds: each tensor's type, producer and readers, and its value where constant."""

    def __init__(self, schema: ModuleType, model: Any) -> None:
        self.schema, self.model = schema, model
        self.g = model.subgraphs[0]
        self.ops = op_names(schema, model)
        types = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
        self.types = [types.get(t.type, "") for t in self.g.tensors]
        self.readers, self.producer = _links(self.g)
        self.consts: dict[int, NDArray] = {}
        self.spread: dict[int, Callable[[NDArray], NDArray]] = {}  # sparse constant -> what spreads values out as it is
        for t, tensor in enumerate(self.g.tensors):
            data = model.buffers[tensor.buffer].data if tensor.buffer < len(model.buffers) else None
            if data is not None and len(data) and self.types[t] in _NUMPY and not tensor.isVariable:
                shape = tuple(int(d) for d in tensor.shape) if tensor.shape is not None else ()
                value: NDArray = np.frombuffer(np.asarray(data, np.uint8).tobytes(), _NUMPY[self.types[t]])
                if tensor.sparsity is not None:
                    self.spread[t] = partial(_dense, tensor, shape=shape)
                    self.consts[t] = self.spread[t](value)
                else:
                    self.consts[t] = value.reshape(shape)
        for k, op in enumerate(self.g.operators):  # sparse and float16 weights read through DENSIFY and DEQUANTIZE
            ins, outs = _ints(op.inputs), _ints(op.outputs)
            if self.op(k) == "DENSIFY" and ins and ins[0] in self.consts:
                self.consts[outs[0]] = self.consts[ins[0]]
            if self.op(k) == "DEQUANTIZE" and ins and ins[0] in self.consts and self.types[ins[0]] == "FLOAT16":
                self.consts[outs[0]] = self.consts[ins[0]].astype(np.float32)

    def op(self, k: int) -> str:
        return self.ops[self.g.operators[k].opcodeIndex]

    def activation(self, t: int) -> bool:
        return t not in self.consts and self.types[t] == "FLOAT32"

    def activations(self) -> list[int]:
        """Every float activation tensor the first subgraph computes or takes (what calibration measures)."""
        seen = set(_ints(self.g.inputs)) | {t for op in self.g.operators for t in _ints(op.outputs)}
        return sorted(t for t in seen if self.activation(t))


def _dense(tensor: Any, values: NDArray, shape: tuple[int, ...]) -> NDArray:
    """A sparse constant spread out (what DENSIFY computes), so an int8 op reads it as a dense int8 filter."""
    sp = tensor.sparsity

    def vector(v: Any) -> NDArray[np.int64] | None:
        return None if v is None or v.values is None else np.asarray(v.values, np.int64)

    levels = [Level(m.format == 0, int(m.denseSize), vector(m.arraySegments), vector(m.arrayIndices))
              for m in sp.dimMetadata or []]
    name = (tensor.name or b"").decode("utf-8", "replace")
    return densify(values, shape, [int(d) for d in _ints(sp.traversalOrder)], [int(d) for d in _ints(sp.blockMap)],
                   levels, f"tensor '{name}'")


def _links(g: Any) -> tuple[dict[int, list[int]], dict[int, int]]:
    """A subgraph's tensors' readers (op indices) and producers."""
    readers: dict[int, list[int]] = {}
    producer: dict[int, int] = {}
    for k, op in enumerate(g.operators):
        for t in _ints(op.inputs):
            readers.setdefault(t, []).append(k)
        for t in _ints(op.outputs):
            producer[t] = k
    return readers, producer


def _ints(v: Any) -> list[int]:
    return [int(i) for i in v] if v is not None else []


def _why_not(graph: _Graph, k: int, acts: dict[int, Range], kind: Activations) -> str:
    """Why op k of the first subgraph cannot run in `kind`'s integers here ('' when it can)."""
    name = graph.op(k)
    op = graph.g.operators[k]
    ins, outs = _ints(op.inputs), _ints(op.outputs)
    if not kind.runs(name):
        return f"no {kind.name} kernel here"
    if any(not graph.activation(t) or t not in acts for t in outs):
        return "an output that is not a float activation"
    if name in _WEIGHTED:
        if len(ins) < 2 or not graph.activation(ins[0]) or ins[1] not in graph.consts or graph.consts[ins[1]].dtype != np.float32:
            return "its filter is not a float constant"
        if len(ins) > 2 and ins[2] >= 0 and (ins[2] not in graph.consts or graph.consts[ins[2]].dtype != np.float32):
            return "its bias is not a float constant"
        return ""
    act_in = [t for t in ins if graph.activation(t)]
    if not act_in or act_in[0] != ins[0]:
        return "its first input is not a float activation"
    if name in kind.same and len(act_in) > 1:
        return "more than one activation input"
    floats = [t for t in ins if t in graph.consts and graph.consts[t].dtype == np.float32]
    if floats and name not in kind.own:
        return "a float constant input"
    if any(t >= 0 and not graph.activation(t) and t not in graph.consts for t in ins):
        return "an input of another type"
    return ""


def candidates(graph: _Graph, acts: dict[int, Range], kind: Activations = INT8_ACTS,
               refused: frozenset[str] = frozenset()) -> tuple[list[int], Counter[str]]:
    """The ops that may run in `kind`'s integers (in graph order), and the others' types (DEQUANTIZE of
    constants and ops with no float activation aside); `refused`: op types the runtime would not prepare in
    them (export_tflite_int8 finds them)."""
    out, floats = [], Counter[str]()
    for k in range(len(graph.g.operators)):
        op = graph.g.operators[k]
        outs = _ints(op.outputs)
        if outs and all(t in graph.consts for t in outs):
            continue  # a float16 weight's DEQUANTIZE: the weight is read directly, or stays for float readers
        if not any(graph.activation(t) for t in _ints(op.inputs) + outs):
            continue  # no float activation in or out: an op of a model that came integer, nothing to make integer
        if graph.op(k) in refused or _why_not(graph, k, acts, kind):
            floats[graph.op(k)] += 1
        else:
            out.append(k)
    return out, floats


class _Builder:
    """One trial: the first subgraph rebuilt with the ops in `chosen` in int8, the rest float."""

    def __init__(self, reader: QpkReader, data: bytes, acts: dict[int, Range], chosen: set[int],
                 kind: Activations = INT8_ACTS) -> None:
        self.schema = litert_schema()
        self.kind = kind
        self.itype = getattr(self.schema.TensorType, kind.dtype)
        self.model = load(self.schema, data, str(reader.path))
        self.graph = _Graph(self.schema, self.model)
        self.reader, self.acts, self.chosen = reader, acts, chosen
        self.entries = {int(e.key.split(":", 1)[1]): e for e in reader.entries if e.key.startswith("buffer:")}
        self.int_of: dict[int, int] = {}  # float tensor -> its int8 tensor
        self.params: dict[int, Params] = {}  # int8 tensor -> its parameters
        self.floats: set[int] = set(_ints(self.graph.g.inputs)) | set(self.graph.consts)
        self.new_ops: list[Any] = []
        self.requantized: list[str] = []  # weights the container holds in no int8 symmetric per-channel form
        self.half = 0  # float16 weights left behind DEQUANTIZE for float ops
        self.fused: set[int] = set()  # activation ops taken into the op before them
        self.ran: Counter[str] = Counter()
        self.fell: Counter[str] = Counter()  # ops chosen that could not be (an int32 bias overflows)

    @property
    def _suffix(self) -> bytes:
        return b"_" + self.kind.name.encode()

    # -- tensors, buffers, opcodes ------------------------------------------------------------------
    def _tensor(self, like: Any, ttype: int, p: Params | None, data: NDArray | None = None, suffix: bytes = b"_int8",
                shape: list[int] | None = None) -> int:
        s = self.schema
        t = s.TensorT()
        t.shape = list(like.shape) if shape is None else shape
        t.shapeSignature = like.shapeSignature if shape is None else None
        t.type, t.name = ttype, (like.name or b"") + suffix
        if data is not None:
            buf = s.BufferT()
            buf.data = np.ascontiguousarray(data).view(np.uint8).reshape(-1)
            self.model.buffers.append(buf)
            t.buffer = len(self.model.buffers) - 1
        else:
            t.buffer = 0
        if p is not None:
            qp = s.QuantizationParametersT()
            qp.scale, qp.zeroPoint, qp.quantizedDimension = list(p.scale), list(p.zero_point), p.axis
            t.quantization = qp
        self.graph.g.tensors.append(t)
        n = len(self.graph.g.tensors) - 1
        if p is not None:
            self.params[n] = p
        return n

    def _opcode(self, name: str, version: int) -> int:
        ops = self.graph.ops
        if name not in ops:
            code = self.schema.OperatorCodeT()
            code.builtinCode = code.deprecatedBuiltinCode = getattr(self.schema.BuiltinOperator, name)
            code.version = 1
            self.model.operatorCodes.append(code)
            ops.append(name)
        i = ops.index(name)
        self.model.operatorCodes[i].version = max(self.model.operatorCodes[i].version, version)
        return i

    def _emit(self, name: str, ins: list[int], outs: list[int], version: int = 1) -> None:
        op = self.schema.OperatorT()
        op.opcodeIndex, op.inputs, op.outputs = self._opcode(name, version), ins, outs
        self.new_ops.append(op)

    # -- activations between the domains ---------------------------------------------------------------
    def int8(self, t: int) -> int:
        """The integer tensor of activation t: made by a QUANTIZE at its calibrated range where only the float one exists."""
        if t not in self.int_of:
            q = self._tensor(self.graph.g.tensors[t], self.itype, self.kind.params(self.acts[t]), suffix=self._suffix)
            self._emit("QUANTIZE", [t], [q], self.kind.from_float)
            self.int_of[t] = q
        return self.int_of[t]

    def at(self, q: int, p: Params) -> int:
        """Int8 tensor q at parameters p: itself, or an int8 QUANTIZE of it (a requantization)."""
        if self.params[q] == p:
            return q
        out = self._tensor(self.graph.g.tensors[q], self.itype, p, suffix=b"_requantized")
        self._emit("QUANTIZE", [q], [out], self.kind.versions["QUANTIZE"])
        return out

    def float(self, t: int) -> int:
        if t not in self.floats:
            self.graph.g.tensors[t].type = self.schema.TensorType.FLOAT32
            self._emit("DEQUANTIZE", [self.int_of[t]], [t], self.kind.versions["DEQUANTIZE"])
            self.floats.add(t)
        return t

    # -- ops -----------------------------------------------------------------------------------------------
    def run(self) -> bytes:
        g = self.graph.g
        for k, op in enumerate(g.operators):
            if k in self.fused or (k in self.chosen and self._integer(k, op)):
                self.ran[self.graph.op(k)] += 1
                continue
            op.inputs = [self._float_input(t) for t in _ints(op.inputs)]
            self.new_ops.append(op)
            self.floats.update(_ints(op.outputs))
        for t in _ints(g.outputs):
            self.float(t)
        g.operators = self.new_ops
        _prune(self.graph)
        self._no_float16()
        self.half = sum(self.graph.ops[op.opcodeIndex] == "DEQUANTIZE" and g.tensors[op.inputs[0]].type == self.schema.TensorType.FLOAT16
                        for op in g.operators)
        _compact(self.model)
        return serialize(self.schema, self.model)

    def _no_float16(self) -> None:
        """The float16 constants left behind DEQUANTIZE for float ops, in a form TFLM's DEQUANTIZE takes (it
        reads integers only, at one scale: per-channel ones would be read at the first channel's): a stored
        weight with one scale as the container's int8 codes (its exact values, in fewer bytes), a constant
        the container does not hold (a bias) as float32 that its readers take directly. A stored weight with
        per-channel scales stays float16 (as float32 it would double; the note says TFLM cannot run the
        file). XNNPACK folds all of them at load."""
        g, tt = self.graph.g, self.schema.TensorType
        keep = []
        for op in g.operators:
            ins, outs = _ints(op.inputs), _ints(op.outputs)
            if (self.graph.ops[op.opcodeIndex] != "DEQUANTIZE" or len(ins) != 1 or len(outs) != 1
                    or g.tensors[ins[0]].type != tt.FLOAT16 or ins[0] not in self.graph.consts or ins[0] in self.graph.spread):
                keep.append(op)
                continue
            t, value = ins[0], self.graph.consts[ins[0]]
            e = self.entries.get(int(g.tensors[t].buffer))
            if e is None:  # a constant the container does not hold (a bias): float32, read directly
                out = g.tensors[outs[0]]  # the readers' tensor becomes the constant itself
                buf = self.schema.BufferT()
                buf.data = np.ascontiguousarray(value.astype("<f4")).view(np.uint8).reshape(-1)
                self.model.buffers.append(buf)
                out.buffer, out.type = len(self.model.buffers) - 1, tt.FLOAT32
                continue
            sym = self._symmetric(e) if math.prod(e.shape) == value.size else None
            if sym is not None and sym.scale.size == 1:  # TFLM's DEQUANTIZE reads one scale, the first, for all
                op.inputs = [self._tensor(g.tensors[t], tt.INT8, Params((float(sym.scale[0]),), (0,), 0),
                                          sym.q.reshape(value.shape).astype(np.int8), shape=list(value.shape))]
                op.opcodeIndex = self._opcode("DEQUANTIZE", 2)
            keep.append(op)  # (per channel, or no such form: it stays float16, as float32 it would double)
        g.operators = keep

    def _symmetric(self, e: TensorEntry) -> IntForm | None:
        """The container's codes of entry e as int8 symmetric integers (centred), where it holds such a form."""
        if e.grouping.block is not None:
            return None
        try:
            sym = int_form(self.reader, e).centered()
        except UnsupportedError:
            return None
        return sym if sym.fits(-127, 127) else None

    def _float_input(self, t: int) -> int:
        """What a float op reads for t: its float tensor, through a DEQUANTIZE where only the int8 one exists.
        (Float16 weights stay behind their DEQUANTIZE; _no_float16 then gives TFLM what it reads.)"""
        return self.float(t) if t >= 0 and t in self.int_of and t not in self.floats else t

    def _fusion(self, k: int, op: Any) -> int | None:
        """The chosen RELU/RELU6/RELU_N1_TO_1 that alone reads op k's output, when k can apply it itself."""
        outs = _ints(op.outputs)
        readers = self.graph.readers.get(outs[0], [])
        opts = op.builtinOptions
        if (self.graph.op(k) not in _FUSING or opts is None or getattr(opts, "fusedActivationFunction", None) != 0
                or len(readers) != 1 or readers[0] not in self.chosen or self.graph.op(readers[0]) not in _FUSED
                or outs[0] in _ints(self.graph.g.outputs)):
            return None
        return readers[0]

    def _integer(self, k: int, op: Any) -> bool:
        name = self.graph.op(k)
        ins, outs = _ints(op.inputs), _ints(op.outputs)
        if name in _WEIGHTED:
            made = self._weighted(name, ins, outs[0])
            if made is None:
                self.fell[name] += 1
                return False
            op.inputs = made
        else:
            first = self.int8(ins[0])
            if name == "CONCATENATION":
                p = self.kind.params(self.acts[outs[0]])
                op.inputs = [self.at(self.int8(t), p) if self.graph.activation(t) else self._const(t, p) for t in ins]
            else:
                op.inputs = [first] + [self._input(t) for t in ins[1:]]
        j = self._fusion(k, op)
        if j is not None:  # the op writes the activation's output at its range, clamped as the activation does
            op.builtinOptions.fusedActivationFunction = getattr(self.schema.ActivationFunctionType, _FUSED[self.graph.op(j)])
            self.fused.add(j)
            outs = _ints(self.graph.g.operators[j].outputs)
        if name in ("ADD", "SUB") and self.kind.dtype == "INT16":  # any scales, not powers of two only
            if op.builtinOptions is None:
                kind = "AddOptions" if name == "ADD" else "SubOptions"
                op.builtinOptionsType, op.builtinOptions = getattr(self.schema.BuiltinOptions, kind), getattr(self.schema, kind + "T")()
            op.builtinOptions.potScaleInt16 = False
        out_p = self._out_params(name, op.inputs[0], outs[0])
        op.outputs = [self._tensor(self.graph.g.tensors[outs[0]], self.itype, out_p, suffix=self._suffix)]
        self.int_of[outs[0]] = op.outputs[0]
        op.opcodeIndex = self._opcode(name, self.kind.versions.get(name, 1))
        self.new_ops.append(op)
        return True

    def _out_params(self, name: str, first_in: int, out: int) -> Params:
        if name in self.kind.same:
            return self.params[first_in]
        if name in self.kind.fixed:
            scale, zp = self.kind.fixed[name]
            return Params((scale,), (zp,))
        return self.kind.params(self.acts[out])

    def _input(self, t: int) -> int:
        """A second input of an integer op: an activation's integer tensor, a float constant integer per tensor,
        others as they are."""
        if t < 0:
            return t
        if self.graph.activation(t):
            return self.int8(t)
        c = self.graph.consts.get(t)
        if c is not None and c.dtype == np.float32:
            lo, hi = min(float(c.min()), 0.0), max(float(c.max()), 0.0)
            return self._const(t, self.kind.params(Range(lo, hi)))
        return t

    def _const(self, t: int, p: Params) -> int:
        c = self.graph.consts[t].astype(np.float64)
        k = self.kind
        q: NDArray = np.clip(np.round(c / p.scale[0]) + p.zero_point[0], k.low, k.high).astype(_NUMPY[k.dtype])
        return self._tensor(self.graph.g.tensors[t], self.itype, p, q, suffix=self._suffix, shape=list(c.shape))

    def _weighted(self, name: str, ins: list[int], out: int) -> list[int] | None:
        """The int8 filter and integer bias (int32, int64 beside int16 activations) of a CONV_2D, DEPTHWISE_CONV_2D
        or FULLY_CONNECTED; None when a bias overflows its type."""
        axis = _WEIGHTED[name] % self.graph.consts[ins[1]].ndim
        q, scales = self._filter(ins[1], axis)
        x = self.int8(ins[0])
        in_scale = np.float32(self.params[x].scale[0])
        bias_scale = (in_scale * scales.astype(np.float32)).astype(np.float32)  # as the kernels multiply them, in float32
        made = [x, self._tensor(self.graph.g.tensors[ins[1]], self.schema.TensorType.INT8,
                                Params(tuple(map(float, scales)), (0,) * len(scales), axis), q.astype(np.int8),
                                shape=list(q.shape))]
        if len(ins) > 2 and ins[2] >= 0:
            b = self.graph.consts[ins[2]].astype(np.float64).reshape(-1)
            qb = np.round(b / bias_scale.astype(np.float64))
            bt = self.kind.bias
            if not np.all(np.abs(qb) <= np.iinfo(_NUMPY[bt]).max):
                return None
            made.append(self._tensor(self.graph.g.tensors[ins[2]], getattr(self.schema.TensorType, bt),
                                     Params(tuple(map(float, bias_scale)), (0,) * b.size, 0),
                                     qb.astype(np.dtype(_NUMPY[bt]).newbyteorder("<")), suffix=b"_" + bt.lower().encode(),
                                     shape=[b.size]))
        return made

    def _filter(self, t: int, axis: int) -> tuple[NDArray[np.int32], NDArray[np.float32]]:
        """The filter's int8 symmetric integers and per-channel scales: the container's codes when they are
        such a form (a per-tensor scale repeated), else its values requantized per channel."""
        value = self.graph.consts[t]
        source = self._source(t)
        e = self.entries.get(int(self.graph.g.tensors[source].buffer))
        spread = self.graph.spread.get(source)  # a sparse weight: the container holds its nonzero values
        if e is not None and e.grouping.axis in (None, axis) and (
                math.prod(e.shape) == value.size or (spread is not None and e.grouping.axis is None)):
            sym = self._symmetric(e)
            if sym is not None:
                scales = np.broadcast_to(sym.scale, (value.shape[axis],)) if sym.scale.size == 1 else sym.scale
                q = spread(sym.q.reshape(-1)) if spread is not None else sym.q
                return q.reshape(value.shape), np.asarray(scales, np.float32)
        if e is not None:
            self.requantized.append(e.name)
        peak = np.abs(np.moveaxis(value, axis, 0).reshape(value.shape[axis], -1)).max(axis=1)
        scales = np.where(peak > 0, peak / 127, 1.0).astype(np.float32)
        shape = [1] * value.ndim
        shape[axis] = -1
        q = np.clip(np.round(value / scales.reshape(shape)), -127, 127).astype(np.int32)
        return q, scales

    def _source(self, t: int) -> int:
        """The tensor holding constant t's stored value: itself, or the weight a DEQUANTIZE (float16) or
        DENSIFY (sparse) it comes out of reads."""
        for _ in range(3):  # DENSIFY then DEQUANTIZE at most (a bound, where a hostile graph loops)
            if (k := self.graph.producer.get(t)) is None:
                break
            t = _ints(self.graph.g.operators[k].inputs)[0]
        return t


def _prune(graph: _Graph) -> None:
    """Drop conversion ops whose outputs nothing reads (the float16 weights' DEQUANTIZE once int8 ops read int8 ones)."""
    g = graph.g
    while True:
        read = set(_ints(g.outputs)) | {t for op in g.operators for t in _ints(op.inputs)}
        keep = [op for op in g.operators if graph.ops[op.opcodeIndex] not in _CONVERSIONS or set(_ints(op.outputs)) & read]
        if len(keep) == len(g.operators):
            return
        g.operators = keep


def _compact(model: Any) -> None:
    """Drop the first subgraph's tensors no op, input or output names and every buffer no tensor holds,
    renumbering what refers to them (ops, signatures, metadata)."""
    g = model.subgraphs[0]
    used = sorted(set(_ints(g.inputs)) | set(_ints(g.outputs)) | {t for op in g.operators for t in _ints(op.inputs) + _ints(op.outputs)}
                  - {-1})
    new = {t: i for i, t in enumerate(used)}
    g.tensors = [g.tensors[t] for t in used]
    g.inputs, g.outputs = [new[t] for t in _ints(g.inputs)], [new[t] for t in _ints(g.outputs)]
    for op in g.operators:
        op.inputs = [new[t] if t >= 0 else t for t in _ints(op.inputs)]
        op.outputs = [new[t] for t in _ints(op.outputs)]
        if op.intermediates is not None:
            op.intermediates = [new[t] for t in _ints(op.intermediates) if t in new]
    for sig in model.signatureDefs or []:
        if sig.subgraphIndex == 0:
            for io in (sig.inputs or []) + (sig.outputs or []):
                io.tensorIndex = new[io.tensorIndex]
    held = {0} | {t.buffer for s in model.subgraphs for t in s.tensors or []} | {m.buffer for m in model.metadata or []}
    keep = sorted(b for b in held if b < len(model.buffers))
    remap = {b: i for i, b in enumerate(keep)}
    model.buffers = [model.buffers[b] for b in keep]
    for s in model.subgraphs:
        for t in s.tensors or []:
            t.buffer = remap[t.buffer]
    for m in model.metadata or []:
        m.buffer = remap[m.buffer]


def export_tflite_int8(reader: QpkReader, out: Path, notes: list[str], calibration: Calibration | None = None) -> list[Path]:
    """`--to tflite-int8`: int8 activations (export_integer)."""
    return export_integer(reader, out, notes, calibration, INT8_ACTS)


def export_tflite_int8_fast(reader: QpkReader, out: Path, notes: list[str], calibration: Calibration | None = None) -> list[Path]:
    """`--to tflite-int8-fast`: int8 activations, the ops XNNPACK has no int8 kernel for float (export_integer)."""
    return export_integer(reader, out, notes, calibration, INT8_FAST_ACTS)


def export_tflite_16x8(reader: QpkReader, out: Path, notes: list[str], calibration: Calibration | None = None) -> list[Path]:
    """`--to tflite-16x8`: int16 activations beside int8 weights (export_integer)."""
    return export_integer(reader, out, notes, calibration, INT16_ACTS)


def export_integer(reader: QpkReader, out: Path, notes: list[str], calibration: Calibration | None,
                   kind: Activations) -> list[Path]:
    """Write the container's TFLite model with its ops in `kind`'s integers where TFLite has such kernels,
    activations calibrated on inputs; where the outputs then fall below `calibration.min_cosine` on them, the
    ops that harm them most (each measured alone integer, calibrate.by_harm) go back to float (a bisection
    over how many). An op type the installed runtimes will not run in those integers stays float (_refused)."""
    from qpack.converter.convert import restore

    if calibration is None:
        raise UnsupportedError(f"--to {kind.target} calibrates activation ranges: give --inputs, --images or --dataset")
    schema = litert_schema()
    with scratch_folder("qpack-calibrate-") as tmp, restored_as(reader.path, Path(tmp) / "float.tflite"):
        float_model = Path(tmp) / "float.tflite"
        restore(reader.path, float_model)
        data = float_model.read_bytes()
        graph = _Graph(schema, load(schema, data, str(reader.path)))
        inputs = calibration.load(float_model)
        acts = tflite_ranges(float_model, graph.activations(), inputs, calibration.method, kind.grid)
        trial = Path(tmp) / "trial.tflite"
        refused = _refused(reader, data, acts, graph, kind, trial, inputs)
        chosen, floats = candidates(graph, acts, kind, refused)

        def harm(k: int) -> float:  # the worse-quantized activation around the op, in dB
            op = graph.g.operators[k]
            return min((acts[t].sqnr_db for t in _ints(op.inputs) + _ints(op.outputs) if t in acts), default=np.inf)

        reference = _outputs(float_model, inputs)

        def fidelity(kept: set[int]) -> float:
            trial.write_bytes(_Builder(reader, data, acts, kept, kind).run())
            return least_cosine(zip(reference, _outputs(trial, inputs)))

        order = sorted(chosen, key=harm)  # the first go back to float first
        tried: dict[int, float] = {0: fidelity(set(order))}
        if tried[0] < calibration.floor:  # measured: each op alone integer
            order = by_harm(order, lambda k: fidelity({k}))

        def cosine(k: int) -> float:
            if k not in tried:
                tried[k] = fidelity(set(order[k:]))
            return tried[k]

        back = fewest_in_float(len(chosen), cosine, calibration, notes)
        built = _Builder(reader, data, acts, set(order[back:]), kind)
        written = built.run()
        if calibration.integer_io:
            written = _integer_io(schema, written, str(reader.path), notes)
        with atomic_output(out) as f:
            f.write(written)
        notes.insert(0, _summary(built, floats, calibration.method, inputs.count, back)
                     + f"; least output cosine {cosine(back):.6f} on the calibration inputs, against the container's float values")
        if refused:
            notes.append(f"{'LiteRT or TFLM' if kind.micro else 'LiteRT'} runs no {kind.name} {', '.join(sorted(refused))} here: "
                         "float there")
        if built.requantized:
            notes.append(f"{len(built.requantized)} weight{'s' if len(built.requantized) > 1 else ''} of integer ops requantized "
                         "to int8 symmetric per channel (the container holds no such form of them)")
        if built.half:  # TFLM's DEQUANTIZE reads integers only
            notes.append(f"TFLM cannot run it: {built.half} float16 weight{'s' if built.half > 1 else ''} of float ops go through "
                         "DEQUANTIZE, which TFLM takes from integers only (--min-cosine -1 keeps every op it can integer; "
                         "a container with one scale per tensor gives them as int8)")
        else:
            notes.append(micro_note(out, inputs))
    return [out]


_FAILED = (re.compile(r"\((\w+)\) failed to (?:prepare|invoke)"),  # LiteRT: "Node number 5 (CONV_2D) failed to prepare."
           re.compile(r"Node (\w+) \(number \d+\) failed to"))  # TFLM: "Node RESIZE_BILINEAR (number 91) failed to invoke"


def _failed_op(said: str) -> str | None:
    """The op type a runtime's failure message names, if any."""
    return next((m for f in _FAILED for m in f.findall(said)), None)


def _litert_failure(model: Path, inputs: Inputs) -> str:
    """All LiteRT said when it could not load and run `model` once ('' when it did: some kernels refuse a
    type only when they run)."""
    from qpack.converter.runtime import TfliteRunner

    with _captured() as said:
        try:
            TfliteRunner(model, threads=1).run(next(feeds(inputs)))
            return ""
        except QpackError as e:
            error = str(e.__cause__ or e)
    return error + "".join(said)


def _micro_failure(model: Path, inputs: Inputs) -> str:
    """All TFLM said when it could not run `model` ('' when it did, or is not installed)."""
    try:
        micro_arena(model, inputs)
    except ImportError:
        pass
    except QpackError as e:
        return e.said if isinstance(e, MicroFailure) else str(e)
    return ""


def _refused(reader: QpkReader, data: bytes, acts: dict[int, Range], graph: _Graph, kind: Activations, trial: Path,
             inputs: Inputs) -> frozenset[str]:
    """The op types the installed LiteRT will not run with `kind`'s integers (its kernels differ by
    version), and for a TFLM format those TFLM will not run: each whole-model trial that fails names one,
    which then stays float, until one runs. LiteRT must run the file; what TFLM cannot run otherwise, the
    export's note says."""
    refused: set[str] = set()
    for _ in range(len(set(graph.ops)) + 1):  # a bound: each round refuses a new op type or ends
        chosen, _ = candidates(graph, acts, kind, frozenset(refused))
        trial.write_bytes(_Builder(reader, data, acts, set(chosen), kind).run())
        if said := _litert_failure(trial, inputs):
            op = _failed_op(said)
            if op is None or op in refused:
                raise QpackError(f"LiteRT cannot load the {kind.name} model: {said.splitlines()[0]}")
        else:
            op = _failed_op(_micro_failure(trial, inputs)) if kind.micro else None
            if op is None or op in refused or op not in {graph.op(k) for k in chosen}:
                break
        refused.add(op)
    return frozenset(refused)


def _integer_io(schema: ModuleType, data: bytes, where: str, notes: list[str]) -> bytes:
    """The model with its QUANTIZE after each float input and its DEQUANTIZE before each float output
    removed, so callers feed and read integers (microcontroller code, which has no float to spare). An input a
    float op also reads, or an output a float op writes, stays float; the notes say which, and give each
    integer one's scale and zero point."""
    model = load(schema, data, where)
    g = model.subgraphs[0]
    ops = op_names(schema, model)
    readers, producer = _links(g)
    drop: set[int] = set()
    moved: dict[int, int] = {}  # float input or output -> the integer tensor that takes its place
    ends = set(_ints(g.inputs)) | set(_ints(g.outputs))
    integer = {schema.TensorType.INT8, schema.TensorType.INT16}

    def move(t: int, k: int, q: int) -> None:
        """t's place to integer tensor q, dropping op k, unless q already is an input or output, or takes one's place."""
        if g.tensors[q].type in integer and q not in ends and q not in moved.values():
            drop.add(k)
            moved[t] = q

    for t in _ints(g.inputs):
        ks = readers.get(t, [])
        if len(ks) == 1 and ops[g.operators[ks[0]].opcodeIndex] == "QUANTIZE" and t not in _ints(g.outputs):
            move(t, ks[0], _ints(g.operators[ks[0]].outputs)[0])
    for t in _ints(g.outputs):
        made = producer.get(t)
        if made is not None and ops[g.operators[made].opcodeIndex] == "DEQUANTIZE" and not readers.get(t):
            move(t, made, _ints(g.operators[made].inputs)[0])
    g.operators = [op for k, op in enumerate(g.operators) if k not in drop]
    for t, q in moved.items():  # the integer tensor takes the name callers know (the float one goes)
        g.tensors[q].name = g.tensors[t].name
    g.inputs = [moved.get(t, t) for t in _ints(g.inputs)]
    g.outputs = [moved.get(t, t) for t in _ints(g.outputs)]
    for sig in model.signatureDefs or []:
        if sig.subgraphIndex == 0:
            for io in (sig.inputs or []) + (sig.outputs or []):
                io.tensorIndex = moved.get(io.tensorIndex, io.tensorIndex)
    _compact(model)

    types = {v: k.lower() for k, v in vars(schema.TensorType).items() if not k.startswith("_")}

    def described(t: Any) -> str:
        name, q = (t.name or b"").decode("utf-8", "replace"), t.quantization
        if t.type not in integer or q is None or q.scale is None or not len(q.scale):
            return f"{name} {types.get(t.type, 'of type ' + str(t.type))}"
        return f"{name} {types[t.type]} at scale {float(q.scale[0]):.9g}, zero point {int(q.zeroPoint[0])}"

    g = model.subgraphs[0]
    notes.append("inputs: " + "; ".join(described(g.tensors[t]) for t in _ints(g.inputs))
                 + "; outputs: " + "; ".join(described(g.tensors[t]) for t in _ints(g.outputs))
                 + " (real value = scale x (integer - zero point))")
    return serialize(schema, model)


def _summary(built: _Builder, floats: Counter[str], method: str, count: int, back: int) -> str:
    stay = floats + built.fell
    ran = ", ".join(f"{k} {v}" for k, v in sorted(built.ran.items())) or ("none" if stay else "none, no op computes in float")
    out = f"{built.kind.name} ops ({method} ranges on {count} inputs): {ran}"
    if back:
        out += f"; {back} kept in float for the outputs' cosine (the most harmful, each measured alone)"
    if stay:
        out += "; float: " + ", ".join(f"{k} {v}" for k, v in sorted(stay.items()))
    return out


def _outputs(model: Path, inputs: Inputs) -> list[list[NDArray]]:
    """LiteRT's outputs (default delegates, as a deployment runs it) on the first CHECK_INPUTS inputs."""
    from qpack.converter.runtime import TfliteRunner

    r = TfliteRunner(model)
    return [r.run(f) for f, _ in zip(feeds(inputs), range(CHECK_INPUTS))]


@contextlib.contextmanager
def _captured() -> Iterator[list[str]]:
    """What native code prints to stdout and stderr meanwhile (TFLM reports there), kept off the console."""
    import sys

    got: list[str] = []
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile() as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        try:
            yield got
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            f.seek(0)
            got.append(f.read().decode(errors="replace"))


def as_input(x: NDArray, detail: dict[str, Any]) -> NDArray:
    """A float value as the model input `detail` (LiteRT's input details) takes it: quantized at its scale and
    zero point where the input is integer (--integer-io), else as it is."""
    dtype = np.dtype(detail["dtype"])
    scale, zero = detail["quantization"]
    if np.issubdtype(dtype, np.integer) and np.issubdtype(np.asarray(x).dtype, np.floating) and scale > 0:
        info, v = np.iinfo(dtype), np.asarray(x, np.float64) / scale
        rounded = np.sign(v) * np.floor(np.abs(v) + 0.5)  # halves away from zero, as TFLite's QUANTIZE
        return np.clip(rounded + zero, info.min, info.max).astype(dtype)
    return np.asarray(x)


class MicroFailure(QpackError):
    """TFLM could not run a model: the line that says why, and all it printed (`said`: which op failed)."""

    def __init__(self, why: str, said: str) -> None:
        super().__init__(why)
        self.said = said


def micro_arena(model: Path, inputs: Inputs) -> int:
    """The arena bytes TensorFlow Lite Micro uses to run `model` once on the first input.

    Raises:
        ImportError: tflite-micro is not installed; QpackError (MicroFailure where TFLM said why): TFLM cannot run the model.
    """
    from tflite_micro.python.tflite_micro import runtime

    from qpack.converter.runtime import TfliteRunner

    size, last = TFLM_ARENA, ""
    feed = next(feeds(inputs))
    values = [as_input(feed[d["name"]], d) for d in TfliteRunner(model).interp.get_input_details()]  # in LiteRT's order, as TFLM's
    while size <= TFLM_ARENA_MAX:
        with _captured() as said:
            try:
                interp = runtime.Interpreter.from_file(str(model), arena_size=size)
                for i, v in enumerate(values):
                    d = interp.get_input_details(i)
                    interp.set_input(np.asarray(v, d["dtype"]).reshape(d["shape"]), i)
                interp.invoke()
                interp.print_allocations()
                ok = True
            except Exception as e:
                ok, last = False, str(e).splitlines()[0] if str(e) else type(e).__name__
        text = "".join(said)
        if ok:
            m = re.search(r"Arena allocation total (\d+) bytes", text)
            if m is None:
                raise QpackError("TFLM ran the model but did not report its arena")
            return int(m.group(1))
        if "arena" not in (last + text).lower() or "size" not in (last + text).lower():
            why = next((ln for ln in text.splitlines() if "not" in ln.lower() or "fail" in ln.lower()), last)
            raise MicroFailure(why.strip() or last, text + "\n" + last)
        size *= 2
    raise QpackError(f"more than {TFLM_ARENA_MAX} bytes of arena ({last})")


def micro_note(model: Path, inputs: Inputs) -> str:
    """One line on running the export in TensorFlow Lite Micro: the arena it needs, or why it cannot run."""
    try:
        return f"TFLM runs it in a {micro_arena(model, inputs):,}-byte arena"
    except ImportError:
        return "TFLM's arena not measured (pip install tflite-micro)"
    except QpackError as e:
        return f"TFLM cannot run it: {e}"
