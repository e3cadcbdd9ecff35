"""`--to onnx-qdq`: each stored tensor as an integer initializer behind a DequantizeLinear node;
`--to onnx-fast`: the same integers behind Cast/Mul nodes that onnxruntime folds when it loads the model.

The graph is the source graph; only the float weights change. A weight becomes integers (the
narrowest ONNX type that holds its integer form exactly), a scale and, for asym, a zero point, with
`axis` and `block_size` following the container's grouping. DequantizeLinear's output takes the
weight's name, so every consumer, in whichever subgraph, reads it unchanged.

| container | ONNX integers | zero point |
|---|---|---|
| asym, n bits | UINT2 (n <= 2), UINT4 (n <= 4), UINT8 | the stored one |
| sym, n bits | INT2 (n = 2), INT4 (n <= 4), INT8 | none (0) |
| pow2, n bits | q = ±2^(m - lo): INT2/INT4/INT8/INT16/INT32, the narrowest that holds the group's exponent span | none |

Float16 weights take a float16 scale when every scale is a float16 (DequantizeLinear then outputs
float16); otherwise, and for bfloat16 and float64, a float32 DequantizeLinear followed by a Cast,
which rounds exactly as `qpack unpack` does.

DequantizeLinear is the standard form that QDQ toolchains read, but onnxruntime keeps it as a node (its
constant folding skips it, for the QDQ fusions) and so dequantizes every weight on every inference, and
its float kernels cannot pre-pack a weight that is not a constant: 1.5-1.8x the float model's time on
convolutional models. `onnx-fast` stores the same integers and parameters; the nodes that decode them
read constants only, so the weights are decoded once, when a session loads, and the model then runs
as fast as the float one (apply_decoded).
"""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from numpy.typing import NDArray
from onnx import ModelProto, TensorProto, helper

from qpack.converter.export.intform import IntForm, int_form
from qpack.converter.export.onnx_graph import (
    Edits,
    Names,
    Site,
    default_opset,
    load_skeleton,
    ort_runs,
    raise_opset,
    raw_tensor,
    set_opsets,
    write_model,
)
from qpack.formats.errors import UnsupportedError
from qpack.formats.qpk import QpkReader, TensorEntry, pack, scheme_spec


@dataclass(frozen=True)
class QType:
    name: str
    onnx: int
    low: int
    high: int
    bits: int
    numpy: str  # little-endian dtype of 8 bits and up
    opset: int  # the first default-domain opset whose DequantizeLinear takes it


def _qtype(name: str, bits: int, signed: bool, opset: int) -> QType:
    low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    return QType(name, getattr(TensorProto, name, -1), low, high, bits, f"<{'i' if signed else 'u'}{max(bits // 8, 1)}", opset)


# narrowest first; INT32 DequantizeLinear takes no zero point, so it is signed only
SIGNED = (_qtype("INT2", 2, True, 25), _qtype("INT4", 4, True, 21), _qtype("INT8", 8, True, 10),
          _qtype("INT16", 16, True, 21), _qtype("INT32", 32, True, 10))
UNSIGNED = (_qtype("UINT2", 2, False, 25), _qtype("UINT4", 4, False, 21), _qtype("UINT8", 8, False, 10),
            _qtype("UINT16", 16, False, 21))

_FLOAT_TYPES = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16, "bfloat16": TensorProto.BFLOAT16,
                "float64": TensorProto.DOUBLE}
_OPSET_AXIS, _OPSET_FP16_SCALE, _OPSET_BLOCKS, _OPSET_BF16_CAST = 13, 19, 21, 13
_OPSET_RANGE = 11
_OPSET_CAST = {2: 25, 4: 21}  # Cast takes INT2/UINT2 from opset 25, INT4/UINT4 from 21; wider integers from its first


def _int2_model() -> bytes:
    q = raw_tensor("q", TensorProto.INT2, [4], bytes([0b00011011]))
    s = raw_tensor("s", TensorProto.FLOAT, [], np.float32(1).tobytes())
    node = helper.make_node("DequantizeLinear", ["q", "s"], ["y"])
    graph = helper.make_graph([node], "probe", [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], [q, s])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 25)])
    model.ir_version = onnx.helper.find_min_ir_version_for([helper.make_opsetid("", 25)], ignore_unknown=True)
    return model.SerializeToString()


@functools.cache
def _has_int2() -> bool:
    return hasattr(TensorProto, "INT2") and onnx.defs.onnx_opset_version() >= 25 and ort_runs(_int2_model())


def available(types: tuple[QType, ...]) -> tuple[QType, ...]:
    """The types this onnx and onnxruntime handle: INT2/UINT2 need onnx >= 1.20 and a runtime that runs them."""
    return tuple(t for t in types if t.bits != 2 or _has_int2())


@dataclass(frozen=True)
class QdqPlan:
    """How one stored tensor is exported: integers of `qtype` (None: float values, `reason` says why)."""

    entry: TensorEntry
    form: IntForm | None
    qtype: QType | None
    scale_type: int  # TensorProto type of the scale, which is DequantizeLinear's output type
    cast_to: int | None  # the weight's type when it differs from the scale's
    reason: str = ""

    def requirement(self, decoded: bool = False) -> tuple[int, str]:
        """The first default-domain opset that has what this tensor's nodes use, and what that is
        (`decoded`: the Cast/Mul form of apply_decoded, which needs only its integer type's Cast)."""
        if self.qtype is None or self.form is None:
            return 1, ""
        if decoded:
            needs = [(_OPSET_CAST.get(self.qtype.bits, 1), f"Cast from {self.qtype.name}")]
            if self.form.grouping.kind == "block":
                needs.append((_OPSET_RANGE, "Range (blocked scales)"))
            if self.cast_to == TensorProto.BFLOAT16:
                needs.append((_OPSET_BF16_CAST, "bfloat16 casts"))
            return max(needs)
        g = self.form.grouping
        needs = [(self.qtype.opset, f"{self.qtype.name} weights")]
        if g.axis is not None:
            needs.append((_OPSET_BLOCKS, "blocked scales") if g.block else (_OPSET_AXIS, "per-channel scales"))
        if self.scale_type == TensorProto.FLOAT16:
            needs.append((_OPSET_FP16_SCALE, "float16 scales"))
        if self.cast_to == TensorProto.BFLOAT16:
            needs.append((_OPSET_BF16_CAST, "bfloat16 casts"))
        return max(needs)


def requirement(plans: list[QdqPlan], decoded: bool = False) -> tuple[int, str]:
    return max((p.requirement(decoded) for p in plans), default=(1, ""))


def _fits_float16(scale: NDArray[np.float32]) -> bool:
    with np.errstate(over="ignore"):
        s16 = scale.astype(np.float16)
    return bool(np.isfinite(s16).all() and np.array_equal(s16.astype(np.float32), scale))


def plan(reader: QpkReader, e: TensorEntry) -> QdqPlan:
    """The narrowest exact DequantizeLinear form of a stored tensor, or float when there is none."""
    dtype = _FLOAT_TYPES.get(e.dtype)
    if dtype is None:
        raise UnsupportedError(f"tensor '{e.name}': dtype {e.dtype} has no ONNX export")
    try:
        form = int_form(reader, e)
    except UnsupportedError as err:
        return QdqPlan(e, None, None, dtype, None, str(err))
    types = available(UNSIGNED if form.zero_point is not None else SIGNED)
    qtype = next((t for t in types if form.fits(t.low, t.high)), None)
    if qtype is None:
        return QdqPlan(e, None, None, dtype, None, f"tensor '{e.name}': its integers {form.low}..{form.high} fit no ONNX type")
    if dtype == TensorProto.FLOAT:
        return QdqPlan(e, form, qtype, TensorProto.FLOAT, None)
    if dtype == TensorProto.FLOAT16 and _fits_float16(form.scale):
        return QdqPlan(e, form, qtype, TensorProto.FLOAT16, None)
    return QdqPlan(e, form, qtype, TensorProto.FLOAT, dtype)


def _encode(values: NDArray[np.int32], qtype: QType) -> bytes:
    """ONNX raw_data: 2- and 4-bit integers packed LSB-first (element 0 in the low bits), wider ones little-endian."""
    if qtype.bits < 8:
        return pack((values.reshape(-1) & ((1 << qtype.bits) - 1)).astype(np.uint8), qtype.bits).tobytes()
    return np.ascontiguousarray(values, dtype=np.dtype(qtype.numpy)).tobytes()


def _param_dims(p: QdqPlan) -> list[int]:
    assert p.form is not None
    g, shape = p.form.grouping, p.entry.shape
    if g.axis is None:
        return []  # a scalar: DequantizeLinear's per-tensor form
    if g.block is None:
        return [shape[g.axis]]
    return list(g.shape(shape))


def apply(p: QdqPlan, site: Site, edits: Edits, names: Names, reader: QpkReader) -> None:
    """Replace the float tensor at `site` by integers + DequantizeLinear (or its exact float values)."""
    if p.form is None or p.qtype is None:
        values = reader.dequantize(p.entry).astype(helper.tensor_dtype_to_np_dtype(site.tensor.data_type))
        site.tensor.raw_data = values.astype(values.dtype.newbyteorder("<"), copy=False).tobytes()
        return
    form, qtype, value = p.form, p.qtype, site.value
    edit = edits.of(site)
    qname, sname = names.fresh(f"{value}_quantized"), names.fresh(f"{value}_scale")
    dims = _param_dims(p)
    scale = form.scale.astype(np.float16 if p.scale_type == TensorProto.FLOAT16 else "<f4")
    edit.inits += [raw_tensor(qname, qtype.onnx, p.entry.shape, _encode(form.q, qtype)), raw_tensor(sname, p.scale_type, dims, scale)]
    inputs = [qname, sname]
    if form.zero_point is not None:
        zname = names.fresh(f"{value}_zero_point")
        edit.inits.append(raw_tensor(zname, qtype.onnx, dims, _encode(form.zero_point, qtype)))
        inputs.append(zname)
    out = value if p.cast_to is None else names.fresh(f"{value}_dequantized")
    node = helper.make_node("DequantizeLinear", inputs, [out], name=names.fresh(f"{value}_DequantizeLinear"))
    if form.grouping.axis is not None:
        node.attribute.append(helper.make_attribute("axis", form.grouping.axis))
        if form.grouping.block:
            node.attribute.append(helper.make_attribute("block_size", form.grouping.block))
    edit.head.append(node)
    if p.cast_to is not None:
        edit.head.append(helper.make_node("Cast", [out], [value], name=names.fresh(f"{value}_Cast"), to=p.cast_to))
    edits.remove(site)


def apply_decoded(p: QdqPlan, site: Site, edits: Edits, names: Names, reader: QpkReader) -> None:
    """Replace the float tensor at `site` by integers that plain Cast, Sub and Mul nodes turn into its values.

    Every input of those nodes is a constant, so onnxruntime's constant folding (on at its default
    optimization level) computes the weight once, when the session loads, and the float kernels see
    a constant weight: they pre-pack it as they do the float model's, where a DequantizeLinear (which
    the folding leaves for its QDQ fusions) would run on every inference. The arithmetic is IntForm's,
    `(float(q) - float(zero_point)) * scale` in float32, so the folded weight is the container's values
    bit for bit, then cast to the weight's type as `qpack unpack` rounds it. Per-channel parameters
    broadcast; for blocks the integers are stored with the blocked axis split in two (the same bytes),
    so the per-block parameters broadcast too and a Reshape joins the axis again; a last block shorter
    than the others is spread instead, by a Gather of each position's block.
    """
    if p.form is None or p.qtype is None:
        apply(p, site, edits, names, reader)
        return
    form, qtype, value, shape = p.form, p.qtype, site.value, p.entry.shape
    g = form.grouping
    edit = edits.of(site)
    dims = list(g.shape(shape)) if g.axis is not None else []
    stored, spread = list(shape), False
    if g.axis is not None and g.block is not None:
        a, n = g.axis, shape[g.axis]
        if n % g.span(n) == 0:  # split the axis: (n / span, span), the parameters (n / span, 1)
            stored[a:a + 1] = [n // g.span(n), g.span(n)]
            dims[a + 1:a + 1] = [1]
        else:
            spread = True
    qname, sname = names.fresh(f"{value}_quantized"), names.fresh(f"{value}_scale")
    edit.inits += [raw_tensor(qname, qtype.onnx, stored, _encode(form.q, qtype)),
                   raw_tensor(sname, TensorProto.FLOAT, dims, form.scale.astype("<f4"))]

    def node(op: str, inputs: list[str], out: str = "", **attrs: Any) -> str:
        out = out or names.fresh("qpk")  # short: a value no one reads once the weight is folded
        edit.head.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    def constant(v: NDArray[np.int64]) -> str:
        name = names.fresh("qpk")
        edit.inits.append(raw_tensor(name, TensorProto.INT64, v.shape, v.astype("<i8")))
        return name

    block_of: list[str] = []

    def param(name: str) -> str:
        if not spread or g.axis is None:
            return name
        if not block_of:  # each position's block, Range(0, n) // span: four scalars, not n indices
            n = shape[g.axis]
            scalars = [constant(np.array(v)) for v in (0, n, 1, g.span(n))]
            block_of.append(node("Div", [node("Range", scalars[:3]), scalars[3]]))
        return node("Gather", [name, block_of[0]], axis=g.axis)

    x = node("Cast", [qname], to=TensorProto.FLOAT)
    if form.zero_point is not None:
        zname = names.fresh(f"{value}_zero_point")
        edit.inits.append(raw_tensor(zname, qtype.onnx, dims, _encode(form.zero_point, qtype)))
        x = node("Sub", [x, param(node("Cast", [zname], to=TensorProto.FLOAT))])
    weight_type = site.tensor.data_type
    last = value if weight_type == TensorProto.FLOAT else ""
    if stored != list(shape):
        x = node("Reshape", [node("Mul", [x, sname]), constant(np.array(shape))], last)
    else:
        x = node("Mul", [x, param(sname)], last)
    if weight_type != TensorProto.FLOAT:
        node("Cast", [x], value, to=weight_type)
    edits.remove(site)


def notes_for(plans: list[QdqPlan]) -> list[str]:
    """One line per kind of widening (integers stored wider than the scheme's integer form, which has no
    ONNX type of its width), one per kind of integer form wider than its codes (pow2's powers of two, dq's
    levels: their own width, nothing widened), and one per tensor left in float."""
    widened: Counter[tuple[str, int, str, str]] = Counter()
    wider: Counter[tuple[str, int, str]] = Counter()
    out = []
    for p in plans:
        if p.qtype is None:
            out.append(f"{p.reason}; kept as exact float values")
        elif p.qtype.bits != p.entry.bits and p.form is not None:
            if p.qtype.bits <= scheme_spec(p.entry.scheme).integer_bits(p.entry.bits):
                wider[(p.entry.scheme, p.entry.bits, p.qtype.name)] += 1
                continue
            top = 1 << (p.entry.bits - 1)
            why = ("the narrowest ONNX integer type here" if p.form.fits(-top, 2 * top - 1)
                   else "the smallest that holds the tensor's integers")
            widened[(p.entry.scheme, p.entry.bits, p.qtype.name, why)] += 1
    for (scheme, bits, name), n in sorted(wider.items()):
        out.insert(0, f"{n} tensor{'s' if n > 1 else ''} of {bits}-bit {scheme} codes as {name} integers (the scheme's "
                      "integer form, wider than its codes)")
    for (scheme, bits, name, why), n in sorted(widened.items()):
        out.insert(0, f"{n} tensor{'s' if n > 1 else ''} of {bits}-bit {scheme} codes stored as {name} ({why})")
    return out


def finish(model: ModelProto, extra_opsets: dict[str, int], out: Path) -> list[Path]:
    """Declare the opsets and IR version the rewritten model needs, check it and write it."""
    set_opsets(model, default_opset(model), extra_opsets)
    return write_model(model, out)


def export_onnx_qdq(reader: QpkReader, out: Path, notes: list[str], decoded: bool = False) -> list[Path]:
    """Write the container's model with every stored tensor behind a DequantizeLinear node (`decoded`:
    behind the Cast/Mul nodes onnxruntime folds at load, apply_decoded)."""
    from qpack.converter.export.onnx_fuse import raised_and_fused

    keys = [e.key for e in reader.entries]
    plans = [plan(reader, e) for e in reader.entries]
    opset, why = requirement(plans, decoded)
    if decoded:  # for onnxruntime: its float glue fused too
        model, at = raised_and_fused(lambda: load_skeleton(reader, keys), set(keys), opset, why, notes)
    else:
        model, at = load_skeleton(reader, keys)
        at = raise_opset(model, opset, {k: at[k] for k in keys}, why)
    edits, names = Edits(), Names(model)
    for p in plans:
        (apply_decoded if decoded else apply)(p, at[p.entry.key], edits, names, reader)
    edits.apply()
    notes.extend(notes_for(plans))
    return finish(model, {}, out)


def export_onnx_fast(reader: QpkReader, out: Path, notes: list[str]) -> list[Path]:
    """Write the container's model with every stored tensor as integers that onnxruntime decodes once, at load."""
    return export_onnx_qdq(reader, out, notes, decoded=True)
