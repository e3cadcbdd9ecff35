"""Follow a weight through layout-only ops (Transpose, Reshape, Slice, Concat, ...) to the op that
really uses it, keeping track of which of the weight's axes each axis of that op's input is.

Exporters often put a weight behind such ops (an LSTM's W sliced per gate and concatenated, a
MatMul's matrix transposed first); judged by its direct consumer alone it would look like an
elementwise constant and stay in float.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import onnx
from numpy.typing import NDArray

MAX_DEPTH = 8
LAYOUT_OPS = frozenset({"Identity", "Cast", "Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Split", "Concat",
                        "Slice", "Gather"})

AxisMap = tuple[int | None, ...]  # per axis of a traced tensor: the weight's axis it is, or None
Shape = tuple[int | None, ...]
Const = Callable[[str], "NDArray | None"]  # a constant input's integer values, or None if not constant


@dataclass(frozen=True)
class Use:
    """A non-layout op reading the traced weight, and how its input's axes map back to the weight's."""

    node: onnx.NodeProto
    index: int
    amap: AxisMap
    path: tuple[str, ...]  # layout ops passed through, for notes

    def weight_axis(self, axis: int | None) -> int | None:
        if axis is None or not -len(self.amap) <= axis < len(self.amap):
            return None
        return self.amap[axis]


def _attr(node: onnx.NodeProto, name: str, default: object = None) -> object:
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _ints(node: onnx.NodeProto, name: str, input_index: int, const: Const) -> list[int] | None:
    value = _attr(node, name)
    if value is not None:
        return [int(v) for v in value]  # type: ignore[attr-defined]
    if len(node.input) > input_index and node.input[input_index]:
        v = const(node.input[input_index])
        return None if v is None else [int(x) for x in v.reshape(-1)]
    return None


def _by_prefix(shape_in: Shape, amap: AxisMap, shape_out: Shape) -> AxisMap:
    """Axes of a reshaped tensor that are axes of the original: same size and same number of elements before."""
    if any(d is None for d in shape_in) or any(d is None for d in shape_out):
        return (None,) * len(shape_out)
    before_in: dict[tuple[int, int], int] = {}
    p = 1
    for i, d in enumerate(shape_in):
        before_in[(p, int(d or 0))] = i
        p *= int(d or 0)
    out: list[int | None] = []
    p = 1
    for d in shape_out:
        j = before_in.get((p, int(d or 0)))
        out.append(None if j is None or d == 1 else amap[j])
        p *= int(d or 0)
    return tuple(out)


def step(node: onnx.NodeProto, amap: AxisMap, shape: Shape, const: Const) -> tuple[AxisMap, Shape] | None:
    """The axis map and shape of a layout op's output, given its data input's; None if they cannot be followed."""
    op, rank = node.op_type, len(amap)
    if op in ("Identity", "Cast"):
        return amap, shape
    if op == "Transpose":
        perm = _attr(node, "perm") or list(range(rank))[::-1]
        perm = [int(p) for p in perm]  # type: ignore[attr-defined]
        if sorted(perm) != list(range(rank)):
            return None
        return tuple(amap[p] for p in perm), tuple(shape[p] for p in perm)
    if op == "Unsqueeze":
        axes = _ints(node, "axes", 1, const)
        if axes is None:
            return None
        out_rank = rank + len(axes)
        norm = {a % out_rank for a in axes}
        src = iter(zip(amap, shape))
        pairs = [(None, 1) if j in norm else next(src) for j in range(out_rank)]
        return tuple(a for a, _ in pairs), tuple(d for _, d in pairs)
    if op == "Squeeze":
        axes = _ints(node, "axes", 1, const)
        drop = {a % rank for a in axes} if axes is not None else {i for i, d in enumerate(shape) if d == 1}
        if axes is None and any(d is None for d in shape):
            return None
        keep = [i for i in range(rank) if i not in drop]
        return tuple(amap[i] for i in keep), tuple(shape[i] for i in keep)
    if op == "Reshape":
        target = _ints(node, "", 1, const)
        if target is None or any(d is None for d in shape):
            return None
        dims: list[int | None] = [shape[i] if d == 0 and i < rank else d for i, d in enumerate(target)]
        if dims.count(-1) == 1:
            known = math.prod(d for d in dims if d != -1)  # type: ignore[misc]
            dims[dims.index(-1)] = math.prod(shape) // known if known else 0  # type: ignore[arg-type]
        new: Shape = tuple(dims)
        return _by_prefix(shape, amap, new), new
    if op == "Flatten":
        axis = int(_attr(node, "axis", 1)) % max(rank, 1)  # type: ignore[call-overload]
        if any(d is None for d in shape):
            return None
        new = (math.prod(shape[:axis]), math.prod(shape[axis:]))  # type: ignore[arg-type]
        return _by_prefix(shape, amap, new), new
    if op in ("Slice", "Split", "Concat"):  # sizes change along some axis; which axis is which does not
        return amap, tuple(None for _ in shape)
    if op == "Gather":
        axis = int(_attr(node, "axis", 0)) % max(rank, 1)  # type: ignore[call-overload]
        index = const(node.input[1]) if len(node.input) > 1 else None
        if index is None or index.ndim > 1:
            return None
        if index.ndim == 0:  # picks one slice: the axis goes away
            return amap[:axis] + amap[axis + 1 :], shape[:axis] + shape[axis + 1 :]
        return amap, shape[:axis] + (None,) + shape[axis + 1 :]
    return None


def trace(name: str, shape: tuple[int, ...], uses: dict[str, list[tuple[onnx.NodeProto, int]]], const: Const) -> Iterator[Use]:
    """Every op that reads `name`, directly or through layout ops, with its input's axis map."""
    start: AxisMap = tuple(range(len(shape)))
    todo: list[tuple[str, AxisMap, Shape, tuple[str, ...]]] = [(name, start, tuple(shape), ())]
    while todo:
        current, amap, cur_shape, path = todo.pop()
        for node, index in uses.get(current, []):
            if node.op_type in LAYOUT_OPS and len(path) < MAX_DEPTH and (index == 0 or node.op_type == "Concat"):
                nxt = step(node, amap, cur_shape, const)
                if nxt is not None:
                    for out in node.output[:1] if node.op_type != "Split" else node.output:
                        if out:
                            todo.append((out, nxt[0], nxt[1], path + (node.op_type,)))
                    continue
            yield Use(node, index, amap, path)
