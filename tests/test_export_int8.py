"""`--to onnx-int8`: full-integer ONNX that onnxruntime runs in its integer kernels.

The export's Conv/MatMul/Gemm nodes get int8 weights, uint8 activations calibrated on inputs and
int32 biases; onnxruntime fuses them (QLinearConv, QGemm, QLinearMatMul), and its integer kernels
compute what a NumPy evaluation of the exported quantize/dequantize arithmetic computes, within a
step of the activations' rounding.
"""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

import qpack
from qpack.converter.cli import app
from qpack.converter.export.onnx_int8 import CALIBRATION_SHARE

runner = CliRunner()


def _session(path: Path, level: ort.GraphOptimizationLevel = ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
             optimized: Path | None = None) -> ort.InferenceSession:
    o = ort.SessionOptions()
    o.graph_optimization_level = level
    o.intra_op_num_threads = 1
    o.log_severity_level = 3
    if optimized is not None:
        o.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])


def _fused_ops(path: Path, tmp: Path) -> collections.Counter[str]:
    _session(path, optimized=tmp / "optimized.onnx")
    return collections.Counter(n.op_type for n in onnx.load(str(tmp / "optimized.onnx")).graph.node)


def test_sample_runs_in_integer_kernels(sample: Path, tmp_path: Path):
    """The digits CNN made for onnx-int8 (sym 8-bit per channel): every Conv and Gemm fuses into an
    integer kernel, and the outputs keep the float model's on the held-out digits."""
    from qpack.converter.datasets import digits

    qpk = tmp_path / "s.qpk"
    qpack.convert(sample, qpk, target="onnx-int8", compress="none")
    out = tmp_path / "s.onnx"
    done = qpack.export(qpk, "onnx-int8", out, inputs=qpack.load_inputs(sample, dataset="digits"))
    assert done.notes[0].startswith("integer nodes (mse ranges on 540 inputs): Conv 3, Gemm 2")
    ops = _fused_ops(out, tmp_path)
    assert ops["QLinearConv"] == 3 and ops["QGemm"] == 2 and "Conv" not in ops and "Gemm" not in ops
    x, _ = digits()
    a = _session(sample).run(None, {"image": x[:64]})[0].ravel()
    b = _session(out).run(None, {"image": x[:64]})[0].ravel()
    assert a @ b / np.linalg.norm(a) / np.linalg.norm(b) > 0.999


def _mlp(path: Path) -> None:
    """x[N,64] -> Gemm(W1[32,64], transB, b1) -> Relu -> MatMul(W2[32,8]) -> Tanh -> y."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array((rng.standard_normal((32, 64)) * 0.2).astype(np.float32), "w1")
    b1 = numpy_helper.from_array((rng.standard_normal(32) * 0.1).astype(np.float32), "b1")
    w2 = numpy_helper.from_array((rng.standard_normal((32, 8)) * 0.3).astype(np.float32), "w2")
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["m"]),
             helper.make_node("Tanh", ["m"], ["y"])]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 8])], [w1, b1, w2])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)


def _reference(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """The exported graph evaluated in float64 NumPy: quantize (round half to even, saturate),
    dequantize and the integer nodes on dequantized integers, which float64 computes exactly."""
    env: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    env["x"] = x.astype(np.float64)
    for n in model.graph.node:
        a = [env[i] if i else None for i in n.input]
        attrs = {k.name: helper.get_attribute_value(k) for k in n.attribute}
        if n.op_type == "QuantizeLinear":
            info = np.iinfo(a[2].dtype)
            out = np.clip(np.rint(a[0] / a[1].astype(np.float64)) + a[2].astype(np.int64), info.min, info.max).astype(a[2].dtype)
        elif n.op_type == "DequantizeLinear":
            shape = [1] * a[0].ndim
            if a[1].ndim == 1:
                shape[attrs.get("axis", 1)] = -1
            zp = a[2] if len(a) > 2 else np.zeros_like(a[1], dtype=np.int64)
            out = (a[0].astype(np.float64) - zp.astype(np.float64).reshape(shape)) * a[1].astype(np.float64).reshape(shape)
        elif n.op_type == "Gemm":
            out = a[0] @ (a[1].T if attrs.get("transB") else a[1]) + (a[2] if len(a) > 2 else 0)
        elif n.op_type == "MatMul":
            out = a[0] @ a[1]
        else:
            out = {"Relu": lambda v: np.maximum(v, 0), "Tanh": np.tanh}[n.op_type](a[0])
        env[n.output[0]] = out
    return env["y"]


def test_integer_kernels_compute_the_exported_arithmetic(tmp_path: Path):
    src = tmp_path / "mlp.onnx"
    _mlp(src)
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "cal.npz", x=rng.standard_normal((32, 64)).astype(np.float32))
    qpk = tmp_path / "mlp.qpk"
    qpack.convert(src, qpk, target="onnx-int8", compress="none")
    out = tmp_path / "mlp_int8.onnx"
    qpack.export(qpk, "onnx-int8", out, inputs=tmp_path / "cal.npz")
    ops = _fused_ops(out, tmp_path)
    assert ops["QGemm"] + ops["QLinearMatMul"] + ops["MatMulIntegerToFloat"] == 2, ops
    x = rng.standard_normal((16, 64)).astype(np.float32)
    got = _session(out).run(None, {"x": x})[0]
    ref = _reference(onnx.load(str(out)), x)
    # integer kernels requantize in float32: an activation may land one step away, nothing more
    m = onnx.load(str(out))
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    step = max(float(v) for k, v in inits.items() if k.endswith("_act_scale"))
    w2 = np.abs(next(v.astype(np.float64) * inits[k.replace("_quantized", "_scale")] for k, v in inits.items()
                     if k.startswith("w2") and k.endswith("_quantized")))
    assert np.abs(got - ref).max() <= step * (w2.sum(axis=0).max() + 1) + 1e-5
    assert np.median(np.abs(got - ref)) < 1e-3


def test_calibration_is_deterministic_and_checked(sample: Path, tmp_path: Path):
    qpk = tmp_path / "s.qpk"
    qpack.convert(sample, qpk, target="onnx-int8", compress="none")
    x = np.random.default_rng(0).random((24, 1, 8, 8), dtype=np.float32) * 16
    np.savez(tmp_path / "cal.npz", image=x)
    for name in ("a.onnx", "b.onnx"):
        qpack.export(qpk, "onnx-int8", tmp_path / name, inputs=tmp_path / "cal.npz", calibration="percentile")
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    np.savez(tmp_path / "bad.npz", image=x[:, :, :6, :6])
    r = runner.invoke(app, ["export", str(qpk), "--to", "onnx-int8", "-o", str(tmp_path / "c.onnx"), "--inputs", str(tmp_path / "bad.npz")])
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1 and "image" in r.output, r.output
    assert not (tmp_path / "c.onnx").exists()


@pytest.mark.parametrize("args,says", [
    (["--to", "onnx-int8"], "calibrates activation ranges: give --inputs, --images or --dataset"),
    (["--to", "onnx-qdq", "--dataset", "digits"], "inputs calibrate --to onnx-int8 and --to tflite-int8; --to onnx-qdq takes none"),
])
def test_inputs_go_with_calibrated_targets_only(sample: Path, tmp_path: Path, args: list[str], says: str):
    qpk = tmp_path / "s.qpk"
    qpack.convert(sample, qpk, bits=8, scheme="sym", per_channel=True, compress="none")
    r = runner.invoke(app, ["export", str(qpk), "-o", str(tmp_path / "x.onnx"), *args])
    assert r.exit_code == 1 and says in r.output, r.output
    assert not (tmp_path / "x.onnx").exists()


def test_nodes_go_back_to_float_until_the_cosine_holds(tmp_path: Path):
    """A goal the integer activations miss on the calibration inputs: the nodes whose activations quantize
    worst stay float, the fewest that meet it (a bisection), and the note says how many; -1 keeps them all."""
    src = tmp_path / "mlp.onnx"
    _mlp(src)
    np.savez(tmp_path / "cal.npz", x=np.random.default_rng(1).standard_normal((32, 64)).astype(np.float32))
    qpk = tmp_path / "mlp.qpk"
    qpack.convert(src, qpk, target="onnx-int8", compress="none")
    every = qpack.export(qpk, "onnx-int8", tmp_path / "all.onnx", inputs=tmp_path / "cal.npz", min_cosine=-1)
    least = float(every.notes[0].split("least output cosine ")[1].split()[0])
    assert "kept in float" not in every.notes[0] and least < 0.99999
    floor = (least + 0.9999) / 2  # between all-integer and the weights alone (0.99990), where it is checked
    goal = 1 - (1 - floor) / CALIBRATION_SHARE  # what --min-cosine asks for it (a margin for other inputs)
    some = qpack.export(qpk, "onnx-int8", tmp_path / "some.onnx", inputs=tmp_path / "cal.npz", min_cosine=goal)
    back = int(some.notes[0].split(" kept in float for the outputs' cosine")[0].rsplit("; ", 1)[1])
    assert back in (1, 2) and float(some.notes[0].split("least output cosine ")[1].split()[0]) >= floor, some.notes
    ops = _fused_ops(tmp_path / "some.onnx", tmp_path)
    assert ops["QGemm"] + ops["QLinearMatMul"] + ops["MatMulIntegerToFloat"] == 2 - back, ops


def test_a_bias_a_subgraph_reads_stays(tmp_path: Path):
    """The float bias of an integer Gemm is stored as int32; where an If branch reads it too (subgraphs
    see outer values), the float one stays for it."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array((rng.standard_normal((8, 16)) * 0.3).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b")
    branch = helper.make_graph([helper.make_node("Add", ["h", "b"], ["o"])], "then", [],
                               [helper.make_tensor_value_info("o", TensorProto.FLOAT, [None, 8])])
    other = helper.make_graph([helper.make_node("Identity", ["h"], ["o2"])], "else", [],
                              [helper.make_tensor_value_info("o2", TensorProto.FLOAT, [None, 8])])
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["g"], transB=1), helper.make_node("Tanh", ["g"], ["h"]),
             helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=other)]
    graph = helper.make_graph(nodes, "if", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 16]),
                                            helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 8])], [w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "if.onnx")
    np.savez(tmp_path / "cal.npz", x=rng.standard_normal((8, 16)).astype(np.float32), cond=np.array(True))
    qpk = tmp_path / "if.qpk"
    qpack.convert(tmp_path / "if.onnx", qpk, target="onnx-int8", compress="none")
    done = qpack.export(qpk, "onnx-int8", tmp_path / "if_int8.onnx", inputs=tmp_path / "cal.npz", min_cosine=-1)
    assert done.notes[0].startswith("integer nodes (mse ranges on 8 inputs): Gemm 1")
    out = _session(tmp_path / "if_int8.onnx").run(None, {"x": np.ones((1, 16), np.float32), "cond": np.array(True)})[0]
    assert np.isfinite(out).all()
