"""Small hand-built ONNX models with known weights, for layout and golden-byte tests."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

CONV_W = (np.arange(2 * 1 * 2 * 2, dtype=np.float32).reshape(2, 1, 2, 2) - 3.5) / 4  # values -0.875..0.875
FC_W = np.linspace(-1, 1, 8 * 3, dtype=np.float32).reshape(8, 3)


def tiny_model(dtype: int = TensorProto.FLOAT) -> onnx.ModelProto:
    """x[1,1,3,3] -> Conv(W, b) -> Flatten -> MatMul(FC_W as a Constant) -> y[1,3]."""
    np_dtype = helper.tensor_dtype_to_np_dtype(dtype)
    w = numpy_helper.from_array(CONV_W.astype(np_dtype), "conv.w")
    b = numpy_helper.from_array(np.array([0.1, -0.2], np_dtype), "conv.b")
    fc = helper.make_node("Constant", [], ["fc.w"], value=numpy_helper.from_array(FC_W.astype(np_dtype), "fc.w"))
    shape = helper.make_node("Constant", [], ["shape"], value=numpy_helper.from_array(np.array([1, 8], np.int64), "shape"))
    nodes = [
        fc, shape,
        helper.make_node("Conv", ["x", "conv.w", "conv.b"], ["c"], name="conv"),
        helper.make_node("Reshape", ["c", "shape"], ["f"]),
        helper.make_node("MatMul", ["f", "fc.w"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", dtype, [1, 1, 3, 3])],
                              [helper.make_tensor_value_info("y", dtype, [1, 3])], [w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="qpack-tests")
    model.ir_version = 8
    return model


def if_model() -> onnx.ModelProto:
    """A MatMul whose weight lives in a Constant inside an If branch, another in the else branch."""
    wa = np.random.default_rng(1).standard_normal((4, 5)).astype(np.float32)
    wb = np.random.default_rng(2).standard_normal((4, 5)).astype(np.float32)

    def branch(name: str, w: np.ndarray) -> onnx.GraphProto:
        const = helper.make_node("Constant", [], [f"{name}.w"], value=numpy_helper.from_array(w, f"{name}.w"))
        mm = helper.make_node("MatMul", ["x", f"{name}.w"], [f"{name}.y"])
        return helper.make_graph([const, mm], name, [], [helper.make_tensor_value_info(f"{name}.y", TensorProto.FLOAT, [2, 5])])

    node = helper.make_node("If", ["cond"], ["y"], then_branch=branch("then", wa), else_branch=branch("else", wb))
    return _on_condition(node, "if", [2, 4], [2, 5])


def _on_condition(node: onnx.NodeProto, name: str, x: list[int], y: list[int]) -> onnx.ModelProto:
    """A model of one If `node` reading x and a boolean cond, writing y (opset 17)."""
    graph = helper.make_graph([node], name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, x),
                                             helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, y)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def nested_if_model() -> onnx.ModelProto:
    """x[2,8] -> If(cond): [MatMul(outer.w) -> If(cond): [MatMul(inner.w)] else [Identity]] else [Identity]:
    weights in Constants at two depths of subgraphs."""
    rng = np.random.default_rng(3)

    def const(name: str) -> onnx.NodeProto:
        return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), name))

    def identity(name: str, x: str) -> onnx.GraphProto:
        return helper.make_graph([helper.make_node("Identity", [x], [name])], name, [],
                                 [helper.make_tensor_value_info(name, TensorProto.FLOAT, [2, 8])])

    inner = helper.make_graph([const("inner.w"), helper.make_node("MatMul", ["h", "inner.w"], ["inner.y"])], "inner", [],
                              [helper.make_tensor_value_info("inner.y", TensorProto.FLOAT, [2, 8])])
    outer = helper.make_graph([const("outer.w"), helper.make_node("MatMul", ["x", "outer.w"], ["h"]),
                               helper.make_node("If", ["cond"], ["outer.y"], then_branch=inner, else_branch=identity("inner.else", "h"))],
                              "outer", [], [helper.make_tensor_value_info("outer.y", TensorProto.FLOAT, [2, 8])])
    node = helper.make_node("If", ["cond"], ["y"], then_branch=outer, else_branch=identity("outer.else", "x"))
    return _on_condition(node, "nested-if", [2, 8], [2, 8])


def tiny_and_large_model() -> onnx.ModelProto:
    """x[1,8] -> MatMul(small.w, 8x64, weights of 0.1) -> MatMul(large.w, 64x512, weights of 1) -> y[1,512]:
    a tensor 64 times smaller and ten times quieter than the other, both on the model's one path."""
    rng = np.random.default_rng(7)
    small = (rng.standard_normal((8, 64)) * 0.1).astype(np.float32)
    large = rng.standard_normal((64, 512)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "small.w"], ["h"]), helper.make_node("MatMul", ["h", "large.w"], ["y"])]
    graph = helper.make_graph(nodes, "tiny-and-large", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 512])],
                              [numpy_helper.from_array(small, "small.w"), numpy_helper.from_array(large, "large.w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="qpack-tests")
    model.ir_version = 8
    return model
