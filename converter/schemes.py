"""Data-free weight quantizers: each scheme maps floats to unsigned n-bit codes and back.

A scheme is one small class; subclassing registers it under its `name`. Parameters (scales, zero
points, exponents) are computed per group: one group for the whole tensor, or one per index along
the channel axis. They are returned flat, one value per group, in index order.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from numpy.typing import NDArray

from formats.errors import OptionError

Params = dict[str, NDArray]

SCHEMES: dict[str, type[Scheme]] = {}


def _reduce_axes(ndim: int, axis: int | None) -> tuple[int, ...]:
    return tuple(i for i in range(ndim) if i != axis)


def _group_shape(shape: tuple[int, ...], axis: int | None) -> tuple[int, ...]:
    """Shape that broadcasts one value per group against the tensor."""
    if axis is None:
        return (1,) * len(shape)
    return tuple(n if i == axis else 1 for i, n in enumerate(shape))


def group_count(shape: tuple[int, ...], axis: int | None) -> int:
    """Number of parameter groups for a tensor of `shape` quantized along `axis`."""
    return 1 if axis is None else int(shape[axis])


class Scheme:
    """One quantization scheme; subclasses implement quantize/dequantize on float32 arrays."""

    name: ClassVar[str]
    min_bits: ClassVar[int] = 1
    # range factors tried by clip "mse", widest first
    shrinks: ClassVar[tuple[float, ...]] = tuple(float(r) for r in np.linspace(1.0, 0.2, 33))
    params: ClassVar[dict[str, str]]  # parameter name -> little-endian dtype it is stored as

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        SCHEMES[cls.name] = cls

    @classmethod
    def check_bits(cls, bits: int) -> None:
        if not cls.min_bits <= bits <= 8:
            raise OptionError(f"scheme '{cls.name}' takes {cls.min_bits}..8 bits, not {bits}")

    @classmethod
    def quantize(cls, x: NDArray[np.float32], bits: int, axis: int | None, clip: str = "minmax") -> tuple[NDArray[np.uint8], Params]:
        """Codes shaped like x, and the flat per-group parameters.

        clip "minmax" spans each group's whole range; "mse" shrinks the range per group to the
        factor that minimizes the squared error on a sample of the group (see search_shrink).
        """
        axes = _reduce_axes(x.ndim, axis)
        stats = cls.stats(x, axes)
        if clip == "mse":
            shrink = search_shrink(cls, x, bits, axis, stats)
            stats = tuple(s * shrink for s in stats)
        elif clip != "minmax":
            raise OptionError(f"unknown clipping {clip!r}, expected minmax or mse")
        return cls.encode(x, bits, stats)

    @classmethod
    def stats(cls, x: NDArray[np.float32], axes: tuple[int, ...]) -> tuple[NDArray[np.float32], ...]:
        """The per-group range statistics the scheme scales from (group-shaped, keepdims)."""
        raise NotImplementedError

    @classmethod
    def encode(cls, x: NDArray[np.float32], bits: int, stats: tuple[NDArray[np.float32], ...]) -> tuple[NDArray[np.uint8], Params]:
        """Codes and flat parameters of x for the given (possibly shrunk) range statistics."""
        raise NotImplementedError

    @classmethod
    def dequantize(cls, codes: NDArray[np.uint8], params: Params, bits: int, axis: int | None) -> NDArray[np.float32]:
        """Float32 values shaped like codes."""
        raise NotImplementedError

    @classmethod
    def levels(cls, bits: int) -> int:
        """Distinct values the scheme can represent at `bits` bits."""
        return 1 << bits


def _as_group(p: NDArray, shape: tuple[int, ...], axis: int | None, dtype: str) -> NDArray:
    return np.asarray(p, dtype=dtype).reshape(_group_shape(shape, axis))


class Asymmetric(Scheme):
    """Uniform affine: x ~ (code - zero_point) * scale, codes 0..2^n-1, the range widened to hold 0."""

    name = "asym"
    params = {"scale": "<f4", "zero_point": "<u1"}

    @classmethod
    def stats(cls, x, axes):
        lo = np.minimum(x.min(axis=axes, keepdims=True), 0).astype(np.float32)
        hi = np.maximum(x.max(axis=axes, keepdims=True), 0).astype(np.float32)
        return lo, hi

    @classmethod
    def encode(cls, x, bits, stats):
        lo, hi = stats
        top = np.float32((1 << bits) - 1)
        scale = ((hi - lo) / top).astype(np.float32)
        scale[scale == 0] = 1.0  # an all-zero group: any scale represents it exactly
        zero = np.clip(np.round(-lo / scale), 0, top)
        q = np.divide(x, scale, dtype=np.float32)
        q += zero
        np.rint(q, out=q)
        np.clip(q, 0, top, out=q)
        return q.astype(np.uint8), {"scale": scale.reshape(-1), "zero_point": zero.reshape(-1).astype(np.uint8)}

    @classmethod
    def dequantize(cls, codes, params, bits, axis):
        scale = _as_group(params["scale"], codes.shape, axis, "<f4")
        zero = _as_group(params["zero_point"], codes.shape, axis, "<f4")
        out = codes.astype(np.float32)
        out -= zero
        out *= scale
        return out


class Symmetric(Scheme):
    """Uniform without zero point: x ~ q * scale, q in [-(2^(n-1)-1), 2^(n-1)-1], stored as q + 2^(n-1)-1."""

    name = "sym"
    min_bits = 2
    params = {"scale": "<f4"}

    @classmethod
    def levels(cls, bits):
        return (1 << bits) - 1

    @classmethod
    def stats(cls, x, axes):
        return (np.maximum(x.max(axis=axes, keepdims=True), -x.min(axis=axes, keepdims=True)).astype(np.float32),)

    @classmethod
    def encode(cls, x, bits, stats):
        qmax = np.float32((1 << (bits - 1)) - 1)
        scale = (stats[0] / qmax).astype(np.float32)
        scale[scale == 0] = 1.0
        q = np.divide(x, scale, dtype=np.float32)
        np.rint(q, out=q)
        np.clip(q, -qmax, qmax, out=q)
        q += qmax
        return q.astype(np.uint8), {"scale": scale.reshape(-1)}

    @classmethod
    def dequantize(cls, codes, params, bits, axis):
        scale = _as_group(params["scale"], codes.shape, axis, "<f4")
        out = codes.astype(np.float32)
        out -= np.float32((1 << (bits - 1)) - 1)
        out *= scale
        return out


_ABS = np.uint32(0x7FFFFFFF)
_MIN_NORMAL = np.uint32(0x00800000)
_HALF_ULP_EXP = np.uint32(1 << 22)  # adding it to |x|'s bits carries into the exponent iff mantissa >= 1.5


def _nearest_pow2_biased(u: NDArray[np.uint32]) -> NDArray[np.int32]:
    """Biased float32 exponent of the power of two nearest each |x| (x given as its bits, sign cleared).

    Integer arithmetic on the bit pattern: ties at 1.5 * 2^k go up.
    """
    e = u + _HALF_ULP_EXP
    e >>= np.uint32(23)
    return e.view(np.int32)


class PowerOfTwo(Scheme):
    """Sign + exponent: code = sign << (n-1) | m; m = 0 is zero, m >= 1 is 2^(emax - M + m).

    M = 2^(n-1) - 1 exponents form a window that ends at emax, the exponent of the power of two
    nearest the group's largest magnitude. Magnitudes below the window round to 0 or its bottom.
    """

    name = "pow2"
    min_bits = 2
    params = {"emax": "<i2"}
    # emax moves in whole exponents: steps of sqrt(2) reach each window once
    shrinks = tuple(2.0 ** (-k / 2) for k in range(7))

    @classmethod
    def levels(cls, bits):
        return 2 * ((1 << (bits - 1)) - 1) + 1

    @classmethod
    def stats(cls, x, axes):
        return (np.maximum(x.max(axis=axes, keepdims=True), -x.min(axis=axes, keepdims=True)).astype(np.float32),)

    @classmethod
    def encode(cls, x, bits, stats):
        # The code of a float32 depends only on its top 10 bits (sign, exponent, first mantissa
        # bit) and its group's window, so each group gets a 1024-entry table and quantizing is
        # one shift, one add and one lookup per element.
        top = (1 << (bits - 1)) - 1
        x = np.ascontiguousarray(x, dtype=np.float32)
        amax_bits = stats[0].astype(np.float32).view(np.uint32) & _ABS  # max(0.0, -(-0.0)) may be -0.0
        # emax, unbiased; a group of zeros and subnormals gets 0 (any window represents it)
        emax = np.where(amax_bits >= _MIN_NORMAL, _nearest_pow2_biased(amax_bits).astype(np.int32) - 127, 0)
        groups = emax.reshape(-1)
        key = np.arange(1024, dtype=np.int32)
        sign, exp_field, round_up = key >> 9, (key >> 1) & 0xFF, key & 1
        emin = groups[:, None] - top + 1
        m = np.clip(exp_field + round_up - 127 - emin + 1, 1, top)
        # below half the window's bottom, and subnormals (exponent field 0), round to zero
        m[(exp_field - 127 < emin - 1) | (exp_field == 0)] = 0
        table = np.where(m > 0, m | (sign << (bits - 1)), 0).astype(np.uint8).reshape(-1)
        index = x.view(np.uint32) >> np.uint32(22)
        if groups.size > 1:
            index += (np.arange(groups.size, dtype=np.uint32) * np.uint32(1024)).reshape(emax.shape)
        return table[index], {"emax": groups.astype(np.int16)}

    @classmethod
    def dequantize(cls, codes, params, bits, axis):
        top = (1 << (bits - 1)) - 1
        # every code's value for emax = 0; powers of two times powers of two stay exact
        m = np.arange(1 << bits) & top
        lut = np.where(m > 0, np.ldexp(1.0, m - top), 0.0)
        lut[1 << (bits - 1) :] *= -1
        out = lut.astype(np.float32)[codes]
        out *= np.ldexp(np.float32(1), _as_group(params["emax"], codes.shape, axis, "<i4"))
        return out


SAMPLE_BUDGET = 1 << 18  # elements examined per tensor (at least MIN_PER_GROUP per group)
MIN_PER_GROUP = 64


def search_shrink(scheme: type[Scheme], x: NDArray[np.float32], bits: int, axis: int | None,
                  stats: tuple[NDArray[np.float32], ...]) -> NDArray[np.float32]:
    """Per group, the range factor in scheme.shrinks with the least squared error on a sample.

    Clipping a few outliers buys finer steps for the bulk of the weights; at low widths that is
    most of the error. The sample is every k-th element of each group plus its two extremes, so
    that the cost of clipping the largest weights is never missed, and the search costs a few
    passes over about SAMPLE_BUDGET elements however large the tensor. Ties keep the wider range.
    """
    groups = 1 if axis is None else x.shape[axis]
    rows = x.reshape(1, -1) if axis is None else np.moveaxis(x, axis, 0).reshape(groups, -1)
    per_group = max(MIN_PER_GROUP, SAMPLE_BUDGET // groups)
    step = max(1, rows.shape[1] // per_group)
    sample = np.concatenate([rows[:, ::step], rows.min(axis=1, keepdims=True), rows.max(axis=1, keepdims=True)], axis=1)
    sample = np.ascontiguousarray(sample, dtype=np.float32)
    flat_stats = tuple(s.reshape(groups, 1) for s in stats)
    best_err = np.full(groups, np.inf)
    best = np.ones(groups, dtype=np.float32)
    for r in scheme.shrinks:
        codes, params = scheme.encode(sample, bits, tuple(s * np.float32(r) for s in flat_stats))
        err = np.square(scheme.dequantize(codes, params, bits, 0) - sample, dtype=np.float64).sum(axis=1)
        better = err < best_err * (1 - 1e-9)
        best_err[better], best[better] = err[better], r
    return best.reshape(stats[0].shape)


def get_scheme(name: str) -> type[Scheme]:
    """The registered scheme called `name`."""
    try:
        return SCHEMES[name]
    except KeyError:
        raise OptionError(f"unknown scheme '{name}', expected one of {', '.join(SCHEMES)}") from None
