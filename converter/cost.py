"""What one tensor costs at one setting, as a container would really store it: for choosing
settings across tensors (an allocator pricing candidates at equal slope) with the coder's real sizes."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray

from qpack.converter.quant import as_grouping, get_quantizer
from qpack.converter.quant.stream import check_finite, quantize_stream
from qpack.formats.qpk import ANS, BlobKind, Codec, CodeContext, Grouping, encode


class Cost(NamedTuple):
    """Bytes stored (codes as the codec keeps them, plus parameters) and the squared error."""

    bytes: int
    squared_error: float


def tensor_cost(x: NDArray, scheme: str, bits: int, grouping: Grouping | int | None = None, clip: str = "minmax",
                codec: Codec = ANS, rdo: float = 0.0, dtypes: dict[str, str] | None = None) -> Cost:
    """(coded bytes, sum of squared errors) of tensor `x` quantized at one setting.

    The codes go through the writer's own encode(), so a codec that does not pay is priced as the
    raw stream it would give way to. Deterministic: the same setting gives the same bytes.

    Raises:
        OptionError: a setting the scheme refuses (its bit range, rdo on pow2 or lut).
        FormatError: x holds NaN or infinite values.
    """
    a = np.asarray(x, dtype=np.float32)
    check_finite(a, "tensor")
    g = as_grouping(grouping)
    q = quantize_stream(get_quantizer(scheme), a, bits, g, clip, dtypes, rdo)
    _, stored, _ = encode(q.packed, BlobKind.CODES, codec, ctx=CodeContext(bits, a.size, a.shape, g))
    return Cost(stored.nbytes + sum(int(v.nbytes) for v in q.params.values()), q.noise)
