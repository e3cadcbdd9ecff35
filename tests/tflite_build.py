"""A minimal TFLite file built with the flatbuffers Builder: FULLY_CONNECTED whose weights are stored
after the flatbuffer by offset, as converters do for models over 2 GiB.

Slot numbers follow the TFLite schema (Model, SubGraph, Tensor, Operator, Buffer tables).
"""

from __future__ import annotations

import flatbuffers
import numpy as np

FULLY_CONNECTED = 9
FLOAT32 = 0


def _ivec(b: flatbuffers.Builder, values: list[int]) -> int:
    b.StartVector(4, len(values), 4)
    for v in reversed(values):
        b.PrependInt32(v)
    return b.EndVector()


def _tensor(b: flatbuffers.Builder, shape: list[int], buffer: int, name: str) -> int:
    n, s = b.CreateString(name), _ivec(b, shape)
    b.StartObject(9)
    b.PrependUOffsetTRelativeSlot(0, s, 0)
    b.PrependInt8Slot(1, FLOAT32, -1)  # written even though it is the default
    b.PrependUint32Slot(2, buffer, 0)
    b.PrependUOffsetTRelativeSlot(3, n, 0)
    return b.EndObject()


def fc_with_offset_buffer(weights: np.ndarray) -> bytes:
    """y[1, out] = x[1, in] @ weights.T; weights float32 [out, in], stored after the flatbuffer."""
    out_f, in_f = weights.shape
    b = flatbuffers.Builder(1024)
    # buffers: 0 empty (schema convention), 1 the weights by offset, 2 and 3 empty for activations
    buffers = []
    for i in range(4):
        b.StartObject(3)
        if i == 1:
            b.PrependUint64Slot(1, 0xDEADBEEF, 0)  # offset placeholder, patched once the size is known
            b.PrependUint64Slot(2, weights.nbytes, 0)
        buffers.append(b.EndObject())
    tensors = [_tensor(b, [1, in_f], 2, "x"), _tensor(b, [out_f, in_f], 1, "fc/weights"), _tensor(b, [1, out_f], 3, "y")]
    op_in, op_out = _ivec(b, [0, 1, -1]), _ivec(b, [2])
    b.StartObject(11)
    b.PrependUint32Slot(0, 0, 0)
    b.PrependUOffsetTRelativeSlot(1, op_in, 0)
    b.PrependUOffsetTRelativeSlot(2, op_out, 0)
    op = b.EndObject()

    def vec(items: list[int]) -> int:
        b.StartVector(4, len(items), 4)
        for it in reversed(items):
            b.PrependUOffsetTRelative(it)
        return b.EndVector()

    tvec, ovec = vec(tensors), vec([op])
    ins, outs, name = _ivec(b, [0]), _ivec(b, [2]), b.CreateString("main")
    b.StartObject(5)
    b.PrependUOffsetTRelativeSlot(0, tvec, 0)
    b.PrependUOffsetTRelativeSlot(1, ins, 0)
    b.PrependUOffsetTRelativeSlot(2, outs, 0)
    b.PrependUOffsetTRelativeSlot(3, ovec, 0)
    b.PrependUOffsetTRelativeSlot(4, name, 0)
    subgraph = b.EndObject()
    b.StartObject(4)
    b.PrependInt8Slot(0, FULLY_CONNECTED, 0)
    b.PrependInt32Slot(2, 1, 1)
    b.PrependInt32Slot(3, FULLY_CONNECTED, 0)
    opcode = b.EndObject()
    codes, subgraphs, bufs = vec([opcode]), vec([subgraph]), vec(buffers)
    desc = b.CreateString("qpack test model")
    b.StartObject(8)
    b.PrependUint32Slot(0, 3, 0)
    b.PrependUOffsetTRelativeSlot(1, codes, 0)
    b.PrependUOffsetTRelativeSlot(2, subgraphs, 0)
    b.PrependUOffsetTRelativeSlot(3, desc, 0)
    b.PrependUOffsetTRelativeSlot(4, bufs, 0)
    model = b.EndObject()
    b.Finish(model, file_identifier=b"TFL3")
    head = bytearray(b.Output())
    start = -(-len(head) // 16) * 16
    placeholder = (0xDEADBEEF).to_bytes(8, "little")
    at = head.index(placeholder)
    head[at : at + 8] = start.to_bytes(8, "little")
    return bytes(head) + bytes(start - len(head)) + weights.astype("<f4").tobytes()
