"""Hostile files and hostile surroundings, through the command line: one test per finding.

Containers are edited with test_container._rewrite_meta (or, past msgpack's own nesting limit for
writing, with the fuzzer's encoder) and re-signed, so that only the reader's checks stand in the
way. Signals, FIFOs, devices and memory are exercised in real subprocesses.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from qpack.converter.cli import app
from qpack.converter.convert import convert
from qpack.converter.policy import Policy
from qpack.formats.onnx_model import OnnxModel
from qpack.formats.qpk import ZSTD
from tests import fuzz_qpk as F
from tests.stopping import stopped_at
from tests.test_container import _rewrite_meta

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()


def _run(*args: object) -> Any:
    return runner.invoke(app, [str(a) for a in args])


def _one_line_error(r: Any, *needles: str) -> None:
    assert r.exit_code == 1, r.output
    assert r.output.count("\n") == 1 and r.output.startswith("qpack: error:"), r.output
    for n in needles:
        assert n in r.output, r.output


def _qpack(*args: object, timeout: float = 60, **kw: Any) -> subprocess.CompletedProcess[str]:
    """The qpack command in a subprocess of this checkout (the installed script may be another one)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-c", "from qpack.converter.cli import run; run()", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=env, **kw)


def _one_line_failure(p: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert p.returncode == 1, (p.returncode, p.stdout, p.stderr)
    assert p.stderr.count("\n") == 1 and p.stderr.startswith("qpack: error:"), p.stderr
    for n in needles:
        assert n in p.stderr, p.stderr


@pytest.mark.parametrize("args, says", [
    (["convert", "{model}", "--for", "tflite-banana", "-o", "{out}"], "Invalid value for '--for': "),
    (["convert", "{model}", "--bits", "17", "-o", "{out}"], "Invalid value for '--bits'"),
    (["convert", "{model}", "--nope", "-o", "{out}"], "No such option: --nope"),
    (["export", "{tmp}", "--to", "tflite", "-o", "{out}"], "is a directory"),
    (["frobnicate"], "No such command 'frobnicate'"),
])
def test_a_malformed_command_line_is_one_line(sample: Path, tmp_path: Path, args: list[str], says: str):
    """The command-line parser's own errors read as qpack's do: one line on stderr (naming the help to read),
    exit 2, nothing on stdout and nothing written."""
    out = tmp_path / "out.qpk"
    p = _qpack(*(a.format(model=sample, out=out, tmp=tmp_path) for a in args))
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert p.stderr.count("\n") == 1 and p.stderr.startswith("qpack: error: ") and says in p.stderr, p.stderr
    assert "--help)" in p.stderr and not p.stdout and not out.exists()


def test_no_arguments_show_the_help(tmp_path: Path):
    p = _qpack()
    assert p.returncode == 2 and "Usage: qpack" in p.stdout + p.stderr and "qpack: error" not in p.stderr, (p.stdout, p.stderr)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("goal", [["--bits", "4"], ["--target-bpw", "4"], ["--target-sqnr", "30"]])
def test_a_weight_that_is_not_finite_is_one_line_under_a_goal_too(sample: Path, tmp_path: Path, bad: float, goal: list[str]):
    """A NaN or infinity in a weight is refused by name before a goal measures any option on it."""
    model = onnx.load(str(sample))
    w = next(t for t in model.graph.initializer if t.dims and len(t.dims) > 1)
    values = numpy_helper.to_array(w).copy()
    values.flat[3] = bad
    w.CopyFrom(numpy_helper.from_array(values, w.name))
    onnx.save(model, tmp_path / "bad.onnx")
    p = _qpack("convert", tmp_path / "bad.onnx", *goal, "-o", tmp_path / "out.qpk")
    _one_line_failure(p, f"tensor '{w.name}' holds NaN or infinite values")
    assert not (tmp_path / "out.qpk").exists()


def _convert(model: Path, policy: Policy, out: Path) -> None:
    m = OnnxModel(model)
    try:
        convert(m, policy, out)
    finally:
        getattr(m, "close", lambda: None)()


@pytest.fixture(scope="module")
def container(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The bundled sample at 8 bits, per tensor, every blob raw: the file the edits start from."""
    path = tmp_path_factory.mktemp("hostile") / "digits.qpk"
    _convert(ROOT / "samples" / "digits_cnn.onnx", Policy("asym", 8), path)
    return path.read_bytes()


def _edited(tmp_path: Path, data: bytes, edit: Callable[[dict[str, Any]], object], name: str = "hostile.qpk") -> Path:
    path = tmp_path / name
    path.write_bytes(_rewrite_meta(data, edit))
    return path


def _nested(depth: int) -> Any:
    v: Any = "leaf"
    for i in range(depth):
        v = [v] if i % 2 else {"k": v}
    return v


# --- metadata nested past any real depth -------------------------------------------------------


@pytest.mark.parametrize("depth", [500, 1000])
@pytest.mark.parametrize("where", ["options", "entry field", "kept"])
def test_deeply_nested_metadata_is_one_line(container: bytes, tmp_path: Path, where: str, depth: int):
    """Refused on open, in one line, for inspect, inspect --no-verify and unpack (1000 levels are past
    msgpack's limit for writing, under its limit for reading: the fuzzer's encoder writes them)."""
    parts = F.split(container)
    meta = parts.meta
    if where == "options":
        meta["options"] = _nested(depth)
    elif where == "entry field":
        meta["tensors"][0]["role"] = _nested(depth)
    else:
        meta["kept"].append(_nested(depth))
    path = tmp_path / "deep.qpk"
    path.write_bytes(F.assemble(F.pack_tree(meta), parts.payload, parts.minor))
    for args in (["inspect", path], ["inspect", "--no-verify", path], ["unpack", path, "-o", tmp_path / "out.onnx"]):
        _one_line_error(_run(*args), "metadata nests deeper than 32 levels")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deep.qpk"]


# --- informative fields of any type ----------------------------------------------------------------


def _odd_informative(m: dict[str, Any]) -> None:
    m["options"] = {"scheme": b"\xff\x00", b"bytes-key": {b"k": [b"v", 1.5, None]}, 7: "int key", "nan": float("nan")}
    m["source"] = {"name": b"model.onnx", b"bytes": b"\x01\x02", "extra": {b"k": b"v"}}
    m["kept"].append({"name": b"\x80", b"shape": [b"x"], "reason": {1: b"y"}})


@pytest.mark.parametrize("verify", ["--verify", "--no-verify"])
def test_inspect_json_with_bytes_in_informative_fields(container: bytes, tmp_path: Path, verify: str):
    path = _edited(tmp_path, container, _odd_informative)
    out = tmp_path / "info.json"
    r = _run("inspect", verify, path, "--json", out)
    assert r.exit_code == 0, r.output
    info = json.loads(out.read_text())  # valid JSON: bytes as hex, keys as text
    assert info["options"]["scheme"] == "ff00" and info["options"]["b'bytes-key'"] == {"b'k'": ["76", 1.5, None]}
    assert info["kept"][-1]["name"] == "80" and "bytes" not in info["source"]  # a size that is not a number is dropped


@pytest.mark.parametrize("source", ["not a map", ["a", "list"], {"name": "m.onnx", "bytes": "12 MB"},
                                    {"name": 5, "bytes": None}, {"bytes": True}, {"bytes": 2.5}, None])
def test_inspect_with_odd_source(container: bytes, tmp_path: Path, source: Any):
    path = _edited(tmp_path, container, lambda m: m.update(source=source))
    r = _run("inspect", path)
    assert r.exit_code == 0, r.output
    assert "quantized tensors" in r.output


# --- the graph index -------------------------------------------------------------------------------


@pytest.mark.parametrize("graph", ["missing", 10_000, -1, "0", 1.0, True, None, [0], "codes blob"])
def test_bad_graph_index_is_one_line(container: bytes, tmp_path: Path, graph: Any):
    def edit(m: dict[str, Any]) -> None:
        if graph == "missing":
            del m["graph"]
        else:
            m["graph"] = m["tensors"][0]["codes"] if graph == "codes blob" else graph

    path = _edited(tmp_path, container, edit)
    _one_line_error(_run("inspect", "--no-verify", path), "no valid graph blob index")


# --- decompression bombs ---------------------------------------------------------------------------

_CHILD = """
import atexit, re, sys
report = sys.argv[1]
def peak():
    with open(report, "w") as f:
        f.write(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1))
atexit.register(peak)
sys.argv = ["qpack", *sys.argv[2:]]
from qpack.converter.cli import run
run()
"""


def _measured(tmp_path: Path, *args: object) -> tuple[subprocess.CompletedProcess[str], int, float]:
    """A qpack run in a subprocess: its outcome, its peak resident size (VmHWM) in bytes, and its seconds."""
    report = tmp_path / "vmhwm"
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", _CHILD, str(report), *map(str, args)], capture_output=True, text=True,
                       timeout=120, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    return p, int(report.read_text()) << 10, time.perf_counter() - t0


FOUR_GIB = 4 << 30


def _graph_claims_4gib(m: dict[str, Any], frames: dict[int, bytes]) -> None:
    """The graph blob: a real zstd frame of 4 GiB of zeros (128 kB of RLE blocks), said to hold 4 GiB."""
    frames[m["graph"]] = F.zstd_frame(FOUR_GIB, FOUR_GIB)
    m["blobs"][m["graph"]][1], m["blobs"][m["graph"]][4] = ZSTD.id, FOUR_GIB


def _graph_frame_lies(m: dict[str, Any], frames: dict[int, bytes]) -> None:
    """The graph blob: a frame of 4 GiB that does not say so (a frame that does is refused by zstd
    itself, its window too large), while the blob table promises the graph's real length."""
    frames[m["graph"]] = F.zstd_frame(FOUR_GIB, None)
    m["blobs"][m["graph"]][1] = ZSTD.id


def _codes_claim_4gib(m: dict[str, Any], frames: dict[int, bytes]) -> None:
    """A tensor whose shape implies 4 GiB of 8-bit codes, its code blob a 4 GiB frame of 128 kB."""
    t = m["tensors"][0]
    t["shape"], t["axis"] = [1 << 16, 1 << 16], None
    frames[t["codes"]] = F.zstd_frame(FOUR_GIB, FOUR_GIB)
    m["blobs"][t["codes"]][1], m["blobs"][t["codes"]][4] = ZSTD.id, FOUR_GIB


def _bomb(container: bytes, edit: Callable[[dict[str, Any], dict[int, bytes]], None]) -> bytes:
    parts = F.split(container)
    frames: dict[int, bytes] = {}
    edit(parts.meta, frames)
    blobs = [frames.get(i, parts.blob(i)) for i in range(len(parts.meta["blobs"]))]
    payload = F.relayout(parts.meta, blobs)
    return F.assemble(F.pack_tree(parts.meta), payload, parts.minor)


@pytest.mark.parametrize("edit,command", [(_graph_claims_4gib, "inspect"), (_codes_claim_4gib, "unpack")],
                         ids=["graph-inspect", "codes-unpack"])
def test_decompression_bomb_is_refused_quickly_in_little_memory(container: bytes, tmp_path: Path, edit, command):
    """A 4 GiB claim from a 128 kB frame is refused on open, before anything is decoded."""
    bomb = tmp_path / "bomb.qpk"
    bomb.write_bytes(_bomb(container, edit))
    assert bomb.stat().st_size < 1 << 20
    args: list[object] = [command, bomb] + (["-o", tmp_path / "out.onnx"] if command == "unpack" else [])
    p, peak, seconds = _measured(tmp_path, *args)
    _one_line_failure(p, "decompression bomb")
    assert peak < 300 << 20, f"peak resident size {peak >> 20} MiB"
    assert seconds < 30
    assert not (tmp_path / "out.onnx").exists()


@pytest.mark.parametrize("command", ["inspect", "unpack"])
def test_frame_longer_than_promised_stops_at_the_promise(container: bytes, tmp_path: Path, command: str):
    """The blob table promises the real graph's length; the frame holds 4 GiB: decoding stops one byte past it."""
    import tracemalloc

    bomb = tmp_path / "bomb.qpk"
    bomb.write_bytes(_bomb(container, _graph_frame_lies))
    args: list[object] = [command, bomb] + (["-o", tmp_path / "out.onnx"] if command == "unpack" else [])
    tracemalloc.start()
    try:
        r = _run(*args)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    _one_line_error(r, "bytes, expected")
    assert peak < 300 << 20, f"{peak >> 20} MiB allocated"
    assert not (tmp_path / "out.onnx").exists()


# --- found by tests/fuzz_qpk.py (each input also in tests/corpus/qpk) ------------------------------


def test_tensors_sharing_blobs_are_refused(container: bytes, tmp_path: Path):
    """Entries naming the same blobs would let a small file make unpack decode one tensor a million times."""
    def edit(m: dict[str, Any]) -> None:
        e = max(m["tensors"], key=lambda t: math.prod(t["shape"]))
        m["tensors"] += [dict(e, key=f"{e['key']}#{i}") for i in range(3)]

    path = _edited(tmp_path, container, edit)
    for args in (["inspect", "--no-verify", path], ["unpack", path, "-o", tmp_path / "out.onnx"]):
        _one_line_error(_run(*args), "is another tensor's")


def test_names_from_the_file_are_escaped(container: bytes, tmp_path: Path):
    """A tensor name with a line break and terminal escape sequences: one-line errors, a table that
    sends nothing to the terminal but text."""
    name = "evil\n\x1b]0;title\x07\x1b[2J\r\u202e"
    path = _edited(tmp_path, container, lambda m: m["tensors"][0].update(name=name) or m["source"].update(name=name))
    r = _run("inspect", path)
    assert r.exit_code == 0 and not F.TERMINAL_CONTROLS.search(r.output), repr(r.output)
    assert "evil\\n\\x1b]0;title\\x07" in r.output
    bad = _edited(tmp_path, container, lambda m: m["tensors"][0].update(name=name, bits=99), "bad.qpk")
    _one_line_error(_run("inspect", bad), "evil\\n")


def test_block_longer_than_its_axis(tmp_path: Path, sample: Path):
    """One block as long as its axis or longer is the whole axis: no array of the block's length is made.

    A per-channel matrix (128 x 256, a scale per row) said to be grouped in blocks of 2^39 along its
    rows: the same 128 groups, the same values."""
    base = tmp_path / "base.qpk"
    _convert(sample, Policy("asym", 8, per_channel=True), base)

    def edit(block: int) -> Callable[[dict[str, Any]], None]:
        def run(m: dict[str, Any]) -> None:
            t = next(t for t in m["tensors"] if t["name"] == "11.weight")
            assert t["shape"] == [128, 256] and t["axis"] == 0
            t["axis"], t["block"] = 1, block
        return run

    path = _edited(tmp_path, base.read_bytes(), edit(2**39))
    t0 = time.perf_counter()
    r = _run("unpack", path, "-o", tmp_path / "blocked.onnx")
    assert r.exit_code == 0, r.output
    assert time.perf_counter() - t0 < 20
    assert _run("unpack", base, "-o", tmp_path / "channels.onnx").exit_code == 0
    assert (tmp_path / "blocked.onnx").read_bytes() == (tmp_path / "channels.onnx").read_bytes()
    _one_line_error(_run("inspect", _edited(tmp_path, base.read_bytes(), edit(2**40), "b.qpk")), "under 2^40")


@pytest.mark.parametrize("scheme,value,param", [("asym", b"\x00\x00\xc0\x7f", "scale"), ("sym", b"\xff\xff\x7f\x7f", "scale"),
                                                 ("pow2", b"\xff\x7f", "emax"), ("lut", b"\x00\x7c", "centroids")],
                         ids=["nan-scale", "overflowing-scale", "huge-exponent", "infinite-centroid"])
def test_parameters_out_of_range_are_refused(tmp_path: Path, sample: Path, scheme: str, value: bytes, param: str):
    """A NaN scale, a scale whose codes overflow float32 (3.4e38), an exponent of 32767 and an
    infinite centroid (FORMAT.md "Parameter ranges") are refused by every command that reads the
    parameters, in one line naming the tensor and the parameter, before any value is used: nothing
    is written, and no numpy warning reaches the terminal (warnings are made errors here)."""
    import warnings

    base = tmp_path / "base.qpk"
    _convert(sample, Policy(scheme, 6), base)
    parts = F.split(base.read_bytes())
    first = parts.meta["tensors"][0]
    index = first["params"][param]
    blobs = [parts.blob(i) for i in range(len(parts.meta["blobs"]))]
    blobs[index] = (value * len(blobs[index]))[: len(blobs[index])]
    path = tmp_path / "odd.qpk"
    payload = F.relayout(parts.meta, blobs)  # rows get their new checksums before the metadata is encoded
    path.write_bytes(F.assemble(F.pack_tree(parts.meta), payload, parts.minor))
    out = tmp_path / "out"
    out.mkdir()
    commands = [("unpack", path, "-o", out / "m.onnx"), ("inspect", path)]
    commands += [("export", path, "--to", to, "-o", out / to) for to in ("onnx-qdq", "onnx-matmulnbits", "c", "c-coded")]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for args in commands:
            _one_line_error(_run(*args), f"tensor '{first['name']}'", f"parameter '{param}'")
    assert not list(out.iterdir())
    assert _run("inspect", path, "--no-verify").exit_code == 0  # the layout alone reads no parameter


# --- inputs that are not regular files -------------------------------------------------------------


def test_convert_a_fifo_does_not_hang(tmp_path: Path):
    fifo = tmp_path / "model.onnx"
    os.mkfifo(fifo)
    try:
        p = _qpack("convert", fifo, "-o", tmp_path / "m.qpk", timeout=20)  # no writer ever opens it
    except subprocess.TimeoutExpired:
        pytest.fail("convert waited on the FIFO")
    _one_line_failure(p, "is a FIFO, not a regular file")
    assert sorted(x.name for x in tmp_path.iterdir()) == ["model.onnx"]


def test_convert_dev_zero_is_refused(tmp_path: Path):
    try:
        p = _qpack("convert", "/dev/zero", "-o", tmp_path / "z.qpk", timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail("convert read /dev/zero")
    _one_line_failure(p, "/dev/zero", "not a regular file")
    assert not list(tmp_path.iterdir())


# --- a million tensor entries ----------------------------------------------------------------------


def many_entries(path: Path, count: int) -> None:
    """A container listing `count` tensors (empty ones: shape [0, 1], per channel, so every blob is
    empty and distinct), built from the sample's container; its graph stays valid."""
    base = path.with_name("many-base.qpk")
    if not base.exists():
        _convert(ROOT / "samples" / "digits_cnn.onnx", Policy("sym", 8), base)
    empty = hashlib.sha256(b"").digest()

    def edit(m: dict[str, Any]) -> None:
        m["graph"] += 2 * count  # the new, empty blobs go first: offset 0, length 0
        m["tensors"] = [{"name": f"t{i}", "key": f"init:t{i}", "shape": [0, 1], "dtype": "float32", "role": "matrix",
                         "scheme": "sym", "bits": 8, "axis": 0, "codes": 2 * i, "params": {"scale": 2 * i + 1}}
                        for i in range(count)]
        m["blobs"] = [[1 + (i & 1), 0, 0, 0, 0, empty] for i in range(2 * count)] + m["blobs"]

    path.write_bytes(_rewrite_meta(base.read_bytes(), edit))


def test_inspect_time_grows_linearly_with_entries(tmp_path: Path):
    """10x the entries take under 20x the CPU time (anything comparing entries pairwise would take
    100x; linear work measures 9-15x here, the smaller file running from the caches), and the table
    stops at MAX_ROWS rows; bench/fuzz_qpk.py --entries times 1,000,000."""
    from qpack.converter.inspect import MAX_ROWS, describe

    small, large = tmp_path / "small.qpk", tmp_path / "large.qpk"
    many_entries(small, 2_000)
    many_entries(large, 20_000)

    def timed(path: Path, runs: int) -> float:
        best = math.inf
        for _ in range(runs):  # CPU time, the best of a few: what the neighbours of a shared machine run does not count
            t0 = time.process_time()
            info = describe(path)
            best = min(best, time.process_time() - t0)
        assert len(info["tensors"]) in (2_000, 20_000)
        return best

    ratio = timed(large, 2) / timed(small, 3)
    if ratio >= 20:  # once more, in case the machine was busier during the first
        ratio = timed(large, 2) / timed(small, 3)
    assert ratio < 20, ratio
    r = _run("inspect", small)
    assert r.exit_code == 0 and f"{2_000 - MAX_ROWS:,} more tensors" in r.output and r.output.count("\n") < MAX_ROWS + 20


# --- source models whose dims overflow ---------------------------------------------------------


def _huge_dims_model(path: Path, op: str) -> None:
    """A model whose weight declares 2^32 x 2^32 (x 1 x 1) elements, and holds none."""
    w = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[2**32, 2**32] + ([1, 1] if op == "Conv" else []))
    node = helper.make_node(op, ["x", "w"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())


@pytest.mark.parametrize("op", ["MatMul", "Conv"])
def test_dims_whose_product_reaches_2_to_64(tmp_path: Path, op: str):
    """2^32 * 2^32 wraps to 0 in 64 bits: such a weight must not pass for an empty one."""
    model = tmp_path / "huge.onnx"
    _huge_dims_model(model, op)
    _one_line_error(_run("convert", model, "-o", tmp_path / "h.qpk", "--compress", "none"), "4294967296", "implausibly many")
    assert not (tmp_path / "h.qpk").exists()


# --- stops and kills while writing ----------------------------------------------------------------


@pytest.fixture(scope="module")
def big_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ~100 MB ONNX model: six 2048x2048 MatMul weights."""
    path = tmp_path_factory.mktemp("big") / "big.onnx"
    rng = np.random.default_rng(0)
    inits, nodes, prev = [], [], "x"
    for i in range(6):
        inits.append(numpy_helper.from_array(rng.standard_normal((2048, 2048), dtype=np.float32), f"w{i}"))
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"h{i}"]))
        prev = f"h{i}"
    graph = helper.make_graph(nodes, "big", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2048])],
                              [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [1, 2048])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def _start(model: Path, out: Path) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-c", "from qpack.converter.cli import run; run()", "convert", str(model), "-o", str(out),
                             "--bits", "8", "--compress", "none", "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)


def _catches_sigterm(pid: int) -> bool:
    """Whether the process has its SIGTERM handler in place (qpack installs it with SIGINT's)."""
    try:
        m = re.search(r"SigCgt:\s+([0-9a-f]+)", Path(f"/proc/{pid}/status").read_text())
    except OSError:
        return False
    return bool(m and int(m.group(1), 16) >> (signal.SIGTERM - 1) & 1)


def _when(proc: subprocess.Popen[str], folder: Path, stage: str, delay: float) -> None:
    """Wait until the run is under way, then `delay` more seconds. `stage` "convert": qpack's handlers
    are in place (quantizing starts); "write": its temporary file exists beside the output."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        if _catches_sigterm(proc.pid) if stage == "convert" else any(p.name.startswith(".") for p in folder.iterdir()):
            break
        time.sleep(0.005)
    time.sleep(delay)


def _complete(path: Path) -> bool:
    """Whether a container is whole: every checksum verified."""
    from qpack.formats.qpk import QpkReader

    with QpkReader(path) as q:
        q.verify()
    return True


@pytest.mark.parametrize("sig,code,stops", [
    (signal.SIGTERM, 143, [("convert", 0.2), ("convert", 0.5), ("write", 0.0)]),
    (signal.SIGINT, 130, [("convert", 0.2), ("write", 0.0)]),
], ids=["SIGTERM", "SIGINT"])
def test_stop_mid_conversion_leaves_nothing(big_model: Path, tmp_path: Path, sig: signal.Signals, code: int, stops):
    """Stopped while quantizing or while writing: the conventional exit code, no output, no temporary
    file. (A stop that comes after the output is in place finds a whole file: never a partial one.)"""
    interrupted = 0
    for stage, delay in stops:
        folder = tmp_path / f"{stage}-{delay}"
        folder.mkdir()
        out = folder / "big.qpk"
        proc = _start(big_model, out)
        _when(proc, folder, stage, delay)
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode in (code, 0), (stage, delay, proc.returncode, stderr)
        assert [p.name for p in folder.iterdir()] in ([], ["big.qpk"]), (stage, delay)
        if out.exists():
            assert _complete(out)
        elif proc.returncode == code:
            assert stderr == f"qpack: stopped by {sig.name}\n"
            interrupted += 1
    assert interrupted >= len(stops) - 1, "the stops came too late to interrupt the conversions"


def _stopped_at(point: int, out: Path, names: int) -> int:
    """Write `out` atomically inside a scratch folder, stopped before the `point`-th line of
    formats/atomic.py (tests/stopping.py); the child names its scratch folder on the file descriptor `names`."""
    from qpack.formats import atomic

    def work() -> None:
        with atomic.scratch_folder("qpack-stoptest-") as tmp:
            os.write(names, tmp.encode() + b"\n")
            atomic.write_bytes_atomic(out, lambda f: [f.write(bytes(1000)) for _ in range(3)])

    return stopped_at(point, {atomic.__file__}, work, 10)


def test_stop_at_every_point_of_the_atomic_output_path(tmp_path: Path):
    """A stop anywhere in writing an output (tracking, creating, writing, renaming, cleaning up, the
    scratch folder) exits promptly with 143 and leaves no temporary file or folder: never a hang on a
    lock the interrupted code holds, never a file made before it was tracked."""
    read, write = os.pipe()
    points = 0
    try:
        for point in range(2000):
            folder = tmp_path / f"p{point}"
            folder.mkdir()
            out = folder / "out.bin"
            code = _stopped_at(point, out, write)
            assert code != -1, f"the stop before line {point} of the atomic-output path hung"
            assert code in (143, 0), (point, code)
            left = [p.name for p in folder.iterdir()]
            assert left in ([], ["out.bin"]), (point, left)
            if left:
                assert out.read_bytes() == bytes(3000)
            if code == 0:
                points = point
                break
        else:
            pytest.fail("the write never finished")
    finally:
        os.close(write)
    names = os.read(read, 1 << 20).decode().split()
    os.close(read)
    assert points > 20 and names and not any(os.path.exists(n) for n in names)


def test_kill_leaves_nothing_the_next_run_keeps(big_model: Path, tmp_path: Path):
    """SIGKILL cannot be caught: the spill file is unlinked from its creation, and what a killed run
    leaves beside the output (its staged file) is swept by the next run writing there."""
    out = tmp_path / "big.qpk"
    # the write-time kill is tried again where the run finished before the kill reached it (a loaded machine)
    for stage, delay in (("convert", 0.2), ("convert", 0.8), *[("write", 0.0)] * 5):
        if stage == "write" and any(p.name.startswith(".") for p in tmp_path.iterdir()):
            break  # a kill landed while writing: its staged file is there
        proc = _start(big_model, out)
        _when(proc, tmp_path, stage, delay)
        proc.kill()
        proc.communicate(timeout=60)
        if out.exists():  # killed after its output was in place: a whole file, not a partial one
            assert _complete(out)
            out.unlink()
    assert any(p.name.startswith(".") for p in tmp_path.iterdir())  # the write-time kill left its staged file
    p = _qpack("convert", big_model, "-o", out, "--bits", "8", "--compress", "none", "-q", timeout=300)
    assert p.returncode == 0, p.stderr
    assert [x.name for x in tmp_path.iterdir()] == ["big.qpk"]


# --- writing where it cannot be written -------------------------------------------------------------


@pytest.fixture()
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs; skipped where this process may not mount one."""
    mount = shutil.which("mount")
    folder = tmp_path / "full"
    folder.mkdir()
    if os.geteuid() != 0 or not mount:
        pytest.skip("mounting a small tmpfs needs root and mount(8)")
    p = subprocess.run([mount, "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(folder)], capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {p.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)


def test_full_disk_names_the_output(full_disk: Path, sample: Path):
    """No room for the spill file (the container's 60 kB of blobs, before the container is written)."""
    (full_disk / "filler").write_bytes(bytes(2_080_000))  # 16 kB left
    out = full_disk / "digits.qpk"
    r = _run("convert", sample, "-o", out, "--compress", "none", "-q")
    assert r.output == f"qpack: error: {out}: cannot write (No space left on device)\n"
    assert r.exit_code == 1
    assert [p.name for p in full_disk.iterdir()] == ["filler"]


def test_full_disk_while_writing_the_container(full_disk: Path, sample: Path):
    """Room for the spill file but not for the container as well: the final write fails, named as the user named it."""
    (full_disk / "filler").write_bytes(bytes(2_000_000))  # 96 kB left: one 60 kB copy fits, not two
    out = full_disk / "digits.qpk"
    r = _run("convert", sample, "-o", out, "--compress", "none", "-q")
    assert r.output == f"qpack: error: {out}: cannot write (No space left on device)\n" and r.exit_code == 1
    assert [p.name for p in full_disk.iterdir()] == ["filler"]


@pytest.mark.parametrize("where", ["output", "json"])
def test_output_under_a_regular_file(sample: Path, tmp_path: Path, where: str):
    """The error names the path the user gave and says its parent is a file (not 'File exists',
    'Not a directory', or a staging file's name)."""
    (tmp_path / "some_file").write_text("")
    bad = tmp_path / "some_file" / ("x.qpk" if where == "output" else "x.json")
    args = ["-o", bad] if where == "output" else ["-o", tmp_path / "ok.qpk", "--json", bad]
    r = _run("convert", sample, *args, "--compress", "none", "-q")
    _one_line_error(r, f"{bad}: cannot write ({tmp_path / 'some_file'} is a file, not a folder)")
    assert not re.search(r"\.pending|\.tmp|File exists|Not a directory", r.output)


def test_output_in_a_missing_folder_is_an_error(sample: Path, tmp_path: Path):
    """A typo in a path does not grow a tree of folders: the missing folder is named, nothing is made."""
    out = tmp_path / "new" / "sub" / "x.qpk"
    r = _run("convert", sample, "-o", out, "--compress", "none", "-q")
    _one_line_error(r, f"{out}: cannot write (the folder {out.parent} does not exist)")
    assert not (tmp_path / "new").exists()
    r = _run("convert", sample, "-o", tmp_path / "x.qpk", "--json", tmp_path / "nope" / "r.json", "--compress", "none", "-q")
    _one_line_error(r, f"the folder {tmp_path / 'nope'} does not exist")


@pytest.mark.parametrize("kind", ["fifo", "socket"])
def test_output_onto_a_special_file_is_refused(sample: Path, tmp_path: Path, kind: str):
    """`-o` naming a FIFO, socket or device is refused: it is never replaced by a regular file (as root,
    `-o /dev/null` would otherwise replace the system's /dev/null)."""
    import socket
    import stat as st

    out = tmp_path / "special.onnx"
    if kind == "fifo":
        os.mkfifo(out)
        what = "a FIFO"
    else:
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(out))
        sock.close()
        what = "a socket"
    for args in (["convert", sample, "-o", out], ["convert", sample, "-o", tmp_path / "ok.qpk", "--json", out]):
        r = _run(*args, "--compress", "none", "-q")
        _one_line_error(r, f"{out}: is not a regular file ({what}); qpack writes outputs as files")
        mode = os.lstat(out).st_mode
        assert (st.S_ISFIFO if kind == "fifo" else st.S_ISSOCK)(mode)
    qpk = tmp_path / "ok.qpk"
    _qpack("convert", sample, "-o", qpk, "--compress", "none", "-q")
    r = _run("unpack", qpk, "-o", out)
    _one_line_error(r, "is not a regular file")


