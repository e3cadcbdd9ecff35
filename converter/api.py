"""The Python API: what the `qpack` command does, as functions that return the reports its JSON is made of.

Every default lives here, so a script and the command line given the same request write the same
bytes; `converter.cli` only parses options, calls these and renders what they return.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from contextlib import closing
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from qpack.converter.allocate import AUTO_SCHEMES, Goal
from qpack.converter.datasets import Inputs
from qpack.converter.export import KEEP_COSINE, QPK, target_named
from qpack.converter.export.calibrate import split_cosine
from qpack.converter.policy import Policy
from qpack.formats.errors import BudgetError, OptionError
from qpack.formats.qpk import Codec, QpkReader, codec_named

__all__ = ["QPK", "BudgetBroken", "Exported", "codec_for", "convert", "describe", "evaluate", "export", "load_inputs", "open", "policy",
           "report", "sweep", "unpack"]

SCHEME = "asym"  # the scheme of a conversion without a goal
# A goal trades fidelity for stored bytes, and the ans codec stores the same codes in the fewest; a
# plain conversion keeps dense codes a reader needs no decoder for.
GOAL_CODEC = "ans"
CODEC = "raw"
# how full-integer exports set activation ranges (export.calibrate): on the OCR models' random draws
# mse kept the least output cosine at 0.994-0.995, minmax at 0.972-0.980
CALIBRATION = "mse"

PathLike = str | Path


class BudgetBroken(BudgetError):
    """A build budget was broken: the new artifact was not put in place. `report` describes it."""

    def __init__(self, message: str, report: dict[str, Any]) -> None:
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class Exported:
    """What an export wrote, and its one-line notes (a tensor widened to the nearest exact form, say)."""

    files: tuple[Path, ...]
    notes: tuple[str, ...]


def codec_for(word: str | None, goal: bool = False) -> Codec:
    """The codec a name or its label (`packed`) names; None: the default, which depends on whether a goal is given."""
    return codec_named(word or (GOAL_CODEC if goal else CODEC))


def policy(scheme: str | None = None, bits: int = 8, per_channel: bool = False, keep: Sequence[str] = (),
           include: Sequence[str] = (), bits_for: Sequence[str] = (), clip: str = "minmax", group_size: int | None = None,
           param_dtype: str = "auto", rdo: float = 0.0, target: str = QPK, codec: str = CODEC, allocating: bool = False) -> Policy:
    """Which tensors to quantize, and how: the options every command shares (checked here).

    Args:
        scheme: None: SCHEME, or the first of AUTO_SCHEMES that `target` runs.
        target: the export target the file is made for (`--for`), or `qpk`: a fixed option it cannot
            hold is an OptionError (`codec` the codec that will store the codes; `allocating`: a goal
            chooses the widths and groupings, so only the fixed ones are checked).
    """
    from qpack.converter.deploy import default_scheme, for_target
    from qpack.converter.policy import parse_bits_for

    bits = _whole("bits", bits)
    group_size = None if group_size is None else _whole("group_size", group_size)
    rules = Policy(scheme or default_scheme(target, SCHEME, AUTO_SCHEMES), bits, per_channel, tuple(keep), tuple(include),
                   parse_bits_for(list(bits_for)), clip, group_size, param_dtype, rdo=rdo, target=target)
    return for_target(rules, codec_named(codec).name, allocating, scheme is not None)


def _whole(name: str, value: object) -> int:
    """An integer option given as an integer (a caller's "8" or 4.5 would fail deep inside, unnamed), as an int."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise OptionError(f"{name} takes an integer, not {value!r}")
    return int(value)


def load_inputs(model: PathLike, inputs: PathLike | None = None, images: PathLike | None = None, dataset: str | None = None,
                size: str = "224", layout: str = "nchw", scale: str = "1/255", mean: str | None = None,
                std: str | None = None) -> Inputs:
    """Inputs for `model` from exactly one source, checked against the model's inputs.

    Args:
        inputs: an .npy or .npz file (one array per model input, optional `labels`; docs/inputs.md).
        images: a folder of images (one sub-folder per class gives labels), sized to `size` (N or HxW) in
            `layout` (nchw, nhwc), times `scale`, then minus `mean` and over `std` (one value or R,G,B).
        dataset: a built-in labelled set ("digits").

    Raises:
        OptionError: not exactly one source, or inputs that do not fit the model.
        FormatError: an unreadable, hostile or oversized file, in one line naming it.
    """
    from qpack.converter.datasets import load_inputs as load

    return load(Path(model), _path(inputs), _path(images), dataset, size, layout, scale, mean, std)


def convert(model: PathLike, output: PathLike | None = None, *, bits: int = 8, scheme: str | None = None,
            per_channel: bool = False, clip: str = "minmax", group_size: int | None = None, param_dtype: str = "auto",
            keep: Sequence[str] = (), include: Sequence[str] = (), bits_for: Sequence[str] = (), codec: str | None = None,
            rdo: float = 0.0, compress: str = "auto", max_size: int | None = None, max_bpw: float | None = None,
            min_sqnr: float | None = None, target_bpw: float | None = None, target_size: int | None = None,
            target_sqnr: float | None = None, objective: str | None = None, min_cosine: float | None = None,
            max_accuracy_drop: float | None = None, allow_float: bool = False, target: str = QPK,
            inputs: Inputs | PathLike | Callable[[], Inputs] | None = None,
            progress: Callable[[int, int], None] | None = None, compress_progress: Callable[[str], None] | None = None,
            log: Callable[[str], None] | None = None, **goals: Any) -> dict[str, Any]:
    """Quantize `model` (.onnx or .tflite) into a .qpk container and return its size report.

    Args:
        output: the container; default `model` with the suffix .qpk.
        scheme: None: asym, or with a goal each tensor's best of AUTO_SCHEMES (those `target` runs).
        codec: "packed" (raw), "zstd" or "ans"; None: packed, or with a goal ans (or what `target` keeps).
        target_bpw, target_size, target_sqnr, min_cosine, max_accuracy_drop: a goal; qpack then allocates
            each tensor's width, grouping, clipping (and scheme) itself, starting from `bits`.
        goals: any other registered goal (converter.allocate.GOALS), by its field name.
        max_size, max_bpw, min_sqnr: build budgets.
        target: an export target (converter.export.TARGETS) the file is made for (`--for`): a goal allocates
            only what it runs natively, priced in its bytes; a fixed option it cannot hold is refused. `qpk`: none.
        inputs: for a fidelity goal (min_cosine, max_accuracy_drop), and only then: an .npy/.npz path,
            load_inputs(), or a function that loads them (called once the options are checked).
        progress, compress_progress, log: callbacks for a progress display and the allocation's log lines.

    Raises:
        BudgetBroken: a budget was broken (the output was left as it was); its `report` is the artifact's.
        BudgetError: a goal cannot be met (nothing was written).
        QpackError: any other failure, with a one-line message.
    """
    from qpack.converter.deploy import check_format, default_codec, goal_schemes
    from qpack.converter.gates import Budget
    from qpack.converter.measure import parse_compressors
    from qpack.converter.publish import publish
    from qpack.formats.registry import open_model

    model = Path(model)
    check_format(target, model)
    budget = Budget(max_size, max_bpw, min_sqnr)
    parse_compressors(compress)  # reject a bad list before any work
    export_cosine = None
    made_for = target_named(target)
    if min_cosine is not None and made_for is not None and made_for.calibrated:
        min_cosine, export_cosine = split_cosine(min_cosine)  # the export's activations take their share of the goal
    goal = Goal.of(target_bpw=target_bpw, target_size=target_size, min_cosine=min_cosine, max_accuracy_drop=max_accuracy_drop,
                   target_sqnr=target_sqnr, objective=objective, schemes=None if scheme else goal_schemes(target, AUTO_SCHEMES),
                   allow_float=allow_float, **{k: v for k, v in goals.items() if v is not None})
    goal.check()
    chosen = codec_for(codec or default_codec(target, GOAL_CODEC if goal.any else CODEC))
    rules = policy(scheme, bits, per_channel, keep, include, bits_for, clip, group_size, param_dtype, rdo, target, chosen.name,
                   goal.any)
    if export_cosine is not None:
        rules = replace(rules, export_cosine=export_cosine)
    if goal.fidelity != (inputs is not None):
        raise OptionError("a fidelity goal needs inputs: --inputs, --images or --dataset" if goal.fidelity else
                          "inputs (--inputs, --images, --dataset) feed fidelity goals (--min-cosine, --max-accuracy-drop); "
                          "this conversion has none")
    data: Inputs | None
    if callable(inputs):
        data = inputs()
    elif inputs is None or isinstance(inputs, Inputs):
        data = inputs
    else:
        data = load_inputs(model, inputs)
    dest = Path(output) if output is not None else model.with_suffix(".qpk")
    with closing(open_model(model)) as src:
        done = publish(src, rules, dest, chosen, budget, parse_compressors(compress, src.file_bytes), progress,
                       compress_progress, goal, data, log, _calibration(data, export_cosine))
    if done.broken:
        raise BudgetBroken(str(done.broken), done.report)
    return done.report


def open(path: PathLike) -> QpkReader:  # noqa: A001 (qpack.open, as gzip.open)
    """A lazy reader of a .qpk container: `entries`, `codes(e)`, `params(e)`, `dequantize(e)`, `verify()`;
    use it as a context manager.

    Raises:
        FormatError: the file breaks a rule of FORMAT.md (checked on open; blob checksums by verify()).
    """
    return QpkReader(Path(path))


def describe(path: PathLike, verify: bool = True) -> dict[str, Any]:
    """What a .qpk holds: header, options, each tensor's layout and sizes, and which export targets take
    it as stored (`exports`: target -> tensors it would store otherwise).

    Returns:
        The dict `qpack inspect --json` writes.

    Raises:
        FormatError: the file breaks a rule of FORMAT.md, or (with `verify`) a checksum does not match.
    """
    from qpack.converter.inspect import describe as run

    return run(Path(path), verify)


def unpack(qpk: PathLike, output: PathLike) -> list[Path]:
    """Rebuild a runnable float model in the container's source format at `output` (.onnx or .tflite).

    Returns:
        The files written (an ONNX model over 2 GB gets its external data file too).

    Raises:
        FormatError: the container is damaged; OptionError: `output` names another format.
    """
    from qpack.converter.convert import restore

    return restore(Path(qpk), Path(output))


def export(qpk: PathLike, to: str, output: PathLike, *, inputs: Inputs | PathLike | Callable[[Path], Inputs] | None = None,
           calibration: str = CALIBRATION, min_cosine: float | None = None, integer_io: bool = False,
           measure: bool = False) -> Exported:
    """Export a .qpk to a runtime's format or firmware sources.

    Args:
        to: a name of converter.export.TARGETS (onnx-qdq, onnx-fast, onnx-matmulnbits, onnx-matmulnbits-int8, onnx-int8, tflite,
            tflite-fast, tflite-dequantize, tflite-int8, tflite-int8-fast, tflite-16x8, c, c-coded).
        output: the exported model, or the folder of C sources.
        inputs: for a full-integer target (onnx-int8, tflite-int8, tflite-int8-fast, tflite-16x8), the calibration inputs:
            load_inputs(), an .npy/.npz path, or a function loading them against the float model it is given.
        calibration: how activation ranges are set from them: minmax, percentile or mse.
        min_cosine: the least output cosine on those inputs the integer nodes keep, against the container's
            values: where it falls below, the nodes that harm the outputs most stay float (-1: every node
            integer). None: what `convert --for` recorded in the container (its goal's share), else KEEP_COSINE.
        integer_io: tflite-int8, tflite-int8-fast, tflite-16x8: the model's float inputs and outputs become integer (no
            QUANTIZE and DEQUANTIZE around it; a notes line gives each one's scale and zero point), as microcontroller code feeds them.
        measure: time the export against the container's float model in its runtime (one thread, interleaved
            rounds, on the first of `inputs` or stand-ins) and add a last note with the latency and bytes ratios.

    Returns:
        The files written and the export's notes (tensors widened to their nearest exact form, say).

    Raises:
        OptionError: an unknown target, or a container of a format the target does not take.
        UnsupportedError: a tensor the target has no exact form for (nothing is written).
    """
    from qpack.converter.export import export as run
    from qpack.converter.export.calibrate import Calibration, check_method

    check_method(calibration)
    load: Callable[[Path], Inputs] | None
    if inputs is None or callable(inputs):
        load = inputs
    elif isinstance(inputs, Inputs):
        given = inputs
        load = lambda _: given  # noqa: E731  (checked against the model when calibrating)
    else:
        path = Path(inputs)
        load = lambda model: load_inputs(model, path)  # noqa: E731
    if min_cosine is not None and not -1 <= min_cosine <= 1:
        raise OptionError(f"--min-cosine must lie in [-1, 1], not {min_cosine}")
    if integer_io and load is None:
        raise OptionError("--integer-io comes with a full-integer export and its inputs (--to tflite-int8 --inputs ...)")
    files, notes = run(Path(qpk), to, Path(output), Calibration(load, calibration, min_cosine, integer_io) if load is not None else None,
                       measure)
    return Exported(tuple(files), tuple(notes))


def evaluate(model: PathLike, inputs: Inputs | PathLike, qpk: PathLike | None = None, *, bits: int = 8,
             scheme: str | None = None, per_channel: bool = False, clip: str = "minmax", group_size: int | None = None,
             param_dtype: str = "auto", keep: Sequence[str] = (), include: Sequence[str] = (),
             bits_for: Sequence[str] = (), target: str = QPK, groups: PathLike | None = None,
             group_threshold: float = 0.05) -> dict[str, Any]:
    """Run `model` and its quantized restoration (of `qpk`, or converted at the options) on the same inputs.

    Args:
        inputs: load_inputs(), or an .npy/.npz path.
        scheme, target: as for convert (a fixed option `target` cannot hold is refused).
        groups: a JSON class grouping ([[3, 5], [8, 9]]); group_threshold: the confusion growth that
            merges two classes when grouping automatically.

    Returns:
        The dict `qpack eval --json` writes: per-output fidelity, and accuracy and agreement for class
        scores or errors for regressions.

    Raises:
        OptionError: `qpk` was not made from `model`, or the inputs do not fit it.
    """
    from qpack.converter.deploy import check_format
    from qpack.converter.evaluate import evaluate as run

    check_format(target, Path(model))
    data = inputs if isinstance(inputs, Inputs) else load_inputs(model, inputs)
    rules = None if qpk else policy(scheme, bits, per_channel, keep, include, bits_for, clip, group_size, param_dtype,
                                    target=target)
    return run(Path(model), data, qpk=_path(qpk), policy=rules, groups_file=_path(groups), group_threshold=group_threshold)


def report(path: PathLike, *, bits: int = 8, scheme: str | None = None, per_channel: bool = False, clip: str = "minmax",
           group_size: int | None = None, param_dtype: str = "auto", keep: Sequence[str] = (), include: Sequence[str] = (),
           bits_for: Sequence[str] = (), codec: str | None = None, rdo: float = 0.0, target: str = QPK,
           source: PathLike | None = None,
           compress: str = "auto", html: PathLike | None = None, layer: str | None = None, max_size: int | None = None,
           max_bpw: float | None = None, min_sqnr: float | None = None, command: str | None = None) -> dict[str, Any]:
    """Range, distribution and bit efficiency per tensor: of a model at the options, or of a .qpk.

    Args:
        scheme, target: as for convert (a model's report at options `target` cannot hold is refused).
        source: for a .qpk, the float model it came from (weight SQNR, pictures, output fidelity).
        html: also write a self-contained page there (PNGs beside it); `layer` names the tensor pictured.
        max_size, max_bpw, min_sqnr: budgets, checked after the report is made.
        command: the command line that reproduces the report, recorded in it and on the page.

    Returns:
        The report (the dict `qpack report --json` writes).

    Raises:
        BudgetBroken: a budget was broken; its `report` is the full report.
        QpackError: an unreadable file or an impossible option, in one line.
    """
    from qpack.converter.deploy import check_format
    from qpack.converter.gates import Budget
    from qpack.converter.measure import parse_compressors
    from qpack.converter.report import floats_known, report_path, write_html

    budget = Budget(max_size, max_bpw, min_sqnr)
    parse_compressors(compress)  # a bad list before any work
    check_format(target, Path(path))
    rules = policy(scheme, bits, per_channel, keep, include, bits_for, clip, group_size, param_dtype, rdo, target,
                   codec_for(codec).name)
    rep, src = report_path(Path(path), rules, codec_for(codec), compress, _path(source))
    try:
        if command is not None:
            rep["command"] = command
        if html is not None:
            write_html(rep, src, layer, Path(html), command or "")
    finally:
        if src is not None:
            src.close()
    rep.pop("figure_options", None)
    try:
        budget.check(rep["sizes"]["qpk_bytes"], rep["sizes"]["bits_per_weight"], rep["totals"].get("sqnr_db"), floats_known(rep))
    except BudgetError as e:
        raise BudgetBroken(str(e), rep) from None
    return rep


def sweep(model: PathLike, inputs: Inputs | PathLike, output: PathLike | None = None, *, schemes: str = "asym,sym,pow2",
          bits: str = "8..2", granularity: str = "both", tolerance: float = 1.0, clip: str = "minmax", sensitivity_bits: int = 2,
          target: str = QPK, progress: Callable[[str], None] | None = None,
          command: str | None = None) -> tuple[dict[str, Any], list[Path]]:
    """Evaluate a grid of schemes x widths x granularities on `inputs`, name the knee, rank tensors by sensitivity.

    Args:
        schemes: comma-separated scheme names; bits: a range "8..2" or a list "8,6,4"; granularity:
            "tensor", "channel" or "both"; tolerance: points of loss the knee may cost; sensitivity_bits:
            the width of the one-tensor-at-a-time ranking (0: skip it); target: only the cells this export
            target runs natively (`--for`).
        output: a folder for sweep.json, sweep.csv and the plots (its parent must exist); None: nothing written.
        command: the command line that reproduces the sweep, recorded in it.

    Returns:
        The sweep (the dict sweep.json holds) and the files written.
    """
    from qpack.converter.sweep import parse_bits, parse_granularity, parse_schemes, run_sweep, write_outputs

    if not tolerance >= 0:
        raise OptionError(f"--tolerance is the points of loss the knee may cost: 0 or more, not {tolerance}")
    names, widths, grans = parse_schemes(schemes, sensitivity_bits), parse_bits(bits), parse_granularity(granularity)
    data = inputs if isinstance(inputs, Inputs) else load_inputs(model, inputs)
    from qpack.converter.deploy import check_format

    check_format(target, Path(model))  # an unknown target, or one of another format, before any work
    result = run_sweep(Path(model), data, names, widths, grans, tolerance, sensitivity_bits, progress, clip, target)
    if command is not None:
        result["command"] = command
    return result, (write_outputs(result, Path(output)) if output is not None else [])


def _calibration(data: Inputs | None, min_cosine: float | None = None) -> Any:
    """How a file made for a calibrated target is exported at convert: on the goal's inputs, at the defaults
    (the goal's share of the cosine where it split one, as `export` reads it from the container)."""
    from qpack.converter.export.calibrate import Calibration

    return None if data is None else Calibration(lambda _: data, CALIBRATION, KEEP_COSINE if min_cosine is None else min_cosine)


def _path(p: PathLike | None) -> Path | None:
    return None if p is None else Path(p)
