"""Evaluation inputs: .npy/.npz arrays, a folder of images, or a built-in real dataset."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from qpack.converter.runtime import InputSpec
from qpack.formats.errors import FormatError, OptionError, QpackError, shown
from qpack.formats.files import open_regular
from qpack.formats.npy import MAX_BYTES, read_arrays

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF")  # Pillow's decoders for those names, and no other
BUILTIN = ("digits",)

# Limits (docs/inputs.md, "Limits"); the decoded, resized images share formats.npy's MAX_BYTES.
MAX_IMAGE_SIDE = 8192
MAX_IMAGE_PIXELS = MAX_IMAGE_SIDE * MAX_IMAGE_SIDE  # checked before decoding: 192 MiB as RGB
MAX_IMAGE_FILE_BYTES = 1 << 30  # an image file: 8192 x 8192 RGBA at 16 bits per channel, uncompressed, is half that
MAX_IMAGES = 100_000  # files named as images under an --images folder
MAX_LABEL = 1 << 31  # labels index classes; evaluation also holds them below the model's class count


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
    """Arrays from .npy (single-input models) or .npz (one array per input, by name or alone; `labels`),
    read within formats.npy's limits."""
    arrays = read_arrays(path)
    labels = arrays.pop("labels", None)
    names = [s.name for s in specs]
    if set(names) <= set(arrays):
        chosen = {n: arrays[n] for n in names}
    elif len(arrays) == 1 and len(specs) == 1:
        chosen = {names[0]: next(iter(arrays.values()))}
    else:
        raise OptionError(f"{path} holds {sorted(arrays) or 'no arrays'}, the model wants inputs {names}")
    batched, whole = split(chosen, specs)
    return Inputs(batched, None if labels is None else _labels(labels, str(path)), str(path), whole)


def _labels(labels: NDArray, where: str) -> NDArray[np.int64]:
    """Labels as int64: one integer per sample, each a class index in 0 <= label < MAX_LABEL."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise OptionError(f"{where}: labels must be integers, one per sample; got shape {list(labels.shape)} {labels.dtype}")
    bad = np.flatnonzero((labels < 0) | (labels >= MAX_LABEL))
    if len(bad):
        i = int(bad[0])
        raise OptionError(f"{where}: label {labels[i]} at sample {i} is not a class index (0 <= label < 2**31)")
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


def _image_files(folder: Path) -> list[Path]:
    """Every entry under `folder` named as an image (sorted), folders aside; at most MAX_IMAGES."""
    if not folder.is_dir():
        raise OptionError(f"{folder}: not a folder")
    found = (p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and not p.is_dir())
    files = list(islice(found, MAX_IMAGES + 1))
    if len(files) > MAX_IMAGES:
        raise OptionError(f"{folder}: more than {MAX_IMAGES} images")
    if not files:
        raise OptionError(f"{folder}: no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return sorted(files)


def _read_image(path: Path, mode: str, w: int, h: int) -> NDArray[np.float32]:
    """One image as float32 [h, w, channels], its size checked before its pixels are decoded."""
    from PIL import Image

    with open_regular(path) as f, warnings.catch_warnings():
        stored = os.fstat(f.fileno()).st_size
        if stored > MAX_IMAGE_FILE_BYTES:  # some decoders (WebP) read the whole file on opening
            raise FormatError(f"{path}: {stored} bytes, more than the {MAX_IMAGE_FILE_BYTES >> 30} GiB qpack reads as one image")
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(f, formats=IMAGE_FORMATS) as im:
                width, height = im.size  # read from the header: Image.open decodes nothing
                if width * height > MAX_IMAGE_PIXELS:
                    raise FormatError(f"{path}: {width}x{height} pixels, more than the {MAX_IMAGE_PIXELS} "
                                      f"({MAX_IMAGE_SIDE}x{MAX_IMAGE_SIDE}) qpack decodes")
                pixels = im.convert(mode).resize((w, h), Image.Resampling.BILINEAR)
        except QpackError:
            raise
        except Exception as e:  # a decoder fed a damaged or hostile file may raise anything: that file is at fault
            raise FormatError(f"{path}: cannot read image ({shown(str(e) or type(e).__name__, 160)})") from e
    return np.asarray(pixels, np.float32).reshape(h, w, len(mode))


def from_images(folder: Path, spec: InputSpec, size: str, layout: str, scale: str, mean: str | None, std: str | None) -> Inputs:
    """Images resized (bilinear) to --size, in --layout, x * scale, then (x - mean) / std per channel.

    Labels come from sub-folder names when the images sit in one folder per class (sorted order).
    Every file named as an image must be a regular file (or a link to one); the limits are checked
    before any pixel is decoded.
    """
    if layout not in ("nchw", "nhwc"):
        raise OptionError(f"--layout must be nchw or nhwc, not {layout!r}")
    files = _image_files(folder)
    h, w = parse_size(size)
    channel_dim = 1 if layout == "nchw" else -1
    channels = spec.shape[channel_dim] if len(spec.shape) == 4 and spec.shape[channel_dim] else 3
    if channels not in (1, 3):
        raise OptionError(f"input '{spec.name}' has {channels} channels; images give 1 or 3")
    need = len(files) * h * w * channels * np.dtype(np.float32).itemsize
    if need > MAX_BYTES:
        raise OptionError(f"{folder}: {len(files)} images at {h}x{w}x{channels} make {need} bytes of float32, past the "
                          f"{MAX_BYTES >> 30} GiB qpack takes as inputs (use fewer images or a smaller --size)")
    shift, spread = parse_triple(mean, 0.0), parse_triple(std, 1.0)
    for name, v in (("--mean", shift), ("--std", spread)):
        if v.size not in (1, channels):
            raise OptionError(f"{name} gives {v.size} values; the model's images have {channels} channel{'s' if channels > 1 else ''}: "
                              f"give 1{' or 3' if channels == 3 else ''}")
    if not (np.isfinite(spread).all() and (spread != 0).all()) or not np.isfinite(shift).all():
        raise OptionError(f"--mean and --std take finite numbers, --std none of them 0 (got {mean!r} and {std!r})")
    x = np.stack([_read_image(f, "L" if channels == 1 else "RGB", w, h) for f in files]) * np.float32(parse_number(scale))
    x = (x - shift) / spread
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
    """Every input present with the model's rank and fixed dimensions (the batch dimension aside), the
    same number of samples (not none) in every batched array and the labels, labels in range."""
    where = inputs.description
    for s in specs:
        dims = ["?" if w is None else w for w in s.shape]
        if s.name in inputs.constants:
            a = inputs.constants[s.name]
            if a.ndim != len(s.shape) or any(w is not None and d != w for d, w in zip(a.shape, s.shape)):
                raise OptionError(f"{where}: input '{s.name}': data has shape {list(a.shape)}, the model wants {dims}")
            continue
        if s.name not in inputs.arrays:
            raise OptionError(f"{where}: no data for model input '{s.name}'")
        a = inputs.arrays[s.name]
        want = s.shape
        if a.ndim != len(want) or any(w is not None and d != w for d, w in list(zip(a.shape, want))[1:]):
            raise OptionError(f"{where}: input '{s.name}': data has shape {list(a.shape)}, the model wants {dims} (batch first)")
    counts = {len(a) for a in inputs.arrays.values() if a.ndim}
    if len(counts) > 1:
        raise OptionError(f"{where}: inputs have different sample counts {sorted(counts)}")
    if counts == {0}:
        raise OptionError(f"{where}: holds no samples")
    if inputs.labels is not None:
        _labels(inputs.labels, where)
        if len(inputs.labels) != inputs.count:
            raise OptionError(f"{where}: {len(inputs.labels)} labels for {inputs.count} samples")


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
