"""Full-integer TFLite exports in TensorFlow Lite Micro beside LiteRT: does TFLM run them, in what arena,
and how far its outputs are from LiteRT's on the same inputs, in quantization steps.

    python bench/bench_tflm.py [--samples 8] [--only landmark detector ...]

For each TFLite fixture of bench_litert.MODELS (the already-int8 wake word model aside): `convert --bits 8
--scheme sym --per-channel --for tflite-int8`, then `export --to tflite-int8` and `--to tflite-16x8` (int16
activations) calibrated on the calibration draw (seed 0, 16 inputs) twice: at the default `--min-cosine
0.99` (ops whose activations quantize worst go back to float) and at `--min-cosine -1` (every op integer,
what a microcontroller build wants). Each file runs in LiteRT (one thread) and in TFLM (`tflite_micro`'s
Python interpreter) on the check draw (seed 1); an output's step is the scale of the integer tensor its
DEQUANTIZE reads. Beside it, the least cosine of LiteRT's outputs against the float model's (each output
on its own, over the check draw), which is what the activations' width buys. The target: TFLM within one
step of LiteRT, against each of LiteRT's kernels (KERNELS): its default (XNNPACK), its own optimized ones,
and its reference ones, whose arithmetic TFLM's kernels are ported from. The optimized kernels round their
requantization their own way, and a difference of one step early in the graph can grow through it: the
first column is the largest difference over every output value, the second the share of output values
more than one step apart.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_fidelity import packaged  # noqa: E402
from bench_litert import MODELS, draws  # noqa: E402

import qpack  # noqa: E402
from qpack.converter.export.calibrate import least_cosine  # noqa: E402
from qpack.converter.export.tflite_int import litert_schema, load, op_names  # noqa: E402

TARGETS = ("tflite-int8", "tflite-16x8")


def output_steps(path: Path) -> list[float]:
    """The scale of the int8 tensor behind each model output (its DEQUANTIZE's input); 0 for a float one."""
    schema = litert_schema()
    model = load(schema, path.read_bytes(), str(path))
    ops, g = op_names(schema, model), model.subgraphs[0]
    made = {int(op.outputs[0]): op for op in g.operators if ops[op.opcodeIndex] == "DEQUANTIZE"}
    steps = []
    for t in g.outputs:
        op = made.get(int(t))
        q = g.tensors[int(op.inputs[0])].quantization if op is not None else None
        steps.append(float(q.scale[0]) if q is not None and q.scale is not None and len(q.scale) else 0.0)
    return steps


def micro_outputs(path: Path, feeds: list[dict[str, np.ndarray]], names: list[str], count: int) -> list[list[np.ndarray]]:
    from tflite_micro.python.tflite_micro import runtime

    interp = runtime.Interpreter.from_file(str(path), arena_size=1 << 26)
    out = []
    for f in feeds:
        for i, n in enumerate(names):
            d = interp.get_input_details(i)
            interp.set_input(np.asarray(f[n], d["dtype"]).reshape(d["shape"]), i)
        interp.invoke()
        out.append([np.array(interp.get_output(i), dtype=np.float64) for i in range(count)])
    return out


# LiteRT's kernels compared: its default (XNNPACK delegate), its own optimized ones, its reference ones
KERNELS = ("AUTO", "BUILTIN_WITHOUT_DEFAULT_DELEGATES", "BUILTIN_REF")


def lite_outputs(path: Path, feeds: list[dict[str, np.ndarray]], kernels: str = "AUTO") -> tuple[list[str], list[list[np.ndarray]]]:
    """LiteRT's outputs on `kernels` (an OpResolverType name of KERNELS)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    kind = getattr(OpResolverType, kernels)
    it = Interpreter(model_path=str(path), num_threads=1, experimental_op_resolver_type=kind)
    it.allocate_tensors()
    ins = it.get_input_details()
    out = []
    for f in feeds:
        for d in ins:
            it.set_tensor(d["index"], np.asarray(f[d["name"]], d["dtype"]))
        it.invoke()
        out.append([np.asarray(it.get_tensor(o["index"]), np.float64) for o in it.get_output_details()])
    return [d["name"] for d in ins], out


def compare(path: Path, feeds: list[dict[str, np.ndarray]], kernels: str) -> tuple[float, float, float]:
    """(largest difference in steps, share of values more than one step apart, least cosine) of TFLM against LiteRT."""
    names, lite = lite_outputs(path, feeds, kernels)
    steps = output_steps(path)
    micro = micro_outputs(path, feeds, names, len(steps))
    worst, apart, total, cos = 0.0, 0, 0, 1.0
    for a_all, b_all in zip(lite, micro):
        for a, b, s in zip(a_all, b_all, steps):
            d = np.abs(a.ravel() - b.ravel()) / (s if s > 0 else 1.0)
            if s > 0:  # both are integers times the step: whole steps, less float32's rounding of the products
                d = np.rint(d)
            worst, apart, total = max(worst, float(d.max())), apart + int((d > 1.0 + 1e-6).sum()), total + d.size
            cos = min(cos, float(a.ravel() @ b.ravel() / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30)))
    return worst, apart / max(total, 1), cos


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--only", nargs="+", choices=[m.subject.name for m in MODELS if not m.quantized])
    ap.add_argument("--to", nargs="+", default=list(TARGETS), choices=TARGETS)
    args = ap.parse_args()
    print("| model | --to | --min-cosine | bytes | LiteRT against float: least cosine | TFLM arena "
          "| TFLM against LiteRT (XNNPACK): largest, steps | share > 1 step | least cosine "
          "| against LiteRT's own kernels: largest, steps | share > 1 step | least cosine "
          "| against LiteRT's reference kernels: largest, steps | share > 1 step | least cosine |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for m in MODELS:
            if m.quantized or (args.only and m.subject.name not in args.only):
                continue
            fx = m.subject.fixture
            src = packaged(fx.dist, fx.relpath)
            if src is None:
                print(f"| {m.subject.name} | not installed: {fx.dist} |" + " |" * 11)
                continue
            cal, checks = draws(m, src, args.samples)
            calib = tmp / f"{m.subject.name}.npz"
            np.savez(calib, **cal)
            qpk = tmp / f"{m.subject.name}.qpk"
            qpack.convert(src, qpk, bits=8, scheme="sym", per_channel=True, target="tflite-int8", compress="none")
            _, want = lite_outputs(src, checks)
            for to, floor in itertools.product(args.to, (0.99, -1.0)):
                row = f"| {m.subject.name} | {to} | {floor:g} |"
                out = tmp / f"{m.subject.name}.{to}.{floor}.tflite"
                try:
                    done = qpack.export(qpk, to, out, inputs=calib, min_cosine=floor)
                except Exception as e:  # shown in the model's row; the other models still run
                    print(f"{row} export failed: {type(e).__name__}: {' '.join(str(e).split())} |" + " |" * 11)
                    continue
                fidelity = least_cosine(zip(want, lite_outputs(out, checks)[1]))
                said = next((n for n in done.notes if n.startswith("TFLM")), "")
                if not said.startswith("TFLM runs it"):
                    print(f"{row} {out.stat().st_size:,} | {fidelity:.6f} | {said} |" + " |" * 9)
                    continue
                arena = said.split(" a ", 1)[1].split("-byte", 1)[0]
                cells = []
                for k in KERNELS:
                    try:
                        cells.append("{:.3g} | {:.2%} | {:.6f}".format(*compare(out, checks, k)))
                    except ValueError as e:  # LiteRT's reference resolver lacks some op versions
                        cells.append(f"LiteRT's {k} kernels cannot load it: {str(e).splitlines()[0]} | |")
                print(f"{row} {out.stat().st_size:,} | {fidelity:.6f} | {arena} | {' | '.join(cells)} |")
                sys.stdout.flush()


if __name__ == "__main__":
    main()
