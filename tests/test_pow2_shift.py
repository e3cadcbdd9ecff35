"""The C reference of the digits sample with pow2 weights (bench/pow2_shift): each variant against qpack eval."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from qpack.converter.datasets import load_inputs
from qpack.converter.evaluate import evaluate, quantized_copy, run_all
from qpack.converter.runtime import open_runner
from qpack.formats.errors import QpackError

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench" / "pow2_shift"))
import gen  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not found: the C reference cannot be built")

TOLERANCE_POINTS = 0.5


@pytest.fixture(scope="module", params=[4, 5], ids=["4bit", "5bit"])
def built(request, tmp_path_factory) -> tuple[gen.Tables, Path]:
    out = tmp_path_factory.mktemp(f"pow2_{request.param}")
    tables = gen.generate(out, request.param)
    return tables, gen.compile_c(tables, out / "cnn")


@pytest.fixture(scope="module")
def split():
    """Training images (the plan's calibration set), test images, test labels."""
    return gen.digits_split()


def test_every_variant_within_half_a_point_of_eval(built, split, sample: Path):
    tables, exe = built
    _, _, labels = split
    acc_eval = evaluate(sample, load_inputs(sample, dataset="digits"), qpk=tables.qpk)["classification"]["accuracy_quantized"]
    for variant in ("float", "shift", "group"):
        run = gen.run_c(exe, variant, tables.inputs)
        assert run.predictions.shape == labels.shape == (540,)
        acc = float((run.predictions == labels).mean())
        assert abs(acc - acc_eval) * 100 <= TOLERANCE_POINTS, f"{variant}: {acc:.4f} against eval's {acc_eval:.4f}"


def test_float_variant_is_the_restored_model(built, sample: Path):
    """Same codes, same model: the C float logits are onnxruntime's on the restored model, to float rounding."""
    tables, exe = built
    inputs = load_inputs(sample, dataset="digits")
    with quantized_copy(sample, tables.qpk, None) as restored:
        ort = run_all(open_runner(restored), inputs)[0]
    run = gen.run_c(exe, "float", tables.inputs)
    assert np.abs(run.logits - ort).max() < 1e-4
    assert np.array_equal(run.predictions, ort.argmax(1))


def test_fixed_point_variants_are_the_documented_model(built, split):
    """Both fixed-point variants print exactly the logits of gen.shift_forward (integer sums: order-free)."""
    tables, exe = built
    _, test, _ = split
    exact = np.ldexp(gen.shift_forward(tables.layers, tables.bits, tables.fracs, test).astype(np.float64), -tables.fracs[-1])
    for variant in ("shift", "group"):
        assert np.array_equal(gen.run_c(exe, variant, tables.inputs).logits, exact), variant


def test_plan_uses_int32_with_the_headroom_it_states(built, split):
    """The plan fits int32 on its calibration split, and HEADROOM_BITS + 1 more fractional bits overflow there.

    (On the test split, shift_forward runs in the exactness test above, which would raise on an overflow.)
    """
    tables, _ = built
    train, _, _ = split
    gen.shift_forward(tables.layers, tables.bits, tables.fracs, train)
    too_fine = [f + gen.HEADROOM_BITS + 1 for f in tables.fracs]
    with pytest.raises(QpackError, match="beyond int32"):
        gen.shift_forward(tables.layers, tables.bits, too_fine, train)


def test_a_header_of_other_sizes_does_not_build(built, tmp_path: Path):
    tables, _ = built
    header = tmp_path / "weights.h"
    header.write_text(tables.header.read_text().replace("fc2_codes[1280]", "fc2_codes[1290]"))
    bad = gen.Tables(tables.bits, tables.qpk, header, tables.inputs, tables.layers, tables.fracs)
    with pytest.raises(QpackError, match="failed"):
        gen.compile_c(bad, tmp_path / "cnn")
