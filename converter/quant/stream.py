"""One tensor quantized in row chunks: parameters from the whole tensor, then codes, histogram,
noise energy and the packed stream built a few MB at a time, so temporaries stay small."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from qpack.converter.measure import code_histogram
from qpack.converter.quant.base import Params, Quantizer
from qpack.converter.quant.rdo import check as rdo_check
from qpack.converter.quant.rdo import encode as rdo_encode
from qpack.converter.quant.rdo import estimate as rdo_estimate
from qpack.formats.errors import FormatError, OptionError
from qpack.formats.qpk import Grouping, pack
from qpack.formats.qpk.bitstream import code_dtype

CHUNK_ELEMENTS = 1 << 18  # 1 MiB of float32: temporaries per worker stay a few MiB


@dataclass
class Quantized:
    packed: NDArray[np.uint8]  # the dense n-bit stream
    params: Params  # flat, in their storage dtypes
    dtypes: dict[str, str]  # those dtypes, by parameter
    hist: NDArray[np.int64]  # occurrences of each code
    signal: float  # energy of the float weights
    noise: float  # energy of the quantization error


def check_finite(x: NDArray, name: str) -> None:
    flat = x.reshape(-1)
    for i in range(0, flat.size, CHUNK_ELEMENTS):
        if not np.isfinite(flat[i : i + CHUNK_ELEMENTS]).all():
            raise FormatError(f"tensor '{name}' holds NaN or infinite values; refusing to quantize it")


def quantize_stream(q: type[Quantizer], x: NDArray[np.float32], bits: int, grouping: Grouping, clip: str,
                    dtypes: dict[str, str] | None = None, rdo: float = 0.0) -> Quantized:
    """Codes of x packed, with the figures the size report needs; the same codes as q.quantize()
    unless `rdo` (lambda of rate-aware rounding, see converter.quant.rdo) is non-zero, or the scheme
    searches its codes (dq: a chunk at a time, its state carried over)."""
    rdo_check(q, rdo)
    if grouping.block and not q.spec().blocks:
        raise OptionError(f"scheme '{q.name}' searches its codes in the tensor's order: give it a scale per tensor or "
                          "per channel, not blocks")
    xv, axes = grouping.blocked(x)
    params, used = q.fit(xv, axes, bits, clip, dtypes)
    flat = q.flat(params, used)
    spec = q.spec()
    # chunks run along the first axis of the blocked view, which is the tensor's first axis or,
    # for blocks along axis 0, whole blocks of it
    row = max(1, int(np.prod(xv.shape[1:], dtype=np.int64)))
    step = max(1, CHUNK_ELEMENTS // row)

    def chunks() -> Iterator[tuple[NDArray[np.float32], Params]]:
        for i in range(0, max(1, xv.shape[0] if xv.ndim else 1), step):
            yield (xv[i : i + step] if xv.ndim else xv), {k: v[i : i + step] if v.ndim and v.shape[0] > 1 else v for k, v in params.items()}

    if q.trellis:
        rate, lam = q.estimate(chunks, bits, rdo or None)  # type: ignore[attr-defined]
        state = 0  # the search's state, carried from chunk to chunk
    else:
        rate = rdo_estimate(q, chunks, bits, rdo) if rdo else None
    hist = np.zeros(1 << bits, dtype=np.int64)
    signal = noise = 0.0
    parts: list[NDArray[np.uint8]] = []
    carry = np.zeros(0, dtype=code_dtype(bits))
    first = x.shape[0] if x.ndim else 1
    done = 0  # rows of x covered so far
    for xc, pc in chunks():
        rows = min(first - done, xc.shape[0] * (grouping.block if grouping.axis == 0 and grouping.block else 1)) if x.ndim else 1
        shape = (rows,) + x.shape[1:] if x.ndim else ()
        if q.trellis:
            start = state
            chosen, state = q.search(q.units(xc, pc), bits, rate, lam, state)  # type: ignore[attr-defined]
            codes = chosen.reshape(shape)
            y, _ = q.decode_from(codes, pc["scale"], bits, start)  # type: ignore[attr-defined]
        else:
            chosen = q.encode(xc, bits, pc) if rate is None else rdo_encode(q, xc, bits, pc, rate, rdo)
            codes = np.ascontiguousarray(grouping.unblocked(chosen, shape))
            y = spec.dequantize(codes, q.flat(pc, used), bits, grouping)
        xs = x[done : done + rows] if x.ndim else x
        d = (xs - y).reshape(-1)
        a = xs.reshape(-1)
        with np.errstate(over="ignore"):
            s, n = float(np.dot(a, a)), float(np.dot(d, d))
        if not (np.isfinite(s) and np.isfinite(n)):  # weights near float32's limit overflow a float32 sum
            a64, d64 = a.astype(np.float64), d.astype(np.float64)
            s, n = float(np.dot(a64, a64)), float(np.dot(d64, d64))
        signal += s
        noise += n
        flat_codes = codes.reshape(-1)
        hist += code_histogram(flat_codes, bits)
        if carry.size:
            flat_codes = np.concatenate([carry, flat_codes])
        whole = flat_codes.size & ~7  # eight codes make whole bytes, so packed chunks concatenate
        parts.append(pack(flat_codes[:whole], bits))
        carry = flat_codes[whole:].copy()
        done += rows
    if carry.size:
        parts.append(pack(carry, bits))
    packed = parts[0] if len(parts) == 1 else np.concatenate(parts)
    return Quantized(packed, flat, used, hist, signal, noise)
