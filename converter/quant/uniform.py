"""Uniform schemes: asymmetric (scale and zero point) and symmetric (scale only)."""

from __future__ import annotations

import numpy as np

from converter.quant.base import Quantizer


class Asymmetric(Quantizer):
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
        scale = ((hi - lo) / top).astype(np.float32)
        scale[scale == 0] = 1.0  # an all-zero group: any scale represents it exactly
        zero = np.clip(np.round(-lo / scale), 0, top)
        return {"scale": scale, "zero_point": zero}

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


class Symmetric(Quantizer):
    """x ~ q * scale, q in [-(2^(n-1)-1), 2^(n-1)-1], stored as q + 2^(n-1)-1."""

    name = "sym"

    @classmethod
    def stats(cls, x, axes):
        return (np.maximum(x.max(axis=axes, keepdims=True), -x.min(axis=axes, keepdims=True)).astype(np.float32),)

    @classmethod
    def params(cls, stats, bits):
        scale = (stats[0] / np.float32((1 << (bits - 1)) - 1)).astype(np.float32)
        scale[scale == 0] = 1.0
        return {"scale": scale}

    @classmethod
    def continuous(cls, x, bits, params):
        q = np.divide(x, params["scale"], dtype=np.float32)
        q += np.float32((1 << (bits - 1)) - 1)
        return q

    @classmethod
    def code_range(cls, bits):
        return 0, 2 * ((1 << (bits - 1)) - 1)

    @classmethod
    def encode(cls, x, bits, params):
        qmax = np.float32((1 << (bits - 1)) - 1)
        q = np.divide(x, params["scale"], dtype=np.float32)
        np.rint(q, out=q)
        np.clip(q, -qmax, qmax, out=q)
        q += qmax
        return q.astype(np.uint8)
