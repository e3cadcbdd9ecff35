"""qpack report: figures against hand-computed values, real models, pictures, and build gates."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from qpack.converter.analysis import tensor_figures, totals
from qpack.converter.cli import EXIT_BUDGET, app
from qpack.converter.quant import QUANTIZERS as SCHEMES
from qpack.formats.qpk import Grouping, QpkReader, TensorEntry

runner = CliRunner()


def _run(*args):
    return runner.invoke(app, [str(a) for a in args])


def _entry(shape, scheme, bits, axis=None):
    return TensorEntry("t", "init:t", tuple(shape), "float32", "kernel", scheme, bits, Grouping(axis), 0, {})


def test_hand_computed_asym_figures():
    x = np.array([-1.0, 0.0, 0.5, 2.0, 2.0, 2.0, -1.0, 0.0], np.float32)
    codes, params = SCHEMES["asym"].quantize(x, 2, None)  # scale 1, zero point 1: codes 0 1 2 3 3 3 0 1
    y = SCHEMES["asym"].dequantize(codes, params, 2, None)
    f = tensor_figures(_entry(x.shape, "asym", 2), codes, y, x, params)
    assert codes.tolist() == [0, 1, 2, 3, 3, 3, 0, 1]
    assert f["levels_used"] == 4 and f["levels"] == 4
    p = np.array([2, 2, 1, 3]) / 8
    assert f["entropy"] == pytest.approx(float(-(p * np.log2(p)).sum()), abs=1e-4)  # 1.9056
    assert f["bit_levels"] == 2.0
    assert f["quartiles"] == [-1.0, -0.25, 0.25, 2.0, 2.0]  # numpy linear interpolation
    assert (f["min"], f["max"]) == (-1.0, 2.0)
    # only 0.5 -> 1.0 is off: noise 0.25, signal 1+0.25+12+1 = 14.25
    assert f["sqnr_db"] == pytest.approx(10 * math.log10(14.25 / 0.25), abs=1e-3)
    assert f["range_coverage"] == 1.0
    assert f["bit_efficiency"] == pytest.approx(f["entropy"] / 2, abs=1e-4)


def test_hand_computed_pow2_window_and_coverage():
    x = np.array([3.0, -1.4, 0.2, 0.0, 5.9, -6.1], np.float32)
    codes, params = SCHEMES["pow2"].quantize(x, 3, None)  # values 4 -2 0 0 4 -8: window 2^1..2^3
    y = SCHEMES["pow2"].dequantize(codes, params, 3, None)
    f = tensor_figures(_entry(x.shape, "pow2", 3), codes, y, x, params)
    assert f["exponent_window"] == [1, 3] and f["exponents_used"] == 3
    assert f["levels_used"] == 4  # codes 0, 2 (4), 5 (-2), 7 (-8)
    # float range [-6.1, 5.9]; stored range [-8, 4] covers [-6.1, 4]: 10.1 / 12
    assert f["range_coverage"] == pytest.approx(10.1 / 12, abs=1e-4)


def test_totals_pool_energy():
    rows = [dict(params=10, bits=4, entropy=2.0, bit_levels=3.0, bit_efficiency=0.5, range_coverage=1.0, signal=100.0, noise=1.0,
                 sqnr_db=20.0),
            dict(params=30, bits=8, entropy=6.0, bit_levels=7.0, bit_efficiency=0.75, range_coverage=0.5, signal=100.0, noise=0.01,
                 sqnr_db=40.0)]
    t = totals(rows)
    assert t["bits"] == 7.0 and t["entropy"] == 5.0 and t["bit_levels"] == 6.0
    assert t["sqnr_db"] == pytest.approx(10 * math.log10(200 / 1.01), abs=1e-3)
    assert t["min_tensor_sqnr_db"] == 20.0


def _check_pictures(html: Path, count: int):
    text = html.read_text()
    assert text.count("data:image/png;base64,") == count and "<table>" in text
    pngs = sorted(html.parent.glob(html.stem + "_fig*.png"))
    assert len(pngs) == count
    for p in pngs:
        data = p.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_report_real_onnx(ocr_cls: Path, tmp_path: Path):
    html, js = tmp_path / "r.html", tmp_path / "r.json"
    r = _run("report", ocr_cls, "--bits", "4", "--scheme", "pow2", "--per-channel", "--html", html, "--json", js, "--compress", "none")
    assert r.exit_code == 0, r.output
    _check_pictures(html, 3)
    rep = json.loads(js.read_text())
    assert rep["tensors"] and all(t["exponent_window"] for t in rep["tensors"])
    assert 0 < rep["totals"]["bit_efficiency"] <= 1 and rep["totals"]["sqnr_db"] > 5
    assert rep["sizes"]["qpk_bytes"] > 0 and rep["command"].startswith("qpack report")


def test_report_real_tflite(tfl_fp16: Path, tmp_path: Path):
    html, js = tmp_path / "t.html", tmp_path / "t.json"
    r = _run("report", tfl_fp16, "--bits", "6", "--scheme", "asym", "--html", html, "--json", js, "--layer", "conv2d_1/Kernel")
    assert r.exit_code == 0, r.output
    _check_pictures(html, 3)
    rep = json.loads(js.read_text())
    assert rep["figure_layer"] == "conv2d_1/Kernel"
    # the figures describe the codes actually stored: count them in a container made with the same options
    qpk = tmp_path / "t.qpk"
    assert _run("convert", tfl_fp16, "--bits", "6", "--scheme", "asym", "-o", qpk, "-q").exit_code == 0
    with QpkReader(qpk) as q:
        used = {e.key: int(np.unique(q.codes(e)).size) for e in q.entries}
    assert {t["key"]: t["levels_used"] for t in rep["tensors"]} == used
    assert any(n < 64 for n in used.values()) and all(n > 8 for n in used.values())
    assert all(t["bit_levels"] == round(math.log2(t["levels_used"]), 4) for t in rep["tensors"])
    assert set(rep["compressed"]) == {"gzip", "zstd"}


def test_report_of_qpk_with_and_without_source(sample: Path, tmp_path: Path):
    model = tmp_path / "d.onnx"
    shutil.copy(sample, model)
    qpk = tmp_path / "d.qpk"
    assert _run("convert", model, "--bits", "5", "--scheme", "sym", "-o", qpk, "--compress", "none").exit_code == 0
    js = tmp_path / "q.json"
    r = _run("report", qpk, "--json", js, "--compress", "none")
    assert r.exit_code == 0, r.output
    rep = json.loads(js.read_text())
    assert rep["totals"]["sqnr_db"] is None and rep["sizes"]["qpk_bytes"] == qpk.stat().st_size
    assert all(t["bits"] == 5 for t in rep["tensors"])
    r = _run("report", qpk, "--source", model, "--json", js, "--html", tmp_path / "q.html", "--compress", "none")
    assert r.exit_code == 0, r.output
    assert json.loads(js.read_text())["totals"]["sqnr_db"] > 15  # 5-bit per-tensor: about 19 dB
    _check_pictures(tmp_path / "q.html", 3)


def test_report_with_a_source_runs_both_models_and_the_page_says_it_in_words(tfl_fp32: Path, tmp_path: Path):
    qpk, js, html = tmp_path / "lm.qpk", tmp_path / "r.json", tmp_path / "r.html"
    assert _run("convert", tfl_fp32, "--bits", "4", "--per-channel", "-o", qpk, "--compress", "none", "-q").exit_code == 0
    r = _run("report", qpk, "--source", tfl_fp32, "--json", js, "--html", html, "--compress", "none")
    assert r.exit_code == 0, r.output
    assert "8 seeded random inputs" in r.output and "least cosine" in r.output
    rep = json.loads(js.read_text())
    f = rep["fidelity"]
    assert f["samples"] == 8 and "seed 0" in f["inputs"] and [o["output"] for o in f["outputs"]] == ["conv2d_20", "conv2d_30"]
    assert min(o["cosine"] for o in f["outputs"]) > 0.95 and f["classification"] is None and len(f["regression"]) == 2
    assert rep["sizes"]["original_bytes"] == tfl_fp32.stat().st_size
    assert rep["sizes"]["ratio_vs_original"] == round(tfl_fp32.stat().st_size / qpk.stat().st_size, 4)
    page = html.read_text()
    for words in ("Original model", "Packed (.qpk)", "x smaller", "Bits per weight", "Weight SQNR", "Output fidelity",
                  "8 seeded random inputs", "regression", f"made from {tfl_fp32}"):
        assert words in page, words
    for key in ("bits_per_weight", "qpk_bytes", "ratio_vs_original", "min_tensor_sqnr_db", "bits"):  # labels, not JSON keys
        assert f"<td>{key}</td>" not in page, key
    assert "position:sticky" in page and "overflow:auto" in page  # the tensor table scrolls in its own box
    # without the source model nothing runs, and the page says why
    r = _run("report", qpk, "--json", js, "--html", html, "--compress", "none")
    assert r.exit_code == 0 and "fidelity" not in json.loads(js.read_text())
    assert "not measured" in html.read_text() and "give --source MODEL" in html.read_text()


def test_unknown_layer(sample: Path, tmp_path: Path):
    r = _run("report", sample, "--html", tmp_path / "x.html", "--layer", "nope")
    assert r.exit_code == 1 and "--layer" in r.output


@pytest.mark.parametrize("args,holds", [
    (["--max-size", "10000000"], True), (["--max-size", "1000"], False),
    (["--max-bpw", "8.5"], True), (["--max-bpw", "4"], False),
    (["--min-sqnr", "20"], True), (["--min-sqnr", "80"], False),
])
def test_convert_gates(sample: Path, tmp_path: Path, args, holds):
    out = tmp_path / "g.qpk"
    out.write_bytes(b"the artifact of the last good build")
    r = _run("convert", sample, "-o", out, "--bits", "8", "--compress", "none", *args)
    if holds:
        assert r.exit_code == 0 and out.read_bytes()[:8] == b"\x89QPK\r\n\x1a\n"
    else:
        assert r.exit_code == EXIT_BUDGET and r.output.strip().splitlines()[-1].startswith("qpack: budget exceeded:")
        assert args[0] in r.output
        assert out.read_bytes() == b"the artifact of the last good build"  # the over-budget one never replaced it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.qpk"]


def test_report_gates(sample: Path, tmp_path: Path):
    r = _run("report", sample, "--bits", "4", "--max-size", "20000", "--compress", "none")
    assert r.exit_code == EXIT_BUDGET and "over --max-size 20,000" in r.output
    assert _run("report", sample, "--bits", "4", "--max-size", "60000", "--compress", "none").exit_code == 0
    qpk = tmp_path / "s.qpk"
    _run("convert", sample, "-o", qpk, "--compress", "none")
    r = _run("report", qpk, "--min-sqnr", "10", "--compress", "none")
    assert r.exit_code == EXIT_BUDGET and "--source" in r.output


def test_report_qpk_with_wrong_source(sample: Path, ocr_cls: Path, tmp_path: Path):
    qpk = tmp_path / "s.qpk"
    _run("convert", sample, "-o", qpk, "--compress", "none")
    r = _run("report", qpk, "--source", ocr_cls)
    assert r.exit_code == 1 and "not the model this container came from" in r.output


def test_min_sqnr_passes_when_quantization_is_exact(tmp_path: Path):
    """Weights that are all powers of two are stored exactly by pow2: no noise, any SQNR budget holds."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = (2.0 ** np.arange(-8, 8)).astype(np.float32).reshape(4, 4) * np.array([1, -1, 1, -1], np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    src = tmp_path / "exact.onnx"
    onnx.save(model, src)
    r = _run("convert", src, "--scheme", "pow2", "--bits", "6", "--min-sqnr", "100", "--compress", "none", "-o", tmp_path / "e.qpk")
    assert r.exit_code == 0, r.output
    r = _run("report", src, "--scheme", "pow2", "--bits", "6", "--min-sqnr", "100", "--compress", "none")
    assert r.exit_code == 0, r.output
    r = _run("report", src, "--scheme", "asym", "--bits", "2", "--min-sqnr", "100", "--compress", "none")
    assert r.exit_code == EXIT_BUDGET
