"""The `qpack` command line: parse options, call the library, render. Errors surface in one place."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

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


def _write_json(path: Path, data: Any) -> None:
    from formats.atomic import write_bytes_atomic

    write_bytes_atomic(path, (json.dumps(data, indent=2, sort_keys=False) + "\n").encode())


def _progress(quiet: bool) -> Progress | None:
    return None if quiet or not sys.stderr.isatty() else Progress(console=err, transient=True)


ModelArg = Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="an .onnx or .tflite model")]
QpkArg = Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="a .qpk container")]
Bits = Annotated[int, typer.Option("--bits", "-b", min=1, max=8, help="bits per weight code")]
Scheme = Annotated[SchemeName, typer.Option("--scheme", "-s", help="asym: scale+zero point; sym: scale; pow2: sign+exponent")]
PerChannel = Annotated[bool, typer.Option("--per-channel/--per-tensor", help="one scale per output channel")]
Keep = Annotated[Optional[list[str]], typer.Option("--keep", help="keep tensors matching this glob in float (repeatable)")]
Include = Annotated[Optional[list[str]], typer.Option("--include", help="quantize float tensors matching this glob even if the default keeps them")]
BitsFor = Annotated[Optional[list[str]], typer.Option("--bits-for", help="PATTERN=BITS: another width for matching tensors")]
Compress = Annotated[str, typer.Option("--compress", help="compressors to measure: a list of gzip,zstd,7z; all; none; "
                                                            "auto = gzip,zstd for models up to 64 MiB")]
JsonOut = Annotated[Optional[Path], typer.Option("--json", dir_okay=False, help="also write the report as JSON")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="print nothing but errors")]


def _policy(scheme: SchemeName, bits: int, per_channel: bool, keep: list[str] | None, include: list[str] | None,
            bits_for: list[str] | None):
    from converter.policy import Policy, parse_bits_for

    return Policy(scheme.value, bits, per_channel, tuple(keep or ()), tuple(include or ()), parse_bits_for(bits_for or []))


@app.command()
def convert(
    model: ModelArg,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", dir_okay=False, help="default: MODEL with .qpk suffix")] = None,
    bits: Bits = 8,
    scheme: Scheme = SchemeName.asym,
    per_channel: PerChannel = False,
    keep: Keep = None,
    include: Include = None,
    bits_for: BitsFor = None,
    compress: Compress = "auto",
    json_out: JsonOut = None,
    tensors: Annotated[bool, typer.Option("--tensors", help="also print the per-tensor table")] = False,
    quiet: Quiet = False,
) -> None:
    """Quantize MODEL's weights into a .qpk container and print a size report."""
    from converter.convert import convert as run_convert
    from converter.measure import parse_compressors
    from converter.render import size_table
    from converter.sizes import size_report
    from formats.registry import open_model

    with _errors():
        policy = _policy(scheme, bits, per_channel, keep, include, bits_for)
        parse_compressors(compress)  # reject a bad list before any work
        target = output or model.with_suffix(".qpk")
        if target.resolve() == model.resolve():
            raise QpackError(f"{target}: output would overwrite the input")
        src = open_model(model)
        compressors = parse_compressors(compress, src.file_bytes)
        bar = _progress(quiet)
        if bar:
            with bar:
                task = bar.add_task("quantizing", total=len(src.weights))
                result = run_convert(src, policy, target, lambda i, n: bar.update(task, completed=i))
                ctask = bar.add_task("compressing", total=len(compressors) * 2)
                report = size_report(src, result, compressors, lambda _: bar.advance(ctask))
        else:
            result = run_convert(src, policy, target)
            report = size_report(src, result, compressors)
        report["options"] = {"scheme": policy.scheme, "bits": policy.bits, "per_channel": policy.per_channel}
        report["output"] = str(target)
        if json_out:
            _write_json(json_out, report)
        if not quiet:
            size_table(report, out, tensors)
            if compress == "auto" and not compressors:
                out.print("compressors skipped for a model over 64 MiB; ask with --compress gzip,zstd,7z")
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
