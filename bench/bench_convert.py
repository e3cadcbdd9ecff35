"""Throughput of qpack's hot paths on a generated 20M+ parameter float model; prints figures.

    python bench/bench_convert.py [--params 21] [--repeat 5]

Each figure is the median of --repeat runs, beside a peer measured in the same process:
- convert (quantize + pack + write, 4 bits, no compressors) against writing the same float32
  weights to disk with ndarray.tofile, the I/O floor;
- pack/unpack against numpy's own bit-matrix route (unpackbits/packbits).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.timing import median_time  # noqa: E402
from qpack.converter.convert import convert  # noqa: E402
from qpack.converter.measure import compressed_sizes  # noqa: E402
from qpack.converter.policy import Policy  # noqa: E402
from qpack.formats.onnx_model import OnnxModel  # noqa: E402
from qpack.formats.qpk import ZSTD, pack, unpack  # noqa: E402


def make_model(path: Path, million: int) -> int:
    """An MLP of 2048x2048 MatMuls with trained-like (Laplacian) weights; returns its parameter count."""
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



def numpy_pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """Peer: expand every code to bits with unpackbits, keep n of 8, pack again."""
    b = np.unpackbits(codes[:, None], axis=1, bitorder="little")[:, :bits]
    return np.packbits(b.reshape(-1), bitorder="little")


def numpy_unpack(buf: np.ndarray, bits: int, count: int) -> np.ndarray:
    b = np.unpackbits(buf, bitorder="little")[: count * bits].reshape(count, bits)
    return np.packbits(b, axis=1, bitorder="little").reshape(-1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--params", type=int, default=21, help="millions of parameters")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    src = tmp / "mlp.onnx"
    params = make_model(src, args.params)
    mb = params * 4 / 1e6
    print(f"model: {params:,} float32 params ({mb:.1f} MB), {src.stat().st_size:,} bytes on disk")

    t_load = median_time(lambda: OnnxModel(src), 3)
    model = OnnxModel(src)
    print(f"load ONNX                    {t_load * 1e3:8.1f} ms   {mb / t_load:8.1f} MB/s")
    weights = np.concatenate([w.array.reshape(-1) for w in model.weights])
    t_peer = median_time(lambda: weights.tofile(tmp / "floor.bin"), args.repeat)
    print(f"peer: float32 tofile         {t_peer * 1e3:8.1f} ms   {mb / t_peer:8.1f} MB/s")
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for scheme, per_channel in (("asym", False), ("asym", True), ("sym", True), ("pow2", True)):
        policy = Policy(scheme, 4, per_channel)
        out = tmp / "m.qpk"
        t = median_time(lambda: convert(model, policy, out), args.repeat)
        t_e2e = median_time(lambda: convert(OnnxModel(src), policy, out), 3)
        label = f"{scheme}{' per-channel' if per_channel else ''}"
        print(f"convert 4-bit {label:<15}{t * 1e3:8.1f} ms   {mb / t:8.1f} MB/s  ({t / t_peer:.2f}x the tofile floor); "
              f"with load {mb / t_e2e:.1f} MB/s; {out.stat().st_size:,} bytes")
    t = median_time(lambda: convert(model, Policy("asym", 4, clip="mse"), tmp / "c.qpk"), args.repeat)
    print(f"convert 4-bit asym, clip mse   {t * 1e3:8.1f} ms   {mb / t:8.1f} MB/s")
    t = median_time(lambda: convert(model, Policy("asym", 4), tmp / "z.qpk", codec=ZSTD), args.repeat)
    print(f"convert 4-bit asym, codes zstd {t * 1e3:8.1f} ms   {mb / t:8.1f} MB/s; {(tmp / 'z.qpk').stat().st_size:,} bytes")
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"peak RSS {rss1 / 1024:.0f} MiB (model in memory {mb:.0f} MB; +{(rss1 - rss0) / 1024:.0f} MiB during conversions)")

    # the whole CLI in a fresh process (start-up, load, convert, write) and its own peak memory,
    # read from VmHWM, which exec resets (ru_maxrss of a child would include this process's)
    cli_args = ["convert", str(src), "-o", str(tmp / "cli.qpk"), "--bits", "4", "--compress", "none", "-q"]
    child = ("import sys, re\nfrom qpack.converter.cli import app\nsys.argv = ['qpack'] + sys.argv[1:]\n"
             "try:\n    app()\nexcept SystemExit as e:\n    assert not e.code\n"
             "print(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1), file=sys.stderr)")
    walls, peaks = [], []
    for _ in range(3):
        t = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", child, *cli_args], check=True, capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parent.parent)
        walls.append(time.perf_counter() - t)
        peaks.append(int(done.stderr.split()[-1]) / 1024)
    wall, peak = statistics.median(walls), max(peaks)
    print(f"qpack convert CLI, 4-bit asym: {wall:.2f} s wall ({mb / wall:.1f} MB/s of float weights, start-up included), "
          f"peak RSS {peak:.0f} MiB ({peak * 1.048576 / mb:.1f}x the float weights)")

    count = 20_000_000
    rng = np.random.default_rng(1)
    for bits in (1, 2, 3, 4, 5, 6, 7):
        codes = rng.integers(0, 1 << bits, count, dtype=np.uint8)
        buf = pack(codes, bits)
        assert np.array_equal(numpy_pack(codes, bits), buf)
        tp = median_time(lambda: pack(codes, bits), args.repeat)
        tu = median_time(lambda: unpack(buf, bits, count), args.repeat)
        tpp = median_time(lambda: numpy_pack(codes, bits), 3)
        tup = median_time(lambda: numpy_unpack(buf, bits, count), 3)
        print(f"{bits}-bit pack {count / tp / 1e6:7.0f} M codes/s ({tpp / tp:4.1f}x numpy bit-matrix), "
              f"unpack {count / tu / 1e6:7.0f} M codes/s ({tup / tu:4.1f}x)")

    qpk = (tmp / "m.qpk").read_bytes()
    raw = src.read_bytes()
    for c in ("gzip", "zstd", "7z"):
        t0 = time.perf_counter()
        sizes = compressed_sizes({"original": raw, "qpk": qpk}, (c,))
        dt = time.perf_counter() - t0
        print(f"{c:>4}: original {sizes[c]['original']:,} bytes, qpk {sizes[c]['qpk']:,} bytes, {dt:.1f} s for both")


if __name__ == "__main__":
    main()
