"""Schemes, codecs, goals and export targets are known by what they declare, not by their names: a
scan of the code, and a toy scheme, codec and export target registered here only, which the allocator
prices, the command line offers and `export` writes, with no other module edited."""

from __future__ import annotations

import ast
import importlib
import json
import math
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import qpack
from qpack.converter import quant
from qpack.converter.export import TARGETS, Native, Target, register_target
from qpack.formats.atomic import write_bytes_atomic
from qpack.formats.errors import FormatError
from qpack.formats.qpk import CODECS, SCHEMES, ByteCodec, ParamSpec, QpkReader, SchemeSpec, packed_size, register_codec, register_scheme

ROOT = Path(__file__).resolve().parent.parent
# where scheme and codec names may be spelled out: the container's own tables and the quantizers
OWNERS = ("formats/qpk/", "converter/quant/")
# what schemes, quantizers and codecs declare (every one of them: nothing to probe for)
CAPABILITIES = {"trellis", "entropy_steps", "coded_choice", "continuous", "chunks", "choose_model", "price", "entropy_coded",
                "integers", "signed", "figures", "label", "help"}


def _named(node: ast.AST, names: set[str]) -> list[str]:
    """The scheme or codec names a comparison operand spells out (a string, or a tuple/list/set of them)."""
    if isinstance(node, ast.Constant) and node.value in names:
        return [node.value]
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return [e.value for e in node.elts if isinstance(e, ast.Constant) and e.value in names]
    return []


def test_no_module_compares_a_scheme_or_codec_name():
    names = set(SCHEMES) | {c.name for c in CODECS.values()} | {c.label for c in CODECS.values()}
    found = []
    for path in sorted([*ROOT.glob("converter/**/*.py"), *ROOT.glob("formats/**/*.py")]):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith(OWNERS):
            continue
        for node in ast.walk(ast.parse(path.read_text(), rel)):
            if isinstance(node, ast.Compare):
                operands = [node.left, *node.comparators]
                if any(_named(o, names) for o in operands):
                    found.append(f"{rel}:{node.lineno}: {ast.unparse(node)}")
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr")
                    and len(node.args) > 1 and isinstance(node.args[1], ast.Constant) and node.args[1].value in CAPABILITIES):
                found.append(f"{rel}:{node.lineno}: {ast.unparse(node)}")  # a capability is declared, not probed
    assert found == []


# --- the toys -----------------------------------------------------------------------------------------

PRICED: list[tuple[int, int]] = []  # (count, bits) the allocator asked the toy codec to price


def _ramp_decode(codes, params, bits, grouping):
    """A ramp per group: lo + code * step."""
    lo = grouping.expand(np.asarray(params["lo"], np.float32), codes.shape)
    step = grouping.expand(np.asarray(params["step"], np.float32), codes.shape)
    return lo + codes.astype(np.float32) * step


@dataclass(frozen=True)
class _Deflate(ByteCodec):
    """zlib, priced by the codes' order-0 entropy (as a coder that models them would store them)."""

    id: int = 201
    name: str = "deflate"
    label: str = "deflate"
    help: str = "the packed codes through zlib at level 9"

    def sized_by_entropy(self, bits: int) -> bool:
        return True

    def price(self, count: int, bits: int, entropy: float, span: int) -> int | None:
        PRICED.append((count, bits))
        return min(packed_size(count, bits), math.ceil(count * entropy / 8) + 64)

    def encode(self, raw, kind, ctx=None):
        return zlib.compress(raw, 9)

    def decode(self, stored, raw_length, ctx=None):
        d = zlib.decompressobj()
        out = d.decompress(stored, raw_length + 1)
        if len(out) != raw_length or not d.eof:
            raise FormatError("deflate blob does not decode to its length")
        return out


def export_npz(reader: QpkReader, out: Path, notes: list[str]) -> list[Path]:
    """The toy target: every stored tensor's values, as an .npz keyed by tensor name."""
    import io

    buf = io.BytesIO()
    np.savez(buf, **{e.name: reader.dequantize(e) for e in reader.entries})
    write_bytes_atomic(out, buf.getvalue())
    notes.append(f"{len(reader.entries)} tensors as float32")
    return [out]


@pytest.fixture()
def toys():
    """The scheme 'ramp', the codec 'deflate' and the target 'ramp-npz', registered for one test; the
    command line is built again with them (as it is after a plugin registers), then without them."""
    from qpack.converter import cli

    register_scheme(SchemeSpec("ramp", 2, 4, (ParamSpec("lo", "<f4"), ParamSpec("step", "<f4")), lambda bits: 1 << bits,
                               _ramp_decode))

    class Ramp(quant.Quantizer):
        name = "ramp"

        @classmethod
        def stats(cls, x, axes):
            return x.min(axis=axes, keepdims=True), x.max(axis=axes, keepdims=True)

        @classmethod
        def params(cls, stats, bits):
            lo, hi = stats
            step = np.maximum((hi - lo) / np.float32((1 << bits) - 1), np.float32(1e-12))
            return {"lo": lo.astype(np.float32), "step": step.astype(np.float32)}

        @classmethod
        def encode(cls, x, bits, params):
            q = np.rint((x - params["lo"]) / params["step"])
            return np.clip(q, 0, (1 << bits) - 1).astype(np.uint8)

    codec = register_codec(_Deflate())
    register_target(Target("ramp-npz", __name__, "export_npz", ("onnx",), "each tensor's values as float32 in an .npz",
                           Native(schemes=("ramp",), codecs=("raw", "deflate"))))
    PRICED.clear()
    try:
        yield importlib.reload(cli)
    finally:
        SCHEMES.pop("ramp")
        quant.QUANTIZERS.pop("ramp")
        CODECS.pop(codec.id)
        TARGETS.pop("ramp-npz")
        importlib.reload(cli)


def test_toy_scheme_codec_and_target_are_priced_offered_and_exported(toys, sample: Path, tmp_path: Path):
    cli = toys
    runner = CliRunner()
    helps = {c: " ".join(runner.invoke(cli.app, [c, "--help"], env={"COLUMNS": "400"}).output.replace("│", " ").split())
             for c in ("convert", "export")}
    assert "<asym|sym|dq|lut|pow2|ramp>" in helps["convert"]
    assert "<packed|zstd|ans|deflate>" in helps["convert"] and "deflate: the packed codes through zlib at level 9" in helps["convert"]
    assert "ramp-npz: each tensor's values as float32 in an .npz" in helps["export"] and "c-coded, ramp-npz)" in helps["convert"]

    # priced by the allocator: a size goal over the toy scheme, its codes weighed by the toy codec
    out, report = tmp_path / "ramp.qpk", tmp_path / "ramp.json"
    r = runner.invoke(cli.app, ["convert", str(sample), "--scheme", "ramp", "--bits", "4", "--codec", "deflate", "--target-bpw", "3",
                                "-o", str(out), "--json", str(report), "--compress", "none", "-q"])
    assert r.exit_code == 0, r.output
    assert {bits for _, bits in PRICED} == {2, 3, 4}
    rep = json.loads(report.read_text())
    assert rep["allocation"]["schemes"] == ["ramp"] and rep["sizes"]["bits_per_weight"] <= 3
    with QpkReader(out) as q:
        assert {e.scheme for e in q.entries} == {"ramp"} and {e.bits for e in q.entries} <= {2, 3, 4}
        assert CODECS[q.blobs[max(q.entries, key=lambda e: e.count).codes].codec].name == "deflate"
        values = {e.name: q.dequantize(e) for e in q.entries}
    assert qpack.describe(out)["exports"]["ramp-npz"]["widened"] == 0  # the toy target runs the toy scheme as stored

    # exported by the toy target, through the command line
    npz = tmp_path / "ramp.npz"
    r = runner.invoke(cli.app, ["export", str(out), "--to", "ramp-npz", "-o", str(npz)])
    assert r.exit_code == 0, r.output
    assert f"note: {len(values)} tensors as float32" in r.output
    with np.load(npz) as got:
        assert set(got.files) == set(values) and all(np.array_equal(got[k], v) for k, v in values.items())


def test_plugins_register_before_the_command_line_reads_the_registries(tmp_path: Path):
    """A package declaring a module under the `qpack.plugins` entry-point group is imported when `qpack`
    starts: the codec it registers is a --codec choice; a plugin that fails is named and skipped."""
    import os
    import subprocess
    import sys

    site = tmp_path / "site"
    (site / "qpack_zlib_plugin-0.1.dist-info").mkdir(parents=True)
    (site / "qpack_zlib_plugin-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: qpack-zlib-plugin\nVersion: 0.1\n")
    (site / "qpack_zlib_plugin-0.1.dist-info" / "entry_points.txt").write_text(
        "[qpack.plugins]\nzlib = qpack_zlib_plugin\nbroken = qpack_missing_module\n")
    (site / "qpack_zlib_plugin.py").write_text(
        "import zlib\nfrom dataclasses import dataclass\nfrom qpack.formats.qpk import ByteCodec, register_codec\n\n"
        "@dataclass(frozen=True)\nclass Zlib(ByteCodec):\n    id: int = 202\n    name: str = 'zlib'\n    label: str = 'zlib'\n"
        "    help: str = 'the packed codes through zlib'\n\n    def encode(self, raw, kind, ctx=None):\n"
        "        return zlib.compress(raw, 9)\n\n    def decode(self, stored, raw_length, ctx=None):\n"
        "        return zlib.decompress(stored)[:raw_length]\n\nregister_codec(Zlib())\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(ROOT)]), COLUMNS="300")
    p = subprocess.run([sys.executable, "-c", "from qpack.converter.cli import run; run()", "convert", "--help"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "<packed|zstd|ans|zlib>" in p.stdout and "zlib: the packed codes through zlib" in " ".join(p.stdout.split())
    assert p.stderr.startswith("qpack: warning: plugin broken (qpack_missing_module) not loaded: ModuleNotFoundError")
