"""Where a --target-sqnr file loses its output cosine: starved output channels, shrinking, or chance.

    python bench/bench_channels.py [--models "ocr rec,silero op15"] [--goals 20:40:1] [--json out.json]
    python bench/bench_channels.py --tensor "ocr det, text=conv2d_399.w_0" --goal 30

Sweep (the default): `qpack convert --target-sqnr DB --codec ans` at each goal on bench_nncodec's
--outputs models (the sample, PP-OCRv4 rec, the detector on rendered text lines, Silero op15), each
file restored and judged as there (least output cosine on 8 seeded inputs). Per model: bits per
weight, the least output channel SQNR of any tensor (along its channel axis), and a least-squares
line of log10(1 - cosine) against bits per weight, read at the model's mean bits so that two runs
(two versions of the menus) compare at equal bits, with the standard error of the line's level in
decades. One goal's cosine scatters by about half a decade either way: only many goals tell a
change of the menus from chance.

Tensor (--tensor MODEL=NAME --goal DB): that tensor of the goal's file put alone into the float
model, against the same error energy as Gaussian noise, the same errors on permuted weights, uniform
rounding at the step of that energy, and the per-channel gains of its errors alone (each channel's
least-squares factor: a whole channel shrunk, as rate-aware rounding pulls codes toward zero). If
Gaussian noise costs as much as the codes, the tensor is sensitive and the figure is chance; if the
gains alone cost most of it, the codes shrink channels.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_nncodec import OUTPUT_MODELS, Case, Judge, output_cases, pooled_sqnr, weights_of  # noqa: E402

from qpack.formats.qpk import QpkReader  # noqa: E402

Tensors = dict[str, tuple[np.ndarray, int | None]]


def convert(case: Case, db: float, tmp: Path) -> tuple[dict[str, np.ndarray], float]:
    """The decoded weights of `qpack convert --target-sqnr db --codec ans` on the case's model, and
    its bits per weight (codes and parameters)."""
    qpk, js = tmp / "s.qpk", tmp / "s.json"
    run = subprocess.run([sys.executable, "-c", "from qpack.converter.cli import run; run()", "convert", str(case.path), "-o",
                          str(qpk), "--target-sqnr", str(db), "--codec", "ans", "--compress", "none", "-q", "--json", str(js)],
                         capture_output=True, text=True, cwd=ROOT)
    if run.returncode:
        raise SystemExit(f"{case.label} at {db:g} dB: {run.stderr.strip()}")
    rows = json.loads(js.read_text())["tensors"]
    with QpkReader(qpk) as q:
        arrays = {e.key: q.dequantize(e) for e in q.entries}
    return arrays, sum(r["stored_bytes"] + r["param_bytes"] for r in rows) * 8 / sum(r["count"] for r in rows)


def channel_db(a: np.ndarray, d: np.ndarray, axis: int | None) -> np.ndarray:
    """Each output channel's SQNR in dB (channels without signal aside); empty without a channel axis."""
    if axis is None or a.ndim < 2:
        return np.zeros(0)
    other = tuple(i for i in range(a.ndim) if i != axis)
    s = np.square(a, dtype=np.float64).sum(axis=other)
    n = np.square(a.astype(np.float64) - d, dtype=np.float64).sum(axis=other)
    live = s > 0
    return np.asarray(10 * np.log10(s[live] / np.maximum(n[live], 1e-300)))


def sweep(labels: list[str], goals: list[float]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    print("| model | goals | mean bpw | least channel dB (median over goals) | geomean 1 - cosine | 1 - cosine at mean bits (line) |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        for case in output_cases(tmp):
            if case.label not in labels:
                continue
            tensors = weights_of(case.path)
            judge = Judge(case, tmp, subsets=False)
            rows = []
            for db in goals:
                arrays, bpw = convert(case, db, tmp)
                least = min((float(c.min()) for k, (a, ax) in tensors.items()
                             if (c := channel_db(a, np.asarray(arrays[k]).reshape(a.shape), ax)).size), default=math.inf)
                rows.append({"goal": db, "sqnr": pooled_sqnr(tensors, arrays)[0], "bpw": bpw,
                             "least_channel_db": least, "cosine": judge.with_weights(arrays)})
            judge.model.close()
            x = np.array([r["bpw"] for r in rows])
            y = np.log10(np.maximum(1e-6, 1 - np.array([r["cosine"] for r in rows])))
            slope, level = np.polyfit(x, y, 1) if len(rows) > 2 else (0.0, float(y.mean()))
            spread = float((y - level - slope * x).std(ddof=min(2, len(rows) - 1)) / math.sqrt(len(rows))) if len(rows) > 2 else math.nan
            out[case.label] = rows
            print(f"| {case.label} | {len(rows)} | {x.mean():.3f} | {np.median([r['least_channel_db'] for r in rows]):.1f} | "
                  f"{10 ** y.mean():.4f} | {10 ** (level + slope * x.mean()):.4f} ± {spread:.2f} decades |", flush=True)
    return out


def tensor(label: str, name: str, db: float) -> dict[str, float]:
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        case = next((c for c in output_cases(tmp) if c.label == label), None)
        if case is None:
            raise SystemExit(f"no model '{label}' (from: {', '.join(OUTPUT_MODELS)})")
        tensors = weights_of(case.path)
        key = next((k for k in tensors if name in k), None)
        if key is None:
            raise SystemExit(f"{label}: no quantized tensor named like '{name}'")
        a, axis = tensors[key]
        d = np.asarray(convert(case, db, tmp)[0][key], np.float32).reshape(a.shape)
        e = d - a
        other = tuple(i for i in range(a.ndim) if i != axis) if axis is not None else tuple(range(a.ndim))
        gains = 1 + (e * a).sum(axis=other, keepdims=True) / np.maximum(np.square(a).sum(axis=other, keepdims=True), 1e-30)
        rms = float(np.sqrt(np.square(e).mean()))
        step = math.sqrt(12) * rms
        variants = {
            "its codes": d,
            "Gaussian noise, same energy": a + rng.standard_normal(a.shape).astype(np.float32) * rms,
            "its errors, permuted": a + rng.permutation(e.ravel()).reshape(a.shape),
            "uniform rounding, same energy": (np.round(a / step) * step).astype(np.float32),
            "its channel gains alone": (a * gains).astype(np.float32),
        }
        judge = Judge(case, tmp, subsets=False)
        print(f"{key} {tuple(a.shape)} in the {db:g} dB file: own SQNR "
              f"{10 * math.log10(float(np.square(a).sum()) / float(np.square(e).sum())):.1f} dB, least channel "
              f"{channel_db(a, d, axis).min() if axis is not None else math.nan:.1f} dB, least channel gain {float(gains.min()):.3f}")
        print("| the tensor as | own SQNR dB | 1 - output cosine |")
        print("|---|---|---|")
        out = {}
        for tag, v in variants.items():
            own = 10 * math.log10(float(np.square(a).sum()) / max(float(np.square(v - a).sum()), 1e-30))
            out[tag] = 1 - judge.with_weights({key: v})
            print(f"| {tag} | {own:.1f} | {out[tag]:.4f} |", flush=True)
        judge.model.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(m for m in OUTPUT_MODELS if "," not in m) + ",ocr det, text",
                    help="the sweep's models (comma-separated; 'ocr det, text' is one name)")
    ap.add_argument("--goals", default="20:40:1", help="FIRST:LAST:STEP in dB")
    ap.add_argument("--tensor", help="MODEL=NAME: take apart what one tensor of the --goal file costs")
    ap.add_argument("--goal", type=float, default=30.0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if args.tensor:
        label, _, name = args.tensor.partition("=")
        report: Any = tensor(label, name, args.goal)
    else:
        first, last, step = (float(v) for v in args.goals.split(":"))
        goals = [float(g) for g in np.arange(first, last + step / 2, step)]
        labels = [m for m in OUTPUT_MODELS if m in args.models]
        report = sweep(labels, goals)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
