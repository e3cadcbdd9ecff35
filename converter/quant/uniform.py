"""Uniform schemes: asymmetric (scale and zero point) and symmetric (scale only)."""

from __future__ import annotations

import numpy as np

from qpack.converter.quant.base import Quantizer, bounded_scale, sample_error, sample_rows
from qpack.formats.qpk.bitstream import code_dtype
from qpack.formats.qpk.schemes import midpoint


class Asymmetric(Quantizer):
    rate_aware = True
    """x ~ (code - zero_point) * scale, codes 0..2^n-1, the range widened to hold 0."""

    name = "asym"

    @classmethod
    def stats(cls, x, axes):
        lo = np.minimum(x.min(axis=axes, keepdims=True), 0).astype(np.float32)
        hi = np.maximum(x.max(axis=axes, keepdims=True), 0).astype(np.float32)
        return lo, hi

    @classmethod
    def params(cls, stats, bits):
        lo, hi = stats
        top = np.float32((1 << bits) - 1)
        with np.errstate(over="ignore"):  # a range past float32's largest value: bounded below
            scale = bounded_scale(((hi - lo) / top).astype(np.float32), (1 << bits) - 1)  # zero points lie in 0..top
        scale[scale == 0] = 1.0  # an all-zero group: any scale represents it exactly
        zero = np.clip(np.round(-lo / scale), 0, top)
        return {"scale": scale, "zero_point": zero}

    # one side of the range at a time: where the weights are skewed the zero point moves
    SIDE_FACTORS = tuple(float(r) for r in np.linspace(1.0, 0.5, 11))

    @classmethod
    def refine(cls, xv, axes, bits, stats, dtypes):
        """Coordinate descent on the two ends of each group's range (two rounds, low end first),
        each step keeping the factor with the least squared error on the sample: a range that is
        not symmetric about zero gets its own zero point instead of a shared shrink."""
        sample = sample_rows(xv, axes)
        groups = sample.shape[0]
        lo, hi = (s.reshape(groups, 1).astype(np.float32) for s in stats)
        best = sample_error(cls, sample, (lo, hi), bits, dtypes)
        for _ in range(2):
            for side in (0, 1):
                base = (lo, hi)[side]
                for r in cls.SIDE_FACTORS[1:]:
                    trial = (lo * np.float32(r), hi) if side == 0 else (lo, hi * np.float32(r))
                    err = sample_error(cls, sample, trial, bits, dtypes)
                    better = (err < best * (1 - 1e-9)).reshape(groups, 1)
                    best = np.where(better.reshape(-1), err, best)
                    if side == 0:
                        lo = np.where(better, base * np.float32(r), lo)
                    else:
                        hi = np.where(better, base * np.float32(r), hi)
        shape = stats[0].shape
        return lo.reshape(shape), hi.reshape(shape)

    @classmethod
    def continuous(cls, x, bits, params):
        """x in code units before rounding (what rate-aware rounding picks neighbours around)."""
        q = np.divide(x, params["scale"], dtype=np.float32)
        q += params["zero_point"]
        return q

    @classmethod
    def code_range(cls, bits):
        return 0, (1 << bits) - 1

    @classmethod
    def encode(cls, x, bits, params):
        q = np.divide(x, params["scale"], dtype=np.float32)
        q += params["zero_point"]
        np.rint(q, out=q)
        np.clip(q, 0, np.float32((1 << bits) - 1), out=q)
        return q.astype(np.uint8)

    @classmethod
    def roundtrip(cls, x, bits, params, dtypes):
        """(code - zero_point) * scale in place, without the codes: the values dequantize gives."""
        q = np.divide(x, params["scale"], dtype=np.float32)
        q += params["zero_point"]
        np.rint(q, out=q)
        np.clip(q, 0, np.float32((1 << bits) - 1), out=q)
        q -= params["zero_point"]
        q *= params["scale"]
        return q


class Symmetric(Quantizer):
    """x ~ q * scale, q in [-(2^(n-1)-1), 2^(n-1)-1], stored as q + 2^(n-1)-1."""

    name = "sym"
    entropy_steps = True  # asym's gained under 0.1% for a third more time
    rate_aware = True

    @classmethod
    def stats(cls, x, axes):
        return (np.maximum(x.max(axis=axes, keepdims=True), -x.min(axis=axes, keepdims=True)).astype(np.float32),)

    @classmethod
    def params(cls, stats, bits):
        scale = bounded_scale((stats[0] / np.float32(midpoint(bits))).astype(np.float32), 1 << (bits - 1))
        scale[scale == 0] = 1.0
        return {"scale": scale}

    @classmethod
    def continuous(cls, x, bits, params):
        q = np.divide(x, params["scale"], dtype=np.float32)
        q += np.float32(midpoint(bits))
        return q

    @classmethod
    def code_range(cls, bits):
        return 0, 2 * midpoint(bits)

    @classmethod
    def encode(cls, x, bits, params):
        qmax = np.float32(midpoint(bits))
        q = np.divide(x, params["scale"], dtype=np.float32)
        np.rint(q, out=q)
        np.clip(q, -qmax, qmax, out=q)
        q += qmax
        return q.astype(code_dtype(bits))

    @classmethod
    def roundtrip(cls, x, bits, params, dtypes):
        """The signed level times the scale, in place: the values dequantize gives."""
        qmax = np.float32(midpoint(bits))
        q = np.divide(x, params["scale"], dtype=np.float32)
        np.rint(q, out=q)
        np.clip(q, -qmax, qmax, out=q)
        q *= params["scale"]
        return q
