"""Evaluation inputs: .npy/.npz arrays, a folder of images, or a built-in real dataset."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from qpack.converter.runtime import InputSpec
from qpack.formats.errors import OptionError, QpackError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
BUILTIN = ("digits",)


@dataclass
class Inputs:
    """N samples for the model's batched inputs, values fed as they are to the others (a 0-d sample
    rate, a recurrent state whose first dimension is not the batch), and optional integer labels."""

    arrays: dict[str, NDArray]  # samples along the first axis
    labels: NDArray[np.int64] | None
    description: str
    constants: dict[str, NDArray] = field(default_factory=dict)  # the same value on every run

    @property
    def count(self) -> int:
        return len(next(iter(self.arrays.values()))) if self.arrays else 1

    def parts(self, k: int) -> list[Inputs]:
        """The samples in k contiguous runs as even as can be (the same constants); none for fewer than two."""
        return [self._take(slice(a, b), f"samples {a}..{b - 1}") for a, b in self._runs(k)]

    def rests(self, k: int) -> list[Inputs]:
        """The samples without each of the runs of parts(k)."""
        n = self.count
        return [self._take(np.r_[0:a, b:n], f"without samples {a}..{b - 1}") for a, b in self._runs(k)]

    def _runs(self, k: int) -> list[tuple[int, int]]:
        n = self.count
        if not self.arrays or n < 2:
            return []
        k = min(k, n)
        cuts = [i * n // k for i in range(k + 1)]
        return list(zip(cuts, cuts[1:]))

    def _take(self, rows: slice | NDArray[np.int64], what: str) -> Inputs:
        return Inputs({name: v[rows] for name, v in self.arrays.items()}, None if self.labels is None else self.labels[rows],
                      f"{self.description} ({what})", self.constants)


def _is_whole(a: NDArray, spec: InputSpec) -> bool:
    """The array is one complete value of the input (fed on every run), not a stack of samples:
    a 0-d input, or an input whose first dimension is fixed and not a batch of one, given exactly."""
    if len(spec.shape) == 0:
        return True
    first = spec.shape[0]
    fits = a.ndim == len(spec.shape) and all(w is None or d == w for d, w in zip(a.shape, spec.shape))
    return first is not None and first != 1 and fits


def split(arrays: dict[str, NDArray], specs: list[InputSpec]) -> tuple[dict[str, NDArray], dict[str, NDArray]]:
    """(batched, whole) arrays of the model's inputs."""
    by_name = {s.name: s for s in specs}
    whole = {k: v for k, v in arrays.items() if k in by_name and _is_whole(np.asarray(v), by_name[k])}
    return {k: v for k, v in arrays.items() if k not in whole}, whole


DIGITS_TEST = Path(__file__).parent / "data" / "digits_test.npz"


def digits() -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """scikit-learn's digits, held-out 30% (stratified, seed 0): the bundled sample's test split.

    The 540 images (pixels 0..16) and labels ship with qpack: drawing the split again means
    importing scikit-learn, 1.3-1.8 s of every `--dataset digits` command. A test checks that they
    are still that split."""
    with np.load(DIGITS_TEST, allow_pickle=False) as z:
        return (z["images"] / 16.0).astype(np.float32)[:, None], z["labels"].astype(np.int64)


def from_arrays(path: Path, specs: list[InputSpec]) -> Inputs:
    """Arrays from .npy (single-input models) or .npz (one array per input, by name or alone; `labels`)."""
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise QpackError(f"{path}: cannot read arrays ({e})") from e
    if isinstance(loaded, np.ndarray):
        arrays, labels = {"": loaded}, None
    else:
        with loaded:
            arrays = {k: loaded[k] for k in loaded.files}
        labels = arrays.pop("labels", None)
    names = [s.name for s in specs]
    if set(names) <= set(arrays):
        chosen = {n: arrays[n] for n in names}
    elif len(arrays) == 1 and len(specs) == 1:
        chosen = {names[0]: next(iter(arrays.values()))}
    else:
        raise OptionError(f"{path.name} holds {sorted(arrays) or 'no arrays'}, the model wants inputs {names}")
    batched, whole = split(chosen, specs)
    return Inputs(batched, _labels(labels, batched, path.name), str(path), whole)


def _labels(labels: NDArray | None, arrays: dict[str, NDArray], where: str) -> NDArray[np.int64] | None:
    if labels is None:
        return None
    n = len(next(iter(arrays.values()))) if arrays else 1
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != n or not np.issubdtype(labels.dtype, np.integer):
        raise OptionError(f"{where}: labels must be {n} integers, got shape {labels.shape} {labels.dtype}")
    return labels.astype(np.int64)


def parse_number(text: str) -> float:
    """'1/255', '0.5', '2' -> float."""
    num, sep, den = text.strip().partition("/")
    try:
        value = float(num) / float(den) if sep else float(num)
    except (ValueError, ZeroDivisionError):
        raise OptionError(f"not a number: {text!r}") from None
    if not np.isfinite(value):
        raise OptionError(f"not a finite number: {text!r}")
    return value


def parse_triple(text: str | None, default: float) -> NDArray[np.float32]:
    if text is None:
        return np.array([default], np.float32)
    return np.array([parse_number(t) for t in text.split(",")], np.float32)


def parse_size(text: str) -> tuple[int, int]:
    """'128' -> (128, 128); '48x192' -> (48, 192) as height, width."""
    parts = text.lower().split("x")
    try:
        dims = [int(p) for p in parts]
    except ValueError:
        raise OptionError(f"--size expects N or HxW, got {text!r}") from None
    if len(dims) == 1:
        dims = dims * 2
    if len(dims) != 2 or min(dims) < 1 or max(dims) > 8192:
        raise OptionError(f"--size expects N or HxW within 1..8192, got {text!r}")
    return dims[0], dims[1]


def from_images(folder: Path, spec: InputSpec, size: str, layout: str, scale: str, mean: str | None, std: str | None) -> Inputs:
    """Images resized (bilinear) to --size, in --layout, x * scale, then (x - mean) / std per channel.

    Labels come from sub-folder names when the images sit in one folder per class (sorted order).
    """
    from PIL import Image, UnidentifiedImageError

    if layout not in ("nchw", "nhwc"):
        raise OptionError(f"--layout must be nchw or nhwc, not {layout!r}")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise OptionError(f"{folder}: no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    h, w = parse_size(size)
    channel_dim = 1 if layout == "nchw" else -1
    channels = spec.shape[channel_dim] if len(spec.shape) == 4 and spec.shape[channel_dim] else 3
    if channels not in (1, 3):
        raise OptionError(f"input '{spec.name}' has {channels} channels; images give 1 or 3")
    batch = []
    for f in files:
        try:
            with Image.open(f) as im:
                pixels = im.convert("L" if channels == 1 else "RGB").resize((w, h), Image.Resampling.BILINEAR)
                batch.append(np.asarray(pixels, np.float32).reshape(h, w, channels))
        except (UnidentifiedImageError, OSError) as e:
            raise QpackError(f"{f}: cannot read image ({e})") from e
    x = np.stack(batch) * np.float32(parse_number(scale))
    x = (x - parse_triple(mean, 0.0)) / parse_triple(std, 1.0)
    if layout == "nchw":
        x = x.transpose(0, 3, 1, 2)
    classes = sorted({f.parent.relative_to(folder).as_posix() for f in files})
    labels = None
    if len(classes) > 1:
        index = {c: i for i, c in enumerate(classes)}
        labels = np.array([index[f.parent.relative_to(folder).as_posix()] for f in files], np.int64)
    return Inputs({spec.name: np.ascontiguousarray(x, dtype=spec.dtype)}, labels, f"{len(files)} images from {folder}")


def builtin(name: str, specs: list[InputSpec]) -> Inputs:
    if name != "digits":
        raise OptionError(f"unknown dataset {name!r}, expected one of {', '.join(BUILTIN)}")
    if len(specs) != 1:
        raise OptionError("the digits dataset feeds single-input models")
    x, y = digits()
    return Inputs({specs[0].name: x}, y, "scikit-learn digits, 540-image test split")


def check_shapes(inputs: Inputs, specs: list[InputSpec]) -> None:
    """Every input present with the model's rank and fixed dimensions (the batch dimension aside)."""
    for s in specs:
        shown = ["?" if w is None else w for w in s.shape]
        if s.name in inputs.constants:
            a = inputs.constants[s.name]
            if a.ndim != len(s.shape) or any(w is not None and d != w for d, w in zip(a.shape, s.shape)):
                raise OptionError(f"input '{s.name}': data has shape {list(a.shape)}, the model wants {shown}")
            continue
        if s.name not in inputs.arrays:
            raise OptionError(f"no data for model input '{s.name}'")
        a = inputs.arrays[s.name]
        want = s.shape
        if a.ndim != len(want) or any(w is not None and d != w for d, w in list(zip(a.shape, want))[1:]):
            raise OptionError(f"input '{s.name}': data has shape {list(a.shape)}, the model wants {shown} (batch first)")
    counts = {len(a) for a in inputs.arrays.values()}
    if len(counts) > 1:
        raise OptionError(f"inputs have different sample counts {sorted(counts)}")


def load_inputs(model: Path, inputs: Path | None = None, images: Path | None = None, dataset: str | None = None,
                size: str = "224", layout: str = "nchw", scale: str = "1/255", mean: str | None = None,
                std: str | None = None) -> Inputs:
    """The evaluation inputs from exactly one source, checked against the model's input specs."""
    from qpack.converter.runtime import open_runner

    given = [x for x in (inputs, images, dataset) if x is not None]
    if len(given) != 1:
        raise OptionError("give exactly one of --inputs, --images, --dataset")
    specs = open_runner(model).inputs
    if inputs is not None:
        data = from_arrays(inputs, specs)
    elif images is not None:
        if len(specs) != 1:
            raise OptionError("--images feeds single-input models")
        data = from_images(images, specs[0], size, layout.lower(), scale, mean, std)
    else:
        data = builtin(str(dataset), specs)
    check_shapes(data, specs)
    return data
