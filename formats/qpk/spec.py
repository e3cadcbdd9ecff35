"""Every constant FORMAT.md names: magic, version, header layout, alignment, limits, blob kinds.

Nothing else in qpack spells out a byte offset, a limit or a code of the container; the scheme
table lives in `formats.qpk.schemes`, the grouping rule in `formats.qpk.grouping`, the codecs in
`formats.qpk.codecs`.
"""

from __future__ import annotations

import struct
from enum import IntEnum

MAGIC = b"\x89QPK\r\n\x1a\n"  # PNG-style: catches text-mode transfers and 7-bit channels
VERSION_MAJOR = 1
VERSION_MINOR = 0  # written when no tensor uses a 1.1 feature, so 1.0 readers keep reading those files
VERSION_MINOR_1 = 1  # 1.1: blocks of weights along an axis (`block`), parameter dtypes per tensor (`param_dtypes`)
# tensor-entry keys added after 1.0, each with the minor version that added it: a file declares the
# highest minor version its entries use (the writer decides it, from the entries it writes)
ENTRY_KEY_MINORS = {"block": VERSION_MINOR_1, "param_dtypes": VERSION_MINOR_1}

# magic, major, minor, flags, meta_length, payload_offset, payload_length, meta_sha256
HEADER_BODY = struct.Struct("<8sHHIQQQ32s")
# the body above followed by its CRC-32 and four reserved bytes that must be zero
HEADER = struct.Struct("<8sHHIQQQ32sI4s")
HEADER_SIZE = HEADER.size  # 80

ALIGNMENT = 64  # every payload blob starts on a 64-byte boundary (cache line, SIMD, mmap views)

# Hostile-file limits: a header may claim anything, so the reader caps what it will believe.
MAX_META_LENGTH = 256 * 1024 * 1024
MAX_TENSORS = 1_000_000
MAX_BLOBS = 1 + 4 * MAX_TENSORS  # the graph, and a tensor's codes with up to three parameters
MAX_RANK = 16
MAX_DIM = 2**40
MAX_ELEMENTS = 2**48
MAX_NAME_LENGTH = 65_536
MAX_META_DEPTH = 32  # maps and arrays within each other; the format's own metadata nests 4 deep

# Decompression budgets: how far a stored blob may expand, derived from the file itself, so a small
# hostile file cannot make a reader allocate gigabytes. Writers store a blob raw rather than exceed them.
MAX_EXPANSION = 64  # raw_length <= 64 x stored length + EXPANSION_SLACK
EXPANSION_SLACK = 4096
MAX_GRAPH_BYTES = 1 << 34  # a graph blob, whatever its allowance (16 GiB)

MIN_BITS, MAX_BITS = 1, 16  # code widths any scheme may use; each scheme narrows its own range

# Parameter ranges (FORMAT.md): every code decodes to a finite float32, exactly as the dequantization
# rules say. pow2's codes are 2^(emax - M + m), m in 1..M, M = 2^(n-1) - 1 up to 127 (8 bits): with
# emax in this range every one is a power of two float32 holds exactly, from its least subnormal
# 2^-149 (emax - 127 + 1 >= -149) to 2^127, and 2^emax is finite, so a zero code stays 0.
POW2_EMAX_MIN = -23
POW2_EMAX_MAX = 127
BYTE_BITS = 8  # codes up to this wide are held one per byte; wider ones in 16 bits

SOURCE_FORMATS = ("onnx", "tflite")  # how the graph blob is read
FLOAT_DTYPES = ("float32", "float16", "bfloat16", "float64")  # dtypes a quantized tensor is restored to
DTYPE_SIZES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}


def expansion_limit(stored_length: int, allowance: int = 0) -> int:
    """The most bytes a blob of `stored_length` may decode to; a graph blob's allowance is the bytes
    of the quantized tensors it holds as zeros (a TFLite graph keeps their buffers in place)."""
    return MAX_EXPANSION * stored_length + EXPANSION_SLACK + allowance

# Fixed zstd levels: a level is part of the byte-identical-output promise. Level 3 brings n-bit
# code streams within about 1% of their order-0 entropy at ~180 MB/s; higher levels gain little.
GRAPH_ZSTD_LEVEL = 9
CODES_ZSTD_LEVEL = 3

# ans code streams (codec 2): static rANS over the codes with per-context tables (FORMAT.md)
ANS_VERSION = 1
ANS_PRECISION = 15  # tables sum to 2^15: one 16-bit word always renormalizes a 32-bit state
ANS_MODEL_ORDER0 = 0  # one table
ANS_MODEL_NEIGHBOURS = 1  # a table per context, chosen by the magnitudes of the codes before
ANS_PROFILE = 0x80  # model flag: every table is a profile (a few knots), not a weight per symbol
ANS_MAGNITUDE_CENTER = 0  # a code's magnitude is its distance from the stream's center code
ANS_MAGNITUDE_SIGN = 1  # ... or its low n-1 bits (sign-magnitude codes, pow2)
ANS_MAX_WINDOW = 8  # codes before the current one whose magnitudes are summed
ANS_MAX_CONTEXTS = 16
ANS_MAX_OFFSET = 63
ANS_MAX_WIDE_SHIFT = 15  # a wide table's weight stands for a run of at most 2^15 codes
ANS_STATE_LOW = 1 << 16  # a stream's state: at least this between codes, at first too, and exactly this at the end
# a table weight w stands for ANS_MANTISSA[(w - 1) % 16] << ((w - 1) // 16): 16 steps per octave
ANS_MANTISSA = tuple(round(1024 * 2 ** (j / 16)) for j in range(16))
# a profile side's knots lie at these distances from its peak (those below the side's length, then its length)
ANS_KNOTS = (1, 2, 3, *sorted(d for e in range(2, 17) for d in (1 << e, 3 << (e - 1))))  # 1, 2, 3, 4, 6, 8, 12, 16, ...


class BlobKind(IntEnum):
    """What a blob holds; lets a reader size-check it before use."""

    GRAPH = 0  # the source model with quantized weights removed
    CODES = 1  # dense n-bit codes, LSB-first
    PARAM = 2  # per-group quantization parameters (scales, zero points, exponents)


def align(n: int) -> int:
    """`n` rounded up to the next multiple of ALIGNMENT."""
    return -(-n // ALIGNMENT) * ALIGNMENT
