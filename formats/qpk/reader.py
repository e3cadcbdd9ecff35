"""The one reader: every rule of FORMAT.md checked on open, blobs read lazily through mmap."""

from __future__ import annotations

import functools
import hashlib
import mmap
import os
import zlib
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
from numpy.typing import NDArray

from qpack.formats.errors import FormatError, brief, shown
from qpack.formats.files import open_regular
from qpack.formats.qpk.bitstream import packed_size, unpack
from qpack.formats.qpk.codecs import CODECS, RAW, CodeContext
from qpack.formats.qpk.meta import TensorEntry, check_format, check_nesting, informative, is_int, parse_kept, parse_tensors
from qpack.formats.qpk.schemes import SCHEMES, SchemeSpec
from qpack.formats.qpk.spec import (
    ALIGNMENT,
    DTYPE_SIZES,
    HEADER,
    HEADER_BODY,
    HEADER_SIZE,
    MAGIC,
    MAX_BLOBS,
    MAX_GRAPH_BYTES,
    MAX_META_DEPTH,
    MAX_META_LENGTH,
    MAX_TENSORS,
    VERSION_MAJOR,
    BlobKind,
    align,
    expansion_limit,
)
from qpack.formats.qpk.writer import Blob

_PADDING_CHUNK = 1 << 20


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise FormatError(msg)


@functools.lru_cache(maxsize=256)
def _param_counts(spec: SchemeSpec, bits: int) -> tuple[tuple[str, int], ...]:
    """(name, values per group) of a scheme's parameters at a width (keyed by the row itself, which
    a name may stop pointing to)."""
    return tuple((p.name, p.per_group(bits)) for p in spec.params)


@functools.lru_cache(maxsize=64)
def _itemsize(dtype: str) -> int:
    return np.dtype(dtype).itemsize


class QpkReader:
    """A .qpk file opened for reading: header, metadata, blob table and tensor entries validated on open;
    blob checksums verified when a blob is read, a tensor's parameter values against their ranges when
    they are read (or all at once by verify())."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._owners: dict[int, TensorEntry] | None = None  # parameter blob -> its tensor, built when first asked
        where = str(path)
        try:
            with open_regular(self.path) as f:
                size = os.fstat(f.fileno()).st_size
                _check(size >= HEADER_SIZE, f"{where}: {size} bytes is too short for a .qpk header")
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError as e:
            raise FormatError(f"{where}: cannot read ({e.strerror})") from e
        try:
            self._open(where, size)
        except BaseException:
            self.close()
            raise

    def _open(self, where: str, size: int) -> None:
        self.size = size
        magic, major, minor, flags, meta_len, payload_off, payload_len, meta_hash, crc, reserved = HEADER.unpack_from(self._map, 0)
        _check(magic == MAGIC, f"{where}: not a .qpk file (bad magic)")
        _check(zlib.crc32(self._map[: HEADER_BODY.size]) == crc, f"{where}: header checksum mismatch (corrupt header)")
        _check(major == VERSION_MAJOR, f"{where}: container version {major}.{minor}, this qpack reads {VERSION_MAJOR}.x")
        _check(flags == 0 and reserved == bytes(4), f"{where}: unknown header flags {flags:#x} or reserved bytes set")
        _check(meta_len <= MAX_META_LENGTH, f"{where}: metadata length {meta_len} exceeds the {MAX_META_LENGTH} limit")
        _check(payload_off == align(HEADER_SIZE + meta_len), f"{where}: payload offset {payload_off} is not where the metadata ends")
        _check(payload_off + payload_len == size,
               f"{where}: file is {size} bytes, header says {payload_off + payload_len} (truncated or padded)")
        self.version = (major, minor)
        self.payload_offset = payload_off
        raw_meta = self._map[HEADER_SIZE : HEADER_SIZE + meta_len]
        _check(hashlib.sha256(raw_meta).digest() == meta_hash, f"{where}: metadata checksum mismatch (corrupt metadata)")
        try:
            # arrays and maps are allocated at the length their header claims: claims are bounded by
            # the longest list the format has (the blob table)
            meta = msgpack.unpackb(raw_meta, raw=False, strict_map_key=False, max_array_len=MAX_BLOBS,
                                   max_map_len=MAX_TENSORS * 2)
        except msgpack.StackError:  # its decoder's own limit, far above MAX_META_DEPTH
            raise FormatError(f"{where}: metadata nests deeper than {MAX_META_DEPTH} levels") from None
        except Exception as e:  # msgpack raises several unrelated types on bad input
            raise FormatError(f"{where}: metadata is not valid msgpack ({type(e).__name__})") from e
        _check(isinstance(meta, dict), f"{where}: metadata is not a map")
        try:
            check_nesting(meta)
        except FormatError as err:
            raise FormatError(f"{where}: {err}") from None
        self.meta: dict[str, Any] = meta
        self.blobs = self._parse_blobs(meta.get("blobs"), payload_len, where)
        self._check_padding(HEADER_SIZE + meta_len, where)
        try:
            self.format = check_format(meta.get("format"))
            self.entries = parse_tensors(meta.get("tensors"))
        except FormatError as err:
            raise FormatError(f"{where}: {err}") from None
        owned = bytearray(len(self.blobs))  # a blob belongs to one tensor, so a reader's work follows the file's size
        for entry in self.entries:
            self._check_entry(entry, where, owned)
        graph = meta.get("graph")
        _check(is_int(graph) and 0 <= graph < len(self.blobs) and self.blobs[graph].kind == BlobKind.GRAPH,
               f"{where}: metadata has no valid graph blob index")
        self.graph_index: int = graph
        self._check_expansion(where)
        self.kept = parse_kept(meta.get("kept"))
        self.info = informative(meta)

    @staticmethod
    def _parse_blobs(rows: Any, payload_len: int, where: str) -> list[Blob]:
        _check(isinstance(rows, list), f"{where}: metadata has no blob table")
        blobs, end = [], 0
        for i, row in enumerate(rows):
            ok = isinstance(row, list) and len(row) == 6 and all(is_int(v) for v in row[:5])
            _check(ok and isinstance(row[5], bytes) and len(row[5]) == 32, f"{where}: blob {i} entry is malformed")
            kind, codec, offset, length, raw_length, digest = row
            _check(kind in BlobKind._value2member_map_, f"{where}: blob {i} has unknown kind {kind}")
            _check(codec in CODECS, f"{where}: blob {i} has unknown codec {codec}")
            _check(offset >= end and offset % ALIGNMENT == 0, f"{where}: blob {i} at {offset} overlaps or is misaligned")
            _check(0 <= length and offset + length <= payload_len,
                   f"{where}: blob {i} [{offset}, {offset + length}) exceeds the payload ({payload_len} bytes)")
            _check(0 <= raw_length and (codec != RAW.id or raw_length == length), f"{where}: blob {i} has inconsistent lengths")
            blobs.append(Blob(BlobKind(kind), codec, offset, length, raw_length, digest))
            end = offset + length
        return blobs

    def _check_padding(self, meta_end: int, where: str) -> None:
        """Every byte outside the header, metadata and blobs is zero padding, and the last blob ends the file."""
        gaps = [(meta_end, self.payload_offset)]
        pos = self.payload_offset
        for b in self.blobs:
            gaps.append((pos, self.payload_offset + b.offset))
            pos = self.payload_offset + b.offset + b.length
        _check(pos == self.size, f"{where}: {self.size - pos} bytes after the last blob")
        for start, end in gaps:
            for at in range(start, end, _PADDING_CHUNK):  # a hostile gap may be gigabytes: never copied whole
                stop = min(end, at + _PADDING_CHUNK)
                _check(self._map[at:stop].count(0) == stop - at, f"{where}: non-zero padding at offset {at} (corrupt file)")

    def _check_expansion(self, where: str) -> None:
        """Every encoded blob within the format's decompression budget (no bombs), before any decoding."""
        zeroed = sum(e.count * DTYPE_SIZES[e.dtype] for e in self.entries)
        for i, b in enumerate(self.blobs):
            if b.codec == RAW.id:
                continue
            limit = min(expansion_limit(b.length, zeroed), MAX_GRAPH_BYTES) if i == self.graph_index else expansion_limit(b.length)
            if b.raw_length > limit:
                raise FormatError(f"{where}: blob {i} claims {b.raw_length:,} bytes from {b.length:,} stored, "
                                  f"over the format's limit of {limit:,} (a decompression bomb?)")

    def _check_entry(self, e: TensorEntry, where: str, owned: bytearray) -> None:
        """Blob indices exist, hold the right kind and belong to no other tensor; lengths are exactly what
        shape, grouping and width imply."""
        # runs once per entry of files with up to MAX_TENSORS entries: messages are built only on failure
        blobs, n = self.blobs, len(self.blobs)
        for idx, kind in ((e.codes, BlobKind.CODES), *((i, BlobKind.PARAM) for i in e.params.values())):
            if not (0 <= idx < n and blobs[idx].kind is kind):
                raise FormatError(f"{where}: tensor '{shown(e.name)}': blob index {idx} is not a {kind.name.lower()} blob")
            if owned[idx]:
                raise FormatError(f"{where}: tensor '{shown(e.name)}': blob {idx} is another tensor's (or named twice)")
            owned[idx] = 1
        got, want = blobs[e.codes].raw_length, packed_size(e.count, e.bits)
        if got != want:
            raise FormatError(f"{where}: tensor '{shown(e.name)}': payload {got} bytes, expected {want} "
                              f"for shape {list(e.shape)} at {e.bits} bits")
        groups = e.groups
        dtypes = e.dtypes
        for name, per_group in _param_counts(SCHEMES[e.scheme], e.bits):
            got, want = blobs[e.params[name]].raw_length, per_group * groups * _itemsize(dtypes[name])
            if got != want:
                raise FormatError(f"{where}: tensor '{shown(e.name)}': parameter '{name}' is {got} bytes, expected {want}")

    def blob_view(self, index: int, kind: BlobKind) -> memoryview:
        """The stored bytes of a blob, checksum verified (still encoded if its codec says so)."""
        if not (is_int(index) and 0 <= index < len(self.blobs)):
            raise FormatError(f"{self.path}: blob index {brief(index)} out of range")
        blob = self.blobs[index]
        _check(blob.kind == kind, f"{self.path}: blob {index} holds {blob.kind.name}, expected {kind.name}")
        start = self.payload_offset + blob.offset
        view = memoryview(self._map)[start : start + blob.length]
        _check(hashlib.sha256(view).digest() == blob.sha256, f"{self.path}: blob {index} checksum mismatch (corrupt payload)")
        return view

    def blob_bytes(self, index: int, kind: BlobKind, ctx: CodeContext | None = None) -> bytes | bytearray | memoryview:
        """A blob decoded to exactly its raw_length: raw blobs as mmap views, others decoded within that bound.
        A parameter blob comes only once its tensor's parameters are within their ranges (see params)."""
        if kind == BlobKind.PARAM:
            owner = self._owner(index)
            if owner is not None:
                self.params(owner)
        return self._decoded(index, kind, ctx)

    def _decoded(self, index: int, kind: BlobKind, ctx: CodeContext | None = None) -> bytes | bytearray | memoryview:
        view = self.blob_view(index, kind)
        blob = self.blobs[index]
        try:
            return CODECS[blob.codec].decode(view, blob.raw_length, ctx)
        except FormatError as e:
            raise FormatError(f"{self.path}: blob {index} {e}") from None

    def _owner(self, index: int) -> TensorEntry | None:
        """The tensor whose parameter blob `index` is (one at most: checked on open)."""
        if self._owners is None:
            self._owners = {i: e for e in self.entries for i in e.params.values()}
        return self._owners.get(index)

    def codes(self, e: TensorEntry) -> NDArray[np.uint8]:
        raw = self.blob_bytes(e.codes, BlobKind.CODES, e.code_context)
        return unpack(np.frombuffer(raw, dtype=np.uint8), e.bits, e.count).reshape(e.shape)

    def params(self, e: TensorEntry) -> dict[str, NDArray]:
        """The tensor's parameters, flat, in their storage dtypes.

        Raises:
            FormatError: a value lies outside the scheme's range (FORMAT.md "Parameter ranges": a NaN
                or infinite scale or centroid, a scale that makes a code's value overflow, a pow2
                emax outside -23..127), before any value is used.
        """
        dtypes = e.dtypes
        out = {k: np.frombuffer(self._decoded(i, BlobKind.PARAM), dtype=dtypes[k]) for k, i in e.params.items()}
        problem = SCHEMES[e.scheme].out_of_range(out, e.bits)
        if problem is not None:
            raise FormatError(f"{self.path}: tensor '{shown(e.name)}': {problem}")
        return out

    def dequantize(self, e: TensorEntry) -> NDArray[np.float32]:
        """The tensor's float32 values, as FORMAT.md's dequantization defines them."""
        return SCHEMES[e.scheme].dequantize(self.codes(e), self.params(e), e.bits, e.grouping)

    def graph(self) -> bytes:
        data = bytes(self.blob_bytes(self.graph_index, BlobKind.GRAPH))
        _check(self.meta.get("graph_sha256") == hashlib.sha256(data).hexdigest(), f"{self.path}: graph checksum mismatch")
        return data

    def verify(self) -> None:
        """Check every blob's checksum, the decoded graph's, a chunk at a time (no blob is held whole),
        and every tensor's parameters against their ranges."""
        for i, blob in enumerate(self.blobs):
            self.blob_view(i, blob.kind)
        blob = self.blobs[self.graph_index]
        view = self.blob_view(self.graph_index, BlobKind.GRAPH)
        codec = CODECS[blob.codec]
        h = hashlib.sha256()
        try:
            for chunk in codec.chunks(view, blob.raw_length):
                h.update(chunk)
        except FormatError as e:
            raise FormatError(f"{self.path}: blob {self.graph_index} {e}") from None
        _check(self.meta.get("graph_sha256") == h.hexdigest(), f"{self.path}: graph checksum mismatch")
        for entry in self.entries:
            self.params(entry)

    def close(self) -> None:
        m = getattr(self, "_map", None)
        if m is not None:
            try:
                m.close()
            except BufferError:  # a caller still holds a view; the map closes when it is collected
                pass

    def __enter__(self) -> QpkReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
