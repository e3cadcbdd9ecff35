"""One tensor under one grouping, measured on a sample of whole groups: a setting's error,
parameter bytes and code statistics, and whether its scales fit in float16."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import NDArray

from qpack.converter.measure import code_histogram, entropy_bits
from qpack.converter.quant.base import WIDENED, Quantizer, sample_rows
from qpack.converter.quant.rdo import encode as rdo_encode
from qpack.converter.quant.rdo import estimate as rdo_estimate
from qpack.formats.qpk import Grouping

SAMPLE_ELEMENTS = 1 << 16  # weights per tensor and setting the error is measured on
TRELLIS_THIN = 4  # a trellis scheme's menu measures every 4th weight of the sample
LOW_BITS_CLIP = 6  # at or below this width the range is searched by least squares (clip mse)
F16_TINY = float(np.finfo(np.float16).tiny)  # the smallest normal float16
F16_MAX = float(np.finfo(np.float16).max)
WIDEST_CLIP = max(WIDENED.values())  # the most a clip widens a range by (loose3)


class View:
    """One tensor under one grouping as the settings of its menu are measured: evenly spaced whole
    groups (a row each; for a single group, the whole tensor), the measuring sample of them (every
    k-th weight of each row) and each scheme's range statistics. Settings are fitted on the sampled
    groups only: a group's parameters depend on its own weights alone."""

    def __init__(self, x: NDArray[np.float32], g: Grouping):
        self.size = x.size
        xv, axes = g.blocked(x)
        keep = tuple(i for i in range(xv.ndim) if i not in axes)
        self.groups = math.prod(xv.shape[i] for i in keep)
        rows = np.transpose(xv, keep + axes).reshape(self.groups, -1)
        per_row = rows.shape[1]
        take = max(1, min(self.groups, SAMPLE_ELEMENTS // max(per_row, 1)))
        self.rows = np.ascontiguousarray(rows[np.linspace(0, self.groups - 1, take).round().astype(np.int64)])
        self.search = sample_rows(self.rows, (1,), SAMPLE_ELEMENTS)
        step = max(1, per_row * take // SAMPLE_ELEMENTS)
        self.sample = np.ascontiguousarray(self.rows[:, ::step])
        self._stats: dict[str, Any] = {}

    def stats(self, q: type[Quantizer]) -> Any:
        if q.name not in self._stats:
            self._stats[q.name] = q.stats(self.rows, (1,))
        return self._stats[q.name]


def sample_error(q: Any, v: View, bits: int, clip: str, dtypes: dict[str, str] | None,
                 rdo: float = 0.0) -> tuple[float, int, float, int]:
    """(squared error of the whole tensor, parameter bytes, order-0 entropy of the codes in bits,
    codes from the lowest to the highest present), measured on the view's sample and scaled up."""
    # ranking settings needs less than the final conversion: no refinement, a smaller sample, every other factor
    params, used = q.fit(v.rows, (1,), bits, clip, dtypes, refine=False, stride=2, stats=v.stats(q), sample=v.search)
    sample = v.sample
    if q.trellis:  # a trellis search costs ~10x a rounding: a quarter of the sample
        sample = np.ascontiguousarray(sample[:, ::TRELLIS_THIN]) if sample.shape[1] >= TRELLIS_THIN else sample
        codes = q.encode(sample, bits, params, rdo or None)
    elif rdo:
        rate = rdo_estimate(q, lambda: [(sample, params)], bits, rdo)
        codes = rdo_encode(q, sample, bits, params, rate, rdo)
    else:
        codes = q.encode(sample, bits, params)
    y = q.spec().dequantize(codes, q.flat(params, used), bits, Grouping(0))
    y -= sample
    np.square(y, out=y)
    err = float(y.sum(dtype=np.float64)) * (v.size / sample.size)
    taken = v.rows.shape[0]
    param_bytes = sum(np.asarray(p).size // taken * v.groups * np.dtype(used[k]).itemsize for k, p in params.items())
    hist = code_histogram(codes, bits)
    present = np.flatnonzero(hist)
    return err, param_bytes, entropy_bits(hist), int(present[-1] - present[0] + 1) if present.size else 1


def group_tops(x: NDArray[np.float32], g: Grouping) -> tuple[float, float]:
    """The least and the greatest of the groups' largest magnitudes, all-zero groups aside (a
    group's scale is about its largest magnitude over half its levels); (0, 0) if every group is zero."""
    xv, axes = g.blocked(x)
    top = np.abs(xv).max(axis=axes)
    top = top[top > 0]
    return (float(top.min()), float(top.max())) if top.size else (0.0, 0.0)


def half_fits(tops: tuple[float, float], levels: int, bits: int) -> bool:
    """Whether every scale of a setting is a normal float16 whatever its clip: a scale is at least a
    group's largest magnitude over levels - 1 (asym; sym and dq twice that), times the least factor
    clip mse may shrink it by where it is used, and at most twice it over levels - 1, widened by up
    to 2^(3/4) (loose3)."""
    least, most = tops
    shrink = min(Quantizer.shrinks) if bits <= LOW_BITS_CLIP else 1.0
    steps = max(levels - 1, 1)
    return least * shrink / steps >= F16_TINY and most * 2 * WIDEST_CLIP / steps <= F16_MAX
