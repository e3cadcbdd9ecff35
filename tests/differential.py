"""Differential fuzzing of the two .qpk readers: each mutant of tests/fuzz_qpk.py is read by the Python
reader and by qpk.h, and their verdicts are compared file by file and tensor by tensor.

Python: QpkReader, every blob's checksum, the graph's (verify()'s part that is no tensor's), then
dequantize() of each tensor. C: the test driver's `diff` mode (tests/c/qpk_driver.c): qpk_open into a
workspace of qpk_open_size bytes, then qpk_get_tensor, qpk_find, qpk_unpack and the whole and ranged
decodes of each tensor. A file is refused by both, or read by both with every tensor either refused
by both or decoded by both to the same float32 bits. Where qpk.h reads less or refuses more by
design, the case is named in KNOWN (docs/exports-and-firmware.md explains each); anything else is a
disagreement, kept by its input number (tests/fuzz_qpk.py makes the same mutant from it anywhere).

Used by tests/test_differential.py (a short run) and bench/differential_qpk.py (a long one).
"""

from __future__ import annotations

import collections
import hashlib
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from qpack.converter.export import qpk_h
from qpack.formats.errors import FormatError
from qpack.formats.qpk import CODECS, RAW, ZSTD, BlobKind, QpkReader
from qpack.formats.qpk.spec import HEADER, HEADER_SIZE, MAX_BLOBS, MAX_TENSORS
from tests import fuzz_qpk as F

QPK_E_CODEC, QPK_E_LIMIT = qpk_h.define("QPK_E_CODEC"), qpk_h.define("QPK_E_LIMIT")

# What qpk.h does otherwise than the Python reader on purpose. Each is recognised from the file
# itself, never from the C reader's answer alone.
KNOWN = {
    "zstd graph": "a graph blob stored with zstd: qpk.h has no zstd, so it checks the blob's checksum and budget, "
                  "not what it decompresses to (graph_sha256)",
    "coded blob": "a tensor's codes stored with zstd, or a parameter blob with any codec: qpk.h does not decode "
                  "them (QPK_E_CODEC), so it cannot judge them",
    "map key given twice": "a field qpk.h reads given twice in one map: qpk.h refuses it, Python keeps the last",
    "extension type": "a msgpack extension type anywhere in the metadata: qpk.h refuses it",
    "dimension past 2^32 - 1": "a tensor with a dimension above 2^32 - 1 (holding no weights): qpk_tensor's shape "
                               "is uint32_t (QPK_E_LIMIT)",
}
# fields qpk.h reads from the metadata's top map and from a tensor entry (a copy given twice is refused there)
TOP_FIELDS = frozenset(("format", "graph", "tensors", "blobs", "graph_sha256"))
ENTRY_FIELDS = frozenset(("name", "key", "shape", "dtype", "scheme", "bits", "axis", "block", "codes", "params", "param_dtypes"))
# tensors above this many weights are not decoded (a hostile count can ask for gigabytes of floats in
# both readers alike: what that measures is memory, not agreement); such files are counted apart
MAX_COUNT = 1 << 24
U32_MAX = 2**32 - 1


@dataclass
class PythonSide:
    opened: bool  # opened, every blob's checksum right, and a raw graph's checksum too (qpk_open checks those)
    graph_ok: bool = True  # the graph decompresses to its checksum
    tensors: list[str | None] = field(default_factory=list)  # sha256 of each tensor's float32 bytes, None: refused
    coded: list[bool] = field(default_factory=list)  # a blob qpk.h does not decode
    wide: list[bool] = field(default_factory=list)  # a dimension past 2^32 - 1
    oversized: bool = False  # a tensor above MAX_COUNT weights: not compared


@dataclass
class CSide:
    open: int  # qpk_open's rc
    tensors: list[tuple[int, str | None]]  # per tensor: rc, sha256 of the floats when 0


def _sha(values: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(values, dtype="<f4").tobytes()).hexdigest()


def _graph_ok(q: QpkReader) -> bool:
    """What verify() checks of the graph: it decompresses, a chunk at a time, to its checksum."""
    blob = q.blobs[q.graph_index]
    h = hashlib.sha256()
    try:
        for chunk in CODECS[blob.codec].chunks(q.blob_view(q.graph_index, BlobKind.GRAPH), blob.raw_length):
            h.update(chunk)
    except FormatError:
        return False
    return q.meta.get("graph_sha256") == h.hexdigest()


def python_side(path: Path) -> PythonSide:
    try:
        q = QpkReader(path)
    except FormatError:
        return PythonSide(False)
    with q:
        try:
            for i, blob in enumerate(q.blobs):
                q.blob_view(i, blob.kind)
        except FormatError:
            return PythonSide(False)
        graph_ok = _graph_ok(q)
        if not graph_ok and q.blobs[q.graph_index].codec == RAW.id:
            return PythonSide(False)
        side = PythonSide(True, graph_ok)
        side.coded = [q.blobs[e.codes].codec == ZSTD.id or any(q.blobs[i].codec != RAW.id for i in e.params.values())
                      for e in q.entries]
        side.wide = [any(n > U32_MAX for n in e.shape) for e in q.entries]
        if any(e.count > MAX_COUNT for e in q.entries):
            side.oversized = True
            return side
        for e in q.entries:
            try:
                side.tensors.append(_sha(q.dequantize(e)))
            except FormatError:
                side.tensors.append(None)
    return side


def c_sides(driver: Path, paths: list[Path], timeout: float = 600) -> list[CSide]:
    """The driver's `diff` lines for `paths`, in one process; a crash (a sanitizer report) names the file."""
    r = subprocess.run([str(driver), "diff", *map(str, paths)], capture_output=True, text=True, timeout=timeout)
    lines = r.stdout.split("\n")[:-1]
    if r.returncode != 0 or len(lines) != len(paths):
        at = paths[len(lines)] if len(lines) < len(paths) else "?"
        raise AssertionError(f"qpk_driver diff exited {r.returncode} on {at}\n{r.stderr[-4000:]}")
    out = []
    for line in lines:
        head, *rest = line.split()
        tensors = []
        for item in rest:
            rc, sha = item.split(":")
            tensors.append((int(rc), None if sha == "-" else sha))
        out.append(CSide(int(head), tensors))
    return out


class _Map(dict[Any, Any]):
    """A map as msgpack gave it, and the keys it gave more than once."""

    twice: frozenset[Any] = frozenset()


_EXT = (msgpack.ExtType, msgpack.Timestamp)  # timestamps (extension type -1) come as objects


def c_stricter(meta: bytes) -> str | None:
    """The KNOWN reason qpk.h refuses metadata the Python reader takes, or None. Every container is
    looked at as msgpack builds it: a value a later copy of its key replaced counts too."""
    exts: list[bool] = []

    def array(items: list[Any]) -> list[Any]:
        if any(isinstance(v, _EXT) for v in items):
            exts.append(True)
        return items

    def pairs(items: list[tuple[Any, Any]]) -> _Map:
        out, twice = _Map(), set()
        for k, v in items:
            if isinstance(k, _EXT) or isinstance(v, _EXT):
                exts.append(True)
            if k in out:
                twice.add(k)
            out[k] = v
        out.twice = frozenset(twice)
        return out

    try:
        tree = msgpack.unpackb(meta, raw=False, strict_map_key=False, object_pairs_hook=pairs, list_hook=array,
                               max_array_len=MAX_BLOBS, max_map_len=2 * MAX_TENSORS)
    except Exception:  # msgpack raises several unrelated types; the Python reader refused such a file
        return None
    if exts:
        return "extension type"
    if isinstance(tree, _Map):
        if tree.twice & TOP_FIELDS:
            return "map key given twice"
        tensors = tree.get("tensors")
        for e in tensors if isinstance(tensors, list) else ():
            if isinstance(e, _Map) and (e.twice & ENTRY_FIELDS or any(isinstance(e.get(k), _Map) and e[k].twice
                                                                     for k in ("params", "param_dtypes"))):
                return "map key given twice"
    return None


def metadata(path: Path) -> bytes:
    data = path.read_bytes()
    if len(data) < HEADER_SIZE:
        return b""
    meta_len = HEADER.unpack_from(data)[4]
    return data[HEADER_SIZE : HEADER_SIZE + meta_len]


def compare(py: PythonSide, c: CSide, meta: bytes) -> str:
    """One file's outcome: "agree: ...", "known: <KNOWN key>" or "disagree: ..."."""
    if not py.opened:
        return "agree: both refuse the file" if c.open != 0 else "disagree: qpk.h reads a file Python refuses"
    if c.open != 0:
        why = c_stricter(meta)
        return f"known: {why}" if why else f"disagree: qpk.h refuses a file Python reads ({c.open})"
    if len(c.tensors) != len(py.tensors):
        return f"disagree: {len(c.tensors)} tensors in qpk.h, {len(py.tensors)} in Python"
    known = []
    for i, (p, (rc, sha)) in enumerate(zip(py.tensors, c.tensors)):
        if (rc == 0 and p == sha) or (rc != 0 and p is None):
            continue
        if rc == QPK_E_CODEC and py.coded[i]:
            known.append("coded blob")
        elif rc == QPK_E_LIMIT and py.wide[i]:
            known.append("dimension past 2^32 - 1")
        elif rc == 0:
            return "disagree: qpk.h decodes a tensor Python refuses" if p is None else "disagree: decoded values differ"
        else:
            return f"disagree: qpk.h refuses a tensor Python decodes ({rc})"
    if not py.graph_ok:
        known.append("zstd graph")
    if known:
        return f"known: {known[0]}"
    if None in py.tensors:
        return "agree: both read the file and refuse a tensor"
    return "agree: both read every tensor"


@dataclass
class Tally:
    cases: int = 0
    outcomes: collections.Counter[str] = field(default_factory=collections.Counter)
    disagreements: list[tuple[int, str]] = field(default_factory=list)  # (input number, outcome)

    def add(self, other: Tally) -> None:
        self.cases += other.cases
        self.outcomes.update(other.outcomes)
        self.disagreements += other.disagreements


def run(seeds: list[bytes], numbers: Iterable[int], driver: Path, scratch: Path, cache: dict[int, F.Parts] | None = None,
        keep: Path | None = None) -> Tally:
    """Mutants `numbers` through both readers (qpk.h in one driver process); `keep`: a folder where the
    inputs of disagreements are saved."""
    tally = Tally()
    cases: list[tuple[int, Path, PythonSide]] = []
    for n in numbers:
        path = scratch / f"d{n}.qpk"
        path.write_bytes(F.mutant(seeds, n, cache))
        py = python_side(path)
        if py.oversized:
            tally.cases += 1
            tally.outcomes["skipped: a tensor above 2^24 weights"] += 1
            path.unlink()
            continue
        cases.append((n, path, py))
    for (n, path, py), c in zip(cases, c_sides(driver, [p for _, p, _ in cases])):
        outcome = compare(py, c, metadata(path))
        tally.cases += 1
        tally.outcomes[outcome] += 1
        if outcome.startswith("disagree"):
            tally.disagreements.append((n, outcome))
            if keep is not None:
                keep.mkdir(parents=True, exist_ok=True)
                data = path.read_bytes()
                (keep / f"{hashlib.sha256(data).hexdigest()[:16]}.qpk").write_bytes(data)
        path.unlink()
    return tally
