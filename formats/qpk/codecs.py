"""How a blob's bytes are stored: a registry of codecs keyed by the id written in the blob table.

A codec turns a blob's raw bytes into stored bytes and back. Decoding is bounded: a reader
never produces more than the `raw_length` the blob table promises, whatever the stored bytes claim.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
import zstandard
from numpy.typing import NDArray

from qpack.formats.errors import FormatError, OptionError
from qpack.formats.qpk.grouping import Grouping
from qpack.formats.qpk.spec import BYTE_BITS, CODES_ZSTD_LEVEL, GRAPH_ZSTD_LEVEL, BlobKind

if TYPE_CHECKING:
    from qpack.formats.qpk import ans

_CHUNK = 16 * 1024 * 1024


@dataclass(frozen=True)
class CodeContext:
    """What a code blob holds, for codecs that model it (entropy coders with per-group or
    neighbour contexts): the width of its codes, their count, the tensor's shape and grouping,
    and the ans model already chosen for these very codes, if any (Codec.choose_model).
    A codec that only sees bytes ignores it."""

    bits: int
    count: int
    shape: tuple[int, ...]
    grouping: Grouping
    model: ans.Model | None = None


class Codec(Protocol):
    @property
    def id(self) -> int:
        """Written in the blob table; never reused for another meaning."""
        ...

    @property
    def name(self) -> str:
        """The name FORMAT.md and `--codec` use."""
        ...

    @property
    def label(self) -> str:
        """The word the CLI and reports use for it."""
        ...

    @property
    def help(self) -> str:
        """How it stores codes, in one line (the CLI's help)."""
        ...

    @property
    def entropy_coded(self) -> bool:
        """Whether it models the codes' frequencies at every width, as an arithmetic coder does: only
        then do rounding that trades error for rate, ranges widened between widths and schemes whose
        search is rate-aware pay off."""
        ...

    def sized_by_entropy(self, bits: int) -> bool:
        """Whether codes of this width are stored in about their order-0 entropy (see price): then a
        full range can cost fewer bytes than a clipped one, its codes crowding the middle."""
        ...

    def price(self, count: int, bits: int, entropy: float, span: int) -> int | None:
        """The bytes it is expected to store for `count` codes of `bits` bits, whose order-0 entropy
        is `entropy` bits a code and whose present codes run over `span` values; None where it
        stores them packed. What an allocation weighs a setting by before anything is coded."""
        ...

    def choose_model(self, codes: NDArray[np.uint8], bits: int) -> tuple[float, ans.Model | None] | None:
        """For a codec that models codes: the bits per code its best model for these codes would take
        (tables not counted) and that model, to hand back in CodeContext.model so the choice is made once;
        None for a codec that models bytes."""
        ...

    def encode(self, raw: memoryview, kind: BlobKind, ctx: CodeContext | None = None) -> bytes | memoryview: ...

    def decode(self, stored: memoryview, raw_length: int, ctx: CodeContext | None = None) -> bytes | bytearray | memoryview:
        """Exactly raw_length bytes, or FormatError; never allocates more than raw_length + one chunk."""
        ...

    def chunks(self, stored: memoryview, raw_length: int) -> Iterator[bytes | bytearray | memoryview]:
        """The decoded bytes in pieces, exactly raw_length in all, or FormatError: a reader hashing a
        large blob (the graph) holds one piece at a time where the codec can stream."""
        ...


class ByteCodec:
    """Defaults for a codec that stores bytes as a general-purpose compressor does: it prices codes as
    packed, chooses no model of them, and decodes a blob at once (subclass it, then give `id`, `name`,
    `label`, `help`, `encode` and `decode`)."""

    entropy_coded: bool = False

    def sized_by_entropy(self, bits: int) -> bool:
        return False

    def price(self, count: int, bits: int, entropy: float, span: int) -> int | None:
        return None

    def chunks(self, stored: memoryview, raw_length: int) -> Iterator[bytes | bytearray | memoryview]:
        yield self.decode(stored, raw_length)  # type: ignore[attr-defined]

    def choose_model(self, codes: NDArray[np.uint8], bits: int) -> tuple[float, ans.Model | None] | None:
        return None


@dataclass(frozen=True)
class Raw(ByteCodec):
    id: int = 0
    name: str = "raw"
    label: str = "packed"
    help: str = "dense n-bit codes"

    def encode(self, raw: memoryview, kind: BlobKind, ctx: CodeContext | None = None) -> memoryview:
        return raw

    def decode(self, stored: memoryview, raw_length: int, ctx: CodeContext | None = None) -> memoryview:
        if len(stored) != raw_length:
            raise FormatError(f"raw blob is {len(stored)} bytes, expected {raw_length}")
        return stored


@dataclass(frozen=True)
class Zstd(ByteCodec):
    """One zstd frame, at a fixed level per blob kind (a level is part of the byte-identical promise)."""

    id: int = 1
    name: str = "zstd"
    label: str = "zstd"
    help: str = "the packed codes compressed (kept per tensor only where smaller)"

    def sized_by_entropy(self, bits: int) -> bool:
        return BYTE_BITS % bits == 0  # a byte compressor finds little in codes that straddle bytes

    def price(self, count: int, bits: int, entropy: float, span: int) -> int | None:
        if not self.sized_by_entropy(bits):
            return None
        from qpack.formats.qpk import ans

        # codes that fill whole bytes are zstd's literals, which it Huffman-codes: about as close to
        # their order-0 entropy as an order-0 ans stream
        return ans.estimated_bytes(count, bits, entropy, span)

    def encode(self, raw: memoryview, kind: BlobKind, ctx: CodeContext | None = None) -> bytes:
        level = GRAPH_ZSTD_LEVEL if kind == BlobKind.GRAPH else CODES_ZSTD_LEVEL
        return zstandard.ZstdCompressor(level=level, write_checksum=False).compress(raw)

    def chunks(self, stored: memoryview, raw_length: int) -> Iterator[bytes]:
        """The decoded bytes a chunk at a time, exactly raw_length of them in all, or FormatError.

        A frame header may claim any size, so memory follows the bytes that really come out, and
        decoding stops one byte past what the metadata promised.
        """
        done = 0
        try:
            with zstandard.ZstdDecompressor().stream_reader(stored, read_across_frames=False) as reader:
                while done <= raw_length:
                    chunk = reader.read(min(_CHUNK, raw_length + 1 - done))
                    if not chunk:
                        break
                    done += len(chunk)
                    if done <= raw_length:
                        yield chunk
        except zstandard.ZstdError as e:
            raise FormatError(f"does not decompress ({e})") from e
        if done != raw_length:
            raise FormatError(f"decompresses to {done}{'+' if done > raw_length else ''} bytes, expected {raw_length}")

    def decode(self, stored: memoryview, raw_length: int, ctx: CodeContext | None = None) -> bytearray:
        out = bytearray(raw_length)  # the promised length, which the reader has bounded
        pos = 0
        for chunk in self.chunks(stored, raw_length):
            out[pos : pos + len(chunk)] = chunk
            pos += len(chunk)
        return out


@dataclass(frozen=True)
class Ans(ByteCodec):
    """Codes entropy-coded by static rANS with context-chosen tables (FORMAT.md, "ans code streams").

    It models codes, not bytes: a blob without a code context is taken as 8-bit codes.
    """

    id: int = 2
    name: str = "ans"
    label: str = "ans"
    help: str = "the codes entropy-coded by rANS with context tables (kept per tensor only where smaller)"
    entropy_coded: bool = True

    def sized_by_entropy(self, bits: int) -> bool:
        return True

    def price(self, count: int, bits: int, entropy: float, span: int) -> int | None:
        from qpack.formats.qpk import ans

        return ans.estimated_bytes(count, bits, entropy, span)

    def choose_model(self, codes: NDArray[np.uint8], bits: int) -> tuple[float, ans.Model | None] | None:
        from qpack.formats.qpk import ans
        from qpack.formats.qpk.bitstream import code_dtype

        flat = np.ascontiguousarray(codes, dtype=code_dtype(bits)).reshape(-1)
        if flat.size == 0:
            return 0.0, None
        try:
            chosen, best = ans.choose(flat, bits)
        except FormatError:  # wide codes too varied for a table: the codec keeps them packed
            return float(bits), None
        return (best or chosen).data_bits / flat.size, chosen.model

    @staticmethod
    def _shape(length: int, ctx: CodeContext | None) -> tuple[int, int]:
        return (ctx.bits, ctx.count) if ctx is not None else (8, length)

    def encode(self, raw: memoryview, kind: BlobKind, ctx: CodeContext | None = None) -> bytes:
        from qpack.formats.qpk import ans  # numpy- and numba-heavy: loaded when a stream is coded
        from qpack.formats.qpk.bitstream import unpack

        bits, count = self._shape(raw.nbytes, ctx)
        codes = unpack(np.frombuffer(raw, dtype=np.uint8), bits, count)
        coded = ans.encode_codes(codes, bits, ctx.model if ctx is not None else None)
        return bytes(raw) if coded is None else coded  # not smaller: the writer keeps the raw stream

    def decode(self, stored: memoryview, raw_length: int, ctx: CodeContext | None = None) -> bytearray:
        from qpack.formats.qpk import ans
        from qpack.formats.qpk.bitstream import packed_size

        bits, count = self._shape(raw_length, ctx)
        if packed_size(count, bits) != raw_length:
            raise FormatError(f"holds {raw_length} bytes, but {count} codes of {bits} bits take {packed_size(count, bits)}")
        return ans.decode_codes(stored, bits, count)


CODECS: dict[int, Codec] = {}


def register_codec(codec: Codec) -> Codec:
    """Add a codec under its id; ids are part of the format, so one may not be taken twice."""
    if codec.id in CODECS and CODECS[codec.id].name != codec.name:
        raise ValueError(f"codec id {codec.id} is already {CODECS[codec.id].name!r}")
    CODECS[codec.id] = codec
    return codec


def label_of(name: str) -> str:
    """The word users see for the codec `name` (as a report records it), or the name itself if unknown."""
    return next((c.label for c in CODECS.values() if c.name == name), name)


def codec_named(name: str) -> Codec:
    """The codec a name or its label (the CLI's word, `packed` for raw) names."""
    for c in CODECS.values():
        if name in (c.name, c.label):
            return c
    raise OptionError(f"unknown codec {name!r}, expected one of {', '.join(c.label for c in CODECS.values())}")


RAW = register_codec(Raw())
ZSTD = register_codec(Zstd())
ANS = register_codec(Ans())
