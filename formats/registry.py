"""Pick the adapter for a model file, by content first and suffix second."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from formats.errors import FormatError, OptionError
from formats.model import SourceModel
from formats.tflite_model import TFLITE_IDENT


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


def restore_model(fmt: str, skeleton: bytes, tensors: Mapping[str, NDArray | Callable[[], NDArray]], out: Path) -> list[Path]:
    """Write the restored model atomically in its source format; returns the files written.

    Each tensor is given as its values or as a function that computes them when it is written.
    """
    out = Path(out)
    expected = ".onnx" if fmt == "onnx" else ".tflite"
    if out.suffix.lower() != expected:
        raise OptionError(f"{out}: the container holds a {fmt} model; name the output *{expected}")
    loaders = {k: v if callable(v) else partial(np.asarray, v) for k, v in tensors.items()}
    if fmt == "onnx":
        from formats import onnx_model

        return onnx_model.restore(skeleton, loaders, out)
    from formats import tflite_model

    return tflite_model.restore(skeleton, loaders, out)
