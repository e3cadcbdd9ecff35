"""The metadata schema: tensor entries and the top-level map, validated field by field before use."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard

from qpack.formats.errors import FormatError, brief, shown
from qpack.formats.qpk.codecs import CodeContext
from qpack.formats.qpk.grouping import Grouping
from qpack.formats.qpk.schemes import SCHEMES
from qpack.formats.qpk.spec import (
    DTYPE_SIZES,
    ENTRY_KEY_MINORS,
    FLOAT_DTYPES,
    MAX_DIM,
    MAX_ELEMENTS,
    MAX_META_DEPTH,
    MAX_NAME_LENGTH,
    MAX_RANK,
    MAX_TENSORS,
    SOURCE_FORMATS,
    VERSION_MINOR,
)


def _bad(where: str, what: str) -> FormatError:
    return FormatError(f"{where}: {what}")


def _bad_tensor(name: str, what: str) -> FormatError:
    return FormatError(f"tensor '{shown(name)}': {what}")  # built only on failure: entries are checked by the million


def is_int(v: Any) -> TypeGuard[int]:
    return type(v) is int  # msgpack gives plain ints; bool (an int subclass) is not a number here


_brief = brief
_NESTED = (dict, list, tuple)  # tuples: arrays used as map keys
# the keys of a tensor entry; all but `role` are checked field by field (from_meta), which refuses
# anything nested in them, as the blob table's checks do in its rows
_ENTRY_KEYS = frozenset(("name", "key", "shape", "dtype", "role", "scheme", "bits", "axis", "block", "codes", "params"))


def _nesting_within(level: list[Any], depth: int) -> bool:
    """Whether the maps and arrays in `level`, at `depth`, hold nothing nested past MAX_META_DEPTH.
    One level at a time, without recursion."""
    while level:
        if depth > MAX_META_DEPTH:
            return False
        below: list[Any] = []
        for v in level:
            if type(v) is dict:
                below += [x for x in v.values() if type(x) in _NESTED]
                below += [k for k in v if type(k) is tuple]
            else:
                below += [x for x in v if type(x) in _NESTED]
        level, depth = below, depth + 1
    return True


def check_nesting(meta: dict[Any, Any]) -> None:
    """Refuse metadata whose maps and arrays nest deeper than MAX_META_DEPTH (the format needs 4).

    Informative fields and unknown keys are walked here; the blob table and the checked fields of
    tensor entries are left to their own checks, which refuse a nested value there anyway, so a
    file with a million tensors is not walked twice.
    """
    top = [v for k, v in meta.items() if k not in ("blobs", "tensors") and type(v) in _NESTED]
    top += [k for k in meta if type(k) is tuple]
    entries = []
    tensors = meta.get("tensors")
    if type(tensors) is list:
        for e in tensors:
            if type(e) is dict:
                if not e.keys() <= _ENTRY_KEYS or type(e.get("role")) in _NESTED:
                    entries.append(e)
            elif type(e) in _NESTED:
                entries.append(e)
    if not (_nesting_within(top, 2) and _nesting_within(entries, 3)):
        raise FormatError(f"metadata nests deeper than {MAX_META_DEPTH} levels")


# Informative fields are shown to users and written to JSON reports: they are made plain (str
# keys, no bytes) and bounded, so a hostile file can neither crash rendering nor flood the output.
# The bounds are how much qpack shows, not format limits: a file past them is valid, only cut short.
_MAX_DEPTH, _MAX_ITEMS, _MAX_TEXT = 6, 1000, 1000


def plain(v: Any, depth: int = 0) -> Any:
    """A JSON-safe, bounded copy of an untrusted metadata value."""
    if v is None or isinstance(v, (bool, int, float)):
        return v if not isinstance(v, float) or v == v and abs(v) != float("inf") else str(v)
    if isinstance(v, str):
        return v[:_MAX_TEXT]
    if isinstance(v, (bytes, bytearray)):
        return bytes(v[: _MAX_TEXT // 2]).hex()
    if depth >= _MAX_DEPTH:
        return f"<{type(v).__name__} nested too deep>"
    if isinstance(v, dict):
        return {(k[:_MAX_TEXT] if isinstance(k, str) else brief(k)): plain(x, depth + 1) for k, x in list(v.items())[:_MAX_ITEMS]}
    if isinstance(v, (list, tuple)):
        return [plain(x, depth + 1) for x in v[:_MAX_ITEMS]]
    return brief(v)


def minor_version(tensors: Iterable[Mapping[str, Any]]) -> int:
    """The minor version a file with these tensor entries (as written, see TensorEntry.to_meta)
    declares: the highest that added a key they use, so a file without 1.1 keys stays a 1.0 file."""
    return max((ENTRY_KEY_MINORS.get(k, VERSION_MINOR) for t in tensors for k in t), default=VERSION_MINOR)


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
    grouping: Grouping
    codes: int
    params: dict[str, int]
    param_dtypes: dict[str, str] | None = None  # None: every parameter in its scheme's default dtype

    @property
    def dtypes(self) -> dict[str, str]:
        """Each parameter's storage dtype."""
        return dict(SCHEMES[self.scheme].dtypes, **(self.param_dtypes or {}))

    @property
    def axis(self) -> int | None:
        return self.grouping.axis

    @property
    def count(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def code_context(self) -> CodeContext:
        """What a codec that models codes needs to know about this tensor's code blob."""
        return CodeContext(self.bits, self.count, self.shape, self.grouping)

    @property
    def groups(self) -> int:
        return self.grouping.count(self.shape)

    def to_meta(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "key": self.key, "shape": list(self.shape), "dtype": self.dtype,
                               "role": self.role, "scheme": self.scheme, "bits": self.bits, "axis": self.grouping.axis}
        if self.grouping.block is not None:
            out["block"] = self.grouping.block
        out.update(codes=self.codes, params=dict(self.params))
        defaults = SCHEMES[self.scheme].dtypes
        other = {k: v for k, v in (self.param_dtypes or {}).items() if defaults.get(k) != v}
        if other:
            out["param_dtypes"] = other
        return out

    @classmethod
    def from_meta(cls, m: Any, index: int) -> TensorEntry:
        where = f"tensor {index}"
        if not isinstance(m, dict):
            raise _bad(where, "entry is not a map")
        name: Any = m.get("name")
        key: Any = m.get("key")
        if not (isinstance(name, str) and isinstance(key, str) and 0 < len(key) <= MAX_NAME_LENGTH and len(name) <= MAX_NAME_LENGTH):
            raise _bad(where, "name or key missing or too long")
        shape = m.get("shape")
        count = 1
        if type(shape) is not list or len(shape) > MAX_RANK:
            raise _bad_tensor(name, f"bad shape {_brief(shape)}")
        for n in shape:
            if type(n) is not int or not 0 <= n < MAX_DIM:
                raise _bad_tensor(name, f"bad shape {_brief(shape)}")
            count *= n
        if count >= MAX_ELEMENTS:
            raise _bad_tensor(name, f"shape {shape} is implausibly large")
        dtype, scheme, bits, axis, block = m.get("dtype"), m.get("scheme"), m.get("bits"), m.get("axis"), m.get("block")
        if dtype not in FLOAT_DTYPES:
            raise _bad_tensor(name, f"source dtype {_brief(dtype)} is not a float type")
        spec = SCHEMES.get(scheme) if isinstance(scheme, str) else None
        if spec is None:
            raise _bad_tensor(name, f"unknown scheme {_brief(scheme)}")
        if not (is_int(bits) and spec.min_bits <= bits <= spec.max_bits):
            raise _bad_tensor(name, f"bit width {_brief(bits)} outside {spec.min_bits}..{spec.max_bits} for scheme {scheme}")
        if not (axis is None or (is_int(axis) and 0 <= axis < len(shape))):
            raise _bad_tensor(name, f"axis {_brief(axis)} invalid for rank {len(shape)}")
        if block is not None and not (is_int(block) and 1 <= block < MAX_DIM and axis is not None):
            raise _bad_tensor(name, f"block {_brief(block)} needs an axis and a positive size under 2^40")
        if block is not None and not spec.blocks:
            raise _bad_tensor(name, f"scheme {scheme} has no blocked groups")
        params = m.get("params")
        if not (type(params) is dict and params.keys() == spec.dtypes.keys() and all(type(v) is int for v in params.values())):
            raise _bad_tensor(name, f"parameters {_brief(params)} do not fit scheme {scheme}")
        codes = m.get("codes")
        if not is_int(codes):
            raise _bad_tensor(name, "codes blob index missing")
        param_dtypes = m.get("param_dtypes")
        if param_dtypes is not None:
            allowed = {p.name: p.dtypes[1:] for p in spec.params}
            if not (type(param_dtypes) is dict and param_dtypes and all(
                    type(k) is str and v in allowed.get(k, ()) for k, v in param_dtypes.items())):
                raise _bad_tensor(name, f"parameter dtypes {_brief(param_dtypes)} are not among scheme {scheme}'s alternatives")
        role = m.get("role", "")
        return cls(name, key, tuple(shape), str(dtype), role if isinstance(role, str) else "", str(scheme), bits, Grouping(axis, block),
                   codes, params, param_dtypes)


def zeroed_bytes(entries: Iterable[TensorEntry]) -> int:
    """The quantized tensors' bytes in their own dtype: what a graph blob may hold as zeros."""
    return sum(e.count * DTYPE_SIZES[e.dtype] for e in entries)


def parse_tensors(rows: Any) -> list[TensorEntry]:
    """Validate the metadata's tensor list; keys must be unique."""
    if not isinstance(rows, list) or len(rows) > MAX_TENSORS:
        raise FormatError("metadata tensor list is missing or too long")
    entries = [TensorEntry.from_meta(m, i) for i, m in enumerate(rows)]
    keys = {e.key for e in entries}
    if len(keys) != len(entries):
        raise FormatError("metadata lists a tensor twice")
    return entries


def check_format(value: Any) -> str:
    if value not in SOURCE_FORMATS:
        raise FormatError(f"unknown source format {_brief(value)}")
    return str(value)


def parse_kept(rows: Any) -> list[dict[str, Any]]:
    """The informative list of tensors left in the graph, made plain; rows that are not maps are dropped."""
    if not isinstance(rows, list):
        return []
    return [plain(r) for r in rows[:MAX_TENSORS] if isinstance(r, dict)]


def kept_shape(row: dict[str, Any]) -> list[int]:
    """A kept row's shape, where it is one (a container's rows are informative, so checked before use)."""
    v = row.get("shape")
    if not isinstance(v, (list, tuple)) or len(v) > 16 or not all(type(d) is int and 0 <= d < 2**40 for d in v):
        return []
    return list(v)


def informative(meta: dict[str, Any]) -> dict[str, Any]:
    """The fields a reader only shows (writer version, source, options), made plain; a source that
    is not a map, or a size that is not a number, is replaced rather than trusted."""
    source = plain(meta.get("source")) if isinstance(meta.get("source"), dict) else {}
    if not (isinstance(source.get("bytes"), int) and not isinstance(source.get("bytes"), bool)):
        source.pop("bytes", None)
    if not isinstance(source.get("name"), str):
        source.pop("name", None)
    options = plain(meta.get("options")) if isinstance(meta.get("options"), dict) else {}
    qpack = meta.get("qpack")
    return {"qpack": qpack[:100] if isinstance(qpack, str) else None, "source": source, "options": options}


def build(qpack: str, fmt: str, source: dict[str, Any], options: dict[str, Any], graph: int, graph_sha256: str,
          tensors: list[TensorEntry], kept: list[dict[str, Any]]) -> dict[str, Any]:
    """The metadata map with its keys in FORMAT.md's order (the blob table is appended by the writer)."""
    return {"qpack": qpack, "format": check_format(fmt), "source": source, "options": options, "graph": graph,
            "graph_sha256": graph_sha256, "tensors": [t.to_meta() for t in tensors], "kept": kept}
