"""The `qpack` command line: parse options, call the library, render. Errors surface in one place."""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import Progress

from converter import __version__
from formats.errors import BudgetError, QpackError

EXIT_ERROR = 1
EXIT_BUDGET = 3  # a build budget was broken: distinct from ordinary errors so pipelines can tell

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Quantize ONNX and TFLite weights to true n-bit codes in a .qpk container.")
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, highlight=False, soft_wrap=True)


class CodecName(str, Enum):
    packed = "packed"
    zstd = "zstd"


class ClipName(str, Enum):
    minmax = "minmax"
    mse = "mse"


class SchemeName(str, Enum):
    asym = "asym"
    sym = "sym"
    pow2 = "pow2"


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
        err.print(f"qpack: error: {e.filename or ''}: {e.strerror or e}", markup=False)
        raise typer.Exit(EXIT_ERROR) from None


def _command(name: str) -> str:
    """The command line that reproduces this run, for reports to carry."""
    import shlex

    return f"qpack {name} " + shlex.join(sys.argv[2:]) if sys.argv[1:2] == [name] else f"qpack {name} ..."


def _write_json(path: Path, data: Any) -> None:
    from formats.atomic import write_bytes_atomic

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
    return None if quiet or not sys.stderr.isatty() else Progress(console=err, transient=True)


ModelArg = Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="an .onnx or .tflite model")]
QpkArg = Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="a .qpk container")]
Bits = Annotated[int, typer.Option("--bits", "-b", min=1, max=8, help="bits per weight code")]
Scheme = Annotated[SchemeName, typer.Option("--scheme", "-s", help="asym: scale+zero point; sym: scale; pow2: sign+exponent")]
PerChannel = Annotated[bool, typer.Option("--per-channel/--per-tensor", help="one scale per output channel")]
Clip = Annotated[ClipName, typer.Option("--clip", help="minmax: span each group's full range; mse: shrink it to the least "
                                                        "squared error (searched on a sample; slower, better below 6 bits)")]
Keep = Annotated[list[str] | None, typer.Option("--keep", help="keep tensors matching this glob in float (repeatable)")]
Include = Annotated[list[str] | None, typer.Option("--include",
                                                   help="quantize float tensors matching this glob even if the default keeps them")]
BitsFor = Annotated[list[str] | None, typer.Option("--bits-for", help="PATTERN=BITS: another width for matching tensors")]
Compress = Annotated[str, typer.Option("--compress", help="compressors to measure: a list of gzip,zstd,7z; all; none; "
                                                            "auto = gzip,zstd for models up to 64 MiB")]
JsonOut = Annotated[Path | None, typer.Option("--json", dir_okay=False, help="also write the report as JSON")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="print nothing but errors")]
CodecOpt = Annotated[CodecName, typer.Option("--codec", help="packed: dense n-bit codes; zstd: the packed codes entropy-coded "
                                                             "(kept per tensor only where smaller)")]
MaxSize = Annotated[int | None, typer.Option("--max-size", help="fail (exit 3) when the .qpk is larger than this many bytes")]
MaxBpw = Annotated[float | None, typer.Option("--max-bpw", help="fail (exit 3) above this many bits per weight, scales included")]
MinSqnr = Annotated[float | None, typer.Option("--min-sqnr", help="fail (exit 3) when the weights' SQNR is under this many dB")]


def _codec(name: CodecName):
    from formats.constants import Codec

    return Codec.ZSTD if name == CodecName.zstd else Codec.RAW


def _policy(scheme: SchemeName, bits: int, per_channel: bool, keep: list[str] | None, include: list[str] | None,
            bits_for: list[str] | None, clip: ClipName = ClipName.minmax):
    from converter.policy import Policy, parse_bits_for

    return Policy(scheme.value, bits, per_channel, tuple(keep or ()), tuple(include or ()), parse_bits_for(bits_for or []),
                  clip.value)


@app.command()
def convert(
    model: ModelArg,
    output: Annotated[Path | None, typer.Option("--output", "-o", dir_okay=False, help="default: MODEL with .qpk suffix")] = None,
    bits: Bits = 8,
    scheme: Scheme = SchemeName.asym,
    per_channel: PerChannel = False,
    clip: Clip = ClipName.minmax,
    keep: Keep = None,
    include: Include = None,
    bits_for: BitsFor = None,
    codec: CodecOpt = CodecName.packed,
    compress: Compress = "auto",
    json_out: JsonOut = None,
    tensors: Annotated[bool, typer.Option("--tensors", help="also print the per-tensor table")] = False,
    max_size: MaxSize = None,
    max_bpw: MaxBpw = None,
    min_sqnr: MinSqnr = None,
    quiet: Quiet = False,
) -> None:
    """Quantize MODEL's weights into a .qpk container and print a size report.

    With a budget (--max-size, --max-bpw, --min-sqnr) a broken one exits with code 3 and the
    new artifact is not put in place (a previous file at the output path stays as it was), so a
    build cannot ship it by accident.
    """
    from converter.convert import convert as run_convert
    from converter.gates import Budget
    from converter.measure import parse_compressors
    from converter.render import size_table
    from converter.sizes import size_report
    from formats.registry import open_model

    with _errors():
        policy = _policy(scheme, bits, per_channel, keep, include, bits_for, clip)
        budget = Budget(max_size, max_bpw, min_sqnr)
        parse_compressors(compress)  # reject a bad list before any work
        target = output or model.with_suffix(".qpk")
        if target.resolve() == model.resolve():
            raise QpackError(f"{target}: output would overwrite the input")
        src = open_model(model)
        compressors = parse_compressors(compress, src.file_bytes)
        # written beside the target, and moved into place only once every budget holds
        pending = target.with_name(f".{target.name}.{os.getpid()}.pending")
        try:
            bar = _progress(quiet)
            if bar:
                with bar:
                    task = bar.add_task("quantizing", total=len(src.weights))
                    result = run_convert(src, policy, pending, lambda i, n: bar.update(task, completed=i), _codec(codec))
                    ctask = bar.add_task("compressing", total=len(compressors) * 2)
                    report = size_report(src, result, compressors, lambda _: bar.advance(ctask))
            else:
                result = run_convert(src, policy, pending, codec=_codec(codec))
                report = size_report(src, result, compressors)
            report["options"] = {"scheme": policy.scheme, "bits": policy.bits, "per_channel": policy.per_channel,
                                 "clip": policy.clip, "codec": codec.value}
            report["output"] = str(target)
            report["command"] = _command("convert")
            if json_out:
                _write_json(json_out, report)
            if not quiet:
                size_table(report, out, tensors)
                if compress == "auto" and not compressors:
                    out.print("compressors skipped for a model over 64 MiB; ask with --compress gzip,zstd,7z")
            sizes = report["sizes"]
            # no SQNR means no quantization noise at all (exact values, or nothing quantized)
            sqnr = sizes["sqnr_db"]
            budget.check(sizes["qpk_bytes"], sizes["bits_per_weight"], math.inf if sqnr is None else sqnr)
            os.replace(pending, target)
        finally:
            pending.unlink(missing_ok=True)
        if not quiet:
            out.print(f"wrote {target}")


@app.command()
def unpack(
    qpk: QpkArg,
    output: Annotated[Path, typer.Option("--output", "-o", dir_okay=False, help="restored .onnx or .tflite")],
    quiet: Quiet = False,
) -> None:
    """Rebuild a runnable float model (the source format) from a .qpk container."""
    from converter.convert import restore

    with _errors():
        written = restore(qpk, output)
        if not quiet:
            out.print("wrote " + ", ".join(map(str, written)))


@app.command()
def inspect(
    qpk: QpkArg,
    json_out: JsonOut = None,
    verify: Annotated[bool, typer.Option("--verify/--no-verify", help="check every blob's checksum")] = True,
) -> None:
    """Show what a .qpk holds: tensors, schemes, bits, sizes, checksums."""
    from converter.inspect import describe, render_description

    with _errors():
        info = describe(qpk, verify)
        if json_out:
            _write_json(json_out, info)
        render_description(info, out)


def _version(value: bool) -> None:
    if value:
        out.print(f"qpack {__version__}")
        raise typer.Exit()


@app.callback()
def main(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="print the version")] = False) -> None:
    """qpack: data-free n-bit weight quantization."""


@app.command()
def report(
    path: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="an .onnx, .tflite or .qpk file")],
    bits: Bits = 8,
    scheme: Scheme = SchemeName.asym,
    per_channel: PerChannel = False,
    clip: Clip = ClipName.minmax,
    keep: Keep = None,
    include: Include = None,
    bits_for: BitsFor = None,
    codec: CodecOpt = CodecName.packed,
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
    from converter.gates import Budget
    from converter.html import page
    from converter.measure import parse_compressors
    from converter.render import report_table
    from converter.report import pictures, report_model, report_qpk
    from formats.atomic import write_bytes_atomic
    from formats.registry import open_model, sniff

    with _errors(), _status("measuring", quiet):
        budget = Budget(max_size, max_bpw, min_sqnr)
        parse_compressors(compress)
        if sniff(path) == "qpk":
            src = open_model(source) if source else None
            compressors = parse_compressors(compress, path.stat().st_size)
            rep = report_qpk(path, src, compressors)
            opts = rep.get("options") or {}
            bits, scheme_name, per_channel = opts.get("bits", bits), opts.get("scheme", scheme.value), opts.get("per_channel", False)
        else:
            src = open_model(path)
            policy = _policy(scheme, bits, per_channel, keep, include, bits_for, clip)
            rep = report_model(src, policy, parse_compressors(compress, src.file_bytes), _codec(codec))
            rep["options"] = {"scheme": policy.scheme, "bits": bits, "per_channel": per_channel, "clip": policy.clip}
            scheme_name = policy.scheme
        command = _command("report")
        rep["command"] = command
        if html_out:
            images = pictures(rep, src, layer, bits, scheme_name, per_channel)
            stem = html_out.with_suffix("")
            rep["figures"] = {}
            for i, (title, png) in enumerate(images.items()):
                png_path = Path(f"{stem}_fig{i + 1}.png")
                write_bytes_atomic(png_path, png)
                rep["figures"][title] = str(png_path)
            write_bytes_atomic(html_out, page(rep, images, command).encode())
        if json_out:
            _write_json(json_out, rep)
        if not quiet:
            report_table(rep, out)
        sizes = rep["sizes"]
        sqnr = rep["totals"].get("sqnr_db")
        if sqnr is None and all(r["signal"] is not None for r in rep["tensors"]):
            sqnr = math.inf  # floats known and no noise: exact
        budget.check(sizes["qpk_bytes"], sizes["bits_per_weight"], sqnr)


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


def _inputs(model: Path, inputs: Path | None, images: Path | None, dataset: str | None, size: str, layout: str, scale: str,
            mean: str | None, std: str | None):
    from converter import datasets
    from converter.runtime import open_runner

    given = [x for x in (inputs, images, dataset) if x is not None]
    if len(given) != 1:
        raise QpackError("give exactly one of --inputs, --images, --dataset")
    specs = open_runner(model).inputs
    if inputs is not None:
        data = datasets.from_arrays(inputs, specs)
    elif images is not None:
        if len(specs) != 1:
            raise QpackError("--images feeds single-input models")
        data = datasets.from_images(images, specs[0], size, layout.lower(), scale, mean, std)
    else:
        data = datasets.builtin(str(dataset), specs)
    datasets.check_shapes(data, specs)
    return data


@app.command("eval")
def eval_(
    model: ModelArg,
    qpk: Annotated[Path | None, typer.Option("--qpk", exists=True, dir_okay=False,
                                             help="evaluate this container instead of converting")] = None,
    bits: Bits = 8,
    scheme: Scheme = SchemeName.asym,
    per_channel: PerChannel = False,
    clip: Clip = ClipName.minmax,
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
    from converter.evaluate import evaluate
    from converter.render import eval_table

    with _errors():
        data = _inputs(model, inputs, images, dataset, size, layout, scale, mean, std)
        policy = None if qpk else _policy(scheme, bits, per_channel, keep, include, bits_for, clip)
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
    clip: Clip = ClipName.minmax,
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
    from converter.render import sweep_table
    from converter.schemes import get_scheme
    from converter.sweep import parse_bits, run_sweep, write_outputs

    with _errors():
        scheme_list = [s.strip() for s in schemes.split(",") if s.strip()]
        for s in scheme_list:
            get_scheme(s)
        widths = parse_bits(bits)
        grans = {"both": ["tensor", "channel"], "tensor": ["tensor"], "channel": ["channel"]}.get(granularity)
        if grans is None:
            raise QpackError(f"--granularity must be tensor, channel or both, not {granularity!r}")
        if sensitivity_bits:
            get_scheme("asym").check_bits(sensitivity_bits)
        data = _inputs(model, inputs, images, dataset, size, layout, scale, mean, std)
        bar = _progress(quiet)
        if bar:
            with bar:
                task = bar.add_task("sweeping", total=None)
                result = run_sweep(model, data, scheme_list, widths, grans, tolerance, sensitivity_bits,
                                   lambda label: bar.update(task, advance=1, description=label), clip.value)
        else:
            result = run_sweep(model, data, scheme_list, widths, grans, tolerance, sensitivity_bits, clip=clip.value)
        result["command"] = _command("sweep")
        files = write_outputs(result, out_dir)
        if not quiet:
            sweep_table(result, out)
            out.print("wrote " + ", ".join(map(str, files)))
