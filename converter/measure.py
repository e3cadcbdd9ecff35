"""What compression costs and buys: code entropy and real compressor sizes."""

from __future__ import annotations

import gzip
import io
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np
import zstandard
from numpy.typing import NDArray

from qpack.formats.errors import OptionError
from qpack.formats.qpk.codecs import ANS
from qpack.formats.qpk.spec import BYTE_BITS

if TYPE_CHECKING:
    pass

PAIR_COUNTING = 1 << 17  # codes from which counting them in pairs is faster (2x at 2^20)


def code_histogram(codes: NDArray[np.uint8], bits: int) -> NDArray[np.int64]:
    """Occurrences of each of the 2**bits codes.

    Many codes are counted two at a time as uint16 pairs (65,536 bins), then the pair table is summed
    both ways: half the elements through bincount, which is its cost. Codes wider than a byte, and
    fewer codes than PAIR_COUNTING (where the pair table's own size is the cost), are counted one at a time.
    """
    if bits > BYTE_BITS or np.size(codes) < PAIR_COUNTING:
        return np.bincount(np.asarray(codes).reshape(-1), minlength=1 << bits)[: 1 << bits].astype(np.int64)
    flat = np.ascontiguousarray(codes, dtype=np.uint8).reshape(-1)
    even = flat.size & ~1
    pairs = np.bincount(flat[:even].view(np.uint16), minlength=1 << 16).reshape(256, 256)
    hist = pairs.sum(axis=0) + pairs.sum(axis=1)  # high byte, low byte
    if even < flat.size:
        hist[flat[-1]] += 1
    return hist[: 1 << bits].astype(np.int64)


def entropy_bits(hist: NDArray[np.int64]) -> float:
    """Order-0 Shannon entropy in bits per symbol: the floor for a per-symbol entropy coder."""
    total = hist.sum()
    if total == 0:
        return 0.0
    p = hist[hist > 0] / total
    return float(-(p * np.log2(p)).sum())


def context_entropy_bits(codes: NDArray[np.uint8], bits: int) -> float:
    """Cross-entropy in bits per code of the codes under the best context model of the `ans` codec
    (tables as that codec would store them, the tables' own bytes not counted); the order-0 table's
    when no context model applies (a single distinct code).

    With its tables, the best context model loses to order 0 on small or patternless tensors; the
    codec then stores order 0, but this figure still says what the context would buy.
    """
    chosen = ANS.choose_model(codes, bits)
    return chosen[0] if chosen is not None else float(bits)


def _gzip(data: bytes) -> int:
    return len(gzip.compress(data, compresslevel=9, mtime=0))


def _zstd(data: bytes) -> int:
    return len(zstandard.ZstdCompressor(level=19).compress(data))


def _7z(data: bytes) -> int:
    import py7zr  # 60 ms to import: paid only when 7z is asked for

    buf = io.BytesIO()
    with py7zr.SevenZipFile(buf, "w", filters=[{"id": py7zr.FILTER_LZMA2, "preset": 9}]) as z:
        z.writef(io.BytesIO(data), "data")
    return len(buf.getvalue())


COMPRESSORS: dict[str, Callable[[bytes], int]] = {"gzip": _gzip, "zstd": _zstd, "7z": _7z}
AUTO_COMPRESSORS = ("gzip", "zstd")
# zstd -19 runs at about 2.5 MB/s here: above this size 'auto' measures nothing unless asked
AUTO_LIMIT_BYTES = 64 * 1024 * 1024


def parse_compressors(spec: str, source_bytes: int = 0) -> tuple[str, ...]:
    """'gzip,zstd' -> ('gzip', 'zstd'); also 'all', 'none', and 'auto' (gzip,zstd for models up to 64 MiB)."""
    spec = spec.strip().lower()
    if spec == "auto":
        return AUTO_COMPRESSORS if source_bytes <= AUTO_LIMIT_BYTES else ()
    if spec == "all":
        return tuple(COMPRESSORS)
    if spec in ("none", ""):
        return ()
    names = tuple(dict.fromkeys(s.strip() for s in spec.split(",") if s.strip()))
    unknown = [n for n in names if n not in COMPRESSORS]
    if unknown:
        raise OptionError(f"unknown compressor {unknown[0]!r}, expected some of {', '.join(COMPRESSORS)} (or all, none)")
    return names


def compressed_sizes(items: dict[str, bytes], compressors: tuple[str, ...],
                     progress: Callable[[str], None] | None = None) -> dict[str, dict[str, int]]:
    """{compressor: {item: size}} with every (compressor, item) pair run in parallel threads.

    zlib, lzma and zstd release the GIL, so threads use both cores.
    """
    jobs = [(c, name) for c in compressors for name in items]
    out: dict[str, dict[str, int]] = {c: {} for c in compressors}
    if not jobs:
        return out
    with ThreadPoolExecutor(max_workers=min(len(jobs), 4)) as pool:
        futures = {pool.submit(COMPRESSORS[c], items[name]): (c, name) for c, name in jobs}
        for fut, (c, name) in futures.items():
            out[c][name] = fut.result()
            if progress:
                progress(f"{c} {name}")
    return out


def sqnr_db(x: NDArray, y: NDArray) -> float:
    """Signal-to-quantization-noise ratio in dB of y against x; inf when y == x."""
    x64 = np.asarray(x, dtype=np.float64)
    noise = float(np.square(x64 - np.asarray(y, dtype=np.float64)).sum())
    signal = float(np.square(x64).sum())
    if noise == 0:
        return float("inf")
    return 10 * np.log10(signal / noise) if signal > 0 else float("-inf")


def noise_energy(x: NDArray, y: NDArray) -> tuple[float, float]:
    """(signal energy, noise energy) of y against x, for pooling SQNR over tensors.

    Summed over chunks (small temporaries however large the tensor) with float32 dot products,
    redone in float64 for a chunk whose float32 sum overflows (weights near float32's limit).
    """
    xf, yf = np.asarray(x).reshape(-1), np.asarray(y).reshape(-1)
    signal = noise = 0.0
    for i in range(0, xf.size, _CHUNK):
        a = xf[i : i + _CHUNK].astype(np.float32, copy=False)
        d = a - yf[i : i + _CHUNK]
        with np.errstate(over="ignore"):
            s, n = float(np.dot(a, a)), float(np.dot(d, d))
        if not (np.isfinite(s) and np.isfinite(n)):
            a64 = a.astype(np.float64)
            d64 = a64 - yf[i : i + _CHUNK]
            s, n = float(np.dot(a64, a64)), float(np.dot(d64, d64))
        signal += s
        noise += n
    return signal, noise


_CHUNK = 1 << 20
