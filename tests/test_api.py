"""The Python API: the same bytes as the command line for the same request, the reports its JSON is
made of, and errors a script can catch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import qpack
from qpack.converter.cli import EXIT_BUDGET, app

runner = CliRunner()

REQUESTS = {
    "fixed": (["--bits", "4", "--scheme", "sym", "--per-channel", "--codec", "zstd"],
              dict(bits=4, scheme="sym", per_channel=True, codec="zstd")),
    "target-bpw": (["--target-bpw", "3.5"], dict(target_bpw=3.5)),
    "min-cosine": (["--min-cosine", "0.99", "--dataset", "digits"], dict(min_cosine=0.99)),
}


@pytest.mark.parametrize("case", list(REQUESTS))
def test_api_and_cli_write_the_same_bytes(sample: Path, tmp_path: Path, case: str):
    """Every default (scheme, codec, objective with a goal) is the library's: a script gets the CLI's file."""
    args, kwargs = REQUESTS[case]
    by_cli, by_api, report = tmp_path / "cli.qpk", tmp_path / "api.qpk", tmp_path / "cli.json"
    r = runner.invoke(app, ["convert", str(sample), *args, "-o", str(by_cli), "--json", str(report), "--compress", "none", "-q"])
    assert r.exit_code == 0, r.output
    if "min_cosine" in kwargs:
        kwargs = dict(kwargs, inputs=qpack.load_inputs(sample, dataset="digits"))
    got = qpack.convert(sample, by_api, compress="none", **kwargs)
    assert by_api.read_bytes() == by_cli.read_bytes()
    expected = json.loads(report.read_text())
    assert expected.pop("command").startswith("qpack convert")
    expected["output"] = str(by_api)
    assert json.loads(json.dumps(got)) == expected  # the JSON is the API's report, as it is


def test_default_output_beside_the_model(sample: Path, tmp_path: Path):
    model = tmp_path / "digits.onnx"
    model.write_bytes(sample.read_bytes())
    rep = qpack.convert(str(model), bits=6, scheme="pow2", compress="none")
    assert rep["output"] == str(tmp_path / "digits.qpk") and (tmp_path / "digits.qpk").is_file()


def test_broken_budget_raises_with_the_report(sample: Path, tmp_path: Path):
    """As the CLI's exit 3: the artifact is not put in place, and the script learns its size."""
    out = tmp_path / "small.qpk"
    out.write_bytes(b"the last good build")
    with pytest.raises(qpack.BudgetBroken, match="over --max-size 1,000") as e:
        qpack.convert(sample, out, bits=4, max_size=1000, compress="none")
    assert e.value.report["sizes"]["qpk_bytes"] > 1000
    assert isinstance(e.value, qpack.BudgetError) and isinstance(e.value, qpack.QpackError)
    assert out.read_bytes() == b"the last good build"
    r = runner.invoke(app, ["convert", str(sample), "--bits", "4", "--max-size", "1000", "-o", str(out), "--compress", "none"])
    assert r.exit_code == EXIT_BUDGET and "budget exceeded" in r.output


def test_bad_options_are_one_error(sample: Path, tmp_path: Path):
    with pytest.raises(qpack.OptionError, match="scheme 'pow2' takes 2..8 bits, not 12"):
        qpack.convert(sample, tmp_path / "x.qpk", bits=12, scheme="pow2")
    with pytest.raises(qpack.OptionError, match="unknown codec 'brotli', expected one of packed, zstd, ans"):
        qpack.convert(sample, tmp_path / "x.qpk", codec="brotli")
    assert list(tmp_path.iterdir()) == []


def test_open_describe_unpack_export(sample: Path, tmp_path: Path):
    qpk = tmp_path / "d.qpk"
    qpack.convert(sample, qpk, bits=3, scheme="sym", per_channel=True, compress="none")
    with qpack.open(qpk) as q:
        entry = q.entries[0]
        codes = q.codes(entry)
        assert codes.size == entry.count and int(codes.max()) < 8
    info = qpack.describe(qpk)
    assert info["verified"] and info["tensors"][0]["bits"] == 3
    restored = qpack.unpack(qpk, tmp_path / "r.onnx")
    assert restored == [tmp_path / "r.onnx"]
    done = qpack.export(qpk, "onnx-qdq", tmp_path / "q.onnx")
    assert done.files == (tmp_path / "q.onnx",) and any("INT4" in n for n in done.notes)
    result = qpack.evaluate(sample, qpack.load_inputs(sample, dataset="digits"), qpk)
    assert result["classification"]["accuracy_quantized"] > 0.9
    assert np.isfinite(result["outputs"][0]["cosine"])


def test_inputs_go_with_fidelity_goals_only(sample: Path, tmp_path: Path):
    """Inputs without a fidelity goal are refused (they would be ignored), and a fidelity goal without
    them is refused before any work; neither loads the inputs nor writes a file."""
    def never():
        raise AssertionError("inputs loaded")

    with pytest.raises(qpack.OptionError, match="feed fidelity goals"):
        qpack.convert(sample, tmp_path / "x.qpk", target_bpw=4, inputs=never)
    with pytest.raises(qpack.OptionError, match="a fidelity goal needs inputs"):
        qpack.convert(sample, tmp_path / "x.qpk", min_cosine=0.99)
    r = runner.invoke(app, ["convert", str(sample), "--bits", "4", "--dataset", "digits", "-o", str(tmp_path / "x.qpk")])
    assert r.exit_code == 1 and "feed fidelity goals" in r.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("options", [{"bits": "8"}, {"bits": 4.5}, {"bits": None}, {"bits": True}, {"group_size": "32"}])
def test_integer_options_of_another_type_are_named(sample: Path, tmp_path: Path, options: dict):
    """A caller's "8" or 4.5 is an OptionError naming the option, not a TypeError from deep inside; a numpy
    integer is an integer."""
    with pytest.raises(qpack.OptionError, match=f"{next(iter(options))} takes an integer, not "):
        qpack.convert(sample, tmp_path / "x.qpk", **options)
    assert not (tmp_path / "x.qpk").exists()
    qpack.convert(sample, tmp_path / "y.qpk", bits=np.int64(4))
    assert qpack.describe(tmp_path / "y.qpk")["tensors"][0]["bits"] == 4


@pytest.mark.parametrize(("options", "says"), [({"sensitivity_bits": 99}, "--sensitivity-bits 99: "), ({"tolerance": -1}, "--tolerance ")])
def test_sweep_options_out_of_range_are_named(sample: Path, options: dict, says: str):
    with pytest.raises(qpack.OptionError, match=says):
        qpack.sweep(sample, qpack.load_inputs(sample, dataset="digits"), **options)
