"""TFLite round trips on real models: LiteRT runs the restored file; untouched bytes stay identical."""

from __future__ import annotations

import contextlib
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import tflite

from qpack.converter.convert import convert, restore
from qpack.converter.policy import Policy
from qpack.converter.runtime import TfliteRunner
from qpack.formats.errors import FormatError, QpackError, UnsupportedError
from qpack.formats.model import Role
from qpack.formats.tflite_model import TfliteModel


def _round_trip(src: Path, tmp: Path, policy: Policy) -> tuple[Path, Path]:
    qpk, restored = tmp / "m.qpk", tmp / "m.tflite"
    convert(TfliteModel(src), policy, qpk)
    restore(qpk, restored)
    return qpk, restored


def _feeds(runner: TfliteRunner, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {s.name: rng.random(s.shape).astype(s.dtype) if np.issubdtype(s.dtype, np.floating) else np.zeros(s.shape, s.dtype)
            for s in runner.inputs}


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


_FILTERS = (Role.KERNEL, Role.MATRIX)  # a dense CONV_2D's filter is a matrix (tflite_model.dense_conv)


def _changed_outside(src: Path, restored: Path, model: TfliteModel, keys: set[str]) -> int:
    """Bytes that differ outside the quantized buffers."""
    a = np.frombuffer(src.read_bytes(), np.uint8)
    b = np.frombuffer(restored.read_bytes(), np.uint8)
    assert a.size == b.size
    diff = a != b
    for key in keys:
        r = model._scan.regions[int(key.split(":")[1])]
        diff[r.start : r.start + r.length] = False
    return int(diff.sum())


def test_float16_depthwise(tfl_fp16: Path, tmp_path: Path):
    model = TfliteModel(tfl_fp16)
    kernels = [w for w in model.weights if w.role in _FILTERS]
    assert all(w.dtype == "float16" for w in kernels)
    depthwise = [w for w in kernels if any(c.startswith("DEPTHWISE_CONV_2D") for c in w.consumers)]
    assert depthwise and all(w.axis == 3 and w.shape[0] == 1 for w in depthwise)
    assert any(w.axis == 0 for w in kernels if any(c.startswith("CONV_2D") for c in w.consumers))
    qpk, restored = _round_trip(tfl_fp16, tmp_path, Policy("asym", 8, per_channel=True))
    assert qpk.stat().st_size < tfl_fp16.stat().st_size * 0.6  # 8-bit codes against float16
    assert _changed_outside(tfl_fp16, restored, model, {w.key for w in kernels}) == 0
    types = {tflite.Model.GetRootAsModel(restored.read_bytes(), 0).Subgraphs(0).Tensors(i).Type()
             for i in range(tflite.Model.GetRootAsModel(restored.read_bytes(), 0).Subgraphs(0).TensorsLength())}
    assert tflite.TensorType.FLOAT16 in types
    ref_runner, got_runner = TfliteRunner(tfl_fp16), TfliteRunner(restored)
    feeds = _feeds(ref_runner)
    for r, g in zip(ref_runner.run(feeds), got_runner.run(feeds)):
        assert _cosine(r, g) > 0.99


def test_float32_model(tfl_fp32: Path, tmp_path: Path):
    model = TfliteModel(tfl_fp32)
    assert {w.dtype for w in model.weights if w.role in _FILTERS} == {"float32"}
    # dense convolutions are matrices: the 3x3 head on its 3x3 input, pointwise ones on few pixels (not 96x96)
    dense = {w.name: w for w in model.weights if w.role == Role.MATRIX}
    assert dense["conv2d_20/Kernel"].shape == (1404, 3, 3, 32) and dense["conv2d_20/Kernel"].axis == 0
    assert "conv2d_16/Kernel" in dense and "conv2d_1/Kernel" not in dense and "conv2d/Kernel" not in dense
    _, restored = _round_trip(tfl_fp32, tmp_path, Policy("sym", 8, per_channel=True))
    ref_runner, got_runner = TfliteRunner(tfl_fp32), TfliteRunner(restored)
    feeds = _feeds(ref_runner, 1)
    ref, got = ref_runner.run(feeds), got_runner.run(feeds)
    assert _cosine(ref[0], got[0]) > 0.9999
    assert np.abs(ref[0] - got[0]).max() < 2.0  # landmark pixel coordinates in a 192-pixel frame


def test_int8_model_kept_bit_identical(tfl_int8: Path, tmp_path: Path):
    model = TfliteModel(tfl_int8)
    assert any(w.role == Role.QUANTIZED and w.dtype == "int8" for w in model.weights)
    assert not any(w.is_float for w in model.weights)
    qpk, restored = _round_trip(tfl_int8, tmp_path, Policy("asym", 4))
    assert restored.read_bytes() == tfl_int8.read_bytes()
    runner = TfliteRunner(restored)
    feeds = _feeds(runner)
    np.testing.assert_array_equal(runner.run(feeds)[0], TfliteRunner(tfl_int8).run(feeds)[0])


def test_sparse_tensors_quantize_their_nonzero_values(tfl_sparse: Path, tmp_path: Path):
    """A sparse kernel behind DENSIFY is its nonzero values, quantized per tensor where they lie: over 90%
    of the float parameters quantize, and the restored model keeps its sparsity and its outputs."""
    model = TfliteModel(tfl_sparse)
    sparse = [w for w in model.weights if w.note.startswith("sparse")]
    assert sparse and all(w.role == Role.KERNEL and len(w.shape) == 1 and w.axis is None for w in sparse)
    floats = [w for w in model.weights if w.dtype.startswith("float")]
    quantized = [w for w in floats if w.role in _FILTERS]
    assert sum(w.size for w in quantized) >= 0.9 * sum(w.size for w in floats)
    _, restored = _round_trip(tfl_sparse, tmp_path, Policy("asym", 8, per_channel=True))
    assert _changed_outside(tfl_sparse, restored, model, {w.key for w in quantized}) == 0
    ref_runner, got_runner = TfliteRunner(tfl_sparse), TfliteRunner(restored)
    feeds = _feeds(ref_runner)
    for r, g in zip(ref_runner.run(feeds), got_runner.run(feeds)):
        assert _cosine(r, g) > 0.99


def test_truncated_rejected(tfl_fp16: Path, tmp_path: Path):
    data = tfl_fp16.read_bytes()
    p = tmp_path / "t.tflite"
    # (this file ends with an embedded zip of metadata that the flatbuffer does not reference,
    # so only cuts into the flatbuffer itself are detectable)
    for cut in (0, 3, 8, 100, len(data) // 4, len(data) // 2):
        p.write_bytes(data[:cut])
        with pytest.raises(FormatError):
            TfliteModel(p)


def test_not_a_flatbuffer(tmp_path: Path):
    p = tmp_path / "x.tflite"
    p.write_bytes(b"this is plainly text, not a model" * 20)
    with pytest.raises(FormatError, match="TFL3"):
        TfliteModel(p)


def test_buffer_past_end_rejected(tfl_fp16: Path, tmp_path: Path):
    data = bytearray(tfl_fp16.read_bytes())
    m = tflite.Model.GetRootAsModel(bytes(data), 0)
    buf = next(m.Buffers(i) for i in range(m.BuffersLength()) if m.Buffers(i).DataLength() > 0)
    start = buf._tab.Vector(buf._tab.Offset(4))
    data[start - 4 : start] = (len(data) * 2).to_bytes(4, "little")  # the vector's length prefix
    p = tmp_path / "x.tflite"
    p.write_bytes(bytes(data))
    with pytest.raises(FormatError, match="past the end"):
        TfliteModel(p)


def test_unknown_tensor_type_rejected(tfl_fp16: Path, tmp_path: Path):
    data = bytearray(tfl_fp16.read_bytes())
    g = tflite.Model.GetRootAsModel(bytes(data), 0).Subgraphs(0)
    t = next(g.Tensors(i) for i in range(g.TensorsLength()) if g.Tensors(i).Type() == tflite.TensorType.FLOAT16)
    data[t._tab.Pos + t._tab.Offset(6)] = 99
    p = tmp_path / "x.tflite"
    p.write_bytes(bytes(data))
    with pytest.raises(QpackError, match="unknown"):
        TfliteModel(p)


def _assert_consistent(model: TfliteModel, size: int) -> None:
    """Every weight lies inside the file and holds exactly as many bytes as its shape and dtype say."""
    for w in model.weights:
        r = model._scan.regions[int(w.key.split(":")[1])]
        assert 0 <= r.start <= r.start + r.length <= size, w.key
        a = w.array
        assert a.shape == w.shape and a.nbytes == w.nbytes == r.length, w.key
        assert a.dtype == np.uint8 or math.prod(w.shape) * np.dtype(w.dtype).itemsize == r.length, w.key


def test_random_corruption_is_rejected_cleanly_or_parses_consistently(tfl_fp16: Path, tmp_path: Path):
    """Corrupt bytes in the flatbuffer tables: each file either parses into consistent weights or fails
    with a one-line FormatError (UnsupportedError for an unknown tensor type) that names the file. Both
    the adapter's own checks and the wrapping of flatbuffers' exceptions must be reached."""
    data = tfl_fp16.read_bytes()
    p = tmp_path / "x.tflite"
    p.write_bytes(data)
    with TfliteModel(p) as clean:
        assert clean.weights
        _assert_consistent(clean, len(data))
    rng = np.random.default_rng(0)
    outcomes: Counter[str] = Counter()
    for _ in range(200):
        b = bytearray(data)
        for pos in rng.integers(0, 4096, 4):  # the tables sit near the start
            b[pos] = int(rng.integers(0, 256))
        p.write_bytes(bytes(b))
        try:
            with TfliteModel(p) as m:
                _assert_consistent(m, len(b))
            outcomes["parsed"] += 1
        except (FormatError, UnsupportedError) as e:
            message = str(e)
            assert message.startswith(f"{p}: ") and "\n" not in message, message
            wrapped = e.__cause__ is not None and not isinstance(e.__cause__, QpackError)
            outcomes["wrapped" if wrapped else "checked"] += 1
    assert outcomes["parsed"] and outcomes["checked"] and outcomes["wrapped"], outcomes


def test_deterministic_and_records_format(tfl_fp32: Path, tmp_path: Path):
    from qpack.formats.qpk import QpkReader

    blobs = []
    for i in range(2):
        out = tmp_path / f"t{i}.qpk"
        convert(TfliteModel(tfl_fp32), Policy("pow2", 4, per_channel=True), out)
        blobs.append(out.read_bytes())
        with QpkReader(out) as c:
            assert c.meta["format"] == "tflite"
    assert blobs[0] == blobs[1]


def test_buffer_stored_after_flatbuffer_by_offset(tmp_path: Path):
    from tests.tflite_build import fc_with_offset_buffer

    w = np.random.default_rng(3).standard_normal((8, 16)).astype(np.float32)
    src = tmp_path / "fc.tflite"
    src.write_bytes(fc_with_offset_buffer(w))
    model = TfliteModel(src)
    (weight,) = model.weights
    assert (weight.name, weight.role, weight.axis) == ("fc/weights", Role.MATRIX, 0)
    np.testing.assert_array_equal(weight.array, w)
    _, restored = _round_trip(src, tmp_path, Policy("sym", 8, per_channel=True))
    assert _changed_outside(src, restored, model, {weight.key}) == 0
    got = TfliteModel(restored).weights[0].array
    assert 0 < np.abs(got - w).max() <= np.abs(w).max(axis=1).max() / 127 / 2 * 1.001
    x = {"x": np.linspace(-1, 1, 16, dtype=np.float32)[None]}
    np.testing.assert_allclose(TfliteRunner(restored).run(x)[0], x["x"] @ w.T, atol=0.05)
    # the same file cut inside the appended weights: the offset now points past the end
    cut = tmp_path / "cut.tflite"
    cut.write_bytes(src.read_bytes()[:-8])
    with pytest.raises(FormatError, match="past the end"):
        TfliteModel(cut)


def test_densify_checks_the_metadata_it_is_given():
    """A CSR level spreads values over the dense dimensions above it, blocks included; metadata that does
    not describe the values within the shape is one FormatError, and no allocation beyond MAX_DENSE."""
    from qpack.formats.tflite_model import Level, densify

    seg, idx = np.array([0, 1, 3]), np.array([2, 0, 3])
    got = densify(np.array([1.0, 2.0, 3.0]), (2, 4), [0, 1], [], [Level(True, 2), Level(False, 0, seg, idx)], "t")
    np.testing.assert_array_equal(got, [[0, 0, 1, 0], [2, 0, 0, 3]])
    # 2x2 blocks of a 2x4 matrix: block (0, 1) only, dense inside
    blocks = densify(np.arange(1.0, 5.0), (2, 4), [0, 1, 2, 3], [0, 1],
                     [Level(True, 1), Level(False, 0, np.array([0, 1]), np.array([1])), Level(True, 2), Level(True, 2)], "t")
    np.testing.assert_array_equal(blocks, [[0, 0, 1, 2], [0, 0, 3, 4]])
    bad = [
        ((2, 4), [Level(True, 2), Level(False, 0, np.array([0, 1, 4]), idx)]),  # a segment past the indices
        ((2, 4), [Level(True, 2), Level(False, 0, np.array([0, 2, 1]), idx)]),  # segments out of order
        ((2, 4), [Level(True, 2), Level(False, 0, seg, np.array([2, 0, 4]))]),  # an index past the dimension
        ((2, 4), [Level(True, 3), Level(False, 0, seg, idx)]),  # a dense level of the wrong size
        ((2, 4), [Level(True, 2), Level(False, 0, np.array([0, 1, 2]), idx)]),  # fewer positions than values
    ]
    for shape, levels in bad:
        with pytest.raises(FormatError):
            densify(np.array([1.0, 2.0, 3.0]), shape, [0, 1], [], levels, "t")
    with pytest.raises(UnsupportedError):
        densify(np.array([1.0]), (1 << 20, 1 << 10), [0, 1], [], [Level(True, 1 << 20), Level(True, 1 << 10)], "t")


def _populate(values: np.ndarray, shape: tuple[int, ...], order: list[int], block_map: list[int], levels: list) -> np.ndarray:
    """TFLite's FormatConverter::Populate written out position by position: the reference densify must match."""
    rank, out, taken = len(shape), np.zeros(math.prod(shape), values.dtype), [0]
    blocks = [levels[order.index(rank + k)].size for k in range(len(block_map))]

    def walk(at: list[int], level: int, prev: int) -> None:
        if level == len(levels):
            orig = [0] * rank
            for i, d in enumerate(order):
                if d < rank:
                    orig[d] = at[i]
            for i, d in enumerate(order):
                if d >= rank:
                    orig[block_map[d - rank]] = orig[block_map[d - rank]] * blocks[d - rank] + at[i]
            out[np.ravel_multi_index(orig, shape)] = values[taken[0]]
            taken[0] += 1
            return
        lv = levels[level]
        children = ((i, prev * lv.size + i) for i in range(lv.size)) if lv.dense else \
            ((int(lv.indices[i]), i) for i in range(lv.segments[prev], lv.segments[prev + 1]))
        for coord, nxt in children:
            at[level] = coord
            walk(at, level + 1, nxt)

    walk([0] * len(levels), 0, 0)
    return out.reshape(shape)


def test_densify_matches_tflites_populate_on_random_metadata():
    """Random shapes, traversal orders, block maps and dense/CSR levels: densify equals the position-by-position
    reference; random hostile metadata is a FormatError or UnsupportedError, never another exception."""
    from qpack.formats.tflite_model import Level, densify

    rng = np.random.default_rng(0)
    for _ in range(400):
        rank = int(rng.integers(1, 4))
        block_map = [int(d) for d in rng.choice(rank, int(rng.integers(0, rank + 1)) if rng.random() < 0.6 else 0, replace=False)]
        size = {d: int(rng.choice([1, 2, 3])) for d in block_map}
        shape = tuple(int(rng.integers(1, 4)) * size.get(d, 1) for d in range(rank))
        order = [int(d) for d in rng.permutation(rank)] + [rank + int(k) for k in rng.permutation(len(block_map))]
        span = [shape[d] // size.get(d, 1) if d < rank else size[block_map[d - rank]] for d in range(len(order))]
        levels, n = [], 1
        for d in order:
            if d >= rank or rng.random() < 0.5:
                levels.append(Level(True, span[d]))
                n *= span[d]
                continue
            seg, idx = [0], []
            for _ in range(n):
                idx += sorted(int(c) for c in rng.choice(span[d], int(rng.integers(0, span[d] + 1)), replace=False))
                seg.append(len(idx))
            levels.append(Level(False, 0, np.array(seg), np.array(idx, np.int64)))
            n = len(idx)
        values = rng.standard_normal(n)
        np.testing.assert_array_equal(densify(values, shape, order, block_map, levels, "t"),
                                      _populate(values, shape, order, block_map, levels))
    for _ in range(3000):
        rank, nb = int(rng.integers(0, 4)), int(rng.integers(0, 3))
        shape = tuple(int(x) for x in rng.integers(-1, 5, rank))
        order = [int(x) for x in (rng.permutation(rank + nb) if rng.random() < 0.9 else rng.integers(-1, 5, rank + nb))]
        levels = [Level(True, int(rng.integers(-1, 6))) if rng.random() < 0.5 else
                  Level(False, 0, np.array(rng.integers(-1, 8, int(rng.integers(0, 6))), np.int64),
                        np.array(rng.integers(-1, 6, int(rng.integers(0, 8))), np.int64)) for _ in order]
        with contextlib.suppress(FormatError, UnsupportedError):
            densify(rng.standard_normal(int(rng.integers(0, 10))), shape, order, [int(x) for x in rng.integers(-1, rank + 1, nb)],
                    levels, "t")


def _convs(tmp: Path, inputs: list[tuple[list[int], list[int] | None]], shared: bool = True) -> Path:
    """A TFLite file of 1x1 CONV_2D ops (8 output channels, 4 input ones), one per (input shape, input
    shape signature), reading one float32 filter buffer (`shared`) or one each."""
    from ai_edge_litert import schema_py_generated as s

    from qpack.converter.export.tflite_int import serialize

    m = s.ModelT()
    m.version, m.buffers, g = 3, [s.BufferT()], s.SubGraphT()
    code = s.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = s.BuiltinOperator.CONV_2D
    m.operatorCodes, g.tensors, g.operators, g.inputs, g.outputs = [code], [], [], [], []

    def tensor(shape: list[int], buffer: int, name: str, signature: list[int] | None = None) -> int:
        t = s.TensorT()
        t.shape, t.shapeSignature, t.type, t.buffer, t.name = shape, signature, s.TensorType.FLOAT32, buffer, name.encode()
        g.tensors.append(t)
        return len(g.tensors) - 1

    def weights() -> int:
        b = s.BufferT()
        b.data = np.random.default_rng(len(m.buffers)).standard_normal((8, 1, 1, 4)).astype("<f4").view(np.uint8)
        m.buffers.append(b)
        return tensor([8, 1, 1, 4], len(m.buffers) - 1, f"filter{len(m.buffers)}")

    w = weights()
    for i, (shape, signature) in enumerate(inputs):
        x, y = tensor(shape, 0, f"x{i}", signature), tensor([*shape[:3], 8], 0, f"y{i}", signature and [*signature[:3], 8])
        op = s.OperatorT()
        op.opcodeIndex, op.inputs, op.outputs = 0, [x, w if shared or not i else weights()], [y]
        op.builtinOptionsType, op.builtinOptions = s.BuiltinOptions.Conv2DOptions, s.Conv2DOptionsT()
        op.builtinOptions.strideH = op.builtinOptions.strideW = 1
        g.operators.append(op)
        g.inputs.append(x)
        g.outputs.append(y)
    m.subgraphs = [g]
    path = tmp / "convs.tflite"
    path.write_bytes(serialize(s, m))
    return path


def test_dense_convolution_filters_are_matrices(tmp_path: Path):
    """A 1x1 convolution is a dense layer when its filter has at least as many values (32) as its input
    pixels; a filter read by a dense and a non-dense convolution stays a kernel (the export rewrites all of
    its readers or none), and an input of unknown height and width is no bound."""
    def roles(inputs: list[tuple[list[int], list[int] | None]], shared: bool = True) -> list[Role]:
        return [w.role for w in TfliteModel(_convs(tmp_path, inputs, shared)).weights]

    small, large = ([1, 4, 4, 4], None), ([1, 8, 8, 4], None)
    assert roles([small]) == [Role.MATRIX] and roles([large]) == [Role.KERNEL]
    assert roles([small, large]) == [Role.KERNEL]
    assert roles([small, large], shared=False) == [Role.MATRIX, Role.KERNEL]
    assert roles([([1, 1, 1, 4], [1, -1, -1, 4])]) == [Role.KERNEL]
    assert roles([([1, 4, 4, 4], [-1, 4, 4, 4])]) == [Role.MATRIX]  # an unknown batch is rows of the matrix
