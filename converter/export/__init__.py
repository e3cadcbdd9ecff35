"""Exports of a .qpk to what a runtime or a firmware build consumes, found through a registry.

An exporter is a function `(reader, out, notes) -> list[Path]` registered under the `--to` name;
`notes` collects one-line remarks (a tensor widened to the nearest exact form, say) to print. Each
target declares what it runs natively (`Native`): the stored settings it executes as they are, with
no widening; anything else it exports widened to its nearest exact form, or refuses.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

from qpack.converter.export.native import GROUPINGS, XNNPACK_BLOCKS, Native
from qpack.formats.errors import FormatError, OptionError
from qpack.formats.qpk import CODECS, Grouping, QpkReader, zeroed_bytes
from qpack.formats.qpk.meta import kept_shape
from qpack.formats.registry import a_model, adapter

Exporter = Callable[[QpkReader, Path, list[str]], list[Path]]


@dataclass(frozen=True)
class Target:
    name: str  # the `--to` value
    module: str  # imported when asked for, so `qpack export --to c` costs no onnx import
    function: str
    formats: tuple[str, ...]  # source formats it can export
    help: str
    native: Native = Native()
    graph: bool = True  # the export carries the model's graph (its size counts), not only the weights
    calibrated: bool = False  # it runs the model on inputs (activation ranges): the exporter takes `calibration`
    integer_io: bool = False  # it can make the model's inputs and outputs integer (Calibration.integer_io)
    runtime: str = ""  # what runs the export (`export --measure` times it there); "" for sources, not a model

    def widened(self, reader: QpkReader, sparse: set[str] | None = None) -> int:
        """How many of the container's tensors this target does not run as stored (widened, decoded or refused);
        `sparse`: the keys of sparse tensors' values (sparse_keys, found when not given)."""
        sparse = sparse_keys(reader) if sparse is None else sparse
        return sum(not self.native.runs(e, c, e.key in sparse) for e, c in zip(reader.entries, _codecs(reader)))

    def size(self, skeleton: int, tensors: Iterable[Stored], kept: Iterable[tuple[str, str, int]] = ()) -> int:
        """The bytes of an export (an estimate): its own, the graph where it carries one (`skeleton`: the
        graph's bytes before compression, less any zeros in the quantized tensors' places, with the tensors
        it left float, `kept`: (role, dtype, values) each), and each tensor as `native` prices it, with what
        it adds beside its data."""
        n = self.native
        tensors = list(tensors)
        graph = skeleton + n.kept_growth(kept) if self.graph else 0
        return n.base + graph + n.shared_zero_bytes((t.scheme, t.bits, t.shape, t.grouping, t.role, t.sparse) for t in tensors) + sum(
            n.price(t.scheme, t.bits, t.shape, t.grouping, t.code_bytes, t.param_bytes, t.codec, t.role, t.sparse)
            + n.extra(t.name, t.key)
            for t in tensors)

    def predict(self, reader: QpkReader, sparse: set[str] | None = None) -> int:
        """The bytes the export of `reader` takes (an estimate, see size); `sparse` as for widened."""
        skeleton = reader.blobs[reader.graph_index].raw_length - (zeroed_bytes(reader.entries) if adapter(reader.format).zeroed else 0)
        blobs = reader.blobs
        sparse = sparse_keys(reader) if sparse is None else sparse
        return self.size(skeleton, (Stored(e.scheme, e.bits, e.shape, e.grouping, blobs[e.codes].length,
                                           sum(blobs[i].length for i in e.params.values()), c, e.name, e.key, e.role,
                                           e.key in sparse)
                                    for e, c in zip(reader.entries, _codecs(reader))),
                         kept_values(reader.kept))


def kept_values(kept: Iterable[dict[str, Any]]) -> list[tuple[str, str, int]]:
    """(role, dtype, values) of each tensor left float, from rows of a container's `kept` (shapes checked)."""
    return [(str(k.get("role")), str(k.get("dtype")), math.prod(shape)) for k in kept if (shape := kept_shape(k))]


class Stored(NamedTuple):
    """One tensor as a target prices it: its setting, the container's bytes for it, its codec and names."""

    scheme: str
    bits: int
    shape: tuple[int, ...]
    grouping: Grouping
    code_bytes: int
    param_bytes: int
    codec: str
    name: str
    key: str
    role: str = ""  # formats.model.Role value
    sparse: bool = False  # a sparse tensor's values (a target may store them at other widths)


TARGETS: dict[str, Target] = {}
QPK = "qpk"  # what `--for` names when a file is made for the container itself: no target's limits


def register_target(target: Target) -> Target:
    TARGETS[target.name] = target
    return target


def target_named(name: str) -> Target | None:
    """The export target `--for` names; None for `qpk`.

    Raises:
        OptionError: no such target.
    """
    if name == QPK:
        return None
    if name not in TARGETS:
        raise OptionError(f"unknown target {name!r} for --for, expected {QPK} or one of {', '.join(TARGETS)}")
    return TARGETS[name]


def export(qpk: Path, to: str, out: Path, calibration: Any = None, measure: bool = False) -> tuple[list[Path], list[str]]:
    """Export container `qpk` as `to` into `out`; returns the files written and the notes (the first says
    what the export widens when the container was made for another target). `calibration`: inputs for a
    target that runs the model (Target.calibrated; export.calibrate.Calibration). `measure`: time the
    export against the float model in its runtime (export.measured), a last note."""
    target = TARGETS.get(to)
    if target is None:
        raise OptionError(f"unknown export target {to!r}, expected one of {', '.join(TARGETS)}")
    if measure and not target.runtime:
        raise OptionError(f"--to {to} writes sources, not a model a runtime loads: --measure times the model exports")
    if calibration is not None and not target.calibrated:
        calibrated = [f"--to {t.name}" for t in TARGETS.values() if t.calibrated]
        raise OptionError(f"inputs calibrate {', '.join(calibrated[:-1])} and {calibrated[-1]}; --to {to} takes none")
    if calibration is not None and calibration.integer_io and not target.integer_io:
        offered = [t.name for t in TARGETS.values() if t.integer_io]
        raise OptionError(f"integer inputs and outputs are made by {' and '.join(f'--to {t}' for t in offered)}, not --to {to}")
    notes: list[str] = []
    with QpkReader(qpk) as q:
        if q.format not in target.formats:
            takes = " or ".join(target.formats)
            raise OptionError(f"{qpk}: holds {a_model(q.format)}; --to {to} takes containers of {takes} models")
        for e in q.entries:  # every parameter within its range before anything is written (FormatError)
            q.params(e)
        made_for = q.info["options"].get("for", QPK)
        if calibration is not None and calibration.min_cosine is None:  # what convert --for recorded, else the default
            recorded = q.info["options"].get("export_min_cosine") if made_for == to else None
            calibration = replace(calibration, min_cosine=_cosine(recorded, qpk))
        if made_for not in (to, QPK) and (n := target.widened(q)):
            notes.append(f"made for {made_for}: --to {to} stores {n} of its {len(q.entries)} tensors otherwise than the "
                         f"container does (convert --for {to} allocates for it)")
        fn: Exporter = getattr(importlib.import_module(target.module), target.function)
        if target.calibrated:
            files = fn(q, Path(out), notes, calibration)  # type: ignore[call-arg]  # a calibrated exporter's signature
        else:
            files = fn(q, Path(out), notes)
    if measure:
        from qpack.converter.export.measured import measure as timed

        notes.append(timed(Path(qpk), files, target.runtime, calibration.load if calibration is not None else None))
    return files, notes


KEEP_COSINE = 0.99  # a full-integer export's --min-cosine where neither the user nor the container says


def _cosine(recorded: Any, where: Path) -> float:
    """A container's recorded export cosine, checked (it is read from a file), or KEEP_COSINE."""
    if recorded is None:
        return KEEP_COSINE
    if not isinstance(recorded, float | int) or isinstance(recorded, bool) or not -1 <= recorded <= 1:
        raise FormatError(f"{where}: its export_min_cosine {recorded!r} is not a cosine in [-1, 1]")
    return float(recorded)


def sparse_keys(reader: QpkReader) -> set[str]:
    """The keys of the container's tensors that hold a sparse tensor's nonzero values (read from its graph)."""
    a = adapter(reader.format)
    return a.load().sparse_keys(reader.graph(), str(reader.path)) if a.sparse else set()


def _codecs(reader: QpkReader) -> list[str]:
    return [CODECS[reader.blobs[e.codes].codec].name for e in reader.entries]


def fit(reader: QpkReader) -> dict[str, dict[str, Any]]:
    """For each target that takes the container's source format: how many of its tensors it does not
    run natively (`widened`, 0: the export stores every tensor as the container does) and the bytes
    its export takes (`bytes`, an estimate)."""
    sparse = sparse_keys(reader)
    return {t.name: {"widened": t.widened(reader, sparse), "bytes": t.predict(reader, sparse)}
            for t in TARGETS.values() if reader.format in t.formats}


ORT, LITERT = "onnxruntime", "LiteRT"  # what runs the model exports (Target.runtime)
# DequantizeLinear: INT2..INT16 as the codes need (INT2 from opset 25, INT4/INT16 from 21), blocks along one
# axis; scales in the weight's float type, zero points as wide as the integers
_QDQ = Native(widths=(2, 4, 8, 16), scale_bytes=4, overhead=(119, 2))
# TFLite: int4 and int8 per tensor or per channel, float32 scales and int64 zero points (a symmetric
# form's zeros are one vector every tensor of its channel count shares); hybrid kernels want symmetric weights;
# DENSIFY spreads a sparse weight out as int8 only
_TFLITE = Native(widths=(4, 8), signed=True, sparse_signed=True, sparse_widths=(8,), groupings=("tensor", "channel"),
                 param_dtypes=("<f4",), scale_bytes=4, zero_point_bits=64, overhead=(60, 1), shared_zero_points=True,
                 kept_bytes=(("", 4),))
# full-integer TFLite: int8 filters with a scale per output channel, int32 biases (16x8: int64), and each
# activation's parameters (priced per stored tensor)
_TFLITE_INT8 = replace(_TFLITE, widths=(8,), channel_scale_roles=("kernel", "matrix"), centered_roles=("kernel", "matrix"),
                       overhead=(200, 1))
# qpk.h decodes every scheme of FORMAT.md at any width and grouping, its parameters as the container stores them
_C = Native(schemes=("asym", "sym", "pow2", "lut", "dq"), codecs=("raw",), overhead=(172, 1.22), base=1800)

register_target(Target("onnx-qdq", "qpack.converter.export.onnx_qdq", "export_onnx_qdq", ("onnx",),
                       "ONNX with integer weights behind DequantizeLinear (INT2..INT32 as the codes need)", _QDQ, runtime=ORT))
register_target(Target("onnx-fast", "qpack.converter.export.onnx_qdq", "export_onnx_fast", ("onnx",),
                       "ONNX with the onnx-qdq integers behind Cast/Mul, which onnxruntime folds when it loads the model: "
                       "as small, and the float model's speed", replace(_QDQ, overhead=(65, 2)), runtime=ORT))
register_target(Target("onnx-matmulnbits", "qpack.converter.export.onnx_matmulnbits", "export_onnx_matmulnbits", ("onnx",),
                       "ONNX with MatMul/Gemm weights as com.microsoft.MatMulNBits (2/4/8 bits), the rest as onnx-fast",
                       # what MatMulNBits does not take (16 bits, other blocks) is decoded at load, exactly
                       replace(_QDQ, overhead=(148, 2)), runtime=ORT))
register_target(Target("onnx-matmulnbits-int8", "qpack.converter.export.onnx_matmulnbits", "export_onnx_matmulnbits_int8",
                       ("onnx",), "as onnx-matmulnbits, MatMulNBits computing in int8 (accuracy_level 4: activations "
                       "quantized per block as it runs, for the CPU's int8 dot products)", replace(_QDQ, overhead=(148, 2)), runtime=ORT))
register_target(Target("onnx-int8", "qpack.converter.export.onnx_int8", "export_onnx_int8", ("onnx",),
                       "full-integer ONNX: int8 weights and uint8 activations calibrated on --inputs, so onnxruntime runs "
                       "QLinearConv/QLinearMatMul/QGemm; the rest as onnx-fast",
                       Native(widths=(8,), signed=True, groupings=("tensor", "channel"), scale_bytes=4, zero_point_bits=8,
                              zero_points=True, overhead=(900, 4)),
                       calibrated=True, runtime=ORT))
register_target(Target("tflite", "qpack.converter.export.tflite_int", "export_tflite", ("tflite",),
                       "TFLite with int8/int4 weights: fully-connected ones for the hybrid kernel (int4 also in blocks), "
                       "the rest behind DEQUANTIZE (int4 there runs outside XNNPACK)",
                       replace(_TFLITE, role_blocks=XNNPACK_BLOCKS, channel_scale_roles=("matrix",)), runtime=LITERT))
register_target(Target("tflite-fast", "qpack.converter.export.tflite_int", "export_tflite_fast", ("tflite",),
                       "TFLite as XNNPACK runs it at float speed: as tflite, int4 only in fully-connected weights",
                       replace(_TFLITE, widths=(8,), role_widths=(("matrix", (4, 8)),), role_blocks=XNNPACK_BLOCKS,
                               channel_scale_roles=("matrix",), centered_roles=("matrix",)),
                       runtime=LITERT))
register_target(Target("tflite-dequantize", "qpack.converter.export.tflite_int", "export_tflite_dequantize", ("tflite",),
                       "TFLite with int8/int4 weights, all through DEQUANTIZE (float kernels, the container's exact values)",
                       replace(_TFLITE, signed=None), runtime=LITERT))
register_target(Target("tflite-int8", "qpack.converter.export.tflite_int8", "export_tflite_int8", ("tflite",),
                       "full-integer TFLite: int8 weights and activations calibrated on --inputs, so LiteRT and TFLite Micro "
                       "run int8 kernels; ops without one stay float between DEQUANTIZE and QUANTIZE",
                       _TFLITE_INT8,
                       calibrated=True, integer_io=True, runtime=LITERT))
register_target(Target("tflite-int8-fast", "qpack.converter.export.tflite_int8", "export_tflite_int8_fast", ("tflite",),
                       "full-integer TFLite as LiteRT's XNNPACK runs it fastest: as tflite-int8, with the ops XNNPACK has no "
                       "int8 kernel for (PRELU) float between DEQUANTIZE and QUANTIZE, so the graph stays one partition",
                       _TFLITE_INT8, calibrated=True, integer_io=True, runtime=LITERT))
register_target(Target("tflite-16x8", "qpack.converter.export.tflite_int8", "export_tflite_16x8", ("tflite",),
                       "full-integer TFLite in 16x8: int16 activations calibrated on --inputs, int8 weights, int64 biases, "
                       "for outputs int8 activations move too far (LiteRT's reference kernels, TFLite Micro)",
                       replace(_TFLITE_INT8, kept_bytes=(("bias", 8), ("", 4))), calibrated=True, integer_io=True,
                       runtime=LITERT))
register_target(Target("c", "qpack.converter.export.c", "export_c", ("onnx", "tflite"),
                       "firmware sources: qpk.h (C99 decoder) and the weights as const C arrays, into folder -o", _C, graph=False))
register_target(Target("c-coded", "qpack.converter.export.c", "export_c_coded", ("onnx", "tflite"),
                       "as c, with entropy-coded (ans) codes kept as streams: the container's flash, qpk_unpack into RAM",
                       replace(_C, codecs=("raw", "ans")), graph=False))

__all__ = ["GROUPINGS", "KEEP_COSINE", "QPK", "TARGETS", "Native", "Stored", "Target", "export", "fit", "register_target", "target_named"]
