"""The writer: blobs spill to an unlinked temporary file as they come, hashed on the way in; write()
then lays down header, metadata and payload in one ordered pass."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
from numpy.typing import NDArray

from qpack.formats.atomic import atomic_output, cannot_write
from qpack.formats.qpk.codecs import CODECS, RAW, Codec, CodeContext
from qpack.formats.qpk.meta import minor_version
from qpack.formats.qpk.spec import HEADER, HEADER_BODY, HEADER_SIZE, MAGIC, VERSION_MAJOR, BlobKind, align, expansion_limit


@dataclass(frozen=True)
class Blob:
    """A payload region; `offset` is relative to the payload start."""

    kind: BlobKind
    codec: int
    offset: int
    length: int
    raw_length: int
    sha256: bytes

    def to_list(self) -> list[Any]:
        return [int(self.kind), self.codec, self.offset, self.length, self.raw_length, self.sha256]


def as_bytes(data: bytes | bytearray | memoryview | NDArray) -> memoryview:
    """A byte view of a blob's raw contents; arrays as their little-endian bytes."""
    if isinstance(data, np.ndarray):
        if data.dtype.byteorder == ">":
            data = data.astype(data.dtype.newbyteorder("<"))
        return memoryview(np.ascontiguousarray(data)).cast("B")  # type: ignore[arg-type]  # ndarray is a buffer
    return memoryview(data).cast("B")


def encode(data: bytes | bytearray | memoryview | NDArray, kind: BlobKind, codec: Codec = RAW,
           allowance: int = 0, ctx: CodeContext | None = None) -> tuple[int, memoryview, int]:
    """(codec id, stored bytes, raw length) of a blob; a codec that does not shrink it, or that
    shrinks it past the format's expansion limit (see spec.expansion_limit), gives way to raw.

    Pure and thread-safe, so blobs can be encoded in parallel and added in order.
    """
    raw = as_bytes(data)
    if codec.id == RAW.id:
        return RAW.id, raw, raw.nbytes
    stored = memoryview(codec.encode(raw, kind, ctx)).cast("B")
    if stored.nbytes < raw.nbytes <= expansion_limit(stored.nbytes, allowance):
        return codec.id, stored, raw.nbytes
    return RAW.id, raw, raw.nbytes


class QpkWriter:
    """Collects blobs in a spill file (nothing is kept in memory), then writes the container atomically.

    `target`, when given, is the file the container is for: errors writing the spill file (a full
    disk) name it, as errors writing the container do, rather than the spill file's folder.
    """

    def __init__(self, spill_dir: Path | None = None, target: Path | None = None) -> None:
        self._target = target
        self._blobs: list[Blob] = []
        self._end = 0
        with self._writing():
            # unlinked from the start (O_TMPFILE where the system has it): nothing is left behind, even on SIGKILL
            self._spill = tempfile.TemporaryFile(dir=spill_dir)

    @contextmanager
    def _writing(self) -> Iterator[None]:
        try:
            yield
        except OSError as e:
            if self._target is None:
                raise
            raise cannot_write(self._target, e) from e

    def add(self, data: bytes | bytearray | memoryview | NDArray, kind: BlobKind, codec: Codec = RAW, allowance: int = 0) -> int:
        """Encode and append a blob; returns its index."""
        return self.add_encoded(kind, *encode(data, kind, codec, allowance))

    def add_encoded(self, kind: BlobKind, codec: int, stored: memoryview | bytes, raw_length: int) -> int:
        """Append a blob already encoded with encode(); returns its index."""
        if codec not in CODECS:
            raise ValueError(f"codec id {codec} is not registered")
        offset = align(self._end)
        with self._writing():
            self._spill.write(bytes(offset - self._end))
            self._spill.write(stored)
        length = memoryview(stored).nbytes
        self._blobs.append(Blob(kind, codec, offset, length, raw_length, hashlib.sha256(stored).digest()))
        self._end = offset + length
        return len(self._blobs) - 1

    def blob(self, index: int) -> Blob:
        return self._blobs[index]

    def write(self, path: Path, meta: dict[str, Any]) -> int:
        """Write the container atomically to `path`; returns its size in bytes.

        The header's minor version is decided here, from the tensor entries written (meta.minor_version),
        so no caller can declare 1.0 over an entry a 1.0 reader cannot decode.
        """
        meta = dict(meta, blobs=[b.to_list() for b in self._blobs])
        packed = msgpack.packb(meta, use_bin_type=True)
        payload_offset = align(HEADER_SIZE + len(packed))
        body = HEADER_BODY.pack(MAGIC, VERSION_MAJOR, minor_version(meta.get("tensors", ())), 0, len(packed), payload_offset, self._end,
                                hashlib.sha256(packed).digest())
        header = HEADER.pack(*HEADER_BODY.unpack(body), zlib.crc32(body), bytes(4))
        with self._writing():
            self._spill.flush()
        with atomic_output(path) as f:
            f.write(header)
            f.write(packed)
            f.write(bytes(payload_offset - HEADER_SIZE - len(packed)))
            f.flush()
            _copy(self._spill, f, self._end)
        return payload_offset + self._end

    def close(self) -> None:
        try:
            self._spill.close()
        except OSError:  # buffered spill bytes that could not be written: the error was reported already
            pass

    def __enter__(self) -> QpkWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _copy(src: Any, dst: Any, length: int) -> None:
    """Copy the first `length` bytes of src to dst's position, in the kernel where it can."""
    offset = 0
    try:
        while offset < length:
            sent = os.sendfile(dst.fileno(), src.fileno(), offset, min(length - offset, 1 << 30))
            if sent == 0:
                raise OSError("spill file ended early")
            offset += sent
    except (AttributeError, OSError) as e:
        if offset or getattr(e, "errno", None) not in (None, 22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: no sendfile here
            raise
        src.seek(0)
        shutil.copyfileobj(src, dst, 1 << 20)
