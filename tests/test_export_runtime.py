"""Runtime exports run in onnxruntime (basic optimization) and LiteRT, and give what `qpack unpack` gives.

Both the unpacked float model and the export run on the same random inputs. Tolerances, as the max
absolute output difference over the max absolute output of the unpacked model:
- integers behind DequantizeLinear / MatMulNBits / TFLite DEQUANTIZE (float32 sources): 1e-4; the
  weights are bit-identical, only the kernels' summation order differs;
- float16 sources: 2e-2 (the unpacked model rounds its weights to float16, the exports do not or
  compute in float16 in another order);
- TFLite hybrid kernels: 5e-2 and cosine >= 0.999 (they quantize activations to int8 on the fly).
"""

from __future__ import annotations

import importlib.metadata as md
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
import tflite
from onnx import TensorProto
from typer.testing import CliRunner

import qpack
from qpack.converter.cli import app
from qpack.converter.convert import convert, restore
from qpack.converter.export import export
from qpack.converter.export.onnx_graph import walk_graphs
from qpack.converter.export.onnx_qdq import SIGNED, available
from qpack.converter.policy import Decision, Policy
from qpack.converter.runtime import InputSpec, open_runner, random_inputs
from qpack.formats.errors import UnsupportedError
from qpack.formats.model import Role, Weight
from qpack.formats.qpk import Grouping, QpkReader
from qpack.formats.registry import open_model
from qpack.formats.tflite_model import TfliteModel
from tests.tiny import if_model, nested_if_model, tiny_model

EXACT, FLOAT16, HYBRID = 1e-4, 2e-2, 5e-2
runner = CliRunner()


def _packaged(dist: str, relpath: str) -> Path:
    path = Path(md.distribution(dist).locate_file(relpath))
    assert path.is_file(), f"{relpath} not found in {dist} (pip install --no-deps -r tests/fixtures.txt)"
    return path


@pytest.fixture(scope="session")
def ocr_rec() -> Path:
    """PP-OCRv4 recognizer: MatMul weights in Constant nodes, opset 12."""
    return _packaged("rapidocr-onnxruntime", "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx")


@dataclass(frozen=True)
class _Blocked(Decision):
    block: int = 0

    @property
    def grouping(self) -> Grouping:
        return Grouping(self.axis, self.block)


@dataclass(frozen=True)
class _BlockPolicy(Policy):
    """Blocks of `block` weights along the input axis (K of a MatMul/Gemm, input channels of a Conv)."""

    block: int = 32

    def decide(self, w: Weight) -> Decision:
        d = super().decide(w)
        if not d.quantize or len(w.shape) < 2:
            return d
        return _Blocked(True, d.bits, 0 if any(c.startswith("MatMul") for c in w.consumers) else 1, "", self.block)


@dataclass(frozen=True)
class _MatrixBlocks(Policy):
    """Blocks of `block` along a matrix's last axis (float32 scales unless `half`), the others per channel."""

    block: int = 32
    half: bool = False

    def decide(self, w: Weight) -> Decision:
        d = super().decide(w)
        if not d.quantize or w.role != Role.MATRIX:
            return d
        return Decision(True, d.bits, len(w.shape) - 1, "", self.block, {"scale": "<f2"} if self.half else None)


def _pack(src: Path, tmp: Path, policy: Policy) -> Path:
    qpk = tmp / f"{src.stem}.qpk"
    convert(open_model(src), policy, qpk)
    return qpk


@dataclass
class _Run:
    unpacked: list[np.ndarray]
    exported: list[np.ndarray]
    path: Path
    notes: list[str]

    def error(self) -> float:
        """Largest output difference relative to the unpacked model's largest output."""
        return max(float(np.abs(a.astype(np.float64) - b).max() / (np.abs(a).max() + 1e-30)) for a, b in zip(self.unpacked, self.exported))

    def cosine(self) -> float:
        a = np.concatenate([x.astype(np.float64).ravel() for x in self.unpacked])
        b = np.concatenate([x.astype(np.float64).ravel() for x in self.exported])
        return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


def _run(qpk: Path, target: str, tmp: Path, shapes: dict[str, tuple[int, ...]] | None = None,
         fixed: dict[str, np.ndarray] | None = None) -> _Run:
    """Unpack and export `qpk`, run both on the same random inputs, print the sizes."""
    with QpkReader(qpk) as q:
        suffix = ".tflite" if q.format == "tflite" else ".onnx"
    ref, out = tmp / f"unpacked{suffix}", tmp / f"{target}{suffix}"
    restore(qpk, ref)
    written, notes = export(qpk, target, out)
    assert written == [out]
    a, b = open_runner(ref), open_runner(out)
    specs = [InputSpec(s.name, (shapes or {}).get(s.name, s.shape), s.dtype) for s in a.inputs]
    feeds = {**random_inputs(specs, seed=0), **(fixed or {})}
    print(f"{qpk.stem} --to {target}: exported {out.stat().st_size} bytes, container {qpk.stat().st_size} bytes")
    return _Run(a.run(feeds), b.run(feeds), out, notes)


def _ops(path: Path) -> Counter[str]:
    model = onnx.load(str(path))
    return Counter(n.op_type for _, g in walk_graphs(model.graph) for n in g.node)


def _inits(path: Path) -> dict[str, TensorProto]:
    model = onnx.load(str(path))
    return {t.name: t for _, g in walk_graphs(model.graph) for t in g.initializer}


def _close_in_size(run: _Run, qpk: Path, ratio: float = 1.3) -> None:
    """The export stores the codes at their width: about the container's size (which zstd-compresses the graph)."""
    assert run.path.stat().st_size < ratio * qpk.stat().st_size


# ---- onnx-qdq ----

def test_qdq_constant_weights_and_opset_raise(ocr_cls: Path, tmp_path: Path):
    """PaddleOCR keeps every weight in a Constant node and uses opset 11; INT4 needs opset 21."""
    qpk = _pack(ocr_cls, tmp_path, Policy("sym", 4, per_channel=True))
    run = _run(qpk, "onnx-qdq", tmp_path, shapes={"x": (1, 3, 48, 192)})
    assert run.error() < EXACT
    model = onnx.load(str(run.path))
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == 21 and model.ir_version >= 10
    with QpkReader(qpk) as q:
        entries = len(q.entries)
    assert _ops(run.path)["DequantizeLinear"] == entries
    quantized = [t for t in _inits(run.path).values() if t.name.endswith("_quantized")]
    assert len(quantized) == entries and {t.data_type for t in quantized} == {TensorProto.INT4}
    _close_in_size(run, qpk)


@pytest.mark.skipif(not any(t.bits == 2 for t in available(SIGNED)), reason="this onnx/onnxruntime has no INT2")
def test_qdq_two_bit(sample: Path, tmp_path: Path):
    qpk = _pack(sample, tmp_path, Policy("asym", 2, per_channel=True))
    run = _run(qpk, "onnx-qdq", tmp_path)
    assert run.error() < EXACT
    assert {t.data_type for n, t in _inits(run.path).items() if n.endswith(("_quantized", "_zero_point"))} == {TensorProto.UINT2}
    _close_in_size(run, qpk)


def test_qdq_lstm(silero_lstm: Path, tmp_path: Path):
    qpk = _pack(silero_lstm, tmp_path, Policy("asym", 4, per_channel=True))
    run = _run(qpk, "onnx-qdq", tmp_path, shapes={"input": (2, 576)})
    assert run.error() < EXACT
    model = onnx.load(str(run.path))
    made_by_dq = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    lstm = next(n for n in model.graph.node if n.op_type == "LSTM")
    assert lstm.input[1] in made_by_dq and lstm.input[2] in made_by_dq  # W and R
    _close_in_size(run, qpk)


def test_qdq_if_model_widened(silero_if: Path, tmp_path: Path):
    """A model of If branches and Constants; 3-bit codes have no ONNX type and widen to INT4 (with a note)."""
    qpk = _pack(silero_if, tmp_path, Policy("sym", 3, per_channel=True))
    run = _run(qpk, "onnx-qdq", tmp_path, shapes={"input": (1, 512)}, fixed={"sr": np.array(16000, np.int64)})
    assert run.error() < EXACT
    assert any("3-bit sym codes stored as INT4" in n for n in run.notes)
    model = onnx.load(str(run.path))
    assert any(scope for scope, _ in walk_graphs(model.graph))  # the If branches survive the rewrite


def test_unknown_target(sample: Path, tmp_path: Path):
    """The CLI offers the registered targets as choices (a usage error, exit 2); the library names them too."""
    import qpack
    from qpack.formats.errors import OptionError

    qpk = _pack(sample, tmp_path, Policy("sym", 8))
    r = _invoke(qpk, "--to", "tensorrt", "-o", tmp_path / "out.bin")
    assert r.exit_code == 2 and "'tensorrt' is not one of" in r.output and "onnx-qdq" in r.output
    with pytest.raises(OptionError, match="unknown export target 'tensorrt', expected one of onnx-qdq, "):
        qpack.export(qpk, "tensorrt", tmp_path / "out.bin")
    assert not (tmp_path / "out.bin").exists()


@pytest.mark.parametrize("target", ["onnx-qdq", "onnx-fast", "onnx-matmulnbits"])
@pytest.mark.parametrize("cond", [True, False])
def test_weights_inside_subgraphs(tmp_path: Path, target: str, cond: bool):
    """A MatMul weight in a Constant inside each If branch is rewritten inside that branch."""
    onnx.save(if_model(), tmp_path / "if.onnx")
    qpk = _pack(tmp_path / "if.onnx", tmp_path, Policy("sym", 4, per_channel=True))
    run = _run(qpk, target, tmp_path, fixed={"cond": np.array(cond)})
    assert run.error() < EXACT
    model = onnx.load(str(run.path))
    op = {"onnx-qdq": "DequantizeLinear", "onnx-fast": "Cast"}.get(target, "MatMulNBits")
    assert sorted(scope for scope, g in walk_graphs(model.graph) for n in g.node if n.op_type == op) == [
        "node0.else_branch/", "node0.then_branch/"]


@pytest.mark.parametrize("target", ["onnx-qdq", "onnx-fast", "onnx-matmulnbits"])
def test_weights_in_nested_subgraphs(tmp_path: Path, target: str):
    """Weights in an If branch and in an If inside it: the outer branch's node list is rebuilt after the inner
    one is edited, so the inner weights' edit is not lost with the node list it was made in."""
    onnx.save(nested_if_model(), tmp_path / "nested.onnx")
    qpk = _pack(tmp_path / "nested.onnx", tmp_path, Policy("sym", 8, per_channel=True))
    run = _run(qpk, target, tmp_path, fixed={"cond": np.array(True)})
    assert run.error() < EXACT
    model = onnx.load(str(run.path))
    assert not [n for _, g in walk_graphs(model.graph) for n in g.node if n.op_type == "Constant" and n.output[0].endswith(".w")]


def test_a_model_with_local_functions_is_not_moved_to_another_opset(tmp_path: Path):
    """INT4 needs opset 21, and onnx's version converter drops a model's local functions (the export then
    named a function no runtime knew): refused in one line, nothing written; 8 bits export as they are."""
    rng = np.random.default_rng(0)
    act = onnx.helper.make_function("local", "Act", ["a"], ["b"], [onnx.helper.make_node("Relu", ["a"], ["b"])],
                                    [onnx.helper.make_opsetid("", 17)])
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["x", "w"], ["h"]), onnx.helper.make_node("Act", ["h"], ["y"], domain="local")], "fn",
        [onnx.helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
        [onnx.helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
        [onnx.numpy_helper.from_array(rng.standard_normal((16, 8)).astype(np.float32), "w")])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17), onnx.helper.make_opsetid("local", 1)],
                                   functions=[act])
    model.ir_version = 8
    onnx.save(model, tmp_path / "fn.onnx")
    qpk4 = _pack(tmp_path / "fn.onnx", tmp_path, Policy("sym", 4))
    with pytest.raises(UnsupportedError, match=r"from opset 17 to 21 .*: the model defines local functions \(Act\)"):
        export(qpk4, "onnx-qdq", tmp_path / "fn4.onnx")
    assert not (tmp_path / "fn4.onnx").exists()
    qpk4.rename(tmp_path / "fn4.qpk")
    run = _run(_pack(tmp_path / "fn.onnx", tmp_path, Policy("sym", 8)), "onnx-qdq", tmp_path)
    assert run.error() < EXACT


def test_qdq_blocks(sample: Path, tmp_path: Path):
    """Blocks of 5 along the input axis (short last blocks) map onto DequantizeLinear's block_size."""
    qpk = _pack(sample, tmp_path, _BlockPolicy("asym", 4, per_channel=True, block=5))
    run = _run(qpk, "onnx-qdq", tmp_path)
    assert run.error() < EXACT
    model = onnx.load(str(run.path))
    blocks = {a.i for n in model.graph.node if n.op_type == "DequantizeLinear" for a in n.attribute if a.name == "block_size"}
    assert blocks == {5}


def test_qdq_pow2_exact_in_wider_integers(sample: Path, tmp_path: Path):
    """pow2 codes become integers ±2^k times a power-of-two scale: exact, in the narrowest type that holds them."""
    qpk = _pack(sample, tmp_path, Policy("pow2", 5, per_channel=True))
    run = _run(qpk, "onnx-qdq", tmp_path)
    assert run.error() < EXACT
    assert any("pow2 codes as INT16 integers (the scheme's integer form, wider than its codes)" in n for n in run.notes)
    for t in _inits(run.path).values():
        if t.name.endswith("_scale"):
            s = onnx.numpy_helper.to_array(t)
            assert np.array_equal(s, np.exp2(np.round(np.log2(s))))  # powers of two


def test_qdq_pow2_beyond_int32_stays_float(tmp_path: Path):
    """8-bit pow2 codes 2^-40 apart in one group fit no integer type: exact float values, with a note."""
    from onnx import numpy_helper

    model = tiny_model()
    fc = next(n for n in model.graph.node if n.output[0] == "fc.w")
    w = np.full((8, 3), 0.5, np.float32)
    w[0, 0], w[1, 1] = 2.0**-40, -1.0
    fc.attribute[0].t.CopyFrom(numpy_helper.from_array(w, "fc.w"))
    onnx.save(model, tmp_path / "t.onnx")
    qpk = _pack(tmp_path / "t.onnx", tmp_path, Policy("pow2", 8))
    run = _run(qpk, "onnx-qdq", tmp_path)
    assert run.error() == 0
    assert run.notes == ["tensor 'fc.w': its pow2 exponents span 2^40 within a group, more than an int32 holds; kept as exact float values"]
    assert _ops(run.path)["DequantizeLinear"] == 0


@pytest.mark.parametrize("dtype", [TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE])
@pytest.mark.parametrize("scheme", ["sym", "pow2"])
def test_qdq_source_dtypes(dtype: int, scheme: str, tmp_path: Path):
    """DequantizeLinear's output type is the weight's: a float16 scale when exact, else float32 + Cast."""
    src = tmp_path / "t.onnx"
    onnx.save(tiny_model(dtype), src)
    qpk = _pack(src, tmp_path, Policy(scheme, 4, per_channel=True, include=("conv.w",)))
    out = tmp_path / "e.onnx"
    export(qpk, "onnx-qdq", out)
    model = onnx.load(str(out))
    casts = [n for n in model.graph.node if n.op_type == "Cast"]
    scales = {t.data_type for t in model.graph.initializer if t.name.endswith("_scale")}
    if dtype == TensorProto.FLOAT16 and scheme == "pow2":  # power-of-two scales are float16 numbers
        assert scales == {TensorProto.FLOAT16} and not casts
    else:
        assert TensorProto.FLOAT in scales and casts and all(n.attribute[0].i == dtype for n in casts)
    if dtype == TensorProto.FLOAT16:  # onnxruntime runs float16 Conv and MatMul on CPU
        restore(qpk, tmp_path / "r.onnx")
        x = {"x": np.random.default_rng(0).standard_normal((1, 1, 3, 3)).astype(np.float16)}
        a, b = open_runner(tmp_path / "r.onnx").run(x)[0], open_runner(out).run(x)[0]
        assert b.dtype == np.float16 and np.abs(a.astype(np.float32) - b).max() <= FLOAT16 * np.abs(a).max()


def test_qdq_refuses_an_op_the_new_opset_lacks(tmp_path: Path):
    """ImageScaler left ONNX at opset 10: a model that needs opset 21 for INT4 cannot have it."""
    from onnx import helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 1, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("ImageScaler", ["c"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)])
    model.ir_version = 7
    onnx.save(model, tmp_path / "m.onnx")
    qpk = _pack(tmp_path / "m.onnx", tmp_path, Policy("sym", 4, per_channel=True))
    r = runner.invoke(app, ["export", str(qpk), "--to", "onnx-qdq", "-o", str(tmp_path / "o.onnx")])
    assert r.exit_code == 1 and r.output.count("\n") == 1
    assert "opset 9 to 21 (INT4 weights): opset 21 has no ImageScaler" in r.output and not (tmp_path / "o.onnx").exists()


# ---- onnx-fast ----

def _folded(path: Path, out: Path) -> onnx.ModelProto:
    """The model as onnxruntime holds it after its basic optimizations (constant folding among them)."""
    import onnxruntime as ort

    o = ort.SessionOptions()
    o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    o.optimized_model_filepath = str(out)
    o.log_severity_level = 3
    ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])
    return onnx.load(str(out))


def _assert_folds_to_the_containers_values(exported: Path, restored: Path, tmp: Path, same_opset: bool = True) -> None:
    """onnxruntime folds every decoding node away: the export becomes, in the session, the model that
    `qpack unpack` restores, the same nodes and the same constants bit for bit (its own fusions, such
    as a BatchNormalization folded into a Conv, renaming them alike), but for each hard-swish the export
    fused: one HardSwish for Add, Clip, Mul and Div (their scalar constants 3, 0 and 6 gone with them).
    A model moved to a newer opset may have other nodes (ONNX's version converter spells some ops anew):
    then the weights only. (A model with an affine after a Conv is not one to check here: the export folds
    it into the weight, test_fast_folds_the_affine_after_a_float_conv.)"""
    import hashlib

    def held(m: onnx.ModelProto) -> tuple[Counter[str], Counter[tuple[str, tuple[int, ...], str]]]:
        arrays = (onnx.numpy_helper.to_array(t) for t in m.graph.initializer)
        return (Counter(n.op_type for n in m.graph.node),
                Counter((a.dtype.str, a.shape, hashlib.sha256(a.tobytes()).hexdigest()) for a in arrays if a.size > 1))

    (fast_ops, fast), (plain_ops, plain) = held(_folded(exported, tmp / "fast.opt.onnx")), held(_folded(restored, tmp / "plain.opt.onnx"))
    assert fast == plain
    fused = fast_ops["HardSwish"] - plain_ops["HardSwish"]
    if fused:
        plain_ops.subtract({"Add": fused, "Clip": fused, "Mul": fused, "Div": fused})
        plain_ops["HardSwish"] += fused
    assert fast_ops == +plain_ops or not same_opset


@pytest.mark.parametrize("policy", [
    Policy("sym", 8, per_channel=True),
    Policy("asym", 4, per_channel=True),
    Policy("pow2", 5, per_channel=True),
    Policy("sym", 3),
    _BlockPolicy("asym", 4, per_channel=True, block=32),  # K a multiple of 32: the axis split in two
    _BlockPolicy("asym", 4, per_channel=True, block=5),  # short last blocks: Gather of each position's block
], ids=["sym8-channel", "asym4-channel", "pow2-5", "sym3-tensor", "asym4-blocks32", "asym4-blocks5"])
def test_fast_folds_to_the_containers_values(sample: Path, tmp_path: Path, policy: Policy):
    qpk = _pack(sample, tmp_path, policy)
    run = _run(qpk, "onnx-fast", tmp_path)
    assert run.error() < EXACT
    assert _ops(run.path)["DequantizeLinear"] == 0
    _assert_folds_to_the_containers_values(run.path, tmp_path / "unpacked.onnx", tmp_path)
    if policy.scheme != "pow2":  # (5-bit pow2 codes are integers of up to 16 bits)
        _close_in_size(run, qpk)


def test_fast_constant_nodes_opset_11(ocr_cls: Path, tmp_path: Path):
    """PaddleOCR's weights sit in Constant nodes at opset 11, its hard-swish in four nodes: fused into HardSwish
    they move the model to opset 14, INT4 codes to opset 21."""
    for bits, opset in ((8, 14), (4, 21)):
        qpk = _pack(ocr_cls, tmp_path, Policy("sym", bits, per_channel=True))
        run = _run(qpk, "onnx-fast", tmp_path, shapes={"x": (1, 3, 48, 192)})
        assert run.error() < EXACT
        model = onnx.load(str(run.path))
        assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == opset
        _assert_folds_to_the_containers_values(run.path, tmp_path / "unpacked.onnx", tmp_path, same_opset=False)
        assert Counter(n.op_type for n in onnx.load(str(run.path)).graph.node)["HardSwish"] == 18
        assert any("18 hard-swish (x * Clip(x + 3, 0, 6) / 6) fused into HardSwish" in n for n in run.notes)


def test_fast_float16_source(tmp_path: Path):
    """The weight is computed in float32 and cast to float16, as `qpack unpack` rounds it (onnxruntime's
    CPU provider runs float16 Conv and MatMul; not float64 or bfloat16 ones)."""
    src = tmp_path / "t.onnx"
    onnx.save(tiny_model(TensorProto.FLOAT16), src)
    qpk = _pack(src, tmp_path, Policy("asym", 4, per_channel=True))
    out = tmp_path / "e.onnx"
    export(qpk, "onnx-fast", out)
    restore(qpk, tmp_path / "r.onnx")
    _assert_folds_to_the_containers_values(out, tmp_path / "r.onnx", tmp_path)


def _hard_swish_after(model: onnx.ModelProto, dtype: int = TensorProto.FLOAT, branch_reads_clip: bool = False) -> onnx.ModelProto:
    """`model` with PaddlePaddle's hard-swish on its output y (and, with `branch_reads_clip`, an If whose
    branch reads the Clip's output, an outer value: the pattern must then stay)."""
    from onnx import helper, numpy_helper

    np_dtype = helper.tensor_dtype_to_np_dtype(dtype)
    model.graph.node[-1].output[0] = "h"
    model.graph.initializer.extend([numpy_helper.from_array(np.array([v], np_dtype), n) for v, n in ((3, "c3"), (0, "c0"), (6, "c6"))])
    model.graph.node.extend([helper.make_node("Add", ["h", "c3"], ["a"]), helper.make_node("Clip", ["a", "c0", "c6"], ["cl"]),
                             helper.make_node("Mul", ["h", "cl"], ["m"]), helper.make_node("Div", ["m", "c6"], ["y"])])
    if branch_reads_clip:
        out = helper.make_tensor_value_info("z", dtype, [1, 3])

        def branch(name: str, reads: str) -> onnx.GraphProto:
            return helper.make_graph([helper.make_node("Identity", [reads], [name])], name, [],
                                     [helper.make_tensor_value_info(name, dtype, [1, 3])])

        then, other = branch("then", "cl"), branch("other", "h")
        model.graph.node.append(helper.make_node("If", ["cond"], ["z"], then_branch=then, else_branch=other))
        model.graph.input.append(helper.make_tensor_value_info("cond", TensorProto.BOOL, []))
        model.graph.output.append(out)
    return model


@pytest.mark.parametrize("case", ["lut weight", "branch reads inside", "float64"])
def test_fast_hard_swish_fusion_keeps_what_it_must(tmp_path: Path, case: str):
    """The fusion edits the graph in place, so a stored tensor kept as float values in a Constant (lut has
    no integer form) is still written; a value a subgraph reads keeps its nodes; float64 activations (no
    HardSwish kernel in onnxruntime) keep theirs. Each export runs and gives the unpacked model's outputs."""
    dtype = TensorProto.DOUBLE if case == "float64" else TensorProto.FLOAT
    model = _hard_swish_after(tiny_model(dtype), dtype, branch_reads_clip=case == "branch reads inside")
    model.opset_import[0].version = 17
    src = tmp_path / "hs.onnx"
    onnx.save(model, src)
    policy = Policy("lut", 3, include=("fc.w",)) if case == "lut weight" else Policy("sym", 8, per_channel=True, include=("fc.w",))
    qpk = _pack(src, tmp_path, policy)
    out = tmp_path / "hs_fast.onnx"
    done = qpack.export(qpk, "onnx-fast", out)
    fused = any("fused into HardSwish" in n for n in done.notes)
    assert fused == (case == "lut weight"), done.notes
    if case == "float64":  # onnxruntime's CPU provider has no float64 Conv: the graph is checked, not run
        assert Counter(n.op_type for n in onnx.load(str(out)).graph.node)["Clip"] == 1
        return
    restore(qpk, tmp_path / "unpacked.onnx")
    a, b = open_runner(tmp_path / "unpacked.onnx"), open_runner(out)
    feeds = {**random_inputs(a.inputs, seed=0), **({"cond": np.array(True)} if case == "branch reads inside" else {})}
    for x, y in zip(a.run(feeds), b.run(feeds)):
        assert np.abs(x - y).max() <= EXACT * (np.abs(x).max() + 1e-30)


_AFFINE_CASES = {  # case: (s's shape, t's shape, folds); s None: no Mul, t None: no Add
    "mul and add": ((1, 4, 1, 1), (), True),
    "stored bias": ((1, 16, 1, 1), (), True),  # 16 output channels: the bias is large enough to store
    "mul reads s first": ((4, 1, 1), (1, 4, 1, 1), True),
    "no bias": ((), (4, 1, 1), True),
    "add only": (None, (1, 4, 1, 1), True),
    "mul only": ((1, 4, 1, 1), None, True),
    "conv1d": ((4, 1), (), True),
    "shared weight": ((1, 4, 1, 1), (), True),
    "read twice": ((1, 4, 1, 1), (), False),
    "not per channel": ((1, 1, 1, 6), (), False),
    "s a graph input": ((1, 4, 1, 1), (), False),
}


def _affine_after_conv(case: str) -> onnx.ModelProto:
    """x -> Conv(W [4, 4, 3(, 3)], b) -> Mul(s) -> Add(t) -> y, PaddlePaddle's learnable affine block
    (per channel here), W large enough to be stored; or a variant of it (_AFFINE_CASES)."""
    from onnx import helper, numpy_helper

    s_shape, t_shape, _ = _AFFINE_CASES[case]
    rng = np.random.default_rng(3)
    spatial = [6] if case == "conv1d" else [6, 6]
    c = 16 if case == "stored bias" else 4
    w = (rng.standard_normal([c, 4] + [3] * len(spatial)) * 0.3).astype(np.float32)
    inits = [numpy_helper.from_array(w, "W")]
    if case != "no bias":
        inits.append(numpy_helper.from_array(np.linspace(-0.2, 0.3, c).astype(np.float32), "b"))
    conv = helper.make_node("Conv", ["x", "W"] + ([] if case == "no bias" else ["b"]), ["conv_out"], pads=[1] * 2 * len(spatial))
    nodes, y = [conv], "conv_out"
    if s_shape is not None:
        inits.append(numpy_helper.from_array(np.linspace(0.5, -1.5, int(np.prod(s_shape))).astype(np.float32).reshape(s_shape), "s"))
        nodes.append(helper.make_node("Mul", ["s", y] if case == "mul reads s first" else [y, "s"], ["scaled"]))
        y = "scaled"
    if t_shape is not None:
        inits.append(numpy_helper.from_array(np.linspace(-0.3, 0.25, int(np.prod(t_shape))).astype(np.float32).reshape(t_shape), "t"))
        nodes.append(helper.make_node("Add", [y, "t"], ["y"]))
    else:
        nodes[-1].output[0] = "y"
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, c] + spatial)]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4] + spatial)]
    shape = [1, 4] + spatial
    if case == "shared weight":  # a second Conv reads W as it is
        nodes.append(helper.make_node("Conv", ["x", "W"], ["y2"], pads=[1] * 4))
        outputs.append(helper.make_tensor_value_info("y2", TensorProto.FLOAT, shape))
    if case == "read twice":  # the Conv's output is also a graph output: the affine stays
        outputs.append(helper.make_tensor_value_info("conv_out", TensorProto.FLOAT, shape))
    if case == "s a graph input":  # an initializer a caller may override is no constant
        inputs.append(helper.make_tensor_value_info("s", TensorProto.FLOAT, list(s_shape)))
    model = helper.make_model(helper.make_graph(nodes, "affine", inputs, outputs, inits), opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("target", ["onnx-fast", "onnx-matmulnbits"])
@pytest.mark.parametrize("case", list(_AFFINE_CASES))
def test_fast_folds_the_affine_after_a_float_conv(tmp_path: Path, target: str, case: str):
    """A per-channel Mul and Add after a Conv become its stored weight times s and its bias b * s + t, computed
    when the model loads: the session holds no Mul or Add, no constant is left unread, and the outputs are the
    unpacked model's (up to float rounding). Where the affine's input is read elsewhere, its constant does not
    broadcast per output channel, or it is a graph input, it stays."""
    folds = _AFFINE_CASES[case][2]
    src = tmp_path / "affine.onnx"
    onnx.save(_affine_after_conv(case), src)
    stored = ("W", "b") if case == "stored bias" else ("W",)
    qpk = _pack(src, tmp_path, Policy("sym", 8, per_channel=True, include=stored))
    with QpkReader(qpk) as q:
        assert tuple(e.name for e in q.entries) == stored
    out = tmp_path / "affine_fast.onnx"
    done = qpack.export(qpk, target, out)
    assert any("1 Mul/Add after float Conv folded into their weights and biases" in n for n in done.notes) == folds, done.notes
    held = Counter(n.op_type for n in _folded(out, tmp_path / "held.onnx").graph.node)
    assert (held["Mul"] + held["Add"] == 0) == folds, held
    exported = onnx.load(str(out))
    read = {i for n in exported.graph.node for i in n.input}
    assert all(t.name in read for t in exported.graph.initializer)
    restore(qpk, tmp_path / "unpacked.onnx")
    a, b = open_runner(tmp_path / "unpacked.onnx"), open_runner(out)
    feeds = random_inputs(a.inputs, seed=0)
    for x, y in zip(a.run(feeds), b.run(feeds)):
        assert x.shape == y.shape and np.abs(x - y).max() <= 1e-5 * (np.abs(x).max() + 1e-30)


# ---- onnx-matmulnbits ----

def test_matmulnbits_recognizer(ocr_rec: Path, tmp_path: Path):
    qpk = _pack(ocr_rec, tmp_path, Policy("sym", 4, per_channel=True))
    run = _run(qpk, "onnx-matmulnbits", tmp_path, shapes={"x": (1, 3, 48, 160)})
    assert run.error() < EXACT
    with QpkReader(qpk) as q:
        matrices = sum(1 for e in q.entries if e.role == "matrix")
    ops = _ops(run.path)
    others = len(QpkReader(qpk).entries) - matrices
    assert ops["MatMulNBits"] >= matrices > 0 and ops["DequantizeLinear"] == 0  # the rest decoded at load
    assert len([n for n in _inits(run.path) if n.endswith("_quantized")]) == others
    assert run.notes[0].startswith(f"{matrices} MatMul weights as MatMulNBits, {others} other tensors decoded when the model loads")
    _close_in_size(run, qpk)



def test_matmulnbits_int8_compute_matches_its_arithmetic(tmp_path: Path):
    """onnx-matmulnbits-int8: each MatMulNBits computes in int8 (accuracy_level 4), its input quantized
    symmetrically per block of block_size along K: onnxruntime's output is that arithmetic in NumPy (the
    container's weights times the block-quantized input) to 1e-6, where the float product is 1e-3 off."""
    k, n = 256, 64
    rng = np.random.default_rng(0)
    graph = onnx.helper.make_graph([onnx.helper.make_node("MatMul", ["x", "W"], ["y"])], "mm",
                                   [onnx.helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
                                   [onnx.helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])],
                                   [onnx.numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), "W")])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, tmp_path / "mm.onnx")
    qpk = _pack(tmp_path / "mm.onnx", tmp_path, Policy("sym", 4, per_channel=True))
    restore(qpk, tmp_path / "values.onnx")
    w = onnx.numpy_helper.to_array(onnx.load(str(tmp_path / "values.onnx")).graph.initializer[0]).astype(np.float64)
    export(qpk, "onnx-matmulnbits-int8", tmp_path / "int8.onnx")
    node = next(x for x in onnx.load(str(tmp_path / "int8.onnx")).graph.node if x.op_type == "MatMulNBits")
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["accuracy_level"] == 4
    runner = open_runner(tmp_path / "int8.onnx")
    for _ in range(4):
        x = rng.standard_normal((1, k)).astype(np.float32)
        got = runner.run({"x": x})[0].astype(np.float64)
        blocks = x.astype(np.float64).reshape(-1, attrs["block_size"])
        step = np.abs(blocks).max(axis=1, keepdims=True) / 127
        int8 = (np.round(blocks / step) * step).reshape(1, k) @ w
        top = np.abs(int8).max()
        assert np.abs(got - int8).max() < 1e-6 * top < np.abs(got - x.astype(np.float64) @ w).max() / 100

def test_matmulnbits_gemm_bias_added_once(sample: Path, tmp_path: Path):
    """The sample's Gemm layers carry biases: they become MatMulNBits' bias input, with no Add left over."""
    qpk = _pack(sample, tmp_path, Policy("asym", 4))
    run = _run(qpk, "onnx-matmulnbits", tmp_path)
    assert run.error() < EXACT  # a bias added twice would show here
    model = onnx.load(str(run.path))
    nbits = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    assert len(nbits) == 2 and all(len(n.input) == 6 and n.input[5] for n in nbits)
    assert not any(n.op_type in ("Gemm", "Add") for n in model.graph.node)
    assert {a.name: a.i for a in nbits[0].attribute}["bits"] == 4


@pytest.mark.parametrize("block,expect", [(32, 32), (48, 16), (10, None)])
def test_matmulnbits_blocks(sample: Path, tmp_path: Path, block: int, expect: int | None):
    """A container block of B along K takes the largest power-of-two block dividing B; blocks of 10 cannot."""
    qpk = _pack(sample, tmp_path, _BlockPolicy("sym", 4, per_channel=True, block=block))
    run = _run(qpk, "onnx-matmulnbits", tmp_path)
    assert run.error() < EXACT
    model = onnx.load(str(run.path))
    sizes = {a.i for n in model.graph.node if n.op_type == "MatMulNBits" for a in n.attribute if a.name == "block_size"}
    if expect is None:
        assert not sizes and any("decoded when the model loads" in n for n in run.notes)
    else:
        assert sizes == {expect}


# ---- tflite ----

def _tflite_tensors(path: Path) -> list[tuple[str, int, int, int]]:
    """(op, input position, tensor type, scale count) of every constant operator input."""
    m = tflite.Model.GetRootAsModel(path.read_bytes(), 0)
    names = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}
    g, out = m.Subgraphs(0), []
    for k in range(g.OperatorsLength()):
        op = g.Operators(k)
        code = m.OperatorCodes(op.OpcodeIndex())
        for pos, t in enumerate(op.InputsAsNumpy()):
            if t < 0:
                continue
            tensor = g.Tensors(int(t))
            if m.Buffers(tensor.Buffer()).DataLength():
                q = tensor.Quantization()
                out.append((names[max(code.BuiltinCode(), code.DeprecatedBuiltinCode())], pos, tensor.Type(),
                            q.ScaleLength() if q else 0))
    return out


def _tflite_ops(path: Path) -> Counter[str]:
    m = tflite.Model.GetRootAsModel(path.read_bytes(), 0)
    names = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}
    g = m.Subgraphs(0)
    codes = [m.OperatorCodes(g.Operators(k).OpcodeIndex()) for k in range(g.OperatorsLength())]
    return Counter(names[max(c.BuiltinCode(), c.DeprecatedBuiltinCode())] for c in codes)


def _buffers_aligned(path: Path) -> bool:
    m = tflite.Model.GetRootAsModel(path.read_bytes(), 0)
    starts = [m.Buffers(i)._tab.Vector(m.Buffers(i)._tab.Offset(4)) for i in range(m.BuffersLength()) if m.Buffers(i).DataLength()]
    return all(s % 16 == 0 for s in starts)


def _partitions(path: Path) -> int:
    """How many XNNPACK delegate partitions LiteRT makes of the model (one: the whole graph in XNNPACK)."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), num_threads=1)
    it.allocate_tensors()
    return sum(op["op_name"] == "DELEGATE" for op in it._get_ops_details())


def test_tflite_int8_behind_dequantize_runs_in_xnnpack(tfl_fp32: Path, tmp_path: Path):
    """Convolution filters become int8 per channel behind DEQUANTIZE, which XNNPACK unpacks at load, the
    whole graph in one delegate partition; dense ones int8 FULLY_CONNECTED weights for the hybrid kernel.
    tflite-dequantize keeps every convolution behind DEQUANTIZE: the container's exact values."""
    qpk = _pack(tfl_fp32, tmp_path, Policy("sym", 8, per_channel=True))
    dense = [w for w in TfliteModel(tfl_fp32).weights if w.role == Role.MATRIX]
    run = _run(qpk, "tflite", tmp_path)
    assert run.error() < HYBRID
    tensors = _tflite_tensors(run.path)
    weights = [t for t in tensors if t[0] == "DEQUANTIZE"]
    assert weights and all(t[2] == tflite.TensorType.INT8 and t[3] >= 1 for t in weights) and max(t[3] for t in weights) > 1
    assert not [t for t in tensors if t[1] == 1 and t[0] in ("CONV_2D", "DEPTHWISE_CONV_2D")]
    hybrid = [t for t in tensors if t[0] == "FULLY_CONNECTED" and t[1] == 1]
    assert len(hybrid) == len(dense) and all(t[2] == tflite.TensorType.INT8 for t in hybrid)
    assert _partitions(run.path) == 1 and _buffers_aligned(run.path)
    _close_in_size(run, qpk)
    exact = _run(qpk, "tflite-dequantize", tmp_path)
    assert exact.error() < EXACT and _partitions(exact.path) == 1
    assert not [t for t in _tflite_tensors(exact.path) if t[0] == "FULLY_CONNECTED"]


def test_tflite_fast_runs_int4_only_where_xnnpack_does(tfl_fp32: Path, tmp_path: Path):
    """XNNPACK has no int4 DEQUANTIZE and no int4 convolution: tflite-fast stores 4-bit convolution codes as
    int8 (exact) and says so, but a dense convolution becomes the FULLY_CONNECTED it computes, on int4
    weights; the graph stays one partition. tflite keeps the other convolutions int4, outside XNNPACK."""
    qpk = _pack(tfl_fp32, tmp_path, Policy("sym", 4, per_channel=True))
    dense = [w for w in TfliteModel(tfl_fp32).weights if w.role == Role.MATRIX]
    fast = _run(qpk, "tflite-fast", tmp_path)
    assert fast.error() < HYBRID and _partitions(fast.path) == 1
    tensors = _tflite_tensors(fast.path)
    int4 = [t for t in tensors if t[2] == tflite.TensorType.INT4]
    assert len(int4) == len(dense) and all(t[0] == "FULLY_CONNECTED" and t[1] == 1 for t in int4)
    assert all(t[2] == tflite.TensorType.INT8 for t in tensors if t[0] == "DEQUANTIZE")
    assert not [t for t in tensors if t[1] == 1 and t[0] in ("CONV_2D", "DEPTHWISE_CONV_2D")]
    ops, before = _tflite_ops(fast.path), _tflite_ops(tfl_fp32)
    assert ops["FULLY_CONNECTED"] == len(dense) and ops["CONV_2D"] == before["CONV_2D"] - len(dense)
    assert ops["RESHAPE"] == before["RESHAPE"] + 2  # the two window convolutions read their input as one pixel
    assert any("of 4-bit sym codes stored as int8 (XNNPACK runs int4 only in fully-connected" in n for n in fast.notes)
    small = _run(qpk, "tflite", tmp_path)
    assert small.error() < HYBRID and small.path.stat().st_size < fast.path.stat().st_size
    assert sum(t[2] == tflite.TensorType.INT4 for t in _tflite_tensors(small.path)) > len(int4)
    assert _partitions(small.path) > 1 and any("run outside XNNPACK" in n for n in small.notes)


def test_tflite_fully_connected_hybrid_int4(tfl_fc: Path, tmp_path: Path):
    """Fully-connected weights go to the hybrid kernel as int4, read directly; XNNPACK takes the whole graph."""
    qpk = _pack(tfl_fc, tmp_path, Policy("sym", 4, per_channel=True))
    run = _run(qpk, "tflite-fast", tmp_path)
    assert run.cosine() > 0.99 and _partitions(run.path) == 1
    fc = [t for t in _tflite_tensors(run.path) if t[0] == "FULLY_CONNECTED" and t[1] == 1]
    assert fc and all(t[2] == tflite.TensorType.INT4 for t in fc) and max(t[3] for t in fc) > 1
    assert any("for hybrid kernels" in n for n in run.notes)


def test_tflite_blockwise_int4_in_one_xnnpack_partition(tfl_fp32: Path, tmp_path: Path):
    """Blocks of 32 along a dense convolution's input: TFLite's blockwise int4 (a float16 scale tensor [O, K/B])
    in the FULLY_CONNECTED it becomes, which XNNPACK takes with the rest of the graph; the probe finds the
    installed LiteRT runs the form."""
    from qpack.converter.export.tflite_int import blockwise_runs

    assert blockwise_runs()
    qpk = _pack(tfl_fp32, tmp_path, Policy("sym", 4, group_size=32, target="tflite-fast"))
    with QpkReader(qpk) as q:
        blocked = sum(e.grouping.block is not None for e in q.entries)
    run = _run(qpk, "tflite-fast", tmp_path)
    assert blocked and run.error() < HYBRID and run.cosine() > 0.999 and _partitions(run.path) == 1
    fc = [t for t in _tflite_tensors(run.path) if t[0] == "FULLY_CONNECTED" and t[1] == 1]
    assert len(fc) == blocked and all(t[2] == tflite.TensorType.INT4 and t[3] == 0 for t in fc)  # no affine scales: blocks
    assert any(f"{blocked} weights as int4 for blockwise hybrid kernels" in n for n in run.notes), run.notes


def test_tflite_block_at_scale_zero_goes_out_as_zeros(tfl_fp32: Path, tmp_path: Path):
    """A block whose scale is 0 holds zeros whatever its codes (FORMAT.md allows the scale; qpack writes 1 for
    an all-zero block): XNNPACK refuses a zero scale, so the export gives it scale 1 and codes 0, the same
    values, and leaves every other block as it is."""
    from qpack.converter.export import tflite_int
    from qpack.converter.export.intform import IntForm, int_form

    qpk = _pack(tfl_fp32, tmp_path, Policy("sym", 4, group_size=32, target="tflite-fast"))
    with QpkReader(qpk) as r:
        e = next(e for e in r.entries if e.grouping.block)
        form = int_form(r, e)
        schema = tflite_int.litert_schema()
        model = tflite_int.load(schema, r.graph(), str(qpk))
        uses = tflite_int._uses(schema, model, tflite_int.op_names(schema, model))[int(e.key.split(":", 1)[1])]
    scale, q = form.scale.copy(), form.q.copy()
    scale.reshape(-1)[0] = 0
    q.reshape(-1, 32)[0] = 3
    c = tflite_int.choose(e, IntForm(e, q, scale, None), uses, tflite_int.FAST)
    assert c.block == 32 and c.scales[0] == 1.0 and not c.q.reshape(-1, 32)[0].any()
    assert np.array_equal(c.q.reshape(-1, 32)[1:], q.reshape(-1, 32)[1:]) and c.scales[1:] == scale.reshape(-1)[1:].tolist()


@pytest.mark.parametrize("target", ["tflite", "tflite-dequantize"])
def test_tflite_dequantize_exact(tfl_fp32: Path, tmp_path: Path, target: str):
    """asym 4-bit with a zero point has no int4 symmetric form: int4 + zero points behind DEQUANTIZE, exact;
    a dense convolution stays one too, where the hybrid kernel would take its codes only wider (int8)."""
    qpk = _pack(tfl_fp32, tmp_path, Policy("asym", 4))
    run = _run(qpk, target, tmp_path)
    assert run.error() < EXACT
    tensors = _tflite_tensors(run.path)
    assert {t[0] for t in tensors if t[2] == tflite.TensorType.INT4} == {"DEQUANTIZE"}
    assert not [t for t in tensors if t[0] == "FULLY_CONNECTED"]
    _close_in_size(run, qpk)


@pytest.mark.parametrize("target", ["tflite", "tflite-fast", "tflite-dequantize"])
def test_tflite_float16_source_runs_in_xnnpack(tfl_fp16: Path, tmp_path: Path, target: str):
    """float16 weights behind DEQUANTIZE: the op now reads int8 per-channel codes with zero points, and the
    float16 biases it kept become float32 read directly, so XNNPACK takes the whole graph."""
    qpk = _pack(tfl_fp16, tmp_path, Policy("asym", 8, per_channel=True))
    run = _run(qpk, target, tmp_path)
    assert run.error() < FLOAT16 and run.cosine() > 0.9999  # the unpacked model holds the values in float16
    tensors = _tflite_tensors(run.path)
    inputs = [t for t in tensors if t[0] == "DEQUANTIZE"]
    with QpkReader(qpk) as q:
        assert len(inputs) == len(q.entries)
    assert all(t[2] == tflite.TensorType.INT8 and t[3] >= 1 for t in inputs) and max(t[3] for t in inputs) > 1
    assert tflite.TensorType.FLOAT16 not in {t[2] for t in tensors}
    assert _partitions(run.path) == 1 and _buffers_aligned(run.path)
    _close_in_size(run, qpk)


@pytest.mark.parametrize("target", ["tflite", "tflite-fast", "tflite-dequantize"])
def test_tflite_sparse_weights_stay_sparse(tfl_sparse: Path, tmp_path: Path, target: str):
    """Sparse kernels export as int8 nonzero values: DENSIFY spreads them out as int8 and the DEQUANTIZE
    after it reads that; the file is the container's values, smaller, and runs in one XNNPACK partition."""
    qpk = _pack(tfl_sparse, tmp_path, Policy("sym", 8))
    run = _run(qpk, target, tmp_path)
    assert run.error() < FLOAT16 and run.cosine() > 0.9999
    densify = [t for t in _tflite_tensors(run.path) if t[0] == "DENSIFY"]
    assert densify and all(t[2] == tflite.TensorType.INT8 and t[3] == 1 for t in densify)
    assert run.path.stat().st_size < 0.85 * tfl_sparse.stat().st_size
    assert _partitions(run.path) == 1



def test_tflite_sparse_weights_keep_their_zeros(tfl_sparse: Path, tmp_path: Path):
    """DENSIFY puts integer 0 between a sparse weight's values, so asym codes (whose zero point is not 0)
    would turn every implicit zero into -zero_point x scale: the export refuses them in one line and
    writes nothing; a goal made --for tflite-dequantize gives its sparse weights symmetric codes, and the
    export holds the container's values."""
    qpk = _pack(tfl_sparse, tmp_path, Policy("asym", 8))
    out = tmp_path / "asym.tflite"
    r = runner.invoke(app, ["export", str(qpk), "--to", "tflite-dequantize", "-o", str(out)])
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1, r.output
    assert "a sparse weight keeps its zeros at zero point 0 only" in r.output and not out.exists()
    # and inspect does not list the file as one tflite-dequantize takes as stored: its sparse tensors are counted
    with QpkReader(qpk) as q:
        sparse = sum(1 for e in q.entries if e.role == "kernel" and len(e.shape) == 1)
        dense_asym = len(q.entries) - sparse
    assert sparse == 46 and qpack.describe(qpk)["exports"]["tflite-dequantize"]["widened"] == sparse
    assert dense_asym > 0  # (the dense asym tensors are native for tflite-dequantize: not counted)
    goal = tmp_path / "goal.qpk"
    qpack.convert(tfl_sparse, goal, target_bpw=7.5, target="tflite-dequantize", compress="none")
    with QpkReader(goal) as q:
        schemes = {e.scheme for e in q.entries if e.role == "kernel" and len(e.shape) == 1}
    assert schemes and "asym" not in schemes
    run = _run(goal, "tflite-dequantize", tmp_path)
    assert run.error() < FLOAT16 and run.cosine() > 0.9999


# ---- the command line ----

def _invoke(*args: object):
    return runner.invoke(app, ["export", *map(str, args)])


def test_cli_export(sample: Path, tmp_path: Path):
    qpk = _pack(sample, tmp_path, Policy("sym", 3, per_channel=True))
    r = _invoke(qpk, "--to", "onnx-qdq", "-o", tmp_path / "e.onnx")
    assert r.exit_code == 0, r.output
    assert "note: 5 tensors of 3-bit sym codes stored as INT4" in r.output and "wrote" in r.output


@pytest.mark.parametrize("target", ["onnx-fast", "tflite-fast"])
def test_cli_export_measures_against_the_float_model(sample: Path, tfl_fp32: Path, tmp_path: Path, target: str):
    """--measure times the export against the container's float model in its runtime; the bytes ratio is the
    export's size over the float model's (`qpack unpack`'s), as printed. (The latency is reported, not judged.)"""
    import re

    qpk = _pack(sample if target == "onnx-fast" else tfl_fp32, tmp_path, Policy("sym", 8, per_channel=True))
    out = tmp_path / ("m.onnx" if target == "onnx-fast" else "m.tflite")
    r = _invoke(qpk, "--to", target, "-o", out, "--measure")
    assert r.exit_code == 0, r.output
    runtime = "onnxruntime" if target == "onnx-fast" else "LiteRT"
    got = re.search(rf"note: measured in {runtime} \(one thread, (\d+) interleaved rounds\): (\d+\.\d\d)x the float model's "
                    r"latency, (\d\.\d{3})x its bytes \(([\d,]+) of ([\d,]+)\)", r.output)
    assert got, r.output
    rounds, size, whole = int(got[1]), int(got[4].replace(",", "")), int(got[5].replace(",", ""))
    restore(qpk, tmp_path / f"float{out.suffix}")
    assert rounds >= 10 and size == out.stat().st_size and whole == (tmp_path / f"float{out.suffix}").stat().st_size
    assert float(got[3]) == round(size / whole, 3) and float(got[2]) > 0


def test_cli_export_measure_refuses_sources(sample: Path, tmp_path: Path):
    qpk = _pack(sample, tmp_path, Policy("sym", 8))
    r = _invoke(qpk, "--to", "c", "-o", tmp_path / "fw", "--measure")
    assert r.exit_code != 0 and r.output.strip().splitlines() == [
        "qpack: error: --to c writes sources, not a model a runtime loads: --measure times the model exports"]
    assert not (tmp_path / "fw").exists()


@pytest.mark.parametrize("source,target,message", [
    ("tflite", "onnx-qdq", "holds a tflite model; --to onnx-qdq takes containers of onnx models"),
    ("tflite", "onnx-matmulnbits", "holds a tflite model"),
    ("onnx", "tflite", "holds an onnx model; --to tflite takes containers of tflite"),
])
def test_cli_wrong_pairing(sample: Path, tfl_fp16: Path, tmp_path: Path, source: str, target: str, message: str):
    qpk = _pack(tfl_fp16 if source == "tflite" else sample, tmp_path, Policy("sym", 8))
    before = sorted(tmp_path.iterdir())
    r = _invoke(qpk, "--to", target, "-o", tmp_path / "out.bin")
    assert r.exit_code == 1 and r.output.count("\n") == 1 and r.output.startswith("qpack: error:")
    assert message in r.output
    assert sorted(tmp_path.iterdir()) == before  # nothing left behind


@pytest.mark.parametrize("target", ["onnx-qdq", "onnx-matmulnbits"])
def test_cli_output_is_a_directory(sample: Path, tmp_path: Path, target: str):
    qpk = _pack(sample, tmp_path, Policy("sym", 4))
    (tmp_path / "out").mkdir()
    before = sorted(tmp_path.rglob("*"))
    r = _invoke(qpk, "--to", target, "-o", tmp_path / "out")
    assert r.exit_code == 1 and r.output.count("\n") == 1 and "is a directory" in r.output
    assert sorted(tmp_path.rglob("*")) == before


@pytest.mark.parametrize("policy,message", [
    (Policy("pow2", 6, per_channel=True), "fit neither int8 nor int4"),
    (_BlockPolicy("sym", 8, per_channel=True, block=16), "TFLite runs blocks only in a fully-connected weight's input axis"),
    (_MatrixBlocks("sym", 4, per_channel=True), "TFLite stores block scales as float16"),
    (_MatrixBlocks("sym", 4, per_channel=True, block=48, half=True), "XNNPACK takes blocks of a multiple of 32 that divide"),
])
def test_cli_tflite_refuses_unmappable(tfl_fp32: Path, tmp_path: Path, policy: Policy, message: str):
    qpk = _pack(tfl_fp32, tmp_path, policy)
    before = sorted(tmp_path.iterdir())
    r = _invoke(qpk, "--to", "tflite", "-o", tmp_path / "o.tflite")
    assert r.exit_code == 1 and r.output.count("\n") == 1 and message in r.output and "tensor '" in r.output
    assert sorted(tmp_path.iterdir()) == before


@pytest.mark.parametrize("target", ["onnx-qdq", "tflite"])
def test_dq_levels_export_as_integers(sample: Path, tfl_fp32: Path, tmp_path: Path, target: str):
    """dq codes read through the state machine give integer levels: exported as integers times the scale,
    the runtime gives the unpacked model's outputs."""
    qpk = _pack(sample if target == "onnx-qdq" else tfl_fp32, tmp_path, Policy("dq", 4, per_channel=True))
    run = _run(qpk, target, tmp_path)
    # LiteRT's hybrid kernels quantize activations on the fly: its tolerance is theirs
    assert run.error() < 1e-5 and run.cosine() > 0.9999 if target == "onnx-qdq" else run.error() < HYBRID and run.cosine() > 0.999


def test_inspect_says_which_targets_take_the_file_as_stored(sample: Path, tfl_fp16: Path, tmp_path: Path):
    """Each target's declared native settings, read against the container: 4-bit sym runs as INT4
    everywhere; 3-bit codes widen in ONNX (no INT3) but not in qpk.h; TFLite takes symmetric int8 per channel."""
    import qpack

    four, three = _pack(sample, tmp_path, Policy("sym", 4, per_channel=True)), tmp_path / "three.qpk"
    qpack.convert(sample, three, bits=3, scheme="sym", per_channel=True, compress="none")
    def widened(qpk: Path) -> dict[str, int]:
        return {t: v["widened"] for t, v in qpack.describe(qpk)["exports"].items()}

    onnx_targets = ("onnx-qdq", "onnx-fast", "onnx-matmulnbits", "onnx-matmulnbits-int8")
    assert widened(four) == {**dict.fromkeys(onnx_targets, 0), "onnx-int8": 5, "c": 0, "c-coded": 0}
    assert widened(three) == {**dict.fromkeys(onnx_targets, 5), "onnx-int8": 5, "c": 0, "c-coded": 0}
    tfl = tmp_path / "face.qpk"
    qpack.convert(tfl_fp16, tfl, bits=8, scheme="sym", per_channel=True, compress="none")
    fits = widened(tfl)
    assert set(fits) == {"tflite", "tflite-fast", "tflite-dequantize", "tflite-int8", "tflite-int8-fast", "tflite-16x8", "c", "c-coded"}
    assert fits["tflite"] == fits["tflite-fast"] == fits["tflite-int8"] == fits["tflite-int8-fast"] == fits["c"] == 0
    r = runner.invoke(app, ["inspect", str(three)])
    assert "onnx-qdq widening 5 tensors, about" in r.output and "c as stored, about" in r.output


@pytest.mark.parametrize("scheme,bits,qtype", [("pow2", 4, "INT8"), ("dq", 3, "INT4"), ("sym", 4, "INT4")])
def test_native_width_is_the_integer_forms(sample: Path, tmp_path: Path, scheme: str, bits: int, qtype: str):
    """A target of integer forms runs a tensor natively at its integers' width, which the scheme row
    declares (pow2's powers of two and dq's levels are wider than their codes): the ONNX export stores
    exactly that type."""
    import qpack
    from qpack.formats.qpk import SCHEMES

    qpk = tmp_path / "n.qpk"
    qpack.convert(sample, qpk, bits=bits, scheme=scheme, compress="none")
    assert qpack.describe(qpk)["exports"]["onnx-qdq"]["widened"] == 0
    assert SCHEMES[scheme].integer_bits(bits) == int(qtype[3:])
    done = qpack.export(qpk, "onnx-qdq", tmp_path / "n.onnx")
    stored = {TensorProto.DataType.Name(t.data_type) for t in onnx.load(tmp_path / "n.onnx").graph.initializer if t.data_type != 1}
    assert qtype in stored and all("stored as" not in n or qtype in n for n in done.notes)
