"""ONNX adapter: every float weight wherever it lives, its consumer and channel axis; rebuild."""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from functools import partial
from pathlib import Path
from typing import BinaryIO

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from numpy.typing import NDArray
from onnx import AttributeProto, GraphProto, ModelProto, TensorProto, numpy_helper

from formats.atomic import atomic_output
from formats.errors import FormatError, UnsupportedError
from formats.model import Role, Weight

FORMAT = "onnx"
# protobuf cannot serialize a message over 2 GiB; above this a restored model gets external data
_INLINE_LIMIT = 1_800_000_000

_FLOAT_TYPES: dict[int, str] = {
    TensorProto.FLOAT: "float32",
    TensorProto.FLOAT16: "float16",
    TensorProto.BFLOAT16: "bfloat16",
    TensorProto.DOUBLE: "float64",
}
_QUANT_CONSUMERS = {"DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "DynamicQuantizeLinear"}


def _role_of(op: str, index: int, node: onnx.NodeProto, ndim: int) -> tuple[Role, int | None]:
    """The role of input `index` of `node` and the output-channel axis it implies."""
    if op in ("Conv", "ConvTranspose"):
        if index == 1:
            return Role.KERNEL, (0 if op == "Conv" else 1)
        return (Role.BIAS, 0) if index == 2 else (Role.OTHER, None)
    if op == "Gemm":
        if index == 1:
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            return Role.MATRIX, (0 if trans_b else 1)
        return (Role.BIAS, None) if index == 2 else (Role.MATRIX, None)
    if op == "MatMul":
        return (Role.MATRIX, ndim - 1) if index == 1 and ndim >= 2 else (Role.MATRIX, None)
    if op in ("LSTM", "GRU", "RNN"):
        if index in (1, 2):
            return Role.RECURRENT, 1
        return (Role.BIAS, None) if index == 3 else (Role.OTHER, None)
    if op == "Gather" and index == 0:
        return Role.EMBEDDING, 0 if ndim >= 2 else None
    if op in ("BatchNormalization", "InstanceNormalization", "LayerNormalization", "GroupNormalization"):
        return (Role.NORM, None) if index >= 1 else (Role.OTHER, None)
    if op in _QUANT_CONSUMERS:
        return Role.QUANTIZED, None
    return Role.OTHER, None


def _subgraphs(node: onnx.NodeProto) -> Iterator[tuple[str, GraphProto]]:
    for attr in node.attribute:
        if attr.type == AttributeProto.GRAPH:
            yield attr.name, attr.g
        elif attr.type == AttributeProto.GRAPHS:
            for k, g in enumerate(attr.graphs):
                yield f"{attr.name}[{k}]", g


def walk_tensors(graph: GraphProto, prefix: str = "") -> Iterator[tuple[str, TensorProto]]:
    """(key, tensor) for every initializer and Constant value, subgraphs included, in file order.

    The key is a path of node indices, so the same walk over a stripped copy finds the same tensors.
    """
    for init in graph.initializer:
        yield f"{prefix}init:{init.name}", init
    for i, node in enumerate(graph.node):
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            for attr in node.attribute:
                if attr.name == "value" and attr.type == AttributeProto.TENSOR:
                    yield f"{prefix}node{i}:{node.output[0] if node.output else ''}", attr.t
        for name, sub in _subgraphs(node):
            yield from walk_tensors(sub, f"{prefix}node{i}.{name}/")


def _consumers(graph: GraphProto, out: dict[str, list[tuple[onnx.NodeProto, int]]]) -> None:
    for node in graph.node:
        for index, name in enumerate(node.input):
            if name:
                out[name].append((node, index))
        for _, sub in _subgraphs(node):
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


def _load_external(tensor: TensorProto, base: Path) -> None:
    """Read a tensor's external bytes into raw_data, checking offset and length against the file."""
    info = {e.key: e.value for e in tensor.external_data}
    path = _external_path(base, info.get("location", ""))
    size = path.stat().st_size
    try:
        offset = int(info.get("offset", "0"))
        length = int(info["length"]) if "length" in info else size - offset
    except ValueError:
        raise FormatError(f"tensor '{tensor.name}': external data offset/length are not integers") from None
    itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
    expected = int(np.prod(tensor.dims, dtype=np.int64)) * itemsize
    if offset < 0 or length < 0 or offset + length > size:
        raise FormatError(f"tensor '{tensor.name}': external data [{offset}, {offset + length}) exceeds {path.name} ({size} bytes)")
    if tensor.data_type not in (TensorProto.STRING,) and length != expected:
        raise FormatError(f"tensor '{tensor.name}': external data is {length} bytes, expected {expected} for dims {list(tensor.dims)}")
    with path.open("rb") as f:
        f.seek(offset)
        tensor.raw_data = f.read(length)
    del tensor.external_data[:]
    tensor.data_location = TensorProto.DEFAULT


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


class OnnxModel:
    """An ONNX model loaded for quantization."""

    format = FORMAT

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            data = self.path.read_bytes()
        except OSError as e:
            raise FormatError(f"{path}: cannot read ({e.strerror})") from e
        self.model = parse_model(data, str(path))
        base = self.path.parent
        self.file_bytes = len(data)
        external_files: set[Path] = set()
        for _, tensor in walk_tensors(self.model.graph):
            if tensor.data_location == TensorProto.EXTERNAL:
                loc = next((e.value for e in tensor.external_data if e.key == "location"), "")
                external_files.add(_external_path(base, loc))
                _load_external(tensor, base)
        self.external_files: list[Path] = sorted(external_files)
        self.file_bytes += sum(p.stat().st_size for p in self.external_files)
        self._weights = self._collect()

    @property
    def weights(self) -> list[Weight]:
        return self._weights

    def _collect(self) -> list[Weight]:
        uses: dict[str, list[tuple[onnx.NodeProto, int]]] = defaultdict(list)
        _consumers(self.model.graph, uses)
        weights = []
        seen: set[str] = set()
        for key, tensor in walk_tensors(self.model.graph):
            if key in seen:
                raise FormatError(f"two tensors share the location {key!r}")
            seen.add(key)
            name = tensor.name or key.rsplit(":", 1)[-1]
            if key.rsplit("/", 1)[-1].startswith("node"):
                name = key.rsplit(":", 1)[-1]  # a Constant is known by its output
            dtype = _FLOAT_TYPES.get(tensor.data_type)
            np_dtype = _np_dtype(tensor)
            shape = tuple(int(d) for d in tensor.dims)
            if any(d < 0 for d in shape):
                raise FormatError(f"tensor '{name}' has negative dims {list(shape)}")
            nbytes = int(np.prod(shape, dtype=np.int64)) * np_dtype.itemsize
            load = partial(_to_array, tensor)
            consumers = uses.get(name, [])
            labels = tuple(f"{n.op_type}:{i}" for n, i in consumers)
            if dtype is None:
                role = Role.QUANTIZED if any(n.op_type in _QUANT_CONSUMERS for n, _ in consumers) else Role.INTEGER
                weights.append(Weight(key, name, shape, str(np_dtype), role, None, labels, "", nbytes, load))
                continue
            roles = {_role_of(n.op_type, i, n, len(shape)) for n, i in consumers}
            note = ""
            if len(roles) == 1:
                role, axis = roles.pop()
            elif not roles:
                role, axis, note = Role.OTHER, None, "no consumer"
            else:
                kinds = {r for r, _ in roles}
                role = kinds.pop() if len(kinds) == 1 else Role.OTHER
                axis = None
                note = "shared by " + ", ".join(sorted(set(labels)))
            weights.append(Weight(key, name, shape, dtype, role, axis, labels, note, nbytes, load))
        return weights

    def skeleton(self, strip: set[str]) -> bytes:
        """The model with the stripped tensors' data removed (dims and type kept)."""
        model = ModelProto()
        model.CopyFrom(self.model)
        for key, tensor in walk_tensors(model.graph):
            if key in strip:
                for f in ("raw_data", "float_data", "int32_data", "double_data"):
                    tensor.ClearField(f)
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


def restore(skeleton: bytes, tensors: Mapping[str, Callable[[], NDArray]], out: Path) -> list[Path]:
    """Write the restored model atomically; returns the files written."""
    model = _restore_model(skeleton, {k: f() for k, f in tensors.items()})
    with atomic_output(out) as f:
        return write(model, f, out)


def _restore_model(skeleton: bytes, arrays: dict[str, NDArray]) -> ModelProto:
    """Put float arrays back into a skeleton, each in the dtype its tensor declares."""
    model = parse_model(skeleton, "graph blob")
    found = 0
    for key, tensor in walk_tensors(model.graph):
        if key in arrays:
            dtype = _FLOAT_TYPES.get(tensor.data_type)
            if dtype is None:
                raise FormatError(f"tensor {key!r} is not a float tensor in the stored graph")
            np_dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
            values = np.asarray(arrays[key]).astype(np_dtype)
            if tuple(values.shape) != tuple(tensor.dims):
                raise FormatError(f"tensor {key!r}: shape {values.shape} does not match {list(tensor.dims)}")
            tensor.raw_data = values.astype(values.dtype.newbyteorder("<"), copy=False).tobytes()
            found += 1
    if found != len(arrays):
        raise FormatError(f"stored graph holds {found} of the {len(arrays)} quantized tensors")
    return model


def write(model: ModelProto, f: BinaryIO, path: Path) -> list[Path]:
    """Serialize a restored model into `f`; a model over protobuf's limit gets a `.data` file too."""
    if model.ByteSize() >= _INLINE_LIMIT:
        data_name = path.name + ".data"
        with atomic_output(path.with_name(data_name)) as data:
            offset = 0
            for _, tensor in walk_tensors(model.graph):
                if len(tensor.raw_data) >= 1024:
                    raw = tensor.raw_data
                    pad = -offset % 4096
                    data.write(bytes(pad))
                    offset += pad
                    data.write(raw)
                    tensor.ClearField("raw_data")
                    tensor.data_location = TensorProto.EXTERNAL
                    for k, v in (("location", data_name), ("offset", str(offset)), ("length", str(len(raw)))):
                        entry = tensor.external_data.add()
                        entry.key, entry.value = k, v
                    offset += len(raw)
        f.write(model.SerializeToString(deterministic=True))
        return [path, path.with_name(data_name)]
    f.write(model.SerializeToString(deterministic=True))
    return [path]
