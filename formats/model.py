"""The one record that crosses from formats/ to converter/: a model's tensors with their context."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from qpack.formats.qpk.spec import FLOAT_DTYPES  # noqa: F401  (re-exported: what counts as a float weight)


class Role(str, Enum):
    """What a tensor does for the op that consumes it; drives the default quantization policy."""

    KERNEL = "kernel"  # convolution filters
    MATRIX = "matrix"  # dense / matmul weights
    RECURRENT = "recurrent"  # LSTM/GRU/RNN input and recurrence weights
    EMBEDDING = "embedding"  # lookup tables (Gather data)
    BIAS = "bias"
    NORM = "norm"  # normalization scale, shift, mean, variance
    OTHER = "other"  # elementwise constants, shapes, anything else
    QUANTIZED = "quantized"  # already integer-quantized weights with their own scales
    INTEGER = "integer"  # shapes, indices, masks


class Head(str, Enum):
    """What computes a model output, looking through ops that only reshape, cast or (de)quantize it
    and through a constant added or multiplied in (a bias, a scale): how an evaluation judges it."""

    SOFTMAX = "softmax"  # a softmax or log-softmax: class probabilities
    DENSE = "dense"  # a matrix product (a dense layer): logits, most often
    OTHER = "other"  # a convolution, an activation, a concatenation, ...


HEAD_STEPS = 32  # ops looked through from an output to what computes it


SPARSE = "sparse: its nonzero values"  # Weight.note of a sparse tensor's values (formats.tflite_model)


@dataclass(frozen=True)
class Weight:
    """One constant tensor of a source model.

    `key` locates the tensor in the model (unique); `name` is what the model calls it. `axis` is
    the output-channel axis when the consumer has one, which is where per-channel scales go;
    `reduction` the axis the consumer accumulates over, along which blocks of weights share scales.
    The values are read from the model's file on each access of `array`, into a fresh array, so
    that an adapter holds no copy of a large model: read it once into a local.
    """

    key: str
    name: str
    shape: tuple[int, ...]
    dtype: str
    role: Role
    axis: int | None = None
    consumers: tuple[str, ...] = field(default=())
    note: str = ""
    nbytes: int = 0
    load: Callable[[], NDArray] = field(default=lambda: np.zeros(0), repr=False, compare=False)
    reduction: int | None = None  # the axis the consumer sums over (input features), where blocks of weights go

    @property
    def array(self) -> NDArray:
        return self.load()

    @property
    def sparse(self) -> bool:
        """Its values are a sparse tensor's nonzero ones: the zeros between them are implicit, so an
        integer form keeps them only with zero point 0."""
        return self.note == SPARSE

    @property
    def is_float(self) -> bool:
        return self.dtype in FLOAT_DTYPES

    @property
    def size(self) -> int:
        return math.prod(self.shape)  # Python integers: no product of hostile dims can wrap


def from_array(key: str, name: str, array: NDArray, dtype: str, role: Role, axis: int | None = None,
               consumers: tuple[str, ...] = (), note: str = "") -> Weight:
    """A Weight over an array already in memory (a view into a mapped file, say)."""
    return Weight(key, name, tuple(int(n) for n in array.shape), dtype, role, axis, consumers, note, int(array.nbytes),
                  lambda: array)


class SourceModel(Protocol):
    """What every format adapter offers: its weights, and a way to take them out and put them back."""

    format: str
    path: Path
    file_bytes: int  # size on disk, external data included
    external_files: list[Path]  # data files beside the model (ONNX external data)

    @property
    def weights(self) -> list[Weight]: ...

    def skeleton(self, strip: set[str]) -> bytes:
        """The model serialized with the data of the `strip` weights removed."""
        ...

    def output_heads(self) -> dict[str, Head]:
        """What computes each output of the (main) graph, by output name."""
        ...

    def close(self) -> None:
        """Release the model's files; its weights can no longer be read."""
        ...
