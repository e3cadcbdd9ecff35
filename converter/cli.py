"""The `qpack` command line: parse options, call the library, render. Errors surface in one place."""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import ExitStack, closing, contextmanager
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeAlias

import typer
from rich.console import Console
from rich.progress import Progress

from qpack.converter import __version__
from qpack.converter.allocate import AUTO_SCHEMES, DEFAULT_OBJECTIVE, OBJECTIVES
from qpack.converter.quant import CLIPS, QUANTIZERS
from qpack.formats.errors import BudgetError, QpackError
from qpack.formats.qpk import CODECS, Codec, codec_named

EXIT_ERROR = 1
EXIT_BUDGET = 3  # a build budget was broken: distinct from ordinary errors so pipelines can tell

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Quantize ONNX and TFLite weights to true n-bit codes in a .qpk container.")
# markup off: tensor names and file contents are printed as they are ("[x]" is not a style)
out = Console(highlight=False, markup=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, highlight=False, markup=False, soft_wrap=True)


def _choices(name: str, values: dict[str, str]) -> type[Enum]:
    """A str Enum typer can offer, built from a registry (so a registered scheme or codec shows up)."""
    return Enum(name, values, type=str)  # type: ignore[return-value]


# "packed" is the CLI's word for the raw codec: dense n-bit codes a reader needs no decoder for
_CODEC_LABELS = {"raw": "packed"}
if TYPE_CHECKING:
    CodecName: TypeAlias = Enum
    ClipName: TypeAlias = Enum
    SchemeName: TypeAlias = Enum
    ObjectiveName: TypeAlias = Enum
else:
    CodecName = _choices("CodecName", {_CODEC_LABELS.get(c.name, c.name): _CODEC_LABELS.get(c.name, c.name) for c in CODECS.values()})
    ClipName = _choices("ClipName", {c: c for c in CLIPS})
    SchemeName = _choices("SchemeName", {s: s for s in QUANTIZERS})
    ObjectiveName = _choices("ObjectiveName", {o: o for o in OBJECTIVES})


@contextmanager
def _errors() -> Iterator[None]:
    """Turn library errors into one line on stderr and a non-zero exit."""
    try:
        yield
    except BudgetError as e:
        err.print(f"qpack: budget exceeded: {e}", markup=False)
        raise typer.Exit(EXIT_BUDGET) from None
    except QpackError as e:
        err.print(f"qpack: error: {e}", markup=False)
        raise typer.Exit(EXIT_ERROR) from None
    except MemoryError:
        err.print("qpack: error: out of memory", markup=False)
        raise typer.Exit(EXIT_ERROR) from None
    except OSError as e:
        err.print(f"qpack: error: {e.filename}: {e.strerror or e}" if e.filename else f"qpack: error: {e.strerror or e}", markup=False)
        raise typer.Exit(EXIT_ERROR) from None


def _command(name: str) -> str:
    """The command line that reproduces this run, for reports to carry."""
    import shlex

    return f"qpack {name} " + shlex.join(sys.argv[2:]) if sys.argv[1:2] == [name] else f"qpack {name} ..."


def _write_json(path: Path, data: Any) -> None:
    from qpack.formats.atomic import write_bytes_atomic

    write_bytes_atomic(path, (json.dumps(data, indent=2, sort_keys=False) + "\n").encode())


@contextmanager
def _status(message: str, quiet: bool) -> Iterator[None]:
    """A spinner on a terminal while work without countable steps runs."""
    if quiet or not sys.stderr.isatty():
        yield
    else:
        with err.status(message):
            yield


def _progress(quiet: bool) -> Progress | None:
    """A progress bar on a terminal, redrawn by its updates: no refresh thread, so a goal's menus
    may still fork their worker processes (converter.allocate.menus)."""
    return None if quiet or not sys.stderr.isatty() else Progress(console=err, transient=True, auto_refresh=False)


ModelArg = Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="an .onnx or .tflite model")]
QpkArg = Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="a .qpk container")]
Bits = Annotated[int, typer.Option("--bits", "-b", min=1, max=16, help="bits per weight code (past 8: sym only)")]
_SCHEMES_HELP = "asym: scale+zero point; sym: scale; pow2: sign+exponent; lut: a codebook"
Scheme = Annotated[SchemeName, typer.Option("--scheme", "-s", help=_SCHEMES_HELP)]
GoalScheme = Annotated[SchemeName | None, typer.Option(
    "--scheme", "-s", show_default=False,
    help=f"{_SCHEMES_HELP} [default: asym; with a goal, each tensor's best of {', '.join(AUTO_SCHEMES)}]")]
PerChannel = Annotated[bool, typer.Option("--per-channel/--per-tensor", help="one scale per output channel")]
Clip = Annotated[ClipName, typer.Option("--clip", help="minmax: span each group's full range; mse: shrink it to the least "
                                                        "squared error (searched on a sample; slower, better below 6 bits); "
                                                        "mse-ends: then each end on its own; loose1..3: the range widened by "
                                                        "1..3 quarter bits (entropy-coded steps between widths)")]
Keep = Annotated[list[str] | None, typer.Option("--keep", help="keep tensors matching this glob in float (repeatable)")]
Include = Annotated[list[str] | None, typer.Option("--include",
                                                   help="quantize float tensors matching this glob even if the default keeps them")]
BitsFor = Annotated[list[str] | None, typer.Option("--bits-for", help="PATTERN=BITS: another width for matching tensors")]
Compress = Annotated[str, typer.Option("--compress", help="compressors to measure: a list of gzip,zstd,7z; all; none; "
                                                            "auto = gzip,zstd for models up to 64 MiB")]
JsonOut = Annotated[Path | None, typer.Option("--json", dir_okay=False, help="also write the report as JSON")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="print nothing but errors")]
_CODEC_HELP = ("packed: dense n-bit codes; zstd: the packed codes compressed; ans: the codes entropy-coded by rANS with "
               "context tables (either kept per tensor only where smaller)")
CodecOpt = Annotated[CodecName, typer.Option("--codec", help=_CODEC_HELP)]
# a goal trades fidelity for stored bytes, and the ans codec stores the same codes in the fewest
GOAL_CODEC = "ans"
GoalCodec = Annotated[CodecName | None, typer.Option("--codec", show_default=False,
                                                     help=f"{_CODEC_HELP} [default: packed; with a goal, {GOAL_CODEC}]")]
Rdo = Annotated[float, typer.Option("--rdo", min=0.0, max=10.0, help="rate-aware rounding (asym, sym): a weight takes a "
                                                                      "neighbouring code when the bits saved x LAMBDA outweigh the "
                                                                      "squared error added, in steps; 0 rounds to nearest",
                                    metavar="LAMBDA")]
GroupSize = Annotated[int | None, typer.Option("--group-size", min=16, max=1024,
                                               help="blocks of N weights along each tensor's reduction axis share a scale "
                                                    "(instead of per tensor or per channel); a short last block where N does not divide")]
ParamDtype = Annotated[str, typer.Option("--param-dtype", help="scales as fp16 or fp32; auto: fp16 for --group-size, fp32 otherwise")]
MaxSize = Annotated[int | None, typer.Option("--max-size", help="fail (exit 3) when the .qpk is larger than this many bytes")]
MaxBpw = Annotated[float | None, typer.Option("--max-bpw", help="fail (exit 3) above this many bits per weight, scales included")]
MinSqnr = Annotated[float | None, typer.Option("--min-sqnr", help="fail (exit 3) when the weights' SQNR is under this many dB")]


InputsOpt = Annotated[Path | None, typer.Option("--inputs", exists=True, dir_okay=False,
                                                   help=".npy, or .npz with one array per model input (or one) and optional 'labels'")]
ImagesOpt = Annotated[Path | None, typer.Option("--images", exists=True, file_okay=False,
                                                   help="folder of images (one sub-folder per class gives labels)")]
SizeOpt = Annotated[str, typer.Option("--size", help="image size N or HxW")]
LayoutOpt = Annotated[str, typer.Option("--layout", help="nchw or nhwc")]
ScaleOpt = Annotated[str, typer.Option("--scale", help="pixel multiplier, e.g. 1/255")]
MeanOpt = Annotated[str | None, typer.Option("--mean", help="subtracted after scaling: one value or R,G,B")]
StdOpt = Annotated[str | None, typer.Option("--std", help="divides after the mean: one value or R,G,B")]
DatasetOpt = Annotated[str | None, typer.Option("--dataset", help="built-in labelled data: digits (the bundled sample's test split)")]


TargetBpw = Annotated[float | None, typer.Option("--target-bpw", help="goal: at most this many stored bits per weight "
                                                 "(scales included); qpack picks each tensor's width, grouping and clipping")]
TargetSize = Annotated[int | None, typer.Option("--target-size", help="goal: a .qpk of at most this many bytes")]
TargetSqnr = Annotated[float | None, typer.Option("--target-sqnr", help="goal: the smallest file whose weight SQNR, pooled "
                                                  "over the quantized tensors, is at least this many dB")]
Objective = Annotated[ObjectiveName | None, typer.Option("--objective", help="what --target-bpw/--target-size maximize: "
                                                         + "; ".join(f"{k}: {v.help}" for k, v in OBJECTIVES.items())
                                                         + f" [default: {DEFAULT_OBJECTIVE}]", show_default=False)]
MinCosine = Annotated[float | None, typer.Option("--min-cosine", help="goal: every output's cosine to the float model's "
                                                 "at least this, on the given inputs (smallest file that meets it)")]
AllowFloat = Annotated[bool, typer.Option("--allow-float", help="fidelity goals: where every tensor at its most precise "
                                          "setting falls short, keep the tensors that need it in float (as the source stores them) "
                                          "instead of exit 3")]
MaxDrop = Annotated[float | None, typer.Option("--max-accuracy-drop", help="goal: accuracy lost on labelled inputs at most "
                                               "this many points")]


def _codec(name: Enum) -> Codec:
    label = str(name.value)
    return codec_named(next((c for c, lbl in _CODEC_LABELS.items() if lbl == label), label))


def _policy(scheme: Enum, bits: int, per_channel: bool, keep: list[str] | None, include: list[str] | None,
            bits_for: list[str] | None, clip: Enum | None = None, group_size: int | None = None, param_dtype: str = "auto",
            rdo: float = 0.0):
    from qpack.converter.policy import Policy, parse_bits_for

    return Policy(str(scheme.value), bits, per_channel, tuple(keep or ()), tuple(include or ()), parse_bits_for(bits_for or []),
                  str(clip.value) if clip else "minmax", group_size, param_dtype, rdo=rdo)


@app.command()
def convert(
    model: ModelArg,
    output: Annotated[Path | None, typer.Option("--output", "-o", dir_okay=False, help="default: MODEL with .qpk suffix")] = None,
    bits: Bits = 8,
    scheme: GoalScheme = None,
    per_channel: PerChannel = False,
    clip: Clip = ClipName("minmax"),
    group_size: GroupSize = None,
    param_dtype: ParamDtype = "auto",
    keep: Keep = None,
    include: Include = None,
    bits_for: BitsFor = None,
    codec: GoalCodec = None,
    rdo: Rdo = 0.0,
    compress: Compress = "auto",
    json_out: JsonOut = None,
    tensors: Annotated[bool, typer.Option("--tensors", help="also print the per-tensor table")] = False,
    max_size: MaxSize = None,
    max_bpw: MaxBpw = None,
    min_sqnr: MinSqnr = None,
    target_bpw: TargetBpw = None,
    target_size: TargetSize = None,
    target_sqnr: TargetSqnr = None,
    objective: Objective = None,
    min_cosine: MinCosine = None,
    max_accuracy_drop: MaxDrop = None,
    allow_float: AllowFloat = False,
    inputs: InputsOpt = None,
    images: ImagesOpt = None,
    dataset: DatasetOpt = None,
    size: SizeOpt = "224",
    layout: LayoutOpt = "nchw",
    scale: ScaleOpt = "1/255",
    mean: MeanOpt = None,
    std: StdOpt = None,
    quiet: Quiet = False,
) -> None:
    """Quantize MODEL's weights into a .qpk container and print a size report.

    With a goal (--target-bpw, --target-size, --target-sqnr, or --min-cosine/--max-accuracy-drop checked in the
    runtime on --inputs/--images/--dataset), qpack allocates each tensor's width, grouping and
    clipping itself, starting from --bits, and entropy-codes the codes unless --codec says otherwise;
    an impossible goal exits with code 3.

    With a budget (--max-size, --max-bpw, --min-sqnr) a broken one exits with code 3 and the
    new artifact is not put in place (a previous file at the output path stays as it was), so a
    build cannot ship it by accident.
    """
    from qpack.converter.allocate import Goal
    from qpack.converter.gates import Budget
    from qpack.converter.measure import parse_compressors
    from qpack.converter.publish import publish
    from qpack.converter.render import size_table
    from qpack.formats.registry import open_model

    with _errors(), ExitStack() as stack:
        policy = _policy(scheme or SchemeName("asym"), bits, per_channel, keep, include, bits_for, clip, group_size, param_dtype,
                         rdo)
        budget = Budget(max_size, max_bpw, min_sqnr)
        parse_compressors(compress)  # reject a bad list before any work
        target = output or model.with_suffix(".qpk")
        goal = Goal(target_bpw, target_size, min_cosine, max_accuracy_drop, target_sqnr,
                    str(objective.value) if objective else None, None if scheme else AUTO_SCHEMES, allow_float)
        goal.check()
        chosen_codec = _codec(codec or CodecName(GOAL_CODEC if goal.any else "packed"))
        data = _inputs(model, inputs, images, dataset, size, layout, scale, mean, std) if goal.fidelity else None
        src = stack.enter_context(closing(open_model(model)))
        compressors = parse_compressors(compress, src.file_bytes)
        say = None if quiet else (lambda line: err.print(f"allocate: {line}"))
        bar = _progress(quiet)
        if bar:
            with bar:
                task = bar.add_task("quantizing", total=None)
                ctask = bar.add_task("compressing", total=len(compressors) * 2, visible=False)
                done = publish(src, policy, target, chosen_codec, budget, compressors,
                               lambda i, n: bar.update(task, completed=i, total=n, refresh=True),
                               lambda _: bar.update(ctask, advance=1, visible=True, refresh=True), goal, data, say)
        else:
            done = publish(src, policy, target, chosen_codec, budget, compressors, goal=goal, inputs=data, log=say)
        report = done.report
        report["command"] = _command("convert")
        if json_out:
            _write_json(json_out, report)
        if not quiet:
            size_table(report, out, tensors)
            if compress == "auto" and not compressors:
                out.print("compressors skipped for a model over 64 MiB; ask with --compress gzip,zstd,7z")
        if done.broken:
            raise done.broken
        if not quiet:
            out.print(f"wrote {target}")


@app.command()
def unpack(
    qpk: QpkArg,
    output: Annotated[Path, typer.Option("--output", "-o", dir_okay=False, help="restored .onnx or .tflite")],
    quiet: Quiet = False,
) -> None:
    """Rebuild a runnable float model (the source format) from a .qpk container."""
    from qpack.converter.convert import restore

    with _errors():
        written = restore(qpk, output)
        if not quiet:
            out.print("wrote " + ", ".join(map(str, written)))


def _targets_help() -> str:
    from qpack.converter.export import TARGETS

    return "; ".join(f"{t.name}: {t.help}" for t in TARGETS.values()) or "none registered"


@app.command()
def export(
    qpk: QpkArg,
    to: Annotated[str, typer.Option("--to", help="what to export: " + _targets_help())],
    output: Annotated[Path, typer.Option("--output", "-o", help="the exported file, or folder for --to c")],
    quiet: Quiet = False,
) -> None:
    """Export a .qpk as a model a runtime executes with low-bit weights, or as firmware sources."""
    from qpack.converter.export import export as run_export

    with _errors():
        written, notes = run_export(qpk, to, output)
        if not quiet:
            for note in notes:
                out.print(f"note: {note}")
            out.print("wrote " + ", ".join(map(str, written)))


@app.command()
def inspect(
    qpk: QpkArg,
    json_out: JsonOut = None,
    verify: Annotated[bool, typer.Option("--verify/--no-verify", help="check every blob's checksum")] = True,
) -> None:
    """Show what a .qpk holds: tensors, schemes, bits, sizes, checksums."""
    from qpack.converter.inspect import describe, render_description

    with _errors():
        info = describe(qpk, verify)
        if json_out:
            _write_json(json_out, info)
        render_description(info, out)


def _version(value: bool) -> None:
    if value:
        out.print(f"qpack {__version__}")
        raise typer.Exit()


def _stop(signum: int, frame: object) -> None:
    """SIGTERM/SIGINT: remove what this run was writing, then exit with the conventional 128 + signal."""
    from qpack.formats.atomic import remove_pending

    remove_pending()
    # os.write, not the console: the interrupted code may hold the console's lock (and a handler that
    # waits on a lock its own thread holds waits forever)
    os.write(2, f"qpack: stopped by {signal.Signals(signum).name}\n".encode())
    os._exit(128 + signum)  # worker threads may be mid-numpy: leave without waiting for them


@app.callback()
def main(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="print the version")] = False) -> None:
    """qpack: data-free n-bit weight quantization."""


def run() -> None:
    """The `qpack` command: the app, with stops that clean up (in-process callers keep their own handlers)."""
    stops = (signal.SIGTERM, signal.SIGINT)
    for sig in stops:
        signal.signal(sig, _stop)
    try:
        app()
    finally:
        # The work is done and its output in place: a stop that arrives while the interpreter shuts
        # down (which restores the default handlers) must not turn a finished run into a killed one.
        for sig in stops:
            signal.signal(sig, signal.SIG_IGN)


@app.command()
def report(
    path: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="an .onnx, .tflite or .qpk file")],
    bits: Bits = 8,
    scheme: Scheme = SchemeName("asym"),
    per_channel: PerChannel = False,
    clip: Clip = ClipName("minmax"),
    group_size: GroupSize = None,
    param_dtype: ParamDtype = "auto",
    keep: Keep = None,
    include: Include = None,
    bits_for: BitsFor = None,
    codec: CodecOpt = CodecName("packed"),
    rdo: Rdo = 0.0,
    source: Annotated[Path | None, typer.Option("--source", exists=True, dir_okay=False,
                                                   help="for a .qpk: the float model it came from (enables SQNR and pictures)")] = None,
    layer: Annotated[str | None, typer.Option("--layer", help="tensor shown in the per-layer pictures (default: first kernel)")] = None,
    html_out: Annotated[Path | None, typer.Option("--html", dir_okay=False, help="self-contained HTML page; PNGs beside it")] = None,
    json_out: JsonOut = None,
    compress: Compress = "auto",
    max_size: MaxSize = None,
    max_bpw: MaxBpw = None,
    min_sqnr: MinSqnr = None,
    quiet: Quiet = False,
) -> None:
    """Range, distribution and bit efficiency per tensor, for a model at the given options or a .qpk."""
    from qpack.converter.gates import Budget
    from qpack.converter.measure import parse_compressors
    from qpack.converter.render import report_table
    from qpack.converter.report import floats_known, report_path, write_html

    with _errors(), _status("measuring", quiet), ExitStack() as stack:
        budget = Budget(max_size, max_bpw, min_sqnr)
        parse_compressors(compress)
        policy = _policy(scheme, bits, per_channel, keep, include, bits_for, clip, group_size, param_dtype, rdo)
        rep, src = report_path(path, policy, _codec(codec), compress, source)
        if src is not None:
            stack.enter_context(closing(src))
        command = _command("report")
        rep["command"] = command
        if html_out:
            write_html(rep, src, layer, html_out, command)
        rep.pop("figure_options", None)
        if json_out:
            _write_json(json_out, rep)
        if not quiet:
            report_table(rep, out)
        budget.check(rep["sizes"]["qpk_bytes"], rep["sizes"]["bits_per_weight"], rep["totals"].get("sqnr_db"), floats_known(rep))


def _inputs(model: Path, inputs: Path | None, images: Path | None, dataset: str | None, size: str, layout: str, scale: str,
            mean: str | None, std: str | None):
    from qpack.converter.datasets import load_inputs

    return load_inputs(model, inputs, images, dataset, size, layout, scale, mean, std)


@app.command("eval")
def eval_(
    model: ModelArg,
    qpk: Annotated[Path | None, typer.Option("--qpk", exists=True, dir_okay=False,
                                             help="evaluate this container instead of converting")] = None,
    bits: Bits = 8,
    scheme: Scheme = SchemeName("asym"),
    per_channel: PerChannel = False,
    clip: Clip = ClipName("minmax"),
    group_size: GroupSize = None,
    param_dtype: ParamDtype = "auto",
    keep: Keep = None,
    include: Include = None,
    bits_for: BitsFor = None,
    inputs: InputsOpt = None,
    images: ImagesOpt = None,
    dataset: DatasetOpt = None,
    size: SizeOpt = "224",
    layout: LayoutOpt = "nchw",
    scale: ScaleOpt = "1/255",
    mean: MeanOpt = None,
    std: StdOpt = None,
    groups: Annotated[Path | None, typer.Option("--groups", exists=True, dir_okay=False,
                                                help="JSON class grouping, e.g. [[3,5],[8,9]]")] = None,
    group_threshold: Annotated[float, typer.Option("--group-threshold", min=0.0, max=1.0,
                                                   help="auto grouping: confusion-rate growth that merges two classes")] = 0.05,
    json_out: JsonOut = None,
    quiet: Quiet = False,
) -> None:
    """Run MODEL and its quantized restoration on the same inputs; report fidelity and accuracy."""
    from qpack.converter.evaluate import evaluate
    from qpack.converter.render import eval_table

    with _errors():
        data = _inputs(model, inputs, images, dataset, size, layout, scale, mean, std)
        policy = None if qpk else _policy(scheme, bits, per_channel, keep, include, bits_for, clip, group_size, param_dtype)
        result = evaluate(model, data, qpk=qpk, policy=policy, groups_file=groups, group_threshold=group_threshold)
        result["command"] = _command("eval")
        if json_out:
            _write_json(json_out, result)
        if not quiet:
            eval_table(result, out)


@app.command()
def sweep(
    model: ModelArg,
    out_dir: Annotated[Path, typer.Option("--out", file_okay=False, help="folder for sweep.json, sweep.csv and the plots")],
    schemes: Annotated[str, typer.Option("--schemes", help="comma-separated schemes")] = "asym,sym,pow2",
    bits: Annotated[str, typer.Option("--bits", help="widths: a range 8..2 or a list 8,6,4")] = "8..2",
    granularity: Annotated[str, typer.Option("--granularity", help="tensor, channel or both")] = "both",
    tolerance: Annotated[float, typer.Option("--tolerance", min=0.0, help="points of loss the knee may cost")] = 1.0,
    clip: Clip = ClipName("minmax"),
    sensitivity_bits: Annotated[int, typer.Option("--sensitivity-bits", min=0, max=8,
                                                  help="width for the one-tensor-at-a-time ranking (0: skip)")] = 2,
    inputs: InputsOpt = None,
    images: ImagesOpt = None,
    dataset: DatasetOpt = None,
    size: SizeOpt = "224",
    layout: LayoutOpt = "nchw",
    scale: ScaleOpt = "1/255",
    mean: MeanOpt = None,
    std: StdOpt = None,
    quiet: Quiet = False,
) -> None:
    """Evaluate a grid of schemes x bit widths; name the knee; rank tensors by sensitivity."""
    from qpack.converter.render import sweep_table
    from qpack.converter.sweep import parse_bits, parse_granularity, parse_schemes, run_sweep, write_outputs

    with _errors():
        scheme_list = parse_schemes(schemes, sensitivity_bits)
        widths = parse_bits(bits)
        grans = parse_granularity(granularity)
        data = _inputs(model, inputs, images, dataset, size, layout, scale, mean, std)
        bar = _progress(quiet)
        if bar:
            with bar:
                task = bar.add_task("sweeping", total=None)
                result = run_sweep(model, data, scheme_list, widths, grans, tolerance, sensitivity_bits,
                                   lambda label: bar.update(task, advance=1, description=label, refresh=True), str(clip.value))
        else:
            result = run_sweep(model, data, scheme_list, widths, grans, tolerance, sensitivity_bits, clip=str(clip.value))
        result["command"] = _command("sweep")
        files = write_outputs(result, out_dir)
        if not quiet:
            sweep_table(result, out)
            out.print("wrote " + ", ".join(map(str, files)))
