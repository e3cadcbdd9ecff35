"""Exports of a .qpk to what a runtime or a firmware build consumes, found through a registry.

An exporter is a function `(reader, out, notes) -> list[Path]` registered under the `--to` name;
`notes` collects one-line remarks (a tensor widened to the nearest exact form, say) to print.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from qpack.formats.errors import OptionError
from qpack.formats.qpk import QpkReader

Exporter = Callable[[QpkReader, Path, list[str]], list[Path]]


@dataclass(frozen=True)
class Target:
    name: str  # the `--to` value
    module: str  # imported when asked for, so `qpack export --to c` costs no onnx import
    function: str
    formats: tuple[str, ...]  # source formats it can export
    help: str


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
            article = "an" if q.format[0] in "aeiou" else "a"
            takes = " or ".join(target.formats)
            raise OptionError(f"{qpk}: holds {article} {q.format} model; --to {to} takes containers of {takes} models")
        fn: Exporter = getattr(importlib.import_module(target.module), target.function)
        return fn(q, Path(out), notes), notes


register_target(Target("onnx-qdq", "qpack.converter.export.onnx_qdq", "export_onnx_qdq", ("onnx",),
                       "ONNX with integer weights behind DequantizeLinear (INT2..INT32 as the codes need)"))
register_target(Target("onnx-matmulnbits", "qpack.converter.export.onnx_matmulnbits", "export_onnx_matmulnbits", ("onnx",),
                       "ONNX with MatMul/Gemm weights as com.microsoft.MatMulNBits (2/4/8 bits), the rest as onnx-qdq"))
register_target(Target("tflite", "qpack.converter.export.tflite_int", "export_tflite", ("tflite",),
                       "TFLite with int8/int4 weights: hybrid kernels where they apply, DEQUANTIZE elsewhere"))
register_target(Target("tflite-dequantize", "qpack.converter.export.tflite_int", "export_tflite_dequantize", ("tflite",),
                       "TFLite with int8/int4 weights, all through DEQUANTIZE (float kernels, the container's exact values)"))
register_target(Target("c", "qpack.converter.export.c", "export_c", ("onnx", "tflite"),
                       "firmware sources: qpk.h (C99 decoder) and the weights as const C arrays, into folder -o"))
register_target(Target("c-coded", "qpack.converter.export.c", "export_c_coded", ("onnx", "tflite"),
                       "as c, with entropy-coded (ans) codes kept as streams: the container's flash, qpk_unpack into RAM"))
