"""What int4 weights in blocks cost in LiteRT's XNNPACK against per-channel int4 and float: one
FULLY_CONNECTED layer, as `--to tflite` writes it.

    python bench/bench_tflite_blocks.py [--rounds 60] [--batch 1 16]

Per layer shape (N outputs, K inputs) and batch: a float32 layer, the same with int4 weights and a float32
scale per output channel (the hybrid kernel `tflite` and `tflite-fast` write per channel), and with int4
weights in blocks of B along the input (TFLite's blockwise int4: a float16 scale per block, what they write
for blocks; `tflite_int.blockwise_runs` probes that the installed LiteRT takes it). Each runs in LiteRT
(one thread, its default XNNPACK delegate); the variants take turns (order shuffled each round, seeded),
each invoked 20 times per round on the same input, and the ratio is the median over the rounds of a
variant's time over the float layer's in the same round. Each variant's output is checked against NumPy's
product of the input and its weights (relative error: the hybrid kernels quantize the input per row to
int8 on the fly).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qpack.converter.export.tflite_int import BLOCK_MULTIPLE, blockwise, blockwise_runs, fully_connected, litert_schema  # noqa: E402

SHAPES = ((1024, 1024), (4096, 1024), (1024, 4096))
BLOCKS = (32, 128)


def variants(n: int, k: int, batch: int, rng: np.random.Generator) -> dict[str, tuple[bytes, np.ndarray]]:
    """name -> (the model, its weights' values)."""
    schema = litert_schema()
    w = rng.standard_normal((n, k)).astype(np.float32)
    out = {"float": (fully_connected(schema, w, batch), w)}
    q = rng.integers(-7, 8, (n, k)).astype(np.int8)
    scale = rng.uniform(0.01, 0.1, n).astype(np.float32)
    qp = schema.QuantizationParametersT()
    qp.scale, qp.zeroPoint, qp.quantizedDimension = scale.tolist(), [0] * n, 0
    out["int4 per channel"] = (fully_connected(schema, q, batch, qp), q * scale[:, None])
    for b in BLOCKS:
        s = rng.uniform(0.01, 0.1, (n, k // b)).astype(np.float16)
        out[f"int4 blocks of {b}"] = (fully_connected(schema, q, batch, blockwise(schema, 3, b), s),
                                      q * np.repeat(s.astype(np.float32), b, axis=1))
    return out


def main() -> None:
    from ai_edge_litert.interpreter import Interpreter

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    args = ap.parse_args()
    assert all(k % b == 0 and b % BLOCK_MULTIPLE == 0 for _, k in SHAPES for b in BLOCKS)
    print(f"blockwise int4 runs in this LiteRT's XNNPACK (qpack's probe): {blockwise_runs()}\n")
    print("| layer (N x K) | batch | variant | bytes | latency ratio to float | (halves) | relative error | delegated |")
    print("|---|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for (n, k), batch in ((s, b) for s in SHAPES for b in args.batch):
        made = variants(n, k, batch, rng)
        x = rng.standard_normal((batch, k)).astype(np.float32)
        its: dict[str, Any] = {}
        for name, (data, _) in made.items():
            it = Interpreter(model_content=data, num_threads=1)
            it.allocate_tensors()
            it.set_tensor(it.get_input_details()[0]["index"], x)
            its[name] = it
        times: dict[str, list[float]] = {name: [] for name in its}
        for r in range(args.rounds):
            order = list(its)
            random.Random(r).shuffle(order)
            for name in order:
                t = time.perf_counter()
                for _ in range(20):
                    its[name].invoke()
                times[name].append(time.perf_counter() - t)
        half = args.rounds // 2
        for name, it in its.items():
            ratio = [a / b for a, b in zip(times[name], times["float"])]
            y = it.get_tensor(it.get_output_details()[0]["index"])
            ref = x @ made[name][1].T
            err = float(np.abs(y - ref).max() / np.abs(ref).max())
            delegated = any(d["op_name"] == "DELEGATE" for d in it._get_ops_details())
            print(f"| {n} x {k} | {batch} | {name} | {len(made[name][0]):,} | {statistics.median(ratio):.3f} "
                  f"| {statistics.median(ratio[:half]):.2f}/{statistics.median(ratio[half:]):.2f} | {err:.4f} | {delegated} |")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
