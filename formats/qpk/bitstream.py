"""Dense n-bit code streams, LSB-first: code i occupies stream bits [i*n, (i+1)*n).

Stream bit k is bit (k % 8) of byte k // 8, so a 3-bit stream of codes a, b, c, ... puts a in bits
0-2 of byte 0, b in bits 3-5, c in bits 6-7 of byte 0 and bit 0 of byte 1. The last byte is padded
with zero bits. Eight codes of n bits make exactly n bytes, so the codes are handled eight at a time
as one little-endian uint64 (a byte per code) and squeezed together in three halving steps
(bytes -> 16-bit lanes -> 32-bit lanes -> word): a fixed number of vectorized passes for any n.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from qpack.formats.errors import FormatError, OptionError
from qpack.formats.qpk.spec import BYTE_BITS, MAX_BITS, MIN_BITS

_U64 = np.dtype("<u8")
_M1 = np.uint64(0x00FF00FF00FF00FF)  # even bytes
_M2 = np.uint64(0x0000FFFF0000FFFF)  # even 16-bit lanes
_M3 = np.uint64(0x00000000FFFFFFFF)  # low 32-bit lane


def packed_size(count: int, bits: int) -> int:
    """Bytes a stream of `count` codes of `bits` bits occupies."""
    return (count * bits + 7) // 8


def code_dtype(bits: int) -> type[np.unsignedinteger]:
    """The array type that holds one code of `bits` bits: a byte up to 8 bits, else 16 bits."""
    return np.uint8 if bits <= BYTE_BITS else np.uint16


def _check_bits(bits: int) -> None:
    if not MIN_BITS <= bits <= MAX_BITS:
        raise OptionError(f"bit width {bits} is outside {MIN_BITS}..{MAX_BITS}")


def _words(codes: NDArray[np.uint8]) -> NDArray[np.uint64]:
    """Codes as uint64 words of eight bytes, the tail padded with zero codes."""
    count = codes.size
    groups = -(-count // 8)
    padded = np.zeros(groups * 8, dtype=np.uint8)
    padded[:count] = codes
    return padded.view(_U64)


def _head_bytes(bits: int) -> np.dtype:
    """A view of the first `bits` bytes of each uint64 word as one opaque item.

    numpy copies such items with one memcpy each, several times faster than a (rows, bits) slice.
    """
    return np.dtype({"names": ["b"], "formats": [f"V{bits}"], "offsets": [0], "itemsize": 8})


def pack(codes: NDArray[Any], bits: int) -> NDArray[np.uint8]:
    """Pack codes (each < 2**bits) into a dense LSB-first stream of packed_size() bytes."""
    _check_bits(bits)
    if bits > BYTE_BITS:
        return _pack_wide(codes, bits)
    flat = np.ascontiguousarray(codes, dtype=np.uint8).reshape(-1)
    count = flat.size
    if bits == 8:
        return flat.copy()
    w = _words(flat)
    n = np.uint64(bits)
    tmp = np.empty_like(w)
    # bytes -> 16-bit lanes holding 2n bits
    np.right_shift(w, np.uint64(8), out=tmp)
    tmp &= _M1
    tmp <<= n
    w &= _M1
    w |= tmp
    # 16-bit lanes -> 32-bit lanes holding 4n bits
    np.right_shift(w, np.uint64(16), out=tmp)
    tmp &= _M2
    tmp <<= np.uint64(2 * bits)
    w &= _M2
    w |= tmp
    # 32-bit lanes -> one word holding 8n bits
    np.right_shift(w, np.uint64(32), out=tmp)
    tmp <<= np.uint64(4 * bits)
    w &= _M3
    w |= tmp
    out = np.ascontiguousarray(w.view(_head_bytes(bits))["b"]).view(np.uint8)
    return out[: packed_size(count, bits)]


def unpack(buf: NDArray[np.uint8] | bytes | memoryview, bits: int, count: int) -> NDArray[Any]:
    """Inverse of pack(): `count` codes (uint8, or uint16 past 8 bits; see code_dtype) from a
    stream that must be exactly packed_size() bytes."""
    _check_bits(bits)
    data = buf.reshape(-1) if isinstance(buf, np.ndarray) else np.frombuffer(buf, dtype=np.uint8)
    expected = packed_size(count, bits)
    if data.size != expected:
        raise FormatError(f"code stream is {data.size} bytes, expected {expected} for {count} codes at {bits} bits")
    if bits == 8:
        return data.astype(np.uint8, copy=True)
    if bits > BYTE_BITS:
        return _unpack_wide(data, bits, count)
    groups = -(-count // 8)
    w = np.zeros(groups, dtype=_U64)
    head = w.view(_head_bytes(bits))["b"]
    whole = data.size // bits
    head[:whole] = data[: whole * bits].view(f"V{bits}")
    if whole < groups:  # the last group's bytes are cut short by the stream's end
        w.view(np.uint8)[whole * 8 : whole * 8 + data.size - whole * bits] = data[whole * bits :]
    tmp = np.empty_like(w)
    # word -> 32-bit lanes of 4n bits
    np.right_shift(w, np.uint64(4 * bits), out=tmp)
    tmp <<= np.uint64(32)
    w &= np.uint64((1 << (4 * bits)) - 1)
    w |= tmp
    # 32-bit lanes -> 16-bit lanes of 2n bits
    lane2 = np.uint64(((1 << (2 * bits)) - 1) * 0x0000000100000001)
    np.right_shift(w, np.uint64(2 * bits), out=tmp)
    tmp &= lane2
    tmp <<= np.uint64(16)
    w &= lane2
    w |= tmp
    # 16-bit lanes -> bytes of n bits
    lane1 = np.uint64(((1 << bits) - 1) * 0x0001000100010001)
    np.right_shift(w, np.uint64(bits), out=tmp)
    tmp &= lane1
    tmp <<= np.uint64(8)
    w &= lane1
    w |= tmp
    return w.view(np.uint8)[:count]


# Codes of 9..16 bits: eight codes make n bytes, as two halves of four codes (4n <= 60 bits each
# below 16 bits) joined into one 8n-bit little-endian number across two uint64 words.


def _pack_wide(codes: NDArray[Any], bits: int) -> NDArray[np.uint8]:
    flat = np.ascontiguousarray(codes, dtype=np.uint16).reshape(-1)
    count = flat.size
    if bits == 16:
        return flat.astype("<u2").view(np.uint8).copy()
    groups = -(-count // 8)
    padded = np.zeros(groups * 8, dtype=np.uint16)
    padded[:count] = flat
    c = padded.reshape(groups, 8)
    lo, hi = c[:, 0].astype(np.uint64), c[:, 4].astype(np.uint64)
    for j in (1, 2, 3):  # four codes a half, each a whole-array shift
        lo |= c[:, j].astype(np.uint64) << np.uint64(j * bits)
        hi |= c[:, 4 + j].astype(np.uint64) << np.uint64(j * bits)
    words = np.empty(groups * 2, dtype="<u8")  # per group: the low 64 bits, then the rest
    np.left_shift(hi, np.uint64(4 * bits), out=words[0::2])
    words[0::2] |= lo
    np.right_shift(hi, np.uint64(64 - 4 * bits), out=words[1::2])
    out = np.ascontiguousarray(words.view(_wide_head(bits))["b"]).view(np.uint8)
    return out[: packed_size(count, bits)]


def _wide_head(bits: int) -> np.dtype:
    """The first `bits` bytes of each 16-byte group as one opaque item (see _head_bytes)."""
    return np.dtype({"names": ["b"], "formats": [f"V{bits}"], "offsets": [0], "itemsize": 16})


def _unpack_wide(data: NDArray[np.uint8], bits: int, count: int) -> NDArray[np.uint16]:
    if bits == 16:
        return data.view("<u2").astype(np.uint16)
    groups = -(-count // 8)
    words = np.zeros(groups * 2, dtype="<u8")
    head = words.view(_wide_head(bits))["b"]
    whole = data.size // bits
    head[:whole] = data[: whole * bits].view(f"V{bits}")
    if whole < groups:  # the last group's bytes are cut short by the stream's end
        words.view(np.uint8)[whole * 16 : whole * 16 + data.size - whole * bits] = data[whole * bits :]
    half, mask = np.uint64(4 * bits), np.uint64((1 << (4 * bits)) - 1)
    lo = words[0::2] & mask
    hi = ((words[0::2] >> half) | (words[1::2] << np.uint64(64 - 4 * bits))) & mask
    one = np.uint64((1 << bits) - 1)
    out = np.empty((groups, 8), dtype=np.uint16)
    for j in range(4):  # four lanes per half, each a whole-array shift
        out[:, j] = (lo >> np.uint64(j * bits)) & one
        out[:, 4 + j] = (hi >> np.uint64(j * bits)) & one
    return out.reshape(-1)[:count]
