"""Rate-aware rounding: a code moves to a neighbour when the bits it saves are worth more than the
squared error it adds.

Rounding to nearest spends bits on precision the entropy coder charges for: a weight halfway
between a frequent code and a rare one costs the rare code's bits for a small gain in error. With
rates r(c) = -log2 p(c) of the codes' own distribution, each weight takes the code among the
nearest three that minimizes ((t - c)^2 + lambda * r(c)), t being the weight in code units
(x / scale for sym, plus the zero point for asym), so lambda is in squared steps per bit. The
distribution is then re-estimated from the new codes and the choice repeated (RDO_ITERATIONS).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
from numpy.typing import NDArray

from qpack.converter.measure import code_histogram
from qpack.converter.quant.base import QUANTIZERS, Params, Quantizer
from qpack.formats.errors import OptionError
from qpack.formats.qpk.bitstream import code_dtype

RDO_ITERATIONS = 2  # estimate -> choose -> re-estimate -> choose; a third pass moves few codes
MAX_LAMBDA = 10.0  # past this nearly every weight collapses to the most frequent code


def check(q: type[Quantizer], lam: float) -> None:
    if not 0 <= lam <= MAX_LAMBDA:
        raise OptionError(f"--rdo must lie in 0..{MAX_LAMBDA}, not {lam}")
    if lam and not (q.rate_aware or q.trellis):
        takes = ", ".join(n for n, c in QUANTIZERS.items() if c.rate_aware or c.trellis)
        raise OptionError(f"--rdo needs a scheme that rounds rate-aware ({takes}), not {q.name}")


def rates(hist: NDArray[np.int64]) -> NDArray[np.float32]:
    """-log2 p of each code, p estimated with half a count added (an unused code is not free)."""
    p = (hist + 0.5) / (hist.sum() + 0.5 * hist.size)
    return (-np.log2(p)).astype(np.float32)


def encode(q: type[Quantizer], x: NDArray[np.float32], bits: int, params: Params, rate: NDArray[np.float32],
           lam: float) -> NDArray[np.uint8]:
    """Codes of x (group-shaped params, as Quantizer.encode) chosen by squared error plus lam x rate.

    Against the nearest code r (t = r + d), its lower neighbour costs 2d + 1 + lam (rate(r-1) -
    rate(r)) more and its upper one 1 - 2d + lam (rate(r+1) - rate(r)): two gathers from per-code
    tables instead of a cost per candidate. Ties keep the nearest code, then the lower neighbour.
    """
    t = q.continuous(x, bits, params)  # type: ignore[attr-defined]  # rate_aware: checked by check()
    lo, hi = q.code_range(bits)  # type: ignore[attr-defined]
    r = np.rint(t)
    np.clip(r, lo, hi, out=r)
    t -= r  # d, in [-0.5, 0.5] inside the range
    t *= np.float32(2)
    lr = np.float32(lam) * rate[lo : hi + 1]
    down = np.full(lr.size, np.inf, dtype=np.float32)  # no lower neighbour below the range
    down[1:] = 1 + lr[:-1] - lr[1:]
    up = np.full(lr.size, np.inf, dtype=np.float32)
    up[:-1] = 1 + lr[1:] - lr[:-1]
    i = r.astype(np.intp)
    if lo:
        i -= lo
    dl = down[i]
    dl += t
    dh = up[i]
    dh -= t
    move = np.where(dh < np.minimum(dl, 0), np.float32(1), np.where(dl < 0, np.float32(-1), np.float32(0)))
    r += move
    return r.astype(code_dtype(bits))


def estimate(q: type[Quantizer], chunks: Callable[[], Iterable[tuple[NDArray[np.float32], Params]]], bits: int,
             lam: float) -> NDArray[np.float32]:
    """Rates after RDO_ITERATIONS rounds of choosing codes and re-estimating, a chunk at a time."""
    hist = np.zeros(1 << bits, dtype=np.int64)
    for xc, pc in chunks():
        hist += code_histogram(q.encode(xc, bits, pc), bits)
    for _ in range(RDO_ITERATIONS - 1):
        rate = rates(hist)
        hist = np.zeros(1 << bits, dtype=np.int64)
        for xc, pc in chunks():
            hist += code_histogram(encode(q, xc, bits, pc, rate, lam), bits)
    return rates(hist)
