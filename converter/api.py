"""The Python API: what the `qpack` command does, as functions that return the reports its JSON is made of.

Every default lives here, so a script and the command line given the same request write the same
bytes; `converter.cli` only parses options, calls these and renders what they return.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qpack.converter.allocate import AUTO_SCHEMES, Goal
from qpack.converter.datasets import Inputs
from qpack.converter.policy import Policy
from qpack.formats.errors import BudgetError, OptionError
from qpack.formats.qpk import CODECS, Codec, QpkReader

__all__ = ["BudgetBroken", "Exported", "codec_for", "convert", "describe", "evaluate", "export", "load_inputs", "open", "policy",
           "report", "unpack"]

SCHEME = "asym"  # the scheme of a conversion without a goal
# A goal trades fidelity for stored bytes, and the ans codec stores the same codes in the fewest; a
# plain conversion keeps dense codes a reader needs no decoder for.
GOAL_CODEC = "ans"
CODEC = "raw"

PathLike = str | Path


class BudgetBroken(BudgetError):
    """A build budget was broken: the new artifact was not put in place. `report` describes it."""

    def __init__(self, message: str, report: dict[str, Any]) -> None:
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class Exported:
    files: list[Path]  # what was written
    notes: list[str]  # one-line remarks (a tensor widened to the nearest exact form, say)


def codec_for(word: str | None, goal: bool = False) -> Codec:
    """The codec a name or its label (`packed`) names; None: the default, which depends on whether a goal is given."""
    word = word or (GOAL_CODEC if goal else CODEC)
    for c in CODECS.values():
        if word in (c.name, c.label):
            return c
    raise OptionError(f"unknown codec {word!r}, expected one of {', '.join(c.label for c in CODECS.values())}")


def policy(scheme: str = SCHEME, bits: int = 8, per_channel: bool = False, keep: Sequence[str] = (),
           include: Sequence[str] = (), bits_for: Sequence[str] = (), clip: str = "minmax", group_size: int | None = None,
           param_dtype: str = "auto", rdo: float = 0.0) -> Policy:
    """Which tensors to quantize, and how: the options every command shares (checked here)."""
    from qpack.converter.policy import parse_bits_for

    return Policy(scheme, bits, per_channel, tuple(keep), tuple(include), parse_bits_for(list(bits_for)), clip, group_size,
                  param_dtype, rdo=rdo)


def load_inputs(model: PathLike, inputs: PathLike | None = None, images: PathLike | None = None, dataset: str | None = None,
                size: str = "224", layout: str = "nchw", scale: str = "1/255", mean: str | None = None,
                std: str | None = None) -> Inputs:
    """Inputs for `model` from exactly one source: an .npy/.npz file, a folder of images (with how to
    size and normalize them), or a built-in dataset; checked against the model's inputs."""
    from qpack.converter.datasets import load_inputs as load

    return load(Path(model), _path(inputs), _path(images), dataset, size, layout, scale, mean, std)


def convert(model: PathLike, output: PathLike | None = None, *, bits: int = 8, scheme: str | None = None,
            per_channel: bool = False, clip: str = "minmax", group_size: int | None = None, param_dtype: str = "auto",
            keep: Sequence[str] = (), include: Sequence[str] = (), bits_for: Sequence[str] = (), codec: str | None = None,
            rdo: float = 0.0, compress: str = "auto", max_size: int | None = None, max_bpw: float | None = None,
            min_sqnr: float | None = None, target_bpw: float | None = None, target_size: int | None = None,
            target_sqnr: float | None = None, objective: str | None = None, min_cosine: float | None = None,
            max_accuracy_drop: float | None = None, allow_float: bool = False, inputs: Inputs | PathLike | None = None,
            progress: Callable[[int, int], None] | None = None, compress_progress: Callable[[str], None] | None = None,
            log: Callable[[str], None] | None = None, **goals: Any) -> dict[str, Any]:
    """Quantize `model` (.onnx or .tflite) into a .qpk container and return its size report.

    Args:
        output: the container; default `model` with the suffix .qpk.
        scheme: None: asym, or with a goal each tensor's best of AUTO_SCHEMES.
        codec: "packed" (raw), "zstd" or "ans"; None: packed, or with a goal ans.
        target_bpw, target_size, target_sqnr, min_cosine, max_accuracy_drop: a goal; qpack then allocates
            each tensor's width, grouping, clipping (and scheme) itself, starting from `bits`.
        goals: any other registered goal (converter.allocate.GOALS), by its field name.
        max_size, max_bpw, min_sqnr: build budgets.
        inputs: for a fidelity goal (min_cosine, max_accuracy_drop): an .npy/.npz path or load_inputs().
        progress, compress_progress, log: callbacks for a progress display and the allocation's log lines.

    Raises:
        BudgetBroken: a budget was broken (the output was left as it was); its `report` is the artifact's.
        BudgetError: a goal cannot be met (nothing was written).
        QpackError: any other failure, with a one-line message.
    """
    from qpack.converter.gates import Budget
    from qpack.converter.measure import parse_compressors
    from qpack.converter.publish import publish
    from qpack.formats.registry import open_model

    model = Path(model)
    rules = policy(scheme or SCHEME, bits, per_channel, keep, include, bits_for, clip, group_size, param_dtype, rdo)
    budget = Budget(max_size, max_bpw, min_sqnr)
    parse_compressors(compress)  # reject a bad list before any work
    goal = Goal.of(target_bpw=target_bpw, target_size=target_size, min_cosine=min_cosine, max_accuracy_drop=max_accuracy_drop,
                   target_sqnr=target_sqnr, objective=objective, schemes=None if scheme else AUTO_SCHEMES, allow_float=allow_float,
                   **{k: v for k, v in goals.items() if v is not None})
    goal.check()
    chosen = codec_for(codec, goal.any)
    data = None
    if goal.fidelity and inputs is not None:
        data = inputs if isinstance(inputs, Inputs) else load_inputs(model, inputs)
    target = Path(output) if output is not None else model.with_suffix(".qpk")
    with closing(open_model(model)) as src:
        done = publish(src, rules, target, chosen, budget, parse_compressors(compress, src.file_bytes), progress,
                       compress_progress, goal, data, log)
    if done.broken:
        raise BudgetBroken(str(done.broken), done.report)
    return done.report


def open(path: PathLike) -> QpkReader:  # noqa: A001 (qpack.open, as gzip.open)
    """A lazy reader of a .qpk container (use it as a context manager); every rule of FORMAT.md is checked."""
    return QpkReader(Path(path))


def describe(path: PathLike, verify: bool = True) -> dict[str, Any]:
    """What a .qpk holds (header, options, each tensor's layout and sizes); checksums checked when `verify`."""
    from qpack.converter.inspect import describe as run

    return run(Path(path), verify)


def unpack(qpk: PathLike, output: PathLike) -> list[Path]:
    """Rebuild a runnable float model in the container's source format; returns the files written."""
    from qpack.converter.convert import restore

    return restore(Path(qpk), Path(output))


def export(qpk: PathLike, to: str, output: PathLike) -> Exported:
    """Export a .qpk to a runtime's format or firmware sources (`to`: a name of converter.export.TARGETS)."""
    from qpack.converter.export import export as run

    files, notes = run(Path(qpk), to, Path(output))
    return Exported(files, notes)


def evaluate(model: PathLike, inputs: Inputs | PathLike, qpk: PathLike | None = None, *, bits: int = 8,
             scheme: str = SCHEME, per_channel: bool = False, clip: str = "minmax", group_size: int | None = None,
             param_dtype: str = "auto", keep: Sequence[str] = (), include: Sequence[str] = (),
             bits_for: Sequence[str] = (), groups: PathLike | None = None, group_threshold: float = 0.05) -> dict[str, Any]:
    """Run `model` and its quantized restoration (of `qpk`, or converted at the options) on the same
    inputs; per-output fidelity and, for classifiers, accuracy."""
    from qpack.converter.evaluate import evaluate as run

    data = inputs if isinstance(inputs, Inputs) else load_inputs(model, inputs)
    rules = None if qpk else policy(scheme, bits, per_channel, keep, include, bits_for, clip, group_size, param_dtype)
    return run(Path(model), data, qpk=_path(qpk), policy=rules, groups_file=_path(groups), group_threshold=group_threshold)


def report(path: PathLike, *, bits: int = 8, scheme: str = SCHEME, per_channel: bool = False, clip: str = "minmax",
           group_size: int | None = None, param_dtype: str = "auto", keep: Sequence[str] = (), include: Sequence[str] = (),
           bits_for: Sequence[str] = (), codec: str | None = None, rdo: float = 0.0, source: PathLike | None = None,
           compress: str = "auto", html: PathLike | None = None, layer: str | None = None,
           command: str = "") -> dict[str, Any]:
    """Range, distribution and bit efficiency per tensor: of a model at the options, or of a .qpk
    (against its float `source` when given); with `html`, also a self-contained page (PNGs beside it)."""
    from qpack.converter.report import report_path, write_html

    rules = policy(scheme, bits, per_channel, keep, include, bits_for, clip, group_size, param_dtype, rdo)
    rep, src = report_path(Path(path), rules, codec_for(codec), compress, _path(source))
    try:
        rep["command"] = command
        if html is not None:
            write_html(rep, src, layer, Path(html), command)
    finally:
        if src is not None:
            src.close()
    rep.pop("figure_options", None)
    return rep


def _path(p: PathLike | None) -> Path | None:
    return None if p is None else Path(p)
