"""The quantizer interface: a scheme's row in the format's table, plus how to choose codes for it
(and how to clip its ranges by least squared error).

A quantizer computes per-group range statistics, turns them into parameters, and encodes floats
as codes against those parameters; decoding is the format's (`formats.qpk.schemes`). Subclassing
registers a quantizer under the name of its scheme row.
"""

from __future__ import annotations

import functools
from typing import ClassVar

import numpy as np
from numpy.typing import NDArray

from qpack.formats.errors import OptionError
from qpack.formats.qpk import Grouping, SchemeSpec, scheme_spec

Params = dict[str, NDArray]
Stats = tuple[NDArray[np.float32], ...]

QUANTIZERS: dict[str, type[Quantizer]] = {}
# minmax: each group's whole range; mse: the range shrunk to the least squared error; mse-ends:
# then each end of it moved on its own (for asym, the zero point moves) by the same criterion;
# loose1..3: the whole range widened by 1..3 quarter bits (x 2^(k/4)), steps between two widths'
# for entropy-coded codes, which pay for the levels they use, not for the levels they could
WIDENED = {f"loose{k}": float(2 ** (k / 4)) for k in (1, 2, 3)}
CLIPS = ("minmax", "mse", "mse-ends", *WIDENED)


def as_grouping(g: Grouping | int | None) -> Grouping:
    """A grouping; an int or None is shorthand for per-channel along that axis, or per-tensor."""
    return g if isinstance(g, Grouping) else Grouping(g)


class Quantizer:
    """One scheme's encoder. Parameters are kept group-shaped (keepdims over a grouping's blocked view)."""

    name: ClassVar[str]
    # range factors tried by clip "mse", widest first
    shrinks: ClassVar[tuple[float, ...]] = tuple(float(r) for r in np.linspace(1.0, 0.2, 33))
    # its codes are chosen together by a search through the tensor in order (search, estimate, units,
    # decode_from), rate-aware by itself, instead of each rounded on its own
    trellis: ClassVar[bool] = False
    # entropy-coded, its ranges widened between widths and rate-aware rounding (converter.quant.rdo)
    # are worth measuring as settings of their own
    entropy_steps: ClassVar[bool] = False
    # a goal choosing each tensor's scheme adds it where the codes are entropy-coded (its gain is in
    # the rate a frequency model sees) and leaves it out otherwise
    coded_choice: ClassVar[bool] = False
    # its codes sit on a continuous scale (continuous, code_range), so --rdo can round each toward a cheaper neighbour
    rate_aware: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        scheme_spec(cls.name)  # a quantizer needs its row in the format's table
        QUANTIZERS[cls.name] = cls

    @classmethod
    def spec(cls) -> SchemeSpec:
        return scheme_spec(cls.name)

    @classmethod
    def warm(cls) -> None:
        """Prepare once what each worker process would otherwise prepare again (a compiled kernel):
        called before they are forked. Nothing by default."""

    @classmethod
    def check_bits(cls, bits: int) -> None:
        cls.spec().check_bits(bits)

    @classmethod
    def levels(cls, bits: int) -> int:
        return cls.spec().levels(bits)

    @classmethod
    def stats(cls, x: NDArray[np.float32], axes: tuple[int, ...]) -> Stats:
        """The per-group range statistics the scheme scales from (keepdims over `axes`)."""
        raise NotImplementedError

    @classmethod
    def params(cls, stats: Stats, bits: int) -> Params:
        """Group-shaped parameters for the given (possibly shrunk) statistics."""
        raise NotImplementedError

    @classmethod
    def encode(cls, x: NDArray[np.float32], bits: int, params: Params) -> NDArray[np.uint8]:
        """Codes of x, its groups broadcasting against the group-shaped parameters."""
        raise NotImplementedError

    @classmethod
    def roundtrip(cls, x: NDArray[np.float32], bits: int, params: Params, dtypes: dict[str, str]) -> NDArray[np.float32]:
        """x (a row per group) quantized and read back with its group-shaped, rounded parameters:
        what the range searches measure. Schemes with a cheaper exact form override it."""
        return cls.spec().dequantize(cls.encode(x, bits, params), cls.flat(params, dtypes), bits, Grouping(0))

    @classmethod
    def rounded(cls, params: Params, dtypes: dict[str, str]) -> Params:
        """Parameters as they will read back from their storage dtypes (a float16 scale, say), so
        codes are chosen against the values the decoder will really use."""
        return {k: np.asarray(v).astype(dtypes[k]).astype(np.asarray(v).dtype) for k, v in params.items()}

    @classmethod
    def storage(cls, params: Params, wanted: dict[str, str] | None) -> dict[str, str]:
        """The dtypes the parameters will be stored in: `wanted` where each value survives it
        (finite, and non-zero where it was non-zero), else the scheme's default, unless that makes a
        value infinite (a float16 codebook of weights past 65,504): then the first alternative that
        keeps every value finite, as FORMAT.md's parameter ranges require."""
        spec = cls.spec()
        out = dict(spec.dtypes)
        for p in spec.params:
            want = (wanted or {}).get(p.name, p.dtype)
            v = np.asarray(params[p.name])
            if want != p.dtype and want in p.dtypes:
                r = _stored(v, want)
                if np.isfinite(r).all() and not ((r == 0) & (v != 0)).any():
                    out[p.name] = want
                    continue
            if not np.isfinite(_stored(v, p.dtype)).all():
                out[p.name] = next((d for d in p.others if np.isfinite(_stored(v, d)).all()), p.dtype)
        return out

    @classmethod
    def refine(cls, xv: NDArray[np.float32], axes: tuple[int, ...], bits: int, stats: Stats,
               dtypes: dict[str, str] | None) -> Stats:
        """A further least-squares search after the range shrink (clip "mse-ends"); none by default."""
        return stats

    @classmethod
    def fit(cls, xv: NDArray[np.float32], axes: tuple[int, ...], bits: int, clip: str = "minmax",
            dtypes: dict[str, str] | None = None, refine: bool = True,
            budget: int | None = None, stride: int = 1, stats: Stats | None = None,
            sample: NDArray[np.float32] | None = None) -> tuple[Params, dict[str, str]]:
        """Group-shaped parameters of a blocked view (see Grouping.blocked), rounded to the dtypes
        they will be stored in, and those dtypes.

        clip "minmax" spans each group's whole range; "mse" shrinks the range per group to the
        factor that minimizes the squared error on a sample of the group (see search_shrink).
        `dtypes` asks for other parameter dtypes the scheme allows (float16 scales, say); `budget`
        bounds the weights a search looks at (default SAMPLE_BUDGET) and `stride` thins its grid of
        factors (ranking settings needs less than a final conversion). `stats` and the search's
        `sample` (sample_rows) may come precomputed, by a caller fitting many settings of one view.
        """
        stats = cls.stats(xv, axes) if stats is None else stats
        if clip in ("mse", "mse-ends"):
            if sample is None:
                sample = sample_rows(xv, axes, budget or SAMPLE_BUDGET)
            shrink = search_shrink(cls, sample, bits, stats, dtypes, stride)
            stats = tuple(s * shrink for s in stats)
            if clip == "mse-ends" and refine:
                stats = cls.refine(xv, axes, bits, stats, dtypes)
        elif clip in WIDENED:
            stats = tuple(s * np.float32(WIDENED[clip]) for s in stats)
        elif clip != "minmax":
            raise OptionError(f"unknown clipping {clip!r}, expected one of {', '.join(CLIPS)}")
        params = cls.params(stats, bits)
        used = cls.storage(params, dtypes)
        return cls.rounded(params, used), used

    @classmethod
    def flat(cls, params: Params, dtypes: dict[str, str] | None = None) -> Params:
        """Parameters as stored: one value per group, in C order, in their storage dtypes."""
        dtypes = dtypes or cls.spec().dtypes
        return {k: np.asarray(params[k]).reshape(-1).astype(dtypes[k]) for k in dtypes}

    @classmethod
    def quantize(cls, x: NDArray[np.float32], bits: int, grouping: Grouping | int | None,
                 clip: str = "minmax", dtypes: dict[str, str] | None = None) -> tuple[NDArray[np.uint8], Params]:
        """Codes shaped like x, and the flat per-group parameters, in one go (whole tensor in memory)."""
        g = as_grouping(grouping)
        cls.check_bits(bits)
        xv, axes = g.blocked(np.asarray(x, dtype=np.float32))
        params, used = cls.fit(xv, axes, bits, clip, dtypes)
        codes = g.unblocked(cls.encode(xv, bits, params), x.shape)
        return np.ascontiguousarray(codes), cls.flat(params, used)

    @classmethod
    def dequantize(cls, codes: NDArray[np.uint8], params: Params, bits: int, grouping: Grouping | int | None) -> NDArray[np.float32]:
        return cls.spec().dequantize(codes, params, bits, as_grouping(grouping))


def _stored(v: NDArray, dtype: str) -> NDArray:
    with np.errstate(over="ignore", invalid="ignore"):  # out-of-range values become inf: what is asked
        return v.astype(dtype)


@functools.lru_cache(maxsize=64)
def _scale_limit(level: int) -> np.float32:
    limit = np.float32(float(np.finfo(np.float32).max) / level)  # float64 division, rounded to float32
    with np.errstate(over="ignore"):
        while not np.isfinite(np.float32(level) * limit):  # rounded up: one step down at most
            limit = np.nextafter(limit, np.float32(0))
    return limit


def bounded_scale(scale: NDArray[np.float32], level: int) -> NDArray[np.float32]:
    """`scale` capped where `level` (the largest |level| the scheme's codes reach) times it would
    overflow float32, so that every code's value is finite (FORMAT.md, "Parameter ranges"): only
    weights within a factor of two or so of float32's largest value are clipped."""
    return np.minimum(scale, _scale_limit(level))


SAMPLE_BUDGET = 1 << 18  # elements examined per tensor (at least MIN_PER_GROUP per group)
MIN_PER_GROUP = 64


def search_shrink(q: type[Quantizer], sample: NDArray[np.float32], bits: int, stats: Stats,
                  dtypes: dict[str, str] | None = None, stride: int = 1) -> NDArray[np.float32]:
    """Per group, the range factor in q.shrinks with the least squared error on a sample.

    Clipping a few outliers buys finer steps for the bulk of the weights; at low widths that is
    most of the error. The sample is every k-th element of each group plus its two extremes, so
    that the cost of clipping the largest weights is never missed, and the search costs a few
    passes over about `budget` elements however large the tensor (`sample`: sample_rows of the
    view, a row per group). Ties keep the wider range.
    """
    groups = sample.shape[0]
    flat_stats = tuple(s.reshape(groups, 1) for s in stats)
    best_err = np.full(groups, np.inf)
    best = np.ones(groups, dtype=np.float32)
    for r in q.shrinks[::stride]:
        err = sample_error(q, sample, tuple(s * np.float32(r) for s in flat_stats), bits, dtypes)
        better = err < best_err * (1 - 1e-9)
        best_err[better], best[better] = err[better], r
    return best.reshape(stats[0].shape)


def sample_rows(xv: NDArray[np.float32], axes: tuple[int, ...], budget: int = SAMPLE_BUDGET) -> NDArray[np.float32]:
    """Per group (a row each), every k-th weight plus the two extremes: about `budget` in all."""
    keep = tuple(i for i in range(xv.ndim) if i not in axes)
    groups = int(np.prod([xv.shape[i] for i in keep], dtype=np.int64))
    rows = np.transpose(xv, keep + axes).reshape(groups, -1)
    per_group = max(MIN_PER_GROUP, budget // groups)
    step = max(1, rows.shape[1] // per_group)
    sample = np.concatenate([rows[:, ::step], rows.min(axis=1, keepdims=True), rows.max(axis=1, keepdims=True)], axis=1)
    return np.ascontiguousarray(sample, dtype=np.float32)


def sample_error(q: type[Quantizer], sample: NDArray[np.float32], stats: Stats, bits: int,
                 dtypes: dict[str, str] | None) -> NDArray[np.float64]:
    """Each row's squared error when quantized with parameters from `stats` (groups x 1 each)."""
    params = q.params(stats, bits)
    used = q.storage(params, dtypes)
    y = q.roundtrip(sample, bits, q.rounded(params, used), used)
    with np.errstate(over="ignore"):  # errors of weights near float32's largest value square to inf: the worst rank
        y -= sample
        np.square(y, out=y)
        return y.sum(axis=1).astype(np.float64)  # float32 pairwise sums: ample for ranking settings


def get_quantizer(name: str) -> type[Quantizer]:
    """The registered quantizer of scheme `name`."""
    try:
        return QUANTIZERS[name]
    except KeyError:
        raise OptionError(f"unknown scheme '{name}', expected one of {', '.join(QUANTIZERS)}") from None
