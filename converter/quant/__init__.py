"""Quantizers, one per scheme of the format's table, found through a registry."""

from qpack.converter.quant import dq, lut, pow2, uniform  # noqa: F401  (registers the built-in quantizers)
from qpack.converter.quant.base import CLIPS, QUANTIZERS, Params, Quantizer, as_grouping, get_quantizer

__all__ = ["CLIPS", "QUANTIZERS", "Params", "Quantizer", "as_grouping", "get_quantizer"]
