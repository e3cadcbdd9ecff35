"""qpack: data-free n-bit weight quantization of ONNX and TFLite models into the .qpk container.

The Python API (docs/python-api.md); the `qpack` command is a thin layer over these functions:

    import qpack
    report = qpack.convert("model.onnx", "model.qpk", bits=4, scheme="sym", per_channel=True)
    report = qpack.convert("model.onnx", target_bpw=3.5)            # a goal: qpack picks each tensor's setting
    with qpack.open("model.qpk") as q: ...                           # a lazy, validating reader
    qpack.unpack("model.qpk", "restored.onnx")
    qpack.export("model.qpk", "onnx-qdq", "model_qdq.onnx")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qpack.converter import __version__

if TYPE_CHECKING:
    from qpack.converter.api import (
        BudgetBroken,
        Exported,
        convert,
        describe,
        evaluate,
        export,
        load_inputs,
        open,
        report,
        sweep,
        unpack,
    )
    from qpack.formats.errors import BudgetError, FormatError, OptionError, QpackError, UnsupportedError

__all__ = [
    "BudgetBroken", "BudgetError", "Exported", "FormatError", "OptionError", "QpackError", "UnsupportedError", "__version__",
    "convert", "describe", "evaluate", "export", "load_inputs", "open", "report", "sweep", "unpack",
]
_ERRORS = ("BudgetError", "FormatError", "OptionError", "QpackError", "UnsupportedError")


def __getattr__(name: str) -> Any:
    """The API on first use: `import qpack.formats.qpk` (a reader alone) does not load the converter."""
    import importlib

    if name in __all__ and name not in _ERRORS:
        return getattr(importlib.import_module("qpack.converter.api"), name)
    if name in _ERRORS:
        return getattr(importlib.import_module("qpack.formats.errors"), name)
    raise AttributeError(f"module 'qpack' has no attribute {name!r}")
