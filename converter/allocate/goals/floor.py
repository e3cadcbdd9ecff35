"""The float floor: whether a fidelity goal is missed because of the inputs, not the quantizer."""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np
from numpy.typing import NDArray

from qpack.converter.allocate.options import Menu
from qpack.formats.model import SourceModel, Weight

FLOAT_FLOOR = 2.0 ** -20  # relative noise of the float-rounding probe: about 8-16 units in the last place of a float32


def float_floor(src: SourceModel, ms: list[Menu], model_path: Any, inputs: Any, reference: Any, parts: Any, workdir: Any) -> dict[str, Any]:
    """An evaluation of the model with the menus' tensors times 1 + FLOAT_FLOOR x N(0, 1) noise
    (seeded): where even that misses a fidelity goal, the outputs on these inputs are at the float
    floor (a text detector's scores on noise: 16,359 of 16,384 exactly 0, the rest a few units of
    2^-25) and no quantizer can keep them; the goal is not what is out of reach. Weights stored as
    float16 cannot carry such a move: for them the probe is the model itself and finds nothing."""
    from qpack.converter.evaluate import compare
    from qpack.formats.registry import restore_model

    rng = np.random.default_rng(0)

    def moved(w: Weight) -> NDArray:
        a = w.array
        return (a * (1 + FLOAT_FLOOR * rng.standard_normal(a.shape, dtype=np.float32))).astype(a.dtype)

    out = workdir / f"float-floor.{src.format}"
    written = [out]
    try:
        written = restore_model(src.format, src.skeleton({m.weight.key for m in ms}),
                                {m.weight.key: partial(moved, m.weight) for m in ms}, out)
        return compare(model_path, out, inputs, reference=reference, parts=parts)
    finally:
        for f in written:
            f.unlink(missing_ok=True)
