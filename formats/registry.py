"""Pick the adapter for a model file, by content first and suffix second."""

from __future__ import annotations

from pathlib import Path

from numpy.typing import NDArray

from formats.atomic import atomic_output
from formats.errors import FormatError, OptionError
from formats.model import SourceModel

TFLITE_IDENT = b"TFL3"  # flatbuffer file identifier, bytes 4..8


def sniff(path: Path) -> str:
    """'onnx', 'tflite' or 'qpk' for a file, judged by its first bytes where they are telling."""
    from formats.constants import MAGIC

    try:
        with Path(path).open("rb") as f:
            head = f.read(8)
    except OSError as e:
        raise FormatError(f"{path}: cannot read ({e.strerror})") from e
    if head == MAGIC:
        return "qpk"
    if head[4:8] == TFLITE_IDENT:
        return "tflite"
    suffix = Path(path).suffix.lower()
    if suffix == ".tflite":
        raise FormatError(f"{path}: not a TFLite model (no TFL3 identifier)")
    if suffix == ".qpk":
        raise FormatError(f"{path}: not a .qpk file (bad magic)")
    return "onnx"


def open_model(path: Path) -> SourceModel:
    """Load a model with the adapter its content calls for."""
    kind = sniff(path)
    if kind == "qpk":
        raise OptionError(f"{path}: is a .qpk container, not a source model")
    if kind == "tflite":
        from formats.tflite_model import TfliteModel

        return TfliteModel(Path(path))
    from formats.onnx_model import OnnxModel

    return OnnxModel(Path(path))


def restore_model(fmt: str, skeleton: bytes, arrays: dict[str, NDArray], out: Path) -> list[Path]:
    """Write the restored model atomically in its source format; returns the files written."""
    out = Path(out)
    expected = ".onnx" if fmt == "onnx" else ".tflite"
    if out.suffix.lower() != expected:
        raise OptionError(f"{out}: the container holds a {fmt} model; name the output *{expected}")
    if fmt == "onnx":
        from formats import onnx_model

        model = onnx_model.restore(skeleton, arrays)
        with atomic_output(out) as f:
            return onnx_model.write(model, f, out)
    from formats import tflite_model

    data = tflite_model.restore(skeleton, arrays)
    with atomic_output(out) as f:
        f.write(data)
    return [out]
