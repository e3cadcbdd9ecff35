"""Exports of a .qpk to what a runtime or a firmware build consumes, found through a registry.

An exporter is a function `(reader, out, notes) -> list[Path]` registered under the `--to` name;
`notes` collects one-line remarks (a tensor widened to the nearest exact form, say) to print. Each
target declares what it runs natively (`Native`): the stored settings it executes as they are, with
no widening; anything else it exports widened to its nearest exact form, or refuses.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from qpack.formats.errors import OptionError
from qpack.formats.qpk import CODECS, SCHEMES, QpkReader, TensorEntry
from qpack.formats.registry import a_model

Exporter = Callable[[QpkReader, Path, list[str]], list[Path]]

GROUPINGS = ("tensor", "channel", "block")  # Grouping.kind


@dataclass(frozen=True)
class Native:
    """The stored settings a target executes as they are (no widening, no decoding at load time)."""

    schemes: tuple[str, ...] | None = None  # None: every scheme with an integer form (SchemeSpec.integers)
    widths: tuple[int, ...] = tuple(range(1, 17))  # code widths stored at their own width
    signed: bool | None = None  # integer forms: True symmetric only (no zero point), None either
    groupings: tuple[str, ...] = GROUPINGS
    blocks: tuple[int, ...] = ()  # block sizes taken (empty: any the container allows)
    param_dtypes: tuple[str, ...] = ("<f4", "<f2")
    codecs: tuple[str, ...] | None = None  # codecs whose streams it keeps as stored; None: it decodes every codec

    def runs(self, e: TensorEntry, codec: str) -> bool:
        """Whether tensor `e`, its codes stored by `codec`, runs natively."""
        spec = SCHEMES.get(e.scheme)
        if spec is None or (self.schemes is None and spec.integers is None) or (self.schemes is not None and e.scheme not in self.schemes):
            return False
        if (self.signed and not spec.signed) or (self.codecs is not None and codec not in self.codecs):
            return False
        floats = {d for d in e.dtypes.values() if d.startswith("<f")}
        g = e.grouping
        # a target of integer forms stores the integers' width; one that decodes named schemes, the codes'
        width = spec.integer_bits(e.bits) if self.schemes is None else e.bits
        return (width in self.widths and g.kind in self.groupings and floats <= set(self.param_dtypes)
                and (g.block is None or not self.blocks or g.block in self.blocks))


@dataclass(frozen=True)
class Target:
    name: str  # the `--to` value
    module: str  # imported when asked for, so `qpack export --to c` costs no onnx import
    function: str
    formats: tuple[str, ...]  # source formats it can export
    help: str
    native: Native = Native()


TARGETS: dict[str, Target] = {}


def register_target(target: Target) -> Target:
    TARGETS[target.name] = target
    return target


def export(qpk: Path, to: str, out: Path) -> tuple[list[Path], list[str]]:
    """Export container `qpk` as `to` into `out`; returns the files written and the notes."""
    target = TARGETS.get(to)
    if target is None:
        raise OptionError(f"unknown export target {to!r}, expected one of {', '.join(TARGETS)}")
    notes: list[str] = []
    with QpkReader(qpk) as q:
        if q.format not in target.formats:
            takes = " or ".join(target.formats)
            raise OptionError(f"{qpk}: holds {a_model(q.format)}; --to {to} takes containers of {takes} models")
        for e in q.entries:  # every parameter within its range before anything is written (FormatError)
            q.params(e)
        fn: Exporter = getattr(importlib.import_module(target.module), target.function)
        return fn(q, Path(out), notes), notes


# DequantizeLinear: INT4/UINT4 and INT16 from opset 21, INT2/UINT2 from 25, blocks along one axis
_QDQ = Native(widths=(2, 4, 8, 16))
# TFLite: int4 and int8 per tensor or per channel, float32 scales; hybrid kernels want symmetric weights
_TFLITE = Native(widths=(4, 8), signed=True, groupings=("tensor", "channel"), param_dtypes=("<f4",))
_TFLITE_DEQUANTIZE = Native(widths=(4, 8), groupings=("tensor", "channel"), param_dtypes=("<f4",))
# qpk.h decodes every scheme of FORMAT.md at any width and grouping
_C = Native(schemes=("asym", "sym", "pow2", "lut", "dq"), codecs=("raw",))

register_target(Target("onnx-qdq", "qpack.converter.export.onnx_qdq", "export_onnx_qdq", ("onnx",),
                       "ONNX with integer weights behind DequantizeLinear (INT2..INT32 as the codes need)", _QDQ))
register_target(Target("onnx-matmulnbits", "qpack.converter.export.onnx_matmulnbits", "export_onnx_matmulnbits", ("onnx",),
                       "ONNX with MatMul/Gemm weights as com.microsoft.MatMulNBits (2/4/8 bits), the rest as onnx-qdq",
                       Native(widths=(2, 4, 8), blocks=(16, 32, 64, 128, 256))))
register_target(Target("tflite", "qpack.converter.export.tflite_int", "export_tflite", ("tflite",),
                       "TFLite with int8/int4 weights: hybrid kernels where they apply, DEQUANTIZE elsewhere", _TFLITE))
register_target(Target("tflite-dequantize", "qpack.converter.export.tflite_int", "export_tflite_dequantize", ("tflite",),
                       "TFLite with int8/int4 weights, all through DEQUANTIZE (float kernels, the container's exact values)",
                       _TFLITE_DEQUANTIZE))
register_target(Target("c", "qpack.converter.export.c", "export_c", ("onnx", "tflite"),
                       "firmware sources: qpk.h (C99 decoder) and the weights as const C arrays, into folder -o", _C))
register_target(Target("c-coded", "qpack.converter.export.c", "export_c_coded", ("onnx", "tflite"),
                       "as c, with entropy-coded (ans) codes kept as streams: the container's flash, qpk_unpack into RAM",
                       replace(_C, codecs=("raw", "ans"))))


def fit(reader: QpkReader) -> dict[str, int]:
    """For each target that takes the container's source format: how many of its tensors it does not
    run natively (0: the export stores every tensor as the container does)."""
    codecs = [CODECS[reader.blobs[e.codes].codec].name for e in reader.entries]
    return {t.name: sum(not t.native.runs(e, c) for e, c in zip(reader.entries, codecs))
            for t in TARGETS.values() if reader.format in t.formats}
