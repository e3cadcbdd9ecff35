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

from qpack.formats.errors import OptionError
from qpack.formats.qpk.grouping import Grouping

Params = dict[str, NDArray]


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

    def check_bits(self, bits: int) -> None:
        if not self.min_bits <= bits <= self.max_bits:
            raise OptionError(f"scheme '{self.name}' takes {self.min_bits}..{self.max_bits} bits, not {bits}")

    @functools.cached_property
    def dtypes(self) -> dict[str, str]:
        return {p.name: p.dtype for p in self.params}

    def dequantize(self, codes: NDArray[np.uint8], params: Params, bits: int, grouping: Grouping) -> NDArray[np.float32]:
        # float32 arithmetic as FORMAT.md writes it: parameters a file may hold (a NaN scale, an exponent
        # past float32's range) give NaN or inf, as IEEE 754 defines, without warnings on the user's terminal
        with np.errstate(over="ignore", invalid="ignore", under="ignore"):
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
    out -= np.float32((1 << (bits - 1)) - 1)
    out *= _group(params["scale"], codes, grouping, "<f4")
    return out


def _pow2(codes, params, bits, grouping):
    top = (1 << (bits - 1)) - 1
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
    k -= np.int32((1 << (bits - 1)) - 1)
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


_SCALE = ParamSpec("scale", "<f4", others=("<f2",))
register_scheme(SchemeSpec("asym", 1, 8, (_SCALE, ParamSpec("zero_point", "<u1")), lambda bits: 1 << bits, _asym))
register_scheme(SchemeSpec("sym", 2, 16, (_SCALE,), lambda bits: (1 << bits) - 1, _sym))
register_scheme(SchemeSpec("lut", 1, 8, (ParamSpec("centroids", "<f2", lambda bits: 1 << bits, ("<f4",)),),
                           lambda bits: 1 << bits, _lut))
register_scheme(SchemeSpec("dq", 2, 16, (_SCALE,), lambda bits: 4 * ((1 << (bits - 1)) - 1) + 1, _dq, blocks=False))
register_scheme(SchemeSpec("pow2", 2, 8, (ParamSpec("emax", "<i2"),), lambda bits: 2 * ((1 << (bits - 1)) - 1) + 1, _pow2))
