"""Four whole-process targets for qpack (memory, scale, speed against onnxruntime, restore rate); prints PASS/MISS.

    python bench/bench_foundation.py [--big-gib 4.0] [--repeat 5] [--only 1 3] [--tmpdir DIR] [--rss-cap-gib G] [--quick]

1. Peak RSS of a fresh `qpack convert` (4-bit, asym per-tensor and sym per-channel) on the 100 MB MLP
   of bench_convert.py is at most 1.5x its float weight bytes. Peer: a fresh process that only runs
   onnx.load on the same file.
2. --big-gib of float32 weights in ONNX external data converts and unpacks with a peak RSS of at most
   1 GiB per process, and the restored weights equal the container's dequantized values.
3. `qpack convert --bits 4 --scheme sym --per-channel` takes at most 0.5x the wall time of onnxruntime's
   quantize_dynamic (int8, per channel) on a 20M+ parameter BERT-like encoder; both as whole processes.
4. In-process restore (unpack) writes at least 1 GB/s of float32. Peer: onnx.save of the float model.

Every child is a fresh interpreter that reports its own VmHWM (peak resident set), which exec resets;
ru_maxrss of a child would also count what this process had touched before forking.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from numpy.typing import NDArray
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.timing import median_time  # noqa: E402

MIB = 1 << 20
GIB = 1 << 30
BIG_SIDE = 4096  # each big tensor is 4096x4096 float32, 64 MiB: 16 of them per GiB
RSS_RATIO_LIMIT = 1.5
BIG_RSS_LIMIT = GIB
SPEED_RATIO_LIMIT = 0.5
RESTORE_GBPS_LIMIT = 1.0
HWM_TAG = "VMHWM_KIB="

# Children print their own VmHWM last (tagged); the qpack child does so even when the command fails,
# so a crash still leaves a memory figure beside the error that caused it.
REPORT_HWM = f"print('{HWM_TAG}' + re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1), file=sys.stderr)"
QPACK_CHILD = f"""\
import re, sys
sys.argv = ['qpack', *sys.argv[1:]]
try:
    from qpack.converter.cli import app
    app()
finally:
    {REPORT_HWM}
"""
ONNX_LOAD_CHILD = f"""\
import re, sys
import onnx
model = onnx.load(sys.argv[1])
{REPORT_HWM}
"""
ORT_CHILD = f"""\
import re, sys
from onnxruntime.quantization import QuantType, quantize_dynamic
quantize_dynamic(sys.argv[1], sys.argv[2], weight_type=QuantType.QInt8, per_channel=True)
{REPORT_HWM}
"""


# --- the two places this script reaches into the library; the rest drives the CLI --------------


def container_values(qpk: Path) -> Iterator[tuple[str, NDArray[np.float32]]]:
    """(key, dequantized values) for each tensor of a container, one at a time."""
    from qpack.formats.qpk import QpkReader

    with QpkReader(qpk) as q:
        for e in q.entries:
            yield e.key, q.dequantize(e)


def library_restore(qpk: Path, out: Path) -> None:
    """Restore a container in this process."""
    from qpack.converter.convert import restore

    restore(qpk, out)


# --- models -----------------------------------------------------------------------------------


def make_mlp(path: Path, million: int) -> int:
    """bench_convert.py's model, so figures compare: 2048x2048 Laplacian MatMuls, inline; returns its parameter count."""
    rng = np.random.default_rng(0)
    n = 2048
    layers = max(1, -(-million * 1_000_000 // (n * n)))
    inits, nodes, prev = [], [], "x"
    for i in range(layers):
        w = rng.laplace(0, 0.02, (n, n)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"fc{i}.w"))
        nodes.append(helper.make_node("MatMul", [prev, f"fc{i}.w"], [f"h{i}"]))
        prev = f"h{i}"
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, n])],
                              [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [1, n])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return layers * n * n


def make_big(path: Path, gib: float) -> int:
    """A chain of 4096x4096 MatMuls whose weights live in `<name>.data`; returns the float bytes.

    The data file is written one tensor at a time and the proto only points into it, so neither
    this process nor the proto ever holds more than one tensor.
    """
    count = max(1, round(gib * GIB / (BIG_SIDE * BIG_SIDE * 4)))
    data_name = path.name + ".data"
    rng = np.random.default_rng(1)
    inits, nodes, prev, offset = [], [], "x", 0
    with (path.parent / data_name).open("wb") as f:
        for i in range(count):
            # Laplace(0, 0.02) as the difference of two exponentials: drawn in float32, a fraction
            # of the cost of Generator.laplace, which only yields float64
            e = rng.standard_exponential((BIG_SIDE, BIG_SIDE), dtype=np.float32)
            e -= rng.standard_exponential((BIG_SIDE, BIG_SIDE), dtype=np.float32)
            e *= np.float32(0.02)
            e.astype("<f4", copy=False).tofile(f)
            length = e.nbytes
            del e
            t = TensorProto(name=f"fc{i}.w", dims=[BIG_SIDE, BIG_SIDE], data_type=TensorProto.FLOAT,
                            data_location=TensorProto.EXTERNAL)
            for k, v in (("location", data_name), ("offset", str(offset)), ("length", str(length))):
                entry = t.external_data.add()
                entry.key, entry.value = k, v
            offset += length
            inits.append(t)
            nodes.append(helper.make_node("MatMul", [prev, f"fc{i}.w"], [f"h{i}"]))
            prev = f"h{i}"
    graph = helper.make_graph(nodes, "big", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, BIG_SIDE])],
                              [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [1, BIG_SIDE])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    # serialized directly: onnx.save would look for raw_data to move into the data file
    path.write_bytes(model.SerializeToString())
    return offset


def make_encoder(path: Path, layers: int = 6, hidden: int = 512, heads: int = 8, ffn: int = 2048, vocab: int = 8000,
                 seq: int = 128) -> int:
    """A BERT-like encoder (embeddings, attention, Erf GELU, post-LayerNorm), inline; returns its parameter count."""
    rng = np.random.default_rng(2)
    inits: list[TensorProto] = []
    nodes: list[onnx.NodeProto] = []
    params = 0

    def weight(name: str, shape: tuple[int, ...], scale: float = 0.02, base: float = 0.0) -> str:
        nonlocal params
        # trained-like: heavy-tailed around a small scale rather than uniform
        w = (base + rng.laplace(0, scale / np.sqrt(2), shape)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, name))
        params += w.size
        return name

    def const(name: str, value: NDArray) -> str:
        inits.append(numpy_helper.from_array(value, name))
        return name

    def node(op: str, inputs: list[str], out: str, **attrs: object) -> str:
        nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    def layer_norm(x: str, name: str) -> str:
        return node("LayerNormalization", [x, weight(f"{name}.gamma", (hidden,), 0.05, 1.0), weight(f"{name}.beta", (hidden,), 0.01)],
                    f"{name}.out", axis=-1, epsilon=1e-12)

    def dense(x: str, name: str, n_in: int, n_out: int) -> str:
        y = node("MatMul", [x, weight(f"{name}.w", (n_in, n_out))], f"{name}.mm")
        return node("Add", [y, weight(f"{name}.b", (n_out,), 0.01)], f"{name}.out")

    split = const("shape.heads", np.array([1, seq, heads, hidden // heads], np.int64))
    merge = const("shape.hidden", np.array([1, seq, hidden], np.int64))
    att_scale = const("att.scale", np.array(1 / np.sqrt(hidden // heads), np.float32))
    half = const("gelu.half", np.array(0.5, np.float32))
    one = const("gelu.one", np.array(1.0, np.float32))
    inv_sqrt2 = const("gelu.inv_sqrt2", np.array(1 / np.sqrt(2), np.float32))

    x = node("Gather", [weight("emb.word", (vocab, hidden)), "input_ids"], "emb.gather")
    x = node("Add", [x, weight("emb.pos", (seq, hidden))], "emb.sum")
    x = layer_norm(x, "emb.ln")
    for i in range(layers):
        p = f"l{i}"
        q, k, v = (node("Reshape", [dense(x, f"{p}.{n}", hidden, hidden), split], f"{p}.{n}.split") for n in "qkv")
        q = node("Transpose", [q], f"{p}.q.t", perm=[0, 2, 1, 3])
        k = node("Transpose", [k], f"{p}.k.t", perm=[0, 2, 3, 1])
        v = node("Transpose", [v], f"{p}.v.t", perm=[0, 2, 1, 3])
        s = node("Mul", [node("MatMul", [q, k], f"{p}.scores"), att_scale], f"{p}.scaled")
        c = node("MatMul", [node("Softmax", [s], f"{p}.probs", axis=-1), v], f"{p}.ctx")
        c = node("Reshape", [node("Transpose", [c], f"{p}.ctx.t", perm=[0, 2, 1, 3]), merge], f"{p}.ctx.merged")
        x = layer_norm(node("Add", [x, dense(c, f"{p}.o", hidden, hidden)], f"{p}.att.res"), f"{p}.ln1")
        h = dense(x, f"{p}.ffn1", hidden, ffn)
        erf = node("Erf", [node("Mul", [h, inv_sqrt2], f"{p}.gelu.scaled")], f"{p}.gelu.erf")
        h = node("Mul", [node("Mul", [h, half], f"{p}.gelu.half"), node("Add", [erf, one], f"{p}.gelu.sum")], f"{p}.gelu")
        x = layer_norm(node("Add", [x, dense(h, f"{p}.ffn2", ffn, hidden)], f"{p}.ffn.res"), f"{p}.ln2")
    graph = helper.make_graph(nodes, "encoder", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, seq])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, seq, hidden])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # the IR that opset 17 shipped with, so any onnxruntime that runs opset 17 loads it
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return params


# --- measurement --------------------------------------------------------------------------------


@dataclass
class Run:
    wall: float  # seconds
    peak: int  # bytes (VmHWM), 0 when unknown
    ok: bool
    error: str  # the line that explains a failure
    stopped: bool = False  # killed at the RSS cap


RSS_CAP = [0]  # bytes a child may hold before it is stopped; set from --rss-cap-gib


def child_env() -> dict[str, str]:
    # the worktree first, so children import the same library as this script
    path = os.environ.get("PYTHONPATH")
    return dict(os.environ, PYTHONPATH=str(ROOT) + (os.pathsep + path if path else ""))


def proc_kib(pid: int, field: str) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:  # the child has just exited
        return 0
    found = re.search(rf"^{field}:\s+(\d+)", status, re.MULTILINE)
    return int(found.group(1)) if found else 0


def run_child(code: str, *args: str | Path) -> Run:
    """Run `code` in a fresh interpreter; stop it once its RSS passes the cap.

    The memory targets are about 1 GiB, so a child far past that has already missed; letting it grow
    further on a shared machine would only risk the out-of-memory killer taking something else.
    """
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=child_env(), cwd=ROOT)
    stopped, seen_hwm = False, 0
    while True:
        try:
            _, stderr = proc.communicate(timeout=0.05)
            break
        except subprocess.TimeoutExpired:
            seen_hwm = max(seen_hwm, proc_kib(proc.pid, "VmHWM"))
            if RSS_CAP[0] and proc_kib(proc.pid, "VmRSS") * 1024 > RSS_CAP[0] and not stopped:
                proc.kill()
                stopped = True
    wall = time.perf_counter() - t
    hwm = re.search(rf"^{HWM_TAG}(\d+)$", stderr, re.MULTILINE)
    peak = int(hwm.group(1)) * 1024 if hwm else seen_hwm * 1024
    if stopped:
        return Run(wall, peak, False, f"stopped at {peak / GIB:.1f} GiB RSS, past the {RSS_CAP[0] / GIB:.1f} GiB cap (--rss-cap-gib)",
                   stopped=True)
    lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith(HWM_TAG)]
    # a traceback's first line says nothing; its last names the exception
    error = (lines[-1] if lines[0].startswith("Traceback") else lines[0]) if lines else f"exit code {proc.returncode}"
    return Run(wall, peak, proc.returncode == 0, "" if proc.returncode == 0 else error)


def qpack(*args: str | Path) -> Run:
    return run_child(QPACK_CHILD, *args)



@dataclass
class Figure:
    target: str
    value: str
    limit: str
    passed: bool | None  # None: not measured


RESULTS: list[Figure] = []


def verdict(passed: bool | None) -> str:
    return "n/a" if passed is None else "PASS" if passed else "MISS"


def record(target: str, value: str, limit: str, passed: bool | None, detail: str = "") -> None:
    RESULTS.append(Figure(target, value, limit, passed))
    print(f"  {verdict(passed):<4}  {target}: {value} (target {limit}){'; ' + detail if detail else ''}", flush=True)


# --- the four targets ---------------------------------------------------------------------------


def target_convert_rss(tmp: Path, repeat: int) -> None:
    """Target 1; leaves the model and its sym per-channel container for target 4."""
    print("1. peak RSS of `qpack convert` on the 100 MB model", flush=True)
    src = tmp / "mlp.onnx"
    params = make_mlp(src, 25)
    float_bytes = params * 4
    print(f"  model: {params:,} float32 params ({float_bytes / 1e6:.1f} MB), {src.stat().st_size:,} bytes on disk")
    peer = run_child(ONNX_LOAD_CHILD, src)
    print(f"  peer: onnx.load in a fresh process: {peer.peak / MIB:.0f} MiB peak ({peer.peak / float_bytes:.2f}x), {peer.wall:.2f} s")
    floor = qpack("--version")
    print(f"  floor: `qpack --version` in a fresh process: {floor.peak / MIB:.0f} MiB peak, {floor.wall:.2f} s")
    limit = f"<= {RSS_RATIO_LIMIT}x"
    for label, opts, dst in (("asym per-tensor", ["--scheme", "asym", "--per-tensor"], tmp / "mlp.asym.qpk"),
                             ("sym per-channel", ["--scheme", "sym", "--per-channel"], tmp / "mlp.sym.qpk")):
        runs = [qpack("convert", src, "-o", dst, "--bits", "4", *opts, "--compress", "none", "-q") for _ in range(repeat)]
        target = f"1 convert peak RSS / float bytes, {label}"
        failed = next((r for r in runs if not r.ok), None)
        if failed:
            record(target, "failed", limit, False, failed.error)
            continue
        peak = max(r.peak for r in runs)
        ratio = peak / float_bytes
        record(target, f"{ratio:.2f}x", limit, ratio <= RSS_RATIO_LIMIT,
               f"{peak / MIB:.0f} MiB peak, {statistics.median(r.wall for r in runs):.2f} s wall median, "
               f"{peak / max(peer.peak, 1):.2f}x onnx.load's peak")


def target_big(tmp: Path, gib: float) -> None:
    print(f"2. {gib:g} GiB of float32 in ONNX external data: convert and unpack within {BIG_RSS_LIMIT / GIB:g} GiB each", flush=True)
    limit = f"<= {BIG_RSS_LIMIT / MIB:,.0f} MiB"
    # the float data, its 4-bit container and the restored copy: about 2.2x the float bytes
    need, free = int(2.2 * gib * GIB), shutil.disk_usage(tmp).free
    if free < need:
        for step in ("convert", "unpack"):
            record(f"2 big {step} peak RSS", "not run", limit, None, f"{free / GIB:.1f} GiB free in {tmp}, {need / GIB:.1f} needed")
        record("2 big restored weights = container's", "not run", "all equal", None, "not enough disk")
        return
    work = tmp / "big"
    work.mkdir()
    try:
        src = work / "big.onnx"
        t = time.perf_counter()
        float_bytes = make_big(src, gib)
        print(f"  model: {float_bytes / GIB:.2f} GiB float32 in {src.name}.data, proto {src.stat().st_size:,} bytes; "
              f"written in {time.perf_counter() - t:.1f} s", flush=True)
        qpk, restored = work / "big.qpk", work / "restored.onnx"
        steps = (("convert", ["convert", src, "-o", qpk, "--bits", "4", "--scheme", "sym", "--per-channel", "--compress", "none", "-q"]),
                 ("unpack", ["unpack", qpk, "-o", restored, "-q"]))
        for i, (step, argv) in enumerate(steps):
            run = qpack(*argv)
            detail = f"{run.peak / float_bytes:.2f}x the float weights, {run.wall:.1f} s wall"
            value = f"{run.peak / MIB:,.0f} MiB" if run.ok else f"> {run.peak / MIB:,.0f} MiB" if run.stopped else "failed"
            record(f"2 big {step} peak RSS", value, limit,
                   run.ok and run.peak <= BIG_RSS_LIMIT, detail if run.ok else f"{run.peak / MIB:,.0f} MiB peak, {detail}; {run.error}")
            if not run.ok:
                for later, _ in steps[i + 1:]:
                    record(f"2 big {later} peak RSS", "not run", limit, None, f"{step} failed")
                record("2 big restored weights = container's", "not run", "all equal", None, f"{step} failed")
                return
        t = time.perf_counter()
        checked, mismatched = compare_restored(qpk, restored)
        record("2 big restored weights = container's", f"{checked - len(mismatched)}/{checked} equal", "all equal",
               checked > 0 and not mismatched,
               f"checked in {time.perf_counter() - t:.1f} s" + (f"; first mismatch: {mismatched[0]}" if mismatched else ""))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def restored_tensor(model_dir: Path, tensor: TensorProto) -> NDArray:
    """A restored initializer's values, through a memmap when they live in external data."""
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).newbyteorder("<")
    if tensor.data_location != TensorProto.EXTERNAL:
        return numpy_helper.to_array(tensor)
    info = {e.key: e.value for e in tensor.external_data}
    offset, length = int(info.get("offset", "0")), int(info["length"])
    data = np.memmap(model_dir / info["location"], dtype=np.uint8, mode="r", offset=offset, shape=(length,))
    return data.view(dtype).reshape(tuple(tensor.dims))


def compare_restored(qpk: Path, restored: Path) -> tuple[int, list[str]]:
    """(tensors checked, keys whose restored values differ from the container's), a tensor at a time."""
    model = onnx.load(restored, load_external_data=False)
    inits = {t.name: t for t in model.graph.initializer}
    checked, mismatched = 0, []
    for key, values in container_values(qpk):
        checked += 1
        name = key.removeprefix("init:")
        if name not in inits or not np.array_equal(restored_tensor(restored.parent, inits[name]), values):
            mismatched.append(key)
    return checked, mismatched


def target_speed(tmp: Path, repeat: int) -> None:
    print("3. `qpack convert` against onnxruntime quantize_dynamic, whole processes", flush=True)
    src = tmp / "encoder.onnx"
    params = make_encoder(src)
    import onnxruntime as ort

    # the encoder must be a model onnxruntime runs, or the comparison would be against a failure
    session = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"])
    ids = np.random.default_rng(3).integers(0, 8000, (1, 128), dtype=np.int64)
    (y,) = session.run(None, {"input_ids": ids})
    del session
    print(f"  model: BERT-like encoder, {params:,} params ({params * 4 / 1e6:.1f} MB float32), {src.stat().st_size:,} bytes; "
          f"onnxruntime runs it, output {list(y.shape)}")
    runners = {"quantize_dynamic": lambda: run_child(ORT_CHILD, src, tmp / "encoder.int8.onnx"),
               "qpack convert": lambda: qpack("convert", src, "-o", tmp / "encoder.qpk", "--bits", "4", "--scheme", "sym",
                                              "--per-channel", "-q")}
    runs: dict[str, list[Run]] = {name: [] for name in runners}
    target, limit = "3 convert wall time / quantize_dynamic's", f"<= {SPEED_RATIO_LIMIT}x"
    for i in range(repeat):
        # alternate which goes first, so neither always meets the page cache the other has just warmed
        for name in list(runners)[:: 1 if i % 2 == 0 else -1]:
            run = runners[name]()
            if not run.ok:
                record(target, "failed", limit, False, f"{name}: {run.error}")
                return
            runs[name].append(run)
    t_peer = statistics.median(r.wall for r in runs["quantize_dynamic"])
    t_ours = statistics.median(r.wall for r in runs["qpack convert"])
    print(f"  peer: quantize_dynamic int8 per-channel: {t_peer:.2f} s median, "
          f"{max(r.peak for r in runs['quantize_dynamic']) / MIB:.0f} MiB peak")
    ratio = t_ours / t_peer
    record(target, f"{ratio:.2f}x", limit, ratio <= SPEED_RATIO_LIMIT,
           f"qpack {t_ours:.2f} s median, {max(r.peak for r in runs['qpack convert']) / MIB:.0f} MiB peak")


def target_restore(tmp: Path, repeat: int) -> None:
    print("4. in-process restore rate on the 100 MB model, 4-bit sym per-channel", flush=True)
    src, qpk = tmp / "mlp.onnx", tmp / "mlp.sym.qpk"
    target, limit = "4 restore rate, float32 written", f">= {RESTORE_GBPS_LIMIT:g} GB/s"
    if not src.is_file():
        make_mlp(src, 25)
    if not qpk.is_file():  # target 1 leaves it behind; otherwise make it the same way
        run = qpack("convert", src, "-o", qpk, "--bits", "4", "--scheme", "sym", "--per-channel", "--compress", "none", "-q")
        if not run.ok:
            record(target, "not run", limit, None, f"convert failed: {run.error}")
            return
    model = onnx.load(src)
    float_bytes = sum(int(np.prod(t.dims)) * 4 for t in model.graph.initializer if t.data_type == TensorProto.FLOAT)
    t_peer = median_time(lambda: onnx.save(model, tmp / "mlp.saved.onnx"), repeat)
    print(f"  peer: onnx.save of the float model in memory: {t_peer * 1e3:.0f} ms, {float_bytes / t_peer / 1e9:.2f} GB/s")
    # the floor: the same float32 bytes written to a fresh file in one call (this disk's write rate)
    floats = np.concatenate([numpy_helper.to_array(t).reshape(-1) for t in model.graph.initializer
                             if t.data_type == TensorProto.FLOAT])

    def write_floor() -> None:
        out = tmp / "floor.bin"
        out.unlink(missing_ok=True)
        floats.tofile(out)

    t_floor = median_time(write_floor, repeat)
    print(f"  floor: ndarray.tofile of the same float32 bytes: {t_floor * 1e3:.0f} ms, {float_bytes / t_floor / 1e9:.2f} GB/s")

    def restore_fresh() -> None:  # into a fresh path, as the floor: replacing a file first frees the old one's pages
        out = tmp / "mlp.restored.onnx"
        out.unlink(missing_ok=True)
        library_restore(qpk, out)

    try:
        t = median_time(restore_fresh, repeat)
    except Exception as e:  # a failure is the figure: report it and let the other targets stand
        record(target, "failed", limit, False, f"{type(e).__name__}: {e}")
        return
    rate = float_bytes / t / 1e9
    record(target, f"{rate:.2f} GB/s", limit, rate >= RESTORE_GBPS_LIMIT,
           f"{t * 1e3:.0f} ms median, {t / t_peer:.2f}x onnx.save's time, {t / t_floor:.2f}x the write floor")


def summary() -> None:
    print("\nsummary")
    width = max(len(f.target) for f in RESULTS)
    value_width = max(len(f.value) for f in RESULTS)
    limit_width = max(len(f.limit) for f in RESULTS)
    for f in RESULTS:
        print(f"  {f.target:<{width}}  {f.value:>{value_width}}  {f.limit:<{limit_width}}  {verdict(f.passed)}")
    misses = sum(f.passed is False for f in RESULTS)
    print(f"  {sum(f.passed is True for f in RESULTS)} PASS, {misses} MISS, {sum(f.passed is None for f in RESULTS)} not measured")


def mem_available() -> int:
    found = re.search(r"^MemAvailable:\s+(\d+)", Path("/proc/meminfo").read_text(), re.MULTILINE)
    return int(found.group(1)) * 1024 if found else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--big-gib", type=float, help="float32 GiB in the external-data model of target 2 (default 4.0; --quick 0.25)")
    ap.add_argument("--repeat", type=int, help="runs per median (default 5; --quick 2)")
    ap.add_argument("--only", type=int, nargs="+", choices=(1, 2, 3, 4), help="run only these targets")
    ap.add_argument("--tmpdir", type=Path, help="where models are generated; target 2 needs about 2.2x --big-gib free")
    ap.add_argument("--rss-cap-gib", type=float, help="stop a child whose RSS passes this (default 60%% of available memory; 0: never)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 0.25 GiB big model, 2 repeats")
    args = ap.parse_args()
    big_gib = args.big_gib if args.big_gib is not None else 0.25 if args.quick else 4.0
    repeat = args.repeat if args.repeat is not None else 2 if args.quick else 5
    if big_gib <= 0 or repeat < 1:
        ap.error("--big-gib must be positive and --repeat at least 1")
    RSS_CAP[0] = int(args.rss_cap_gib * GIB) if args.rss_cap_gib is not None else int(0.6 * mem_available())
    targets = set(args.only or (1, 2, 3, 4))
    tmp = Path(tempfile.mkdtemp(prefix="qpack-bench-", dir=args.tmpdir))
    print(f"python {sys.version.split()[0]}, numpy {np.__version__}, onnx {onnx.__version__}; {os.cpu_count()} CPUs, "
          f"{mem_available() / GIB:.1f} GiB available, child RSS cap {RSS_CAP[0] / GIB:.1f} GiB; repeat {repeat}; work in {tmp}",
          flush=True)
    try:
        if 1 in targets:
            target_convert_rss(tmp, repeat)
        if 2 in targets:
            target_big(tmp, big_gib)
        if 3 in targets:
            target_speed(tmp, repeat)
        if 4 in targets:
            target_restore(tmp, repeat)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    summary()


if __name__ == "__main__":
    main()
