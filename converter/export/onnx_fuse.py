"""Float glue, fused into the single ops onnxruntime runs in one pass (the exports made for onnxruntime:
onnx-fast, onnx-matmulnbits, onnx-int8; onnx-qdq keeps the source graph for other toolchains).

PaddlePaddle exports hard-swish as four elementwise nodes, `x * Clip(x + 3, 0, 6) / 6`, and
MobileNetV3-style models run it after most convolutions: four passes over each activation. In a
full-integer export those nodes stay float between a DequantizeLinear and a QuantizeLinear and take
as long as the int8 convolutions themselves (the OCR recognizer: 14 of its 29 ms per run).
ONNX's `HardSwish` (opset 14), `x * max(0, min(1, x / 6 + 1 / 2))`, is the same function in one pass;
its float rounding differs from the four nodes' by an ulp or so, far below the activations' 8-bit step.

PaddlePaddle's learnable affine blocks, a Mul by a constant and an Add of one after a convolution, are
two more passes that onnxruntime does not fold into the Conv (its own fusions want the weight as an
initializer, and run before the decoding nodes are folded). For a Conv that runs in float they go into
its weight and bias as nodes on constants (fold_conv_affines), which the session computes once, when it
loads: the Conv then writes s * x + t itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from onnx import GraphProto, ModelProto, NodeProto, TensorProto, helper, numpy_helper

from qpack.converter.export.onnx_graph import Names, raise_opset, raw_tensor, readers
from qpack.formats.errors import UnsupportedError
from qpack.formats.onnx_keys import DEFAULT_DOMAINS, Site

OPSET_HARD_SWISH = 14


def _tensors(graph: GraphProto) -> dict[str, TensorProto]:
    """The graph's constants (initializers and Constant nodes' values) by value name."""
    out = {t.name: t for t in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant" and n.domain in DEFAULT_DOMAINS and len(n.attribute) == 1 and n.attribute[0].name == "value":
            out[n.output[0]] = n.attribute[0].t
    return out


def _constants(graph: GraphProto) -> dict[str, NDArray]:
    """The graph's small float constants by value name (initializers and Constant nodes), for matching."""
    return {name: numpy_helper.to_array(t) for name, t in _tensors(graph).items()
            if len(t.dims) <= 1 and (not t.dims or t.dims[0] == 1)}


def _is(consts: dict[str, NDArray], name: str, value: float) -> bool:
    v = consts.get(name)
    return v is not None and v.size == 1 and np.issubdtype(v.dtype, np.floating) and float(v.reshape(-1)[0]) == value


def _other(node: NodeProto, name: str) -> str | None:
    """The input of a two-input node that is not `name` (None where `name` is not one of them)."""
    ins = list(node.input)
    if len(ins) != 2 or name not in ins:
        return None
    return ins[1] if ins[0] == name else ins[0]


def _only_reader(model: ModelProto) -> Callable[[str, str], NodeProto | None]:
    """A finder of the one node of the main graph, of op `op`, that reads a value: None where the value is a
    graph output or has other readers (a subgraph's included: they read outer values)."""
    read_by = readers(model)
    outputs = {o.name for o in model.graph.output}
    main = {id(n) for n in model.graph.node}

    def only_reader(value: str, op: str) -> NodeProto | None:
        got = read_by.get(value, [])
        if len(got) != 1 or value in outputs or got[0].op_type != op or got[0].domain not in DEFAULT_DOMAINS or id(got[0]) not in main:
            return None
        return got[0]

    return only_reader


def _drop_unread(model: ModelProto, constants: set[str], keep: frozenset[str]) -> set[str]:
    """Remove the main graph's constants of `constants` that nothing reads any more (onnxruntime warns of
    unused ones), but never a value of `keep`; returns those removed."""
    graph = model.graph
    unused = constants - set(readers(model)) - {o.name for o in graph.output} - keep
    for t in [t for t in graph.initializer if t.name in unused]:
        graph.initializer.remove(t)
    for n in [n for n in graph.node if n.op_type == "Constant" and n.output and n.output[0] in unused]:
        graph.node.remove(n)
    return unused


def hard_swishes(model: ModelProto) -> list[tuple[str, str, list[NodeProto]]]:
    """Each `Div(Mul(x, Clip(Add(x, 3), 0, 6)), 6)` of the main graph, in float32 (onnxruntime's CPU
    HardSwish has no other type), as (x, its output, its four nodes), where no other node (a subgraph's
    included: they read outer values) and no graph output reads the values between (they vanish)."""
    consts = _constants(model.graph)
    only_reader = _only_reader(model)

    def three(name: str) -> bool:
        return _is(consts, name, 3.0) and consts[name].dtype == np.float32

    found = []
    for add in model.graph.node:
        if add.op_type != "Add" or add.domain not in DEFAULT_DOMAINS or len(add.input) != 2:
            continue
        x = next((i for i in add.input if not three(i) and three(_other(add, i) or "")), None)
        clip = only_reader(add.output[0], "Clip") if x is not None else None
        if x is None or clip is None or clip.attribute or len(clip.input) != 3 or clip.input[0] != add.output[0]:
            continue
        if not (_is(consts, clip.input[1], 0.0) and _is(consts, clip.input[2], 6.0)):
            continue
        mul = only_reader(clip.output[0], "Mul")
        if mul is None or _other(mul, clip.output[0]) != x:
            continue
        div = only_reader(mul.output[0], "Div")
        if div is None or list(div.input[:1]) != [mul.output[0]] or len(div.input) != 2 or not _is(consts, div.input[1], 6.0):
            continue
        found.append((x, div.output[0], [add, clip, mul, div]))
    return found


def fuse_hard_swish(model: ModelProto, keep: frozenset[str] = frozenset()) -> tuple[int, set[str]]:
    """Replace each hard-swish pattern of the main graph (hard_swishes) by one HardSwish node in the Div's
    place; returns how many, and the constants removed. The model must be at opset OPSET_HARD_SWISH or later.
    Nodes are edited and removed in place: references to the graph's other nodes (the Constant sites of
    stored tensors) stay valid. The constants 3, 0 and 6 go too where nothing else reads them (onnxruntime
    warns of unused ones), but never a value of `keep`."""
    graph = model.graph
    matches = hard_swishes(model)
    constants: set[str] = set()  # what the fused nodes read besides x and each other's outputs
    for x, y, nodes in matches:
        inner = {o for n in nodes for o in n.output}
        constants.update(i for n in nodes for i in n.input if i != x and i not in inner)
        nodes[-1].CopyFrom(helper.make_node("HardSwish", [x], [y], name=nodes[-1].name or None))
        for n in nodes[:-1]:
            graph.node.remove(n)
    return len(matches), _drop_unread(model, constants, keep)


@dataclass(frozen=True)
class ConvAffine:
    """A Conv whose output only an affine y = s * x + t reads: a Mul by a float constant s, an Add of a
    float constant t after it, or both; s and t broadcast per output channel (one value or [C, 1, ...])."""

    conv: NodeProto
    nodes: tuple[NodeProto, ...]  # the Mul and/or the Add, in order
    channels: int  # the Conv's output channels
    rank: int  # its weight's dimensions
    s: NDArray[np.float32] | None  # [1] or [C]
    t: NDArray[np.float32] | None
    bias: NDArray[np.float32] | None  # the Conv's bias values where they are in the model (not stored), [C]

    @property
    def output(self) -> str:
        return self.nodes[-1].output[0]


def _per_channel(t: TensorProto | None, channels: int, rank: int) -> NDArray[np.float32] | None:
    """A float32 constant's finite values, flat ([1] or [C]), where it broadcasts against a Conv's
    [N, C, ...] output of `rank` dimensions without changing its shape: one value of rank <= `rank`, or
    C values shaped [C, 1, ...] or [1, C, 1, ...]; else None."""
    if t is None or t.data_type != TensorProto.FLOAT:
        return None
    shape = tuple(t.dims)
    size = int(np.prod(shape, dtype=np.int64))
    if not ((size == 1 and len(shape) <= rank)
            or (size == channels and shape in ((channels,) + (1,) * (rank - 2), (1, channels) + (1,) * (rank - 2)))):
        return None
    v = numpy_helper.to_array(t).reshape(-1)
    return v if v.size == size and np.all(np.isfinite(v)) else None


def conv_affines(model: ModelProto, stored: frozenset[str], leave: frozenset[int] = frozenset()) -> list[ConvAffine]:
    """Each Conv of the main graph (but those whose id is in `leave`) with a float32 constant weight and
    bias whose output only a per-channel affine reads. The values of `stored` are the container's
    tensors: constants, their data not in the model, so never read as s or t."""
    graph = model.graph
    overridable = {i.name for i in graph.input}  # an initializer that is also a graph input is no constant
    consts = {name: t for name, t in _tensors(graph).items() if name not in overridable}
    only_reader = _only_reader(model)

    def operand(node: NodeProto | None, x: str, channels: int, rank: int) -> NDArray[np.float32] | None:
        other = _other(node, x) if node is not None else None
        return None if other is None or other in stored else _per_channel(consts.get(other), channels, rank)

    found = []
    for conv in graph.node:
        if conv.op_type != "Conv" or conv.domain not in DEFAULT_DOMAINS or id(conv) in leave or len(conv.input) < 2:
            continue
        w = consts.get(conv.input[1])
        b = consts.get(conv.input[2]) if len(conv.input) > 2 and conv.input[2] else None
        if w is None or w.data_type != TensorProto.FLOAT or len(w.dims) < 3:
            continue
        if len(conv.input) > 2 and conv.input[2] and (b is None or b.data_type != TensorProto.FLOAT or list(b.dims) != [w.dims[0]]):
            continue
        channels, rank = int(w.dims[0]), len(w.dims)
        bias = numpy_helper.to_array(b).reshape(-1) if b is not None and conv.input[2] not in stored else None
        nodes: list[NodeProto] = []
        y = conv.output[0]
        mul = only_reader(y, "Mul")
        s = operand(mul, y, channels, rank)
        if mul is not None and s is not None:
            nodes, y = [mul], mul.output[0]
        add = only_reader(y, "Add")
        t = operand(add, y, channels, rank)
        if add is not None and t is not None:
            nodes.append(add)
        if nodes:
            found.append(ConvAffine(conv, tuple(nodes), channels, rank, s if any(n is mul for n in nodes) else None,
                                    t if any(n is add for n in nodes) else None, bias))
    return found


def fold_conv_affines(model: ModelProto, stored: frozenset[str], leave: frozenset[int] = frozenset(),
                      notes: list[str] | None = None) -> int:
    """Fold each affine conv_affines finds into its Conv: the weight times s, made by a Mul node on constants
    (computed when the session loads), and the bias b * s + t (computed here in float32 where b is in the
    model, else by nodes too); the Conv writes the affine's output. Nodes are edited, removed and inserted
    in place (the other nodes' references stay valid). Returns how many, and says so in `notes`."""
    graph = model.graph
    matches = conv_affines(model, stored, leave)
    names = Names(model)
    inits: list[TensorProto] = []
    before: dict[int, list[NodeProto]] = {}
    replaced: set[str] = set()  # biases computed anew

    def constant(stem: str, v: NDArray[np.float32], shape: tuple[int, ...]) -> str:
        name = names.fresh(stem)
        inits.append(raw_tensor(name, TensorProto.FLOAT, shape, np.ascontiguousarray(v, "<f4")))
        return name

    def node(op: str, inputs: list[str], stem: str, made: list[NodeProto]) -> str:
        out = names.fresh(stem)
        made.append(helper.make_node(op, inputs, [out]))
        return out

    for m in matches:
        conv, made = m.conv, before.setdefault(id(m.conv), [])
        bias = conv.input[2] if len(conv.input) > 2 else ""
        if m.s is not None:
            per_weight = (m.s.size,) + (1,) * (m.rank - 1)  # one factor: [1, 1, ...] broadcasts too
            conv.input[1] = node("Mul", [conv.input[1], constant(f"{m.output}_weight_factor", m.s, per_weight)],
                                 f"{conv.input[1]}_folded", made)
        if bias and m.bias is None:  # a stored bias: its values come from the container, so nodes
            if m.s is not None:
                bias = node("Mul", [bias, constant(f"{m.output}_bias_factor", m.s, (m.s.size,))], f"{bias}_folded", made)
            if m.t is not None:
                bias = node("Add", [bias, constant(f"{m.output}_shift", m.t, (m.t.size,))], f"{m.output}_bias", made)
        elif bias or m.t is not None:  # b * s + t computed here, in float32 as the nodes would
            if bias:
                replaced.add(bias)
            b = m.bias if m.bias is not None else np.zeros(m.channels, np.float32)
            b = b * m.s if m.s is not None else b
            b = b + m.t if m.t is not None else b
            bias = constant(f"{m.output}_bias", b, (m.channels,))
        if bias:
            conv.input.extend([""] * (3 - len(conv.input)))
            conv.input[2] = bias
        conv.output[0] = m.output
    for m in matches:  # in place, as fuse_hard_swish edits: references to the other nodes stay valid
        for n in m.nodes:
            graph.node.remove(n)
    read = replaced | {i for m in matches for n in m.nodes for i in n.input}  # s and t among them
    at = {id(n): i for i, n in enumerate(graph.node)}
    for i, made in sorted(((at[k], made) for k, made in before.items()), key=lambda p: -p[0]):
        for n in reversed(made):
            graph.node.insert(i, n)
    graph.initializer.extend(inits)
    _drop_unread(model, read, stored)
    if matches and notes is not None:
        notes.append(f"{len(matches)} Mul/Add after float Conv{'s' if len(matches) > 1 else ''} folded into "
                     "their weights and biases (computed when the model loads)")
    return len(matches)


def raised_and_fused(load: Callable[[], tuple[ModelProto, dict[str, Site]]], stored: set[str], opset: int, why: str,
                     notes: list[str], affines: bool = True) -> tuple[ModelProto, dict[str, Site]]:
    """The model `load` gives, moved to `opset` (raise_opset; `why` names what needs it), its hard-swish
    fused and (with `affines`) the affines after its Convs folded into them, each with a note. Fusing may
    need a later opset than the export's own: where the model cannot move there, it is loaded again and
    exported unfused, and the note says why. onnx-int8 folds the affines itself, once it has chosen which
    Convs stay float."""
    model, at = load()
    fuse = True
    if hard_swishes(model) and opset < OPSET_HARD_SWISH:
        try:
            at = raise_opset(model, OPSET_HARD_SWISH, at, "HardSwish")
        except UnsupportedError as e:  # (the failed move may have renamed what it touched: start again)
            notes.append(f"hard-swish kept as four nodes: {e}")
            model, at = load()
            at, fuse = raise_opset(model, opset, at, why), False
    else:
        at = raise_opset(model, opset, at, why)
    values = frozenset(at[k].value for k in stored if k in at)  # the stored tensors' values: no fusion removes them
    if fuse:
        fused, removed = fuse_hard_swish(model, values)
        at = {k: site for k, site in at.items() if site.value not in removed}  # (`stored` keys all stay)
        if fused:
            notes.append(f"{fused} hard-swish (x * Clip(x + 3, 0, 6) / 6) fused into HardSwish: one pass over each "
                         "activation instead of four")
    if affines:
        fold_conv_affines(model, values, notes=notes)
    return model, at


__all__ = ["OPSET_HARD_SWISH", "ConvAffine", "conv_affines", "fold_conv_affines", "fuse_hard_swish", "hard_swishes", "raised_and_fused"]
