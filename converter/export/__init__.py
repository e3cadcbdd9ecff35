"""Exports of a .qpk to what a runtime or a firmware build consumes, found through a registry.

An exporter is a function `(reader, out, notes) -> list[Path]` registered under the `--to` name;
`notes` collects one-line remarks (a tensor widened to the nearest exact form, say) to print.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from formats.errors import OptionError
from formats.qpk import QpkReader

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
            raise OptionError(f"{qpk}: holds a {q.format} model; --to {to} exports {' or '.join(target.formats)} models")
        fn: Exporter = getattr(importlib.import_module(target.module), target.function)
        return fn(q, Path(out), notes), notes


register_target(Target("c", "converter.export.c", "export_c", ("onnx", "tflite"),
                       "firmware sources: qpk.h (C99 decoder) and the weights as const C arrays, into folder -o"))
