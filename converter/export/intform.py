"""A stored tensor as integers and per-group scales, `value = (q - zero_point) * scale` exactly.

ONNX DequantizeLinear, MatMulNBits and TFLite quantization parameters all store weights this way;
they differ only in the integer ranges and groupings they accept. Each scheme of the container maps
onto it without rounding:

- asym: q = code, zero_point = the stored zero point (unsigned);
- sym: q = code - M, no zero point (signed, symmetric around 0);
- pow2: q = ±2^(m - lo), scale = 2^(emax - M + lo), with lo the group's smallest exponent in use,
  so the integers are as small as the exponents a group really uses allow.

Every form is checked against the container's own dequantization before an exporter sees it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from numpy.typing import NDArray

from qpack.formats.errors import UnsupportedError
from qpack.formats.qpk import Grouping, QpkReader, TensorEntry
from qpack.formats.qpk.schemes import dq_levels

# 2^30 is the largest power of two an int32 holds, and float32 represents it exactly
_MAX_POW2_SPAN = 30


@dataclass(frozen=True)
class IntForm:
    """One tensor as integers: `q` tensor-shaped, `scale` and `zero_point` flat in group order."""

    entry: TensorEntry
    q: NDArray[np.int32]
    scale: NDArray[np.float32]
    zero_point: NDArray[np.int32] | None  # None: zero (a signed, symmetric form)

    @property
    def grouping(self) -> Grouping:
        return self.entry.grouping

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def low(self) -> int:
        """Smallest integer stored, zero points included."""
        lo = int(self.q.min()) if self.q.size else 0
        return min(lo, int(self.zero_point.min())) if self.zero_point is not None else lo

    @property
    def high(self) -> int:
        hi = int(self.q.max()) if self.q.size else 0
        return max(hi, int(self.zero_point.max())) if self.zero_point is not None else hi

    def fits(self, low: int, high: int) -> bool:
        return low <= self.low and self.high <= high

    def shifted(self, offset: int) -> IntForm:
        """The same values with `offset` added to every integer and zero point (a signed <-> unsigned move)."""
        zp = self.zero_point if self.zero_point is not None else np.zeros(self.scale.size, np.int32)
        return replace(self, q=self.q + np.int32(offset), zero_point=zp + np.int32(offset))

    def zero_points(self) -> NDArray[np.int32]:
        return self.zero_point if self.zero_point is not None else np.zeros(self.scale.size, np.int32)

    def values(self) -> NDArray[np.float32]:
        """(q - zero_point) * scale in float32, as DequantizeLinear computes it."""
        shape = self.entry.shape
        out = self.q.astype(np.float32)
        if self.zero_point is not None:
            out -= self.grouping.expand(self.zero_point.astype(np.float32), shape)
        out *= self.grouping.expand(self.scale, shape)
        return out


def _group_min(x: NDArray, grouping: Grouping) -> NDArray:
    view, axes = grouping.blocked(x)
    return view.min(axis=axes, keepdims=True).reshape(-1)


def _group_max(x: NDArray, grouping: Grouping) -> NDArray:
    view, axes = grouping.blocked(x)
    return view.max(axis=axes, keepdims=True).reshape(-1)


def _pow2(e: TensorEntry, codes: NDArray[np.uint8], emax: NDArray) -> tuple[NDArray[np.int32], NDArray[np.float32]]:
    top = (1 << (e.bits - 1)) - 1
    m = (codes & top).astype(np.int32)
    negative = (codes >> (e.bits - 1)).astype(bool)
    g = e.grouping
    lo = _group_min(np.where(m > 0, m, top + 1), g)
    lo = np.where(lo > top, 1, lo)  # a group of zeros: any scale will do
    span = int((_group_max(m, g) - lo).max()) if m.size else 0
    if span > _MAX_POW2_SPAN:
        raise UnsupportedError(f"tensor '{e.name}': its pow2 exponents span 2^{span} within a group, more than an int32 holds")
    shift = np.maximum(m - g.expand(lo, e.shape), 0)
    q = np.where(m > 0, np.left_shift(np.int32(1), shift.astype(np.int32)), 0).astype(np.int32)
    q[negative] *= -1
    scale = np.ldexp(np.float32(1), (emax.astype(np.int32) - top + lo).astype(np.int32)).astype(np.float32)
    return q, scale


def int_form(reader: QpkReader, e: TensorEntry) -> IntForm:
    """The integer form of a stored tensor, checked bit for bit against the container's dequantization.

    Raises:
        UnsupportedError: the scheme has no such form (an unknown scheme, or pow2 exponents too far apart).
    """
    codes, params = reader.codes(e), reader.params(e)
    if e.scheme == "asym":
        form = IntForm(e, codes.astype(np.int32), params["scale"].astype(np.float32), params["zero_point"].astype(np.int32))
    elif e.scheme == "sym":
        form = IntForm(e, codes.astype(np.int32) - np.int32((1 << (e.bits - 1)) - 1), params["scale"].astype(np.float32), None)
    elif e.scheme == "dq":
        form = IntForm(e, dq_levels(codes, e.bits)[0], params["scale"].astype(np.float32), None)
    elif e.scheme == "pow2":
        q, scale = _pow2(e, codes, params["emax"])
        form = IntForm(e, q, scale, None)
    else:
        raise UnsupportedError(f"tensor '{e.name}': scheme '{e.scheme}' has no integer form")
    # a scale that underflows or a hostile parameter would change values: never export those silently
    if not np.array_equal(form.values(), reader.dequantize(e)):
        raise UnsupportedError(f"tensor '{e.name}': its {e.scheme} values have no exact integer form")
    return form
