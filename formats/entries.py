"""Tensor records stored in .qpk metadata, validated field by field before any use."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeGuard

import numpy as np

from formats.constants import MAX_BITS, MAX_NAME_LENGTH, MAX_RANK, MAX_TENSORS, MIN_BITS, SCHEMES
from formats.errors import FormatError
from formats.model import FLOAT_DTYPES

PARAM_DTYPES = {"scale": "<f4", "zero_point": "<u1", "emax": "<i2"}
SCHEME_PARAMS = {"asym": ("scale", "zero_point"), "sym": ("scale",), "pow2": ("emax",)}


def _bad(where: str, what: str) -> FormatError:
    return FormatError(f"{where}: {what}")


def _int(v: Any) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True)
class TensorEntry:
    """One quantized tensor: where its codes and parameters are, and how to read them."""

    name: str
    key: str
    shape: tuple[int, ...]
    dtype: str
    role: str
    scheme: str
    bits: int
    axis: int | None
    codes: int
    params: dict[str, int]

    @property
    def count(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def groups(self) -> int:
        return 1 if self.axis is None else self.shape[self.axis]

    def to_meta(self) -> dict[str, Any]:
        return {"name": self.name, "key": self.key, "shape": list(self.shape), "dtype": self.dtype, "role": self.role,
                "scheme": self.scheme, "bits": self.bits, "axis": self.axis, "codes": self.codes, "params": dict(self.params)}

    @classmethod
    def from_meta(cls, m: Any, index: int) -> TensorEntry:
        where = f"tensor {index}"
        if not isinstance(m, dict):
            raise _bad(where, "entry is not a map")
        name: Any = m.get("name")
        key: Any = m.get("key")
        if not (isinstance(name, str) and isinstance(key, str) and 0 < len(key) <= MAX_NAME_LENGTH and len(name) <= MAX_NAME_LENGTH):
            raise _bad(where, "name or key missing or too long")
        where = f"tensor '{name}'"
        shape = m.get("shape")
        if not (isinstance(shape, list) and len(shape) <= MAX_RANK and all(_int(n) and 0 <= n < 2**40 for n in shape)):
            raise _bad(where, f"bad shape {shape!r}")
        if int(np.prod(shape, dtype=np.float64)) >= 2**48:
            raise _bad(where, f"shape {shape} is implausibly large")
        dtype, scheme, bits, axis = m.get("dtype"), m.get("scheme"), m.get("bits"), m.get("axis")
        if dtype not in FLOAT_DTYPES:
            raise _bad(where, f"source dtype {dtype!r} is not a float type")
        if scheme not in SCHEMES:
            raise _bad(where, f"unknown scheme {scheme!r}")
        if not (_int(bits) and MIN_BITS <= bits <= MAX_BITS):
            raise _bad(where, f"bit width {bits!r} outside {MIN_BITS}..{MAX_BITS}")
        if not (axis is None or (_int(axis) and 0 <= axis < len(shape))):
            raise _bad(where, f"axis {axis!r} invalid for rank {len(shape)}")
        params = m.get("params")
        if not (isinstance(params, dict) and set(params) == set(SCHEME_PARAMS[scheme]) and all(_int(v) for v in params.values())):
            raise _bad(where, f"parameters {params!r} do not fit scheme {scheme}")
        codes = m.get("codes")
        if not _int(codes):
            raise _bad(where, "codes blob index missing")
        return cls(name, key, tuple(shape), dtype, str(m.get("role", "")), scheme, bits, axis, codes, params)


def parse_tensors(rows: Any) -> list[TensorEntry]:
    """Validate the metadata's tensor list; keys must be unique."""
    if not isinstance(rows, list) or len(rows) > MAX_TENSORS:
        raise FormatError("metadata tensor list is missing or too long")
    entries = [TensorEntry.from_meta(m, i) for i, m in enumerate(rows)]
    keys = [e.key for e in entries]
    if len(set(keys)) != len(keys):
        raise FormatError("metadata lists a tensor twice")
    return entries
