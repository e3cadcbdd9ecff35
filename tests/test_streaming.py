"""The adapters stream: ONNX weights are read on demand, skeletons keep their exact bytes, restore goes
tensor by tensor, and hostile sizes fail as FormatError before any allocation or read."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qpack.converter.runtime import OnnxRunner
from qpack.formats import onnx_model, onnx_wire, tflite_model
from qpack.formats.errors import FormatError, QpackError
from qpack.formats.onnx_model import OnnxModel, walk_tensors
from qpack.formats.onnx_wire import encode_varint, field_head
from qpack.formats.tflite_model import TfliteModel
from tests.conftest import ROOT, SAMPLE, packaged
from tests.tiny import if_model, tiny_model

MB = 1 << 20


# ---------------------------------------------------------------------------------------------
# models: shipped fixtures and generated ones covering every place and encoding a weight can have


def _save(model: onnx.ModelProto, path: Path, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path), **kw)
    return path


def _graph_model(nodes: list, inits: list, inputs: list, outputs: list, opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _mlp(sizes: list[int], seed: int = 0, constant_last: bool = True) -> tuple[onnx.ModelProto, list[np.ndarray]]:
    """x[1, sizes[0]] -> (MatMul W_i, Add b_i)... ; the last weight sits in a Constant node."""
    rng = np.random.default_rng(seed)
    nodes, inits, ws, prev = [], [], [], "x"
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        w = (rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32)
        ws.append(w)
        if constant_last and i == len(sizes) - 2:
            nodes.append(helper.make_node("Constant", [], [f"w{i}"], value=numpy_helper.from_array(w, f"w{i}")))
        else:
            inits.append(numpy_helper.from_array(w, f"w{i}"))
        inits.append(numpy_helper.from_array(np.full(b, 0.01 * i, np.float32), f"b{i}"))
        nodes += [helper.make_node("MatMul", [prev, f"w{i}"], [f"m{i}"]), helper.make_node("Add", [f"m{i}", f"b{i}"], [f"h{i}"])]
        prev = f"h{i}"
    model = _graph_model(nodes, inits, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, sizes[0]])],
                         [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [1, sizes[-1]])])
    return model, ws


def _stored_as_lists(tmp: Path) -> Path:
    """Weights in float_data, double_data and int32_data (float16) rather than raw_data."""
    rng = np.random.default_rng(5)
    f32, f64, f16 = (rng.standard_normal((8, 6)).astype(t) for t in (np.float32, np.float64, np.float16))
    inits = [helper.make_tensor("f32", TensorProto.FLOAT, [8, 6], f32.ravel(), raw=False),
             helper.make_tensor("f64", TensorProto.DOUBLE, [8, 6], f64.ravel(), raw=False),
             helper.make_tensor("f16", TensorProto.FLOAT16, [8, 6], f16.ravel(), raw=False),
             helper.make_tensor("tiny", TensorProto.FLOAT, [2], [1.0, 2.0], raw=False)]
    nodes = [helper.make_node("MatMul", ["x", "f32"], ["a"]), helper.make_node("Mul", ["a", "tiny"], ["y"])]
    return _save(_graph_model(nodes, inits, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6])]), tmp / "lists.onnx")


def _odd_places(tmp: Path) -> Path:
    """Large tensors where no weight is looked for (other ops' attributes), an int4 and an int8 weight."""
    rng = np.random.default_rng(6)
    big = numpy_helper.from_array(rng.standard_normal(300).astype(np.float32), "big")
    nodes = [
        helper.make_node("Custom", ["x"], ["c"], domain="com.example", t=big,
                         ts=[numpy_helper.from_array(np.arange(50, dtype=np.int64), "ints")]),
        helper.make_node("Constant", [], ["elsewhere"], domain="com.example",
                         value=numpy_helper.from_array(rng.standard_normal(40).astype(np.float32), "v")),
        helper.make_node("ConstantOfShape", ["shape"], ["z"], value=numpy_helper.from_array(np.array([0.5], np.float32), "one")),
    ]
    inits = [numpy_helper.from_array(np.array([1, -2, 3, -4] * 50, dtype=ml_dtypes.int4), "q4"),
             numpy_helper.from_array(rng.integers(-128, 127, (16, 16)).astype(np.int8), "q8"),
             numpy_helper.from_array(np.array([4], np.int64), "shape"),
             numpy_helper.from_array(np.zeros(0, np.float32), "empty")]
    return _save(_graph_model(nodes, inits, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, [4])]), tmp / "odd.onnx")


def _external(tmp: Path, model: onnx.ModelProto, name: str) -> Path:
    return _save(model, tmp / name / "m.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
                 location="m.bin", size_threshold=0)


MAKERS: dict[str, Callable[[Path], Path]] = {
    "sample": lambda tmp: SAMPLE,
    "ocr_cls": lambda tmp: packaged("rapidocr-onnxruntime", "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx"),
    "ocr_det": lambda tmp: packaged("rapidocr-onnxruntime", "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx"),
    "ocr_rec": lambda tmp: packaged("rapidocr-onnxruntime", "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx"),
    **{f"silero_{n}": (lambda tmp, n=n: packaged("silero-vad", f"silero_vad/data/{n}.onnx"))
       for n in ("silero_vad", "silero_vad_16k_op15", "silero_vad_16k_sequence", "silero_vad_half", "silero_vad_op18_ifless",
                 "silero_vad_openvino_16k")},
    "tiny_f32": lambda tmp: _save(tiny_model(), tmp / "t32.onnx"),
    "tiny_f16": lambda tmp: _save(tiny_model(TensorProto.FLOAT16), tmp / "t16.onnx"),
    "tiny_bf16": lambda tmp: _save(tiny_model(TensorProto.BFLOAT16), tmp / "tbf16.onnx"),
    "tiny_f64": lambda tmp: _save(tiny_model(TensorProto.DOUBLE), tmp / "t64.onnx"),
    "if_subgraphs": lambda tmp: _save(if_model(), tmp / "if.onnx"),
    "mlp": lambda tmp: _save(_mlp([16, 32, 8])[0], tmp / "mlp.onnx"),
    "lists": _stored_as_lists,
    "odd_places": _odd_places,
    "external_sample": lambda tmp: _external(tmp, onnx.load(str(SAMPLE)), "sample_ext"),
    "external_tiny": lambda tmp: _external(tmp, tiny_model(), "tiny_ext"),
    "external_if": lambda tmp: _external(tmp, if_model(), "if_ext"),
}


def _strips(m: OnnxModel) -> list[set[str]]:
    keys = [w.key for w in m.weights]
    return [set(), {w.key for w in m.weights if w.is_float}, set(keys[::2])]


def _reference_skeleton(path: Path, strip: set[str]) -> bytes:
    """What a skeleton is, built with plain onnx: load (external data made inline), clear, serialize."""
    model = onnx.load(str(path))
    for key, tensor in walk_tensors(model.graph):
        if key in strip:
            for f in ("raw_data", "float_data", "int32_data", "double_data"):
                tensor.ClearField(f)
    return model.SerializeToString(deterministic=True)


# ---------------------------------------------------------------------------------------------
# reading


def test_wire_field_numbers_are_onnx_protos():
    fields = {onnx.ModelProto: {"graph": onnx_wire.MODEL_GRAPH},
              onnx.GraphProto: {"node": onnx_wire.GRAPH_NODE, "initializer": onnx_wire.GRAPH_INITIALIZER},
              onnx.NodeProto: {"attribute": onnx_wire.NODE_ATTRIBUTE},
              onnx.AttributeProto: {"t": onnx_wire.ATTR_T, "g": onnx_wire.ATTR_G, "tensors": onnx_wire.ATTR_TENSORS,
                                    "graphs": onnx_wire.ATTR_GRAPHS},
              TensorProto: {"segment": onnx_wire.TENSOR_SEGMENT, **{v: k for k, v in onnx_wire.DATA_FIELDS.items()}}}
    for proto, numbers in fields.items():
        for name, number in numbers.items():
            assert proto.DESCRIPTOR.fields_by_name[name].number == number, (proto, name)


@pytest.mark.parametrize("which", list(MAKERS))
def test_skeleton_is_byte_identical_to_plain_onnx(which: str, tmp_path: Path):
    path = MAKERS[which](tmp_path)
    with OnnxModel(path) as m:
        for strip in _strips(m):
            assert m.skeleton(strip) == _reference_skeleton(path, strip), sorted(strip)[:3]


@pytest.mark.parametrize("which", list(MAKERS))
def test_weights_match_numpy_helper(which: str, tmp_path: Path):
    path = MAKERS[which](tmp_path)
    ref = dict(walk_tensors(onnx.load(str(path)).graph))
    with OnnxModel(path) as m:
        assert [w.key for w in m.weights] == list(ref)
        for w in m.weights:
            got, want = w.array, numpy_helper.to_array(ref[w.key])
            assert got.dtype == want.dtype and got.shape == want.shape == w.shape, w.key
            assert got.tobytes() == want.tobytes(), w.key


def test_large_payloads_stay_on_disk(tmp_path: Path):
    """The parsed structure holds no weight bytes; every weight of 64 bytes or more is read from its file."""
    model, _ = _mlp([256, 512, 512, 64])
    path = _save(model, tmp_path / "m.onnx")
    with OnnxModel(path) as m:
        assert m.model.ByteSize() < 4096 < path.stat().st_size // 100
        assert all(w.key in m._sources for w in m.weights if w.nbytes >= onnx_wire.MIN_STRIP)


def test_open_and_read_in_memory_of_one_tensor(tmp_path: Path):
    """8 MB of weights inline or external: opening allocates nothing like that, reading one tensor at a time.

    tracemalloc sees numpy arrays and Python bytes (a file read whole would show), not protobuf's own
    memory: the test above bounds that."""
    model, _ = _mlp([512] * 9, constant_last=True)
    inline = _save(model, tmp_path / "inline" / "m.onnx")
    external = _save(model, tmp_path / "ext" / "m.onnx", save_as_external_data=True, location="m.bin", size_threshold=1024)
    for path in (inline, external):
        tracemalloc.start()
        try:
            m = OnnxModel(path)
            opened = tracemalloc.get_traced_memory()[1]
            tracemalloc.reset_peak()
            for w in m.weights:
                a = w.array
            del a
            read = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        m.close()
        assert opened < MB // 2, (path, opened)
        assert read < MB + MB // 4, (path, read)  # one 1 MB tensor (a bias replaces each before the next)


def test_external_data_is_read_when_asked(tmp_path: Path):
    path = _external(tmp_path, onnx.load(str(SAMPLE)), "ext")
    data = path.with_name("m.bin")
    with OnnxModel(path) as m:
        w = max(m.weights, key=lambda w: w.nbytes)
        stored = dict(walk_tensors(onnx.load(str(path), load_external_data=False).graph))[w.key]
        offset = int(next(e.value for e in stored.external_data if e.key == "offset"))
        new = -w.array
        with data.open("r+b") as f:  # changed in place after opening: the weight is read when asked for
            f.seek(offset)
            f.write(new.astype(new.dtype.newbyteorder("<")).tobytes())
        np.testing.assert_array_equal(w.array, new)
        with data.open("r+b") as f:
            f.truncate(offset + 4)
        with pytest.raises(FormatError, match=rf"m\.bin: ends at byte {offset + 4}, inside tensor data"):
            w.load()
    with pytest.raises(QpackError, match="closed"):
        w.load()


@pytest.mark.parametrize("offset,length,match", [
    ("-8", "32", "exceeds"), ("99999999999999999999999", "32", "exceeds"), ("0", "99999999999999999999", "exceeds"),
    ("8", "40", "exceeds"), ("0x10", "32", "not integers"), ("0", "31", "expected 32"), ("1e3", "32", "not integers")])
def test_hostile_external_offsets_rejected(tmp_path: Path, offset: str, length: str, match: str):
    model = tiny_model()
    t = model.graph.initializer[0]  # conv.w, 32 bytes
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    for k, v in (("location", "w.bin"), ("offset", offset), ("length", length)):
        e = t.external_data.add()
        e.key, e.value = k, v
    (tmp_path / "w.bin").write_bytes(bytes(40))
    onnx.save(model, tmp_path / "m.onnx")
    with pytest.raises(FormatError, match=match):
        OnnxModel(tmp_path / "m.onnx")


# hand-encoded protobuf, to say exactly what a hostile file holds
def _len(number: int, payload: bytes) -> bytes:
    return field_head(number, len(payload)) + payload


def _int(number: int, value: int) -> bytes:
    return encode_varint(number << 3) + encode_varint(value)


def _model_bytes(graph: bytes) -> bytes:
    return _int(1, 8) + _len(7, graph) + _len(8, _int(2, 17))


_TENSOR_HEAD = _int(1, 16) + _int(2, TensorProto.FLOAT) + _len(8, b"w")


@pytest.mark.parametrize("data,match", [
    # raw_data claims 2**62 bytes inside a well-formed initializer
    (_model_bytes(_len(5, _TENSOR_HEAD + field_head(9, 2**62) + bytes(64))), "past the end of its message"),
    # the graph claims 2**63 bytes
    (_int(1, 8) + field_head(7, 2**63) + bytes(100), "truncated or corrupt: field 7 at byte 2 .* past the end of the file"),
    # a length prefix cut off by the end of the file
    (_int(1, 8) + b"\x3a\xff\xff", "varint at byte 3 runs past the end"),
    (_int(1, 8) + b"\x3a" + b"\xff" * 10 + b"\x01", "longer than 10 bytes"),
    (_model_bytes(_len(5, _TENSOR_HEAD + encode_varint(15 << 3 | 3))), "not an ONNX model, or a corrupt one: protobuf wire type 3"),
    (_model_bytes(_len(5, _TENSOR_HEAD + b"\x00\x01")), "field number 0"),
])
def test_hostile_varints_rejected_before_any_allocation(tmp_path: Path, data: bytes, match: str):
    p = tmp_path / "h.onnx"
    p.write_bytes(data)
    tracemalloc.start()
    try:
        with pytest.raises(FormatError, match=match) as e:
            OnnxModel(p)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(e.value).startswith(f"{p}: ") and "\n" not in str(e.value)
    assert peak < MB


def test_deeply_nested_subgraphs_rejected(tmp_path: Path):
    graph = _len(5, _TENSOR_HEAD + _len(9, bytes(64)))
    for _ in range(40):  # If node -> attribute -> graph, 120 messages deep
        graph = _len(1, _len(5, _len(1, b"then_branch") + _len(6, graph)))
    p = tmp_path / "deep.onnx"
    p.write_bytes(_model_bytes(graph))
    with pytest.raises(FormatError, match="nest deeper"):
        OnnxModel(p)


def test_truncated_anywhere_in_the_graph_rejected(tmp_path: Path):
    data = SAMPLE.read_bytes()
    p = tmp_path / "t.onnx"
    for cut in range(1, int(len(data) * 0.95), len(data) // 97):
        p.write_bytes(data[:cut])
        with pytest.raises(FormatError):
            OnnxModel(p)


def test_random_corruption_fails_only_as_qpack_errors(tmp_path: Path):
    """Corrupt bytes of the structure (outside the weight payloads): opening, reading every weight and
    building a skeleton either work or raise QpackError; both outcomes occur."""
    data = SAMPLE.read_bytes()
    structure = np.ones(len(data), bool)
    for r in onnx_wire.strip(data, "sample").regions:
        structure[r.offset : r.offset + r.length] = False
    positions = np.flatnonzero(structure)
    rng = np.random.default_rng(0)
    p = tmp_path / "x.onnx"
    outcomes = {"ok": 0, "error": 0}
    for _ in range(150):
        b = bytearray(data)
        for pos in rng.choice(positions, 2):
            b[pos] = int(rng.integers(0, 256))
        p.write_bytes(bytes(b))
        try:
            with OnnxModel(p) as m:
                for w in m.weights:
                    assert w.array.size * w.array.itemsize <= len(data) * 8  # float_data may widen, never explode
                m.skeleton({w.key for w in m.weights if w.is_float})
            outcomes["ok"] += 1
        except QpackError:
            outcomes["error"] += 1
    assert outcomes["ok"] and outcomes["error"], outcomes


def test_repeated_fields_follow_protobuf(tmp_path: Path):
    """A tensor whose raw_data is given twice keeps protobuf's reading (the last wins); a graph given twice
    is merged; an attribute tensor given twice cannot be located and is refused."""
    first, last = np.arange(20, dtype=np.float32), np.arange(20, dtype=np.float32) * -1
    tensor = _TENSOR_HEAD.replace(_int(1, 16), _int(1, 20)) + _len(9, first.tobytes()) + _len(9, last.tobytes())
    graph = _len(5, tensor) + _len(1, _len(1, b"x") + _len(1, b"w") + _len(2, b"y") + _len(4, b"MatMul"))
    p = tmp_path / "twice.onnx"
    p.write_bytes(_model_bytes(graph))
    with OnnxModel(p) as m:
        np.testing.assert_array_equal(m.weights[0].array, last)
        assert m.weights[0].role.value == "matrix"
        assert m.skeleton(set()) == _reference_skeleton(p, set())
    merged = _int(1, 8) + _len(7, _len(5, _TENSOR_HEAD.replace(b"\x42\x01w", b"\x42\x01a") + _len(9, bytes(64)))) + \
        _len(7, _len(5, _TENSOR_HEAD.replace(b"\x42\x01w", b"\x42\x01b") + _len(9, bytes(range(64))))) + _len(8, _int(2, 17))
    p.write_bytes(merged)
    with OnnxModel(p) as m:
        assert [w.name for w in m.weights] == ["a", "b"]
        assert m.weights[1].array.tobytes() == bytes(range(64))
        assert m.skeleton({"init:a"}) == _reference_skeleton(p, {"init:a"})
    attr = _len(1, b"value") + _int(20, 4) + _len(5, _TENSOR_HEAD + _len(9, bytes(64))) + _len(5, _TENSOR_HEAD + _len(9, bytes(64)))
    p.write_bytes(_model_bytes(_len(1, _len(2, b"w") + _len(4, b"Constant") + _len(5, attr))))
    with pytest.raises(FormatError, match="more than once"):
        OnnxModel(p)


# ---------------------------------------------------------------------------------------------
# restoring


class _Loaders(dict):
    """key -> loader that counts its calls and returns the given values."""

    def __init__(self, values: dict[str, np.ndarray]) -> None:
        self.calls: dict[str, int] = dict.fromkeys(values, 0)
        super().__init__({k: (lambda k=k, v=v: self._call(k, v)) for k, v in values.items()})

    def _call(self, key: str, v: np.ndarray) -> np.ndarray:
        self.calls[key] += 1
        return v.copy()  # a fresh array each time, as a dequantizer gives


def _new_values(m: OnnxModel, keys: list[str], seed: int = 9) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {w.key: rng.standard_normal(w.shape).astype(np.float32) for w in m.weights if w.key in keys}


def _reference_restore(skeleton: bytes, values: dict[str, np.ndarray]) -> bytes:
    model = onnx.ModelProto.FromString(skeleton)
    for key, t in walk_tensors(model.graph):
        if key in values:
            t.raw_data = values[key].astype(helper.tensor_dtype_to_np_dtype(t.data_type)).tobytes()
    return model.SerializeToString(deterministic=True)


@pytest.mark.parametrize("which", list(MAKERS))
def test_restore_inline_is_byte_identical_to_plain_onnx(which: str, tmp_path: Path):
    path = MAKERS[which](tmp_path)
    with OnnxModel(path) as m:
        keys = [w.key for w in m.weights if w.is_float]
        skeleton, values = m.skeleton(set(keys)), _new_values(m, keys)
    loaders = _Loaders(values)
    out = tmp_path / "out" / "r.onnx"
    out.parent.mkdir()
    assert onnx_model.restore(skeleton, loaders, out) == [out]
    assert out.read_bytes() == _reference_restore(skeleton, values)
    assert set(loaders.calls.values()) == {1}


@pytest.mark.parametrize("external", [False, True])
def test_restore_streams_tensor_by_tensor(monkeypatch, tmp_path: Path, external: bool):
    """Only about one tensor is in memory at a time, inline or not. Over the inline limit every tensor
    of 1 kB or more goes to <out>.data, page-aligned; onnx and onnxruntime read the pair."""
    model, _ = _mlp([512, 512, 512, 512, 64])
    src = _save(model, tmp_path / "src.onnx")
    with OnnxModel(src) as m:
        keys = [w.key for w in m.weights if w.is_float and w.name.startswith("w")]
        skeleton, values = m.skeleton(set(keys)), _new_values(m, keys)
    if external:
        monkeypatch.setattr(onnx_model, "_INLINE_LIMIT", 100_000)  # stands in for protobuf's 2 GiB
    loaders = _Loaders(values)
    out = tmp_path / "out" / "r.onnx"
    out.parent.mkdir()
    tracemalloc.start()
    try:
        written = onnx_model.restore(skeleton, loaders, out)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert set(loaders.calls.values()) == {1}
    assert peak < MB + MB // 2, peak  # one 1 MB tensor at a time, of a 3.3 MB model
    if external:
        assert written == [out, out.with_name("r.onnx.data")]
        assert out.stat().st_size < 4096
        offsets = []
        for _, t in walk_tensors(onnx.load(str(out), load_external_data=False).graph):
            if t.data_location == TensorProto.EXTERNAL:
                offsets.append(int(next(e.value for e in t.external_data if e.key == "offset")))
        assert len(offsets) == 7 and all(o % 4096 == 0 for o in offsets)  # w0..w3, b0..b2; b3 (256 bytes) stays inline
    else:
        assert written == [out]
        assert out.read_bytes() == _reference_restore(skeleton, values)
    got = dict(walk_tensors(onnx.load(str(out)).graph))  # external data loaded
    for key, v in values.items():
        np.testing.assert_array_equal(numpy_helper.to_array(got[key]), v)
    x = np.random.default_rng(1).standard_normal((1, 512)).astype(np.float32)
    want = x
    for i, key in enumerate(sorted(values, key=lambda k: k[-2:])):  # w0, w1, w2 and the Constant w3
        want = want @ values[key] + np.float32(0.01 * i)
    np.testing.assert_allclose(OnnxRunner(out).run({"x": x})[0], want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("limit", [onnx_model._INLINE_LIMIT, 1000])
@pytest.mark.parametrize("failure", ["loader", "shape"])
def test_failed_restore_leaves_no_file(monkeypatch, tmp_path: Path, limit: int, failure: str):
    model, _ = _mlp([64, 64, 64, 8])
    with OnnxModel(_save(model, tmp_path / "src" / "m.onnx")) as m:
        keys = [w.key for w in m.weights if w.is_float and w.name.startswith("w")]
        skeleton, values = m.skeleton(set(keys)), _new_values(m, keys)
    monkeypatch.setattr(onnx_model, "_INLINE_LIMIT", limit)
    loaders = dict(_Loaders(values))
    last = keys[-1]
    if failure == "loader":
        def boom() -> np.ndarray:
            raise FormatError("tensor 'w': payload corrupt")
        loaders[last] = boom
    else:
        loaders[last] = lambda: np.zeros((3, 3), np.float32)
    out = tmp_path / "out" / "r.onnx"
    out.parent.mkdir()
    with pytest.raises(FormatError):
        onnx_model.restore(skeleton, loaders, out)
    assert list(out.parent.iterdir()) == []


def test_restore_rejects_keys_before_calling_any_loader(tmp_path: Path):
    with OnnxModel(_odd_places(tmp_path)) as m:
        skeleton = m.skeleton(set())
    calls = []
    for key, match in (("init:nope", "holds 0 of the 1"), ("init:q8", "not a float tensor")):
        with pytest.raises(FormatError, match=match):
            onnx_model.restore(skeleton, {key: lambda: calls.append(1) or np.zeros(1)}, tmp_path / "r.onnx")
    assert not calls and not (tmp_path / "r.onnx").exists()


# ---------------------------------------------------------------------------------------------
# TFLite


def test_tflite_reads_through_a_map_and_closes(tfl_fp16: Path):
    import tflite

    data = tfl_fp16.read_bytes()
    root = tflite.Model.GetRootAsModel(data, 0)
    with TfliteModel(tfl_fp16) as m:
        assert m.file_bytes == len(data)
        for w in m.weights:
            raw = root.Buffers(int(w.key.split(":")[1])).DataAsNumpy()
            assert w.array.tobytes() == raw.tobytes()
        strip = {w.key for w in m.weights if w.is_float}
        reference = bytearray(data)
        for key in strip:
            r = m._scan.regions[int(key.split(":")[1])]
            reference[r.start : r.start + r.length] = bytes(r.length)
        assert m.skeleton(strip) == bytes(reference)
        assert m.skeleton(set()) == data
    with pytest.raises(QpackError, match="closed"):
        m.weights[0].load()
    with pytest.raises(QpackError, match="closed"):
        m.skeleton(set())


def test_tflite_restore_writes_each_buffer_in_place(tfl_fp16: Path, tmp_path: Path):
    with TfliteModel(tfl_fp16) as m:
        floats = [w for w in m.weights if w.is_float and w.note == ""]
        skeleton = m.skeleton({w.key for w in floats})
        regions = {w.key: m._scan.regions[int(w.key.split(":")[1])] for w in floats}
    rng = np.random.default_rng(4)
    values = {w.key: rng.standard_normal(w.shape).astype(np.float32) for w in floats}
    loaders = _Loaders(values)
    out = tmp_path / "r.tflite"
    assert tflite_model.restore(skeleton, loaders, out) == [out]
    assert set(loaders.calls.values()) == {1}
    want = bytearray(skeleton)
    for w in floats:
        r = regions[w.key]
        want[r.start : r.start + r.length] = values[w.key].astype(np.dtype(w.dtype).newbyteorder("<")).tobytes()
    assert out.read_bytes() == bytes(want)
    bad = dict(loaders)
    bad[floats[-1].key] = lambda: np.zeros(3, np.float32)
    with pytest.raises(FormatError, match="does not match"):
        tflite_model.restore(skeleton, bad, tmp_path / "bad.tflite")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.tflite"]


# ---------------------------------------------------------------------------------------------
# registry


def test_restore_model_keeps_its_suffix_check(tmp_path: Path):
    from qpack.formats.errors import OptionError
    from qpack.formats.registry import restore_model

    with OnnxModel(MAKERS["tiny_f32"](tmp_path)) as m:
        skeleton = m.skeleton({"init:conv.w"})
        w = next(w for w in m.weights if w.key == "init:conv.w")
    with pytest.raises(OptionError, match=r"\*\.onnx"):
        restore_model("onnx", skeleton, {w.key: lambda: np.zeros(w.shape)}, tmp_path / "r.tflite")
    a = tmp_path / "a.onnx"
    assert restore_model("onnx", skeleton, {w.key: lambda: np.ones(w.shape)}, a) == [a]
    assert not (tmp_path / "r.tflite").exists()


def test_tflite_adapter_does_not_import_the_registry():
    import os
    import subprocess
    import sys

    code = "import sys, qpack.formats.tflite_model; assert 'qpack.formats.registry' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
