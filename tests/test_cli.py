"""The command line through Typer's CliRunner: exit codes, one-line errors, no partial output."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from qpack.converter.cli import app
from qpack.converter.export import TARGETS
from qpack.formats.qpk import QpkReader

runner = CliRunner()


def _run(*args: str):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture()
def model(tmp_path: Path, sample: Path) -> Path:
    dst = tmp_path / "digits.onnx"
    shutil.copy(sample, dst)
    return dst


def test_convert_inspect_unpack(model: Path, tmp_path: Path):
    qpk, report = tmp_path / "small.qpk", tmp_path / "r.json"
    r = _run("convert", model, "--bits", "4", "--scheme", "sym", "--per-channel", "-o", qpk, "--json", report, "--compress", "all")
    assert r.exit_code == 0, r.output
    assert "original (float)" in r.output and "7z" in r.output and qpk.exists()
    data = json.loads(report.read_text())
    assert data["sizes"]["qpk_bytes"] == qpk.stat().st_size
    assert set(data["compressed"]) == {"gzip", "zstd", "7z"}
    assert data["compressed"]["gzip"]["qpk"] < data["compressed"]["gzip"]["original"]
    assert 4.0 < data["sizes"]["bits_per_weight"] < 4.2
    # the reported entropy is that of the stored codes, recounted here from the container
    with QpkReader(qpk) as q:
        bits = 0.0
        for e in q.entries:
            counts = np.bincount(q.codes(e).reshape(-1), minlength=16)
            p = counts[counts > 0] / e.count
            bits += float(-(p * np.log2(p)).sum()) * e.count
        total = sum(e.count for e in q.entries)
    assert data["sizes"]["entropy_bits_per_weight"] == pytest.approx(bits / total, abs=1e-4)
    assert data["sizes"]["entropy_bits_per_weight"] < 3.5  # trained weights crowd the middle codes
    r = _run("inspect", qpk)
    assert r.exit_code == 0 and "11.weight" in r.output and "verified" in r.output
    r = _run("unpack", qpk, "-o", tmp_path / "restored.onnx")
    assert r.exit_code == 0 and (tmp_path / "restored.onnx").exists()


def test_default_output_name_and_pow2(model: Path):
    r = _run("convert", model, "--bits", "6", "--scheme", "pow2", "--compress", "none")
    assert r.exit_code == 0, r.output
    assert model.with_suffix(".qpk").exists()


def test_keep_and_bits_for(model: Path, tmp_path: Path):
    report = tmp_path / "r.json"
    r = _run("convert", model, "-o", tmp_path / "k.qpk", "--keep", "13.*", "--bits-for", "11.*=3", "--json", report, "--compress", "none")
    assert r.exit_code == 0, r.output
    data = json.loads(report.read_text())
    assert {t["name"]: t["bits"] for t in data["tensors"]}["11.weight"] == 3
    assert any(k["name"] == "13.weight" and "--keep" in k["reason"] for k in data["kept"])


@pytest.mark.parametrize("args,message", [
    (["--scheme", "sym", "--bits", "1"], "takes 2..16 bits"),
    (["--scheme", "pow2", "--bits", "1"], "takes 2..8 bits"),
    (["--bits", "12"], "scheme 'asym' takes 1..8 bits, not 12"),
    (["--scheme", "lut", "--bits", "9"], "takes 1..8 bits"),
    (["--compress", "rar"], "unknown compressor"),
    (["--bits-for", "conv"], "PATTERN=BITS"),
])
def test_impossible_options(model: Path, tmp_path: Path, args, message):
    out = tmp_path / "x.qpk"
    r = _run("convert", model, "-o", out, *args)
    assert r.exit_code == 1
    assert message in r.output and r.output.count("\n") == 1 and r.output.startswith("qpack: error:")
    assert not out.exists()


def test_bits_out_of_range_is_usage_error(model: Path):
    assert _run("convert", model, "--bits", "17").exit_code == 2
    assert _run("convert", model, "--bits", "0").exit_code == 2


@pytest.mark.parametrize("payload", [b"garbage" * 50, b""])
def test_bad_model_one_line_no_output(tmp_path: Path, payload: bytes):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(payload)
    r = _run("convert", bad, "-o", tmp_path / "o.qpk")
    assert r.exit_code == 1 and r.output.startswith("qpack: error:") and r.output.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.onnx"]  # no temp file left behind


def test_corrupt_qpk_unpack_leaves_nothing(model: Path, tmp_path: Path):
    qpk = tmp_path / "m.qpk"
    assert _run("convert", model, "-o", qpk, "--compress", "none").exit_code == 0
    data = bytearray(qpk.read_bytes())
    data[-10] ^= 0xFF
    qpk.write_bytes(bytes(data))
    out = tmp_path / "r.onnx"
    r = _run("unpack", qpk, "-o", out)
    assert r.exit_code == 1 and "checksum" in r.output and not out.exists()
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())
    r = _run("inspect", qpk)
    assert r.exit_code == 1 and "checksum" in r.output


def test_unpack_wrong_suffix(model: Path, tmp_path: Path):
    qpk = tmp_path / "m.qpk"
    _run("convert", model, "-o", qpk, "--compress", "none")
    r = _run("unpack", qpk, "-o", tmp_path / "r.tflite")
    assert r.exit_code == 1 and "onnx" in r.output


def test_refuses_to_overwrite_input(model: Path):
    r = _run("convert", model, "-o", model)
    assert r.exit_code == 1 and "overwrite" in r.output


def test_qpk_is_not_a_source_model(model: Path, tmp_path: Path):
    qpk = tmp_path / "m.qpk"
    _run("convert", model, "-o", qpk, "--compress", "none")
    r = _run("convert", qpk, "-o", tmp_path / "again.qpk")
    assert r.exit_code == 1 and "container" in r.output


def test_tflite_convert_and_unpack(tfl_fp16: Path, tmp_path: Path):
    qpk, report = tmp_path / "f.qpk", tmp_path / "f.json"
    r = _run("convert", tfl_fp16, "--bits", "6", "--scheme", "asym", "--per-channel", "-o", qpk, "--json", report)
    assert r.exit_code == 0, r.output
    data = json.loads(report.read_text())
    assert data["source"]["format"] == "tflite" and data["sizes"]["qpk_bytes"] < data["sizes"]["original_bytes"]
    r = _run("unpack", qpk, "-o", tmp_path / "f.tflite")
    assert r.exit_code == 0 and (tmp_path / "f.tflite").stat().st_size == tfl_fp16.stat().st_size
    r = _run("unpack", qpk, "-o", tmp_path / "f.onnx")
    assert r.exit_code == 1 and "tflite" in r.output


def test_bad_tflite_one_line(tmp_path: Path):
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"\0\0\0\0TFL3" + bytes(8))
    r = _run("convert", bad)
    assert r.exit_code == 1 and r.output.startswith("qpack: error:") and r.output.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.tflite"]


def test_entropy_coded_codes(ocr_cls: Path, tmp_path: Path):
    packed, coded = tmp_path / "p.qpk", tmp_path / "z.qpk"
    common = ["--bits", "4", "--scheme", "sym", "--per-channel", "--compress", "none"]
    assert _run("convert", ocr_cls, "-o", packed, *common, "--json", tmp_path / "p.json").exit_code == 0
    r = _run("convert", ocr_cls, "-o", coded, *common, "--codec", "zstd", "--json", tmp_path / "z.json")
    assert r.exit_code == 0, r.output
    p, z = (json.loads((tmp_path / f"{n}.json").read_text())["sizes"] for n in "pz")
    assert z["stored_code_bytes"] < p["stored_code_bytes"] == p["packed_code_bytes"]
    # near the order-0 Shannon limit of the codes, and never below what a real coder can reach by chance
    assert z["entropy_limit_bytes"] * 0.9 < z["stored_code_bytes"] < z["entropy_limit_bytes"] * 1.1
    assert z["bits_per_weight"] < p["bits_per_weight"] and coded.stat().st_size < packed.stat().st_size
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    assert _run("unpack", packed, "-o", a).exit_code == 0 and _run("unpack", coded, "-o", b).exit_code == 0
    assert a.read_bytes() == b.read_bytes()
    assert "codes, as stored (zstd)" in r.output


def test_group_size_and_param_dtype_reach_the_container(model: Path, tmp_path: Path):
    out = tmp_path / "g.qpk"
    r = _run("convert", model, "--bits", "4", "--group-size", "32", "-o", out, "--compress", "none", "-q")
    assert r.exit_code == 0, r.output
    with QpkReader(out) as q:
        blocked = [e for e in q.entries if e.grouping.block == 32]
        assert blocked and all(e.dtypes["scale"] == "<f2" for e in blocked)
    r = _run("convert", model, "--bits", "4", "--group-size", "32", "--param-dtype", "fp32", "-o", out, "--compress", "none", "-q")
    assert r.exit_code == 0, r.output
    with QpkReader(out) as q:
        assert all(e.dtypes.get("scale", "<f4") == "<f4" for e in q.entries)
    assert _run("convert", model, "--group-size", "8", "-o", out).exit_code == 2  # outside 16..1024


@pytest.mark.parametrize("command", ["convert", "unpack", "export", "inspect", "report", "eval", "sweep"])
def test_help_users_can_scan(command: str):
    """Every command's help: an example, no type shown for flags, the choices and defaults of registries."""
    r = runner.invoke(app, [command, "--help"], env={"COLUMNS": "400"})
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.replace("│", " ").split())  # the help column's wrapped lines, joined
    assert "<bool>" not in text
    assert f"qpack {command} " in text.split("Examples", 1)[1]
    if command == "convert":
        for panel in ("What to quantize", "Goals", "Inputs", "Storage", "Budgets", "Output"):
            assert f"─ {panel}" in r.output, panel
        assert "<asym|sym|dq|lut|pow2>" in text
        assert "[default: asym; with a goal, each tensor's best of asym, sym, and dq with an entropy coder]" in text
        assert "[default: packed; with a goal, ans]" in text and "<auto|fp16|fp32>" in text
    if command == "export":
        assert all(f"{t}: " in text for t in TARGETS) and "<minmax|percentile|mse>" in text


def test_json_to_standard_output(model: Path, tmp_path: Path):
    """`--json -` writes the report, alone, on standard output (no file named '-')."""
    r = runner.invoke(app, ["convert", str(model), "--bits", "4", "-o", str(tmp_path / "d.qpk"), "--json", "-", "--compress", "none"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["sizes"]["qpk_bytes"] == (tmp_path / "d.qpk").stat().st_size
    assert not Path("-").exists() and not (tmp_path / "-").exists()
    r = runner.invoke(app, ["inspect", str(tmp_path / "d.qpk"), "--json", "-"])
    assert r.exit_code == 0 and json.loads(r.stdout)["verified"] is True


class _Digits:
    """onnxruntime's calibration reader over a few of the bundled digits."""

    def __init__(self) -> None:
        from qpack.converter.datasets import digits

        x = digits()[0][:16]
        self.feeds = iter([{"image": x[i : i + 1]} for i in range(len(x))])

    def get_next(self):
        return next(self.feeds, None)


def test_already_quantized_models_say_so(sample: Path, tfl_int8: Path, tmp_path: Path):
    """An int8 model converts (exit 0: the container is a valid, lossless copy), with one note saying
    why nothing was quantized and what the container is; a partly quantized one says which part."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_dynamic, quantize_static

    dynamic, qdq, part = tmp_path / "dynamic.onnx", tmp_path / "qdq.onnx", tmp_path / "part.onnx"
    quantize_dynamic(sample, dynamic)
    reader = type("Reader", (_Digits, CalibrationDataReader), {})()
    quantize_static(sample, qdq, reader, quant_format=QuantFormat.QDQ, per_channel=True)
    quantize_dynamic(sample, part, op_types_to_quantize=["Gemm", "MatMul"])  # the dense layers; the convolutions stay float
    for model, how in ((dynamic, "(ConvInteger, MatMulInteger)"), (qdq, "(DequantizeLinear)"),
                       (tfl_int8, "(per-channel scales")):
        qpk, js = tmp_path / f"{model.stem}.qpk", tmp_path / f"{model.stem}.json"
        r = _run("convert", model, "-o", qpk, "--json", js, "--compress", "none")
        assert r.exit_code == 0 and qpk.is_file(), r.output
        notes = [line for line in r.output.splitlines() if line.startswith("note:")]
        assert len(notes) == 1, r.output
        n = 21 if model == tfl_int8 else 5
        assert notes[0].startswith(f"note: {n} of {n} weight tensors are already int8 {how}"), notes
        assert "nothing was quantized" in notes[0] and "convert the float model it came from" in notes[0]
        assert json.loads(js.read_text())["notes"] == [notes[0].removeprefix("note: ")]
        r = _run("report", qpk, "--compress", "none")  # the container says the same
        assert r.exit_code == 0 and notes[0] in r.output, r.output
    r = _run("convert", part, "-o", tmp_path / "part.qpk", "--compress", "none")
    assert r.exit_code == 0
    assert "note: 2 of 5 weight tensors are already int8 (MatMulInteger) and stay as they are in the graph; " \
           "3 float tensors were quantized" in r.output
    r = _run("convert", sample, "-o", tmp_path / "float.qpk", "--compress", "none")
    assert r.exit_code == 0 and "note:" not in r.output


def test_weights_onnxruntime_packed_in_matmulnbits_count_as_quantized(tmp_path: Path):
    """A 4-bit MatMulNBits weight, as onnxruntime's MatMulNBitsQuantizer writes it (packed uint8 codes, float
    scales per block): already quantized, said in the note, not re-quantized as a uint8 tensor."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    k, n, block = 64, 32, 32
    codes = numpy_helper.from_array(rng.integers(0, 256, (n, k // block, block // 2), dtype=np.uint8), "w_Q4")
    scales = numpy_helper.from_array(rng.random(n * k // block).astype(np.float32), "w_scales")
    node = helper.make_node("MatMulNBits", ["x", "w_Q4", "w_scales"], ["y"], domain="com.microsoft", K=k, N=n, bits=4,
                            block_size=block)
    graph = helper.make_graph([node], "nbits", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])], [codes, scales])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "nbits.onnx")
    r = _run("convert", tmp_path / "nbits.onnx", "-o", tmp_path / "nbits.qpk", "--compress", "none")
    assert r.exit_code == 0, r.output
    assert "note: 1 of 1 weight tensors are already uint8 (MatMulNBits)" in r.output, r.output
