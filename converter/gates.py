"""Budgets for build pipelines: a broken budget is a BudgetError, which exits with its own code."""

from __future__ import annotations

import math
from dataclasses import dataclass

from qpack.formats.errors import BudgetError, OptionError


@dataclass(frozen=True)
class Budget:
    max_size: int | None = None  # bytes of the .qpk file
    max_bpw: float | None = None  # bits per quantized weight, scales included
    min_sqnr: float | None = None  # dB, signal and noise pooled over all quantized weights

    def __post_init__(self) -> None:
        if self.max_size is not None and self.max_size <= 0:
            raise OptionError("--max-size must be a positive number of bytes")
        if self.max_bpw is not None and self.max_bpw <= 0:
            raise OptionError("--max-bpw must be positive")

    def check(self, size: int, bpw: float | None, sqnr: float | None, floats_known: bool) -> None:
        """Raise BudgetError naming the first budget broken.

        `sqnr` None with the float weights known means no quantization noise at all (exact values,
        or nothing quantized); without them (a .qpk alone) it is unknown.
        """
        if sqnr is None and floats_known:
            sqnr = math.inf
        if self.max_size is not None and size > self.max_size:
            raise BudgetError(f"artifact is {size:,} bytes, over --max-size {self.max_size:,}")
        if self.max_bpw is not None and bpw is not None and bpw > self.max_bpw:
            raise BudgetError(f"{bpw:.4f} bits per weight, over --max-bpw {self.max_bpw}")
        if self.min_sqnr is not None:
            if sqnr is None:
                raise BudgetError("weight SQNR is unknown (a .qpk alone has no float weights: pass --source)")
            if sqnr < self.min_sqnr:
                raise BudgetError(f"weight SQNR {sqnr:.2f} dB, under --min-sqnr {self.min_sqnr}")
