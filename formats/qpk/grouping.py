"""Which weights share one set of quantization parameters: the tensor, a channel, or a block.

A tensor of shape S is split into parameter groups in one of three ways:
- per tensor (`axis` nil): one group;
- per channel (`axis` a): one group per index along a, S[a] groups;
- per block (`axis` a, `block` B): B consecutive weights along a, at fixed indices on every other
  axis, form a group. The groups form an array of shape S with S[a] replaced by ceil(S[a] / B);
  the last block along a is short when B does not divide S[a]. This is ONNX DequantizeLinear's
  blocked layout, so a container maps onto it without reordering.

Parameters are stored one value per group (or `per_group` values, see the scheme table) in C order
of that group array.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True)
class Grouping:
    axis: int | None = None
    block: int | None = None

    @property
    def kind(self) -> str:
        return "tensor" if self.axis is None else ("channel" if self.block is None else "block")

    def shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The group array's shape, rank kept: it broadcasts against the tensor once expanded."""
        if self.axis is None:
            return (1,) * len(shape)
        if self.block is None:
            return tuple(n if i == self.axis else 1 for i, n in enumerate(shape))
        return tuple(-(-n // self.block) if i == self.axis else n for i, n in enumerate(shape))

    def count(self, shape: tuple[int, ...]) -> int:
        """Number of groups; Python integers, so no product can wrap."""
        out = 1
        for n in self.shape(shape):
            out *= n
        return out

    def span(self, n: int) -> int:
        """The block length that matters along an axis of n weights: a block as long as the axis or
        longer is the whole axis, so a hostile block size costs nothing."""
        return max(1, min(self.block or 1, n))

    def expand(self, values: NDArray, shape: tuple[int, ...]) -> NDArray:
        """Flat per-group values as an array that broadcasts against a tensor of `shape`."""
        g = np.asarray(values).reshape(self.shape(shape))
        if self.block is None or self.axis is None:
            return g
        full = np.repeat(g, self.span(shape[self.axis]), axis=self.axis)
        return full[tuple(slice(0, shape[self.axis]) if i == self.axis else slice(None) for i in range(len(shape)))]

    def blocked(self, x: NDArray) -> tuple[NDArray, tuple[int, ...]]:
        """A view of `x` whose reduction over the returned axes gives one value per group (keepdims).

        Blocks are split out as an axis of length B right after the grouped axis; a short last
        block is padded with copies of its last weight, which changes no block's range.
        """
        if self.axis is None:
            return x, tuple(range(x.ndim))
        if self.block is None:
            return x, tuple(i for i in range(x.ndim) if i != self.axis)
        a = self.axis
        n = x.shape[a]
        b = self.span(n)
        if n % b:
            pad = [(0, 0)] * x.ndim
            pad[a] = (0, -n % b)
            x = np.pad(x, pad, mode="edge")
        return x.reshape(x.shape[:a] + (x.shape[a] // b, b) + x.shape[a + 1 :]), (a + 1,)

    def unblocked(self, codes: NDArray, shape: tuple[int, ...]) -> NDArray:
        """Inverse of blocked() for an array computed on its view: back to `shape`, padding dropped."""
        if self.block is None or self.axis is None:
            return codes
        a = self.axis
        merged = codes.reshape(codes.shape[:a] + (-1,) + codes.shape[a + 2 :])
        return merged[tuple(slice(0, shape[a]) if i == a else slice(None) for i in range(len(shape)))]
