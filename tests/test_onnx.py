"""ONNX round trips on real models: weights found wherever they live, restored model runs in onnxruntime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qpack.converter.convert import convert, restore
from qpack.converter.policy import Policy
from qpack.converter.runtime import OnnxRunner, random_inputs
from qpack.formats.errors import FormatError
from qpack.formats.model import Role
from qpack.formats.onnx_model import OnnxModel
from qpack.formats.qpk import QpkReader
from tests.tiny import if_model, tiny_model


def _round_trip(src: Path, tmp: Path, policy: Policy) -> tuple[Path, Path]:
    qpk, restored = tmp / "m.qpk", tmp / "m.onnx"
    convert(OnnxModel(src), policy, qpk)
    restore(qpk, restored)
    return qpk, restored


def _outputs(path: Path, feeds: dict) -> list[np.ndarray]:
    return OnnxRunner(path).run(feeds)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


def test_constant_node_weights_paddle_ocr(ocr_cls: Path, tmp_path: Path):
    model = OnnxModel(ocr_cls)
    kernels = [w for w in model.weights if w.role == Role.KERNEL]
    assert len(kernels) >= 50 and all(":" in w.key and "node" in w.key for w in kernels)  # Constant nodes
    qpk, restored = _round_trip(ocr_cls, tmp_path, Policy("asym", 8, per_channel=True))
    assert qpk.stat().st_size < ocr_cls.stat().st_size * 0.45
    feeds = {"x": np.random.default_rng(0).random((2, 3, 48, 192), dtype=np.float32)}
    ref, got = _outputs(ocr_cls, feeds), _outputs(restored, feeds)
    assert ref[0].shape == got[0].shape == (2, 2)
    assert np.abs(ref[0] - got[0]).max() < 0.05  # class probabilities
    restored_model = onnx.load(str(restored))
    assert sum(n.op_type == "Constant" for n in restored_model.graph.node) == sum(
        n.op_type == "Constant" for n in onnx.load(str(ocr_cls)).graph.node)


def test_lstm_silero(silero_lstm: Path, tmp_path: Path):
    model = OnnxModel(silero_lstm)
    rec = [w for w in model.weights if w.role == Role.RECURRENT]
    assert len(rec) == 2 and all(w.axis == 1 for w in rec)
    assert any(w.role == Role.BIAS and "LSTM:3" in w.consumers for w in model.weights)
    _, restored = _round_trip(silero_lstm, tmp_path, Policy("sym", 8, per_channel=True))
    runner = OnnxRunner(silero_lstm)
    feeds = random_inputs(runner.inputs, seed=1, dynamic=3)
    feeds["input"] *= 0.1
    ref, got = runner.run(feeds), _outputs(restored, feeds)
    for r, g in zip(ref, got):
        assert _cosine(r, g) > 0.999
    assert np.abs(ref[0] - got[0]).max() < 0.03  # speech probability (near 0.5, where the sigmoid is steepest)


def test_weights_in_if_subgraphs_are_quantized_and_restored(tmp_path: Path):
    src = tmp_path / "if.onnx"
    onnx.save(if_model(), src)
    model = OnnxModel(src)
    sub = [w for w in model.weights if "/" in w.key]
    assert {w.name for w in sub} == {"then.w", "else.w"} and all(w.role == Role.MATRIX for w in sub)
    _, restored = _round_trip(src, tmp_path, Policy("asym", 8))
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    for cond in (True, False):
        feeds = {"x": x, "cond": np.array(cond)}
        ref, got = _outputs(src, feeds)[0], _outputs(restored, feeds)[0]
        assert np.abs(ref - got).max() < 0.05 and not np.array_equal(ref, got)


def _keyed_model() -> onnx.ModelProto:
    """Tensors in every place a key can name: initializers, Constant nodes (one whose output holds ':'
    and '/'), an If's branches, a graph list attribute, and a subgraph within a subgraph."""
    def const(out: str, v: float) -> onnx.NodeProto:
        return helper.make_node("Constant", [], [out], value=numpy_helper.from_array(np.full(2, v, np.float32)))

    def graph(name: str, nodes: list, inits: list) -> onnx.GraphProto:
        return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info("o", TensorProto.FLOAT, [2])], inits)

    def init(name: str) -> TensorProto:
        return numpy_helper.from_array(np.ones(2, np.float32), name)

    inner = graph("inner", [const("deep", 1.0)], [init("i.w")])
    then = graph("then", [helper.make_node("If", ["c"], ["o"], then_branch=inner, else_branch=graph("e2", [], []))], [])
    nodes = [const("a:b/c", 2.0), helper.make_node("Relu", ["x"], ["y"]),
             helper.make_node("If", ["c"], ["z"], then_branch=then, else_branch=graph("else", [const("e", 3.0)], [])),
             helper.make_node("Custom", [], ["u"], domain="x.y", bodies=[graph("b0", [], [init("b0.w")]), graph("b1", [], [init("b1.w")])])]
    main = helper.make_graph(nodes, "main", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                             [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])], [init("w"), init("v")])
    return helper.make_model(main)


def test_tensor_keys_name_every_location():
    """FORMAT.md's keys, in file order, from the one walk the adapter and the exports share."""
    from qpack.converter.export.onnx_graph import sites
    from qpack.formats.onnx_keys import split_key, walk_sites
    from qpack.formats.onnx_model import walk_tensors

    model = _keyed_model()
    keys = ["init:w", "init:v", "node0:a:b/c", "node2.else_branch/node0:e",  # attributes in the node's order (onnx sorts them)
            "node2.then_branch/node0.then_branch/init:i.w", "node2.then_branch/node0.then_branch/node0:deep",
            "node3.bodies[0]/init:b0.w", "node3.bodies[1]/init:b1.w"]
    assert [s.key for s in walk_sites(model.graph)] == [k for k, _ in walk_tensors(model.graph)] == list(sites(model)) == keys
    assert [s.value for s in walk_sites(model.graph)] == ["w", "v", "a:b/c", "e", "i.w", "deep", "b0.w", "b1.w"]
    assert [split_key(k) for k in keys[2:6]] == [("node0", "a:b/c"), ("node0", "e"), ("init", "i.w"), ("node0", "deep")]
    for bad in ("w", "node:x", "node1.then/x:y", "nodeA:x"):
        with pytest.raises(FormatError, match="malformed tensor key"):
            split_key(bad)


def test_silero_if_model_runs_after_round_trip(silero_if: Path, tmp_path: Path):
    _, restored = _round_trip(silero_if, tmp_path, Policy("asym", 8, per_channel=True))
    runner = OnnxRunner(silero_if)
    feeds = {"input": np.random.default_rng(2).standard_normal((1, 512)).astype(np.float32) * 0.1,
             "state": np.zeros((2, 1, 128), np.float32), "sr": np.array(16000, np.int64)}
    ref, got = runner.run(feeds), _outputs(restored, feeds)
    assert abs(float(ref[0].ravel()[0]) - float(got[0].ravel()[0])) < 0.02


def test_sample_8bit_close_and_integers_untouched(sample: Path, tmp_path: Path):
    _, restored = _round_trip(sample, tmp_path, Policy("asym", 8))
    a, b = onnx.load(str(sample)), onnx.load(str(restored))
    for ta, tb in zip(a.graph.initializer, b.graph.initializer):
        assert ta.name == tb.name and ta.data_type == tb.data_type and list(ta.dims) == list(tb.dims)
        if ta.name.endswith("bias") or "Conv_37" in ta.name or "Conv_40" in ta.name:
            assert numpy_helper.to_array(ta).tobytes() == numpy_helper.to_array(tb).tobytes()  # biases kept exactly
    x = np.random.default_rng(0).random((16, 1, 8, 8), dtype=np.float32)
    ref, got = _outputs(sample, {"image": x})[0], _outputs(restored, {"image": x})[0]
    assert (ref.argmax(1) == got.argmax(1)).mean() >= 0.9
    assert _cosine(ref, got) > 0.999


@pytest.mark.parametrize("dtype,np_dtype", [(TensorProto.FLOAT16, np.float16), (TensorProto.BFLOAT16, None),
                                            (TensorProto.DOUBLE, None)])  # onnxruntime has no float64 Conv
def test_source_dtype_preserved(dtype, np_dtype, tmp_path: Path):
    src = tmp_path / "t.onnx"
    onnx.save(tiny_model(dtype), src)
    q, restored = _round_trip(src, tmp_path, Policy("sym", 8, include=("conv.w",)))
    entries = QpkReader(q).entries
    assert {e.name for e in entries} == {"conv.w", "fc.w"}
    m = onnx.load(str(restored))
    w = next(t for t in m.graph.initializer if t.name == "conv.w")
    assert w.data_type == dtype
    values = numpy_helper.to_array(w).astype(np.float32)
    np.testing.assert_allclose(values, (np.arange(8).reshape(2, 1, 2, 2) - 3.5) / 4, atol=0.01)
    if np_dtype is not None:
        feeds = {"x": np.ones((1, 1, 3, 3), np_dtype)}
        np.testing.assert_allclose(_outputs(restored, feeds)[0], _outputs(src, feeds)[0], atol=0.05)


def test_external_data(tmp_path: Path, sample: Path):
    model = onnx.load(str(sample))
    src = tmp_path / "ext" / "m.onnx"
    src.parent.mkdir()
    onnx.save_model(model, str(src), save_as_external_data=True, all_tensors_to_one_file=True, location="m.bin", size_threshold=0)
    loaded = OnnxModel(src)
    assert loaded.file_bytes == src.stat().st_size + (src.parent / "m.bin").stat().st_size
    _, restored = _round_trip(src, tmp_path, Policy("asym", 8))
    x = np.random.default_rng(0).random((4, 1, 8, 8), dtype=np.float32)
    np.testing.assert_allclose(_outputs(restored, {"image": x})[0], _outputs(sample, {"image": x})[0], atol=0.2)


def test_attribute_tensors_in_external_data_travel_inline(tmp_path: Path, silero_if: Path):
    """`onnx.save(..., convert_attribute=True)` moves attribute tensors out too (Silero's ConstantOfShape
    values, its Constant weights in If branches): the restored model carries them inline, and runs away from
    the source's data file as the model they came from does."""
    src = tmp_path / "ext" / "m.onnx"
    src.parent.mkdir()
    onnx.save_model(onnx.load(str(silero_if)), str(src), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="m.data", size_threshold=0, convert_attribute=True)
    stored = onnx.load(str(src), load_external_data=False)
    assert any(n.op_type == "ConstantOfShape" and n.attribute[0].t.data_location == TensorProto.EXTERNAL
               for g in [stored.graph] for n in g.node)
    q = tmp_path / "m.qpk"
    convert(OnnxModel(src), Policy("asym", 8), q)
    restored = tmp_path / "restored.onnx"
    restore(q, restored)
    rng = np.random.default_rng(0)
    feeds = {"input": rng.standard_normal((1, 512)).astype(np.float32) * 0.1, "state": np.zeros((2, 1, 128), np.float32),
             "sr": np.array(16000, np.int64)}
    direct = tmp_path / "direct.qpk"  # the model it came from, converted alike (onnxruntime loads no external Constant)
    convert(OnnxModel(silero_if), Policy("asym", 8), direct)
    restore(direct, tmp_path / "direct.onnx")
    for a, b in zip(_outputs(restored, feeds), _outputs(tmp_path / "direct.onnx", feeds)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("location", ["../outside.bin", "/etc/passwd", "sub/../../x.bin"])
def test_external_data_outside_folder_rejected(tmp_path: Path, location: str):
    model = tiny_model()
    t = model.graph.initializer[0]
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", "32")):
        e = t.external_data.add()
        e.key, e.value = k, v
    (tmp_path / "outside.bin").write_bytes(bytes(32))
    d = tmp_path / "m"
    d.mkdir()
    onnx.save(model, d / "m.onnx")
    with pytest.raises(FormatError, match="outside|relative"):
        OnnxModel(d / "m.onnx")


@pytest.mark.parametrize(("location", "says"), [("../outside.bin", "outside"), ("/etc/passwd", "relative"),
                                                ("v.bin", r"external data \[64, 68\) exceeds v.bin")])
def test_an_attribute_tensor_in_external_data_is_checked_as_weights_are(tmp_path: Path, location: str, says: str):
    """A ConstantOfShape value kept in external data: its location and range are checked as a weight's are, and
    the error names its node (it has no name of its own)."""
    model = tiny_model()
    fill = helper.make_tensor("", TensorProto.FLOAT, [1], [0.0])
    fill.ClearField("float_data")
    fill.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "64"), ("length", "4")):
        e = fill.external_data.add()
        e.key, e.value = k, v
    model.graph.node.append(helper.make_node("ConstantOfShape", ["shape"], ["filled"], name="fill", value=fill))
    d = tmp_path / "m"
    d.mkdir()
    (d / "v.bin").write_bytes(bytes(16))
    onnx.save(model, d / "m.onnx")
    with pytest.raises(FormatError, match=says) as e:
        OnnxModel(d / "m.onnx")
    assert "\n" not in str(e.value)
    if location == "v.bin":
        assert "attribute 'value' of ConstantOfShape node 'fill'" in str(e.value)


def test_external_data_length_checked(tmp_path: Path):
    model = tiny_model()
    t = model.graph.initializer[0]
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    for k, v in (("location", "w.bin"), ("offset", "16"), ("length", "32")):
        e = t.external_data.add()
        e.key, e.value = k, v
    (tmp_path / "w.bin").write_bytes(bytes(40))
    onnx.save(model, tmp_path / "m.onnx")
    with pytest.raises(FormatError, match="exceeds"):
        OnnxModel(tmp_path / "m.onnx")


@pytest.mark.parametrize("payload", [b"", b"not a model at all\n" * 10, bytes(range(256)) * 4])
def test_not_onnx_rejected(tmp_path: Path, payload: bytes):
    p = tmp_path / "x.onnx"
    p.write_bytes(payload)
    with pytest.raises(FormatError):
        OnnxModel(p)


def test_truncated_onnx_rejected(tmp_path: Path, sample: Path):
    data = sample.read_bytes()
    p = tmp_path / "t.onnx"
    for cut in (10, len(data) // 3, len(data) - 7):
        p.write_bytes(data[:cut])
        with pytest.raises(FormatError):
            OnnxModel(p)


def test_nan_weight_refused(tmp_path: Path):
    model = tiny_model()
    w = numpy_helper.to_array(model.graph.initializer[0]).copy()
    w.flat[0] = np.nan
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(w, "conv.w"))
    onnx.save(model, tmp_path / "m.onnx")
    with pytest.raises(FormatError, match="NaN"):
        convert(OnnxModel(tmp_path / "m.onnx"), Policy("asym", 8, include=("conv.w",)), tmp_path / "m.qpk")
    assert not (tmp_path / "m.qpk").exists()


def test_restore_over_protobuf_limit_writes_external_data(monkeypatch, tmp_path: Path, sample: Path):
    """A restored model too large for one protobuf gets a .data file beside it; onnxruntime loads both."""
    import qpack.formats.onnx_model as om

    monkeypatch.setattr(om, "_INLINE_LIMIT", 10_000)  # the sample's 230 kB stands in for a 2 GB model
    qpk, restored = tmp_path / "m.qpk", tmp_path / "out" / "m.onnx"
    restored.parent.mkdir()
    convert(OnnxModel(sample), Policy("asym", 8), qpk)
    written = restore(qpk, restored)
    assert written == [restored, restored.with_name("m.onnx.data")]
    assert restored.stat().st_size < 10_000 < restored.with_name("m.onnx.data").stat().st_size
    x = np.random.default_rng(0).random((4, 1, 8, 8), dtype=np.float32)
    np.testing.assert_allclose(_outputs(restored, {"image": x})[0], _outputs(sample, {"image": x})[0], atol=0.2)
    assert OnnxModel(restored).external_files == [restored.with_name("m.onnx.data").resolve()]


@pytest.mark.parametrize("file", ["silero_vad.onnx", "silero_vad_16k_op15.onnx", "silero_vad_openvino_16k.onnx",
                                  "silero_vad_op18_ifless.onnx"])
def test_lstm_weights_behind_layout_ops_are_quantized(file: str, tmp_path: Path):
    """Exports put the LSTM's W and R behind Slice/Concat/Unsqueeze (or name them with ':'): they are
    still recurrent matrices, with the gate axis as channels and the input axis as reduction."""
    from tests.conftest import packaged

    path = packaged("silero-vad", f"silero_vad/data/{file}")
    with OnnxModel(path) as model:
        floats = [w for w in model.weights if w.is_float]
        lstm = [w for w in floats if w.shape == (512, 128) or w.shape[-2:] == (512, 128)]
        # an LSTM, or its unrolled Gemm (op18)
        assert lstm and all(w.role in (Role.RECURRENT, Role.MATRIX) for w in lstm), [(w.name, w.role, w.consumers) for w in lstm]
        assert all((w.axis, w.reduction) == (len(w.shape) - 2, len(w.shape) - 1) for w in lstm)
        share = sum(w.size for w in floats if Policy("asym", 8).decide(w).quantize) / sum(w.size for w in floats)
    assert share > 0.99
    _, restored = _round_trip(path, tmp_path, Policy("asym", 8, per_channel=True))
    runner = OnnxRunner(path)
    rng = np.random.default_rng(3)
    specs = {s.name: s for s in runner.inputs}
    audio = tuple(d or n for d, n in zip(specs["input"].shape, (1, 512)))  # one export wants 64 samples of context too
    feeds = {"input": rng.standard_normal(audio).astype(np.float32) * 0.1, "state": np.zeros((2, 1, 128), np.float32),
             "sr": np.array(16000, np.int64)}
    feeds = {k: v for k, v in feeds.items() if k in specs}
    ref, got = runner.run(feeds), _outputs(restored, feeds)
    assert abs(float(ref[0].ravel()[0]) - float(got[0].ravel()[0])) < 0.02


def test_layout_tracing_maps_axes(tmp_path: Path):
    """A MatMul weight stored transposed and reshaped: the channel and reduction axes are found through the ops."""
    w = np.random.default_rng(0).standard_normal((6, 2, 4)).astype(np.float32)  # [N, K1, K2], used as [K, N]
    shape = numpy_helper.from_array(np.array([6, 8], np.int64), "shape")
    nodes = [helper.make_node("Reshape", ["w", "shape"], ["w2"]), helper.make_node("Transpose", ["w2"], ["wt"], perm=[1, 0]),
             helper.make_node("MatMul", ["x", "wt"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6])],
                              [numpy_helper.from_array(w, "w"), shape])
    path = tmp_path / "t.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    with OnnxModel(path) as model:
        (weight,) = [x for x in model.weights if x.name == "w"]
    # MatMul B is [K=8, N=6] = transpose of [6, 8] = reshape of [6, 2, 4]: N is the weight's axis 0; K
    # merges axes 1 and 2, so no single axis of the weight is the reduction
    assert weight.role == Role.MATRIX and weight.axis == 0 and weight.reduction is None
    assert weight.consumers == ("Reshape>Transpose>MatMul:1",)
