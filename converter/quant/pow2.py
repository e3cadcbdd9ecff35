"""Power-of-two codes: sign + exponent, so a multiply by a weight becomes a shift."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from qpack.converter.quant.base import Quantizer
from qpack.formats.qpk.schemes import midpoint
from qpack.formats.qpk.spec import POW2_EMAX_MAX, POW2_EMAX_MIN

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


class PowerOfTwo(Quantizer):
    """code = sign << (n-1) | m; m = 0 is zero, m >= 1 is 2^(emax - M + m).

    M = 2^(n-1) - 1 exponents form a window that ends at emax, the exponent of the power of two
    nearest the group's largest magnitude. Magnitudes below the window round to 0 or its bottom.
    """

    name = "pow2"
    # emax moves in whole exponents: steps of sqrt(2) reach each window once
    shrinks = tuple(2.0 ** (-k / 2) for k in range(7))

    @classmethod
    def stats(cls, x, axes):
        return (np.maximum(x.max(axis=axes, keepdims=True), -x.min(axis=axes, keepdims=True)).astype(np.float32),)

    @classmethod
    def params(cls, stats, bits):
        amax_bits = stats[0].astype(np.float32).view(np.uint32) & _ABS  # max(0.0, -(-0.0)) may be -0.0
        # emax, unbiased; a group of zeros and subnormals gets 0 (any window represents it). Within
        # FORMAT.md's range: weights past 1.5 x 2^127 get the top power 2^127, and a group whose
        # weights all lie below 2^-23 a window ending there (down to 2^-149 at 8 bits; a narrow
        # window rounds such weights to 0, an error below 2^-23 each)
        emax = np.where(amax_bits >= _MIN_NORMAL, _nearest_pow2_biased(amax_bits).astype(np.int32) - 127, 0)
        return {"emax": np.clip(emax, POW2_EMAX_MIN, POW2_EMAX_MAX).astype(np.int16)}

    @classmethod
    def encode(cls, x, bits, params):
        # The code of a float32 depends only on its top 10 bits (sign, exponent, first mantissa
        # bit) and its group's window, so each group gets a 1024-entry table and quantizing is
        # one shift, one add and one lookup per element.
        top = midpoint(bits)
        x = np.ascontiguousarray(x, dtype=np.float32)
        emax = params["emax"].astype(np.int32)
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
        return table[index]
