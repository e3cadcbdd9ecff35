"""Power-of-two weights as shifts: the digits sample CNN in C, float multiplies against fixed-point shifts.

    python bench/bench_pow2_shift.py [--bits 4 5] [--flags="-O2" --flags="-O2 -march=native"]
                                     [--blocks 8 16] [--rounds 6] [--passes 5] [--json FILE]

For each width B, converts the sample with pow2 per channel at B bits, generates the C tables
(bench/pow2_shift/gen.py) and builds bench/pow2_shift/cnn.c with gcc for each set of --flags and
each inner-loop block size (cnn.c's BLK). Three variants of the same model run on the 540 test
digits: `float` (float32 multiplies), `shift` (int32 fixed point, one shift per weight) and `group`
(weights grouped by exponent: adds, then one shift per group). Reported:

- latency: per build and variant, the median over all timed passes of (pass time / 540 images),
  in wall-clock time and in the process's CPU time (which leaves out the time a busy machine keeps
  the process descheduled). Each round launches every build and variant once, in an order rotated
  from round to round, for --passes timed passes after an untimed one, so a noisy neighbour slows
  all of them alike. Which block size suits a variant depends on its loop bodies and the vector
  width, so each variant is then compared at its best block size: the ratio to the float
  variant's best (below 1: faster);
- accuracy on the test split, next to `qpack eval`'s accuracy of the same container; the share of
  images where the prediction equals eval's; whether the fixed-point logits equal
  gen.shift_forward's exactly, and whether every build gives the same predictions.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench" / "pow2_shift"))
sys.path.insert(0, str(ROOT))

import gen  # noqa: E402

from qpack.converter.datasets import load_inputs  # noqa: E402
from qpack.converter.evaluate import evaluate, quantized_copy, run_all  # noqa: E402
from qpack.converter.runtime import open_runner  # noqa: E402

VARIANTS = ("float", "shift", "group")


def python_eval(qpk: Path) -> tuple[float, float, np.ndarray]:
    """`qpack eval samples/digits_cnn.onnx --qpk QPK --dataset digits`: original and quantized accuracy,
    and the quantized model's predictions (onnxruntime on the restored model)."""
    inputs = load_inputs(gen.SAMPLE, dataset="digits")
    c = evaluate(gen.SAMPLE, inputs, qpk=qpk)["classification"]
    with quantized_copy(gen.SAMPLE, qpk, None) as restored:
        preds = run_all(open_runner(restored), inputs)[0].argmax(1)
    return c["accuracy_original"], c["accuracy_quantized"], preds


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def rotated(items: list, r: int) -> list:
    k = r % len(items)
    return items[k:] + items[:k]


def bench_width(bits: int, flag_sets: list[str], blocks: list[int], work: Path, rounds: int, passes: int) -> dict[str, Any]:
    tables = gen.generate(work / f"b{bits}", bits)
    _, test, labels = gen.digits_split()
    exact = np.ldexp(gen.shift_forward(tables.layers, bits, tables.fracs, test).astype(np.float64), -tables.fracs[-1])
    acc_float_model, acc_eval, eval_preds = python_eval(tables.qpk)
    builds = [(flags, block) for flags in flag_sets for block in blocks]
    exes = {b: gen.compile_c(tables, work / f"b{bits}" / f"cnn{i}", tuple(b[0].split()), b[1]) for i, b in enumerate(builds)}
    accuracy: dict[str, Any] = {}
    for v in VARIANTS:
        runs = [gen.run_c(exes[b], v, tables.inputs) for b in builds]
        first = runs[0]
        accuracy[v] = {"accuracy": float((first.predictions == labels).mean()),
                       "agreement_with_eval": float((first.predictions == eval_preds).mean()),
                       "same_predictions_in_every_build": all(np.array_equal(r.predictions, first.predictions) for r in runs),
                       "logits_equal_model": None if v == "float" else all(np.array_equal(r.logits, exact) for r in runs)}
    clocks = {"wall": "pass_ns", "cpu": "pass_cpu_ns"}
    samples: dict[tuple[str, str, int, str], list[float]] = {(c, f, b, v): [] for c in clocks for f, b in builds for v in VARIANTS}
    jobs = [(b, v) for b in builds for v in VARIANTS]
    for r in range(rounds):
        for b, v in rotated(jobs, r):
            run = gen.run_c(exes[b], v, tables.inputs, passes)
            for c, field in clocks.items():
                samples[(c, *b, v)] += [t / len(labels) / 1000 for t in getattr(run, field)]
    latency = {k: statistics.median(t) for k, t in samples.items()}
    per_flags = []
    for flags in flag_sets:
        row: dict[str, Any] = {"flags": flags}
        for c in clocks:
            best = {v: min(blocks, key=lambda b: latency[(c, flags, b, v)]) for v in VARIANTS}
            floor = latency[(c, flags, best["float"], "float")]
            row[c] = {"us_per_image": {str(b): {v: round(latency[(c, flags, b, v)], 2) for v in VARIANTS} for b in blocks},
                      "best": {v: {"block": best[v], "us_per_image": round(latency[(c, flags, best[v], v)], 2),
                                   "ratio_to_float": round(latency[(c, flags, best[v], v)] / floor, 3)} for v in VARIANTS}}
        per_flags.append(row)
    return {"bits": bits, "fractional_bits": tables.fracs, "float_model_accuracy": acc_float_model, "eval_accuracy": acc_eval,
            "variants": accuracy, "latency": per_flags}


def show(r: dict[str, Any]) -> None:
    print(f"pow2 per channel, {r['bits']} bits: qpack eval accuracy {100 * r['eval_accuracy']:.2f}% "
          f"(float model {100 * r['float_model_accuracy']:.2f}%); fixed-point fractional bits {r['fractional_bits']}")
    for v, a in r["variants"].items():
        exact = "" if a["logits_equal_model"] is None else f", logits equal gen.shift_forward: {'yes' if a['logits_equal_model'] else 'NO'}"
        same = "" if a["same_predictions_in_every_build"] else " (predictions DIFFER between builds)"
        print(f"  {v:<6} accuracy {100 * a['accuracy']:.2f}%, same prediction as eval on {100 * a['agreement_with_eval']:.1f}% "
              f"of images{exact}{same}")
    width = max(20, *(len(f["flags"]) for f in r["latency"]))
    for c, title in (("wall", "wall-clock"), ("cpu", "CPU time")):
        print(f"  {'median us/image, ' + title:<{width + 10}}" + "".join(f"{v:>16}" for v in VARIANTS))
        for f in r["latency"]:
            for block, row in f[c]["us_per_image"].items():
                print(f"  {f['flags']:<{width}} BLK={block:<3} " + "".join(f"{row[v]:>16.1f}" for v in VARIANTS))
            cells = [f"{b['us_per_image']:.1f} x{b['ratio_to_float']:.2f} @{b['block']}" for b in f[c]["best"].values()]
            print(f"  {f['flags']:<{width}} best    " + "".join(f"{cell:>16}" for cell in cells))
    print()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bits", type=int, nargs="+", default=[4, 5])
    ap.add_argument("--flags", action="append", help="gcc optimization flags of one build (repeatable); "
                    "default: -O2, and -O2 -march=native")
    ap.add_argument("--blocks", type=int, nargs="+", default=[8, 16], help="cnn.c block sizes (BLK) to build")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--passes", type=int, default=5)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    flag_sets = args.flags or ["-O2", "-O2 -march=native"]
    gcc = subprocess.run(["gcc", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    print(f"{cpu_name()}; {gcc}; base flags {' '.join(gen.CFLAGS)}")
    print(f"{args.rounds} rounds x {args.passes} timed passes over the 540 test digits per build and variant, interleaved\n")
    results = []
    with tempfile.TemporaryDirectory(prefix="qpack-pow2-") as tmp:
        for bits in args.bits:
            results.append(bench_width(bits, flag_sets, args.blocks, Path(tmp), args.rounds, args.passes))
            show(results[-1])
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu_name(), "gcc": gcc, "cflags": list(gen.CFLAGS), "rounds": args.rounds,
                                         "passes": args.passes, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
