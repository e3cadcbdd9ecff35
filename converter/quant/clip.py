"""Range clipping by least squared error, searched per group on a sample."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from converter.quant.base import Quantizer, Stats
from formats.qpk import Grouping

SAMPLE_BUDGET = 1 << 18  # elements examined per tensor (at least MIN_PER_GROUP per group)
MIN_PER_GROUP = 64


def search_shrink(q: type[Quantizer], xv: NDArray[np.float32], axes: tuple[int, ...], bits: int, stats: Stats) -> NDArray[np.float32]:
    """Per group, the range factor in q.shrinks with the least squared error on a sample.

    Clipping a few outliers buys finer steps for the bulk of the weights; at low widths that is
    most of the error. The sample is every k-th element of each group plus its two extremes, so
    that the cost of clipping the largest weights is never missed, and the search costs a few
    passes over about SAMPLE_BUDGET elements however large the tensor. Ties keep the wider range.
    """
    keep = tuple(i for i in range(xv.ndim) if i not in axes)
    groups = int(np.prod([xv.shape[i] for i in keep], dtype=np.int64))
    rows = np.transpose(xv, keep + axes).reshape(groups, -1)
    per_group = max(MIN_PER_GROUP, SAMPLE_BUDGET // groups)
    step = max(1, rows.shape[1] // per_group)
    sample = np.concatenate([rows[:, ::step], rows.min(axis=1, keepdims=True), rows.max(axis=1, keepdims=True)], axis=1)
    sample = np.ascontiguousarray(sample, dtype=np.float32)
    flat_stats = tuple(s.reshape(groups, 1) for s in stats)
    spec, per_row = q.spec(), Grouping(0)
    best_err = np.full(groups, np.inf)
    best = np.ones(groups, dtype=np.float32)
    for r in q.shrinks:
        params = q.params(tuple(s * np.float32(r) for s in flat_stats), bits)
        y = spec.dequantize(q.encode(sample, bits, params), q.flat(params), bits, per_row)
        err = np.square(y - sample, dtype=np.float64).sum(axis=1)
        better = err < best_err * (1 - 1e-9)
        best_err[better], best[better] = err[better], r
    return best.reshape(stats[0].shape)
