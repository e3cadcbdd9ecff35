"""The rANS kernels of the `ans` codec (FORMAT.md, "ans code streams"), compiled with numba.

A static rANS coder is a chain: each symbol's state update needs the state the previous one left.
numpy can only run such a chain across many independent lanes at once, and every lane costs four
bytes of final state: at the lane counts that make numpy fast (10^4) that is several percent of a
typical tensor's stream. One compiled loop over a single state keeps the overhead to four bytes per
stream and decodes 10^8 codes a second, so the kernels are plain loops compiled by numba (imported
on first use: only the `ans` codec pays for the compiler).

State: x in [2^16, 2^32) between symbols; renormalization moves 16-bit words; a context's table
sums to M = 2^P with P <= 15, so one word is always enough (see FORMAT.md for the invariants).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray

from qpack.formats.qpk.spec import ANS_STATE_LOW as LOW  # the lower bound of a normalized state, and the encoder's initial state

_kernels: dict[str, Callable[..., Any]] = {}


def _compile() -> dict[str, Callable[..., Any]]:
    """Compile (or load from numba's cache) the kernels once per process."""
    if _kernels:
        return _kernels
    import numba  # a second to import: only when a stream is really coded

    jit = numba.njit(cache=True, nogil=True, boundscheck=False)

    @jit
    def encode(codes, ctx, freq, cum, precision, out):  # pragma: no cover - compiled
        # codes are coded last to first so that the decoder reads them first to last; words are
        # written from the end of `out` backwards, so the stream needs no reversal
        x = np.uint64(LOW)
        n = out.size
        shift = np.uint64(32 - precision)
        p = np.uint64(precision)
        for i in range(codes.size - 1, -1, -1):
            c = ctx[i]
            s = codes[i]
            f = np.uint64(freq[c, s])
            if x >= (f << shift):
                n -= 1
                out[n] = np.uint16(x & np.uint64(0xFFFF))
                x >>= np.uint64(16)
            x = ((x // f) << p) + (x % f) + np.uint64(cum[c, s])
        return x, n

    @jit
    def decode0(words, x0, lut, freq, cum, precision, out, ptr):  # pragma: no cover - compiled
        # one context: the slot picks the symbol, the symbol its frequency and start. The
        # renormalization is branch-free (a word is fetched every time and kept when needed): which
        # codes need one is as unpredictable as the codes themselves
        x = np.uint64(x0)
        mask = np.uint64((1 << precision) - 1)
        p = np.uint64(precision)
        nw = words.size
        if nw == 0:
            words = np.zeros(1, dtype=np.uint16)  # the fetch below always has a word to look at
        last = max(nw - 1, 0)
        for i in range(out.size):
            slot = x & mask
            s = lut[slot]
            x = np.uint64(freq[s]) * (x >> p) + slot - np.uint64(cum[s])
            need = x < np.uint64(LOW)
            w = np.uint64(words[min(ptr, last)])
            x = ((x << np.uint64(16)) | w) if need else x
            ptr += need
            out[i] = s
        return x, (ptr if ptr <= nw else -1)

    @jit
    def decode_ctx(words, x0, lut, freq, cum, precision, buf, ptr, ctxmap, mag, total, window):  # pragma: no cover
        # buf[:k] holds the k codes before this call's first (k = the window); codes are decoded
        # into buf[k:]. The context of a code is ctxmap[sum of the magnitudes of the k before it]
        x = np.uint64(x0)
        mask = np.uint64((1 << precision) - 1)
        p = np.uint64(precision)
        nw = words.size
        if nw == 0:
            words = np.zeros(1, dtype=np.uint16)
        last = max(nw - 1, 0)
        for i in range(window, buf.size):
            c = ctxmap[total]
            slot = x & mask
            s = lut[c, slot]
            x = np.uint64(freq[c, s]) * (x >> p) + slot - np.uint64(cum[c, s])
            need = x < np.uint64(LOW)
            w = np.uint64(words[min(ptr, last)])
            x = ((x << np.uint64(16)) | w) if need else x
            ptr += need
            buf[i] = s
            total += mag[s] - mag[buf[i - window]]
        return x, (ptr if ptr <= nw else -1), total

    _kernels.update(encode=encode, decode0=decode0, decode_ctx=decode_ctx)
    return _kernels


def encode(codes: NDArray[np.uint8], ctx: NDArray[np.uint8], freq: NDArray[np.uint32], cum: NDArray[np.uint32],
           precision: int) -> tuple[int, NDArray[np.uint16]]:
    """(final state, words in reading order) of codes coded with per-code contexts."""
    out = np.empty(codes.size + 1, dtype=np.uint16)  # at most one word per code
    x, start = _compile()["encode"](codes, ctx, freq, cum, precision, out)
    return int(x), out[start:]


def decode0(words: NDArray[np.uint16], x: int, lut: NDArray[np.uint8], freq: NDArray[np.uint32], cum: NDArray[np.uint32],
            precision: int, out: NDArray[np.uint8], ptr: int) -> tuple[int, int]:
    """Fill `out` with codes of one context; (state, next word) or a negative word index when the words run out."""
    x, ptr = _compile()["decode0"](words, np.uint64(x), lut, freq, cum, precision, out, ptr)
    return int(x), int(ptr)


def decode_ctx(words: NDArray[np.uint16], x: int, lut: NDArray[np.uint8], freq: NDArray[np.uint32], cum: NDArray[np.uint32],
               precision: int, buf: NDArray[np.uint8], ptr: int, ctxmap: NDArray[np.uint8], mag: NDArray[np.int64],
               total: int, window: int) -> tuple[int, int, int]:
    """As decode0 into buf[window:], the context of each code chosen from the magnitudes of the
    `window` codes before it (buf[:window] holds those before the first)."""
    x, ptr, total = _compile()["decode_ctx"](words, np.uint64(x), lut, freq, cum, precision, buf, ptr, ctxmap, mag, total, window)
    return int(x), int(ptr), int(total)
