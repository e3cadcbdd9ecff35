"""`--to onnx-matmulnbits`: MatMul and Gemm weights as com.microsoft.MatMulNBits, the rest as onnx-fast.

MatMulNBits multiplies by a [K, N] weight stored transposed, as N rows of K codes in blocks of
`block_size` (a power of two, 16 or more) along K, each block with its own scale and zero point:

| container | MatMulNBits bits | codes | zero points |
|---|---|---|---|
| asym, n bits | 2, 4 or 8 (the narrowest >= n) | the stored codes | the stored ones, packed |
| sym, n bits | 2, 4 or 8 (>= n) | code - M + 2^(bits-1) | none (the default 2^(bits-1)) |
| pow2 | 2, 4 or 8, by each group's exponent span | ±2^(m - lo) + 2^(bits-1) | none |

A block must sit inside one of the container's groups, so a per-tensor or per-output-channel scale is
repeated along K and blocks along K of B weights use a block size dividing B; scales along K per
input channel have no such form and are decoded when the model loads instead, as every other stored
tensor is (onnx-fast's Cast/Mul form: the float kernels then run at their own speed). Gemm (transA = 0, alpha =
beta = 1) maps too, its bias C becoming MatMulNBits' bias input (and nothing else: adding it a second
time is a known exporter slip).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from onnx import ModelProto, NodeProto, TensorProto, helper

from qpack.converter.export import onnx_qdq
from qpack.converter.export.intform import IntForm, int_form
from qpack.converter.export.onnx_fuse import raised_and_fused
from qpack.converter.export.onnx_graph import (
    DEFAULT_DOMAINS,
    MS_DOMAIN,
    Edits,
    Names,
    Site,
    consumers,
    load_skeleton,
    ort_runs,
    raw_tensor,
    sites,
    walk_graphs,
)
from qpack.formats.errors import UnsupportedError
from qpack.formats.qpk import QpkReader, TensorEntry, pack

BLOCK_SIZES = (16, 32, 64, 128, 256)  # powers of two the CPU kernels are built for
_BITS = (2, 4, 8)
_SCALE_DTYPES: dict[str, np.dtype] = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2")}


def _probe(bits: int) -> bytes:
    k, n = 16, 1
    b = raw_tensor("B", TensorProto.UINT8, [n, 1, k * bits // 8], bytes(k * bits // 8))
    s = raw_tensor("s", TensorProto.FLOAT, [n, 1], np.float32(1).tobytes())
    a = raw_tensor("A", TensorProto.FLOAT, [1, k], np.zeros(k, "<f4").tobytes())
    node = helper.make_node("MatMulNBits", ["A", "B", "s"], ["Y"], domain=MS_DOMAIN, K=k, N=n, bits=bits, block_size=16)
    graph = helper.make_graph([node], "probe", [], [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, n])], [a, b, s])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid(MS_DOMAIN, 1)])
    model.ir_version = 10
    return model.SerializeToString()


@functools.cache
def supported_bits() -> tuple[int, ...]:
    """The widths the installed onnxruntime's MatMulNBits runs (4 everywhere, 2 and 8 in newer releases)."""
    return tuple(b for b in _BITS if ort_runs(_probe(b)))


@dataclass(frozen=True)
class MnbPlan:
    entry: TensorEntry
    form: IntForm
    bits: int
    block: int
    k_axis: int  # 0: the weight is [K, N] (MatMul, Gemm transB=0); 1: [N, K] (Gemm transB=1)
    scales: NDArray  # [N, k_blocks] in the activation type
    zero_points: NDArray[np.uint8] | None  # packed [N, ceil(k_blocks * bits / 8)]; None: the default
    rounded_scales: bool  # float16 scales that are not exactly the container's


def _gemm_ok(node: NodeProto, value: str, model_values: dict[str, Site], n: int) -> str:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0:
        return "a Gemm with transA or alpha"
    if len(node.input) > 2 and node.input[2]:
        c = model_values.get(node.input[2])
        if attrs.get("beta", 1.0) != 1.0 or c is None or list(c.tensor.dims) != [n] or node.input[2] == value:
            return "a Gemm whose C is not a constant [N] bias"
    return ""


def orientation(model: ModelProto, value: str, shape: tuple[int, ...], values: dict[str, Site]) -> int | str:
    """Which axis of the weight is K for every node reading it, or why it is not a MatMulNBits weight.

    `values` maps value names to the constants that make them (for Gemm's bias).
    """
    if len(shape) != 2:
        return f"a {len(shape)}-D weight"
    found = consumers(model, value)
    if not found:
        return "no MatMul reads it"
    if any(value == o.name for _, g in walk_graphs(model.graph) for o in g.output):
        return "a graph output"  # MatMulNBits leaves no float tensor to output
    axes = set()
    for node in found:
        ins = list(node.input)
        if node.domain not in DEFAULT_DOMAINS or len(ins) < 2 or ins[1] != value or ins[0] == value:
            return f"read by {node.op_type}"
        if node.op_type == "MatMul":
            axes.add(0)
        elif node.op_type == "Gemm":
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            why = _gemm_ok(node, value, values, shape[0] if trans_b else shape[1])
            if why:
                return f"read by {why}"
            axes.add(1 if trans_b else 0)
        else:
            return f"read by {node.op_type}"
    if len(axes) > 1:
        return "read both as [K, N] and as [N, K]"
    return axes.pop()


def _rows(x: NDArray, k_axis: int) -> NDArray:
    """A weight-shaped array as [N, K]."""
    return x if k_axis == 1 else x.T


def _per_block(full: NDArray, block: int) -> NDArray | None:
    """[N, K] per-weight parameters as [N, k_blocks], or None when a block holds more than one value."""
    n, k = full.shape
    kb = -(-k // block)
    padded = np.pad(full, ((0, 0), (0, kb * block - k)), mode="edge").reshape(n, kb, block)
    first = padded[:, :, 0]
    return first if np.array_equal(padded, np.broadcast_to(first[:, :, None], padded.shape)) else None


def _pack_rows(values: NDArray, bits: int) -> NDArray[np.uint8]:
    """Each row packed on its own, LSB-first, so every row starts on a byte (MatMulNBits' layout)."""
    n, k = values.shape
    per = 8 // bits
    padded = np.zeros((n, -(-k // per) * per), np.uint8)
    padded[:, :k] = values
    return pack(padded.reshape(-1), bits).reshape(n, -1)


def plan(model: ModelProto, site: Site, values: dict[str, Site], reader: QpkReader, e: TensorEntry) -> MnbPlan | str:
    """The MatMulNBits form of a stored MatMul/Gemm weight, or why it has none."""
    k_axis = orientation(model, site.value, e.shape, values)
    if isinstance(k_axis, str):
        return k_axis
    dtype = _SCALE_DTYPES.get(e.dtype)
    if dtype is None:
        return f"{e.dtype} weights"
    try:
        form = int_form(reader, e)
    except UnsupportedError as err:
        return str(err)
    signed = form.zero_point is None
    fitting = [b for b in supported_bits() if b >= e.bits and
               form.fits(*((-(1 << (b - 1)), (1 << (b - 1)) - 1) if signed else (0, (1 << b) - 1)))]
    if not fitting:
        return f"integers {form.low}..{form.high} need more than {max(supported_bits(), default=0)} bits"
    bits = fitting[0]
    shape = e.shape
    scale_full = _rows(np.broadcast_to(form.grouping.expand(form.scale, shape), shape), k_axis)
    zp_full = None if signed else _rows(np.broadcast_to(form.grouping.expand(form.zero_points(), shape), shape), k_axis)
    n, k = scale_full.shape

    def cost(block: int) -> int:
        kb = -(-k // block)
        return kb * (block * bits // 8 + dtype.itemsize) + (0 if signed else -(-kb * bits // 8))

    for block in sorted(BLOCK_SIZES, key=lambda b: (cost(b), -b)):
        scales = _per_block(scale_full, block)
        zps = None if zp_full is None else _per_block(zp_full, block)
        if scales is None or (zp_full is not None and zps is None):
            continue
        stored = scales.astype(dtype)
        rounded = not np.array_equal(stored.astype(np.float32), scales)
        packed_zp = None if zps is None else _pack_rows(zps.astype(np.uint8), bits)
        offset = (1 << (bits - 1)) if signed else 0
        return MnbPlan(e, form if not offset else form.shifted(offset), bits, block, k_axis, stored, packed_zp, rounded)
    return f"its parameters change within every MatMulNBits block ({BLOCK_SIZES[0]}..{BLOCK_SIZES[-1]} along K)"


def apply(model: ModelProto, p: MnbPlan, site: Site, edits: Edits, names: Names, accuracy_level: int = 0) -> None:
    """Turn every MatMul/Gemm reading the weight into MatMulNBits; the float weight goes."""
    value = site.value
    codes = _rows(p.form.q, p.k_axis)
    n, k = codes.shape
    kb = -(-k // p.block)
    padded = np.zeros((n, kb * p.block), np.uint8)
    padded[:, :k] = codes
    blob = pack(padded.reshape(-1), p.bits).reshape(n, kb, p.block * p.bits // 8)
    edit = edits.of(site)
    bname, sname = names.fresh(f"{value}_Q{p.bits}"), names.fresh(f"{value}_scales")
    scale_type = TensorProto.FLOAT16 if p.scales.dtype == np.float16 else TensorProto.FLOAT
    edit.inits += [raw_tensor(bname, TensorProto.UINT8, blob.shape, blob), raw_tensor(sname, scale_type, p.scales.shape, p.scales)]
    zname = ""
    if p.zero_points is not None:
        zname = names.fresh(f"{value}_zero_points")
        edit.inits.append(raw_tensor(zname, TensorProto.UINT8, p.zero_points.shape, p.zero_points))
    for node in consumers(model, value):
        bias = node.input[2] if node.op_type == "Gemm" and len(node.input) > 2 else ""
        inputs = [node.input[0], bname, sname, zname, "", bias]
        while inputs and not inputs[-1]:
            inputs.pop()
        del node.input[:]
        node.input.extend(inputs)
        del node.attribute[:]
        node.attribute.extend([helper.make_attribute("K", k), helper.make_attribute("N", n),
                               helper.make_attribute("bits", p.bits), helper.make_attribute("block_size", p.block)])
        if accuracy_level:
            node.attribute.append(helper.make_attribute("accuracy_level", accuracy_level))
        node.op_type, node.domain = "MatMulNBits", MS_DOMAIN
    edits.remove(site)


INT8_COMPUTE = 4  # MatMulNBits' accuracy_level computing in int8: activations quantized per block as it runs


def export_onnx_matmulnbits_int8(reader: QpkReader, out: Path, notes: list[str]) -> list[Path]:
    """As export_onnx_matmulnbits, each MatMulNBits computing in int8 (its activations quantized per block on the
    fly, for the CPU's int8 dot products): faster, and no longer the container's values to float rounding."""
    return export_onnx_matmulnbits(reader, out, notes, INT8_COMPUTE)


def export_onnx_matmulnbits(reader: QpkReader, out: Path, notes: list[str], accuracy_level: int = 0) -> list[Path]:
    """Write the container's model with MatMul/Gemm weights as MatMulNBits and the others as onnx-fast writes them."""
    if not supported_bits():
        raise UnsupportedError(f"onnxruntime {_ort_version()} runs no MatMulNBits this export can write")
    entries = reader.entries
    model, at = load_skeleton(reader, [e.key for e in entries])
    values = {s.value: s for s in sites(model).values()}
    mnb: list[MnbPlan] = []
    qdq: list[onnx_qdq.QdqPlan] = []
    for e in entries:
        p = plan(model, at[e.key], values, reader, e)
        if isinstance(p, MnbPlan):
            mnb.append(p)
            continue
        qdq.append(onnx_qdq.plan(reader, e))
        if e.role == "matrix":
            notes.append(f"tensor '{e.name}': {p}; decoded when the model loads (as onnx-fast)")
    opset, why = onnx_qdq.requirement(qdq, decoded=True)
    loaded = [(model, {e.key: at[e.key] for e in entries})]  # planned on this one; a retry loads afresh

    def load() -> tuple[ModelProto, dict[str, Site]]:
        return loaded.pop() if loaded else load_skeleton(reader, [e.key for e in entries])

    model, at = raised_and_fused(load, {e.key for e in entries}, opset, why, notes)
    edits, names = Edits(), Names(model)
    for m in mnb:
        apply(model, m, at[m.entry.key], edits, names, accuracy_level)
    for q in qdq:
        onnx_qdq.apply_decoded(q, at[q.entry.key], edits, names, reader)
    edits.apply()
    widened = sum(1 for m in mnb if m.bits != m.entry.bits)
    rounded = sum(1 for m in mnb if m.rounded_scales)
    others = sum(1 for q in qdq if q.qtype)
    notes.insert(0, f"{_count(len(mnb), 'MatMul weight')} as MatMulNBits, "
                    f"{_count(others, 'other tensor')} decoded when the model loads (as onnx-fast)")
    if widened:
        notes.append(f"{_count(widened, 'MatMul weight')} widened to the next MatMulNBits width (2, 4 or 8 bits)")
    if rounded:
        notes.append(f"{_count(rounded, 'MatMul weight')}: scales rounded to float16 (MatMulNBits takes them in the activation type)")
    notes.extend(onnx_qdq.notes_for(qdq))
    return onnx_qdq.finish(model, {MS_DOMAIN: 1} if mnb else {}, out)


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def _ort_version() -> str:
    try:
        import onnxruntime

        return str(onnxruntime.__version__)
    except ImportError:
        return "(not installed)"

