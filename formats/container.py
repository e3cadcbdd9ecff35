"""The .qpk container: header, msgpack metadata, 64-byte aligned payload blobs (see FORMAT.md)."""

from __future__ import annotations

import hashlib
import mmap
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import msgpack
import numpy as np
import zstandard
from numpy.typing import NDArray

from formats.atomic import atomic_output
from formats.constants import (
    ALIGNMENT,
    GRAPH_ZSTD_LEVEL,
    HEADER,
    HEADER_BODY,
    HEADER_SIZE,
    MAGIC,
    MAX_META_LENGTH,
    VERSION_MAJOR,
    VERSION_MINOR,
    BlobKind,
    Codec,
)
from formats.errors import FormatError

_CHUNK = 16 * 1024 * 1024


def _align(n: int) -> int:
    return -(-n // ALIGNMENT) * ALIGNMENT


@dataclass(frozen=True)
class Blob:
    """A payload region; `offset` is relative to the payload start."""

    kind: BlobKind
    codec: Codec
    offset: int
    length: int
    raw_length: int
    sha256: bytes

    def to_list(self) -> list[Any]:
        return [int(self.kind), int(self.codec), self.offset, self.length, self.raw_length, self.sha256]


class ContainerWriter:
    """Collects blobs, then writes header, metadata and payload in one ordered pass."""

    def __init__(self) -> None:
        self._blobs: list[Blob] = []
        self._data: list[memoryview] = []
        self._end = 0

    def add(self, data: bytes | NDArray, kind: BlobKind, codec: Codec = Codec.RAW, level: int = GRAPH_ZSTD_LEVEL) -> int:
        """Queue a blob (arrays are stored as their little-endian bytes); returns its index.

        A zstd blob that would come out larger than its input is stored raw instead.
        """
        if isinstance(data, np.ndarray):
            if data.dtype.byteorder == ">":
                data = data.astype(data.dtype.newbyteorder("<"))
            raw = memoryview(np.ascontiguousarray(data)).cast("B")  # type: ignore[arg-type]  # ndarray is a buffer
        else:
            raw = memoryview(data).cast("B")
        raw_length = raw.nbytes
        if codec == Codec.ZSTD:
            packed = zstandard.ZstdCompressor(level=level, write_checksum=False).compress(raw)
            if len(packed) < raw_length:
                raw = memoryview(packed)
            else:
                codec = Codec.RAW
        offset = _align(self._end)
        blob = Blob(kind, codec, offset, raw.nbytes, raw_length, hashlib.sha256(raw).digest())
        self._blobs.append(blob)
        self._data.append(raw)
        self._end = offset + raw.nbytes
        return len(self._blobs) - 1

    def blob_length(self, index: int) -> int:
        return self._blobs[index].length

    def write(self, path: Path, meta: dict[str, Any]) -> int:
        """Write the container atomically; returns its size in bytes."""
        meta = dict(meta, blobs=[b.to_list() for b in self._blobs])
        packed = msgpack.packb(meta, use_bin_type=True)
        payload_offset = _align(HEADER_SIZE + len(packed))
        body = HEADER_BODY.pack(MAGIC, VERSION_MAJOR, VERSION_MINOR, 0, len(packed), payload_offset,
                                self._end, hashlib.sha256(packed).digest())
        header = HEADER.pack(*HEADER_BODY.unpack(body), zlib.crc32(body), bytes(4))
        with atomic_output(path) as f:
            f.write(header)
            f.write(packed)
            self._pad(f, payload_offset - HEADER_SIZE - len(packed))
            pos = 0
            for blob, raw in zip(self._blobs, self._data):
                self._pad(f, blob.offset - pos)
                f.write(raw)
                pos = blob.offset + blob.length
        return payload_offset + self._end

    @staticmethod
    def _pad(f: BinaryIO, n: int) -> None:
        if n:
            f.write(bytes(n))


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise FormatError(msg)


class Container:
    """A .qpk file opened for lazy reading: blobs are mmap views, decoded only when asked."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        where = str(path)
        try:
            with self.path.open("rb") as f:
                size = self.path.stat().st_size
                _check(size >= HEADER_SIZE, f"{where}: {size} bytes is too short for a .qpk header")
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError as e:
            raise FormatError(f"{where}: cannot read ({e.strerror})") from e
        self.size = size
        magic, major, minor, flags, meta_len, payload_off, payload_len, meta_hash, crc, reserved = HEADER.unpack_from(self._map, 0)
        _check(magic == MAGIC, f"{where}: not a .qpk file (bad magic)")
        _check(zlib.crc32(self._map[: HEADER_BODY.size]) == crc, f"{where}: header checksum mismatch (corrupt header)")
        _check(major == VERSION_MAJOR, f"{where}: container version {major}.{minor}, this qpack reads {VERSION_MAJOR}.x")
        _check(flags == 0 and reserved == bytes(4), f"{where}: unknown header flags {flags:#x} or reserved bytes set")
        _check(meta_len <= MAX_META_LENGTH, f"{where}: metadata length {meta_len} exceeds the {MAX_META_LENGTH} limit")
        _check(payload_off == _align(HEADER_SIZE + meta_len), f"{where}: payload offset {payload_off} is not where the metadata ends")
        _check(payload_off + payload_len == size,
               f"{where}: file is {size} bytes, header says {payload_off + payload_len} (truncated or padded)")
        packed = self._map[HEADER_SIZE : HEADER_SIZE + meta_len]
        _check(hashlib.sha256(packed).digest() == meta_hash, f"{where}: metadata checksum mismatch (corrupt file)")
        self.version = (major, minor)
        self.payload_offset = payload_off
        try:
            meta = msgpack.unpackb(packed, raw=False, strict_map_key=True)
        except Exception as e:  # msgpack raises several unrelated types on bad input
            raise FormatError(f"{where}: metadata is not valid msgpack ({e})") from e
        _check(isinstance(meta, dict), f"{where}: metadata is not a map")
        self.meta: dict[str, Any] = meta
        self.blobs = self._parse_blobs(meta.get("blobs"), payload_len, where)
        self._check_padding(HEADER_SIZE + meta_len, where)

    @staticmethod
    def _parse_blobs(rows: Any, payload_len: int, where: str) -> list[Blob]:
        _check(isinstance(rows, list), f"{where}: metadata has no blob table")
        blobs, end = [], 0
        for i, row in enumerate(rows):
            ok = isinstance(row, list) and len(row) == 6 and all(isinstance(v, int) and not isinstance(v, bool) for v in row[:5])
            _check(ok and isinstance(row[5], bytes) and len(row[5]) == 32, f"{where}: blob {i} entry is malformed")
            kind, codec, offset, length, raw_length, digest = row
            _check(kind in BlobKind._value2member_map_, f"{where}: blob {i} has unknown kind {kind}")
            _check(codec in Codec._value2member_map_, f"{where}: blob {i} has unknown codec {codec}")
            _check(offset >= end and offset % ALIGNMENT == 0, f"{where}: blob {i} at {offset} overlaps or is misaligned")
            _check(0 <= length and offset + length <= payload_len,
                   f"{where}: blob {i} [{offset}, {offset + length}) exceeds the payload ({payload_len} bytes)")
            _check(0 <= raw_length and (codec != Codec.RAW or raw_length == length), f"{where}: blob {i} has inconsistent lengths")
            blobs.append(Blob(BlobKind(kind), Codec(codec), offset, length, raw_length, digest))
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
            _check(self._map[start:end].count(0) == end - start, f"{where}: non-zero padding at offset {start} (corrupt file)")

    def blob_view(self, index: int, kind: BlobKind) -> memoryview:
        """The stored bytes of a blob, checksum verified (still compressed if its codec says so)."""
        _check(isinstance(index, int) and 0 <= index < len(self.blobs), f"{self.path}: blob index {index!r} out of range")
        blob = self.blobs[index]
        _check(blob.kind == kind, f"{self.path}: blob {index} holds {blob.kind.name}, expected {kind.name}")
        start = self.payload_offset + blob.offset
        view = memoryview(self._map)[start : start + blob.length]
        _check(hashlib.sha256(view).digest() == blob.sha256, f"{self.path}: blob {index} checksum mismatch (corrupt payload)")
        return view

    def blob_bytes(self, index: int, kind: BlobKind) -> bytes | memoryview:
        """A blob decoded: raw blobs as mmap views, compressed ones decompressed to exactly raw_length."""
        view = self.blob_view(index, kind)
        blob = self.blobs[index]
        if blob.codec == Codec.RAW:
            return view
        # Streamed in chunks: a frame header may claim any size, so memory follows the bytes that
        # really come out, and stops one byte past what the metadata promised.
        out = bytearray()
        try:
            with zstandard.ZstdDecompressor().stream_reader(view, read_across_frames=False) as reader:
                while len(out) <= blob.raw_length:
                    chunk = reader.read(min(_CHUNK, blob.raw_length + 1 - len(out)))
                    if not chunk:
                        break
                    out += chunk
        except zstandard.ZstdError as e:
            raise FormatError(f"{self.path}: blob {index} does not decompress ({e})") from e
        _check(len(out) == blob.raw_length, f"{self.path}: blob {index} decompresses to {len(out)}+ bytes, expected {blob.raw_length}")
        return bytes(out)

    def verify(self) -> None:
        """Check every blob's checksum (opening only checks the header and metadata)."""
        for i, blob in enumerate(self.blobs):
            self.blob_view(i, blob.kind)

    def close(self) -> None:
        try:
            self._map.close()
        except BufferError:  # a caller still holds a view; the map closes when it is collected
            pass

    def __enter__(self) -> Container:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
