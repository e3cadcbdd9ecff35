"""The format adapters, in one table: how each is recognized, where it lives, what it writes.

A third source format is one row here and one adapter module offering a model class (see
`formats.model.SourceModel`) and `restore(skeleton, tensors, out)`. Modules are imported only when
a file calls for them, so sniffing a file costs no heavy import.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from numpy.typing import NDArray

from qpack.formats.errors import FormatError, OptionError
from qpack.formats.files import open_regular
from qpack.formats.model import SourceModel
from qpack.formats.qpk.spec import MAGIC, SOURCE_FORMATS


@dataclass(frozen=True)
class Adapter:
    name: str  # the `format` a container records
    suffix: str
    module: str
    model_class: str
    ident: tuple[int, bytes] | None  # (offset, bytes) every file of the format has; None: recognized by elimination
    label: str
    zeroed: bool = False  # its skeleton keeps each stripped tensor's bytes, as zeros (offsets stay put)
    sparse: bool = False  # it has sparse tensors, whose stored values are the nonzero ones (its module's sparse_keys)

    def load(self) -> ModuleType:
        return importlib.import_module(self.module)


ADAPTERS: dict[str, Adapter] = {}


def register_adapter(adapter: Adapter) -> Adapter:
    if adapter.name not in SOURCE_FORMATS:
        raise ValueError(f"the container format has no source format {adapter.name!r}")
    ADAPTERS[adapter.name] = adapter
    return adapter


# ONNX is a bare protobuf with no magic: it is what a file is when nothing else claims it.
register_adapter(Adapter("tflite", ".tflite", "qpack.formats.tflite_model", "TfliteModel", (4, b"TFL3"), "TFLite model",
                         zeroed=True, sparse=True))
register_adapter(Adapter("onnx", ".onnx", "qpack.formats.onnx_model", "OnnxModel", None, "ONNX model"))

_QPK = "qpk"


def sniff(path: Path) -> str:
    """'qpk' or an adapter's name for a file, judged by its first bytes where they are telling."""
    try:
        with open_regular(Path(path)) as f:
            head = f.read(16)
    except OSError as e:
        raise FormatError(f"{path}: cannot read ({e.strerror})") from e
    if head[: len(MAGIC)] == MAGIC:
        return _QPK
    for a in ADAPTERS.values():
        if a.ident and head[a.ident[0] : a.ident[0] + len(a.ident[1])] == a.ident[1]:
            return a.name
    suffix = Path(path).suffix.lower()
    if suffix == ".qpk":
        raise FormatError(f"{path}: not a .qpk file (bad magic)")
    for a in ADAPTERS.values():
        if a.ident and suffix == a.suffix:
            raise FormatError(f"{path}: not a {a.label} (no {a.ident[1].decode()} identifier)")
    fallback = next(a for a in ADAPTERS.values() if a.ident is None)
    return fallback.name


def adapter(name: str) -> Adapter:
    try:
        return ADAPTERS[name]
    except KeyError:
        raise FormatError(f"no adapter for source format {name!r}") from None


def a_model(fmt: str) -> str:
    """'an onnx model', 'a tflite model': a container's format in a sentence."""
    return f"{'an' if fmt[:1] in 'aeiou' else 'a'} {fmt} model"


def open_model(path: Path) -> SourceModel:
    """Load a model with the adapter its content calls for."""
    kind = sniff(path)
    if kind == _QPK:
        raise OptionError(f"{path}: is a .qpk container, not a source model")
    a = adapter(kind)
    model: SourceModel = getattr(a.load(), a.model_class)(Path(path))
    return model


def restore_model(fmt: str, skeleton: bytes, tensors: Mapping[str, Callable[[], NDArray]], out: Path) -> list[Path]:
    """Write the restored model atomically in its source format, pulling each tensor when it is written."""
    a = adapter(fmt)
    out = Path(out)
    if out.suffix.lower() != a.suffix:
        raise OptionError(f"{out}: the container holds {a_model(fmt)}; name the output *{a.suffix}")
    written: list[Path] = a.load().restore(skeleton, tensors, out)
    return written
