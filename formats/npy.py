"""Reading .npy and .npz arrays from untrusted files: regular files only, numbers only (never a pickle),
every size a header declares checked against the file and a budget before any data is read."""

from __future__ import annotations

import lzma
import math
import os
import zipfile
import zlib
from pathlib import Path
from typing import IO

import numpy as np
from numpy.lib import format as npformat
from numpy.typing import NDArray

from qpack.formats.errors import FormatError, brief, shown
from qpack.formats.files import open_regular

# Limits (docs/inputs.md, "Limits"). Evaluation inputs are held in memory, then copied in batches and
# cast to the model's dtype: 2 GiB of them is already more samples than a fidelity measure needs.
MAX_BYTES = 2 << 30  # all the arrays of one file, as stored uncompressed
# A compressed .npz member may expand to at most MAX_RATIO times its stored size once past
# SMALL_MEMBER: deflate reaches about 1000x on zeros, real samples rarely pass 10x.
MAX_RATIO = 100
SMALL_MEMBER = 64 << 20
MAX_ARRAYS = 1024  # members of one .npz
MAX_DIMS = 64  # numpy's own limit on an array's rank

NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")  # a zip with members, an empty zip
NUMBER_KINDS = "biuf"  # bool, signed and unsigned integers, floats: every dtype a model input takes
_CHUNK = 1 << 20  # bytes read at a time, so a member is never also held whole as bytes
# what zipfile and its decompressors raise on a damaged archive (bz2 raises OSError)
_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, lzma.LZMAError, EOFError, NotImplementedError,
               RuntimeError, ValueError, OSError)


def _gib(n: int) -> str:
    return f"{n / (1 << 30):g} GiB"


def read_arrays(path: Path, budget: int = MAX_BYTES) -> dict[str, NDArray]:
    """The arrays of an .npy file (under the name "") or an .npz file (by member name, less ".npy").

    The kind is told by the content, not the suffix.

    Raises:
        FormatError: the file is not a regular file, not an .npy or .npz, damaged, holds something other
            than numbers, or declares more than `budget` bytes of arrays.
    """
    with open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(len(NPY_MAGIC))
        f.seek(0)
        if not head:
            raise FormatError(f"{path}: is empty, not an .npy or .npz file")
        if head.startswith(NPY_MAGIC):
            return {"": _read_npy(f, size, budget, str(path))}
        if head[:4] in ZIP_MAGICS:
            try:
                return _read_npz(f, size, budget, path)
            except _ZIP_ERRORS as e:
                raise FormatError(f"{path}: not a readable .npz archive ({shown(str(e) or type(e).__name__)})") from e
        raise FormatError(f"{path}: not an .npy or .npz file (it starts with {brief(head)})")


def _read_npz(f: IO[bytes], size: int, budget: int, path: Path) -> dict[str, NDArray]:
    """Every member's declared sizes are checked (against the file's `size` and the budget) before any
    member is read."""
    with zipfile.ZipFile(f) as zf:
        infos = zf.infolist()
        if len(infos) > MAX_ARRAYS:
            raise FormatError(f"{path}: holds {len(infos)} members, more than the {MAX_ARRAYS} qpack reads")
        total = 0
        seen: set[str] = set()
        for info in infos:
            where = f"{path}: member '{shown(info.filename)}'"
            if not info.filename.endswith(".npy"):
                raise FormatError(f"{where} is not an .npy array")
            if info.filename in seen:
                raise FormatError(f"{where} appears twice")
            seen.add(info.filename)
            if info.header_offset + info.compress_size > size:
                raise FormatError(f"{where} declares {info.compress_size} stored bytes at offset {info.header_offset}, "
                                  f"past the end of the file ({size} bytes)")
            if info.file_size > max(SMALL_MEMBER, MAX_RATIO * info.compress_size):
                raise FormatError(f"{where} expands {info.compress_size} bytes to {info.file_size}, past the "
                                  f"{MAX_RATIO}x qpack allows above {SMALL_MEMBER >> 20} MiB (store it uncompressed: np.savez)")
            total += info.file_size
            if total > budget:
                raise FormatError(f"{path}: its arrays hold {total} bytes or more, past the {_gib(budget)} qpack reads as inputs")
        arrays = {}
        for info in infos:
            with zf.open(info) as member:
                arrays[info.filename[: -len(".npy")]] = _read_npy(member, info.file_size, budget,
                                                                  f"{path}: array '{shown(info.filename[:-4])}'")
                member.read(1)  # at the member's end: zipfile checks its CRC
        return arrays


def _read_npy(stream: IO[bytes], size: int, budget: int, where: str) -> NDArray:
    """The array of an .npy stream of `size` bytes: header, then exactly the data it declares."""
    try:
        version = npformat.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = npformat.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, fortran, dtype = npformat.read_array_header_2_0(stream)
        else:
            raise FormatError(f"{where}: .npy format version {version[0]}.{version[1]}; qpack reads 1.0 and 2.0")
    except (ValueError, SyntaxError, TypeError) as e:  # numpy parses the header with ast.literal_eval
        raise FormatError(f"{where}: not a valid .npy header ({shown(str(e), 120)})") from e
    if dtype.hasobject:
        raise FormatError(f"{where}: holds Python objects (dtype object); qpack reads numbers and never unpickles")
    if dtype.kind not in NUMBER_KINDS:
        raise FormatError(f"{where}: dtype {brief(str(dtype))} is not bool, int, uint or float")
    if len(shape) > MAX_DIMS or any(d < 0 for d in shape):
        raise FormatError(f"{where}: header declares shape {brief(str(shape))}")
    declared = math.prod(shape) * dtype.itemsize
    if declared > budget:
        raise FormatError(f"{where}: shape {list(shape)} {dtype} is {declared} bytes, past the {_gib(budget)} qpack reads as inputs")
    held = size - stream.tell()
    if declared != held:
        raise FormatError(f"{where}: header declares shape {list(shape)} {dtype} ({declared} bytes), the data holds {held} bytes")
    flat = np.empty(math.prod(shape), dtype)
    raw = flat.view(np.uint8)
    pos = 0
    while pos < declared:
        chunk = stream.read(min(_CHUNK, declared - pos))
        if not chunk:
            raise FormatError(f"{where}: data ends after {pos} of {declared} bytes")
        raw[pos : pos + len(chunk)] = np.frombuffer(chunk, np.uint8)
        pos += len(chunk)
    array = flat.reshape(shape, order="F" if fortran else "C")
    return array if array.dtype.isnative else array.astype(array.dtype.newbyteorder("="))
