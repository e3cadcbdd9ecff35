"""The `qpack` command line: parse options, call the Python API (converter.api), render. Errors surface in one place."""

from __future__ import annotations

import inspect as _inspect
import json
import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeAlias

import typer
from rich.console import Console
from rich.progress import Progress

from qpack.converter import __version__, api
from qpack.converter.allocate import AUTO_SCHEMES, DEFAULT_OBJECTIVE, GOALS, OBJECTIVES
from qpack.converter.export.calibrate import METHODS as CALIBRATIONS
from qpack.converter.policy import PARAM_DTYPES
from qpack.converter.quant import CLIPS, QUANTIZERS
from qpack.converter.quant.rdo import MAX_LAMBDA
from qpack.formats.errors import BudgetError, QpackError
from qpack.formats.qpk import CODECS, SCHEMES
from qpack.formats.qpk.spec import MAX_BITS, MIN_BITS

try:  # the click typer runs on: its own copy from typer 0.2x, else the click package
    from typer._click.exceptions import UsageError as _UsageError
except ImportError:  # pragma: no cover
    from click.exceptions import UsageError as _UsageError  # type: ignore[no-redef]

EXIT_ERROR = 1
EXIT_BUDGET = 3  # a build budget was broken: distinct from ordinary errors so pipelines can tell
PLUGINS = "qpack.plugins"  # the entry-point group of modules that register schemes, codecs, goals or targets


class _Help:
    """--help takes no value: no type shown beside it, and listed with the output options where there are panels."""

    params: list[Any]

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)  # type: ignore[misc]  # a mixin: the command class comes after it
        if option is not None:
            option.metavar = ""
            if any(getattr(p, "rich_help_panel", None) == OUTPUT for p in self.params):
                option.rich_help_panel = OUTPUT
        return option


class _Command(_Help, typer.core.TyperCommand):
    pass


class _Group(_Help, typer.core.TyperGroup):
    pass


app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, cls=_Group,
                  help="Quantize ONNX and TFLite weights to true n-bit codes in a .qpk container.")
# markup off: tensor names and file contents are printed as they are ("[x]" is not a style)
out = Console(highlight=False, markup=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, highlight=False, markup=False, soft_wrap=True)

# The library's defaults, shown in the help as they are: the API decides them, the CLI only displays them.
def _defaults(fn: Callable[..., Any]) -> dict[str, Any]:
    return {k: p.default for k, p in _inspect.signature(fn).parameters.items()}


CONVERT, REPORT, EVALUATE = _defaults(api.convert), _defaults(api.report), _defaults(api.evaluate)
SWEEP, INPUT, EXPORT = _defaults(api.sweep), _defaults(api.load_inputs), _defaults(api.export)

# help panels, in the order a user decides
WHAT, GOAL_PANEL, INPUTS, STORAGE, BUDGETS, OUTPUT = ("What to quantize", "Goals (qpack allocates each tensor's setting)",
                                                 "Inputs (fidelity goals, eval, sweep)", "Storage",
                                                 "Budgets (a build step fails with exit 3)", "Output")


def _default(text: str) -> str:
    """A default the help states in words (where it depends on other options), shown as typer shows its own."""
    return f"\\[default: {text}]"  # the backslash keeps rich from reading it as markup


def _load_plugins() -> None:
    """Import the modules installed packages declare under the entry-point group PLUGINS, so what they
    register is in the registries before the command line reads them; one that fails is named, and skipped."""
    from importlib.metadata import entry_points

    for ep in entry_points(group=PLUGINS):
        try:
            ep.load()
        except Exception as e:  # a broken plugin must not take the command down with it
            err.print(f"qpack: warning: plugin {ep.name} ({ep.value}) not loaded: {type(e).__name__}: {e}")


_load_plugins()


def _choices(name: str, values: list[str]) -> type[Enum]:
    """A str Enum typer can offer, built from a registry (so a registered scheme or codec shows up)."""
    return Enum(name, {v: v for v in values}, type=str)  # type: ignore[return-value]  # the functional API is typed as Enum


def _targets() -> list[str]:
    from qpack.converter.export import TARGETS

    return list(TARGETS)


if TYPE_CHECKING:
    CodecName: TypeAlias = Enum
    ClipName: TypeAlias = Enum
    SchemeName: TypeAlias = Enum
    ObjectiveName: TypeAlias = Enum
    TargetName: TypeAlias = Enum
    ForName: TypeAlias = Enum
    ParamDtypeName: TypeAlias = Enum
    CalibrationName: TypeAlias = Enum
else:
    CodecName = _choices("CodecName", [c.label for c in CODECS.values()])
    ClipName = _choices("ClipName", list(CLIPS))
    SchemeName = _choices("SchemeName", list(QUANTIZERS))
    ObjectiveName = _choices("ObjectiveName", list(OBJECTIVES))
    TargetName = _choices("TargetName", _targets())
    ForName = _choices("ForName", [api.QPK, *_targets()])
    ParamDtypeName = _choices("ParamDtypeName", list(PARAM_DTYPES))
    CalibrationName = _choices("CalibrationName", list(CALIBRATIONS))


def _value(choice: Enum | None) -> Any:
    return None if choice is None else choice.value


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
    """The report as JSON into `path`, or onto standard output for `-`."""
    from qpack.formats.atomic import write_bytes_atomic

    text = json.dumps(data, indent=2, sort_keys=False) + "\n"
    if str(path) == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        write_bytes_atomic(path, text.encode())


def _emit(data: dict[str, Any], json_out: Path | None, quiet: bool, table: Callable[[dict[str, Any], Console], None]) -> None:
    """The JSON where --json asks for it, and the table unless -q or the JSON takes standard output."""
    if json_out:
        _write_json(json_out, data)
    if _shown(json_out, quiet):
        table(data, out)


def _shown(json_out: Path | None, quiet: bool) -> bool:
    """Whether the human-readable tables go to standard output (not with -q, nor when JSON does)."""
    return not quiet and str(json_out) != "-"


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
    may still fork their worker processes (converter.allocate.pool)."""
    return None if quiet or not sys.stderr.isatty() else Progress(console=err, transient=True, auto_refresh=False)


ModelArg = Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="an .onnx or .tflite model",
                                          show_default=False)]
QpkArg = Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="a .qpk container", show_default=False)]
Bits = Annotated[int, typer.Option("--bits", "-b", min=MIN_BITS, max=MAX_BITS, rich_help_panel=WHAT,
                                   help="bits per weight code (each scheme's range under --scheme)")]
_SCHEMES_HELP = "; ".join(f"{n}: {SCHEMES[n].help} ({SCHEMES[n].min_bits}..{SCHEMES[n].max_bits} bits)" for n in QUANTIZERS)
# what a goal chooses each tensor's scheme from, as options.menus does
_GOAL_SCHEMES = ", ".join(AUTO_SCHEMES) + "".join(f", and {n} with an entropy coder" for n, q in QUANTIZERS.items()
                                                   if q.coded_choice and n not in AUTO_SCHEMES)
Scheme = Annotated[SchemeName, typer.Option("--scheme", "-s", help=_SCHEMES_HELP, rich_help_panel=WHAT)]
FixedScheme = Annotated[SchemeName | None, typer.Option(
    "--scheme", "-s", show_default=False, rich_help_panel=WHAT,
    help=f"{_SCHEMES_HELP} " + _default(f"{api.SCHEME}, or for a --for target without it the first of {', '.join(AUTO_SCHEMES)} it runs"))]
GoalScheme = Annotated[SchemeName | None, typer.Option(
    "--scheme", "-s", show_default=False, rich_help_panel=WHAT,
    help=f"{_SCHEMES_HELP} " + _default(f"{api.SCHEME}; with a goal, each tensor's best of {_GOAL_SCHEMES}"))]
PerChannel = Annotated[bool, typer.Option("--per-channel/--per-tensor", help="one scale per output channel", metavar="",
                                          rich_help_panel=WHAT)]
Clip = Annotated[ClipName, typer.Option("--clip", rich_help_panel=WHAT,
                                        help="minmax: span each group's full range; mse: shrink it to the least "
                                             "squared error (searched on a sample; slower, better below 6 bits); "
                                             "mse-ends: then each end on its own; loose1..3: the range widened by "
                                             "1..3 quarter bits (entropy-coded steps between widths)")]
Keep = Annotated[list[str] | None, typer.Option("--keep", metavar="GLOB", rich_help_panel=WHAT,
                                                help="keep tensors matching this glob in float (repeatable)")]
Include = Annotated[list[str] | None, typer.Option("--include", metavar="GLOB", rich_help_panel=WHAT,
                                                   help="quantize float tensors matching this glob even if the default keeps them")]
BitsFor = Annotated[list[str] | None, typer.Option("--bits-for", metavar="GLOB=BITS", rich_help_panel=WHAT,
                                                   help="another width for matching tensors (repeatable)")]
GroupSize = Annotated[int | None, typer.Option("--group-size", min=16, max=1024, metavar="N", rich_help_panel=WHAT,
                                               help="blocks of N weights along each tensor's reduction axis share a scale "
                                                    "(instead of per tensor or per channel); a short last block where N does not divide")]
ParamDtype = Annotated[ParamDtypeName, typer.Option("--param-dtype", rich_help_panel=WHAT,
                                                    help="scales as fp16 or fp32; auto: fp16 for --group-size, fp32 otherwise")]
ForTarget = Annotated[ForName, typer.Option(
    "--for", rich_help_panel=WHAT, metavar="TARGET",
    help="the export target the file is made for (`qpack export --to`: " + ", ".join(_targets()) + "): a goal allocates only "
         "what it runs natively, priced in the bytes its export stores; a fixed option it cannot hold is refused; qpk: the "
         "container alone")]
Rdo = Annotated[float, typer.Option("--rdo", min=0.0, max=MAX_LAMBDA, metavar="LAMBDA", rich_help_panel=WHAT,
                                    help="rate-aware rounding (" + ", ".join(n for n, q in QUANTIZERS.items() if q.rate_aware or q.trellis)
                                         + "): a weight takes a neighbouring code when the bits saved x LAMBDA outweigh the "
                                           "squared error added, in steps; 0 rounds to nearest")]
Compress = Annotated[str, typer.Option("--compress", metavar="LIST", rich_help_panel=OUTPUT,
                                       help="compressors to measure: a list of gzip,zstd,7z; all; none; "
                                            "auto = gzip,zstd for models up to 64 MiB")]
JsonOut = Annotated[Path | None, typer.Option("--json", dir_okay=False, metavar="FILE", rich_help_panel=OUTPUT,
                                              help="also write the report as JSON (- : to standard output, instead of the table)")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="print nothing but errors", metavar="", rich_help_panel=OUTPUT)]
_CODEC_HELP = "; ".join(f"{c.label}: {c.help}" for c in CODECS.values())
CodecOpt = Annotated[CodecName, typer.Option("--codec", help=_CODEC_HELP, rich_help_panel=STORAGE)]
GoalCodec = Annotated[CodecName | None, typer.Option(
    "--codec", show_default=False, rich_help_panel=STORAGE,
    help=f"{_CODEC_HELP} " + _default(f"{api.codec_for(None).label}; with a goal, {api.codec_for(None, goal=True).label}"))]
MaxSize = Annotated[int | None, typer.Option("--max-size", metavar="BYTES", rich_help_panel=BUDGETS,
                                             help="fail when the .qpk is larger than this many bytes")]
MaxBpw = Annotated[float | None, typer.Option("--max-bpw", metavar="BITS", rich_help_panel=BUDGETS,
                                              help="fail above this many bits per weight, scales included")]
MinSqnr = Annotated[float | None, typer.Option("--min-sqnr", metavar="DB", rich_help_panel=BUDGETS,
                                               help="fail when the weights' SQNR is under this many dB")]

InputsOpt = Annotated[Path | None, typer.Option("--inputs", exists=True, dir_okay=False, metavar="FILE", rich_help_panel=INPUTS,
                                                help=".npy, or .npz with one array per model input (or one) and optional "
                                                     "'labels' (docs/inputs.md)")]
ImagesOpt = Annotated[Path | None, typer.Option("--images", exists=True, file_okay=False, metavar="DIR", rich_help_panel=INPUTS,
                                                help="folder of images (one sub-folder per class gives labels)")]
SizeOpt = Annotated[str, typer.Option("--size", metavar="N|HxW", help="image size", rich_help_panel=INPUTS)]
LayoutOpt = Annotated[str, typer.Option("--layout", metavar="nchw|nhwc", help="image layout", rich_help_panel=INPUTS)]
ScaleOpt = Annotated[str, typer.Option("--scale", metavar="X", help="pixel multiplier, e.g. 1/255", rich_help_panel=INPUTS)]
MeanOpt = Annotated[str | None, typer.Option("--mean", metavar="X|R,G,B", help="subtracted after scaling",
                                             rich_help_panel=INPUTS)]
StdOpt = Annotated[str | None, typer.Option("--std", metavar="X|R,G,B", help="divides after the mean", rich_help_panel=INPUTS)]
DatasetOpt = Annotated[str | None, typer.Option("--dataset", metavar="NAME", rich_help_panel=INPUTS,
                                                help="built-in labelled data: digits (the bundled sample's test split)")]

Objective = Annotated[ObjectiveName | None, typer.Option("--objective", rich_help_panel=GOAL_PANEL, show_default=False,
                                                         help="what " + "/".join(g.option for g in GOALS.values()
                                                                                 if g.fixed_objective is None) + " maximize: "
                                                         + "; ".join(f"{k}: {v.help}" for k, v in OBJECTIVES.items())
                                                         + " " + _default(DEFAULT_OBJECTIVE))]
AllowFloat = Annotated[bool, typer.Option("--allow-float", metavar="", rich_help_panel=GOAL_PANEL,
                                          help="fidelity goals: where every tensor at its most precise setting falls short, "
                                               "keep the tensors that need it in float (as the source stores them) instead of exit 3")]


def _examples(*lines: str) -> str:
    """An epilog of example command lines, one per line."""
    return "[bold]Examples[/bold]\n\n" + "\n\n".join(f"  {line}" for line in lines)


def _inputs(model: Path, inputs: Path | None, images: Path | None, dataset: str | None, size: str, layout: str, scale: str,
            mean: str | None, std: str | None) -> Callable[[], Any] | None:
    """A loader of the inputs given (checked against the model when called); None when none are."""
    if inputs is None and images is None and dataset is None:
        return None
    return lambda: api.load_inputs(model, inputs, images, dataset, size, layout, scale, mean, std)


def _goal_options(command: Callable[..., None]) -> Callable[..., None]:
    """An option per registered goal (converter.allocate.GOALS), in the Goals panel before --objective,
    given to `command` in its **goals: a goal registered before the CLI is built is offered with its help."""
    signature = _inspect.signature(command, eval_str=True)
    goal_params = [_inspect.Parameter(g.field, _inspect.Parameter.KEYWORD_ONLY, default=None,
                                      annotation=Annotated[g.type | None, typer.Option(g.option, metavar=g.metavar, help=g.help,
                                                                                       rich_help_panel=GOAL_PANEL, show_default=False)])
                   for g in GOALS.values()]
    params = []
    for p in signature.parameters.values():
        if p.name == "objective":
            params += goal_params
        if p.kind is not p.VAR_KEYWORD:
            params.append(p.replace(kind=_inspect.Parameter.KEYWORD_ONLY))
    command.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]  # read by inspect.signature
    return command


@app.command(cls=_Command, epilog=_examples("qpack convert model.onnx --bits 6 --scheme pow2",
                              "qpack convert model.onnx --bits 4 --group-size 32 --clip mse -o small.qpk",
                              "qpack convert model.onnx --target-bpw 3.5",
                              "qpack convert model.onnx --min-cosine 0.99 --inputs data.npz",
                              "qpack convert model.onnx --bits 4 --max-size 2000000 --json -"))
@_goal_options
def convert(
    model: ModelArg,
    bits: Bits = CONVERT["bits"],
    scheme: GoalScheme = None,
    per_channel: PerChannel = CONVERT["per_channel"],
    clip: Clip = ClipName(CONVERT["clip"]),
    group_size: GroupSize = CONVERT["group_size"],
    param_dtype: ParamDtype = ParamDtypeName(CONVERT["param_dtype"]),
    keep: Keep = None,
    include: Include = None,
    bits_for: BitsFor = None,
    rdo: Rdo = CONVERT["rdo"],
    target: ForTarget = ForName(CONVERT["target"]),
    objective: Objective = None,
    allow_float: AllowFloat = CONVERT["allow_float"],
    inputs: InputsOpt = None,
    images: ImagesOpt = None,
    dataset: DatasetOpt = None,
    size: SizeOpt = INPUT["size"],
    layout: LayoutOpt = INPUT["layout"],
    scale: ScaleOpt = INPUT["scale"],
    mean: MeanOpt = None,
    std: StdOpt = None,
    codec: GoalCodec = None,
    max_size: MaxSize = None,
    max_bpw: MaxBpw = None,
    min_sqnr: MinSqnr = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", dir_okay=False, metavar="FILE", rich_help_panel=OUTPUT,
                                                help="the container", show_default="MODEL with the suffix .qpk")] = None,
    compress: Compress = CONVERT["compress"],
    json_out: JsonOut = None,
    tensors: Annotated[bool, typer.Option("--tensors", help="also print the per-tensor table", metavar="",
                                          rich_help_panel=OUTPUT)] = False,
    quiet: Quiet = False,
    **goals: Any,
) -> None:
    """Quantize MODEL's weights into a .qpk container and print a size report.

    With a goal, qpack allocates each tensor's width, grouping and clipping itself, starting from
    --bits, and entropy-codes the codes unless --codec says otherwise; an impossible goal exits with
    code 3 and writes nothing. Fidelity goals (--min-cosine, --max-accuracy-drop) are checked in the
    runtime on --inputs, --images or --dataset.

    With a budget, a broken one exits with code 3 and the new artifact is not put in place (a previous
    file at the output path stays as it was), so a build cannot ship it by accident.
    """
    from qpack.converter.render import size_table

    with _errors():
        data = _inputs(model, inputs, images, dataset, size, layout, scale, mean, std)
        say = None if quiet else (lambda line: err.print(f"allocate: {line}"))
        request: dict[str, Any] = dict(
            bits=bits, scheme=_value(scheme), per_channel=per_channel, clip=_value(clip), group_size=group_size,
            param_dtype=_value(param_dtype), keep=keep or (), include=include or (), bits_for=bits_for or (), codec=_value(codec),
            rdo=rdo, target=_value(target), compress=compress, max_size=max_size, max_bpw=max_bpw, min_sqnr=min_sqnr,
            objective=_value(objective),
            allow_float=allow_float, inputs=data, log=say, **goals)
        broken: BudgetError | None = None
        try:
            bar = _progress(quiet)
            if bar:
                with bar:
                    task = bar.add_task("quantizing", total=None)
                    ctask = bar.add_task("compressing", total=None, visible=False)
                    report = api.convert(model, output, **request,
                                         progress=lambda i, n: bar.update(task, completed=i, total=n, refresh=True),
                                         compress_progress=lambda _: bar.update(ctask, advance=1, visible=True, refresh=True))
            else:
                report = api.convert(model, output, **request)
        except api.BudgetBroken as e:
            report, broken = e.report, e
        report["command"] = _command("convert")
        if json_out:
            _write_json(json_out, report)
        if _shown(json_out, quiet):
            size_table(report, out, tensors)
            if compress == "auto" and not report.get("compressed"):
                out.print("compressors skipped for a model over 64 MiB; ask with --compress gzip,zstd,7z")
        if broken:
            raise broken
        if _shown(json_out, quiet):
            out.print(f"wrote {report['output']}")


@app.command(cls=_Command, epilog=_examples("qpack unpack small.qpk -o restored.onnx"))
def unpack(
    qpk: QpkArg,
    output: Annotated[Path, typer.Option("--output", "-o", dir_okay=False, metavar="FILE", help="restored .onnx or .tflite",
                                         show_default=False)],
    quiet: Quiet = False,
) -> None:
    """Rebuild a runnable float model (the source format) from a .qpk container."""
    with _errors():
        written = api.unpack(qpk, output)
        if not quiet:
            out.print("wrote " + ", ".join(map(str, written)))


def _targets_help() -> str:
    from qpack.converter.export import TARGETS

    return "; ".join(f"{t.name}: {t.help}" for t in TARGETS.values()) or "none registered"


@app.command(cls=_Command, epilog=_examples("qpack export small.qpk --to onnx-qdq -o small_qdq.onnx",
                              "qpack export small.qpk --to onnx-int8 --inputs calibration.npz -o small_int8.onnx",
                              "qpack export small.qpk --to c -o firmware/"))
def export(
    qpk: QpkArg,
    to: Annotated[TargetName, typer.Option("--to", metavar="TARGET", help="what to export: " + _targets_help(), show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", metavar="PATH", help="the exported file, or folder for --to c",
                                         show_default=False)],
    inputs: InputsOpt = None,
    images: ImagesOpt = None,
    dataset: DatasetOpt = None,
    size: SizeOpt = INPUT["size"],
    layout: LayoutOpt = INPUT["layout"],
    scale: ScaleOpt = INPUT["scale"],
    mean: MeanOpt = None,
    std: StdOpt = None,
    calibration: Annotated[CalibrationName, typer.Option(
        "--calibration", rich_help_panel=INPUTS,
        help="how a full-integer export sets each activation's range from the inputs: minmax spans every value seen; "
             "percentile clips the rarest 0.01%; mse clips where the squared error is least")] = CalibrationName(EXPORT["calibration"]),
    min_cosine: Annotated[float | None, typer.Option(
        "--min-cosine", min=-1.0, max=1.0, rich_help_panel=INPUTS, metavar="C", show_default=False,
        help="full-integer exports: the least output cosine on the inputs, against the container's float values; where "
             "integer activations fall below it, the nodes that harm the outputs most stay float (-1: none). Default: "
             f"what convert --for recorded (its goal's share), else {api.KEEP_COSINE}")] = None,
    integer_io: Annotated[bool, typer.Option(
        "--integer-io", rich_help_panel=INPUTS, metavar="",
        help="tflite-int8, tflite-int8-fast, tflite-16x8: integer model inputs and outputs (no QUANTIZE/DEQUANTIZE around the "
             "model), each one's scale and zero point printed, as microcontroller code feeds them")] = EXPORT["integer_io"],
    measure: Annotated[bool, typer.Option(
        "--measure", metavar="",
        help="time the export against the float model in its runtime (one thread, interleaved rounds, a few seconds) "
             "and print its latency and bytes as ratios to the float model's")] = False,
    quiet: Quiet = False,
) -> None:
    """Export a .qpk as a model a runtime executes with low-bit weights, or as firmware sources.

    Full-integer targets (onnx-int8, tflite-int8, tflite-int8-fast, tflite-16x8) run the model on --inputs,
    --images or --dataset to set the activations' ranges; the others take no inputs.
    """
    with _errors():
        given = any(x is not None for x in (inputs, images, dataset))
        load = (lambda model: api.load_inputs(model, inputs, images, dataset, size, layout, scale, mean, std)) if given else None
        done = api.export(qpk, str(to.value), output, inputs=load, calibration=str(calibration.value), min_cosine=min_cosine,
                          integer_io=integer_io, measure=measure)
        if not quiet:
            for note in done.notes:
                out.print(f"note: {note}")
            out.print("wrote " + ", ".join(map(str, done.files)))


@app.command(cls=_Command, epilog=_examples("qpack inspect small.qpk", "qpack inspect small.qpk --json - --no-verify"))
def inspect(
    qpk: QpkArg,
    json_out: JsonOut = None,
    verify: Annotated[bool, typer.Option("--verify/--no-verify", help="check every blob's checksum", metavar="")] = True,
) -> None:
    """Show what a .qpk holds: tensors, schemes, bits, sizes, checksums."""
    from qpack.converter.inspect import render_description

    with _errors():
        info = api.describe(qpk, verify)
        _emit(info, json_out, False, render_description)


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
def main(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="print the version",
                                               metavar="")] = False) -> None:
    """qpack: data-free n-bit weight quantization."""


def run() -> None:
    """The `qpack` command: the app, with stops that clean up (in-process callers keep their own handlers)."""
    stops = (signal.SIGTERM, signal.SIGINT)
    for sig in stops:
        signal.signal(sig, _stop)
    try:
        code = app(standalone_mode=False, prog_name="qpack")
    except _UsageError as e:  # a malformed command line: one line too, with where to read more
        hint = f" (see {e.ctx.command_path} --help)" if e.ctx else ""
        if message := " ".join(e.format_message().split()):  # none where the help was shown instead (no arguments)
            err.print(f"qpack: error: {message}{hint}", markup=False)
        code = e.exit_code
    except typer.Abort:
        code = EXIT_ERROR
    finally:
        # The work is done and its output in place: a stop that arrives while the interpreter shuts
        # down (which restores the default handlers) must not turn a finished run into a killed one.
        for sig in stops:
            signal.signal(sig, signal.SIG_IGN)
    sys.exit(code if isinstance(code, int) else 0)


@app.command(cls=_Command, epilog=_examples("qpack report model.onnx --bits 4 --per-channel --html report.html",
                                            "qpack report small.qpk --source model.onnx --json report.json"))
def report(
    path: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="an .onnx, .tflite or .qpk file",
                                         show_default=False)],
    bits: Bits = REPORT["bits"],
    scheme: FixedScheme = None,
    per_channel: PerChannel = REPORT["per_channel"],
    clip: Clip = ClipName(REPORT["clip"]),
    group_size: GroupSize = REPORT["group_size"],
    param_dtype: ParamDtype = ParamDtypeName(REPORT["param_dtype"]),
    keep: Keep = None,
    include: Include = None,
    bits_for: BitsFor = None,
    rdo: Rdo = REPORT["rdo"],
    target: ForTarget = ForName(REPORT["target"]),
    codec: CodecOpt = CodecName(api.codec_for(REPORT["codec"]).label),
    source: Annotated[Path | None, typer.Option("--source", exists=True, dir_okay=False, metavar="MODEL", rich_help_panel=WHAT,
                                                help="for a .qpk: the float model it came from (enables SQNR and pictures)")] = None,
    layer: Annotated[str | None, typer.Option("--layer", metavar="NAME", rich_help_panel=OUTPUT,
                                              help="tensor shown in the per-layer pictures (default: first kernel)")] = None,
    html_out: Annotated[Path | None, typer.Option("--html", dir_okay=False, metavar="FILE", rich_help_panel=OUTPUT,
                                                  help="self-contained HTML page; PNGs beside it")] = None,
    json_out: JsonOut = None,
    compress: Compress = REPORT["compress"],
    max_size: MaxSize = None,
    max_bpw: MaxBpw = None,
    min_sqnr: MinSqnr = None,
    quiet: Quiet = False,
) -> None:
    """Range, distribution and bit efficiency per tensor, for a model at the given options or a .qpk."""
    from qpack.converter.render import report_table

    with _errors(), _status("measuring", quiet):
        broken: BudgetError | None = None
        try:
            rep = api.report(path, bits=bits, scheme=_value(scheme), per_channel=per_channel, clip=str(clip.value),
                             group_size=group_size, param_dtype=str(param_dtype.value), keep=keep or (), include=include or (),
                             bits_for=bits_for or (), codec=str(codec.value), rdo=rdo, target=_value(target), source=source,
                             compress=compress,
                             html=html_out, layer=layer, max_size=max_size, max_bpw=max_bpw, min_sqnr=min_sqnr,
                             command=_command("report"))
        except api.BudgetBroken as e:
            rep, broken = e.report, e
        _emit(rep, json_out, quiet, report_table)
        if broken:
            raise broken


@app.command("eval", cls=_Command, epilog=_examples("qpack eval samples/digits_cnn.onnx --dataset digits --bits 4 --per-channel",
                                                    "qpack eval model.onnx --qpk small.qpk --inputs data.npz"))
def eval_(
    model: ModelArg,
    qpk: Annotated[Path | None, typer.Option("--qpk", exists=True, dir_okay=False, metavar="FILE", rich_help_panel=WHAT,
                                             help="evaluate this container instead of converting")] = None,
    bits: Bits = EVALUATE["bits"],
    scheme: FixedScheme = None,
    per_channel: PerChannel = EVALUATE["per_channel"],
    clip: Clip = ClipName(EVALUATE["clip"]),
    group_size: GroupSize = EVALUATE["group_size"],
    param_dtype: ParamDtype = ParamDtypeName(EVALUATE["param_dtype"]),
    keep: Keep = None,
    include: Include = None,
    bits_for: BitsFor = None,
    target: ForTarget = ForName(EVALUATE["target"]),
    inputs: InputsOpt = None,
    images: ImagesOpt = None,
    dataset: DatasetOpt = None,
    size: SizeOpt = INPUT["size"],
    layout: LayoutOpt = INPUT["layout"],
    scale: ScaleOpt = INPUT["scale"],
    mean: MeanOpt = None,
    std: StdOpt = None,
    groups: Annotated[Path | None, typer.Option("--groups", exists=True, dir_okay=False, metavar="FILE", rich_help_panel=OUTPUT,
                                                help="JSON class grouping, e.g. [[3,5],[8,9]]")] = None,
    group_threshold: Annotated[float, typer.Option("--group-threshold", min=0.0, max=1.0, rich_help_panel=OUTPUT,
                                                   help="auto grouping: confusion-rate growth that merges two classes")]
    = EVALUATE["group_threshold"],
    json_out: JsonOut = None,
    quiet: Quiet = False,
) -> None:
    """Run MODEL and its quantized restoration on the same inputs; report fidelity and accuracy."""
    from qpack.converter.render import eval_table

    with _errors():
        data = api.load_inputs(model, inputs, images, dataset, size, layout, scale, mean, std)  # exactly one source, or an error
        result = api.evaluate(model, data, qpk, bits=bits, scheme=_value(scheme), per_channel=per_channel,
                              clip=str(clip.value), group_size=group_size, param_dtype=str(param_dtype.value), keep=keep or (),
                              include=include or (), bits_for=bits_for or (), target=_value(target), groups=groups,
                              group_threshold=group_threshold)
        result["command"] = _command("eval")
        _emit(result, json_out, quiet, eval_table)


@app.command(cls=_Command, epilog=_examples("qpack sweep samples/digits_cnn.onnx --dataset digits --out sweep/"))
def sweep(
    model: ModelArg,
    out_dir: Annotated[Path, typer.Option("--out", file_okay=False, metavar="DIR", rich_help_panel=OUTPUT, show_default=False,
                                          help="folder for sweep.json, sweep.csv and the plots")],
    schemes: Annotated[str, typer.Option("--schemes", metavar="LIST", help="comma-separated schemes",
                                         rich_help_panel=WHAT)] = SWEEP["schemes"],
    bits: Annotated[str, typer.Option("--bits", metavar="RANGE|LIST", help="widths: a range 8..2 or a list 8,6,4",
                                      rich_help_panel=WHAT)] = SWEEP["bits"],
    granularity: Annotated[str, typer.Option("--granularity", metavar="tensor|channel|both", rich_help_panel=WHAT,
                                             help="one scale per tensor, per channel, or both")] = SWEEP["granularity"],
    tolerance: Annotated[float, typer.Option("--tolerance", min=0.0, help="points of loss the knee may cost",
                                             rich_help_panel=WHAT)] = SWEEP["tolerance"],
    clip: Clip = ClipName(SWEEP["clip"]),
    sensitivity_bits: Annotated[int, typer.Option("--sensitivity-bits", min=0, max=8, rich_help_panel=WHAT,
                                                  help="width for the one-tensor-at-a-time ranking (0: skip)")]
    = SWEEP["sensitivity_bits"],
    target: ForTarget = ForName(SWEEP["target"]),
    inputs: InputsOpt = None,
    images: ImagesOpt = None,
    dataset: DatasetOpt = None,
    size: SizeOpt = INPUT["size"],
    layout: LayoutOpt = INPUT["layout"],
    scale: ScaleOpt = INPUT["scale"],
    mean: MeanOpt = None,
    std: StdOpt = None,
    quiet: Quiet = False,
) -> None:
    """Evaluate a grid of schemes x bit widths; name the knee; rank tensors by sensitivity."""
    from qpack.converter.render import sweep_table

    with _errors():
        data = api.load_inputs(model, inputs, images, dataset, size, layout, scale, mean, std)
        request: dict[str, Any] = dict(schemes=schemes, bits=bits, granularity=granularity, tolerance=tolerance, clip=str(clip.value),
                                       sensitivity_bits=sensitivity_bits, target=_value(target), command=_command("sweep"))
        bar = _progress(quiet)
        if bar:
            with bar:
                task = bar.add_task("sweeping", total=None)
                result, files = api.sweep(model, data, out_dir, **request,
                                          progress=lambda label: bar.update(task, advance=1, description=label, refresh=True))
        else:
            result, files = api.sweep(model, data, out_dir, **request)
        if not quiet:
            sweep_table(result, out)
            out.print("wrote " + ", ".join(map(str, files)))
