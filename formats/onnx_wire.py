"""Tensor payloads of a serialized ONNX model, found and placed without parsing them: a protobuf wire walker.

`strip` copies a model with each large tensor payload replaced by a 16-byte marker, so that protobuf
parses only the graph's structure; the markers say where each payload lies in the file. `expand` is
the reverse for writing: it turns markers into holes of given sizes that a writer fills one tensor
at a time. Only the messages on the way to a tensor are walked and re-encoded (their length prefixes
change); every other field is copied as it stands, so bytes match what protobuf itself would write.
Field numbers are those of onnx.proto.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator, Sequence
from typing import NamedTuple, TypeAlias

from onnx import GraphProto, TensorProto

from qpack.formats.errors import FormatError

MODEL_GRAPH = 7
GRAPH_NODE, GRAPH_INITIALIZER = 1, 5
NODE_ATTRIBUTE = 5
ATTR_T, ATTR_G, ATTR_TENSORS, ATTR_GRAPHS = 5, 6, 10, 11
TENSOR_SEGMENT, TENSOR_FLOAT_DATA, TENSOR_RAW_DATA, TENSOR_DOUBLE_DATA = 3, 4, 9, 10
DATA_FIELDS = {TENSOR_FLOAT_DATA: "float_data", TENSOR_RAW_DATA: "raw_data", TENSOR_DOUBLE_DATA: "double_data"}

MIN_STRIP = 64  # smaller payloads stay inline: an 18-byte marker and a read would save little
MAX_DEPTH = 100  # message nesting, as protobuf's own parser limits it (subgraphs nest)

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
_MODEL, _GRAPH, _NODE, _ATTR, _TENSOR = range(5)
# the submessages walked into, by message kind and field number; nothing else holds weights
_CHILDREN = {
    _MODEL: {MODEL_GRAPH: _GRAPH},
    _GRAPH: {GRAPH_NODE: _NODE, GRAPH_INITIALIZER: _TENSOR},
    _NODE: {NODE_ATTRIBUTE: _ATTR},
    _ATTR: {ATTR_T: _TENSOR, ATTR_G: _GRAPH, ATTR_TENSORS: _TENSOR, ATTR_GRAPHS: _GRAPH},
}


class Region(NamedTuple):
    """A stripped payload: the TensorProto field it was and where its bytes are in the file."""

    field: int
    offset: int
    length: int


class Stripped(NamedTuple):
    data: bytes  # the model, each stripped payload replaced by a raw_data marker
    regions: list[Region]  # indexed by marker
    nonce: bytes  # random per walk, so no stored raw_data can pass for a marker


class Hole(NamedTuple):
    """Where the raw_data payload of the tensor marked `slot` goes, `length` bytes long."""

    slot: int
    length: int


Piece: TypeAlias = bytes | memoryview | Hole


class _Field(NamedTuple):
    number: int
    wire: int
    start: int  # first byte of the tag
    value: int  # first byte of the payload (after the length prefix, for length-delimited fields)
    end: int


def encode_varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def field_head(number: int, length: int) -> bytes:
    """Tag and length prefix of a length-delimited field: with its payload, what a tensor merges back."""
    return encode_varint(number << 3 | _LEN) + encode_varint(length)


def marker(nonce: bytes, index: int) -> bytes:
    """The raw_data that stands in for payload `index`."""
    return nonce + index.to_bytes(8, "little")


def _size(piece: Piece) -> int:
    return piece.length if isinstance(piece, Hole) else len(piece)


class _Walker:
    """Re-encodes the messages on the way to tensors; `_tensor` decides what becomes of each tensor."""

    def __init__(self, buf: bytes | mmap.mmap | memoryview, where: str, nonce: bytes, lengths: Sequence[int] | None) -> None:
        self.buf, self.where, self.nonce = buf, where, nonce
        self.lengths = lengths  # None: strip payloads; else expand marker i into a hole of lengths[i]
        self.regions: list[Region] = []
        self.holes: list[int] = []

    def _varint(self, pos: int, end: int) -> tuple[int, int]:
        value = shift = 0
        start = pos
        while True:
            if pos >= end:
                raise FormatError(f"{self.where}: corrupt protobuf: varint at byte {start} runs past the end of its message")
            b = self.buf[pos]
            pos += 1
            value |= (b & 0x7F) << shift
            if b < 0x80:
                return value, pos
            shift += 7
            if shift >= 70:
                raise FormatError(f"{self.where}: corrupt protobuf: varint at byte {start} is longer than 10 bytes")

    def _fields(self, start: int, end: int) -> Iterator[_Field]:
        pos = start
        while pos < end:
            tag, value = self._varint(pos, end)
            number, wire = tag >> 3, tag & 7
            if number == 0:
                raise FormatError(f"{self.where}: corrupt protobuf: field number 0 at byte {pos}")
            if wire == _VARINT:
                stop = self._varint(value, end)[1]
            elif wire in (_I64, _I32):
                stop = value + (8 if wire == _I64 else 4)
            elif wire == _LEN:
                length, value = self._varint(value, end)
                stop = value + length
            else:
                raise FormatError(f"{self.where}: not an ONNX model, or a corrupt one: protobuf wire type {wire} "
                                  f"(field {number} at byte {pos})")
            if stop > end:  # a hostile length never reaches an allocation or a read
                if end == len(self.buf):
                    raise FormatError(f"{self.where}: truncated or corrupt: field {number} at byte {pos} ends at byte "
                                      f"{stop}, past the end of the file ({end} bytes)")
                raise FormatError(f"{self.where}: corrupt protobuf: field {number} at byte {pos} ends at byte {stop}, "
                                  f"past the end of its message at byte {end}")
            yield _Field(number, wire, pos, value, stop)
            pos = stop

    def message(self, kind: int, start: int, end: int, depth: int) -> tuple[list[Piece], int] | None:
        """The message at [start, end) re-encoded as (pieces, size), or None when nothing in it changes."""
        if depth > MAX_DEPTH:
            raise FormatError(f"{self.where}: protobuf messages nest deeper than {MAX_DEPTH} levels at byte {start}")
        if kind == _TENSOR:
            pieces = self._tensor(start, end)
            return None if pieces is None else (pieces, sum(_size(p) for p in pieces))
        children = _CHILDREN[kind]
        out: list[Piece] = []
        size, copied = 0, start
        for f in self._fields(start, end):
            child = children.get(f.number)
            sub = self.message(child, f.value, f.end, depth + 1) if child is not None and f.wire == _LEN else None
            if sub is None:
                continue
            sub_pieces, sub_size = sub
            tag_end = self._varint(f.start, end)[1]
            run, head = self.buf[copied : f.start], bytes(self.buf[f.start : tag_end]) + encode_varint(sub_size)
            out += [run, head, *sub_pieces]
            size += len(run) + len(head) + sub_size
            copied = f.end
        if not out:
            return None
        tail = self.buf[copied:end]
        out.append(tail)
        return out, size + len(tail)

    def _tensor(self, start: int, end: int) -> list[Piece] | None:
        data, segmented = [], False
        for f in self._fields(start, end):
            if f.number in DATA_FIELDS:
                data.append(f)
            segmented = segmented or f.number == TENSOR_SEGMENT
        if self.lengths is not None:
            return self._expand(start, end, data, self.lengths)
        # a data field given twice means merging (last raw_data wins, packed runs concatenate):
        # leave such tensors, and segmented ones, for protobuf and onnx to interpret
        if len(data) != 1 or segmented or data[0].wire != _LEN or data[0].end - data[0].value < MIN_STRIP:
            return None
        f = data[0]
        mark = field_head(TENSOR_RAW_DATA, 16) + marker(self.nonce, len(self.regions))
        self.regions.append(Region(f.number, f.value, f.end - f.value))
        return [self.buf[start : f.start], mark, self.buf[f.end : end]]

    def _expand(self, start: int, end: int, data: list[_Field], lengths: Sequence[int]) -> list[Piece] | None:
        marked = [f for f in data
                  if f.number == TENSOR_RAW_DATA and f.end - f.value == 16 and self.buf[f.value : f.value + 8] == self.nonce]
        if not marked:
            return None
        f = marked[-1]
        i = int.from_bytes(self.buf[f.value + 8 : f.end], "little")
        if not 0 <= i < len(lengths):
            raise FormatError(f"{self.where}: tensor marker {i} out of range")
        self.holes.append(i)
        hole = Hole(i, lengths[i])
        return [self.buf[start : f.start], field_head(TENSOR_RAW_DATA, hole.length), hole, self.buf[f.end : end]]


def strip(buf: bytes | mmap.mmap, where: str) -> Stripped:
    """The serialized model in `buf` (a mapped file) with its large tensor payloads left out.

    Raises:
        FormatError: a length or varint that does not fit the file, or an unsupported encoding.
    """
    walker = _Walker(buf, where, os.urandom(8), None)
    result = walker.message(_MODEL, 0, len(buf), 0)
    data = bytes(buf[:]) if result is None else b"".join(p for p in result[0] if not isinstance(p, Hole))
    return Stripped(data, walker.regions, walker.nonce)


def expand(data: bytes, nonce: bytes, lengths: Sequence[int], where: str) -> list[Piece]:
    """A serialized model whose tensor `i` has raw_data `marker(nonce, i)`, as the pieces of the same model
    with a `lengths[i]`-byte payload there instead: bytes (views into `data`) and the holes to fill.

    Raises:
        FormatError: the model is corrupt, or a marker is missing or repeated.
    """
    walker = _Walker(memoryview(data), where, nonce, lengths)
    result = walker.message(_MODEL, 0, len(data), 0)
    if sorted(walker.holes) != list(range(len(lengths))):
        raise FormatError(f"{where}: {len(walker.holes)} of the {len(lengths)} tensors to write were found")
    return [memoryview(data)] if result is None else result[0]


def marker_of(tensor: TensorProto, nonce: bytes) -> int | None:
    """The region index a stripped tensor carries in its raw_data, or None for a tensor left whole."""
    if not tensor.HasField("raw_data"):
        return None
    raw = tensor.raw_data
    if len(raw) != 16 or raw[:8] != nonce:
        return None
    return int.from_bytes(raw[8:], "little")


def every_tensor(graph: GraphProto) -> Iterator[TensorProto]:
    """Every tensor where `strip` may have left a marker: initializers and attribute tensors, subgraphs included."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from every_tensor(attr.g)
            for sub in attr.graphs:
                yield from every_tensor(sub)
