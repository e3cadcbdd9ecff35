"""The scheme table of FORMAT.md: each scheme's code widths, its parameters and how codes decode.

A row is all a reader needs to check a tensor entry and turn its codes back into floats; the
quantizers in `converter.quant` read their bit range and parameter dtypes from here. A new scheme
registers one `SchemeSpec`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from qpack.formats.errors import OptionError, UnsupportedError
from qpack.formats.qpk.grouping import Grouping
from qpack.formats.qpk.spec import POW2_EMAX_MAX, POW2_EMAX_MIN

Params = dict[str, NDArray]
# A tensor as integers q (tensor-shaped) with a scale and an optional zero point per group (flat, in
# group order): value = (q - zero_point) * scale exactly, how ONNX, TFLite and C kernels take weights.
IntegerForm = tuple[NDArray[np.int32], NDArray[np.float32], NDArray[np.int32] | None]
ToIntegers = Callable[[NDArray[np.uint8], Params, int, Grouping], IntegerForm]
Figures = Callable[[NDArray[np.uint8], Params, int, Grouping], dict]
# the first parameter value outside the scheme's range (FORMAT.md "Parameter ranges"), described, or None
Ranges = Callable[[Params, int], str | None]

# 2^30 is the largest power of two an int32 holds, and float32 represents it exactly
_MAX_POW2_SPAN = 30


def midpoint(bits: int) -> int:
    """M = 2^(bits-1) - 1 (FORMAT.md): the code of 0 in sym and dq, the top exponent code of pow2."""
    return (1 << (bits - 1)) - 1


@dataclass(frozen=True)
class ParamSpec:
    """One parameter: its little-endian dtype and how many values each group stores at a width."""

    name: str
    dtype: str  # the default
    per_group: Callable[[int], int] = lambda bits: 1
    others: tuple[str, ...] = ()  # other dtypes a writer may choose per tensor (recorded in `param_dtypes`)

    @property
    def dtypes(self) -> tuple[str, ...]:
        return (self.dtype, *self.others)

    def count(self, bits: int, groups: int) -> int:
        return self.per_group(bits) * groups


Decode = Callable[[NDArray[np.uint8], Params, int, Grouping], NDArray[np.float32]]


@dataclass(frozen=True)
class SchemeSpec:
    name: str
    min_bits: int
    max_bits: int
    params: tuple[ParamSpec, ...]
    levels: Callable[[int], int]  # distinct values the codes can represent at a width
    decode: Decode  # codes (tensor-shaped) and parameters -> float32 values, as FORMAT.md defines
    blocks: bool = True  # whether groups may be blocks (dq's codes run through the tensor in order: no)
    # the same values as integers and per-group scales (what runtimes and firmware execute), or None
    # where the scheme has no such form (a codebook)
    integers: ToIntegers | None = None
    signed: bool = False  # its integer form is symmetric around 0, with no zero point
    figures: Figures | None = None  # scheme-specific figures a report adds per tensor (pow2: exponents used)
    # where its parameters' values may lie, so that every code decodes to a finite float32 (None: anywhere)
    ranges: Ranges | None = None
    help: str = ""  # what a code means, in a few words (the CLI's help)
    # the width of its integer form's type at a code width (pow2's powers of two and dq's levels are wider)
    integer_bits: Callable[[int], int] = lambda bits: bits

    def check_bits(self, bits: int) -> None:
        if not self.min_bits <= bits <= self.max_bits:
            raise OptionError(f"scheme '{self.name}' takes {self.min_bits}..{self.max_bits} bits, not {bits}")

    @functools.cached_property
    def dtypes(self) -> dict[str, str]:
        return {p.name: p.dtype for p in self.params}

    def out_of_range(self, params: Params, bits: int) -> str | None:
        """The first parameter value (flat, in storage dtypes) outside the scheme's range, described
        ("parameter 'scale' of group 3 is nan, not a finite number"), or None: a reader refuses the
        tensor before using any of its values, so none decodes to NaN or infinity."""
        if self.ranges is None:
            return None
        with np.errstate(all="ignore"):  # the checks name NaN and overflow themselves: no numpy warning on the user's terminal
            return self.ranges(params, bits)

    def dequantize(self, codes: NDArray[np.uint8], params: Params, bits: int, grouping: Grouping) -> NDArray[np.float32]:
        """Float32 arithmetic as FORMAT.md writes it. Parameters within their ranges (out_of_range)
        give finite values; subnormal results are results too (no underflow warning)."""
        with np.errstate(under="ignore"):
            return self.decode(codes, params, bits, grouping)


SCHEMES: dict[str, SchemeSpec] = {}


def register_scheme(spec: SchemeSpec) -> SchemeSpec:
    """Add a scheme to the table readers and writers use; returns it."""
    SCHEMES[spec.name] = spec
    return spec


def scheme_spec(name: str) -> SchemeSpec:
    try:
        return SCHEMES[name]
    except KeyError:
        raise OptionError(f"unknown scheme '{name}', expected one of {', '.join(SCHEMES)}") from None


def _group(p: NDArray, codes: NDArray, grouping: Grouping, dtype: str) -> NDArray:
    return grouping.expand(np.asarray(p, dtype=dtype), codes.shape)


def _asym(codes, params, bits, grouping):
    out = codes.astype(np.float32)
    out -= _group(params["zero_point"], codes, grouping, "<f4")
    out *= _group(params["scale"], codes, grouping, "<f4")
    return out


def _sym(codes, params, bits, grouping):
    out = codes.astype(np.float32)
    out -= np.float32(midpoint(bits))
    out *= _group(params["scale"], codes, grouping, "<f4")
    return out


def _pow2(codes, params, bits, grouping):
    top = midpoint(bits)
    # every code's value for emax = 0; powers of two times powers of two stay exact
    m = np.arange(1 << bits) & top
    lut = np.where(m > 0, np.ldexp(1.0, m - top), 0.0)
    lut[1 << (bits - 1) :] *= -1
    out = lut.astype(np.float32)[codes]
    out *= np.ldexp(np.float32(1), _group(params["emax"], codes, grouping, "<i4"))
    return out


def dq_levels(codes: NDArray, bits: int, state: int = 0) -> tuple[NDArray[np.int32], int]:
    """The integer levels of dependent-quantization codes (x = level * scale), and the state after them.

    Code k = code - M is read by one of two quantizers: Q0 gives 2k, Q1 gives 2k - sign(k). A
    4-state machine picks the quantizer from the parities of the codes before: state s uses Q(s >> 1)
    and moves to 2 * ((s & 1) ^ (k & 1)) + (s >> 1). Written out, the quantizer of code i is that of
    code i - 2 XOR the parity of code i - 1, so each run of every other code is a cumulative XOR.
    `state`: the machine's state at the first code (0 at a tensor's first code).
    """
    k = codes.reshape(-1).astype(np.int32)
    k -= np.int32(midpoint(bits))
    n = k.size
    p = (k & 1).astype(np.uint8)
    q = np.empty(n + 1, dtype=np.uint8)  # the quantizer of each code, and of the code after the last
    q[0] = state >> 1
    q[1::2] = np.bitwise_xor.accumulate(p[0::2]) ^ np.uint8(state & 1)
    q[2::2] = np.bitwise_xor.accumulate(p[1::2]) ^ np.uint8(state >> 1)
    level = 2 * k
    level -= np.sign(k) * q[:n]
    after = 2 * int(q[n]) + int(q[n - 1]) if n else state
    return level.reshape(codes.shape), after


def _dq(codes, params, bits, grouping):
    out = dq_levels(codes, bits)[0].astype(np.float32)
    out *= _group(params["scale"], codes, grouping, "<f4")
    return out


def _lut(codes, params, bits, grouping):
    k = 1 << bits
    table = np.asarray(params["centroids"], dtype=np.float32).reshape(-1)
    groups = table.size // k
    if groups == 1:
        return table[codes]
    base = grouping.expand(np.arange(groups, dtype=np.int64) * k, codes.shape)
    return table[base + codes]


def _first(bad: NDArray[np.bool_]) -> int | None:
    return int(np.argmax(bad)) if bad.any() else None


def _finite(name: str, values: NDArray, per_group: int = 1) -> str | None:
    """Every value finite (float16 ones as float32, widened exactly)."""
    v = np.asarray(values).astype(np.float32).reshape(-1)
    i = _first(~np.isfinite(v))
    if i is None:
        return None
    where = f"group {i}" if per_group == 1 else f"group {i // per_group} (value {i % per_group})"
    return f"parameter '{name}' of {where} is {v[i]}, not a finite number"


# float32 rounds a value of this magnitude or more to infinity (half an ulp above its largest,
# 2^128 - 2^104, a tie that goes to the even 2^128)
_FLOAT32_OVERFLOW = 2.0**128 - 2.0**103


def _scaled(scale: NDArray, top: NDArray | int) -> str | None:
    """Each group's scale times the largest |level| its codes reach (`top`), one float32
    multiplication as dequantization makes it, is finite: no code's value overflows. The product is
    taken in float64, where it is exact (24 by at most 17 significant bits), and compared with the
    magnitude float32 rounds to infinity: the same verdict, without overflow in numpy."""
    s = np.asarray(scale).astype(np.float32).reshape(-1)
    levels = np.asarray(top, dtype=np.float64).reshape(-1)
    g = _first(~(np.abs(s * levels) < _FLOAT32_OVERFLOW))  # NaN compares false: out of range too
    if g is None:
        return None
    if not np.isfinite(s[g]):
        return f"parameter 'scale' of group {g} is {s[g]}, not a finite number"
    return f"parameter 'scale' of group {g} is {s[g]}: level {int(levels[g if levels.size > 1 else 0])} times it overflows float32"


def _asym_ranges(params: Params, bits: int) -> str | None:
    zp = np.asarray(params["zero_point"]).astype(np.int64).reshape(-1)
    top = (1 << bits) - 1  # codes 0..top: |code - zero_point| is largest at one end
    return _scaled(params["scale"], np.maximum(zp, top - zp))


def _pow2_ranges(params: Params, bits: int) -> str | None:
    e = np.asarray(params["emax"]).astype(np.int64).reshape(-1)
    g = _first((e < POW2_EMAX_MIN) | (e > POW2_EMAX_MAX))
    if g is None:
        return None
    return f"parameter 'emax' of group {g} is {e[g]}, outside {POW2_EMAX_MIN}..{POW2_EMAX_MAX}"


def _scales(params: Params) -> NDArray[np.float32]:
    return np.asarray(params["scale"]).astype(np.float32).reshape(-1)


def _asym_integers(codes, params, bits, grouping) -> IntegerForm:
    return codes.astype(np.int32), _scales(params), np.asarray(params["zero_point"]).astype(np.int32).reshape(-1)


def _sym_integers(codes, params, bits, grouping) -> IntegerForm:
    return codes.astype(np.int32) - np.int32(midpoint(bits)), _scales(params), None


def _dq_integers(codes, params, bits, grouping) -> IntegerForm:
    return dq_levels(codes, bits)[0], _scales(params), None


def _group_reduce(x: NDArray, grouping: Grouping, op: Callable) -> NDArray:
    view, axes = grouping.blocked(x)
    return op(view, axis=axes, keepdims=True).reshape(-1)


def _pow2_integers(codes, params, bits, grouping) -> IntegerForm:
    """q = ±2^(m - lo), scale = 2^(emax - M + lo), with lo the group's smallest exponent in use, so the
    integers are as small as the exponents a group really uses allow."""
    top = midpoint(bits)
    m = (codes & top).astype(np.int32)
    negative = (codes >> (bits - 1)).astype(bool)
    lo = _group_reduce(np.where(m > 0, m, top + 1), grouping, np.min)
    lo = np.where(lo > top, 1, lo)  # a group of zeros: any scale will do
    span = int((_group_reduce(m, grouping, np.max) - lo).max()) if m.size else 0
    if span > _MAX_POW2_SPAN:
        raise UnsupportedError(f"its pow2 exponents span 2^{span} within a group, more than an int32 holds")
    shift = np.maximum(m - grouping.expand(lo, codes.shape), 0)
    q = np.where(m > 0, np.left_shift(np.int32(1), shift.astype(np.int32)), 0).astype(np.int32)
    q[negative] *= -1
    emax = np.asarray(params["emax"]).astype(np.int32).reshape(-1)
    with np.errstate(over="ignore", under="ignore"):
        scale = np.ldexp(np.float32(1), (emax - top + lo).astype(np.int32)).astype(np.float32)
    return q, scale, None


def _pow2_figures(codes, params, bits, grouping) -> dict:
    """The window of exponents the codes use, and how many distinct ones (a shift-only kernel's range)."""
    top = midpoint(bits)
    m = codes & top
    nz = m > 0
    if not nz.any():
        return {"exponent_window": None, "exponents_used": 0}
    emax = np.asarray(params["emax"]).astype(np.int64)
    group = np.broadcast_to(grouping.expand(emax, codes.shape), codes.shape)
    exps = (group - top + m.astype(np.int64))[nz]
    return {"exponent_window": [int(exps.min()), int(exps.max())], "exponents_used": int(np.unique(exps).size)}


_SCALE = ParamSpec("scale", "<f4", others=("<f2",))
register_scheme(SchemeSpec("asym", 1, 8, (_SCALE, ParamSpec("zero_point", "<u1")), lambda bits: 1 << bits, _asym,
                           integers=_asym_integers, ranges=_asym_ranges, help="scale + zero point"))
# sym's codes reach k = code - M = 2^(n-1); dq's levels 2k, 2^n
register_scheme(SchemeSpec("sym", 2, 16, (_SCALE,), lambda bits: (1 << bits) - 1, _sym, integers=_sym_integers, signed=True,
                           ranges=lambda params, bits: _scaled(params["scale"], 1 << (bits - 1)), help="scale, symmetric around 0"))
register_scheme(SchemeSpec("lut", 1, 8, (ParamSpec("centroids", "<f2", lambda bits: 1 << bits, ("<f4",)),),
                           lambda bits: 1 << bits, _lut, ranges=lambda params, bits: _finite("centroids", params["centroids"], 1 << bits),
                           help="a codebook per group"))
register_scheme(SchemeSpec("dq", 2, 16, (_SCALE,), lambda bits: 4 * midpoint(bits) + 1, _dq, blocks=False,
                           integers=_dq_integers, signed=True, ranges=lambda params, bits: _scaled(params["scale"], 1 << bits),
                           help="sym levels chosen by a trellis (dependent quantization)",
                           integer_bits=lambda bits: bits + 1))  # levels up to 2^bits - 2 in magnitude
register_scheme(SchemeSpec("pow2", 2, 8, (ParamSpec("emax", "<i2"),), lambda bits: 2 * midpoint(bits) + 1, _pow2,
                           integers=_pow2_integers, signed=True, figures=_pow2_figures, ranges=_pow2_ranges,
                           help="sign + exponent (shifts)",
                           integer_bits=lambda bits: 1 << (bits - 1)))  # up to +-2^(M-1) where a group spans every exponent
