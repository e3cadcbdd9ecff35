"""ONNX adapter: every float weight wherever it lives, its consumer and channel axis; rebuild.

Opening a model parses its structure only (see `formats.onnx_wire`); each weight is read from the
model or external-data file when asked for, and a model is restored one tensor at a time.
"""

from __future__ import annotations

import io
import math
import mmap
import os
import sys
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import NamedTuple

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from numpy.typing import NDArray
from onnx import GraphProto, ModelProto, TensorProto, numpy_helper

from qpack.formats import onnx_layout, onnx_wire
from qpack.formats.atomic import atomic_output
from qpack.formats.errors import FormatError, QpackError, UnsupportedError, shown
from qpack.formats.files import open_raw
from qpack.formats.model import HEAD_STEPS, Head, Role, Weight
from qpack.formats.onnx_keys import DEFAULT_DOMAINS, split_key, subgraphs, walk_sites
from qpack.formats.onnx_wire import TENSOR_DOUBLE_DATA, TENSOR_FLOAT_DATA, TENSOR_RAW_DATA
from qpack.formats.qpk.spec import MAX_ELEMENTS

FORMAT = "onnx"
# protobuf cannot serialize a message over 2 GiB; above this a restored model gets external data
_INLINE_LIMIT = 1_800_000_000
_EXTERNAL_MIN = 1024  # smaller tensors stay inline in a model with external data
_EXTERNAL_ALIGN = 4096  # page-aligned, so that a runtime can map each tensor

_FLOAT_TYPES: dict[int, str] = {
    TensorProto.FLOAT: "float32",
    TensorProto.FLOAT16: "float16",
    TensorProto.BFLOAT16: "bfloat16",
    TensorProto.DOUBLE: "float64",
}
_QUANT_CONSUMERS = {"DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "DynamicQuantizeLinear",
                    # onnxruntime's contrib ops (com.microsoft) that read weights quantized already
                    "MatMulNBits", "GatherBlockQuantized", "QGemm", "DynamicQuantizeMatMul", "MatMulIntegerToFloat"}
# raw_data of these types is not itemsize bytes per element: onnx unpacks it
_SUBBYTE_TYPES = {getattr(TensorProto, n) for n in ("INT4", "UINT4", "FLOAT4E2M1", "INT2", "UINT2", "FLOAT6E2M3", "FLOAT6E3M2")
                  if hasattr(TensorProto, n)}
# packed float_data / double_data are little-endian float32 / float64 (complex: real, imaginary pairs)
_PACKED_DTYPES: dict[tuple[int, int], str] = {
    (TENSOR_FLOAT_DATA, TensorProto.FLOAT): "<f4", (TENSOR_FLOAT_DATA, TensorProto.COMPLEX64): "<c8",
    (TENSOR_DOUBLE_DATA, TensorProto.DOUBLE): "<f8", (TENSOR_DOUBLE_DATA, TensorProto.COMPLEX128): "<c16",
}


RoleAxes = tuple[Role, int | None, int | None]  # role, output-channel axis, reduction axis


def _role_of(op: str, index: int, node: onnx.NodeProto, ndim: int) -> RoleAxes:
    """The role of input `index` of `node`, with the output-channel and reduction axes it implies."""
    if op in ("Conv", "ConvTranspose"):
        if index == 1:  # Conv [O, I, k...]; ConvTranspose [I, O, k...]
            return (Role.KERNEL, 0, 1) if op == "Conv" else (Role.KERNEL, 1, 0)
        return (Role.BIAS, 0, None) if index == 2 else (Role.OTHER, None, None)
    if op == "Gemm":
        if index == 1:
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            return (Role.MATRIX, 0, 1) if trans_b else (Role.MATRIX, 1, 0)
        return (Role.BIAS, None, None) if index == 2 else (Role.MATRIX, None, None)
    if op == "MatMul":
        return (Role.MATRIX, ndim - 1, ndim - 2) if index == 1 and ndim >= 2 else (Role.MATRIX, None, None)
    if op in ("LSTM", "GRU", "RNN"):
        if index in (1, 2):  # [directions, gates x hidden, inputs]
            return Role.RECURRENT, 1, 2
        return (Role.BIAS, None, None) if index == 3 else (Role.OTHER, None, None)
    if op == "Gather" and index == 0:
        return (Role.EMBEDDING, 0, 1) if ndim >= 2 else (Role.EMBEDDING, None, None)
    if op in ("BatchNormalization", "InstanceNormalization", "LayerNormalization", "GroupNormalization"):
        return (Role.NORM, None, None) if index >= 1 else (Role.OTHER, None, None)
    if op in _QUANT_CONSUMERS:
        return Role.QUANTIZED, None, None
    return Role.OTHER, None, None


# output heads (formats.model.Head): ops looked through, and the ops that name a head
_PASSING = {"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Cast", "DequantizeLinear", "QuantizeLinear"}
_AFFINE = {"Add", "Sub", "Mul", "Div"}  # looked through when the other operand is a constant
_HEADS = {"Softmax": Head.SOFTMAX, "LogSoftmax": Head.SOFTMAX, "Gemm": Head.DENSE, "MatMul": Head.DENSE,
          "MatMulInteger": Head.DENSE, "QLinearMatMul": Head.DENSE, "MatMulNBits": Head.DENSE}


def output_heads(graph: GraphProto) -> dict[str, Head]:
    """What computes each output of `graph` (formats.model.Head), by output name."""
    producer = {o: n for n in graph.node for o in n.output if o}
    constant = {t.name for t in graph.initializer} | {n.output[0] for n in graph.node if n.op_type == "Constant" and n.output}
    heads = {}
    for out in graph.output:
        name, node = out.name, None
        for _ in range(HEAD_STEPS):
            node = producer.get(name)
            if node is None:
                break
            ins = [i for i in node.input if i]
            if node.op_type in _PASSING and ins:
                name = ins[0]
            elif node.op_type in _AFFINE and len(ins) == 2 and sum(i in constant for i in ins) == 1:
                name = ins[0] if ins[1] in constant else ins[1]
            else:
                break
        heads[out.name] = _HEADS.get(node.op_type, Head.OTHER) if node is not None else Head.OTHER
    return heads


def walk_tensors(graph: GraphProto) -> Iterator[tuple[str, TensorProto]]:
    """(key, tensor) for every initializer and Constant value, subgraphs included, in file order
    (the keys of `formats.onnx_keys`)."""
    for site in walk_sites(graph):
        yield site.key, site.tensor


def _external_attributes(graph: GraphProto) -> Iterator[tuple[str, TensorProto]]:
    """(what it is, the tensor) for each attribute tensor stored as external data that is no weight site
    (ConstantOfShape's value, say, which `onnx.save(..., convert_attribute=True)` moves out too), subgraphs
    included, in file order."""
    for node in graph.node:
        for attr in node.attribute:
            weight = node.op_type == "Constant" and node.domain in DEFAULT_DOMAINS and attr.name == "value"
            for t in ([attr.t] if attr.HasField("t") and not weight else []) + list(attr.tensors):
                if t.data_location == TensorProto.EXTERNAL:
                    named = shown(node.name or (node.output[0] if node.output else ""))
                    yield f"attribute '{attr.name}' of {node.op_type} node '{named}'", t
        for _, sub in subgraphs(node):
            yield from _external_attributes(sub)


def _consumers(graph: GraphProto, out: dict[str, list[tuple[onnx.NodeProto, int]]]) -> None:
    for node in graph.node:
        for index, name in enumerate(node.input):
            if name:
                out[name].append((node, index))
        for _, sub in subgraphs(node):
            _consumers(sub, out)


def _external_path(base: Path, location: str) -> Path:
    """Resolve an external-data location, refusing anything outside the model's folder."""
    if not location or os.path.isabs(location) or "\x00" in location:
        raise FormatError(f"external data location {location!r} is not a relative path")
    root = base.resolve()
    target = (root / location).resolve()
    if os.path.commonpath([root, target]) != str(root):
        raise FormatError(f"external data location {location!r} points outside the model's folder")
    if not target.is_file():
        raise FormatError(f"external data file {location!r} not found next to the model")
    return target


class _Source(NamedTuple):
    """Where a tensor's payload lies: a file, a byte range, and the TensorProto field it encodes."""

    path: Path
    offset: int
    length: int
    field: int


def _external_source(tensor: TensorProto, base: Path, label: str = "") -> _Source:
    """Where a tensor's external bytes are, offset and length checked against the file and the dims; `label`
    names it in errors (an attribute tensor has no name of its own)."""
    label = label or f"tensor '{tensor.name}'"
    info = {e.key: e.value for e in tensor.external_data}
    path = _external_path(base, info.get("location", ""))
    size = path.stat().st_size
    try:
        offset = int(info.get("offset", "0"))
        length = int(info["length"]) if "length" in info else size - offset
    except ValueError:
        raise FormatError(f"{label}: external data offset/length are not integers") from None
    itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
    expected = math.prod(int(d) for d in tensor.dims) * itemsize
    if offset < 0 or length < 0 or offset + length > size:
        raise FormatError(f"{label}: external data [{offset}, {offset + length}) exceeds {path.name} ({size} bytes)")
    if tensor.data_type not in (TensorProto.STRING,) and length != expected:
        raise FormatError(f"{label}: external data is {length} bytes, expected {expected} for dims {list(tensor.dims)}")
    return _Source(path, offset, length, TENSOR_RAW_DATA)


def _np_dtype(tensor: TensorProto) -> np.dtype:
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type))
    except (KeyError, TypeError, ValueError) as e:
        raise UnsupportedError(f"tensor '{tensor.name}' has unknown data type {tensor.data_type}") from e


def _to_array(tensor: TensorProto) -> NDArray:
    try:
        return numpy_helper.to_array(tensor)
    except Exception as e:  # onnx raises assorted types for inconsistent tensors
        raise FormatError(f"tensor '{tensor.name}': cannot decode its data ({e})") from e


def _direct_dtype(tensor: TensorProto, field: int) -> np.dtype | None:
    """The dtype a payload is an array of byte for byte, or None where onnx has to decode it."""
    if sys.byteorder != "little":  # payloads are little-endian
        return None
    if field == TENSOR_RAW_DATA:
        if tensor.data_type in _SUBBYTE_TYPES or tensor.data_type in (TensorProto.UNDEFINED, TensorProto.STRING):
            return None
        return _np_dtype(tensor)
    name = _PACKED_DTYPES.get((field, tensor.data_type))
    return np.dtype(name) if name else None


class OnnxModel:
    """An ONNX model opened for quantization: its structure in memory, its weights read on demand.

    `model` is the parsed structure; a tensor whose data is read from a file holds none there. The
    model file, and each external-data file once read, stay open until `close()`, so that weights
    come from the files that were checked, whatever replaces them meanwhile.
    """

    format = FORMAT

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._files: dict[Path, io.FileIO] = {}
        self._lock = threading.Lock()  # a file's position is shared by every reader
        self._closed = False
        try:
            self._home = self.path.resolve()
            model_file = self._files[self._home] = open_raw(self.path)
            size = os.fstat(model_file.fileno()).st_size
        except OSError as e:
            self.close()
            raise FormatError(f"{path}: cannot read ({e.strerror})") from e
        try:
            self._open(model_file, size)
        except BaseException:
            self.close()
            raise

    def _open(self, model_file: io.FileIO, size: int) -> None:
        where = str(self.path)
        try:
            mm = mmap.mmap(model_file.fileno(), 0, access=mmap.ACCESS_READ) if size else None
        except (OSError, ValueError) as e:
            raise FormatError(f"{where}: cannot map the file ({e})") from e
        try:
            self._stripped = onnx_wire.strip(b"" if mm is None else mm, where)
        finally:
            if mm is not None:
                mm.close()
        nonce, regions = self._stripped.nonce, self._stripped.regions
        self.model = parse_model(self._stripped.data, where)
        found = sorted(i for t in onnx_wire.every_tensor(self.model.graph) if (i := onnx_wire.marker_of(t, nonce)) is not None)
        if found != list(range(len(regions))):  # protobuf merged a message given twice, overwriting a payload
            raise FormatError(f"{where}: a tensor or graph is encoded more than once; such files are not supported")
        self._sources: dict[str, _Source] = {}
        self._markers: dict[str, int] = {}
        external_files: set[Path] = set()
        for key, tensor in walk_tensors(self.model.graph):
            if tensor.data_location == TensorProto.EXTERNAL:
                self._sources[key] = src = _external_source(tensor, self.path.parent)
                external_files.add(src.path)
            elif (i := onnx_wire.marker_of(tensor, nonce)) is not None:
                self._markers[key] = i
                self._sources[key] = self._region(i)
        # attribute tensors out in external data: read back into the skeleton, which travels without its files
        self._attribute_sources = [_external_source(t, self.path.parent, what) for what, t in _external_attributes(self.model.graph)]
        external_files.update(src.path for src in self._attribute_sources)
        for t in onnx_wire.every_tensor(self.model.graph):
            if onnx_wire.marker_of(t, nonce) is not None:
                t.ClearField("raw_data")
        self.external_files: list[Path] = sorted(external_files)
        self.file_bytes = size + sum(p.stat().st_size for p in self.external_files)
        self._weights = self._collect()

    def close(self) -> None:
        """Close the model's files; its weights can no longer be read."""
        self._closed = True
        files, self._files = self._files, {}
        for f in files.values():
            f.close()

    def __del__(self) -> None:
        # a model dropped without close() (a library caller's, say) closes its files quietly
        # instead of leaving them to the garbage collector's ResourceWarning
        if getattr(self, "_files", None):
            self.close()

    def __enter__(self) -> OnnxModel:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    @property
    def weights(self) -> list[Weight]:
        return self._weights

    def _collect(self) -> list[Weight]:
        uses: dict[str, list[tuple[onnx.NodeProto, int]]] = defaultdict(list)
        _consumers(self.model.graph, uses)
        const = self._constants()
        weights = []
        seen: set[str] = set()
        for key, tensor in walk_tensors(self.model.graph):
            if key in seen:
                raise FormatError(f"two tensors share the location {key!r}")
            seen.add(key)
            local, ref = split_key(key)
            # a Constant is known by its output, which may itself hold ':' and '/'
            name = ref if local.startswith("node") else (tensor.name or ref)
            dtype = _FLOAT_TYPES.get(tensor.data_type)
            np_dtype = _np_dtype(tensor)
            shape = tuple(int(d) for d in tensor.dims)
            if any(d < 0 for d in shape):
                raise FormatError(f"tensor '{name}' has negative dims {list(shape)}")
            if math.prod(shape) >= MAX_ELEMENTS:
                raise FormatError(f"{self.path}: tensor '{shown(name)}' has dims {list(shape)}, implausibly many elements")
            nbytes = math.prod(shape) * np_dtype.itemsize
            src = self._sources.get(key)
            load = partial(self._read, tensor, src) if src else partial(_to_array, tensor)
            if dtype is None:
                consumers = uses.get(name, [])
                labels = tuple(f"{n.op_type}:{i}" for n, i in consumers)
                quant_ops = sorted({n.op_type for n, _ in consumers if n.op_type in _QUANT_CONSUMERS})
                role = Role.QUANTIZED if quant_ops else Role.INTEGER
                weights.append(Weight(key, name, shape, str(np_dtype), role, None, labels, ", ".join(quant_ops), nbytes, load))
                continue
            traced = list(onnx_layout.trace(name, shape, uses, const))
            labels = tuple(dict.fromkeys("".join(f"{p}>" for p in u.path) + f"{u.node.op_type}:{u.index}" for u in traced))
            roles = set()
            for u in traced:
                role, axis, red = _role_of(u.node.op_type, u.index, u.node, len(u.amap))
                roles.add((role, u.weight_axis(axis), u.weight_axis(red)))
            note = ""
            reduction = None
            if len(roles) == 1:
                role, axis, reduction = roles.pop()
            elif not roles:
                role, axis, note = Role.OTHER, None, "no consumer"
            else:
                kinds = {r for r, _, _ in roles}
                role = kinds.pop() if len(kinds) == 1 else Role.OTHER
                axis = None
                note = "shared by " + ", ".join(sorted(set(labels)))
            weights.append(Weight(key, name, shape, dtype, role, axis, labels, note, nbytes, load, reduction))
        return weights

    def _constants(self) -> Callable[[str], NDArray | None]:
        """Values of the model's small integer constants by name (shapes, axes, indices) for layout tracing."""
        small: dict[str, tuple[TensorProto, _Source | None]] = {}
        for key, tensor in walk_tensors(self.model.graph):
            if tensor.data_type in (TensorProto.INT64, TensorProto.INT32) and math.prod(tensor.dims) <= 64:
                local, ref = split_key(key)
                small[ref if local.startswith("node") else (tensor.name or ref)] = (tensor, self._sources.get(key))
        cache: dict[str, NDArray | None] = {}

        def const(name: str) -> NDArray | None:
            if name not in cache:
                found = small.get(name)
                try:
                    if found is None:
                        cache[name] = None
                    else:
                        tensor, src = found
                        cache[name] = np.asarray(self._read(tensor, src) if src else _to_array(tensor))
                except QpackError:
                    cache[name] = None
            return cache[name]

        return const

    def _region(self, i: int) -> _Source:
        r = self._stripped.regions[i]
        return _Source(self._home, r.offset, r.length, r.field)

    def _read_into(self, src: _Source, buf: memoryview) -> None:
        with self._lock:
            if self._closed:
                raise QpackError(f"{self.path}: the model is closed")
            f = self._files.get(src.path)
            if f is None:
                try:
                    f = self._files[src.path] = open_raw(src.path)
                except OSError as e:
                    raise FormatError(f"{src.path}: cannot read ({e.strerror})") from e
            f.seek(src.offset)
            done = 0
            while done < len(buf):
                n = f.readinto(buf[done:])
                if not n:
                    raise FormatError(f"{src.path}: ends at byte {src.offset + done}, inside tensor data "
                                      f"[{src.offset}, {src.offset + src.length}) (changed after it was opened?)")
                done += n

    def _bytes(self, src: _Source, prefix: bytes = b"") -> bytearray:
        """`prefix` then a payload read from its file."""
        buf = bytearray(len(prefix) + src.length)
        buf[: len(prefix)] = prefix
        self._read_into(src, memoryview(buf)[len(prefix) :])
        return buf

    def _field(self, src: _Source) -> bytearray:
        """A payload as the protobuf field it was (tag and length first), to merge back into its tensor."""
        return self._bytes(src, onnx_wire.field_head(src.field, src.length))

    def _read(self, tensor: TensorProto, src: _Source) -> NDArray:
        """A stripped or external tensor's values, read from its file into a fresh array."""
        dtype = _direct_dtype(tensor, src.field)
        shape = tuple(int(d) for d in tensor.dims)
        if dtype is not None and math.prod(shape) * dtype.itemsize == src.length:
            out = np.empty(shape, dtype)
            self._read_into(src, out.reshape(-1).view(np.uint8).data)
            return out
        whole = TensorProto()  # anything else is decoded by onnx from the tensor as stored
        whole.CopyFrom(tensor)
        if whole.data_location == TensorProto.EXTERNAL:
            whole.raw_data = bytes(self._bytes(src))
            del whole.external_data[:]
            whole.data_location = TensorProto.DEFAULT
        else:
            whole.MergeFromString(self._field(src))
        return _to_array(whole)

    def output_heads(self) -> dict[str, Head]:
        return output_heads(self.model.graph)

    def skeleton(self, strip: set[str]) -> bytes:
        """The model with the stripped tensors' data removed (dims and type kept), external data made inline.

        Built from the structure alone, reading back only the tensors that are kept.
        """
        model = parse_model(self._stripped.data, str(self.path))
        dropped = {self._markers[key] for key in strip if key in self._markers}
        for tensor in onnx_wire.every_tensor(model.graph):
            i = onnx_wire.marker_of(tensor, self._stripped.nonce)
            if i is not None:
                tensor.ClearField("raw_data")
                if i not in dropped:
                    tensor.MergeFromString(self._field(self._region(i)))
        for key, tensor in walk_tensors(model.graph):
            if tensor.data_location == TensorProto.EXTERNAL:
                if key not in strip:
                    tensor.raw_data = bytes(self._bytes(self._sources[key]))
                del tensor.external_data[:]
                tensor.data_location = TensorProto.DEFAULT
            if key in strip:
                for f in ("raw_data", "float_data", "int32_data", "double_data"):
                    tensor.ClearField(f)
        for (_, tensor), src in zip(list(_external_attributes(model.graph)), self._attribute_sources, strict=True):
            tensor.raw_data = bytes(self._bytes(src))
            del tensor.external_data[:]
            tensor.data_location = TensorProto.DEFAULT
        return model.SerializeToString(deterministic=True)


def parse_model(data: bytes, where: str) -> ModelProto:
    """Parse ONNX bytes, rejecting what protobuf would accept but no model is."""
    model = ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as e:
        raise FormatError(f"{where}: not an ONNX model ({e})") from e
    if not model.HasField("graph") or not model.opset_import or model.ir_version <= 0:
        raise FormatError(f"{where}: not an ONNX model (no graph, opset or IR version)")
    return model


def _targets(model: ModelProto, tensors: Mapping[str, object]) -> list[tuple[str, TensorProto]]:
    """The skeleton's tensors named by `tensors`, in file order, each checked to be a float tensor."""
    found, seen = [], set()
    for key, tensor in walk_tensors(model.graph):
        if key in seen:
            raise FormatError(f"stored graph has two tensors at the location {key!r}")
        seen.add(key)
        if key in tensors:
            if tensor.data_type not in _FLOAT_TYPES:
                raise FormatError(f"tensor {key!r} is not a float tensor in the stored graph")
            found.append((key, tensor))
    if len(found) != len(tensors):
        raise FormatError(f"stored graph holds {len(found)} of the {len(tensors)} quantized tensors")
    return found


def _values(key: str, tensor: TensorProto, load: Callable[[], NDArray]) -> NDArray:
    """A tensor's new values, shape checked, in the little-endian dtype it declares, C-contiguous."""
    values = np.asarray(load())
    if tuple(values.shape) != tuple(tensor.dims):
        raise FormatError(f"tensor {key!r}: shape {values.shape} does not match {list(tensor.dims)}")
    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).newbyteorder("<")
    return np.ascontiguousarray(values.astype(dtype, copy=False))


def restore(skeleton: bytes, tensors: Mapping[str, Callable[[], NDArray]], out: Path) -> list[Path]:
    """Write a runnable model: the skeleton with each float tensor put back in the dtype it declares.

    Args:
        skeleton: a model from `OnnxModel.skeleton`.
        tensors: key -> a function giving that tensor's float values (any float dtype), called once,
            when the tensor is written; the values are dropped right after.
        out: the model file. A model over protobuf's size limit gets its tensors of 1 kB or more in
            `<out>.data`; both files appear only if both are complete.

    Returns:
        The files written.

    Raises:
        FormatError: the skeleton is corrupt, lacks a key or holds it as a non-float tensor, or a
            tensor's values have the wrong shape.
    """
    out = Path(out)
    model = parse_model(skeleton, "graph blob")
    targets = _targets(model, tensors)
    lengths = [math.prod(int(d) for d in t.dims) * _np_dtype(t).itemsize for _, t in targets]
    if len(skeleton) + sum(lengths) + 16 * len(lengths) >= _INLINE_LIMIT:  # 16: tag and length prefixes
        return _restore_external(model, tensors, out)
    # serialized with a marker for each tensor, then written with the values streamed into place:
    # the bytes protobuf would give, without the whole model in memory
    nonce = os.urandom(8)
    for i, (_, tensor) in enumerate(targets):
        tensor.raw_data = onnx_wire.marker(nonce, i)
    pieces = onnx_wire.expand(model.SerializeToString(deterministic=True), nonce, lengths, "graph blob")
    with atomic_output(out) as f:
        for piece in pieces:
            if isinstance(piece, onnx_wire.Hole):
                key, tensor = targets[piece.slot]
                values = _values(key, tensor, tensors[key])
                f.write(values.reshape(-1).view(np.uint8).data)
                del values
            else:
                f.write(piece)
    return [out]


def _restore_external(model: ModelProto, tensors: Mapping[str, Callable[[], NDArray]], out: Path) -> list[Path]:
    """Stream every tensor of 1 kB or more to `<out>.data`, then write the small model that points into it."""
    data_path = out.with_name(out.name + ".data")
    data_done = False
    try:
        with atomic_output(out) as f:
            with atomic_output(data_path) as data:
                offset = 0
                for key, tensor in walk_tensors(model.graph):
                    if key in tensors:
                        values = _values(key, tensor, tensors[key])
                        if values.nbytes < _EXTERNAL_MIN:
                            tensor.raw_data = values.tobytes()
                            continue
                        payload: bytes | memoryview = values.reshape(-1).view(np.uint8).data
                        del values
                    elif tensor.HasField("raw_data") and len(raw := tensor.raw_data) >= _EXTERNAL_MIN:
                        payload = raw
                        tensor.ClearField("raw_data")
                    else:
                        continue
                    pad = -offset % _EXTERNAL_ALIGN
                    data.write(bytes(pad))
                    offset += pad
                    data.write(payload)
                    tensor.data_location = TensorProto.EXTERNAL
                    for k, v in (("location", data_path.name), ("offset", str(offset)), ("length", str(len(payload)))):
                        entry = tensor.external_data.add()
                        entry.key, entry.value = k, v
                    offset += len(payload)
                    del payload
            data_done = True
            f.write(model.SerializeToString(deterministic=True))
    except BaseException:
        if data_done:  # the model never appeared: take its data file away too
            data_path.unlink(missing_ok=True)
        raise
    return [out, data_path]
