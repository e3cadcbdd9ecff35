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
    # the MaxPools between them are quantized at their input's range (exact: they pick values), so
    # onnxruntime runs them on the integers too, and no value goes back to float in between
    assert ops["NhwcMaxPool"] == 2 and "MaxPool" not in ops and "DequantizeLinear" not in ops
    x, _ = digits()
    a = _session(sample).run(None, {"image": x[:64]})[0].ravel()
    b = _session(out).run(None, {"image": x[:64]})[0].ravel()
    assert a @ b / np.linalg.norm(a) / np.linalg.norm(b) > 0.999


def test_asym_weights_run_in_integer_kernels_as_their_centered_codes(sample: Path, tmp_path: Path):
    """Asym 4-bit codes per channel hold int8 weights once their zero points are folded in (code - zero point):
    every Conv and Gemm runs in an integer kernel on exactly the container's values, said to be widened."""
    qpk = tmp_path / "a.qpk"
    qpack.convert(sample, qpk, bits=4, per_channel=True, compress="none")
    out = tmp_path / "a.onnx"
    done = qpack.export(qpk, "onnx-int8", out, inputs=qpack.load_inputs(sample, dataset="digits"), min_cosine=-1)
    assert done.notes[0].startswith("integer nodes (mse ranges on 540 inputs): Conv 3, Gemm 2"), done.notes
    assert "5 weights of integer nodes stored as INT8 (narrower codes widened)" in done.notes
    ops = _fused_ops(out, tmp_path)
    assert ops["QLinearConv"] == 3 and ops["QGemm"] == 2
    qpack.unpack(qpk, tmp_path / "restored.onnx")
    stored = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(out)).graph.initializer}
    checked = 0
    for t in onnx.load(str(tmp_path / "restored.onnx")).graph.initializer:
        if t.name not in stored and len(t.dims) > 1:  # a weight now integer: its int8 codes times its scales
            q = next(v for k, v in stored.items() if k.startswith(t.name) and v.dtype == np.int8)
            s = next(v for k, v in stored.items() if k.startswith(t.name) and k.endswith("scale"))
            scale = s.reshape((-1,) + (1,) * (q.ndim - 1)) if s.ndim and q.shape[0] == s.size else s.reshape((1, -1))
            np.testing.assert_array_equal((q.astype(np.float32) * scale).astype(np.float32), numpy_helper.to_array(t))
            checked += 1
    assert checked == 5


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
    (["--to", "onnx-qdq", "--dataset", "digits"],
     "inputs calibrate --to onnx-int8, --to tflite-int8, --to tflite-int8-fast and --to tflite-16x8; --to onnx-qdq takes none"),
])
def test_inputs_go_with_calibrated_targets_only(sample: Path, tmp_path: Path, args: list[str], says: str):
    qpk = tmp_path / "s.qpk"
    qpack.convert(sample, qpk, bits=8, scheme="sym", per_channel=True, compress="none")
    r = runner.invoke(app, ["export", str(qpk), "-o", str(tmp_path / "x.onnx"), *args])
    assert r.exit_code == 1 and says in r.output, r.output
    assert not (tmp_path / "x.onnx").exists()


def test_nodes_go_back_to_float_until_the_cosine_holds(tmp_path: Path):
    """A goal the integer activations miss on the calibration inputs: the nodes that harm the outputs most
    stay float, the fewest that meet it (a bisection), and the note says how many; -1 keeps them all."""
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


def test_candidates_go_back_to_float_by_their_measured_harm():
    """The order is the outputs' cosine with each candidate alone integer, the worst first; ties keep their order."""
    from qpack.converter.export.calibrate import by_harm

    alone = {"a": 0.999, "b": 0.95, "c": 0.999, "d": 0.99}
    asked: list[str] = []

    def cosine(item: str) -> float:
        asked.append(item)
        return alone[item]

    assert by_harm(["a", "b", "c", "d"], cosine) == ["b", "d", "a", "c"] and sorted(asked) == ["a", "b", "c", "d"]


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


def test_weights_in_if_branches_export_beside_integer_nodes(tmp_path: Path):
    """An integer Gemm in the main graph rebuilds its node list, If nodes and their branches copied along:
    the weights in Constant nodes of both branches (Silero's STFT bases) are still replaced by the
    container's values, and the model validates and gives the container's outputs in either branch."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array((rng.standard_normal((8, 16)) * 0.3).astype(np.float32), "w")

    def branch(tag: str, width: int) -> onnx.GraphProto:
        basis = numpy_helper.from_array((rng.standard_normal((8, width)) * 0.5).astype(np.float32), "basis")  # one tensor name, twice
        return helper.make_graph([helper.make_node("Constant", [], [f"{tag}_basis"], value=basis),
                                  helper.make_node("MatMul", ["h", f"{tag}_basis"], [f"{tag}_o"])], tag, [],
                                 [helper.make_tensor_value_info(f"{tag}_o", TensorProto.FLOAT, [None, width])])

    nodes = [helper.make_node("Gemm", ["x", "w"], ["g"], transB=1), helper.make_node("Tanh", ["g"], ["h"]),
             helper.make_node("If", ["cond"], ["y"], then_branch=branch("then", 4), else_branch=branch("else", 6))]
    graph = helper.make_graph(nodes, "if", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 16]),
                                            helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, None])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "if.onnx")
    x = rng.standard_normal((8, 16)).astype(np.float32)
    np.savez(tmp_path / "cal.npz", x=x, cond=np.array(True))
    qpk = tmp_path / "if.qpk"
    qpack.convert(tmp_path / "if.onnx", qpk, bits=8, scheme="sym", compress="none")
    assert len(qpack.describe(qpk)["tensors"]) == 3
    done = qpack.export(qpk, "onnx-int8", tmp_path / "if_int8.onnx", inputs=tmp_path / "cal.npz", min_cosine=-1)
    assert done.notes[0].startswith("integer nodes (mse ranges on 8 inputs): Gemm 1"), done.notes
    qpack.unpack(qpk, tmp_path / "restored.onnx")
    a = _session(tmp_path / "restored.onnx", ort.GraphOptimizationLevel.ORT_ENABLE_BASIC)
    b = _session(tmp_path / "if_int8.onnx", ort.GraphOptimizationLevel.ORT_ENABLE_BASIC)
    for cond in (True, False):
        feeds = {"x": x, "cond": np.array(cond)}
        ref, got = a.run(None, feeds)[0], b.run(None, feeds)[0]
        assert got.shape == ref.shape and float((ref * got).sum() / np.linalg.norm(ref) / np.linalg.norm(got)) > 0.99


def _conv_bn(path: Path, gamma1: np.ndarray) -> None:
    """x[N,3,8,8] -> Conv(w1[6,3,3,3], pads 1, no bias) -> BatchNormalization(gamma1, ...) -> Relu
    -> Conv(w2[4,6,1,1], b2) -> BatchNormalization -> Tanh -> y, every BatchNormalization parameter
    in a Constant node (as PaddleOCR exports them)."""
    rng = np.random.default_rng(3)

    def const(name: str, v: np.ndarray) -> onnx.NodeProto:
        return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(v.astype(np.float32), name))

    def bn(prefix: str, gamma: np.ndarray) -> list[onnx.NodeProto]:
        c = gamma.size
        return [const(f"{prefix}_scale", gamma), const(f"{prefix}_offset", rng.standard_normal(c) * 0.3),
                const(f"{prefix}_mean", rng.standard_normal(c) * 0.5), const(f"{prefix}_var", rng.uniform(0.2, 2.0, c))]

    w1 = numpy_helper.from_array((rng.standard_normal((6, 3, 3, 3)) * 0.3).astype(np.float32), "w1")
    w2 = numpy_helper.from_array((rng.standard_normal((4, 6, 1, 1)) * 0.4).astype(np.float32), "w2")
    b2 = numpy_helper.from_array((rng.standard_normal(4) * 0.1).astype(np.float32), "b2")
    gamma2 = np.array([1.2, -0.7, 0.9, 1.5])
    nodes = [*bn("bn1", gamma1), *bn("bn2", gamma2),
             helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c1", "bn1_scale", "bn1_offset", "bn1_mean", "bn1_var"], ["n1"], epsilon=1e-3),
             helper.make_node("Relu", ["n1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"]),
             helper.make_node("BatchNormalization", ["c2", "bn2_scale", "bn2_offset", "bn2_mean", "bn2_var"], ["n2"]),
             helper.make_node("Tanh", ["n2"], ["y"])]
    graph = helper.make_graph(nodes, "conv_bn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4, 8, 8])], [w1, w2, b2])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 6
    onnx.save(model, path)


def _weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """What each DequantizeLinear of an initializer computes (float64), by its output."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    out = {}
    for n in model.graph.node:
        if n.op_type == "DequantizeLinear" and n.input[0] in inits:
            q, s = inits[n.input[0]].astype(np.float64), inits[n.input[1]].astype(np.float64)
            zp = inits[n.input[2]].astype(np.float64) if len(n.input) > 2 else np.zeros_like(s)
            shape = [-1 if i == 0 and s.ndim else 1 for i in range(q.ndim)]
            out[n.output[0]] = (q - zp.reshape(shape)) * s.reshape(shape)
    return out


@pytest.mark.parametrize("per_channel", [True, False])
def test_batchnorm_folds_into_integer_conv(tmp_path: Path, per_channel: bool):
    """Each BatchNormalization after an integer Conv is folded into it, negative scales included: the
    folded weights are the container's times scale / sqrt(var + epsilon), the bias (b - mean) * s + B
    within half an int32 step, the pair after the Conv holds the range calibrated on the BatchNormalization's
    output, and onnxruntime runs both Convs as QLinearConv with no BatchNormalization left."""
    from qpack.converter.export.calibrate import ranges

    src = tmp_path / "cb.onnx"
    gamma1 = np.array([0.8, -1.3, 1.1, 0.5, -0.4, 2.0])
    _conv_bn(src, gamma1)
    rng = np.random.default_rng(4)
    np.savez(tmp_path / "cal.npz", x=rng.standard_normal((24, 3, 8, 8)).astype(np.float32))
    qpk = tmp_path / "cb.qpk"
    qpack.convert(src, qpk, bits=8, scheme="sym", per_channel=per_channel, compress="none")
    out = tmp_path / "cb_int8.onnx"
    done = qpack.export(qpk, "onnx-int8", out, inputs=tmp_path / "cal.npz", min_cosine=-1)
    says = "integer nodes (mse ranges on 24 inputs): Conv 2; 2 BatchNormalization folded into their Conv; least"
    assert done.notes[0].startswith(says), done.notes
    m = onnx.load(str(out))
    assert "BatchNormalization" not in {n.op_type for n in m.graph.node}
    ops = _fused_ops(out, tmp_path)
    assert ops["QLinearConv"] == 2 and "Conv" not in ops and "BatchNormalization" not in ops, ops

    # the folding in float64 from the container's own values
    restored = tmp_path / "restored.onnx"
    qpack.unpack(qpk, restored)
    f = onnx.load(str(restored))
    consts = {n.output[0]: numpy_helper.to_array(n.attribute[0].t).astype(np.float64) for n in f.graph.node if n.op_type == "Constant"}
    consts.update({t.name: numpy_helper.to_array(t).astype(np.float64) for t in f.graph.initializer})
    w = _weights(m)
    convs = [n for n in m.graph.node if n.op_type == "Conv"]
    for conv, (bn, eps, bias) in zip(convs, [("bn1", 1e-3, 0.0), ("bn2", 1e-5, consts["b2"])]):
        s = consts[f"{bn}_scale"] / np.sqrt(consts[f"{bn}_var"] + np.float32(eps))
        want = consts[conv.input[1]] * s.reshape(-1, 1, 1, 1)
        np.testing.assert_allclose(w[conv.input[1]], want, rtol=2e-7, atol=0)
        want_b = (bias - consts[f"{bn}_mean"]) * s + consts[f"{bn}_offset"]
        dq = next(n for n in m.graph.node if n.output[0] == conv.input[2])
        step = numpy_helper.to_array(next(t for t in m.graph.initializer if t.name == dq.input[1])).astype(np.float64)
        assert np.all(np.abs(w[conv.input[2]] - want_b) <= step * 0.5000001), (w[conv.input[2]], want_b)
    # the pair after the second Conv is at the range of the BatchNormalization's output in the float model
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    cal = qpack.load_inputs(restored, inputs=tmp_path / "cal.npz")
    assert inits["n2_act_scale"] == np.float32(ranges(restored, ["n2"], cal, "mse")["n2"].scale)
    assert not any(k.startswith("c2_act") for k in inits)

    x = rng.standard_normal((8, 3, 8, 8)).astype(np.float32)
    a = _session(restored).run(None, {"x": x})[0].ravel()
    b = _session(out).run(None, {"x": x})[0].ravel()
    assert a @ b / np.linalg.norm(a) / np.linalg.norm(b) > 0.999
    qpack.export(qpk, "onnx-int8", tmp_path / "again.onnx", inputs=tmp_path / "cal.npz", min_cosine=-1)
    assert (tmp_path / "again.onnx").read_bytes() == out.read_bytes()


def test_batchnorm_with_a_zero_scale_stays(tmp_path: Path):
    """A channel whose scale / sqrt(var + epsilon) is 0 cannot be folded (the weight scale would be 0):
    that BatchNormalization stays in float after its integer Conv, and the note says why."""
    src = tmp_path / "cb.onnx"
    _conv_bn(src, np.array([0.8, 0.0, 1.1, 0.5, -0.4, 2.0]))
    np.savez(tmp_path / "cal.npz", x=np.random.default_rng(4).standard_normal((8, 3, 8, 8)).astype(np.float32))
    qpk = tmp_path / "cb.qpk"
    qpack.convert(src, qpk, target="onnx-int8", compress="none")
    out = tmp_path / "cb_int8.onnx"
    done = qpack.export(qpk, "onnx-int8", out, inputs=tmp_path / "cal.npz", min_cosine=-1)
    assert ("Conv 2; 1 BatchNormalization folded into their Conv; BatchNormalization kept in float: "
            "1 (a channel's scale / sqrt(var + epsilon) is 0 or not finite)") in done.notes[0], done.notes
    assert [n.op_type for n in onnx.load(str(out)).graph.node].count("BatchNormalization") == 1


def test_cls_batchnorm_folds(ocr_cls: Path, tmp_path: Path):
    """PaddleOCR's classifier: its 35 BatchNormalization nodes (parameters in Constant nodes) fold into
    their Convs, so every Conv is integer with no float op between them, and the outputs keep the
    container's float model's."""
    qpk = tmp_path / "cls.qpk"
    qpack.convert(ocr_cls, qpk, target="onnx-int8", compress="none")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "cal.npz", x=rng.random((16, 3, 48, 192), dtype=np.float32))
    out = tmp_path / "cls_int8.onnx"
    done = qpack.export(qpk, "onnx-int8", out, inputs=tmp_path / "cal.npz")
    assert "35 BatchNormalization folded into their Conv" in done.notes[0], done.notes
    assert "BatchNormalization" not in {n.op_type for n in onnx.load(str(out)).graph.node}
    ops = _fused_ops(out, tmp_path)
    assert ops["QLinearConv"] == 53 and "Conv" not in ops, ops
    restored = tmp_path / "restored.onnx"
    qpack.unpack(qpk, restored)
    least = 1.0
    for x in rng.random((4, 1, 3, 48, 192), dtype=np.float32):
        a = _session(restored).run(None, {"x": x})[0].ravel()
        b = _session(out).run(None, {"x": x})[0].ravel()
        least = min(least, a @ b / np.linalg.norm(a) / np.linalg.norm(b))
    assert least > 0.99


def _hard_swish_cnn(path: Path, expose: bool = False) -> None:
    """x[1,3,8,8] -> Conv -> x * Clip(x + 3, 0, 6) / 6 (PaddlePaddle's hard-swish) -> Conv -> y; `expose`: the
    Clip's output is a graph output too (so the pattern's inner values must stay)."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array((rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32), "w1")
    w2 = numpy_helper.from_array((rng.standard_normal((4, 8, 1, 1)) * 0.3).astype(np.float32), "w2")
    c = [numpy_helper.from_array(np.array(v, np.float32), n) for n, v in (("three", [3.0]), ("zero", 0.0), ("six", 6.0))]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["h"], pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["h", "three"], ["a"]),
             helper.make_node("Clip", ["a", "zero", "six"], ["c"]),
             helper.make_node("Mul", ["h", "c"], ["m"]),
             helper.make_node("Div", ["m", "six"], ["hs"]),
             helper.make_node("Conv", ["hs", "w2"], ["y"])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])]
    if expose:
        outputs.append(helper.make_tensor_value_info("c", TensorProto.FLOAT, [1, 8, 8, 8]))
    graph = helper.make_graph(nodes, "hs", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])], outputs,
                              [w1, w2, *c])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)])
    model.ir_version = 7
    onnx.save(model, path)


@pytest.mark.parametrize("expose", [False, True])
def test_hard_swish_is_fused(tmp_path: Path, expose: bool):
    """PaddlePaddle's four-node hard-swish between integer Convs becomes one HardSwish (opset 14), whose
    outputs agree with the four nodes' to float rounding, and that one runs in integers (as
    test_a_hard_swish_between_integer_nodes_runs_in_integers checks); where a value inside the pattern is
    read elsewhere (a graph output here) the nodes stay."""
    src = tmp_path / "hs.onnx"
    _hard_swish_cnn(src, expose)
    np.savez(tmp_path / "cal.npz", x=np.random.default_rng(1).standard_normal((16, 3, 8, 8)).astype(np.float32))
    qpk = tmp_path / "hs.qpk"
    qpack.convert(src, qpk, target="onnx-int8", compress="none")
    out = tmp_path / "hs_int8.onnx"
    done = qpack.export(qpk, "onnx-int8", out, inputs=tmp_path / "cal.npz", min_cosine=-1)
    ops = collections.Counter(n.op_type for n in onnx.load(str(out)).graph.node)
    if expose:
        assert ops["HardSwish"] == 0 and ops["Clip"] == 1 and not any("HardSwish" in n for n in done.notes)
        return
    assert not ops["HardSwish"] and not ops["Clip"] and not ops["Div"]  # one HardSwish, then integer ops
    assert "1 hard-swish (x * Clip(x + 3, 0, 6) / 6) fused into HardSwish" in done.notes[1]
    assert "1 HardSwish between integer nodes computed in integers (onnxruntime's QLinearAdd and QLinearMul)" in done.notes
    model = onnx.load(str(out))
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == 14
    x = np.linspace(-8, 8, 3 * 64, dtype=np.float32).reshape(1, 3, 8, 8)
    four = np.float32(x) * np.clip(x + np.float32(3), 0, 6) / np.float32(6)
    one = x * np.clip(x / np.float32(6) + np.float32(0.5), 0, 1)
    assert np.abs(four - one).max() <= 4 * np.finfo(np.float32).eps * np.abs(four).max()  # the same function
    assert _fused_ops(out, tmp_path)["QLinearConv"] == 1  # the first; the second writes the float graph output


def _exported_affine(tmp_path: Path, nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto],
                     rng: np.random.Generator, opset: int = 13) -> tuple[Path, Path, qpack.api.Exported, np.ndarray]:
    """A model x[1, 3, 8, 8] -> y[1, 4, 8, 8] of `nodes`, converted --for onnx-int8 and exported with every
    node integer, calibrated on 16 normal inputs: (the container, the export, its result, the inputs)."""
    graph = helper.make_graph(nodes, "affine", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    onnx.save(model, tmp_path / "affine.onnx")
    x = rng.standard_normal((16, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "cal.npz", x=x)
    qpk = tmp_path / "affine.qpk"
    qpack.convert(tmp_path / "affine.onnx", qpk, target="onnx-int8", compress="none")
    out = tmp_path / "affine_int8.onnx"
    return qpk, out, qpack.export(qpk, "onnx-int8", out, inputs=tmp_path / "cal.npz", min_cosine=-1), x


def _cosine_to_container(qpk: Path, out: Path, x: np.ndarray, tmp: Path) -> float:
    """The cosine of the export's outputs on the inputs `x`, one at a time, to the unpacked container's."""
    qpack.unpack(qpk, tmp / "restored.onnx")
    a, b = _session(tmp / "restored.onnx"), _session(out)
    ref = np.concatenate([a.run(None, {"x": x[i : i + 1]})[0] for i in range(len(x))])
    got = np.concatenate([b.run(None, {"x": x[i : i + 1]})[0] for i in range(len(x))])
    return float((ref * got).sum() / np.linalg.norm(ref) / np.linalg.norm(got))


def _hard_swish_between_convs(rng: np.random.Generator) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """x -> Conv(w1, 3x3) -> HardSwish -> Conv(w2, 1x1) -> y: the nodes and the weights."""
    w1 = numpy_helper.from_array((rng.standard_normal((8, 3, 3, 3)) * 0.5).astype(np.float32), "w1")
    w2 = numpy_helper.from_array((rng.standard_normal((4, 8, 1, 1)) * 0.3).astype(np.float32), "w2")
    return [helper.make_node("Conv", ["x", "w1"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("HardSwish", ["c"], ["h"]),
            helper.make_node("Conv", ["h", "w2"], ["y"])], [w1, w2]


@pytest.mark.parametrize("factor", [0.7, -0.7])
def test_a_scalar_mul_add_after_a_conv_is_folded_into_it(tmp_path: Path, factor: float):
    """PaddlePaddle's learnable affine blocks, a Mul by one constant and an Add of one after a Conv, fold into it
    as a BatchNormalization does (a negative factor negates the codes): no float op is left between the
    integer nodes, and the outputs keep the container's."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array((rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32), "w1")
    b1 = numpy_helper.from_array((rng.standard_normal(8) * 0.1).astype(np.float32), "b1")
    w2 = numpy_helper.from_array((rng.standard_normal((4, 8, 1, 1)) * 0.3).astype(np.float32), "w2")
    consts = [numpy_helper.from_array(np.array(v, np.float32), n) for n, v in (("a", [factor]), ("c", [0.25]))]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["h"], pads=[1, 1, 1, 1]),
             helper.make_node("Mul", ["a", "h"], ["m"]),
             helper.make_node("Add", ["m", "c"], ["t"]),
             helper.make_node("Relu", ["t"], ["r"]),
             helper.make_node("Conv", ["r", "w2"], ["y"])]
    qpk, out, done, x = _exported_affine(tmp_path, nodes, [w1, b1, w2, *consts], rng)
    assert "Conv 2; 1 Mul/Add folded into their Conv" in done.notes[0], done.notes
    ops = collections.Counter(n.op_type for n in onnx.load(str(out)).graph.node)
    assert not ops["Mul"] and not ops["Add"] and not ops["Relu"]
    cos = _cosine_to_container(qpk, out, x, tmp_path)
    assert cos > 0.999, cos



@pytest.mark.parametrize("offset,kernel,route", [(0.01, 1, "bias"), (3.0, 3, "whole"), (0.01, 3, "mul")])
def test_a_scalar_affine_before_an_integer_node_is_computed_by_its_quantization(tmp_path: Path, offset: float, kernel: int,
                                                                                 route: str):
    """A Mul by s and an Add of t after a float op, read only by an integer Conv, go into the QuantizeLinear in
    front of it: its integers are round((s * h + t') / step) + zero point, at the step and zero point the Conv's
    input is dequantized at. Before a Conv without padding t goes into its bias (t' = 0, the bias grows by t
    times each channel's weight sum); before a padded one t' = t, the Add going too where t is a whole number
    of steps, else only the Mul (the Add adds t / s)."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array((rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32), "w1")
    w2 = numpy_helper.from_array((rng.standard_normal((4, 8, kernel, kernel)) * 0.3).astype(np.float32), "w2")
    consts = [numpy_helper.from_array(np.array(v, np.float32), n) for n, v in (("s", [0.7]), ("t", [offset]))]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Sigmoid", ["c"], ["h"]),
             helper.make_node("Mul", ["h", "s"], ["m"]),
             helper.make_node("Add", ["t", "m"], ["a"]),
             helper.make_node("Conv", ["a", "w2"], ["y"], pads=[kernel // 2] * 4)]
    qpk, out, done, x = _exported_affine(tmp_path, nodes, [w1, w2, *consts], rng)
    counts = {"bias": (1, 0, 0), "whole": (0, 1, 0), "mul": (0, 0, 1)}[route]
    assert ("1 scalar Mul/Add before integer nodes computed by their QuantizeLinear ({} with the Add in the next nodes' "
            "biases, {} whole, {} the Mul only)".format(*counts)) in done.notes, done.notes
    m = onnx.load(str(out))
    ops = collections.Counter(n.op_type for n in m.graph.node)
    assert not ops["Mul"] and ops["Add"] == (route == "mul")
    made = {o: n for n in m.graph.node for o in n.output}
    conv = next(n for n in m.graph.node if n.op_type == "Conv" and n.output[0] == "y")
    dq = made[conv.input[0]]
    q = made[dq.input[0]]
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    step, zero = float(inits[dq.input[1]]), int(inits[dq.input[2]])
    m.graph.output.extend([helper.make_tensor_value_info("h", TensorProto.FLOAT, None),
                           helper.make_tensor_value_info(q.output[0], TensorProto.UINT8, None)])
    onnx.save(m, tmp_path / "exposed.onnx")
    h, codes = _session(tmp_path / "exposed.onnx", ort.GraphOptimizationLevel.ORT_ENABLE_BASIC).run(["h", q.output[0]], {"x": x[:1]})
    quantized = 0.0 if route == "bias" else offset
    want = np.clip(np.rint((0.7 * h.astype(np.float64) + quantized) / step) + zero, 0, 255)
    assert np.abs(want - codes).max() <= 1 and np.mean(want == codes) > 0.99
    if route == "whole":
        assert abs(offset / step - round(offset / step)) < 1e-3
    if route == "bias":  # the int32 bias is t times each output channel's weight sum, at the input's step times the weight's
        bias_dq = made[conv.input[2]]
        w_dq = made[conv.input[1]]
        codes_w = inits[w_dq.input[0]].astype(np.float64)
        scale_w = np.broadcast_to(inits[w_dq.input[1]].reshape(-1), (4,)).astype(np.float64)
        sums = (codes_w.reshape(4, -1) * scale_w[:, None]).sum(axis=1)
        assert np.array_equal(inits[bias_dq.input[0]], np.round(offset * sums / (np.float32(step) * scale_w.astype(np.float32))))
    assert _cosine_to_container(qpk, out, x, tmp_path) > 0.999


@pytest.mark.parametrize("case", ["padded and unpadded readers", "auto_pad SAME_UPPER", "unpadded, with a bias"])
def test_the_add_goes_into_biases_only_where_every_reader_has_no_padding(tmp_path: Path, case: str):
    """t goes into the biases only where no reader pads (a padded window would add t for the zeros too); a
    reader with a bias of its own keeps it, t times its weight sums added. Either way the outputs keep the
    container's."""
    rng = np.random.default_rng(1)
    w1 = numpy_helper.from_array((rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32), "w1")
    w2 = numpy_helper.from_array((rng.standard_normal((4, 8, 1, 1)) * 0.3).astype(np.float32), "w2")
    w3 = numpy_helper.from_array((rng.standard_normal((4, 8, 3, 3)) * 0.3).astype(np.float32), "w3")
    b2 = numpy_helper.from_array(np.array([0.5, -0.25, 0.125, 1.0], np.float32), "b2")
    consts = [numpy_helper.from_array(np.array(v, np.float32), n) for n, v in (("s", [0.7]), ("t", [0.01]))]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Sigmoid", ["c"], ["h"]),
             helper.make_node("Mul", ["h", "s"], ["m"]),
             helper.make_node("Add", ["t", "m"], ["a"])]
    if case == "padded and unpadded readers":
        nodes += [helper.make_node("Conv", ["a", "w2"], ["p"]), helper.make_node("Conv", ["a", "w3"], ["q"], pads=[1, 1, 1, 1]),
                  helper.make_node("Add", ["p", "q"], ["y"])]
    elif case == "auto_pad SAME_UPPER":
        nodes.append(helper.make_node("Conv", ["a", "w3"], ["y"], auto_pad="SAME_UPPER"))
    else:
        nodes.append(helper.make_node("Conv", ["a", "w2", "b2"], ["y"]))
    qpk, out, done, x = _exported_affine(tmp_path, nodes, [w1, w2, w3, b2, *consts], rng)
    biased = case == "unpadded, with a bias"
    assert f"1 scalar Mul/Add before integer nodes computed by their QuantizeLinear ({int(biased)} with the Add in the next " \
        f"nodes' biases, 0 whole, {int(not biased)} the Mul only)" in done.notes, done.notes
    assert _cosine_to_container(qpk, out, x, tmp_path) > 0.999


@pytest.mark.parametrize("case", ["its output a graph output", "its output read by a float node"])
def test_a_hard_swish_read_elsewhere_stays_float(tmp_path: Path, case: str):
    """A HardSwish whose output anything but the quantization in front of integer nodes reads stays a float
    HardSwish (its float values are wanted)."""
    rng = np.random.default_rng(0)
    nodes, weights = _hard_swish_between_convs(rng)
    if case == "its output read by a float node":
        nodes[-1].output[0] = "z"
        nodes += [helper.make_node("ReduceMean", ["h"], ["r"], axes=[1], keepdims=1), helper.make_node("Add", ["z", "r"], ["y"])]
    qpk, out, done, x = _exported_affine(tmp_path, nodes, weights, rng, opset=14)
    if case == "its output a graph output":  # (made an output after the export: the same graph otherwise)
        src = onnx.load(str(tmp_path / "affine.onnx"))
        src.graph.output.append(helper.make_tensor_value_info("h", TensorProto.FLOAT, [1, 8, 8, 8]))
        onnx.save(src, tmp_path / "affine.onnx")
        qpack.convert(tmp_path / "affine.onnx", qpk, target="onnx-int8", compress="none")
        done = qpack.export(qpk, "onnx-int8", out, inputs=tmp_path / "cal.npz", min_cosine=-1)
    assert not any("computed in integers" in n for n in done.notes), done.notes
    assert collections.Counter(n.op_type for n in onnx.load(str(out)).graph.node)["HardSwish"] == 1


def test_a_hard_swish_between_integer_nodes_runs_in_integers(tmp_path: Path):
    """A HardSwish between two integer Convs becomes QLinearAdd and QLinearMul: the gate is x + 3 quantized at
    6/255 (uint8 saturating where Clip would) read as HardSigmoid(x) on 255 levels, the product quantized at
    the next Conv's input. Its integers match a NumPy reference of that arithmetic, and the outputs keep the
    container's."""
    rng = np.random.default_rng(0)
    nodes, weights = _hard_swish_between_convs(rng)
    qpk, out, done, x = _exported_affine(tmp_path, nodes, weights, rng, opset=14)
    assert "1 HardSwish between integer nodes computed in integers (onnxruntime's QLinearAdd and QLinearMul)" in done.notes
    fused = _fused_ops(out, tmp_path)
    # (the second Conv writes the float graph output, so it stays a Conv)
    assert fused["QLinearAdd"] == 1 and fused["QLinearMul"] == 1 and fused["QLinearConv"] == 1, fused
    assert not fused["HardSwish"] and not fused["HardSigmoid"] and not fused["Mul"], fused
    m = onnx.load(str(out))
    made = {o: n for n in m.graph.node for o in n.output}
    mul = next(n for n in m.graph.node if n.op_type == "Mul")
    x_dq = made[mul.input[0]]
    out_q = next(n for n in m.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == mul.output[0])
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    x_step, x_zero = float(inits[x_dq.input[1]]), int(inits[x_dq.input[2]])
    y_step, y_zero = float(inits[out_q.input[1]]), int(inits[out_q.input[2]])
    m.graph.output.extend([helper.make_tensor_value_info(x_dq.input[0], TensorProto.UINT8, None),
                           helper.make_tensor_value_info(out_q.output[0], TensorProto.UINT8, None)])
    onnx.save(m, tmp_path / "exposed.onnx")
    xq, yq = _session(tmp_path / "exposed.onnx").run([x_dq.input[0], out_q.output[0]], {"x": x[:1]})
    xv = x_step * (xq.astype(np.float64) - x_zero)
    gate = np.clip(np.rint((xv + 3) / (6 / 255)), 0, 255) / 255
    want = np.clip(np.rint(xv * gate / y_step) + y_zero, 0, 255)
    assert np.abs(want - yq).max() <= 1 and np.mean(want == yq) > 0.95, (np.abs(want - yq).max(), np.mean(want == yq))
    assert _cosine_to_container(qpk, out, x, tmp_path) > 0.999


@pytest.mark.parametrize("recorded", [1.5, "0.99", True])
def test_a_recorded_export_cosine_is_checked(tmp_path: Path, recorded: object):
    """The export cosine a container records is read from a file: one outside [-1, 1], or not a number,
    is one line and exit 1, and nothing is written."""
    from qpack.converter.convert import convert
    from qpack.converter.policy import Policy
    from qpack.formats.registry import open_model

    src = tmp_path / "mlp.onnx"
    _mlp(src)
    np.savez(tmp_path / "cal.npz", x=np.random.default_rng(1).standard_normal((8, 64)).astype(np.float32))
    qpk = tmp_path / "mlp.qpk"
    with open_model(src) as m:
        convert(m, Policy("sym", 8, per_channel=True, target="onnx-int8", export_cosine=recorded), qpk)  # type: ignore[arg-type]
    out = tmp_path / "x.onnx"
    r = runner.invoke(app, ["export", str(qpk), "--to", "onnx-int8", "--inputs", str(tmp_path / "cal.npz"), "-o", str(out)])
    assert r.exit_code == 1 and r.output.strip().splitlines() == [
        f"qpack: error: {qpk}: its export_min_cosine {recorded!r} is not a cosine in [-1, 1]"], r.output
    assert not out.exists()
    ok = runner.invoke(app, ["export", str(qpk), "--to", "onnx-int8", "--inputs", str(tmp_path / "cal.npz"), "-o", str(out),
                             "--min-cosine", "0.99"])
    assert ok.exit_code == 0 and out.exists(), ok.output  # a cosine given on the command line needs none recorded
