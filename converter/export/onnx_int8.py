"""`--to onnx-int8`: full-integer ONNX, so onnxruntime runs its integer kernels instead of float ones.

`onnx-qdq` stores weights as integers behind DequantizeLinear: onnxruntime then dequantizes them on
every run and multiplies in float. Here activations get QuantizeLinear/DequantizeLinear pairs too:
uint8 at one scale per tensor, calibrated on inputs (export.calibrate); weights int8, symmetric,
per output channel; biases int32 at the product of the input's and the weight's scales. That is the
pattern onnxruntime fuses into QLinearConv, QLinearMatMul and QGemm (integer dot products).

| node | runs in integers when |
|---|---|
| Conv | its weight is stored, int8 per tensor or per output channel (axis 0), its bias a float constant |
| MatMul | its B is a stored 2-D weight, int8 per tensor or per column (axis 1) |
| Gemm | transA = 0, alpha = beta = 1, B stored int8 per tensor or per output channel, C a float constant [N] |

A BatchNormalization that alone reads an integer Conv's output (inference mode, its parameters float
constants) is folded into it: s = scale / sqrt(var + epsilon) per output channel scales the weight's
per-channel scales (the codes stay, negated where s < 0), the bias becomes (b - mean) * s + B, and the
Conv writes the BatchNormalization's output, so no float op sits between integer ones. A Mul by one
constant after a Conv (and the Add of one constant after it), PaddlePaddle's learnable affine blocks,
folds the same way, as s * x + t. The same affine after a float op, read only by integer nodes, goes
into their QuantizeLinear instead (_Absorbed).

Only the main graph's nodes qualify; a node's float output stays float where it is a graph output
(an 8-bit model output would cost fidelity for no speed). Every other stored tensor is exported as
`onnx-fast` does (decoded when the model loads, so the float nodes run at their own speed). The
export then runs both models on the calibration inputs and notes the least output cosine of the
integer model (onnxruntime's fused kernels) against the container's values.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from onnx import ModelProto, NodeProto, TensorProto, helper, numpy_helper

from qpack.converter.datasets import Inputs
from qpack.converter.export import onnx_qdq
from qpack.converter.export.calibrate import (
    CALIBRATION_SHARE,
    CHECK_INPUTS,
    LEVELS,
    Calibration,
    Range,
    by_harm,
    feeds,
    fewest_in_float,
    least_cosine,
    ranges,
    restored_as,
)
from qpack.converter.export.intform import IntForm
from qpack.converter.export.onnx_fuse import fold_conv_affines, raised_and_fused
from qpack.converter.export.onnx_graph import Edits, Names, Site, load_skeleton, raw_tensor, readers
from qpack.formats.errors import UnsupportedError
from qpack.formats.onnx_keys import DEFAULT_DOMAINS, walk_sites
from qpack.formats.qpk import Grouping, QpkReader

INT8 = next(t for t in onnx_qdq.SIGNED if t.name == "INT8")
_OPSET_PER_AXIS = 13
_INT32_MAX = (1 << 31) - 1
_BN_EPSILON = 1e-5  # BatchNormalization's default epsilon


@dataclass(frozen=True)
class _Fold:
    """A per-channel affine y = s * x + t folded into the Conv before it (a BatchNormalization, or a Mul by a
    constant and an Add of one): the nodes (removed; the last one's output is the Conv's now) and the new bias."""

    nodes: tuple[NodeProto, ...]
    bias: NDArray[np.float64]  # b * s + t, one per output channel
    kind: str  # what was folded: "BatchNormalization" or "Mul/Add"

    @property
    def output(self) -> str:
        return self.nodes[-1].output[0]


@dataclass
class _IntNode:
    node: NodeProto
    weight: onnx_qdq.QdqPlan  # the folded weight where an affine is folded in (_Fold)
    bias: Site | None
    fold: _Fold | None = None
    unfolded: tuple[str, str] | None = None  # what alone reads the Conv's output and stays float, and why
    shift: NDArray[np.float64] | None = None  # added to the bias: an absorbed affine's t times the weight's sums (_Absorbed)

    @property
    def output(self) -> str:
        """The value the node makes once rewritten: the folded affine's output, else its own."""
        return self.fold.output if self.fold is not None else self.node.output[0]

    def bias_values(self) -> tuple[str, NDArray[np.float64]] | None:
        """The bias (a name to derive new names from, and its values, `shift` added), None when there is none."""
        if self.fold is not None:
            got = self.fold.output + "_folded_bias", self.fold.bias
        elif self.bias is not None:
            got = self.bias.value, numpy_helper.to_array(self.bias.tensor).astype(np.float64).reshape(-1)
        elif self.shift is not None:
            return self.output + "_shift_bias", self.shift
        else:
            return None
        return got if self.shift is None else (got[0], got[1] + self.shift)

    def weight_sums(self) -> NDArray[np.float64] | None:
        """Each output channel's sum of the weight's values, what adding 1 to every input adds to that output,
        for a Conv without padding (every output's window lies wholly inside the input); else None."""
        attrs = {a.name: helper.get_attribute_value(a) for a in self.node.attribute}
        if (self.node.op_type != "Conv" or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID")
                or any(attrs.get("pads", []))):
            return None
        assert self.weight.form is not None
        w = self.weight.form.values().astype(np.float64)
        return w.reshape(w.shape[0], -1).sum(axis=1)


def _channel_axis(node: NodeProto) -> int:
    """The axis of the weight that holds output channels, for the node reading it as its second input."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "Gemm":
        return 0 if next((a.i for a in node.attribute if a.name == "transB"), 0) else 1
    return 1  # MatMul's B is [K, N]


def _why_not(node: NodeProto, plans: dict[str, onnx_qdq.QdqPlan], consts: dict[str, Site]) -> str:
    """Why a Conv/MatMul/Gemm of the main graph cannot run in integers ('' when it can)."""
    if len(node.input) < 2 or node.input[1] not in plans:
        return "its weight is not a stored tensor"
    if node.input[0] in consts or node.input[0] in plans:
        return "its input is a constant"
    p = plans[node.input[1]]
    if p.form is None or not p.form.centered().fits(INT8.low, INT8.high):
        return "its weight has no symmetric int8 form"
    if p.entry.dtype != "float32":
        return f"its weight is {p.entry.dtype}"
    g = p.form.grouping
    if g.block is not None or (g.axis is not None and g.axis != _channel_axis(node)):
        return "its weight's scales are not per tensor or per output channel"
    if node.op_type == "MatMul" and len(p.entry.shape) != 2:
        return "its weight is not 2-D"
    if node.op_type == "Gemm":
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
            return "a Gemm with transA, alpha or beta"
    if len(node.input) > 2 and node.input[2]:
        b = consts.get(node.input[2])
        if b is None or b.tensor.data_type != TensorProto.FLOAT or node.input[2] in plans:
            return "its bias is not a float constant"
    return ""


def _int_nodes(model: ModelProto, plans: dict[str, onnx_qdq.QdqPlan], consts: dict[str, Site]) -> tuple[list[_IntNode], Counter[str]]:
    out, skipped = [], Counter[str]()
    read_by = readers(model)
    main = {id(nd) for nd in model.graph.node}
    outputs = {o.name for o in model.graph.output}
    for node in model.graph.node:
        if node.op_type not in ("Conv", "MatMul", "Gemm") or node.domain not in DEFAULT_DOMAINS:
            continue
        why = _why_not(node, plans, consts)
        if why:
            skipped[f"{node.op_type}: {why}"] += 1
            continue
        bias = consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        n = _IntNode(node, _centered(plans[node.input[1]]), bias)
        after = read_by.get(node.output[0], [])
        if node.op_type == "Conv" and len(after) == 1 and after[0].domain in DEFAULT_DOMAINS and id(after[0]) in main:
            affine = _AFFINES.get(after[0].op_type)
            found = affine(after[0], node.output[0], plans, consts, read_by, outputs, n.weight.entry.shape[0]) if affine else None
            folded = _fold(n, found, read_by, outputs) if isinstance(found, tuple) else found
            if isinstance(folded, str):
                n.unfolded = after[0].op_type if not isinstance(found, tuple) else found[3], folded
            elif folded is not None:
                n.weight, n.fold = folded
        out.append(n)
    return out, skipped


def _centered(p: onnx_qdq.QdqPlan) -> onnx_qdq.QdqPlan:
    """An asym weight's plan with its zero points folded into the integers (code - zero point, one bit wider:
    4-bit codes fit int8), as the symmetric int8 weights of onnxruntime's integer kernels hold them."""
    return p if p.form is None else replace(p, form=p.form.centered())


Affine = tuple[NDArray[np.float64], NDArray[np.float64], tuple[NodeProto, ...], str]  # s, t, the nodes, their kind


def _float_constant(name: str, plans: dict[str, onnx_qdq.QdqPlan], consts: dict[str, Site]) -> NDArray[np.float64] | None:
    """A float32 constant's values, flat (None where `name` is not one, or is stored in the container)."""
    site = consts.get(name)
    if name in plans or site is None or site.tensor.data_type != TensorProto.FLOAT:
        return None
    return numpy_helper.to_array(site.tensor).astype(np.float64).reshape(-1)


def _batch_norm(bn: NodeProto, x: str, plans: dict[str, onnx_qdq.QdqPlan], consts: dict[str, Site],
                readers: dict[str, list[NodeProto]], outputs: set[str], channels: int) -> Affine | str:
    """A BatchNormalization reading `x` as s * x + t: s = scale / sqrt(var + epsilon), t = B - mean * s."""
    attrs = {a.name: helper.get_attribute_value(a) for a in bn.attribute}
    if bn.input[0] != x:
        return "it reads the Conv's output as a parameter"
    if attrs.get("training_mode", 0):
        return "it is in training mode"
    if len(bn.input) != 5 or any(o and (readers.get(o) or o in outputs) for o in bn.output[1:]):
        return "it has more than one output in use"
    params = []
    for name in bn.input[1:]:
        got = _float_constant(name, plans, consts)
        if got is None:
            return "its parameters are not float constants"
        params.append(got)
    if any(p.size != channels for p in params):
        return "its parameters are not one per output channel"
    gamma, beta, mean, var = params
    with np.errstate(all="ignore"):
        s = gamma / np.sqrt(var + np.float64(np.float32(attrs.get("epsilon", _BN_EPSILON))))
        return s, beta - mean * s, (bn,), "BatchNormalization"


def _scalar_mul_add(mul: NodeProto, x: str, plans: dict[str, onnx_qdq.QdqPlan], consts: dict[str, Site],
                    readers: dict[str, list[NodeProto]], outputs: set[str], channels: int) -> Affine | None:
    """A Mul of `x` by one constant, and the Add of one constant that alone reads it if there is one, as
    s * x + t (PaddlePaddle's learnable affine blocks after a Conv); None where `mul` is no such node."""
    if len(mul.input) != 2 or x not in mul.input or mul.input[0] == mul.input[1]:
        return None
    s = _float_constant(mul.input[1] if mul.input[0] == x else mul.input[0], plans, consts)
    if s is None or s.size != 1:
        return None
    nodes: tuple[NodeProto, ...] = (mul,)
    t = np.zeros(1)
    after = readers.get(mul.output[0], [])
    if mul.output[0] not in outputs and len(after) == 1 and after[0].op_type == "Add" and after[0].domain in DEFAULT_DOMAINS:
        add = after[0]
        if len(add.input) == 2 and mul.output[0] in add.input and add.input[0] != add.input[1]:
            c = _float_constant(add.input[1] if add.input[0] == mul.output[0] else add.input[0], plans, consts)
            if c is not None and c.size == 1:
                nodes, t = (mul, add), c
    return np.broadcast_to(s, (channels,)), np.broadcast_to(t, (channels,)), nodes, "Mul/Add"


# what may follow a Conv and fold into it, by op
_AFFINES: dict[str, Callable[..., Affine | str | None]] = {"BatchNormalization": _batch_norm, "Mul": _scalar_mul_add}


def _fold(n: _IntNode, affine: Affine, readers: dict[str, list[NodeProto]], outputs: set[str]) -> tuple[onnx_qdq.QdqPlan, _Fold] | str:
    """The Conv's weight and bias with the per-channel affine s * x + t after it folded in, or why it cannot be.

    With the weight per output channel as codes q at scales d, the folded weight is q at d * |s|: the codes
    stay, so the folded Conv holds the container's values times s, whichever order float rounding takes them
    in. A channel with s < 0 takes -q, which int8 holds when no code of it is -128. The bias becomes b * s + t.
    """
    s, t, nodes, kind = affine
    node, plan = n.node, n.weight
    assert plan.form is not None
    if node.output[0] in outputs:
        return "the Conv's output is a graph output"
    if len(readers.get(node.input[1], [])) != 1:
        return "the Conv's weight is read by other nodes too"
    if not np.all(np.isfinite(s) & (s != 0)) or not np.all(np.isfinite(t)):
        return f"a channel's {'scale / sqrt(var + epsilon)' if kind == 'BatchNormalization' else 'factor'} is 0 or not finite"
    channels = plan.entry.shape[0]
    form = plan.form
    shape = (channels,) + (1,) * (len(plan.entry.shape) - 1)
    negate = s < 0
    if np.any(form.q[negate] == INT8.low):
        return f"a channel it negates holds the code {INT8.low}, which int8 cannot negate"
    d = np.broadcast_to(form.scale.astype(np.float64), (channels,))
    with np.errstate(all="ignore"):
        scale = (d * np.abs(s)).astype(np.float32)
    if not np.all(np.isfinite(scale) & (scale > 0)):
        return "its folded weight scales leave float32's range"
    b = n.bias_values()
    if b is not None and b[1].size != channels:
        return "the Conv's bias is not one per output channel"
    with np.errstate(all="ignore"):
        bias = (b[1] if b is not None else 0.0) * s + t
    if not np.all(np.isfinite(bias)):
        return "its folded bias is not finite"
    entry = replace(plan.entry, grouping=Grouping(axis=0))
    q = np.where(negate.reshape(shape), -form.q, form.q).astype(np.int32)
    return replace(plan, entry=entry, form=IntForm(entry, q, scale, None)), _Fold(nodes, np.asarray(bias, np.float64), kind)


_ABSORB_STEPS = 8  # |t| in activation steps from which t is made a whole number of them (the step grows <= 1/8)


@dataclass(frozen=True)
class _Absorbed:
    """A scalar affine value = s * x + t (a Mul by s > 0, the Add of t that alone reads it: PaddlePaddle's
    learnable affine blocks after an activation) whose only readers are integer nodes, computed by the
    QuantizeLinear in front of them: round(value / step) + z = round(x / (step / s)) + (z + t / step) when
    t / step is a whole number `steps` (the step grows to make it one, where |t / step| >= _ABSORB_STEPS: the
    range covers what it did, nothing more is clipped), so both nodes go. Where every reader is a Conv without
    padding (`into_bias`), t goes into their biases instead, t times each output channel's weight sum, and
    the quantization takes s * x alone, at the range moved by -t: both nodes go, t is rounded only as the
    biases are. Otherwise (steps 0) only the Mul goes: the Add adds t / s to x, and the step is divided by s."""

    x: str
    s: float
    t: float
    mul: NodeProto
    add: NodeProto
    steps: int = 0
    into_bias: bool = False

    @property
    def whole(self) -> bool:
        """Both nodes go (the quantization computes the whole affine, t included or moved to the biases)."""
        return self.steps != 0 or self.into_bias


def _affine_before(a: str, made_by: dict[str, NodeProto], read_by: dict[str, list[NodeProto]], integer: set[int],
                   outputs: set[str], plans: dict[str, onnx_qdq.QdqPlan], consts: dict[str, Site]) -> _Absorbed | None:
    """The scalar affine making `a` (as _scalar_mul_add finds one after a Conv), where only integer nodes read `a`."""
    add = made_by.get(a)
    if (add is None or add.op_type != "Add" or a in outputs
            or any(id(r) not in integer or r.input[0] != a for r in read_by.get(a, []))):
        return None
    for mul in (made_by[i] for i in add.input if i in made_by and made_by[i].op_type == "Mul"):
        for x in mul.input if mul.domain in DEFAULT_DOMAINS else ():
            found = _scalar_mul_add(mul, x, plans, consts, read_by, outputs, 1)
            if found is not None and len(found[2]) == 2 and found[2][1] is add:
                s, t = float(found[0][0]), float(found[1][0])
                if math.isfinite(s) and s > 0 and math.isfinite(t):
                    return _Absorbed(x, s, t, mul, add)
    return None


def _absorbed(affine: _Absorbed, r: Range, readers: list[_IntNode]) -> tuple[_Absorbed, Range]:
    """The affine with t moved into the readers' biases (their `shift` set) and the range moved by -t, or with
    its whole number of steps and the range widened to make t one, or unmoved (steps 0)."""
    sums = [n.weight_sums() for n in readers]
    zero = round(r.zero_point + affine.t / r.scale)
    if readers and all(w is not None for w in sums) and 0 <= zero <= LEVELS:
        for reader, w in zip(readers, sums):  # (each reads `a` alone: one affine each)
            assert w is not None
            reader.shift = affine.t * w
        return replace(affine, into_bias=True), Range(-zero * r.scale, (LEVELS - zero) * r.scale, r.sqnr_db)
    n = affine.t / r.scale
    if abs(n) < _ABSORB_STEPS:
        return affine, r
    steps = math.trunc(n)  # toward zero: the step grows
    step = affine.t / steps
    zero = int(np.clip(np.round(-r.low / step), 0, LEVELS))
    if not 0 <= zero + steps <= LEVELS:
        return affine, r
    return replace(affine, steps=steps), Range(-zero * step, (LEVELS - zero) * step, r.sqnr_db)


def _scalar(name: str, data_type: int, value: np.generic) -> TensorProto:
    return raw_tensor(name, data_type, [], value.tobytes())


class _Rewriter:
    """Activation QuantizeLinear/DequantizeLinear pairs and int32 biases around the integer nodes."""

    def __init__(self, names: Names, acts: dict[str, Range]) -> None:
        self.names, self.acts = names, acts
        self.inits: list[TensorProto] = []
        self.params: dict[str, tuple[str, str]] = {}  # activation -> its scale and zero point initializers

    def _params(self, value: str) -> tuple[str, str]:
        if value not in self.params:
            r = self.acts[value]
            s, z = self.names.fresh(f"{value}_act_scale"), self.names.fresh(f"{value}_act_zero_point")
            self.inits += [_scalar(s, TensorProto.FLOAT, np.float32(r.scale)), _scalar(z, TensorProto.UINT8, np.uint8(r.zero_point))]
            self.params[value] = (s, z)
        return self.params[value]

    def pair(self, value: str, into: str, out: str, affine: _Absorbed | None = None) -> list[NodeProto]:
        """Quantize `into` and dequantize it as `out`, at the range calibrated for `value`; with `affine`,
        `into` is the x of value = s * x + t, and the quantization computes the affine (see _Absorbed)."""
        s, z = self._params(value)
        qs, qz = s, z
        if affine is not None:
            r = self.acts[value]
            qs, qz = self.names.fresh(f"{value}_absorbed_scale"), self.names.fresh(f"{value}_absorbed_zero_point")
            self.inits += [_scalar(qs, TensorProto.FLOAT, np.float32(r.scale / affine.s)),
                           _scalar(qz, TensorProto.UINT8, np.uint8(r.zero_point + affine.steps))]
        q = self.names.fresh(f"{value}_quantized_act")
        return [helper.make_node("QuantizeLinear", [into, qs, qz], [q], name=self.names.fresh(f"{value}_QuantizeLinear")),
                helper.make_node("DequantizeLinear", [q, s, z], [out], name=self.names.fresh(f"{value}_DequantizeLinear"))]

    def hard_swish(self, x: str, y: str) -> list[NodeProto]:
        """y = x * HardSigmoid(x) = x * Clip(x + 3, 0, 6) / 6 from the uint8 integers x is dequantized from, as
        nodes onnxruntime fuses into QLinearAdd and QLinearMul: x + 3 quantized at step 6/255 and zero point 0
        (uint8's saturation is the Clip), dequantized at step 1/255 (the / 6), so the gate is
        HardSigmoid(x) on 255 levels; the product is quantized by the QuantizeLinear reading y."""
        q3, unit, zero, gate_step, gate_unit = (self.names.fresh(f"{y}_{k}") for k in ("three", "unit", "zero", "gate_step", "gate_unit"))
        self.inits += [_scalar(q3, TensorProto.UINT8, np.uint8(3)), _scalar(unit, TensorProto.FLOAT, np.float32(1.0)),
                       _scalar(zero, TensorProto.UINT8, np.uint8(0)),
                       _scalar(gate_step, TensorProto.FLOAT, np.float32(6 / LEVELS)),
                       _scalar(gate_unit, TensorProto.FLOAT, np.float32(1 / LEVELS))]
        three, shifted, gate_q, gate = (self.names.fresh(f"{y}_{k}") for k in ("three_dequantized", "plus_three", "gate_quantized", "gate"))
        return [helper.make_node("DequantizeLinear", [q3, unit, zero], [three]),
                helper.make_node("Add", [x, three], [shifted]),
                helper.make_node("QuantizeLinear", [shifted, gate_step, zero], [gate_q]),
                helper.make_node("DequantizeLinear", [gate_q, gate_unit, zero], [gate]),
                helper.make_node("Mul", [x, gate], [y], name=self.names.fresh(f"{y}_HardSwish"))]

    def bias(self, n: _IntNode, input_scale: float) -> tuple[str, list[NodeProto]] | None:
        """The node's bias as int32 at input scale x weight scale, behind a DequantizeLinear; None when
        a value would overflow int32."""
        got = n.bias_values()
        assert got is not None and n.weight.form is not None
        value, b = got
        w_scale = n.weight.form.scale.astype(np.float64)
        scale = (np.float32(input_scale) * w_scale.astype(np.float32)).astype(np.float32)
        scale = np.broadcast_to(scale, b.shape).copy() if scale.size == 1 else scale
        if scale.size != b.size or not np.all(scale > 0):
            return None
        q = np.round(b / scale.astype(np.float64))
        if not np.all(np.abs(q) <= _INT32_MAX):
            return None
        qn, sn, out = (self.names.fresh(f"{value}_int32"), self.names.fresh(f"{value}_int32_scale"),
                       self.names.fresh(f"{value}_dequantized"))
        self.inits += [raw_tensor(qn, TensorProto.INT32, [b.size], q.astype("<i4")),
                       raw_tensor(sn, TensorProto.FLOAT, [b.size], scale.astype("<f4"))]
        node = helper.make_node("DequantizeLinear", [qn, sn], [out], name=self.names.fresh(f"{value}_DequantizeLinear"), axis=0)
        return out, [node]

    def float_bias(self, n: _IntNode) -> str:
        """A folded bias as a float32 initializer (where int32 cannot hold it)."""
        got = n.bias_values()
        assert got is not None
        value, b = got
        name = self.names.fresh(value)
        self.inits.append(raw_tensor(name, TensorProto.FLOAT, [b.size], b.astype("<f4")))
        return name


def export_onnx_int8(reader: QpkReader, out: Path, notes: list[str], calibration: Calibration | None = None) -> list[Path]:
    """Write the container's model with its Conv, MatMul and Gemm nodes in integers, activations calibrated on
    inputs; where the outputs then fall below `calibration.min_cosine` on them, the nodes that harm them most
    (each measured alone integer, calibrate.by_harm) go back to float (a bisection over how many), so what is
    integer keeps the goal."""
    from qpack.converter.convert import restore
    from qpack.formats.atomic import scratch_folder

    if calibration is None:
        raise UnsupportedError("--to onnx-int8 calibrates activation ranges: give --inputs, --images or --dataset")
    base = _Base.of(reader, notes)
    model, _, plans, consts = base.copy()
    chosen, skipped = _int_nodes(model, plans, consts)
    after = _pairs_after(model, chosen)
    paired = set(after.values())
    act_names = list(dict.fromkeys([n.node.input[0] for n in chosen if n.node.input[0] not in paired] + sorted(paired)))
    with scratch_folder("qpack-calibrate-") as tmp, restored_as(reader.path, Path(tmp) / "float.onnx"):
        float_model = Path(tmp) / "float.onnx"
        restore(reader.path, float_model)
        inputs = calibration.load(float_model)
        acts = ranges(float_model, act_names, inputs, calibration.method) if act_names else {}

        def harm(n: _IntNode) -> float:  # the worse-quantized activation around the node, in dB
            values = [n.node.input[0], after.get(id(n.node), "")]
            return min((acts[v].sqnr_db for v in values if v in acts), default=np.inf)

        trial = Path(tmp) / "trial.onnx"
        reference = _outputs(float_model, inputs)

        def fidelity(kept: set[int]) -> float:
            _build(reader, base, kept, acts, trial, [])
            return least_cosine(zip(reference, _outputs(trial, inputs)))

        order = sorted(range(len(chosen)), key=lambda i: harm(chosen[i]))  # the first go back to float first
        tried: dict[int, float] = {0: fidelity(set(order))}
        if tried[0] < calibration.floor:  # measured: each node alone integer
            order = by_harm(order, lambda i: fidelity({i}))

        def cosine(k: int) -> float:
            if k not in tried:
                tried[k] = fidelity(set(order[k:]))
            return tried[k]

        k = fewest_in_float(len(chosen), cosine, calibration, notes)
        kept = set(order[k:])
        written = _build(reader, base, kept, acts, out, notes)
        notes.insert(0, _summary([chosen[i] for i in sorted(kept)], skipped, calibration.method, inputs.count, k)
                     + f"; least output cosine {cosine(k):.6f} on the calibration inputs, against the container's float values")
    return written


@dataclass
class _Base:
    """The stored graph at an opset with per-axis DequantizeLinear, and each stored tensor's plan by key:
    made once (the opset move and the plans' exactness checks cost the most), copied for each trial."""

    model: ModelProto  # never edited
    at: dict[str, Site]  # every constant's site in it, by container key
    by_key: dict[str, onnx_qdq.QdqPlan]

    @classmethod
    def of(cls, reader: QpkReader, notes: list[str]) -> _Base:
        keys = [e.key for e in reader.entries]
        by_key = {e.key: onnx_qdq.plan(reader, e) for e in reader.entries}
        opset, why = onnx_qdq.requirement(list(by_key.values()))
        opset, why = max((opset, why), (_OPSET_PER_AXIS, "per-axis DequantizeLinear"))
        model, at = raised_and_fused(lambda: load_skeleton(reader, keys), set(keys), opset, why, notes, affines=False)
        return cls(model, at, by_key)

    def copy(self) -> tuple[ModelProto, dict[str, Site], dict[str, onnx_qdq.QdqPlan], dict[str, Site]]:
        """A copy to edit: the model, its sites by key, the main graph's plans and constants by value."""
        model = ModelProto()
        model.CopyFrom(self.model)
        found = {(s.scope, s.value, s.node is None): s for s in walk_sites(model.graph)}  # the same places in the copy
        at = {k: found[(s.scope, s.value, s.node is None)] for k, s in self.at.items()}
        plans = {at[k].value: p for k, p in self.by_key.items() if at[k].scope == ""}
        consts = {s.value: s for s in at.values() if s.scope == ""}
        return model, at, plans, consts


def _build(reader: QpkReader, base: _Base, kept: set[int], acts: dict[str, Range], out: Path, notes: list[str]) -> list[Path]:
    """Write the model with the integer candidates numbered in `kept` (in _int_nodes' order) made integer."""
    model, at, plans, consts = base.copy()
    by_key = base.by_key
    edits, names = Edits(), Names(model)
    for key in (k for k in by_key if at[k].scope):  # subgraphs first: the main graph's rewrite below copies them
        onnx_qdq.apply_decoded(by_key[key], at[key], edits, names, reader)
    edits.apply()
    candidates, _ = _int_nodes(model, plans, consts)
    chosen = [n for i, n in enumerate(candidates) if i in kept]
    fold_conv_affines(model, frozenset(plans), frozenset(id(n.node) for n in chosen), notes)
    widened, absorbed, swishes = _rewrite(model, chosen, acts, _pairs_after(model, chosen), plans, consts)
    int_weights = {n.node.input[1]: n.weight for n in chosen}  # a folded Conv's weight carries the fold
    edits, names = Edits(), Names(model)
    for key, p in ((k, p) for k, p in by_key.items() if not at[k].scope):
        integer = int_weights.get(at[key].value)
        if integer is None:
            onnx_qdq.apply_decoded(p, at[key], edits, names, reader)
            continue
        if integer.form is not None:
            # the integer kernels take int8 (narrower codes widen), with explicit zero points (QGemm's fusion asks)
            integer = replace(integer, qtype=INT8, form=replace(integer.form, zero_point=integer.form.zero_points()))
        onnx_qdq.apply(integer, at[key], edits, names, reader)  # DequantizeLinear: the integer kernels' fusion reads it
    read = set(readers(model))  # subgraphs read outer values too
    outputs = {o.name for o in model.graph.output}
    for site in consts.values():  # float biases now stored as int32, read by no node
        if site.key not in by_key and site.value not in read and site.value not in outputs:
            edits.remove(site)
    edits.apply()
    if widened:
        notes.append(f"{widened} weight{'s' if widened > 1 else ''} of integer nodes stored as INT8 (narrower codes widened)")
    if swishes:
        notes.append(f"{swishes} HardSwish between integer nodes computed in integers (onnxruntime's QLinearAdd and QLinearMul)")
    if absorbed:
        whole, biased = sum(a.steps != 0 for a in absorbed), sum(a.into_bias for a in absorbed)
        notes.append(f"{len(absorbed)} scalar Mul/Add before integer nodes computed by their QuantizeLinear "
                     f"({biased} with the Add in the next nodes' biases, {whole} whole, "
                     f"{len(absorbed) - whole - biased} the Mul only)")
    notes.extend(onnx_qdq.notes_for(list(by_key.values())))
    return onnx_qdq.finish(model, {}, out)


def _pairs_after(model: ModelProto, chosen: list[_IntNode]) -> dict[int, str]:
    """The integer nodes (by id) whose output gets a quantize/dequantize pair, and the value it makes:
    the node's output (a folded affine's), or, where a Relu alone reads it, the Relu's, the
    Relu then dropped: its range starts at zero, so the uint8 zero point is 0 and quantizing clamps
    exactly as the Relu did (what onnxruntime's own quantizer does). None for a graph output. The
    values are the float model's, so the ranges calibrated on it are the ones the pairs take."""
    from qpack.converter.export.onnx_graph import consumers

    outputs = {o.name for o in model.graph.output}
    out: dict[int, str] = {}
    for n in chosen:
        y = n.output
        if y in outputs:
            continue
        readers = consumers(model, y)
        if len(readers) == 1 and readers[0].op_type == "Relu" and any(r is readers[0] for r in model.graph.node):
            y = readers[0].output[0]
        out[id(n.node)] = y
    return out


# ops that only move or pick their input's values: their output lies on the input's integer grid
_MOVES = {"MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze"}


def _grid(a: str, made_by: dict[str, NodeProto], paired: set[str]) -> str:
    """The value whose range quantizes `a`: a paired value `a` comes out of through ops that only move or pick
    values (quantizing at its range is exact, and onnxruntime then runs those ops on the integers, MaxPool
    included, where different ranges on their two sides would keep them float); else `a` itself."""
    at = a
    for _ in range(16):  # a bound, where a hostile graph loops
        if at in paired:
            return at
        node = made_by.get(at)
        if node is None or node.op_type not in _MOVES or node.domain not in DEFAULT_DOMAINS or len([o for o in node.output if o]) != 1:
            return a
        at = node.input[0]
    return a


def _rewrite(model: ModelProto, chosen: list[_IntNode], acts: dict[str, Range], after: dict[int, str],
             plans: dict[str, onnx_qdq.QdqPlan], consts: dict[str, Site]) -> tuple[int, list[_Absorbed], int]:
    """Put the activation pairs and int32 biases around the integer nodes of the main graph (and
    pairs after the nodes of `after`), scalar affines in front of them absorbed into their quantization
    (_Absorbed; `plans` and `consts` give the constants) and hard-swishes between them made integer
    (_integer_hard_swishes); returns how many integer nodes' weights are stored narrower than int8 (they
    widen), the affines absorbed and how many hard-swishes are integer."""
    names = Names(model)
    acts = dict(acts)  # an absorbed affine moves its range (this build only)
    rw = _Rewriter(names, acts)
    by_node = {id(n.node): n for n in chosen}
    paired = set(after.values())
    head: list[NodeProto] = []
    dq_of: dict[str, str] = {}
    quantized: set[str] = set()  # what the pairs in front of integer nodes quantize
    nodes: list[NodeProto] = []
    int_outputs = {n.output for n in chosen}
    folded = {id(f) for n in chosen if n.fold is not None for f in n.fold.nodes}
    made_by = {o: node for node in model.graph.node for o in node.output}
    read_by, outputs = readers(model), {o.name for o in model.graph.output}
    affines: dict[str, _Absorbed] = {}
    for a in dict.fromkeys(c.node.input[0] for c in chosen):
        if a in paired or _grid(a, made_by, paired) != a or a not in acts:
            continue
        found = _affine_before(a, made_by, read_by, set(by_node), outputs, plans, consts)
        if found is not None:
            affines[a], acts[a] = _absorbed(found, acts[a], [c for c in chosen if c.node.input[0] == a])
    for a, f in affines.items():  # the Mul goes; the Add too where the quantization takes t whole, else it adds t / s
        folded.add(id(f.mul))
        if f.whole:
            folded.add(id(f.add))
        else:
            c = names.fresh(f"{a}_absorbed_offset")
            rw.inits.append(_scalar(c, TensorProto.FLOAT, np.float32(f.t / f.s)))
            f.add.input[0], f.add.input[1] = f.x, c
    for node in model.graph.node:
        n = by_node.get(id(node))
        if n is None:
            if id(node) not in folded and not (node.op_type == "Relu" and node.output[0] in paired and node.input[0] in int_outputs):
                nodes.append(node)  # (a Relu is taken into the pair before it, a folded BatchNormalization into its Conv)
            continue
        a = node.input[0]
        grid = _grid(a, made_by, paired)
        if a not in paired:  # an input not already behind a pair: quantize it here
            if a not in dq_of:
                dq_of[a] = names.fresh(f"{a}_dequantized_act")
                affine = affines.get(a)
                into = affine.x if affine is not None and affine.whole else a
                quantized.add(into)
                nodes += rw.pair(grid, into, dq_of[a], affine)
            node.input[0] = dq_of[a]
        if n.bias_values() is not None:
            got = rw.bias(n, acts[grid].scale)
            if got is None and (n.fold is not None or n.shift is not None):
                got = rw.float_bias(n), []
            if got is not None:
                while len(node.input) < 3:
                    node.input.append("")
                node.input[2], made = got
                head += made
        if n.fold is not None:
            node.output[0] = n.fold.output
        nodes.append(node)
        if id(node) in after:
            y = after[id(node)]
            node.output[0] = names.fresh(f"{y}_float")
            nodes += rw.pair(y, node.output[0], y)
    main = {id(n) for n in model.graph.node}
    outside = outputs | {v for v, rs in read_by.items() if any(id(r) not in main for r in rs)}  # subgraphs read outer values
    nodes, swishes = _integer_hard_swishes(nodes, paired, quantized, outside, rw)
    del model.graph.node[:]
    model.graph.node.extend(head + nodes)
    model.graph.initializer.extend(rw.inits)
    widened = sum(n.weight.qtype is not None and n.weight.qtype.name != "INT8" for n in chosen)
    return widened, list(affines.values()), swishes


def _integer_hard_swishes(nodes: list[NodeProto], paired: set[str], quantized: set[str], outside: set[str],
                          rw: _Rewriter) -> tuple[list[NodeProto], int]:
    """`nodes` with each HardSwish between integer nodes (its input a pair's dequantized value, its output read
    only by the QuantizeLinear in front of integer nodes: not by a graph output or a subgraph, in `outside`)
    written as _Rewriter.hard_swish's integer ops; how many."""
    reads = Counter(i for n in nodes for i in dict.fromkeys(n.input))
    out: list[NodeProto] = []
    made = 0
    for n in nodes:
        if (n.op_type == "HardSwish" and n.domain in DEFAULT_DOMAINS and n.input[0] in paired and n.output[0] in quantized
                and reads[n.output[0]] == 1 and n.output[0] not in outside):
            out += rw.hard_swish(n.input[0], n.output[0])
            made += 1
        else:
            out.append(n)
    return out, made


def _summary(chosen: list[_IntNode], skipped: Counter[str], method: str, count: int, back: int) -> str:
    ops = Counter(n.node.op_type for n in chosen)
    ran = ", ".join(f"{k} {v}" for k, v in sorted(ops.items())) or "none"
    out = f"integer nodes ({method} ranges on {count} inputs): {ran}"
    folds = Counter(n.fold.kind for n in chosen if n.fold is not None)
    for kind, k in sorted(folds.items()):
        out += f"; {k} {kind} folded into their Conv"
    unfolded = Counter(n.unfolded for n in chosen if n.unfolded)
    if unfolded:
        for kind in sorted({k for k, _ in unfolded}):
            out += f"; {kind} kept in float: " + ", ".join(f"{v} ({why})" for (k, why), v in sorted(unfolded.items()) if k == kind)
    if back:
        out += f"; {back} kept in float for the outputs' cosine (the most harmful, each measured alone)"
    if skipped:
        out += "; float: " + ", ".join(f"{v} {k}" for k, v in sorted(skipped.items()))
    return out


def _outputs(model: Path, inputs: Inputs) -> list[list[NDArray]]:
    """The model's outputs on the first CHECK_INPUTS inputs, in onnxruntime at its default optimizations
    (the fused integer kernels)."""
    import onnxruntime as ort

    o = ort.SessionOptions()
    o.intra_op_num_threads = 2
    o.log_severity_level = 4
    session = ort.InferenceSession(str(model), o, providers=["CPUExecutionProvider"])
    return [session.run(None, f) for f, _ in zip(feeds(inputs), range(CHECK_INPUTS))]


__all__ = ["CALIBRATION_SHARE", "Calibration", "export_onnx_int8"]
