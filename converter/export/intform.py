"""A stored tensor as integers and per-group scales, `value = (q - zero_point) * scale` exactly.

ONNX DequantizeLinear, MatMulNBits and TFLite quantization parameters all store weights this way;
they differ only in the integer ranges and groupings they accept. Each scheme's row in the scheme
table declares how its codes map onto it without rounding (`SchemeSpec.integers`); every form is
checked against the container's own dequantization before an exporter sees it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from numpy.typing import NDArray

from qpack.formats.errors import UnsupportedError
from qpack.formats.qpk import Grouping, QpkReader, TensorEntry, scheme_spec


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

    def centered(self) -> IntForm:
        """The same values with the zero points folded into the integers (a symmetric form, one bit wider)."""
        if self.zero_point is None:
            return self
        shape = self.entry.shape
        q = self.q - np.broadcast_to(self.grouping.expand(self.zero_point, shape), shape).astype(np.int32)
        return replace(self, q=q, zero_point=None)

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


def int_form(reader: QpkReader, e: TensorEntry) -> IntForm:
    """The integer form of a stored tensor, checked bit for bit against the container's dequantization.

    Raises:
        UnsupportedError: the scheme has no such form (an unknown scheme, or pow2 exponents too far apart).
    """
    to_integers = scheme_spec(e.scheme).integers
    if to_integers is None:
        raise UnsupportedError(f"tensor '{e.name}': scheme '{e.scheme}' has no integer form")
    try:
        q, scale, zero_point = to_integers(reader.codes(e), reader.params(e), e.bits, e.grouping)
    except UnsupportedError as err:
        raise UnsupportedError(f"tensor '{e.name}': {err}") from None
    form = IntForm(e, q, scale, zero_point)
    # a scale that underflows or a hostile parameter would change values: never export those silently
    if not np.array_equal(form.values(), reader.dequantize(e)):
        raise UnsupportedError(f"tensor '{e.name}': its {e.scheme} values have no exact integer form")
    return form
