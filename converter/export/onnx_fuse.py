"""Float glue, fused into the single ops onnxruntime runs in one pass (the exports made for onnxruntime:
onnx-fast, onnx-matmulnbits, onnx-int8; onnx-qdq keeps the source graph for other toolchains).

PaddlePaddle exports hard-swish as four elementwise nodes, `x * Clip(x + 3, 0, 6) / 6`, and
MobileNetV3-style models run it after most convolutions: four passes over each activation. In a
full-integer export those nodes stay float between a DequantizeLinear and a QuantizeLinear and take
as long as the int8 convolutions themselves (the OCR recognizer: 14 of its 29 ms per run).
ONNX's `HardSwish` (opset 14), `x * max(0, min(1, x / 6 + 1 / 2))`, is the same function in one pass;
its float rounding differs from the four nodes' by an ulp or so, far below the activations' 8-bit step.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray
from onnx import GraphProto, ModelProto, NodeProto, helper, numpy_helper

from qpack.converter.export.onnx_graph import raise_opset
from qpack.formats.errors import UnsupportedError
from qpack.formats.onnx_keys import DEFAULT_DOMAINS, Site

OPSET_HARD_SWISH = 14


def _constants(graph: GraphProto) -> dict[str, NDArray]:
    """The graph's small float constants by value name (initializers and Constant nodes), for matching."""
    out: dict[str, NDArray] = {}
    for t in graph.initializer:
        if len(t.dims) <= 1 and (not t.dims or t.dims[0] == 1):
            out[t.name] = numpy_helper.to_array(t)
    for n in graph.node:
        if n.op_type == "Constant" and n.domain in DEFAULT_DOMAINS and len(n.attribute) == 1 and n.attribute[0].name == "value":
            t = n.attribute[0].t
            if len(t.dims) <= 1 and (not t.dims or t.dims[0] == 1):
                out[n.output[0]] = numpy_helper.to_array(t)
    return out


def _is(consts: dict[str, NDArray], name: str, value: float) -> bool:
    v = consts.get(name)
    return v is not None and v.size == 1 and np.issubdtype(v.dtype, np.floating) and float(v.reshape(-1)[0]) == value


def _other(node: NodeProto, name: str) -> str | None:
    """The input of a two-input node that is not `name` (None where `name` is not one of them)."""
    ins = list(node.input)
    if len(ins) != 2 or name not in ins:
        return None
    return ins[1] if ins[0] == name else ins[0]


def hard_swishes(graph: GraphProto, keep: frozenset[str] = frozenset()) -> list[tuple[str, str, list[NodeProto]]]:
    """Each `Div(Mul(x, Clip(Add(x, 3), 0, 6)), 6)` of the graph as (x, its output, its four nodes), where
    no other node, graph output or name in `keep` reads the values between (they vanish)."""
    consts = _constants(graph)
    readers: dict[str, list[NodeProto]] = {}
    for n in graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    outputs = {o.name for o in graph.output} | keep

    def only_reader(value: str, op: str) -> NodeProto | None:
        got = readers.get(value, [])
        if len(got) != 1 or value in outputs or got[0].op_type != op or got[0].domain not in DEFAULT_DOMAINS:
            return None
        return got[0]

    found = []
    for add in graph.node:
        if add.op_type != "Add" or add.domain not in DEFAULT_DOMAINS or len(add.input) != 2:
            continue
        x = next((i for i in add.input if not _is(consts, i, 3.0) and _is(consts, _other(add, i) or "", 3.0)), None)
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


def fuse_hard_swish(graph: GraphProto, keep: frozenset[str] = frozenset()) -> int:
    """Replace each hard-swish pattern of `graph` (hard_swishes) by one HardSwish node in the Div's place;
    returns how many. The model must be at opset OPSET_HARD_SWISH or later."""
    matches = hard_swishes(graph, keep)
    if not matches:
        return 0
    gone = {id(n) for _, _, nodes in matches for n in nodes}
    into = {id(nodes[-1]): helper.make_node("HardSwish", [x], [y], name=nodes[-1].name or None) for x, y, nodes in matches}
    rebuilt = [into.get(id(n), n) for n in graph.node if id(n) not in gone or id(n) in into]
    del graph.node[:]
    graph.node.extend(rebuilt)
    return len(matches)


def raised_and_fused(load: Callable[[], tuple[ModelProto, dict[str, Site]]], opset: int, why: str,
                     notes: list[str]) -> tuple[ModelProto, dict[str, Site]]:
    """The model `load` gives, moved to `opset` (raise_opset; `why` names what needs it) and its hard-swish
    fused, with a note. Fusing may need a later opset than the export's own: where the model cannot move
    there, it is loaded again and exported unfused, and the note says why."""
    model, at = load()
    if hard_swishes(model.graph) and opset < OPSET_HARD_SWISH:
        try:
            at = raise_opset(model, OPSET_HARD_SWISH, at, "HardSwish")
        except UnsupportedError as e:  # (the failed move may have renamed what it touched: start again)
            notes.append(f"hard-swish kept as four nodes: {e}")
            model, at = load()
            return model, raise_opset(model, opset, at, why)
    else:
        at = raise_opset(model, opset, at, why)
    fused = fuse_hard_swish(model.graph)
    if fused:
        notes.append(f"{fused} hard-swish (x * Clip(x + 3, 0, 6) / 6) fused into HardSwish: one pass over each "
                     "activation instead of four")
    return model, at


__all__ = ["OPSET_HARD_SWISH", "fuse_hard_swish", "hard_swishes", "raised_and_fused"]
