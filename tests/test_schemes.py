"""Quantizers: codes in range, documented error bounds, per-channel groups independent."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from qpack.converter.quant import QUANTIZERS as SCHEMES
from qpack.converter.quant import get_quantizer as get_scheme
from qpack.formats.errors import OptionError

finite = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False, width=32)


def _group_view(p, shape, axis):
    return np.asarray(p).reshape([n if i == axis else 1 for i, n in enumerate(shape)] if axis is not None else [1] * len(shape))


@settings(max_examples=200, deadline=None)
@given(x=arrays(np.float32, st.tuples(st.integers(1, 6), st.integers(1, 9)), elements=finite),
       bits=st.integers(1, 8), axis=st.sampled_from([None, 0, 1]))
def test_asym_error_at_most_half_step(x, bits, axis):
    codes, p = SCHEMES["asym"].quantize(x, bits, axis)
    assert codes.shape == x.shape and int(codes.max()) < (1 << bits)
    y = SCHEMES["asym"].dequantize(codes, p, bits, axis)
    step = _group_view(p["scale"], x.shape, axis)
    assert np.all(np.abs(y - x) <= step / 2 * (1 + 1e-4) + 1e-30)


@settings(max_examples=200, deadline=None)
@given(x=arrays(np.float32, st.tuples(st.integers(1, 6), st.integers(1, 9)), elements=finite),
       bits=st.integers(2, 8), axis=st.sampled_from([None, 0, 1]))
def test_sym_error_at_most_half_step(x, bits, axis):
    codes, p = SCHEMES["sym"].quantize(x, bits, axis)
    assert int(codes.max()) <= (1 << bits) - 2  # the top code is unused: symmetric range
    y = SCHEMES["sym"].dequantize(codes, p, bits, axis)
    step = _group_view(p["scale"], x.shape, axis)
    assert np.all(np.abs(y - x) <= step / 2 * (1 + 1e-4) + 1e-30)
    zero = x == 0
    assert np.all(y[zero] == 0)


@settings(max_examples=200, deadline=None)
@given(x=arrays(np.float32, st.tuples(st.integers(1, 6), st.integers(1, 9)), elements=finite),
       bits=st.integers(2, 8), axis=st.sampled_from([None, 0, 1]))
@example(x=np.array([[1.5977606e-28, 0.0]], np.float32), bits=7, axis=None)  # window bottom below float32's range
def test_pow2_values_are_signed_powers_of_two_within_window(x, bits, axis):
    codes, p = SCHEMES["pow2"].quantize(x, bits, axis)
    y = SCHEMES["pow2"].dequantize(codes, p, bits, axis)
    top = (1 << (bits - 1)) - 1
    nz = y != 0
    mant, _ = np.frexp(np.abs(y[nz]))
    assert np.all(mant == 0.5)  # exact powers of two
    assert np.all(np.sign(y[nz]) == np.sign(x[nz]))
    emax = _group_view(p["emax"].astype(np.int64), x.shape, axis)
    bottom = np.broadcast_to(np.ldexp(1.0, emax - top + 1), x.shape)
    a = np.abs(x.astype(np.float64))
    inside = (a >= bottom) & (a >= np.finfo(np.float32).tiny)
    # nearest power of two: relative error at most 1/3 (worst case 1.5 * 2^k)
    assert np.all(np.abs(y[inside] - x[inside]) <= a[inside] / 3 * (1 + 1e-6))
    below = ~inside
    assert np.all(np.abs(y[below] - x[below]) <= bottom[below] / 2 * (1 + 1e-6) + np.finfo(np.float32).tiny)


def test_pow2_hand_values():
    x = np.array([3.0, -1.4, 0.2, 0.0, 5.9, -6.1], np.float32)
    codes, p = SCHEMES["pow2"].quantize(x, 3, None)
    assert p["emax"].tolist() == [3]  # 6.1 is nearest to 8
    # window {2, 4, 8}: m = 1, 2, 3; sign bit is bit 2
    assert codes.tolist() == [2, 0b101, 0, 0, 2, 0b111]
    assert SCHEMES["pow2"].dequantize(codes, p, 3, None).tolist() == [4.0, -2.0, 0.0, 0.0, 4.0, -8.0]


def test_asym_hand_values():
    x = np.array([-1.0, 0.0, 0.5, 2.0], np.float32)
    codes, p = SCHEMES["asym"].quantize(x, 2, None)
    assert p["scale"].tolist() == [1.0] and p["zero_point"].tolist() == [1]
    assert codes.tolist() == [0, 1, 2, 3]  # 0.5 / 1 + 1 = 1.5 rounds half to even: 2


def test_per_channel_groups_are_independent():
    x = np.stack([np.linspace(-1, 1, 50), np.linspace(-100, 100, 50)]).astype(np.float32)
    for name in SCHEMES:
        bits = 4
        per_t = SCHEMES[name].dequantize(*SCHEMES[name].quantize(x, bits, None), bits, None)
        per_c = SCHEMES[name].dequantize(*SCHEMES[name].quantize(x, bits, 0), bits, 0)
        assert np.abs(per_c[0] - x[0]).max() < np.abs(per_t[0] - x[0]).max()


def test_all_zero_and_constant_tensors():
    for name, s in SCHEMES.items():
        for x in (np.zeros((3, 4), np.float32), np.full((3, 4), -2.0, np.float32)):
            codes, p = s.quantize(x, 8, 0)
            y = s.dequantize(codes, p, 8, 0)
            if name == "dq" and x.any():
                # the top level 2M is even-quantizer only and its code odd: the next code reads through
                # the odd quantizer, whose top is 2M - 1, so a constant alternates within one scale
                assert np.abs(y - x).max() <= p["scale"].max() * 1.0001 and (y == x).any(), name
            else:
                assert np.allclose(y, x), name


@pytest.mark.parametrize("name,bits", [("sym", 1), ("pow2", 1), ("asym", 0), ("asym", 9)])
def test_impossible_widths(name, bits):
    with pytest.raises(OptionError):
        get_scheme(name).check_bits(bits)


def test_unknown_scheme():
    with pytest.raises(OptionError, match="unknown scheme"):
        get_scheme("fp4")


@pytest.mark.parametrize("name", ["asym", "sym", "pow2"])
@pytest.mark.parametrize("axis", [None, 0, 1])
def test_mse_clipping_never_loses_to_minmax_on_heavy_tails(name, axis):
    x = np.random.default_rng(7).laplace(0, 0.02, (96, 700)).astype(np.float32)  # trained weights are heavy-tailed
    scheme = SCHEMES[name]

    def sqnr(clip, bits):
        codes, params = scheme.quantize(x, bits, axis, clip)
        y = scheme.dequantize(codes, params, bits, axis)
        return 10 * np.log10(float((x.astype(np.float64) ** 2).sum() / ((x - y).astype(np.float64) ** 2).sum()))

    for bits in (2, 3, 4, 6, 8):
        assert sqnr("mse", bits) >= sqnr("minmax", bits) - 0.05
    # at low widths clipping the tails pays; most where a group is large (a whole tensor)
    assert sqnr("mse", 3) > sqnr("minmax", 3) + (1.0 if axis is None else 0.3)


def test_unknown_clip():
    with pytest.raises(OptionError, match="clipping"):
        SCHEMES["asym"].quantize(np.ones((2, 2), np.float32), 4, None, "percentile")


def test_scheme_parameters_match_the_container_format():
    x = np.random.default_rng(3).standard_normal((4, 9)).astype(np.float32)
    for scheme in SCHEMES.values():
        spec = scheme.spec()
        _, params = scheme.quantize(x, spec.min_bits, 0)
        assert {k: v.dtype.str for k, v in params.items()} == {p.name: np.dtype(p.dtype).str for p in spec.params}
        assert all(len(v) == p.count(spec.min_bits, 4) for p, v in zip(spec.params, params.values()))


FUSED = sorted(n for n, q in SCHEMES.items() if "roundtrip" in vars(q))


def test_uniform_schemes_have_a_fused_roundtrip():
    assert {"asym", "sym"} <= set(FUSED)


@pytest.mark.parametrize("name", FUSED)
@pytest.mark.parametrize("dtypes", [None, {"scale": "<f2"}], ids=["f4", "f2"])
def test_roundtrip_is_what_the_decoder_reads_back(name, dtypes):
    """A scheme's fused quantize-and-read-back (what the range searches measure) gives exactly the
    values the container's decoder makes of the codes (a zero's sign aside), at every width."""
    from qpack.formats.qpk import Grouping

    q = get_scheme(name)
    rng = np.random.default_rng(7)
    x = (rng.standard_t(3, (48, 90)) * rng.uniform(1e-3, 4, (48, 1))).astype(np.float32)
    x[0] = 0  # an all-zero group
    for bits in range(q.spec().min_bits, q.spec().max_bits + 1):
        params, used = q.fit(x, (1,), bits, "mse", dtypes)
        expected = q.spec().dequantize(q.encode(x, bits, params), q.flat(params, used), bits, Grouping(0))
        assert np.array_equal(q.roundtrip(x, bits, params, used), expected), (bits, used)


@pytest.mark.parametrize("clip", ["minmax", "mse"])
def test_quantizers_keep_parameters_in_range(clip):
    """Whatever finite weights a model holds, qpack writes no parameter a reader refuses (FORMAT.md
    "Parameter ranges"): weights at float32's largest value, past float16's (a codebook's default
    dtype), tiny and subnormal ones, zeros; every scheme, width, grouping and parameter dtype. The
    values decode finite, without a numpy warning."""
    import warnings

    from qpack.formats.qpk import SCHEMES as TABLE
    from qpack.formats.qpk import Grouping

    big = float(np.finfo(np.float32).max)
    x = np.array([[big, -big, 1.0, 0.0], [1e-40, 0.0, -1e-39, 2e-45], [0.0] * 4, [1e-10, -2e-10, 3e-9, 1e-30],
                  [131008.0, -1e5, 7e4, 1.0], [1.6e38, 1.7e38, -1.69e38, 2.0**127 * 1.5]], np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name, spec in TABLE.items():
            for bits in range(spec.min_bits, spec.max_bits + 1):
                for g in (Grouping(), Grouping(0), *([Grouping(1, 2)] if spec.blocks else [])):
                    for dtypes in ({}, {p.name: d for p in spec.params for d in p.others}):
                        codes, params = get_scheme(name).quantize(x, bits, g, clip, dtypes)
                        assert spec.out_of_range(params, bits) is None, (name, bits, g, dtypes)
                        assert np.isfinite(spec.dequantize(codes, params, bits, g)).all(), (name, bits, g, dtypes)
