"""A non-uniform codebook: 2^n centroids per group, found by k-means, codes are indices into them.

Levels that follow the weights' distribution are what the bit-efficiency figure rewards: each code
carries close to n bits of entropy. One-dimensional k-means keeps centroids sorted, so assigning a
weight is a search among the midpoints; all groups are searched at once by mapping group g's values
into the disjoint interval [4g - 0.5, 4g + 1.5].
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from qpack.converter.quant.base import Params, Quantizer, Stats

ITERATIONS = 8  # Lloyd steps; from the Panter-Dite start a few add little
SAMPLE_BUDGET = 1 << 18  # k-means runs on about this many weights per tensor (its groups' extremes always in)
MIN_PER_GROUP = 256


def _spread(x: NDArray, lo: NDArray, span: NDArray, gid: NDArray) -> NDArray[np.float64]:
    """Each group's values, order kept, moved into the group's own interval."""
    t = (np.asarray(x, np.float64) - lo) / span
    np.clip(t, -0.5, 1.5, out=t)
    t += 4.0 * gid
    return t


def _assign(x: NDArray, centroids: NDArray, gid: NDArray, lo: NDArray, span: NDArray) -> NDArray[np.int64]:
    """Index of the nearest centroid of each value's group (centroids sorted, shape groups x K)."""
    groups, k = centroids.shape
    if k == 1:
        return np.zeros(np.shape(x), dtype=np.int64)
    mids = (centroids[:, 1:] + centroids[:, :-1]) / 2
    flat_mids = _spread(mids, lo.reshape(groups, 1), span.reshape(groups, 1), np.arange(groups).reshape(groups, 1)).reshape(-1)
    pos = np.searchsorted(flat_mids, _spread(x, lo[gid], span[gid], gid), side="left")
    return pos - gid * (k - 1)


def _start(rows: NDArray[np.float32], k: int) -> NDArray[np.float64]:
    """Starting centroids at the quantiles of the density p^(1/3), where the high-resolution theory
    of quantization (Panter and Dite) puts the levels of the least squared error.

    Between neighbouring sorted samples p is about 1 / (m * gap), so p^(1/3) integrates to gap^(2/3)
    up to a constant: the cumulative sum of gap^(2/3) is the companded axis.
    """
    s = np.sort(rows, axis=1).astype(np.float64)
    groups, m = s.shape
    c = np.concatenate([np.zeros((groups, 1)), np.cumsum(np.diff(s, axis=1) ** (2 / 3), axis=1)], axis=1)
    c /= np.maximum(c[:, -1:], 1e-300)
    c += 2.0 * np.arange(groups).reshape(groups, 1)  # every row in its own interval: one search for all
    targets = (np.arange(k) + 0.5) / k + 2.0 * np.arange(groups).reshape(groups, 1)
    pos = np.minimum(np.searchsorted(c.reshape(-1), targets.reshape(-1)), groups * m - 1)
    return s.reshape(-1)[pos].reshape(groups, k)


def kmeans(rows: NDArray[np.float32], k: int) -> NDArray[np.float32]:
    """Sorted centroids (groups x k) of each row, by Lloyd iterations from the Panter-Dite start."""
    groups = rows.shape[0]
    centroids = _start(rows, k)  # groups x k, sorted
    lo, hi = rows.min(axis=1).astype(np.float64), rows.max(axis=1).astype(np.float64)
    span = np.maximum(hi - lo, 1e-30)
    gid = np.broadcast_to(np.arange(groups).reshape(groups, 1), rows.shape)
    flat = rows.reshape(-1).astype(np.float64)
    for _ in range(ITERATIONS):
        codes = _assign(rows, centroids, gid, lo, span)
        index = (gid * k + codes).reshape(-1)
        sums = np.bincount(index, weights=flat, minlength=groups * k).reshape(groups, k)
        counts = np.bincount(index, minlength=groups * k).reshape(groups, k)
        new = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)
        new = np.sort(new, axis=1)
        if np.array_equal(new, centroids):
            break
        centroids = new
    return centroids.astype(np.float32)


class Codebook(Quantizer):
    """x ~ centroids[group][code]: 2^n float16 levels per group, fitted by k-means (`--scheme lut`)."""

    name = "lut"

    @classmethod
    def stats(cls, x, axes):
        return x.min(axis=axes, keepdims=True), x.max(axis=axes, keepdims=True)

    @classmethod
    def fit(cls, xv, axes, bits, clip="minmax", dtypes=None, refine=True, budget=None, stride=1, stats=None, sample=None):
        # k-means already minimizes the squared error: there is no range to clip (nor range
        # statistics or a range search's sample to reuse: it samples the rows itself)
        keep = tuple(i for i in range(xv.ndim) if i not in axes)
        gshape = tuple(xv.shape[i] if i in keep else 1 for i in range(xv.ndim))
        groups = int(np.prod([xv.shape[i] for i in keep], dtype=np.int64))
        rows = np.transpose(xv, keep + axes).reshape(groups, -1)
        step = max(1, rows.shape[1] // max(MIN_PER_GROUP, (budget or SAMPLE_BUDGET) // groups))
        if step > 1:
            rows = np.concatenate([rows[:, ::step], rows.min(axis=1, keepdims=True), rows.max(axis=1, keepdims=True)], axis=1)
        centroids = kmeans(np.ascontiguousarray(rows, dtype=np.float32), 1 << bits)
        params = {"centroids": centroids.reshape(gshape + (1 << bits,))}
        used = cls.storage(params, dtypes)
        rounded = cls.rounded(params, used)
        rounded["centroids"] = np.sort(rounded["centroids"], axis=-1)  # rounding may tie, never reorder
        return rounded, used

    @classmethod
    def params(cls, stats: Stats, bits: int) -> Params:
        lo, hi = stats  # evenly spaced levels: what k-means starts from when nothing better is known
        steps = np.linspace(0, 1, 1 << bits, dtype=np.float32)
        return {"centroids": lo[..., None] + (hi - lo)[..., None] * steps}

    @classmethod
    def encode(cls, x, bits, params):
        c = np.asarray(params["centroids"], dtype=np.float64)
        k = c.shape[-1]
        table = c.reshape(-1, k)
        gid = np.broadcast_to(np.arange(table.shape[0]).reshape(c.shape[:-1]), x.shape)
        lo, hi = table[:, 0], table[:, -1]
        span = np.maximum(hi - lo, 1e-30)
        return _assign(x, table, gid, lo, span).astype(np.uint8)
