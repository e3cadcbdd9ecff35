"""Dependent quantization (the `dq` scheme): two interleaved quantizers and a trellis search.

Each code k reads through one of two quantizers, Q0 (levels 2k) or Q1 (levels 2k - sign(k)), in
units of the scale; which one follows from the parities of the codes before it
(`formats.qpk.schemes.dq_levels`). Together the two reach every integer level, but a code only
pays for the levels of its own quantizer: about the resolution of one more bit at the rate of the
coarser quantizer, when the codes are chosen together. A Viterbi search over the 4 states does that,
minimizing squared error + lambda x rate over the whole tensor (rates: -log2 of the codes'
frequencies, estimated by a first pass), so lambda, in squared scale units per bit, sets the
trade between error and bits as `--rdo` does for scalar rounding (DQ_LAMBDA unless given). This is the dependent
quantization of the MPEG NNC and VVC standards.

The search runs in C order through the tensor, a chunk at a time with the state carried over, so
blocks (whose view is not in that order) are refused.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from numpy.typing import NDArray

from qpack.converter.measure import code_histogram
from qpack.converter.quant.base import Params, Quantizer, bounded_scale
from qpack.converter.quant.rdo import rates
from qpack.converter.quant.uniform import Symmetric
from qpack.formats.qpk.bitstream import code_dtype
from qpack.formats.qpk.schemes import dq_levels, midpoint

DQ_LAMBDA = 0.1  # squared scale units per bit, when no --rdo gives it

_KERNEL: Any = None


def _kernel() -> Any:
    """The Viterbi search, compiled on first use (numba, as the ans codec's loops)."""
    global _KERNEL
    if _KERNEL is None:
        import numba

        @numba.njit(cache=True, nogil=True)
        def trellis(t, lam_rate, top, state):  # pragma: no cover - compiled
            n = t.size
            inf = np.inf
            cost = np.full(4, inf)
            cost[state] = 0.0
            new = np.empty(4)
            back = np.empty((n, 4), np.int8)
            level = np.empty((n, 4), np.int32)
            cand = np.empty(2, np.int64)
            for i in range(n):
                x = t[i]
                new[:] = inf
                for s in range(4):
                    base = cost[s]
                    if base == inf:
                        continue
                    q1 = s >> 1
                    if q1 == 0:
                        b = int(np.floor(x / 2.0))
                        cand[0], cand[1] = b, b + 1
                    elif x >= 0:
                        b = int(np.floor((x + 1.0) / 2.0))
                        cand[0], cand[1] = b, b + 1
                    else:
                        b = int(np.ceil((x - 1.0) / 2.0))
                        cand[0], cand[1] = b, b - 1
                    for j in range(2):
                        k = min(max(cand[j], -top), top)
                        rec = 2.0 * k
                        if q1 == 1 and k != 0:
                            rec -= 1.0 if k > 0 else -1.0
                        d = x - rec
                        c = base + d * d + lam_rate[k + top]
                        nxt = 2 * ((s & 1) ^ (k & 1)) + q1
                        if c < new[nxt]:
                            new[nxt] = c
                            back[i, nxt] = s
                            level[i, nxt] = k
                cost[:] = new
            s = 0  # costs are indexed by the state after each code: the best is the state after the last
            for j in range(1, 4):
                if cost[j] < cost[s]:
                    s = j
            end = s if n else state
            out = np.empty(n, np.int64)
            for i in range(n - 1, -1, -1):
                out[i] = level[i, s]
                s = back[i, s]
            return out, end

        _KERNEL = trellis
    return _KERNEL


def warm_trellis() -> None:
    """Compile (or load from numba's cache) the trellis now, with the argument types every search
    uses: before forking worker processes that all search, so they inherit it."""
    Dependent.search(np.zeros(2), 2, np.ones(4, dtype=np.float32), DQ_LAMBDA)


class Dependent(Quantizer):
    """x ~ level * scale, levels from codes k in [-(2^(n-1)-1), 2^(n-1)-1] stored as k + 2^(n-1)-1,
    chosen by a trellis search; the scale is half each quantizer's step."""

    name = "dq"
    trellis = True
    coded_choice = True

    stats = Symmetric.stats  # the largest magnitude of each group, as sym

    @classmethod
    def warm(cls) -> None:
        warm_trellis()

    @classmethod
    def params(cls, stats, bits):
        # the top level 2k reaches the range; the largest level a code can take, 2^n, stays finite
        scale = bounded_scale((stats[0] / np.float32(2 * midpoint(bits))).astype(np.float32), 1 << bits)
        scale[scale == 0] = 1.0
        return {"scale": scale}

    @classmethod
    def units(cls, x: NDArray[np.float32], params: Params) -> NDArray[np.float64]:
        return np.divide(x, params["scale"], dtype=np.float32).reshape(-1).astype(np.float64)

    @classmethod
    def _nearest_even(cls, t: NDArray[np.float64], bits: int) -> NDArray[np.int64]:
        """The histogram of Q0 alone, rounded to nearest: what a first search is priced by."""
        top = midpoint(bits)
        return code_histogram((np.clip(np.rint(t / 2), -top, top) + top).astype(code_dtype(bits)), bits)

    @classmethod
    def search(cls, t: NDArray[np.float64], bits: int, rate: NDArray[np.float32], lam: float,
               state: int = 0) -> tuple[NDArray[np.uint8], int]:
        """Codes of t (weights in scale units, C order) from `state`, and the state after them."""
        top = midpoint(bits)
        levels, end = _kernel()(np.ascontiguousarray(t), (lam * rate.astype(np.float64))[: 2 * top + 1], top, state)
        levels += top
        return levels.astype(code_dtype(bits)), int(end)

    @classmethod
    def estimate(cls, chunks: Callable[[], Iterable[tuple[NDArray[np.float32], Params]]], bits: int,
                 lam: float | None = None) -> tuple[NDArray[np.float32], float]:
        """(rates, lambda) of a tensor, a chunk at a time: the rates of the codes that a search priced
        by the nearest Q0 codes' rates chooses (lambda: DQ_LAMBDA unless given)."""
        lam = DQ_LAMBDA if lam is None else lam
        hist = np.zeros(1 << bits, dtype=np.int64)
        for xc, pc in chunks():
            hist += cls._nearest_even(cls.units(xc, pc), bits)
        first = rates(hist)
        hist[:] = 0
        state = 0
        for xc, pc in chunks():
            codes, state = cls.search(cls.units(xc, pc), bits, first, lam, state)
            hist += code_histogram(codes, bits)
        return rates(hist), lam

    @classmethod
    def encode(cls, x, bits, params, lam: float | None = None):
        rate, lam = cls.estimate(lambda: [(x, params)], bits, lam)
        return cls.search(cls.units(x, params), bits, rate, lam)[0].reshape(x.shape)

    @classmethod
    def decode_from(cls, codes: NDArray, scale: NDArray, bits: int, state: int) -> tuple[NDArray[np.float32], int]:
        """Values of a chunk of codes (scale broadcast against them) read from `state`, and the state after."""
        levels, end = dq_levels(codes, bits, state)
        out = levels.astype(np.float32)
        out *= scale
        return out, end
