"""The `ans` codec: code streams entropy-coded by static rANS, each code's distribution chosen by
its context (FORMAT.md, "ans code streams").

A stream carries its own model: one frequency table (order 0), or one per context, the context of
a code being how large the codes just before it are (trained weights come in runs of small and of
large values: along a kernel row, an input channel). The encoder measures every model of a small
family on the codes and keeps the cheapest, tables included; the decoder only follows the header.
Tables hold a weight per symbol, or, where that would be a large part of a small stream, a profile:
weights at a few knots around the peak, the rest interpolated.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from numpy.typing import NDArray

from qpack.formats.errors import FormatError
from qpack.formats.qpk import rans
from qpack.formats.qpk.bitstream import code_dtype, pack, packed_size, unpack
from qpack.formats.qpk.schemes import midpoint
from qpack.formats.qpk.spec import (
    ANS_KNOTS,
    ANS_MAGNITUDE_CENTER,
    ANS_MAGNITUDE_SIGN,
    ANS_MANTISSA,
    ANS_MAX_CONTEXTS,
    ANS_MAX_OFFSET,
    ANS_MAX_WIDE_SHIFT,
    ANS_MAX_WINDOW,
    ANS_MODEL_NEIGHBOURS,
    ANS_MODEL_ORDER0,
    ANS_PRECISION,
    ANS_PROFILE,
    ANS_STATE_LOW,
    ANS_VERSION,
    BYTE_BITS,
    expansion_limit,
)

_HEAD = struct.Struct("<BBBB")  # version, bits, precision, model
_NEIGHBOURS = struct.Struct("<BBBBB")  # window, contexts, offset, magnitude, center
_TABLE = struct.Struct("<BB")  # first symbol, span - 1
_WIDE_TABLE = struct.Struct("<HHB")  # codes wider than a byte: first symbol, span - 1, run shift
_STATE = struct.Struct("<I")
FRAME_BYTES = _HEAD.size + _STATE.size  # what every stream adds to its tables and words
_CHUNK = 1 << 20  # codes decoded per kernel call (a multiple of 8, so packed chunks concatenate)

MANTISSA = np.array(ANS_MANTISSA, dtype=np.int64)  # value(w) = MANTISSA[(w - 1) % 16] << ((w - 1) // 16)

# The encoder's search: which models, precisions and runs it prices. A reader never checks these
# (any value the format allows decodes), so they are not format rules and live here, not in spec.
WINDOWS = (1, 2, 4, 8)  # neighbourhood sizes the encoder tries
CONTEXTS = (2, 3, 4, 6, 8, 12, 16)
PRECISIONS = (12, 13, 14)  # tried in turn before ANS_PRECISION; lower decodes faster (smaller tables)
PRECISION_SLACK = 0.001  # coded bits a lower precision may add
WIDE_SHIFTS = tuple(range(7))  # a wide table's weight stands for a run of 2^shift codes; the encoder tries these


@dataclass(frozen=True)
class Model:
    """How a stream chooses each code's table: order 0 (contexts 1) or by its neighbours' magnitudes."""

    contexts: int = 1
    window: int = 0
    offset: int = 0
    magnitude: int = ANS_MAGNITUDE_CENTER
    center: int = 0

    def magnitudes(self, bits: int) -> NDArray[np.int64]:
        """Each code's magnitude: its distance from the center, or its low bits (sign-magnitude codes)."""
        codes = np.arange(1 << bits, dtype=np.int64)
        if self.magnitude == ANS_MAGNITUDE_SIGN:
            return codes & midpoint(bits)
        return np.abs(codes - self.center)

    @property
    def zero_code(self) -> int:
        """A code of magnitude 0: what the window holds before the first code."""
        return self.center if self.magnitude == ANS_MAGNITUDE_CENTER else 0


@lru_cache(maxsize=64)
def half_octaves(limit: int) -> NDArray[np.int64]:
    """hb(S) for S in 0..limit: 0 for 0, else 2 floor(log2 S) + 1 + the bit below S's leading one."""
    s = np.arange(limit + 1, dtype=np.int64)
    e = np.zeros_like(s)
    nz = s > 0
    e[nz] = np.floor(np.log2(s[nz])).astype(np.int64)
    # exact for integers: correct floor(log2) where float rounding could be off by one
    e[nz] -= (np.left_shift(1, e[nz]) > s[nz]).astype(np.int64)
    e[nz] += (np.left_shift(1, e[nz] + 1) <= s[nz]).astype(np.int64)
    below = np.where(e >= 1, (s >> np.maximum(e - 1, 0)) & 1, 0)
    hb = np.where(nz, 2 * e + 1 + below, 0)
    hb.setflags(write=False)
    return hb


def context_map(model: Model, bits: int) -> NDArray[np.uint8]:
    """Context of each possible magnitude sum S (0 .. window * largest magnitude)."""
    limit = model.window * int(model.magnitudes(bits).max())
    hb = half_octaves(limit)
    return np.clip(hb - model.offset, 0, model.contexts - 1).astype(np.uint8)


def contexts_of(codes: NDArray[np.uint8], bits: int, model: Model) -> NDArray[np.uint8]:
    """The context of every code (encoder side; the decoder follows the same rule as it goes)."""
    if model.contexts == 1:
        return np.zeros(codes.size, dtype=np.uint8)
    return context_map(model, bits)[window_sums(codes, model.magnitudes(bits), model.window)]


def window_sums(codes: NDArray[np.uint8], mag: NDArray[np.int64], window: int) -> NDArray[np.int16]:
    """S_i: the sum of the magnitudes of codes i-window .. i-1 (codes before the first count as 0)."""
    return next(s for w, s in _window_sums(codes, mag, window) if w == window)


def _window_sums(codes: NDArray[np.uint8], mag: NDArray[np.int64], largest: int) -> Iterator[tuple[int, NDArray[np.int16]]]:
    """(w, S for window w) for w = 1 .. largest, each built from the last by one shifted add."""
    m = mag.astype(np.int16)[codes]  # at most 8 x 255: int16 holds every sum
    s = np.zeros(codes.size, dtype=np.int16)
    for w in range(1, largest + 1):
        s[w:] += m[:-w] if w < codes.size else m[:0]
        yield w, s


# --- frequency tables -------------------------------------------------------------------------


def weights_of(counts: NDArray[np.int64]) -> NDArray[np.uint8]:
    """Table weights (FORMAT.md) for rows of symbol counts: 255 for each row's most frequent symbol,
    16 steps per octave below it, 1 at the least; 0 for absent symbols."""
    counts = np.atleast_2d(counts)
    top = counts.max(axis=1, keepdims=True)
    with np.errstate(divide="ignore"):
        w = 255 + np.rint(16 * np.log2(counts / np.maximum(top, 1)))
    w = np.clip(np.nan_to_num(w, neginf=1), 1, 255)
    return np.where(counts > 0, w, 0).astype(np.uint8)


def frequencies(weights: NDArray[np.uint8], precision: int) -> NDArray[np.int64]:
    """The normalization FORMAT.md specifies: rows of weights -> integer frequencies summing to 2^P.

    Raises FormatError for an empty row (no symbol has a weight).
    """
    w = np.atleast_2d(weights).astype(np.int64)
    v = np.where(w > 0, MANTISSA[(w - 1) & 15] << ((w - 1) >> 4), 0)
    total = v.sum(axis=1, keepdims=True)
    if (total == 0).any():
        raise FormatError("ans stream: a frequency table has no symbol")
    m = 1 << precision
    f = np.where(v > 0, np.maximum(1, (v * m) // total), 0)  # v * m < 2^26 * 2^15: exact in int64
    rest = m - f.sum(axis=1)
    top = f.argmax(axis=1)  # the first of the largest
    rows = np.arange(f.shape[0])
    f[rows, top] += rest
    if (f[rows, top] < 1).any():
        raise FormatError("ans stream: a frequency table does not normalize")
    return f


def coded_bits(counts: NDArray[np.int64], f: NDArray[np.int64], precision: int) -> NDArray[np.float64]:
    """Bits the codes of each row of counts take under frequencies f (tables summing to 2^precision)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(counts > 0, counts * (precision - np.log2(np.maximum(f, 1))), 0.0).sum(axis=-1)


def cost_bits(counts: NDArray[np.int64], precision: int) -> NDArray[np.float64]:
    """Bits the codes of each row of counts take under the table their weights give."""
    return coded_bits(counts, frequencies(weights_of(counts), precision), precision)


def _table_struct(k: int) -> struct.Struct:
    """How a table's span is written: bytes for up to 256 symbols, 16-bit words past that."""
    return _TABLE if k <= 1 << BYTE_BITS else _WIDE_TABLE


def table_bytes(counts: NDArray[np.int64]) -> NDArray[np.int64]:
    """Bytes each row's table takes: its span's first symbol and length, plus a weight for each
    symbol from the first to the last present one (one symbol for a row without counts: a table
    is never empty). A wide table at run shift 0; see wide_table for what runs save."""
    counts = np.atleast_2d(counts)
    head = _table_struct(counts.shape[1]).size
    present = counts > 0
    k = counts.shape[1]
    first = present.argmax(axis=1)
    last = k - 1 - present[:, ::-1].argmax(axis=1)
    return np.where(present.any(axis=1), head + last - first + 1, head + 1)


def table_weights(counts: NDArray[np.int64], zero_code: int) -> NDArray[np.uint8]:
    """Rows of weights for rows of counts; a row without counts gets its zero code alone."""
    w = weights_of(counts)
    empty = ~w.any(axis=1)
    w[empty, zero_code] = 255
    return w


def wide_table(counts: NDArray[np.int64], precision: int = ANS_PRECISION) -> tuple[NDArray[np.uint8], int, int, float]:
    """(weights of every code, run shift, table bytes, coded bits) of one table of wide codes.

    Past a byte a span holds thousands of codes, and a weight each costs more than the precision it
    buys in the tails: each stored weight stands for a run of 2^shift codes (the runs' mean count),
    and the shift of WIDE_SHIFTS with the fewest table and code bytes is taken.
    """
    nz = np.flatnonzero(counts)
    if nz.size == 0:
        raise ValueError("a wide table needs a present code")
    first, last = int(nz[0]), int(nz[-1])
    span = counts[first : last + 1].astype(np.float64)
    best: tuple[NDArray[np.uint8], int, int, float] | None = None
    for shift in WIDE_SHIFTS:
        run = 1 << shift
        if shift and run >= 2 * span.size:
            break
        runs = -(-span.size // run)
        padded = np.zeros(runs * run)
        padded[: span.size] = span
        mean = padded.reshape(runs, run).mean(axis=1)
        w = np.zeros(counts.size, dtype=np.uint8)
        w[first : last + 1] = np.repeat(weights_of(mean)[0], run)[: span.size]
        try:
            bits = float(coded_bits(counts, frequencies(w, precision)[0], precision))
        except FormatError:
            continue
        size = _WIDE_TABLE.size + runs
        if best is None or size + bits / 8 < best[2] + best[3] / 8:
            best = (w, shift, size, bits)
    if best is None:
        raise FormatError(f"ans stream: more distinct codes than {1 << precision} table slots")
    return best


# --- profile tables ----------------------------------------------------------------------------
# A weight per symbol costs a small stream much of its size (288 Laplace-distributed 7-bit codes,
# 180 bytes of entropy, take 266 bytes with a weight table, 217 with a profile): a profile table
# stores the peak symbol's weight and the weights at knots whose distance from the peak grows by
# half octaves, each weight between two knots their linear interpolation in integers, so every
# reader builds the same table.

_PROFILE = struct.Struct("<BBB")  # first symbol, span - 1, peak (its offset in the span)
_WIDE_PROFILE = struct.Struct("<HHH")  # the same for codes wider than a byte
# the encoder's fitting of profiles (not format rules: a reader never checks them)
PROFILE_DELTAS = np.array([-12, -6, -3, -1, 1, 3, 6, 12], dtype=np.int64)  # knot moves the encoder tries
PROFILE_PASSES = 4
PROFILE_WORTH = 0.003  # profiles are tried where weight-per-symbol tables are above this share of the stream


def knot_distances(n: int) -> NDArray[np.int64]:
    """Knot distances of a side n symbols long: 0 (the peak), the ANS_KNOTS below n, then n itself."""
    return np.array([0, *(d for d in ANS_KNOTS if d < n), n] if n else [0], dtype=np.int64)


def _profile_struct(k: int) -> struct.Struct:
    return _PROFILE if k <= 1 << BYTE_BITS else _WIDE_PROFILE


def profile_bytes(k: int, span: int, peak: int) -> int:
    """Bytes of a profile table over `span` symbols peaking at offset `peak`, for 2^bits = k codes."""
    return _profile_struct(k).size + _knot_bytes(span, peak)


def _knot_bytes(span: int, peak: int) -> int:
    """Knot bytes of a profile: the peak's, then each side's knots past the peak."""
    return knot_distances(peak).size + knot_distances(span - 1 - peak).size - 1


# What a stream is expected to take before it is coded (Codec.price): the encoder's models come
# within ESTIMATE_MARGIN of the codes' order-0 entropy, plus tables
ESTIMATE_MARGIN = 1.02
ESTIMATE_TABLES = 64  # bytes a stream's tables are allowed
WIDE_RUN = 4  # codes per stored weight that a wide table typically takes (its run shift is chosen per table)


def estimated_bytes(count: int, bits: int, entropy: float, span: int) -> int | None:
    """The bytes a stream of `count` codes is expected to take, no more than packed: within
    ESTIMATE_MARGIN of their order-0 entropy (`entropy` bits a code) plus the tables, past a byte a
    weight per run of codes over the `span` of present codes, else a weight per symbol or, where
    smaller, a profile of a few knots. None where the writer would keep them packed: a stream that
    would shrink past the format's expansion limit."""
    packed = packed_size(count, bits)
    least = math.ceil(count * entropy / 8)
    if packed > expansion_limit(least):
        return None
    tables = ESTIMATE_TABLES + span // WIDE_RUN if bits > BYTE_BITS else \
        min(ESTIMATE_TABLES, profile_bytes(1 << bits, span, span // 2) + FRAME_BYTES)
    return min(packed, math.ceil(least * ESTIMATE_MARGIN) + tables)


def _side(values: NDArray[np.int64], dist: NDArray[np.int64]) -> NDArray[np.int64]:
    """Rows of weights at distances 1 .. dist[-1], interpolated between knots (dist[j], values[:, j])."""
    t = np.arange(1, int(dist[-1]) + 1)
    j = np.minimum(np.searchsorted(dist, t, side="right") - 1, dist.size - 2)
    width, u = dist[j + 1] - dist[j], t - dist[j]
    return (values[:, j] * (width - u) + values[:, j + 1] * u + width // 2) // width


def profile_weights(k: int, first: int, span: int, peak: int, knots: NDArray) -> NDArray[np.uint8]:
    """Rows of weights over k symbols from rows of knot bytes (peak, left knots, right knots)."""
    knots = np.atleast_2d(knots).astype(np.int64)
    left, right = knot_distances(peak), knot_distances(span - 1 - peak)
    w = np.zeros((knots.shape[0], k), dtype=np.uint8)
    centre = first + peak
    w[:, centre] = knots[:, 0]
    if peak:
        w[:, centre - peak : centre] = _side(knots[:, : left.size], left)[:, ::-1]
    if right.size > 1:
        w[:, centre + 1 : first + span] = _side(knots[:, np.r_[0, left.size : left.size + right.size - 1]], right)
    return w


def _first_knots(side: NDArray[np.float64], top: float) -> list[int]:
    """Starting knot bytes of one side (counts at distances 1..n): the log of the mean count over
    the distances nearer each knot than its neighbours."""
    dist = knot_distances(side.size)
    cum = np.r_[0.0, np.cumsum(side)]
    out = []
    for j in range(1, dist.size):
        lo = int(dist[j - 1] + dist[j]) // 2 + 1
        hi = int(dist[j] + dist[j + 1]) // 2 if j + 1 < dist.size else int(dist[j])
        mean = (cum[hi] - cum[lo - 1]) / (hi - lo + 1)
        out.append(int(np.clip(255 + np.rint(16 * np.log2(mean / top)), 1, 255)) if mean > 0 else 1)
    return out


def fit_profile(counts: NDArray[np.int64], precision: int) -> tuple[int, int, int, NDArray[np.uint8], float]:
    """(first, span, peak, knot bytes, coded bits) of a profile table for one row of counts: knots
    from the mean counts near them, then moved a few steps at a time while the coded bits fall."""
    nz = np.flatnonzero(counts)
    first, last = int(nz[0]), int(nz[-1])
    span = last - first + 1
    c = counts[first : last + 1]
    peak = int(np.argmax(c))
    top = float(c[peak])
    knots = np.array([255, *_first_knots(c[:peak][::-1].astype(np.float64), top),
                      *_first_knots(c[peak + 1 :].astype(np.float64), top)], dtype=np.int64)

    def costs(rows: NDArray[np.int64]) -> NDArray[np.float64]:
        w = profile_weights(span, 0, span, peak, rows)
        return coded_bits(c, frequencies(w, precision), precision)

    best = float(costs(knots)[0])
    n = knots.size
    for _ in range(PROFILE_PASSES):
        # every single-knot move priced at once; then every knot's best move together, which a knot's
        # neighbours hardly disturb (a knot shapes the weights between its two neighbours only)
        trials = np.repeat(knots[None, :], n * PROFILE_DELTAS.size, axis=0)
        which = np.repeat(np.arange(n), PROFILE_DELTAS.size)
        trials[np.arange(which.size), which] = np.clip(knots[which] + np.tile(PROFILE_DELTAS, n), 1, 255)
        bits = costs(trials).reshape(n, PROFILE_DELTAS.size)
        pick = np.argmin(bits, axis=1)  # the first of each knot's cheapest
        gain = bits[np.arange(n), pick] < best * (1 - 1e-12)
        if not gain.any():
            break
        flat = bits.reshape(-1)
        single = int(np.argmin(flat))
        moved, idx = knots.copy(), np.flatnonzero(gain)
        moved[idx] = trials[idx * PROFILE_DELTAS.size + pick[idx], idx]
        together = float(costs(moved)[0])
        best, knots = (together, moved) if together < flat[single] else (float(flat[single]), trials[single])
    return first, span, peak, knots.astype(np.uint8), best


def _write_profile(out: bytearray, k: int, first: int, span: int, peak: int, knots: NDArray[np.uint8]) -> None:
    out += _profile_struct(k).pack(first, span - 1, peak)
    out += knots.tobytes()


def _read_profile(data: memoryview, pos: int, k: int) -> tuple[NDArray[np.uint8], int]:
    head = _profile_struct(k)
    if pos + head.size > len(data):
        raise FormatError("ans stream: truncated in its tables")
    first, span, peak = head.unpack_from(data, pos)
    span += 1
    pos += head.size
    if first + span > k or peak >= span:
        raise FormatError(f"ans stream: profile [{first}, {first + span}) peaking at {peak} exceeds {k} symbols")
    n = _knot_bytes(span, peak)
    if pos + n > len(data):
        raise FormatError("ans stream: truncated in its tables")
    knots = np.frombuffer(data, dtype=np.uint8, count=n, offset=pos)
    if not knots.all():
        raise FormatError("ans stream: a profile knot has weight 0")
    return profile_weights(k, first, span, peak, knots)[0], pos + n


def _write_table(out: bytearray, weights: NDArray[np.uint8], shift: int = 0) -> None:
    nz = np.flatnonzero(weights)
    first, last = int(nz[0]), int(nz[-1])
    head = _table_struct(weights.size)
    out += head.pack(first, last - first, shift) if head is _WIDE_TABLE else head.pack(first, last - first)
    out += weights[first : last + 1 : 1 << shift].tobytes()


def _read_table(data: memoryview, pos: int, k: int) -> tuple[NDArray[np.uint8], int]:
    head = _table_struct(k)
    if pos + head.size > len(data):
        raise FormatError("ans stream: truncated in its tables")
    first, span, *rest = head.unpack_from(data, pos)
    shift = rest[0] if rest else 0  # only wide tables store one
    span += 1
    pos += head.size
    runs = -(-span // (1 << min(shift, ANS_MAX_WIDE_SHIFT)))
    if shift > ANS_MAX_WIDE_SHIFT or first + span > k or pos + runs > len(data):
        raise FormatError(f"ans stream: table [{first}, {first + span}) in runs of 2^{shift} exceeds {k} symbols or the stream")
    w = np.zeros(k, dtype=np.uint8)
    stored = np.frombuffer(data, dtype=np.uint8, count=runs, offset=pos)
    w[first : first + span] = np.repeat(stored, 1 << shift)[:span] if shift else stored
    if w[first] == 0 or w[first + span - 1] == 0:
        raise FormatError("ans stream: a table's span does not start and end on a present symbol")
    return w, pos + runs


# --- model choice -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Choice:
    """A model and what it costs on some codes: header and tables, and the coded codes (ideal bits)."""

    model: Model
    table_bytes: int
    data_bits: float

    @property
    def bytes(self) -> float:
        """Stream size to within the final state's rounding."""
        return FRAME_BYTES + (_NEIGHBOURS.size if self.model.contexts > 1 else 0) + self.table_bytes + self.data_bits / 8


def _ranges(joint: NDArray[np.int64], precision: int) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """Cost (bits, table bytes) of the ranges a context model merges rows of `joint` into: each
    prefix [0, b], each single row, each suffix [a, rows-1] (3 x rows ranges, in that order)."""
    rows = joint.shape[0]
    cum = np.cumsum(joint, axis=0)
    merged = np.concatenate([cum, joint, cum[-1] - np.concatenate([np.zeros((1, joint.shape[1]), np.int64), cum[:-1]])])
    bits = np.zeros(3 * rows)
    used = merged.sum(axis=1) > 0
    if used.any():
        bits[used] = cost_bits(merged[used], precision)
    return bits, table_bytes(merged)


def choose(codes: NDArray[np.uint8], bits: int, contexts: bool = True) -> tuple[Choice, Choice | None]:
    """The cheapest model for the codes, and the cheapest with more than one context (None when
    `contexts` is False or no such model applies).

    Every model of the family is priced exactly from counts: for each magnitude rule and window the
    joint counts of (half-octave of the window's sum, code) are taken once, and a model with C
    contexts from offset o merges those rows into C contiguous ranges.
    """
    k = 1 << bits
    hist = np.bincount(codes, minlength=k).astype(np.int64)
    if bits > BYTE_BITS and codes.size:
        _, _, wide_bytes, wide_bits = wide_table(hist)
        return Choice(Model(), wide_bytes, wide_bits), None
    order0 = Choice(Model(), int(table_bytes(hist)[0]), float(cost_bits(hist, ANS_PRECISION)[0]) if codes.size else 0.0)
    if not contexts or codes.size == 0 or np.count_nonzero(hist) < 2:
        return order0, None
    rules = [Model(magnitude=ANS_MAGNITUDE_CENTER, center=int(hist.argmax()))]
    if bits >= 2:
        rules.append(Model(magnitude=ANS_MAGNITUDE_SIGN))
    best: Choice | None = None
    for rule in rules:
        mag = rule.magnitudes(bits)
        for window, sums in _window_sums(codes, mag, max(WINDOWS)):
            if window not in WINDOWS:
                continue
            hb = half_octaves(window * int(mag.max())).astype(np.int32)[sums]
            rows = int(hb.max()) + 1
            hb *= k
            hb += codes
            joint = np.bincount(hb, minlength=rows * k).reshape(rows, k)
            cost, size = _ranges(joint, ANS_PRECISION)
            diag_cost = np.concatenate([[0.0], np.cumsum(cost[rows : 2 * rows])])
            diag_size = np.concatenate([[0], np.cumsum(size[rows : 2 * rows])])
            for c in CONTEXTS:
                if c > rows:
                    break
                # context 0 takes hb rows 0..o, context j row o+j (j = 1 .. c-2), context c-1 rows o+c-1..;
                # every offset o at once, from prefix, single-row and suffix costs
                o = np.arange(min(ANS_MAX_OFFSET, rows - c) + 1)
                data = cost[o] + (diag_cost[o + c - 1] - diag_cost[o + 1]) + cost[2 * rows + o + c - 1]
                tables = size[o] + (diag_size[o + c - 1] - diag_size[o + 1]) + size[2 * rows + o + c - 1]
                total = tables + data / 8
                i = int(np.argmin(total))  # the first of the smallest: the same choice on every machine
                choice = Choice(Model(c, window, int(o[i]), rule.magnitude, rule.center), int(tables[i]), float(data[i]))
                if best is None or choice.bytes < best.bytes:
                    best = choice
    chosen = best if best is not None and best.bytes < order0.bytes else order0
    return chosen, best


# --- the stream -------------------------------------------------------------------------------


def choose_precision(counts: NDArray[np.int64], weights: NDArray[np.uint8]) -> int:
    """The lowest table precision (of PRECISIONS) whose coded bits stay within PRECISION_SLACK of the
    finest's: the decoder's slot -> symbol tables are 2^P bytes per context, and at 2^15 a dozen
    contexts no longer fit the CPU's fast cache (decoding drops from above 100 to about 70 M codes/s)."""
    def coded(p: int) -> float:
        try:
            return float(coded_bits(counts, frequencies(weights, p), p).sum())
        except FormatError:  # more present codes than the table has slots at this precision
            return math.inf

    finest = coded(ANS_PRECISION)
    if not math.isfinite(finest):
        raise FormatError(f"ans stream: more distinct codes than {1 << ANS_PRECISION} table slots")
    return next((p for p in PRECISIONS if coded(p) <= finest * (1 + PRECISION_SLACK)), ANS_PRECISION)


def _profiled(counts: NDArray[np.int64], zero_code: int, plain_tables: int,
              plain: float) -> tuple[NDArray[np.uint8], int, bytearray] | None:
    """(weights, precision, tables) with a profile table per context, where that makes the stream
    smaller than `plain` bytes (`plain_tables` of weight-per-symbol tables, then the codes); None
    where it does not, or where those tables are too small a share of the stream for a profile to pay."""
    k = counts.shape[1]
    if plain_tables <= PROFILE_WORTH * plain:
        return None
    rows, tables = [], bytearray()
    try:
        for row in counts:
            if row.any():
                first, span, peak, knots, _ = fit_profile(row, ANS_PRECISION)
            else:  # a context no code falls in: its zero code alone
                first, span, peak, knots = zero_code, 1, 0, np.array([255], dtype=np.uint8)
            _write_profile(tables, k, first, span, peak, knots)
            rows.append(profile_weights(k, first, span, peak, knots)[0])
        weights = np.stack(rows)
        precision = choose_precision(counts, weights)
    except FormatError:  # a span of more symbols than a table has slots
        return None
    size = len(tables) + float(coded_bits(counts, frequencies(weights, precision), precision).sum()) / 8
    return (weights, precision, tables) if size < plain else None


def encode_codes(codes: NDArray[np.uint8], bits: int, model: Model | None = None) -> bytes | None:
    """The ans stream of `codes` (each < 2^bits), with the cheapest model unless one is given; None
    when no table can hold them (wide codes with more distinct values than a table has slots)."""
    codes = np.ascontiguousarray(codes, dtype=code_dtype(bits)).reshape(-1)
    if model is not None and model.contexts > 1 and bits > BYTE_BITS:
        raise ValueError("context models take codes of at most 8 bits")
    try:
        if model is None:  # wide codes: order 0, priced with the table below
            model = Model() if bits > BYTE_BITS else choose(codes, bits)[0].model
        k = 1 << bits
        ctx = contexts_of(codes, bits, model)
        counts = np.bincount(ctx.astype(np.int64) * k + codes, minlength=model.contexts * k).reshape(model.contexts, k)
        weights = table_weights(counts, model.zero_code)
        shift = 0
        if bits > BYTE_BITS and codes.size:
            weights[0], shift, _, _ = wide_table(counts[0])
        precision = choose_precision(counts, weights)
    except FormatError:  # more present codes than a table has slots
        return None
    tables = bytearray()
    for c in range(model.contexts):
        _write_table(tables, weights[c], shift)
    plain = len(tables) + float(coded_bits(counts, frequencies(weights, precision), precision).sum()) / 8
    profiled = _profiled(counts, model.zero_code, len(tables), plain)
    if profiled is not None:
        weights, precision, tables = profiled
    kind = ANS_MODEL_ORDER0 if model.contexts == 1 else ANS_MODEL_NEIGHBOURS
    out = bytearray(_HEAD.pack(ANS_VERSION, bits, precision, kind | (ANS_PROFILE if profiled is not None else 0)))
    if model.contexts > 1:
        out += _NEIGHBOURS.pack(model.window, model.contexts, model.offset, model.magnitude, model.center)
    out += tables
    freq = frequencies(weights, precision).astype(np.uint32)
    cum = np.zeros_like(freq)
    np.cumsum(freq[:, :-1], axis=1, out=cum[:, 1:])
    x, words = rans.encode(codes, ctx, freq, cum, precision)
    out += _STATE.pack(x)
    out += words.astype("<u2").tobytes()
    return bytes(out)


@dataclass(frozen=True)
class _Header:
    bits: int
    precision: int
    model: Model
    weights: NDArray[np.uint8]  # contexts x 2^bits
    state: int
    words: NDArray[np.uint16]


def _parse(stored: memoryview, bits: int) -> _Header:
    data = memoryview(stored).cast("B")
    if len(data) < _HEAD.size:
        raise FormatError("ans stream: truncated header")
    version, sbits, precision, kind = _HEAD.unpack_from(data, 0)
    if version != ANS_VERSION:
        raise FormatError(f"ans stream: version {version}, expected {ANS_VERSION}")
    if sbits != bits:
        raise FormatError(f"ans stream: codes of {sbits} bits, expected {bits}")
    if not 1 <= precision <= ANS_PRECISION:
        raise FormatError(f"ans stream: precision {precision} outside 1..{ANS_PRECISION}")
    pos = _HEAD.size
    k = 1 << bits
    read_table = _read_profile if kind & ANS_PROFILE else _read_table
    model_kind = kind & ~ANS_PROFILE
    if model_kind == ANS_MODEL_ORDER0:
        model = Model()
    elif model_kind == ANS_MODEL_NEIGHBOURS:
        if len(data) < pos + _NEIGHBOURS.size:
            raise FormatError("ans stream: truncated model")
        window, contexts, offset, magnitude, center = _NEIGHBOURS.unpack_from(data, pos)
        pos += _NEIGHBOURS.size
        if not (bits <= BYTE_BITS and 1 <= window <= ANS_MAX_WINDOW and 2 <= contexts <= ANS_MAX_CONTEXTS and offset <= ANS_MAX_OFFSET
                and magnitude in (ANS_MAGNITUDE_CENTER, ANS_MAGNITUDE_SIGN) and center < k
                and not (magnitude == ANS_MAGNITUDE_SIGN and (bits < 2 or center != 0))):
            raise FormatError(f"ans stream: invalid neighbourhood model {(window, contexts, offset, magnitude, center)}")
        model = Model(contexts, window, offset, magnitude, center)
    else:
        raise FormatError(f"ans stream: unknown model {kind}")
    weights = np.zeros((model.contexts, k), dtype=np.uint8)
    for c in range(model.contexts):
        weights[c], pos = read_table(data, pos, k)
    if len(data) < pos + _STATE.size or (len(data) - pos - _STATE.size) % 2:
        raise FormatError("ans stream: truncated state or an odd number of word bytes")
    (state,) = _STATE.unpack_from(data, pos)
    if state < ANS_STATE_LOW:
        raise FormatError(f"ans stream: initial state {state:#x} below 2^16")
    pos += _STATE.size
    words = np.frombuffer(data, dtype="<u2", offset=pos)
    return _Header(bits, precision, model, weights, state, words)


def decode_codes(stored: memoryview | bytes, bits: int, count: int, out: bytearray | None = None) -> bytearray:
    """The packed stream (packed_size(count, bits) bytes) of an ans stream, or FormatError.

    Memory stays within the packed output plus one chunk of codes, whatever the stream claims:
    the number of codes comes from the caller, and every read is checked against the stream.
    """
    h = _parse(memoryview(stored), bits)
    m = h.model
    k = 1 << bits
    freq = frequencies(h.weights, h.precision).astype(np.uint32)
    cum = np.zeros_like(freq)
    np.cumsum(freq[:, :-1], axis=1, out=cum[:, 1:])
    dtype = code_dtype(bits)
    lut = np.empty((m.contexts, 1 << h.precision), dtype=dtype)  # slot -> symbol
    for c in range(m.contexts):
        lut[c] = np.repeat(np.arange(k, dtype=dtype), freq[c])
    result = out if out is not None else bytearray(packed_size(count, bits))
    view = np.frombuffer(result, dtype=np.uint8)
    k = m.window
    buf = np.empty(k + min(count, _CHUNK), dtype=dtype)  # the window's codes, then a chunk
    buf[:k] = m.zero_code
    x, ptr, total = h.state, 0, 0
    if m.contexts > 1:
        ctxmap, mag = context_map(m, bits), m.magnitudes(bits)
    done = 0
    while done < count:
        n = min(_CHUNK, count - done)
        part = buf[k : k + n]
        if m.contexts == 1:
            x, ptr = rans.decode0(h.words, x, lut[0], freq[0], cum[0], h.precision, part, ptr)
        else:
            x, ptr, total = rans.decode_ctx(h.words, x, lut, freq, cum, h.precision, buf[: k + n], ptr, ctxmap, mag, total, k)
        if ptr < 0:
            raise FormatError(f"ans stream: runs out of words before code {count:,}")
        start = done * bits // 8
        view[start : start + packed_size(n, bits)] = pack(part, bits)
        buf[:k] = buf[n : n + k]  # the last k codes lead the next chunk
        done += n
    if x != ANS_STATE_LOW or ptr != h.words.size:
        raise FormatError(f"ans stream: does not end where it should (state {x:#x}, {h.words.size - ptr} words left)")
    return result


def decode_raw(stored: memoryview | bytes, bits: int, count: int) -> NDArray[np.uint8]:
    """The codes of an ans stream, unpacked (for tests and measurements)."""
    return unpack(np.frombuffer(decode_codes(stored, bits, count), dtype=np.uint8), bits, count)
