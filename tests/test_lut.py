"""The codebook scheme: k-means on known distributions, round trips, and its bit efficiency."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from qpack.converter.convert import convert
from qpack.converter.policy import Policy
from qpack.converter.quant import get_quantizer
from qpack.converter.quant.lut import kmeans
from qpack.formats.onnx_model import OnnxModel
from qpack.formats.qpk import Grouping, QpkReader

LUT = get_quantizer("lut")


def test_kmeans_finds_separated_clusters():
    rng = np.random.default_rng(0)
    centers = np.array([-3.0, -1.0, 0.5, 4.0])
    x = (centers[rng.integers(0, 4, 20_000)] + rng.normal(0, 0.05, 20_000)).astype(np.float32)
    got = kmeans(x.reshape(1, -1), 4)[0]
    assert np.allclose(got, centers, atol=0.01)


def test_kmeans_on_uniform_spaces_levels_evenly():
    x = np.random.default_rng(1).uniform(-1, 1, 100_000).astype(np.float32).reshape(1, -1)
    got = kmeans(x, 8)[0]
    assert np.allclose(got, np.linspace(-1, 1, 17)[1::2], atol=0.02)  # cell midpoints of 8 equal cells


def test_kmeans_rows_are_independent():
    rng = np.random.default_rng(2)
    rows = np.stack([rng.normal(0, 1, 5000), rng.normal(10, 0.1, 5000)]).astype(np.float32)
    both = kmeans(rows, 4)
    assert np.array_equal(both[0], kmeans(rows[:1], 4)[0]) and np.array_equal(both[1], kmeans(rows[1:], 4)[0])
    assert (np.diff(both, axis=1) >= 0).all()


@pytest.mark.parametrize("grouping", [Grouping(), Grouping(0), Grouping(1, 16)])
@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_round_trip_codes_index_nearest_centroid(grouping: Grouping, bits: int):
    x = np.random.default_rng(3).laplace(0, 1, (12, 40)).astype(np.float32)
    codes, params = LUT.quantize(x, bits, grouping)
    assert codes.shape == x.shape and codes.max() < 1 << bits
    table = params["centroids"].astype(np.float32).reshape(-1, 1 << bits)
    assert params["centroids"].dtype == np.float16 and table.shape[0] == grouping.count(x.shape)
    y = LUT.dequantize(codes, params, bits, grouping)
    # every value went to its group's nearest level
    gid = np.broadcast_to(grouping.expand(np.arange(table.shape[0]), x.shape), x.shape)
    best = np.abs(x[..., None] - table[gid]).min(axis=-1)
    assert np.allclose(np.abs(x - y), best, atol=1e-6)


def test_lut_beats_uniform_on_heavy_tails():
    x = np.random.default_rng(4).laplace(0, 0.02, (256, 256)).astype(np.float32)

    def sqnr(name: str, clip: str) -> float:
        q = get_quantizer(name)
        codes, p = q.quantize(x, 4, None, clip)
        y = q.dequantize(codes, p, 4, None)
        return float(10 * np.log10((x.astype(np.float64) ** 2).sum() / ((x - y).astype(np.float64) ** 2).sum()))

    assert sqnr("lut", "minmax") > sqnr("asym", "mse") + 1.0


def test_lut_container_round_trip_and_bit_efficiency(sample: Path, tmp_path: Path):
    from qpack.converter.report import report_model

    with OnnxModel(sample) as model:
        out = tmp_path / "lut.qpk"
        convert(model, Policy("lut", 3, per_channel=True), out)
        lut = report_model(model, Policy("lut", 3, per_channel=True), ())
        uniform = report_model(model, Policy("asym", 3, per_channel=True), ())
    with QpkReader(out) as q:
        for e in q.entries:
            assert e.scheme == "lut" and q.params(e)["centroids"].size == 8 * e.groups
            assert np.isfinite(q.dequantize(e)).all()
    # levels that follow the distribution use their bits more evenly
    assert lut["totals"]["bit_efficiency"] > uniform["totals"]["bit_efficiency"]
    assert lut["totals"]["sqnr_db"] > uniform["totals"]["sqnr_db"]
