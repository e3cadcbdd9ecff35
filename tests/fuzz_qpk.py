"""Structure-aware fuzzing of the .qpk reader and of `inspect`: seed containers, a seeded mutator, a harness.

Seeds are real containers (the bundled sample at several schemes, widths, groupings and codecs, a
TFLite model, a tensor grouped in blocks). A mutant is derived from one seed by one of:
- edits of the metadata tree (values replaced, inserted or deleted at random paths, hostile values:
  extreme numbers, wrong types, deep nesting, maps with non-str or duplicated keys, ...), the file
  then re-signed (metadata SHA-256, header fields and CRC), so only the reader's checks stand in the way;
- edits of the payload (blob bytes flipped, swapped, replaced by zstd frames that lie about their
  size or really expand, codec ids switched), blobs laid out again and re-signed (blob SHA-256s,
  and the graph checksum when the graph changes);
- byte edits of the encoded metadata, re-signed;
- byte edits of the whole file (flips, truncations, insertions, splices with another seed).

The harness runs what `inspect` and `unpack` run on a file and checks that every outcome is a
success or a one-line QpackError, within a time and an allocation limit. Everything is a function
of the seed number, so a failing input is found again from its number.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import random
import re
import struct
import time
import traceback
import tracemalloc
import warnings
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from qpack.formats.errors import QpackError
from qpack.formats.qpk.spec import ALIGNMENT, HEADER, HEADER_BODY, HEADER_SIZE, MAGIC

TIME_LIMIT = 5.0  # seconds per input
ALLOC_LIMIT = 1 << 30  # peak bytes traced per input
ROOT = Path(__file__).resolve().parent.parent
CORPUS = Path(__file__).resolve().parent / "corpus" / "qpk"

# ---------------------------------------------------------------------------------------------
# seeds


def build_seeds(folder: Path) -> list[bytes]:
    """The seed containers, written under `folder` while they are built; returns their bytes."""
    from qpack.converter.convert import convert
    from qpack.converter.policy import Policy
    from qpack.formats.onnx_model import OnnxModel
    from qpack.formats.tflite_model import TfliteModel
    from tests.tflite_build import fc_with_offset_buffer

    folder.mkdir(parents=True, exist_ok=True)
    sample = ROOT / "samples" / "digits_cnn.onnx"
    out: list[bytes] = []
    for i, (scheme, bits, per_channel, codec) in enumerate([
        ("asym", 8, False, "raw"), ("sym", 4, True, "zstd"), ("pow2", 3, True, "raw"), ("asym", 2, True, "zstd"),
        ("asym", 1, False, "zstd"), ("pow2", 6, False, "zstd"), ("sym", 7, True, "raw"),
        ("sym", 5, True, "ans"), ("sym", 12, False, "ans"), ("sym", 11, True, "raw"), ("dq", 4, True, "ans"), ("dq", 9, False, "raw"),
    ]):
        from qpack.formats.qpk import codec_named

        path = folder / f"digits{i}.qpk"
        with OnnxModel(sample) as m:
            convert(m, Policy(scheme, bits, per_channel), path, codec=codec_named(codec), workers=1)
        out.append(path.read_bytes())
    w = np.random.default_rng(0).standard_normal((24, 16)).astype(np.float32)
    tfl = folder / "fc.tflite"
    tfl.write_bytes(fc_with_offset_buffer(w))
    for i, (scheme, bits) in enumerate([("asym", 4), ("sym", 8)]):
        path = folder / f"fc{i}.qpk"
        with TfliteModel(tfl) as t:
            convert(t, Policy(scheme, bits, per_channel=bool(i)), path, workers=1)
        out.append(path.read_bytes())
    out.append(_blocked(folder / "blocked.qpk"))
    return out


def _blocked(path: Path) -> bytes:
    """Two tensors grouped in blocks (minor version 1), one with a short last block."""
    from qpack.converter import quant
    from qpack.formats.qpk import BlobKind, Grouping, QpkWriter, pack
    from qpack.formats.qpk import meta as qpk_meta

    rng = np.random.default_rng(1)
    entries = []
    with QpkWriter(path.parent) as w:
        for name, scheme, bits, shape, g in [("w", "sym", 4, (2, 3), Grouping(1, 2)), ("v", "asym", 3, (5, 7), Grouping(0, 2))]:
            x = rng.standard_normal(shape).astype(np.float32)
            codes, params = quant.get_quantizer(scheme).quantize(x, bits, g)
            c = w.add(pack(codes, bits), BlobKind.CODES)
            p = {k: w.add(v, BlobKind.PARAM) for k, v in params.items()}
            entries.append(qpk_meta.TensorEntry(name, f"init:{name}", shape, "float32", "matrix", scheme, bits, g, c, p))
        graph = w.add(b"g" * 100, BlobKind.GRAPH)
        meta = qpk_meta.build("t", "onnx", {"name": "b.onnx", "bytes": 1}, {}, graph, hashlib.sha256(b"g" * 100).hexdigest(),
                              entries, [])
        w.write(path, meta)
    return path.read_bytes()


# ---------------------------------------------------------------------------------------------
# taking a container apart and putting it back together


class Pairs:
    """A map with duplicated keys, as msgpack can encode it and a dict cannot hold it: (key, value) pairs.

    Not a list, so that no edit aimed at lists changes one into something else."""

    def __init__(self, items: list[tuple[Any, Any]]) -> None:
        self.items = list(items)


class Encoded(bytes):
    """msgpack bytes written as they are: values msgpack-python would not produce (negative ext types, bad UTF-8)."""


def _no_default(o: Any) -> Any:
    raise TypeError(type(o).__name__)


def _fast(obj: Any) -> bytes:
    # strict types: Pairs, Encoded and tuples are not taken for lists and bytes, they fail over to pack_tree
    return msgpack.packb(obj, use_bin_type=True, strict_types=True, default=_no_default)


def pack_tree(obj: Any, limit: int | None = None) -> bytes:
    """msgpack bytes of a tree of any depth (an explicit stack: no recursion limit), Pairs as maps,
    Encoded as they are; near the root, subtrees msgpack can take are packed by it. Past `limit`
    bytes it stops: edits that share subtrees can expand into billions of nodes."""
    if limit is not None and _larger(obj, limit):
        return bytes(limit + 1)
    packer = msgpack.Packer(use_bin_type=True)
    out = bytearray()
    stack: list[tuple[Any, int]] = [(obj, 0)]
    while stack and (limit is None or len(out) <= limit):
        o, depth = stack.pop()
        if isinstance(o, Encoded):
            out += o
            continue
        if depth <= 4 and type(o) in (dict, list):  # deeper, a failed attempt would be retried at every level
            try:
                out += _fast(o)
                continue
            except (TypeError, ValueError, OverflowError):  # a Pairs, Encoded or tuple inside, nested past msgpack's limit,
                pass  # or an int out of its range
        if isinstance(o, (dict, Pairs)):
            items = list(o.items()) if isinstance(o, dict) else o.items
            out += packer.pack_map_header(len(items))
            for k, v in reversed(items):
                stack.append((v, depth + 1))
                stack.append((k, depth + 1))
        elif isinstance(o, (list, tuple)):
            out += packer.pack_array_header(len(o))
            stack.extend((v, depth + 1) for v in reversed(o))
        else:
            if type(o) is int and not -(2**63) <= o < 2**64:  # an edit went past what msgpack can hold
                o = 2**64 - 1 if o > 0 else -(2**63)
            out += packer.pack(o)
    return bytes(out)


def _larger(obj: Any, limit: int) -> bool:
    """Whether the tree packs to more than `limit` bytes (every node takes at least one), in at most
    `limit` steps: shared subtrees can make a small tree pack to gigabytes."""
    stack, size = [obj], 0
    while stack and size <= limit:
        o = stack.pop()
        size += len(o) + 1 if isinstance(o, (str, bytes)) else 1
        if isinstance(o, dict):
            stack.extend(o.keys())
            stack.extend(o.values())
        elif isinstance(o, Pairs):
            stack.extend(x for kv in o.items for x in kv)
        elif isinstance(o, (list, tuple)):
            stack.extend(o)
    return size > limit


def clone(v: Any, depth: int = 0) -> Any:
    """A copy of a tree of dicts and lists; scalars, and subtrees past 50 levels, are shared."""
    if depth > 50:
        return v
    if type(v) is dict:
        return {k: clone(x, depth + 1) for k, x in v.items()}
    if type(v) is list:
        return [clone(x, depth + 1) for x in v]
    return v


def header(meta_len: int, payload_len: int, minor: int = 0, meta_sha: bytes = b"") -> bytes:
    payload_off = -(-(HEADER_SIZE + meta_len) // ALIGNMENT) * ALIGNMENT
    body = HEADER_BODY.pack(MAGIC, 1, minor, 0, meta_len, payload_off, payload_len, meta_sha)
    return HEADER.pack(*HEADER_BODY.unpack(body), zlib.crc32(body), bytes(4))


def assemble(meta_bytes: bytes, payload: bytes, minor: int = 0) -> bytes:
    """A container around metadata bytes and a payload, every header field and checksum made right."""
    head = header(len(meta_bytes), len(payload), minor, hashlib.sha256(meta_bytes).digest())
    pad = -(HEADER_SIZE + len(meta_bytes)) % ALIGNMENT
    return head + meta_bytes + bytes(pad) + payload


@dataclass
class Parts:
    meta: Any
    payload: bytes
    minor: int

    def blob(self, i: int) -> bytes:
        row = self.meta["blobs"][i]
        return self.payload[row[2] : row[2] + row[3]]


def split(data: bytes) -> Parts:
    """A well-formed container's metadata tree and payload (seeds are well formed)."""
    fields = HEADER.unpack_from(data)
    meta_len, payload_off = fields[4], fields[5]
    meta = msgpack.unpackb(data[HEADER_SIZE : HEADER_SIZE + meta_len], raw=False, strict_map_key=False)
    return Parts(meta, data[payload_off:], fields[2])


def relayout(meta: dict[str, Any], blobs: list[bytes]) -> bytes:
    """The payload of `blobs` laid out in row order, aligned; rows get their new offset, length and checksum."""
    out = bytearray()
    for row, b in zip(meta["blobs"], blobs):
        out += bytes(-len(out) % ALIGNMENT)
        row[2], row[3], row[5] = len(out), len(b), hashlib.sha256(b).digest()
        if row[1] == 0:
            row[4] = len(b)
        out += b
    return bytes(out)


def zstd_frame(length: int, claim: int | None = None, byte: int = 0) -> bytes:
    """A zstd frame of `length` copies of `byte` in RLE blocks (4 bytes per 128 KiB), claiming `claim`
    as its content size (None: no claim). Built by hand, so a frame of gigabytes costs nothing to make."""
    if claim is None:
        head = struct.pack("<IBB", 0xFD2FB528, 0x00, 0x58)  # no content size; window 2 MiB
    else:
        head = struct.pack("<IBQ", 0xFD2FB528, 0xE0, claim)  # single segment, 8-byte content size
    blocks = bytearray()
    if length == 0:
        blocks += (1).to_bytes(3, "little")  # an empty raw block, the last
    left = length
    while left:
        n = min(left, 1 << 17)
        left -= n
        blocks += ((left == 0) | (1 << 1) | (n << 3)).to_bytes(3, "little") + bytes([byte])
    return head + bytes(blocks)


# ---------------------------------------------------------------------------------------------
# hostile values

INTS = [0, 1, -1, 2, 3, 7, 8, 9, 15, 16, 17, 63, 64, 65, 127, 255, 256, 4095, 4096, 4097, 65535, 65536, 2**31 - 1, 2**31,
        2**32 - 1, 2**32, 2**34, 2**40 - 1, 2**40, 2**47, 2**48, 2**53 + 1, 2**62, 2**63 - 1, 2**63, 2**64 - 1, -(2**31),
        -(2**32), -(2**63)]
FLOATS = [0.0, -0.0, 0.5, 1.0, 8.0, 1e308, -1e308, 5e-324, float("nan"), float("inf"), float("-inf"), 2.0**64]
WORDS = ["qpack", "format", "source", "options", "graph", "graph_sha256", "tensors", "kept", "blobs", "name", "key", "shape",
         "dtype", "role", "scheme", "bits", "axis", "block", "codes", "params", "scale", "zero_point", "emax", "bytes", "reason",
         "onnx", "tflite", "asym", "sym", "pow2", "fp8", "float32", "float16", "bfloat16", "float64", "int8", "kernel", "per_channel",
         "codec", "zstd", "raw", "init:w"]
TEXTS = ["", "x", "\n", "a\nb", "\r\n", "\t", "\x00", "\x1b[31mred\x1b[0m", "[bold red]markup[/]", "[/]", "[link=x]y", "\u202eevil",
         "é", "🙂", "\ud7ff", "%s%n{0}{x}", "x" * 1000, "y" * 70_000, "../../etc/passwd", "0" * 64, "g" * 64]


def hostile_int(rng: random.Random) -> int:
    r = rng.random()
    if r < 0.6:
        return rng.choice(INTS)
    if r < 0.8:
        return rng.randint(-3, 40)
    return rng.randint(-(2**63), 2**64 - 1)


def hostile_leaf(rng: random.Random) -> Any:
    r = rng.randrange(12)
    if r < 3:
        return hostile_int(rng)
    if r == 3:
        return rng.choice([True, False, None])
    if r == 4:
        return rng.choice(FLOATS)
    if r == 5:
        return rng.choice([b"", bytes(32), rng.randbytes(rng.randint(1, 64)), b"\xff" * 1000, b"\x00\n\x1b"])
    if r in (6, 7):
        return rng.choice(WORDS)
    if r in (8, 9):
        return rng.choice(TEXTS)
    if r == 10:
        return msgpack.ExtType(rng.randint(0, 127), rng.randbytes(rng.randint(0, 8)))
    return Encoded(rng.choice([
        b"\xd6\xff" + bytes(4), b"\xd7\xff" + b"\xff" * 8, b"\xc7\x0c\xff" + b"\xff" * 12, b"\xd4\xff\x01",  # timestamps
        b"\xa2\xff\xfe", b"\xc4\x05ab", b"\xc1", b"\xdd\xff\xff\xff\xff",  # bad UTF-8, short bin, never-used byte, huge array
    ]))


def hostile_key(rng: random.Random) -> Any:
    r = rng.randrange(8)
    if r < 3:
        return rng.choice(WORDS)
    if r == 3:
        return hostile_int(rng)
    if r == 4:
        return rng.choice([b"name", b"bytes", b"\xff", b""])
    if r == 5:
        return rng.choice([None, True, False, 1.5, float("nan")])
    if r == 6:
        return rng.choice([(1, 2), (), ("a",)])  # arrays as map keys
    return rng.choice(TEXTS)


def nested(rng: random.Random, depth: int) -> Any:
    """A value nested `depth` levels deep: lists, maps (str or other keys) or a mix."""
    kind = rng.randrange(4)
    v: Any = hostile_leaf(rng) if rng.random() < 0.5 else {}
    for i in range(depth):
        k = kind if kind < 3 else i % 3
        if k == 0:
            v = [v]
        elif k == 1:
            v = {"name": v}
        else:
            v = {hostile_key(rng): v} if rng.random() < 0.5 else {b"k": v}
    return v


def hostile_value(rng: random.Random, tree: Any = None, depth: int = 0) -> Any:
    r = rng.randrange(20)
    if r < 9 or depth > 2:
        return hostile_leaf(rng)
    if r == 9:
        return nested(rng, rng.choice([10, 100, 500, 501, 700, 1000, 1020, 1100, 3000]))
    if r == 10:
        return [hostile_value(rng, tree, depth + 1) for _ in range(rng.randint(0, 4))]
    if r == 11:
        return {hostile_key(rng): hostile_value(rng, tree, depth + 1) for _ in range(rng.randint(0, 4))}
    if r == 12:
        return {rng.choice(WORDS): hostile_value(rng, tree, depth + 1) for _ in range(rng.randint(1, 4))}
    if r == 13:
        return [rng.choice(INTS) for _ in range(rng.randint(0, 20))]  # a shape-like list
    if r == 14:
        n = rng.choice([1000, 1000, 20_000, 100_000])
        big: list[Callable[[], Any]] = [lambda: [0] * n, lambda: list(range(n)), lambda: {str(i): i for i in range(n)}, lambda: ["x"] * n]
        return rng.choice(big)()
    if r == 15:
        return rng.choice([[[1, 2], [3]], [{}], [None], [[]], {"": {}}])
    if r == 16 and tree is not None:
        return _copy(_random_node(rng, tree))  # another part of the same file, in the wrong place
    if r == 17:
        return Pairs([(k, hostile_leaf(rng)) for k in [rng.choice(WORDS)] * 2])
    return rng.choice([[], {}, "", b"", 0])


def _copy(v: Any) -> Any:
    if isinstance(v, Pairs):
        return Pairs(v.items)
    return clone(v)


# ---------------------------------------------------------------------------------------------
# metadata tree mutations

Path_ = tuple[Any, ...]


def _paths(tree: Any, limit: int = 4000, max_depth: int = 8) -> list[Path_]:
    """Paths to the nodes of a tree, breadth first, without descending past max_depth."""
    out: list[Path_] = [()]
    queue: list[tuple[Path_, Any]] = [((), tree)]
    head = 0
    while head < len(queue) and len(out) < limit:
        path, node = queue[head]
        head += 1
        if len(path) >= max_depth:
            continue
        children: Iterator[tuple[Any, Any]]
        if isinstance(node, dict):
            children = iter(list(node.items())[:200])
        elif isinstance(node, list):
            children = enumerate(node[:200])
        else:
            continue
        for k, v in children:
            out.append(path + (k,))
            queue.append((path + (k,), v))
    return out


def _get(tree: Any, path: Path_) -> Any:
    for k in path:
        tree = tree[k]
    return tree


def _random_node(rng: random.Random, tree: Any) -> Any:
    return _get(tree, rng.choice(_paths(tree, 500, 5)))


def _set(tree: Any, path: Path_, value: Any) -> Any:
    if not path:
        return value
    _get(tree, path[:-1])[path[-1]] = value
    return tree


def mutate_tree(rng: random.Random, meta: Any) -> Any:
    """One random edit of the tree: replace, insert or delete at a random path, or a targeted edit."""
    r = rng.random()
    if r < 0.45 and isinstance(meta, dict):
        return _targeted(rng, meta)
    paths = _paths(meta)
    path = rng.choice(paths)
    op = rng.randrange(4)
    if op <= 1 or not path:
        return _set(meta, path, hostile_value(rng, meta))
    parent = _get(meta, path[:-1])
    if op == 2:  # insert beside
        if isinstance(parent, dict):
            parent[hostile_key(rng) if rng.random() < 0.5 else rng.choice(WORDS)] = hostile_value(rng, meta)
        else:
            copy = _copy(rng.choice(parent)) if parent and rng.random() < 0.5 else hostile_value(rng, meta)
            parent.insert(rng.randint(0, len(parent)), copy)
        return meta
    del parent[path[-1]]
    return meta


def _label(v: Any) -> str:
    """A key to number copies after: the key itself when it is text (an edited one may be a tree too deep to format)."""
    return v if isinstance(v, str) else type(v).__name__


def _entry(rng: random.Random, meta: dict[str, Any]) -> dict[str, Any] | None:
    t = meta.get("tensors")
    if isinstance(t, list) and t and isinstance(t[0], dict):
        e = rng.choice(t)
        return e if isinstance(e, dict) else None
    return None


def _nblobs(meta: dict[str, Any]) -> int:
    b = meta.get("blobs")
    return len(b) if isinstance(b, list) else 0


def _index(rng: random.Random, meta: dict[str, Any]) -> Any:
    n = _nblobs(meta)
    return rng.choice([rng.randint(-2, n + 1), n, n - 1, -1, 0, True, False, 1.0, "0", None, 2**63, 2**64 - 1, [0], {"0": 0}])


def _targeted(rng: random.Random, meta: dict[str, Any]) -> Any:
    """Edits aimed at the fields a reader checks, with values chosen to almost pass."""
    e = _entry(rng, meta)
    r = rng.randrange(16)
    if r == 0 and e is not None:  # shapes: huge, negative, long, or the same count arranged otherwise
        shape = e.get("shape")
        count = math.prod(shape) if isinstance(shape, list) and all(type(d) is int for d in shape) else 1
        e["shape"] = rng.choice([
            [count], [1, count], [count, 1, 1], [2**32, 2**32], [2**40 - 1, 2**40 - 1], [2**24, 2**24], [-1, -count], [0],
            [], [1] * 17, [1] * 16 + [count], [count * 2], [2**47, 2], [2**16, 2**16], [3.0], [True, count], [[count]],
            [count // 2, 2] if count % 2 == 0 else [count, 1],
        ])
    elif r == 1 and e is not None:  # width and grouping
        key = rng.choice(["bits", "axis", "block", "scheme", "dtype", "role"])
        values: dict[str, list[Any]] = {
            "bits": [0, 1, 2, 3, 4, 6, 7, 8, 9, 16, -1, True, 8.0, None],
            "axis": [None, 0, 1, 2, 3, 4, 15, 16, -1, True, 1.0, "0"],
            "block": [None, 0, 1, 2, 3, 5, 16, 1000, 2**40, -1, True, 2.0],
            "scheme": ["asym", "sym", "pow2", "toy", "", None, 1, b"asym"],
            "dtype": ["float32", "float16", "bfloat16", "float64", "int8", "float8", None, 4],
            "role": ["kernel", "", None, 5, ["x"], "x" * 70_000],
        }
        e[key] = rng.choice(values[key])
        if rng.random() < 0.3:
            e.pop(key, None)
    elif r == 2 and e is not None:  # blob indices of a tensor
        if rng.random() < 0.5:
            e["codes"] = _index(rng, meta)
        elif isinstance(e.get("params"), dict) and e["params"]:
            p = e["params"]
            k = rng.choice(list(p))
            p[k] = _index(rng, meta)
            if rng.random() < 0.3:
                p[rng.choice(["scale", "zero_point", "emax", "x", b"scale", 1])] = _index(rng, meta)
    elif r == 3 and e is not None:  # names and keys
        field_ = rng.choice(["name", "key"])
        e[field_] = rng.choice(TEXTS + [None, 5, b"n", "", "k" * 65_536, "k" * 65_537] + [x.get("key") for x in meta["tensors"]
                                                                                        if isinstance(x, dict)][:3])
    elif r == 4 and e is not None:  # the same tensor many times over, sharing its blobs
        n = rng.choice([2, 2, 10, 10, 100, 1000, 5000])
        meta["tensors"] += [dict(e, key=f"{_label(e.get('key'))}#{i}") for i in range(n)]
    elif r == 5 and isinstance(meta.get("blobs"), list) and meta["blobs"]:  # blob rows
        row = rng.choice(meta["blobs"])
        if isinstance(row, list) and len(row) == 6:
            i = rng.randrange(6)
            row[i] = rng.choice({
                0: [0, 1, 2, 3, -1, 255, True, None],
                1: [0, 1, 2, 200, -1, 2**64 - 1, True, "zstd"],
                2: [0, 64, 1, 63, -64, 2**62, row[2] + 64, max(0, row[2] - 64)],
                3: [0, 1, row[3] + 1, row[3] - 1, 2**62, -1],
                4: [0, 1, row[4] + 1, row[4] - 1, 2**32, 2**34, 2**40, 64 * row[3] + 4096, 64 * row[3] + 4097, -1, 2**64 - 1],
                5: [b"", bytes(31), bytes(33), "0" * 64, None, bytes(32)],
            }[i])
        elif rng.random() < 0.5:
            meta["blobs"].append([1, 0, 0, 0, 0, bytes(32)])
    elif r == 6:  # the graph index
        if rng.random() < 0.2:
            meta.pop("graph", None)
        else:
            meta["graph"] = _index(rng, meta)
    elif r == 7:  # informative fields with values a renderer may choke on
        key = rng.choice(["source", "options", "kept", "qpack"])
        meta[key] = rng.choice([
            nested(rng, rng.choice([500, 600, 1000])), {b"name": b"x", 1: 2}, {"name": b"\xff", "bytes": "12"},
            {"name": 5, "bytes": -1}, {"name": "m.onnx", "bytes": 2**64 - 1}, {"bytes": float("nan")}, {"bytes": True},
            ["a", "b"], "text", b"bytes", 7, None, [{"name": {b"k": b"v"}, "shape": [b"x"]}, 5, None, [1]],
            [{"name": "x" * 70_000, "shape": [2**63], "dtype": None, "reason": {"a": [1, {2: 3}]}}],
            {"scheme": {"nested": [b"\x00", float("inf")]}, b"bits": 1, (1, 2): 3}, hostile_value(rng, meta),
            {"name": rng.choice(TEXTS), "bytes": rng.choice(INTS)}, {"name": "m.onnx", "bytes": 1, rng.choice(TEXTS): rng.choice(TEXTS)},
        ])
    elif r == 8 and e is not None:  # a consistent regrouping: other shape, same count, other axis
        shape = e.get("shape")
        if isinstance(shape, list) and shape and all(type(d) is int for d in shape):
            rng.shuffle(shape)
            e["axis"] = rng.choice([None, 0, len(shape) - 1])
    elif r == 9:  # duplicated keys at the top or in an entry
        target = e if e is not None and rng.random() < 0.6 else meta
        k = rng.choice(list(target)) if target else "x"
        dup = Pairs(list(target.items()) + [(k, hostile_value(rng, meta))])
        if target is meta:
            return dup
        meta["tensors"][meta["tensors"].index(e)] = dup
    elif r == 10 and isinstance(meta.get("tensors"), list):  # entries not maps, lists of entries not lists
        meta["tensors"] = rng.choice([{}, "x", None, [None], [[1, 2]], [b"x"], meta["tensors"] * 2, meta["tensors"][::-1]])
    elif r == 11 and isinstance(meta.get("blobs"), list):
        meta["blobs"] = rng.choice([{}, None, [], [[0] * 6], meta["blobs"][::-1], meta["blobs"] + meta["blobs"][-1:],
                                    [tuple(b) if isinstance(b, list) else b for b in meta["blobs"]]])
    elif r == 12:
        meta["format"] = rng.choice(["onnx", "tflite", "pytorch", None, 1, b"onnx", ["onnx"]])
    elif r == 13:
        meta["graph_sha256"] = rng.choice([None, "", "0" * 64, b"\x00" * 32, 5, [1], "G" * 64])
    elif r == 14 and e is not None:  # a per-channel tensor made a blocked one, or the other way
        if isinstance(e.get("axis"), int):
            e["block"] = rng.choice([1, 2, 3, 4, 8])
        elif isinstance(e.get("shape"), list) and all(type(d) is int for d in e["shape"]):
            # per tensor made one block along the last axis, as long as the axis or longer: still one group
            count = math.prod(e["shape"])
            e["shape"], e["axis"] = rng.choice([[count], [1, count], [count, 1]]), rng.choice([0, -1])
            e["axis"] %= len(e["shape"])
            e["block"] = rng.choice([count, count + 1, 2**31, 2**40 - 1, 2**63])
        else:
            e.pop("block", None)
    else:
        return mutate_tree(rng, meta) if rng.random() < 0.5 else meta
    return meta


# ---------------------------------------------------------------------------------------------
# payload mutations (blobs laid out again and re-signed)


def mutate_payload(rng: random.Random, parts: Parts) -> bytes:
    meta = parts.meta
    blobs = [parts.blob(i) for i in range(len(meta["blobs"]))]
    n = len(blobs)
    i = rng.randrange(n)
    row = meta["blobs"][i]
    graph = meta.get("graph")
    r = rng.randrange(10)
    if r == 0:  # flip bytes of one blob
        b = bytearray(blobs[i])
        for _ in range(rng.randint(1, 8)):
            if b:
                b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        blobs[i] = bytes(b)
    elif r == 1:  # a frame that lies about its size, or really expands, in place of a blob
        claim = rng.choice([None, row[4], row[4] + 1, 2**32, 2**64 - 1, 0])
        length = rng.choice([0, 1, row[4], row[4] + 1, max(0, row[4] - 1), min(64 * len(blobs[i]) + 4096, 1 << 26)])
        blobs[i] = zstd_frame(length, claim, rng.choice([0, 1, 255]))
        row[1] = 1
        row[4] = rng.choice([length, row[4], length + 1, 64 * len(blobs[i]) + 4096])
    elif r == 2:  # a raw blob said to be zstd, or a zstd blob said to be raw
        row[1] = 1 - row[1] if row[1] in (0, 1) else 0
    elif r == 3 and n > 1:  # two blobs swapped
        j = rng.randrange(n)
        blobs[i], blobs[j] = blobs[j], blobs[i]
    elif r == 4:  # truncated or grown blob
        blobs[i] = blobs[i][: rng.randint(0, len(blobs[i]))] if rng.random() < 0.5 else blobs[i] + rng.randbytes(rng.randint(1, 100))
    elif r == 5 and isinstance(graph, int) and 0 <= graph < n:  # a new graph, checksum right: garbage, or zeros to the budget
        size = rng.choice([0, 1, 1000, 1 << 20, 64 << 20, 256 << 20])
        content = rng.randbytes(min(size, 4096)) if rng.random() < 0.3 else None
        if content is not None:
            blobs[graph] = zstd_frame_of(content)
            meta["blobs"][graph][4] = len(content)
            meta["graph_sha256"] = hashlib.sha256(content).hexdigest()
        else:
            blobs[graph] = zstd_frame(size, size if rng.random() < 0.5 else None)
            meta["blobs"][graph][1], meta["blobs"][graph][4] = 1, size
            meta["graph_sha256"] = _zeros_sha256(size)
    elif r == 6:  # a blob row duplicated or deleted, its bytes with it
        if rng.random() < 0.5:
            meta["blobs"].insert(i, list(row))
            blobs.insert(i, blobs[i])
        else:
            del meta["blobs"][i]
            del blobs[i]
    elif r == 7:  # parameters with extreme values (NaN, inf, huge exponents)
        b = bytearray(blobs[i])
        fill = rng.choice([b"\x00\x00\xc0\x7f", b"\x00\x00\x80\x7f", b"\xff\x7f", b"\x00\x80", b"\xff\xff\xff\xff", b"\x00"])
        b[:] = (fill * (len(b) // len(fill) + 1))[: len(b)]
        blobs[i] = bytes(b)
        row[1] = 0
    elif r == 8:  # codes with every bit set
        blobs[i] = b"\xff" * len(blobs[i])
        row[1], row[4] = 0, len(blobs[i])
    elif isinstance(graph, int) and 0 <= graph < n and meta.get("tensors"):
        # the graph as large as the budget allows once tensors are repeated (sharing their blobs): all
        # zeros, checksum right, so that only the reader's memory and time limits stand in the way
        e = rng.choice(meta["tensors"])
        meta["tensors"] += [dict(e, key=f"{_label(e['key'])}#{k}") for k in range(rng.choice([1, 10, 100, 1000, 3000]))]
        sizes = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}
        size = sum(math.prod(t["shape"]) * sizes[t["dtype"]] for t in meta["tensors"])
        blobs[graph] = zstd_frame(size, size)
        meta["blobs"][graph][1], meta["blobs"][graph][4] = 1, size
        meta["graph_sha256"] = _zeros_sha256(size)
    payload = relayout(meta, blobs)
    if rng.random() < 0.3:
        meta = edit(rng, meta)
    return assemble(pack_tree(meta, MAX_INPUT), payload, parts.minor)


def zstd_frame_of(content: bytes) -> bytes:
    import zstandard

    return zstandard.ZstdCompressor(level=1).compress(content)


_ZEROS_SHA: dict[int, str] = {}


def _zeros_sha256(n: int) -> str:
    if n not in _ZEROS_SHA:
        h = hashlib.sha256()
        chunk = bytes(1 << 20)
        left = n
        while left:
            h.update(chunk[: min(left, len(chunk))])
            left -= min(left, len(chunk))
        _ZEROS_SHA[n] = h.hexdigest()
    return _ZEROS_SHA[n]


# ---------------------------------------------------------------------------------------------
# byte mutations


def mutate_bytes(rng: random.Random, data: bytes, other: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        r = rng.randrange(6)
        pos = rng.randrange(len(b) + 1)
        if r == 0 and b:
            for _ in range(rng.randint(1, 8)):
                b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        elif r == 1:
            del b[pos:]
        elif r == 2:
            b[pos:pos] = rng.randbytes(rng.choice([1, 2, 4, 8, 64, 1000]))
        elif r == 3 and b:
            del b[pos : pos + rng.choice([1, 4, 64, 1000])]
        elif r == 4:  # splice: this file's head, another's tail
            b[pos:] = other[rng.randrange(len(other) + 1) :]
        elif b:  # an interesting value over some bytes
            v = rng.choice([b"\xff" * 8, b"\x00" * 8, b"\x7f\xff\xff\xff", b"\x80\x00\x00\x00", b"\xdf\xff\xff\xff\xff",
                            b"\xdd\x00\x01\x00\x00", b"\xc1", b"\xd4\xff\x00"])
            b[pos : pos + len(v)] = v
    return bytes(b)


# an edit aimed at one shape of tree may meet another, left by an earlier edit: it then stops where it is
_MISFIT = (TypeError, ValueError, KeyError, IndexError, AttributeError, ZeroDivisionError, OverflowError, RecursionError)


def edit(rng: random.Random, meta: Any) -> Any:
    """mutate_tree, as far as the tree it meets allows."""
    try:
        return mutate_tree(rng, meta)
    except _MISFIT:
        return meta


def mutate(rng: random.Random, seeds: list[bytes], cache: dict[int, Parts] | None = None) -> bytes:
    """One mutant of a seed chosen by `rng`; deterministic in the state of `rng`."""
    s = rng.randrange(len(seeds))
    data = seeds[s]
    parts = _split_cached(data, s, cache)
    r = rng.random()
    if r < 0.55:  # metadata tree, re-signed
        meta = parts.meta
        for _ in range(rng.choice([1, 1, 1, 2, 3, 5])):
            meta = edit(rng, meta)
        return assemble(pack_tree(meta, MAX_INPUT), parts.payload, parts.minor)
    if r < 0.72:
        try:
            return mutate_payload(rng, parts)
        except _MISFIT:
            return assemble(pack_tree(parts.meta, MAX_INPUT), parts.payload, parts.minor)
    if r < 0.82:  # metadata bytes, re-signed
        meta_bytes = pack_tree(parts.meta)
        return assemble(mutate_bytes(rng, meta_bytes, pack_tree(_split_cached(rng.choice(seeds), -1, None).meta)),
                        parts.payload, parts.minor)
    out = mutate_bytes(rng, data, rng.choice(seeds))
    if rng.random() < 0.5 and len(out) >= HEADER_SIZE:  # header CRC made right again
        body = out[: HEADER_BODY.size]
        out = body + zlib.crc32(body).to_bytes(4, "little") + out[HEADER_BODY.size + 4 :]
    return out


def _split_cached(data: bytes, s: int, cache: dict[int, Parts] | None) -> Parts:
    """A fresh (mutable) copy of a seed's parts; decoding is cached as msgpack bytes."""
    if cache is None or s < 0:
        return split(data)
    if s not in cache:
        cache[s] = split(data)
    p = cache[s]
    return Parts(clone(p.meta), p.payload, p.minor)


# Mutants are at most this long (as libFuzzer's -max_len): edits can compound into tens of megabytes
# of metadata, whose parsing only measures the parser's linear cost per byte (large files have their
# own test: 1,000,000 tensor entries, timed by bench/fuzz_qpk.py --entries).
MAX_INPUT = 4 << 20


def mutant(seeds: list[bytes], seed: int, cache: dict[int, Parts] | None = None) -> bytes:
    """Input number `seed`: the same bytes on every machine and in every process."""
    rng = random.Random(seed)
    for _ in range(4):
        out = mutate(rng, seeds, cache)
        if len(out) <= MAX_INPUT:
            return out
    return out[:MAX_INPUT]


# ---------------------------------------------------------------------------------------------
# the harness


@dataclass
class Outcome:
    """What one input did: `ok` or the QpackError class it ended with; `failure` says what went wrong."""

    result: str
    seconds: float = 0.0
    peak: int = 0
    failure: str | None = None
    warnings: list[str] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    resident: int = 0  # growth of the process's peak resident size over the run
    traced: bool = False  # whether `peak` was measured


def _null_console() -> Any:
    from rich.console import Console

    # the CLI's own settings (converter.cli.out), writing to memory
    return Console(file=io.StringIO(), highlight=False, markup=False, soft_wrap=True, width=160)


# what a file must not be able to send to a terminal: C0 and C1 controls (escape sequences, carriage
# returns, bells) other than the line feeds of the output itself, and bidirectional overrides
TERMINAL_CONTROLS = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def check_rendered(text: str) -> None:
    m = TERMINAL_CONTROLS.search(text)
    if m:
        raise AssertionError(f"the table holds {m.group()!r} at {m.start()}: {text[max(0, m.start() - 60) : m.start() + 20]!r}")


class _Run:
    """Outcomes of the stages of one input: the first QpackError's class, and the first failure."""

    def __init__(self) -> None:
        self.result, self.failure, self.messages = "ok", None, []  # type: tuple[str, str | None, list[str]]

    def __call__(self, stage: Callable[[], object]) -> bool:
        """Run a stage; True when it succeeded."""
        try:
            stage()
            return True
        except QpackError as e:
            text = str(e)
            self.messages.append(text)
            self.result = type(e).__name__ if self.result == "ok" else self.result
            if "\n" in text or "\r" in text:
                self.failure = self.failure or f"multi-line {type(e).__name__}: {text[:2000]!r}"
        except Exception as e:  # the point of fuzzing: anything else is a bug
            self.failure = self.failure or f"{type(e).__name__}: {str(e)[:500]}\n" + traceback.format_exc(limit=-12)[-4000:]
            self.result = type(e).__name__ if self.result == "ok" else self.result
        return False


def _run_stages(path: Path) -> tuple[str, str | None, list[str], list[str]]:
    """(result, failure, error messages, warnings) of what the commands do with the file at `path`: the
    reader end to end (as `unpack` uses it), then `inspect --no-verify` and `inspect` (describe, --json,
    the table). A stage that would repeat a failure already seen (describe opens and verifies as the
    reader did) is skipped: the code and the file are the same, so is the outcome."""
    from qpack.converter.inspect import describe, render_description
    from qpack.formats.qpk import QpkReader

    run = _Run()
    box: list[QpkReader] = []
    shown: list[dict[str, Any]] = []

    def inspect(verify: bool) -> None:
        info = describe(path, verify)
        json.loads(json.dumps(info))  # --json
        unverified = dict(info, verified=False)
        if unverified not in shown:  # rendering is a function of the description: once per distinct one
            console = _null_console()
            render_description(info, console)
            check_rendered(console.file.getvalue())
            shown.append(unverified)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        opened = run(lambda: box.append(QpkReader(path)))
        if opened:
            q = box[0]
            try:
                verified = run(q.verify)
                for e in q.entries:
                    if not run(lambda e=e: q.dequantize(e)):
                        break
                run(q.graph)
            finally:
                q.close()
            run(lambda: inspect(False))
            if verified:
                run(lambda: inspect(True))
    return run.result, run.failure, run.messages, [f"{w.category.__name__}: {w.message} ({Path(w.filename).name}:{w.lineno})"
                                                   for w in caught]


def _resident() -> tuple[int, int] | None:
    """(current, peak) resident bytes of this process, or None where /proc does not tell."""
    try:
        status = Path("/proc/self/status").read_text()
        now, peak = (int(re.search(rf"{k}:\s+(\d+) kB", status).group(1)) << 10 for k in ("VmRSS", "VmHWM"))  # type: ignore[union-attr]
        return now, peak
    except (OSError, AttributeError):
        return None


def _reset_peak_resident() -> int | None:
    """Start the resident peak afresh (Linux: clear_refs 5); the current resident bytes, or None."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return None
    r = _resident()
    return r[0] if r else None


def _traced(path: Path) -> tuple[tuple[str, str | None, list[str], list[str]], float, int]:
    """The stages under tracemalloc: their outcome, seconds and peak traced bytes."""
    tracing = tracemalloc.is_tracing()
    if not tracing:
        tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    t0 = time.perf_counter()
    out = _run_stages(path)
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1] - base
    if not tracing:
        tracemalloc.stop()
    return out, seconds, peak


def _timed(path: Path) -> tuple[tuple[str, str | None, list[str], list[str]], float]:
    tracing = tracemalloc.is_tracing()
    tracemalloc.stop()
    t0 = time.perf_counter()
    out = _run_stages(path)
    seconds = time.perf_counter() - t0
    if tracing:
        tracemalloc.start()
    return out, seconds


SUSPECT_RESIDENT = 64 << 20  # an untraced run that grew the process this much is traced as well
SUSPECT_SECONDS = 0.5


def run_input(path: Path, trace: bool | None = True) -> Outcome:
    """Run every stage on the file at `path`; the outcome fails on anything but success or one-line
    QpackErrors, on a warning, on more than TIME_LIMIT seconds, or on more than ALLOC_LIMIT bytes
    allocated at once (tracemalloc's peak) or resident at once (the process's peak resident size).

    trace: True: allocations are traced (tracemalloc slows allocation-heavy code, table rendering
        and large metadata, several times over, so an input over the time limit under the tracer is
        timed again without it). None: the run is untraced, and repeated under the tracer only if
        its resident memory grew by SUSPECT_RESIDENT, it took SUSPECT_SECONDS, or it failed: a long
        run's way to measure every input at a fraction of the cost. False: never traced.
    """
    start = _reset_peak_resident()
    traced = trace is True or (trace is None and start is None)
    peak = 0
    if traced:
        (result, failure, messages, warned), seconds, peak = _traced(path)
        if seconds > TIME_LIMIT:
            seconds = _timed(path)[1]
    else:
        (result, failure, messages, warned), seconds = _timed(path)
    now = _resident()
    grown = now[1] - start if now and start is not None else 0
    if not traced and trace is None and (grown >= SUSPECT_RESIDENT or seconds >= SUSPECT_SECONDS or failure or warned):
        traced, peak = True, _traced(path)[2]
    if failure is None and warned:
        failure = f"a warning reached the user: {warned[0]}"
    if failure is None and seconds > TIME_LIMIT:
        failure = f"took {seconds:.1f} s"
    if failure is None and max(peak, grown) > ALLOC_LIMIT:
        failure = f"allocated {max(peak, grown):,} bytes at once ({'traced' if peak >= grown else 'resident'})"
    return Outcome(result, seconds, peak, failure, warned, messages, grown, traced)


def corpus_files() -> list[Path]:
    return sorted(CORPUS.glob("*.qpk")) if CORPUS.is_dir() else []


def save_failure(data: bytes, outcome: Outcome, folder: Path = CORPUS) -> Path:
    """Keep a failing input in the regression corpus (named by content, so saving twice keeps one)."""
    folder.mkdir(parents=True, exist_ok=True)
    text = outcome.failure or "failure"
    kinds = {"multi-line": "multiline", "a warning": "warning", "took": "slow", "allocated": "alloc", "AssertionError": "output"}
    name = next((v for k, v in kinds.items() if text.startswith(k)), text.split(":")[0].split()[0].lower()[:30])
    path = folder / f"{name}-{hashlib.sha256(data).hexdigest()[:16]}.qpk"
    if not path.exists():
        path.write_bytes(data)
    return path


def write_input(folder: Path, data: bytes) -> Path:
    path = folder / f"input.{os.getpid()}.qpk"
    path.write_bytes(data)
    return path
